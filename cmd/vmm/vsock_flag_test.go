package main

import (
	"testing"

	"github.com/govmm/vmm/vmm"
)

func TestParseVsock(t *testing.T) {
	good := map[string]vmm.VsockConfig{
		"cid=3,uds=/run/v.sock":         {GuestCID: 3, UDSPath: "/run/v.sock"},
		"uds=/x,cid=4294967294,id=root": {GuestCID: 4294967294, UDSPath: "/x", ID: "root"},
	}
	for in, want := range good {
		got, err := parseVsock(in)
		if err != nil || got != want {
			t.Errorf("parseVsock(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "cid=3", "uds=/x", "cid=2,uds=/x", "cid=4294967295,uds=/x", "cid=x,uds=/x", "cid=3,uds=", "cid=3,uds=/x,ro"} {
		if got, err := parseVsock(in); err == nil {
			t.Errorf("parseVsock(%q) = %+v, want an error", in, got)
		}
	}
	var cfg *vmm.VsockConfig
	f := vsockFlag{&cfg}
	if err := f.Set("cid=3,uds=/a"); err != nil || cfg == nil || cfg.GuestCID != 3 {
		t.Fatalf("Set: %v, %+v", err, cfg)
	}
	if err := f.Set("cid=4,uds=/b"); err == nil {
		t.Error("second --vsock accepted")
	}
	if f.String() != "cid=3,uds=/a" {
		t.Errorf("String() = %q", f.String())
	}
}
