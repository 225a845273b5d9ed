package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/vmm"
)

func TestParseDisk(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want vmm.DriveConfig
		err  string
	}{
		{in: "path=/a.img", want: vmm.DriveConfig{Path: "/a.img"}},
		{in: "/a.img,ro", want: vmm.DriveConfig{Path: "/a.img", ReadOnly: true}},
		{in: "path=/a.img,ro,id=root0,root", want: vmm.DriveConfig{Path: "/a.img", ReadOnly: true, ID: "root0", Root: true}},
		{in: "path=/a.img,direct", want: vmm.DriveConfig{Path: "/a.img", Direct: true}},
		{in: "path=/a.img,direct=on", want: vmm.DriveConfig{Path: "/a.img", Direct: true}},
		{in: "path=/a.img,direct=off", want: vmm.DriveConfig{Path: "/a.img"}},
		{in: "path=/a.img,direct,direct=off", want: vmm.DriveConfig{Path: "/a.img"}},
		{in: "/a.img,ro,direct=on,id=d", want: vmm.DriveConfig{Path: "/a.img", ReadOnly: true, Direct: true, ID: "d"}},
		{in: "path=/a.img,io_engine=async", want: vmm.DriveConfig{Path: "/a.img", IOEngine: vmm.IOEngineAsync}},
		{in: "path=/a.img,io_engine=sync,direct", want: vmm.DriveConfig{Path: "/a.img", IOEngine: vmm.IOEngineSync, Direct: true}},
		{in: "path=/a.img,io_engine=Async", err: "want io_engine=sync or io_engine=async"},
		{in: "path=/a.img,io_engine", err: "want io_engine=sync or io_engine=async"},
		{in: "path=/a.img,direct=yes", err: "want direct, direct=on or direct=off"},
		{in: "path=/a.img,direct=", err: "want direct, direct=on or direct=off"},
		{in: "path=/a.img,Direct", err: `unknown option "Direct"`},
		{in: "direct", err: "no path"},
		{in: "ro", err: "no path"},
		{in: "path=/a.img,rw", err: `unknown option "rw"`},
		{in: "path=/a.img,id=" + strings.Repeat("x", 21), err: "longer than 20"},
		{in: "", err: "unknown option"},
	} {
		got, err := parseDisk(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseDisk(%q) error %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseDisk(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestDiskFlagRepeats(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kernel := filepath.Join(dir, "kernel")
	os.WriteFile(kernel, []byte("k"), 0o644)
	o, err := parseFlags([]string{"--kernel", kernel, "--disk", "path=" + a, "--disk", "path=" + b + ",ro,id=data,direct"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []vmm.DriveConfig{{Path: a}, {Path: b, ReadOnly: true, ID: "data", Direct: true}}
	if len(o.cfg.Drives) != 2 || o.cfg.Drives[0] != want[0] || o.cfg.Drives[1] != want[1] {
		t.Errorf("drives %+v, want %+v", o.cfg.Drives, want)
	}
	if _, err := parseFlags([]string{"--kernel", kernel, "--disk", "path=" + filepath.Join(dir, "missing.img")}, io.Discard); err == nil || !strings.Contains(err.Error(), "missing.img") {
		t.Errorf("missing image: %v", err)
	}
	if _, err := parseFlags([]string{"--kernel", kernel, "--disk", "path=" + a + ",id=x", "--disk", "path=" + b + ",id=x"}, io.Discard); err == nil || !strings.Contains(err.Error(), "used twice") {
		t.Errorf("duplicate id: %v", err)
	}
}
