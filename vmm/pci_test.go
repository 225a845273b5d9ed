package vmm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio/blk"
)

func TestWithDriveRoot(t *testing.T) {
	for _, tt := range []struct {
		cmdline string
		drives  []DriveConfig
		want    string
	}{
		{"console=ttyS0", nil, "console=ttyS0"},
		{"console=ttyS0", []DriveConfig{{Path: "a"}, {Path: "b", Root: true}}, "console=ttyS0 root=/dev/vdb rw"},
		{"console=ttyS0", []DriveConfig{{Path: "a", Root: true, ReadOnly: true, PartUUID: "1234-01"}}, "console=ttyS0 root=PARTUUID=1234-01 ro"},
		{"root=/dev/sda1", []DriveConfig{{Path: "a", Root: true}}, "root=/dev/sda1"},
	} {
		if got := withDriveRoot(tt.cmdline, tt.drives); got != tt.want {
			t.Errorf("withDriveRoot(%q, %+v) = %q, want %q", tt.cmdline, tt.drives, got, tt.want)
		}
	}
}

// TestMachineWithDisk runs the test guest's virtio-blk test in-process and
// checks that Close stops the device and releases the image lock.
func TestMachineWithDisk(t *testing.T) {
	dir := buildTestGuest(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &syncBuf{}
	m, err := New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 2,
		Cmdline: "blk=1 exit=4", DebugExit: true, ConsoleOut: out,
		Drives: []DriveConfig{{ID: "d0", Path: img}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The image is locked while the machine exists.
	if _, err := blk.Open(blk.Config{ID: "other", Path: img}); err == nil || !strings.Contains(err.Error(), "in use by another VM") {
		t.Errorf("second open while the machine holds the image: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := m.Run(ctx)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if e.Kind != ExitDebugPort || e.Status != 4 {
		t.Fatalf("exit %+v\n%s", e, out.String())
	}
	for _, want := range []string{"testguest: blk read ok", "testguest: blk write ok", "testguest: blk flush ok", "testguest: blk irq ok"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out.String())
		}
	}
	b, err := blk.Open(blk.Config{ID: "after", Path: img})
	if err != nil {
		t.Fatalf("image still locked after Close: %v", err)
	}
	b.Close()

	// A missing image fails New with the path in the error.
	_, err = New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 1,
		Drives: []DriveConfig{{Path: filepath.Join(t.TempDir(), "missing.img")}},
	}, nil)
	if err == nil || !strings.Contains(err.Error(), "missing.img") || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("New with a missing image: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
