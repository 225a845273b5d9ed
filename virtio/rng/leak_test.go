package rng

import (
	"testing"
	"time"

	"github.com/govmm/vmm/internal/leakcheck"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// leakRingRAM is the fake RAM of one cycle's fresh ring and buffers in
// the transport cycles: after a reset the driver lays out new rings (§2.4).
const leakRingRAM = 16 << 10

// request posts an n-byte device-writable buffer on d.
func request(d *virtiotest.Driver, n uint32) {
	d.Post(d.Chain(virtiotest.Buf{Addr: d.Alloc(uint64(n), 8), Len: n, Write: true}))
}

// TestLeakActivateReset: leakcheck.Cycles of Activate, a few entropy
// requests and Reset, directly and through the virtio-PCI transport
// (driver reset through device_status), leave the goroutines and fds at
// their baseline.
func TestLeakActivateReset(t *testing.T) {
	const requests = 3
	dev, err := New(Config{ID: "leak", QueueSize: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Reset)
	features := uint64(virtio.FeatureVersion1)

	t.Run("device", func(t *testing.T) {
		drv := virtiotest.NewMappedDriver(t, 1<<20, 64)
		q, err := drv.Queue(features, nil)
		if err != nil {
			t.Fatal(err)
		}
		kick := make(chan struct{}, 1)
		before := leakcheck.Take(t)
		for i := range leakcheck.Cycles {
			if err := dev.Activate(&virtio.Activation{
				Mem: drv.Mem, Features: features, Queues: []*virtio.Queue{q}, Kicks: []<-chan struct{}{kick},
				Fail: func(err error) { t.Errorf("cycle %d: device failed: %v", i, err) },
			}); err != nil {
				t.Fatal(err)
			}
			for range requests {
				request(drv, 64)
			}
			kick <- struct{}{}
			for range requests {
				if _, ok := drv.WaitUsed(5 * time.Second); !ok {
					t.Fatalf("cycle %d: request not completed", i)
				}
			}
			dev.Reset()
		}
		leakcheck.Check(t, before)
	})

	t.Run("transport", func(t *testing.T) {
		ram := virtiotest.NewMappedDriver(t, 1<<20, 64)
		p := virtiotest.NewPCI(t, dev, ram.Mem)
		before := leakcheck.Take(t)
		for i := range leakcheck.Cycles {
			drv := ram.Sibling(64, leakRingRAM)
			p.Setup(features, drv.Ring())
			for range requests {
				request(drv, 64)
			}
			p.Notify(0)
			for range requests {
				if _, ok := drv.WaitUsed(5 * time.Second); !ok {
					t.Fatalf("cycle %d: request not completed", i)
				}
			}
			p.Reset()
		}
		leakcheck.Check(t, before)
	})
}
