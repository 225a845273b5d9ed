package api

import (
	"encoding/json"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/vmm"
)

// TestDriveDirectFromCommandLine: direct I/O chosen on the command line
// (vmm.Config, the controller's base) reaches the machine and stays out of
// Firecracker's schema; a drive PUT through the API, which has no such
// setting, is buffered, even when it replaces a direct one.
func TestDriveDirectFromCommandLine(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "b.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	base := vmm.Config{CPUs: 1, MemSize: 128 << 20, Kernel: "k", Drives: []vmm.DriveConfig{
		{ID: "a", Path: "/a.img", Direct: true},
		{ID: "c", Path: "/c.img", Direct: true},
	}}
	var f *fakeMachine
	ctl := NewController(Options{Base: base, Factory: func(cfg vmm.Config, _ *slog.Logger) (Machine, error) {
		f = &fakeMachine{cfg: cfg, exit: make(chan vmm.Exit, 1)}
		return f, nil
	}})
	defer ctl.Close()
	for _, id := range []string{"b", "c"} {
		if err := ctl.PutDrive(id, Drive{DriveID: ptr(id), PathOnHost: ptr(img), IsRootDevice: ptr(false), IsReadOnly: ptr(true)}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(ctl.FullConfig())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(b)), `"direct`) {
		t.Errorf("/vm/config shows direct I/O: %s", b)
	}
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { ctl.Stop(); <-ctl.Done() }()
	got := map[string]bool{}
	for _, d := range f.cfg.Drives {
		got[d.ID] = d.Direct
	}
	if len(got) != 3 || !got["a"] || got["b"] || got["c"] {
		t.Errorf("machine drives %+v, want a direct, b and c (PUT through the API) buffered", f.cfg.Drives)
	}
}

// TestDriveIOEngine: Firecracker's io_engine reaches the machine as vmm's
// engine (Sync: threads, Async: io_uring), a drive without it gets vmm's
// default, and /vm/config shows what was asked for.
func TestDriveIOEngine(t *testing.T) {
	img := filepath.Join(t.TempDir(), "b.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	base := vmm.Config{CPUs: 1, MemSize: 128 << 20, Kernel: "k", Drives: []vmm.DriveConfig{
		{ID: "cli", Path: "/a.img", IOEngine: vmm.IOEngineAsync},
	}}
	var f *fakeMachine
	ctl := NewController(Options{Base: base, Factory: func(cfg vmm.Config, _ *slog.Logger) (Machine, error) {
		f = &fakeMachine{cfg: cfg, exit: make(chan vmm.Exit, 1)}
		return f, nil
	}})
	defer ctl.Close()
	for id, e := range map[string]*string{"sync": ptr("Sync"), "async": ptr("Async"), "default": nil} {
		if err := ctl.PutDrive(id, Drive{DriveID: ptr(id), PathOnHost: ptr(img), IsRootDevice: ptr(false), IsReadOnly: ptr(true), IOEngine: e}); err != nil {
			t.Fatal(err)
		}
	}
	shown := map[string]string{}
	for _, d := range ctl.FullConfig().Drives {
		shown[*d.DriveID] = deref(d.IOEngine, "")
	}
	if want := map[string]string{"cli": "Async", "sync": "Sync", "async": "Async", "default": ""}; !maps.Equal(shown, want) {
		t.Errorf("/vm/config io_engine %v, want %v", shown, want)
	}
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { ctl.Stop(); <-ctl.Done() }()
	got := map[string]string{}
	for _, d := range f.cfg.Drives {
		got[d.ID] = d.IOEngine
	}
	if want := map[string]string{"cli": "async", "sync": "sync", "async": "async", "default": ""}; !maps.Equal(got, want) {
		t.Errorf("machine engines %v, want %v", got, want)
	}
}
