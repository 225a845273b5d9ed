package vmm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/snapshot"
)

// TestRestoredConfig: a restore's Config is the snapshot's, with the
// overrides applied, and overrides for devices the snapshot lacks are
// refused, as Firecracker refuses them.
func TestRestoredConfig(t *testing.T) {
	saved := machineState{
		Version: machineStateVersion,
		Config: savedConfig{
			Kernel: "/k", MemSize: 128 << 20, CPUs: 2,
			Drives: []DriveConfig{{ID: "rootfs", Path: "/img", Root: true}},
			Nets:   []NetConfig{{ID: "eth0", Tap: "tap0"}, {ID: "eth1", Tap: "tap1"}},
			Vsock:  &VsockConfig{ID: "v", GuestCID: 3, UDSPath: "/old.sock"},
		},
		VCPUs: make([]kvm.VCPUState, 2),
	}
	cfg, err := saved.config(RestoreConfig{NetTaps: map[string]string{"eth1": "tapX"}, VsockUDS: "/new.sock", DrivePaths: map[string]string{"rootfs": "/clone.img"}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Nets[0].Tap != "tap0" || cfg.Nets[1].Tap != "tapX" {
		t.Errorf("taps %q %q, want tap0 tapX", cfg.Nets[0].Tap, cfg.Nets[1].Tap)
	}
	if cfg.Vsock.UDSPath != "/new.sock" || saved.Config.Vsock.UDSPath != "/old.sock" {
		t.Errorf("vsock %q (saved now %q), want the override and the saved state untouched", cfg.Vsock.UDSPath, saved.Config.Vsock.UDSPath)
	}
	if saved.Config.Nets[1].Tap != "tap1" {
		t.Error("the override changed the saved state")
	}
	if saved.Config.Drives[0].Path != "/img" {
		t.Error("the drive override changed the saved state")
	}
	if cfg.MemSize != 128<<20 || cfg.CPUs != 2 || cfg.Drives[0].Path != "/clone.img" {
		t.Errorf("restored config %+v", cfg)
	}

	noVsock := saved
	noVsock.Config.Vsock = nil
	for _, tt := range []struct {
		name string
		st   machineState
		rc   RestoreConfig
		want string
	}{
		{"unknown interface", saved, RestoreConfig{NetTaps: map[string]string{"eth9": "t"}}, `interface "eth9"`},
		{"vsock override without vsock", noVsock, RestoreConfig{VsockUDS: "/x"}, "no vsock device"},
		{"unknown drive", saved, RestoreConfig{DrivePaths: map[string]string{"data": "/d"}}, `drive "data"`},
		{"vCPU states", func() machineState { s := saved; s.VCPUs = s.VCPUs[:1]; return s }(), RestoreConfig{}, "1 vCPU states for 2 vCPUs"},
		{"state version", func() machineState { s := saved; s.Version = 99; return s }(), RestoreConfig{}, "version 99"},
		{"memory size", func() machineState { s := saved; s.Config.MemSize = 1; return s }(), RestoreConfig{}, "memory"},
	} {
		if _, err := tt.st.config(tt.rc); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}

// TestRestoreRefusesDamagedSnapshot: a state file cut short, with a bit
// flipped, or that is no snapshot at all is refused for what it is, before
// anything is created (no KVM needed), and no file changes.
func TestRestoreRefusesDamagedSnapshot(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	st := machineState{Version: machineStateVersion, Config: savedConfig{MemSize: 128 << 20, CPUs: 1}, VCPUs: make([]kvm.VCPUState, 1)}
	if err := snapshot.Write(good, snapshot.Meta{VMMVersion: Version, CPUVendor: "GenuineIntel", MemSize: 128 << 20}, &st); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	mem := filepath.Join(dir, "mem")
	if err := os.WriteFile(mem, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), raw...)
	flipped[len(flipped)/2] ^= 0x10
	for _, tt := range []struct {
		name string
		data []byte
		want error
	}{
		{"truncated", raw[:len(raw)-9], snapshot.ErrTruncated},
		{"bit flipped", flipped, snapshot.ErrChecksum},
		{"not a snapshot", []byte("hello, world, this is not a snapshot file at all"), snapshot.ErrNotSnapshot},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
		if err := os.WriteFile(p, tt.data, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := Restore(RestoreConfig{StatePath: p, MemPath: mem}, nil)
		if m != nil || !errors.Is(err, tt.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: machine %v, error %v; want %v naming the file", tt.name, m != nil, err, tt.want)
		}
		if after, _ := os.ReadFile(p); string(after) != string(tt.data) {
			t.Errorf("%s: the refused file changed", tt.name)
		}
	}
}

// TestSnapshotRestoreTestGuest boots the test guest, pauses it at its
// prompt, snapshots it, ends that machine, restores a new one from the
// files and resumes it: the guest answers input from where it stopped
// (its registers, RAM and the UART came back), input queued on the console
// before the restore included, and exits with the status it was booted to
// exit with.
func TestSnapshotRestoreTestGuest(t *testing.T) {
	dir := buildTestGuest(t)
	out := &syncBuf{}
	inR, inW := io.Pipe()
	defer inW.Close()
	m, err := New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 2,
		Cmdline: "echo=1 exit=7", DebugExit: true, ConsoleOut: out, ConsoleIn: inR,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Exit, 1)
	go func() { done <- m.Run(ctx) }()
	waitOutput(t, out, "testguest: ready>")
	if err := m.Snapshot(filepath.Join(dir, "x"), filepath.Join(dir, "y")); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("Snapshot of a running machine = %v, want ErrNotPaused", err)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	state, memFile := filepath.Join(dir, "state"), filepath.Join(dir, "mem")
	if err := m.Snapshot(state, memFile); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	m.Close()

	out2 := &syncBuf{}
	inR2, inW2 := io.Pipe()
	defer inW2.Close()
	// Input waiting on the console before the restore (a pipe written
	// right after the process started) must reach the restored UART, not
	// be dropped by its restore.
	go io.WriteString(inW2, "restored\r")
	r, err := Restore(RestoreConfig{StatePath: state, MemPath: memFile, Host: Config{ConsoleOut: out2, ConsoleIn: inR2}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Config(); got.CPUs != 2 || got.MemSize != 64<<20 || !got.DebugExit {
		t.Errorf("restored config %+v", got)
	}
	done2 := make(chan Exit, 1)
	go func() { done2 <- r.Run(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	if strings.Contains(out2.String(), "echo restored") {
		t.Fatal("the restored guest ran before Resume")
	}
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out2, "testguest: echo restored")
	select {
	case e := <-done2:
		if e.Kind != ExitDebugPort || e.Status != 7 {
			t.Fatalf("restored guest exit %+v, want debug exit 7", e)
		}
	case <-time.After(time.Minute):
		t.Fatal("restored guest did not exit")
	}
}
