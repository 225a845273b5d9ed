package blk

import (
	"bytes"
	"testing"

	"github.com/govmm/vmm/internal/leakcheck"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// leakRingRAM is the fake RAM each transport cycle's fresh ring and
// buffers take: a driver lays out new rings after a reset (§2.4), since
// the device starts again from index 0.
const leakRingRAM = 32 << 10

// TestLeakActivateReset: Activate with a write and a read, then Reset,
// leakcheck.Cycles times, directly and through the virtio-PCI transport
// (driver reset through device_status), leaves the goroutines (queue
// loops, I/O workers, io_uring reapers) and fds (io_uring instances) at
// their baseline.
func TestLeakActivateReset(t *testing.T) { forEachEngine(t, testLeakActivateReset) }

func testLeakActivateReset(t *testing.T, engine Engine) {
	h := newHarness(t, Config{ID: "leak", Path: newImage(t), Engine: engine})
	data := bytes.Repeat([]byte{0x5a}, SectorSize)

	t.Run("device", func(t *testing.T) {
		before := leakcheck.Take(t)
		for i := range leakcheck.Cycles {
			h.submit(typeOut, uint64(i%testSectors), data, 0)
			h.submit(typeIn, uint64(i%testSectors), nil, SectorSize)
			h.run(2)
			h.used(2)
		}
		leakcheck.Check(t, before)
	})

	t.Run("transport", func(t *testing.T) {
		p := virtiotest.NewPCI(t, h.b, h.d.Mem)
		before := leakcheck.Take(t)
		for i := range leakcheck.Cycles {
			c := *h
			c.d = h.d.Sibling(testQueue, leakRingRAM)
			p.Setup(h.features, c.d.Ring())
			complete(t, &c, p, c.submit(typeOut, uint64(i%testSectors), data, 0))
			complete(t, &c, p, c.submit(typeIn, uint64(i%testSectors), nil, SectorSize))
			p.Reset()
		}
		leakcheck.Check(t, before)
	})
}

// TestLeakOpenClose: opening and closing the image leakcheck.Cycles times
// leaves no descriptor (image, O_DIRECT twin) or goroutine behind.
func TestLeakOpenClose(t *testing.T) { forEachEngine(t, testLeakOpenClose) }

func testLeakOpenClose(t *testing.T, engine Engine) {
	path := newImage(t)
	before := leakcheck.Take(t)
	for range leakcheck.Cycles {
		b, err := Open(Config{ID: "leak", Path: path, Engine: engine})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	leakcheck.Check(t, before)
}
