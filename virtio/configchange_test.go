package virtio_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/blk"
)

// TestPCIConfigChange swaps a virtio-blk disk's image behind the PCI
// transport and checks what a driver sees: the new capacity in the device
// configuration, a new config_generation (§4.1.4.3), ISR bit 1 and the
// config_msix_vector's message (§4.1.5.4); a failed swap changes nothing.
func TestPCIConfigChange(t *testing.T) {
	const origSectors = 16
	tests := []struct {
		name        string
		noVector    bool // the driver leaves config_msix_vector at NO_VECTOR
		target      func(t *testing.T) string
		wantErr     bool
		wantSectors uint64
	}{
		{"swap with a config vector", false, func(t *testing.T) string { return image(t, "a.img", 64) }, false, 64},
		{"swap without a config vector", true, func(t *testing.T) string { return image(t, "b.img", 4096) }, false, 4096},
		{"failed swap", false, func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing.img") }, true, origSectors},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev, err := blk.Open(blk.Config{ID: "cc", Path: image(t, "orig.img", origSectors), QueueSize: qsize})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dev.Close() }) // after the transport's own cleanup
			r := newRigFor(t, dev)
			r.enumerate()
			r.setup(virtio.FeatureVersion1 | blk.FeatureFlush)
			cc, isr, dc := r.capOff(1), r.capOff(3), r.capOff(4)
			if tt.noVector {
				r.wr(cc+ccMSIX, 2, virtio.NoVector)
			}
			r.rd(isr, 1) // start from a clear ISR
			gen0 := r.rd(cc+ccCfgGen, 1)
			if c := r.rd(dc, 8); c != origSectors {
				t.Fatalf("capacity before the swap %d, want %d", c, origSectors)
			}

			err = dev.Swap(tt.target(t))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Swap: %v, want error %v", err, tt.wantErr)
			}

			gen1, isrBits, c := r.rd(cc+ccCfgGen, 1), r.rd(isr, 1), r.rd(dc, 8)
			if c != tt.wantSectors {
				t.Errorf("capacity after the swap %d, want %d", c, tt.wantSectors)
			}
			if tt.wantErr {
				if gen1 != gen0 || isrBits != 0 {
					t.Errorf("failed swap: generation %d -> %d, ISR %#x; want no change", gen0, gen1, isrBits)
				}
			} else {
				if gen1 != (gen0+1)&0xff {
					t.Errorf("config_generation %d -> %d, want it to move by one", gen0, gen1)
				}
				if isrBits&2 == 0 {
					t.Errorf("ISR %#x, want the configuration change bit", isrBits)
				}
			}
			if tt.wantErr || tt.noVector {
				select {
				case v := <-r.msi.signals:
					t.Errorf("MSI-X vector %d signalled, want none", v)
				case <-time.After(50 * time.Millisecond):
				}
			} else {
				r.waitSignal(1)
			}
		})
	}
}

// image writes a zero-filled image of n sectors.
func image(t *testing.T, name string, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, make([]byte, n*blk.SectorSize), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
