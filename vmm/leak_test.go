package vmm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/leakcheck"
	"github.com/govmm/vmm/internal/testenv"
)

// TestLeakMachineNewClose: leakcheck.Cycles machines with a disk, a vsock
// device and an entropy device, each created and closed, and as many
// that also boot the test guest through its virtio-blk and virtio-rng
// tests to a debug exit, leave the goroutines (vCPU threads, device
// workers, the vsock listener) and fds (the KVM VM and vCPU descriptors,
// eventfds, the image, io_uring instances, the vsock socket) at their
// baseline.
func TestLeakMachineNewClose(t *testing.T) {
	testenv.RequireKVM(t)
	dir := buildTestGuest(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	uds := filepath.Join(t.TempDir(), "v.sock")
	config := func(out *syncBuf) Config {
		return Config{
			Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 2,
			Cmdline: "blk=1 rng=1 exit=4", DebugExit: true, ConsoleOut: out,
			Drives:  []DriveConfig{{ID: "d0", Path: img}},
			Vsock:   &VsockConfig{ID: "v0", GuestCID: 3, UDSPath: uds},
			Entropy: &EntropyConfig{},
		}
	}
	for _, tc := range []struct {
		name string
		run  bool
	}{{"created", false}, {"booted", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cycle := func() error {
				out := &syncBuf{}
				m, err := New(config(out), nil)
				if err != nil {
					return err
				}
				var e Exit
				if tc.run {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					e = m.Run(ctx)
					cancel()
				}
				if err := m.Close(); err != nil {
					return err
				}
				if tc.run && (e.Kind != ExitDebugPort || e.Status != 4 || !strings.Contains(out.String(), "testguest: blk read ok")) {
					return fmt.Errorf("exit %+v\n%s", e, out.String())
				}
				return nil
			}
			// One machine first, so what the runtime and the kvm package
			// keep once for the process (the /dev/kvm handle, timers) is
			// in the baseline, not counted as a leak.
			if err := cycle(); err != nil {
				t.Fatal(err)
			}
			before := leakcheck.Take(t)
			for i := range leakcheck.Cycles {
				if err := cycle(); err != nil {
					t.Fatalf("cycle %d: %v", i, err)
				}
			}
			leakcheck.Check(t, before)
		})
	}
}
