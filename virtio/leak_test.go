package virtio_test

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/devices"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/internal/leakcheck"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/rng"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// ioEvents is a fake KVM ioeventfd registry: it keeps the eventfd bound
// to each notify address, so the test can signal it as KVM would on a
// guest's write there.
type ioEvents struct {
	mu  sync.Mutex
	fds map[uint64]int
}

func (e *ioEvents) RegisterIOEvent(addr uint64, size uint32, fd int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fds[addr] = fd
	return nil
}

func (e *ioEvents) UnregisterIOEvent(addr uint64, size uint32, fd int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.fds, addr)
	return nil
}

// signalAll writes to every registered eventfd, as KVM does when the
// guest writes the notify address.
func (e *ioEvents) signalAll(t *testing.T) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.fds) == 0 {
		t.Fatal("no ioeventfd registered")
	}
	for _, fd := range e.fds {
		if _, err := unix.Write(fd, binary.NativeEndian.AppendUint64(nil, 1)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLeakTransportNewClose: leakcheck.Cycles transports with
// ioeventfds (the path a VM takes), each set up by the driver, given a
// request through the eventfd, reset through device_status and closed,
// leave the eventfds and their pump goroutines at their baseline and
// every ioeventfd unregistered.
func TestLeakTransportNewClose(t *testing.T) {
	dev, err := rng.New(rng.Config{ID: "leak", QueueSize: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ram := virtiotest.NewMappedDriver(t, 1<<20, 64)
	before := leakcheck.Take(t)
	for i := range leakcheck.Cycles {
		ioe := &ioEvents{fds: map[uint64]int{}}
		mmio := devices.NewBus("mmio")
		bus := pci.NewBusWith(pci.BusConfig{MMIO: mmio, Mem32Start: 0xc000_0000, Mem32End: 0xe000_0000, Mem64Start: 1 << 32, Mem64End: 1 << 34})
		tr, err := virtio.NewPCI(dev, virtio.PCIOptions{Name: "leak", Mem: ram.Mem, MSI: &virtiotest.MSI{}, IOEvents: ioe})
		if err != nil {
			t.Fatal(err)
		}
		slot, err := bus.Add(tr)
		if err != nil {
			t.Fatal(err)
		}
		p := virtiotest.AttachPCI(t, bus, mmio, tr, slot)
		drv := ram.Sibling(64, 8<<10)
		p.Setup(virtio.FeatureVersion1, drv.Ring())
		drv.Post(drv.Chain(virtiotest.Buf{Addr: drv.Alloc(32, 8), Len: 32, Write: true}))
		ioe.signalAll(t)
		if _, ok := drv.WaitUsed(5 * time.Second); !ok {
			t.Fatalf("cycle %d: request through the ioeventfd not completed", i)
		}
		p.Reset()
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		if err := bus.Close(); err != nil {
			t.Fatal(err)
		}
		if n := len(ioe.fds); n != 0 {
			t.Fatalf("cycle %d: %d ioeventfds still registered after Close", i, n)
		}
	}
	leakcheck.Check(t, before)
}
