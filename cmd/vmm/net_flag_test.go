package main

import (
	"strings"
	"testing"

	"github.com/govmm/vmm/vmm"
)

func TestParseNet(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want vmm.NetConfig
		err  string
	}{
		{in: "tap=tap0", want: vmm.NetConfig{Tap: "tap0"}},
		{in: "tap0", want: vmm.NetConfig{Tap: "tap0"}},
		{in: "tap=tap0,mac=06:00:AC:10:00:02,id=eth0", want: vmm.NetConfig{Tap: "tap0", MAC: "06:00:ac:10:00:02", ID: "eth0"}},
		{in: "mac=06:00:ac:10:00:02", err: "no tap"},
		{in: "tap=tap0,mac=01:00:5e:00:00:01", err: "multicast"},
		{in: "tap=tap0,mac=zz", err: "not an Ethernet MAC"},
		{in: "tap=" + strings.Repeat("t", 16), err: "longer than 15"},
		{in: "tap=tap0,vhost", err: `unknown option "vhost"`},
		{in: "tap=tap0,queues=4", want: vmm.NetConfig{Tap: "tap0", Queues: 4}},
		{in: "tap=tap0,queues=1,id=e", want: vmm.NetConfig{Tap: "tap0", Queues: 1, ID: "e"}},
		{in: "tap=tap0,queues=16", want: vmm.NetConfig{Tap: "tap0", Queues: 16}},
		{in: "tap=tap0,queues=0", err: "queues=0: want a number of queue pairs from 1 to 16"},
		{in: "tap=tap0,queues=17", err: "queues=17"},
		{in: "tap=tap0,queues=-2", err: "queues=-2"},
		{in: "tap=tap0,queues=two", err: "queues=two"},
		{in: "tap=tap0,queues=", err: "queues="},
		{in: "", err: "unknown option"},
	} {
		got, err := parseNet(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseNet(%q) error %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseNet(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	var nets []vmm.NetConfig
	f := netFlag{&nets}
	if err := f.Set("tap=a"); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("tap=a"); err == nil || !strings.Contains(err.Error(), "used twice") {
		t.Errorf("second tap=a: %v, want used twice", err)
	}
	if err := f.Set("b"); err != nil || len(nets) != 2 || f.String() != "a b" {
		t.Errorf("Set b: %v, nets %+v, String %q", err, nets, f.String())
	}
}
