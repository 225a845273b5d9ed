package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/virtio/blk"
)

// TestUpdateDrive swaps drives of a built machine by id (Run is not
// needed: the swap only touches the device).
func TestUpdateDrive(t *testing.T) {
	dir := buildTestGuest(t)
	tmp := t.TempDir()
	img := func(name string, size int) string {
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	root, data := img("root.img", 1<<20), img("data.img", 64<<10)
	m, err := New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 1,
		Drives: []DriveConfig{{ID: "rootfs", Path: root, Root: true}, {Path: data, ReadOnly: true}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			m.Close()
		}
	})
	// What each drive should hold after the steps so far.
	inService := map[string]string{"rootfs": root, "drive1": data}

	for _, tt := range []struct {
		name, id, path string
		wantErr        string // "" for success
		wantSectors    uint64
	}{
		{"named drive", "rootfs", img("root2.img", 2<<20), "", 4096},
		{"unnamed drive by its default id", "drive1", img("data2.img", 8<<10), "", 16},
		{"unknown id", "nope", img("x.img", 512), `no virtio-blk drive with id "nope"`, 0},
		{"missing image", "rootfs", filepath.Join(tmp, "missing.img"), "virtio-blk rootfs: swap to " + filepath.Join(tmp, "missing.img") + ": open image", 4096},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := m.UpdateDrive(tt.id, tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("UpdateDrive(%q, %q) = %v, want an error containing %q", tt.id, tt.path, err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("UpdateDrive(%q, %q): %v", tt.id, tt.path, err)
			} else {
				inService[tt.id] = tt.path
			}
			if dev := m.pci.drives[tt.id]; dev != nil {
				if got := dev.Sectors(); got != tt.wantSectors {
					t.Errorf("drive %s: %d sectors, want %d", tt.id, got, tt.wantSectors)
				}
				if got := dev.Path(); got != inService[tt.id] {
					t.Errorf("drive %s: image %s in service, want %s", tt.id, got, inService[tt.id])
				}
			}
		})
	}
	// The images in service are locked; the ones swapped out are free.
	if _, err := blk.Open(blk.Config{ID: "other", Path: inService["rootfs"]}); err == nil || !strings.Contains(err.Error(), "in use by another VM") {
		t.Errorf("image in service not locked: %v", err)
	}
	for _, p := range []string{root, data} {
		b, err := blk.Open(blk.Config{ID: "other", Path: p})
		if err != nil {
			t.Errorf("swapped-out image %s still locked: %v", p, err)
			continue
		}
		b.Close()
	}
	closed = true
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.UpdateDrive("rootfs", root); err == nil {
		t.Error("UpdateDrive after Close succeeded")
	}
}
