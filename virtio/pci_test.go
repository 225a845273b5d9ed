package virtio_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/devices"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// echoDevice is a one-queue device that completes every chain with its
// writable length, and stops on a broken chain.
type echoDevice struct {
	// idle receives after each drain, so the test knows the device no
	// longer reads the rings (the race detector sees both sides).
	idle chan struct{}
	worker
}

// worker is a test device's queue goroutine: Activate starts it under mu
// with a fresh stop, Reset stops it and waits until it is gone.
type worker struct {
	mu   sync.Mutex
	stop chan struct{}
	done sync.WaitGroup
}

// start runs the goroutine (with w.mu held): it drains queue 0 through
// handle, at once if drainFirst and after each kick, and tells idle after
// each drain; a broken chain fails the device and ends it.
func (w *worker) start(a *virtio.Activation, drainFirst bool, idle chan<- struct{}, handle func(*virtio.Queue, virtio.Chain)) {
	w.stop = make(chan struct{})
	q, stop := a.Queues[0], w.stop
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		for wait := !drainFirst; ; wait = true {
			if wait {
				select {
				case <-stop:
					return
				case <-a.Kicks[0]:
				}
			}
			for {
				c, ok, err := q.Pop()
				if err != nil {
					a.Fail(err)
					return
				}
				if !ok {
					break
				}
				handle(q, c)
			}
			idle <- struct{}{}
		}
	}()
}

func (w *worker) Reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stop != nil {
		close(w.stop)
		w.done.Wait()
		w.stop = nil
	}
}

func (*echoDevice) Type() uint16         { return 42 }
func (*echoDevice) Features() uint64     { return 1 << 3 }
func (*echoDevice) QueueSizes() []uint16 { return []uint16{qsize} }
func (*echoDevice) ReadConfig(off uint64, b []byte) {
	for i := range b {
		b[i] = byte(off) + byte(i)
	}
}
func (*echoDevice) WriteConfig(uint64, []byte) {}

func (e *echoDevice) Activate(a *virtio.Activation) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.start(a, false, e.idle, func(q *virtio.Queue, c virtio.Chain) { q.Push(c.Head, uint32(c.WriteLen)) })
	return nil
}

// fakeMSI records route programming and signals.
type fakeMSI struct {
	mu      sync.Mutex
	routes  []*fakeRoute
	signals chan int
}

type fakeRoute struct {
	m              *fakeMSI
	n              int
	addr, data     uint32
	updates, sends int
}

func (f *fakeMSI) NewMSIRoute() (pci.MSIRoute, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := &fakeRoute{m: f, n: len(f.routes)}
	f.routes = append(f.routes, r)
	return r, nil
}

func (r *fakeRoute) Update(lo, hi, data uint32) error {
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	r.addr, r.data = lo, data
	r.updates++
	return nil
}

func (r *fakeRoute) Signal() error {
	r.m.mu.Lock()
	r.sends++
	r.m.mu.Unlock()
	r.m.signals <- r.n
	return nil
}

func (r *fakeRoute) Close() error { return nil }

// fakeINTx is the bus's interrupt controller: it records the pin's
// assertions and offers the resample query.
type fakeINTx struct {
	mu       sync.Mutex
	gsi      uint32
	asserted func() bool
	asserts  int
	up       chan struct{} // one token per assertion (buffered)
}

func (f *fakeINTx) NewLevelIRQ(gsi uint32, asserted func() bool) (pci.LevelIRQ, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gsi, f.asserted = gsi, asserted
	return f, nil
}

func (f *fakeINTx) Assert() error {
	f.mu.Lock()
	f.asserts++
	f.mu.Unlock()
	select {
	case f.up <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeINTx) Deassert() error { return nil }
func (f *fakeINTx) Close() error    { return nil }

func (f *fakeINTx) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asserts
}

// rig is a PCI bus with one virtio function, driven as a guest would:
// configuration space through the bus (virtiotest.PCI; the 0xCF8/0xCFC
// ports are tested in devices/pci) and the BARs through MMIO.
type rig struct {
	t    *testing.T
	bus  *pci.Bus
	mmio *devices.Bus
	drv  *virtiotest.Driver
	msi  *fakeMSI
	intx *fakeINTx
	tr   *virtio.PCI
	dev  *echoDevice
	p    *virtiotest.PCI // the guest-side accesses
	bar  uint64
	caps map[byte]int // virtio cfg_type -> capability offset
	msix int
	// noMSIX makes setup leave MSI-X off, so notifications use INTx.
	noMSIX bool
}

func newRig(t *testing.T) *rig {
	e := &echoDevice{idle: make(chan struct{}, 16)}
	r := newRigFor(t, e)
	r.dev = e
	return r
}

// newRigFor puts dev on the bus instead of an echoDevice (kick is then
// unavailable).
func newRigFor(t *testing.T, dev virtio.Device) *rig {
	r := &rig{t: t, mmio: devices.NewBus("mmio"), msi: &fakeMSI{signals: make(chan int, 16)}, caps: map[byte]int{},
		intx: &fakeINTx{up: make(chan struct{}, 64)}}
	r.bus = pci.NewBusWith(pci.BusConfig{
		MMIO: r.mmio, Mem32Start: 0xc000_0000, Mem32End: 0xe000_0000, Mem64Start: 1 << 32, Mem64End: 1 << 34,
		INTx: r.intx, INTxRouting: pci.INTxRouting{FirstGSI: 16, Count: 8},
	})
	r.drv = newDriver(t)
	tr, err := virtio.NewPCI(dev, virtio.PCIOptions{Name: "test", Mem: r.drv.Mem, MSI: r.msi})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	r.tr = tr
	slot, err := r.bus.Add(tr)
	if err != nil {
		t.Fatal(err)
	}
	r.p = virtiotest.AttachPCI(t, r.bus, r.mmio, tr, slot)
	return r
}

func (r *rig) cfgRead(reg uint32, n int) uint32     { return r.p.CfgRead(int(reg), n) }
func (r *rig) cfgWrite(reg uint32, n int, v uint32) { r.p.CfgWrite(int(reg), n, v) }
func (r *rig) rd(off uint64, n int) uint64          { return r.p.Read(off, n) }
func (r *rig) wr(off uint64, n int, v uint64)       { r.p.Write(off, n, v) }

// capOff returns where a virtio structure lives inside BAR 0.
func (r *rig) capOff(typ byte) uint64 {
	c, ok := r.caps[typ]
	if !ok {
		r.t.Fatalf("no virtio capability of type %d", typ)
	}
	return uint64(r.cfgRead(uint32(c)+8, 4))
}

// Common configuration offsets (§4.1.4.3).
const (
	ccDFSelect = 0x00
	ccDF       = 0x04
	ccGFSelect = 0x08
	ccGF       = 0x0c
	ccMSIX     = 0x10
	ccNumQ     = 0x12
	ccStatus   = 0x14
	ccCfgGen   = 0x15
	ccQSelect  = 0x16
	ccQSize    = 0x18
	ccQMSIX    = 0x1a
	ccQEnable  = 0x1c
	ccQNotify  = 0x1e
	ccQDesc    = 0x20
	ccQDriver  = 0x28
	ccQDevice  = 0x30
)

// enumerate checks the identity, sizes and enables BAR 0 and finds the
// capabilities.
func (r *rig) enumerate() {
	t := r.t
	if id := r.cfgRead(0, 4); id&0xffff != 0x1af4 || (r.dev != nil && id>>16 != 0x1040+42) {
		t.Fatalf("vendor/device %#x", id)
	}
	if rev := r.cfgRead(8, 1); rev < 1 {
		t.Errorf("revision %d, want >= 1 for a modern device", rev)
	}
	// BAR 0 is 64-bit prefetchable (type bits 0xc) and takes BAR 1 as its
	// upper half: size both halves, restore them.
	lo, hi := r.cfgRead(0x10, 4), r.cfgRead(0x14, 4)
	r.cfgWrite(0x10, 4, 0xffff_ffff)
	r.cfgWrite(0x14, 4, 0xffff_ffff)
	mask := uint64(r.cfgRead(0x14, 4))<<32 | uint64(r.cfgRead(0x10, 4))
	r.cfgWrite(0x10, 4, lo)
	r.cfgWrite(0x14, 4, hi)
	size := ^(mask &^ 0xf) + 1
	if size < 0x4000 || size&(size-1) != 0 || mask&0xf != 0xc {
		t.Fatalf("BAR 0 sizing mask %#x", mask)
	}
	if r.cfgRead(0x10, 4) != lo || r.cfgRead(0x14, 4) != hi {
		t.Fatalf("BAR 0 = %#x:%#x after restore, want %#x:%#x", r.cfgRead(0x14, 4), r.cfgRead(0x10, 4), hi, lo)
	}
	r.bar = uint64(hi)<<32 | uint64(lo&^0xf)
	if r.bar < 1<<32 {
		t.Fatalf("BAR 0 at %#x, want it in the window above 4 GiB", r.bar)
	}
	// BARs don't decode until memory space is enabled.
	if err := r.mmio.Read(r.bar, make([]byte, 4)); err == nil {
		t.Fatal("BAR decodes with memory space disabled")
	}
	r.cfgWrite(4, 2, pci.CommandMemory|pci.CommandBusMaster)
	if r.cfgRead(6, 2)&0x10 == 0 {
		t.Fatal("no capability list")
	}
	for c, n := r.cfgRead(0x34, 1), 0; c != 0 && n < 48; c, n = r.cfgRead(c+1, 1), n+1 {
		switch r.cfgRead(c, 1) {
		case 0x09:
			r.caps[byte(r.cfgRead(c+3, 1))] = int(c)
		case 0x11:
			r.msix = int(c)
		}
	}
	for _, typ := range []byte{1, 2, 3, 4, 5} {
		if _, ok := r.caps[typ]; !ok {
			t.Fatalf("missing virtio capability type %d", typ)
		}
	}
	if r.msix == 0 {
		t.Fatal("no MSI-X capability")
	}
}

// setup runs the driver initialisation (§3.1.1) with the given features
// and queue 0 on vector 0, config changes on vector 1.
func (r *rig) setup(features uint64) {
	t := r.t
	cc := r.capOff(1)
	r.wr(cc+ccStatus, 1, 0)
	r.wr(cc+ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	r.wr(cc+ccGFSelect, 4, 0)
	r.wr(cc+ccGF, 4, features&0xffff_ffff)
	r.wr(cc+ccGFSelect, 4, 1)
	r.wr(cc+ccGF, 4, features>>32)
	r.wr(cc+ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	if r.rd(cc+ccStatus, 1)&virtio.StatusFeaturesOK == 0 {
		t.Fatal("FEATURES_OK refused")
	}
	// MSI-X: two entries, then enable.
	if !r.noMSIX {
		tbl := uint64(r.cfgRead(uint32(r.msix)+4, 4) &^ 7)
		for v := uint64(0); v < 2; v++ {
			r.wr(tbl+16*v, 4, 0xfee0_0000)
			r.wr(tbl+16*v+8, 4, 0x40+v)
			r.wr(tbl+16*v+12, 4, 0)
		}
		r.cfgWrite(uint32(r.msix)+2, 2, 0x8000)
		r.wr(cc+ccMSIX, 2, 1)
	}
	r.wr(cc+ccQSelect, 2, 0)
	if got := r.rd(cc+ccQSize, 2); got != qsize {
		t.Fatalf("queue size %d, want %d", got, qsize)
	}
	if !r.noMSIX {
		r.wr(cc+ccQMSIX, 2, 0)
		if r.rd(cc+ccQMSIX, 2) != 0 {
			t.Fatal("queue vector refused")
		}
	}
	r.wr(cc+ccQDesc, 4, r.drv.Desc)
	r.wr(cc+ccQDesc+4, 4, 0)
	r.wr(cc+ccQDriver, 8, r.drv.Avail)
	r.wr(cc+ccQDevice, 8, r.drv.Used)
	r.wr(cc+ccQEnable, 2, 1)
	r.wr(cc+ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
}

// kick notifies queue 0 and, unless the queue is expected to break, waits
// until the device has drained it.
func (r *rig) kick(wait bool) {
	off := r.capOff(2)
	mult := uint64(r.cfgRead(uint32(r.caps[2])+16, 4))
	r.wr(off+mult*r.rd(r.capOff(1)+ccQNotify, 2), 2, 0)
	if !wait {
		return
	}
	select {
	case <-r.dev.idle:
	case <-time.After(5 * time.Second):
		r.t.Fatal("device did not drain the queue")
	}
}

func (r *rig) waitSignal(vec int) {
	r.t.Helper()
	select {
	case got := <-r.msi.signals:
		if got != vec {
			r.t.Fatalf("MSI-X vector %d signalled, want %d", got, vec)
		}
	case <-time.After(5 * time.Second):
		r.t.Fatalf("no MSI-X signal on vector %d", vec)
	}
}

func TestPCITransport(t *testing.T) {
	r := newRig(t)
	r.enumerate()
	cc := r.capOff(1)
	if n := r.rd(cc+ccNumQ, 2); n != 1 {
		t.Fatalf("num_queues %d", n)
	}
	r.wr(cc+ccDFSelect, 4, 0)
	lo := r.rd(cc+ccDF, 4)
	r.wr(cc+ccDFSelect, 4, 1)
	hi := r.rd(cc+ccDF, 4)
	offered := hi<<32 | lo
	for _, f := range []uint64{1 << 3, virtio.FeatureVersion1, virtio.FeatureEventIdx, virtio.FeatureIndirectDesc} {
		if offered&f == 0 {
			t.Errorf("feature %#x not offered (offered %#x)", f, offered)
		}
	}

	// Features the device didn't offer, or no VERSION_1: FEATURES_OK stays clear.
	for _, bad := range []uint64{virtio.FeatureVersion1 | 1<<7, 1 << 3} {
		r.wr(cc+ccStatus, 1, 0)
		r.wr(cc+ccStatus, 1, 3)
		r.wr(cc+ccGFSelect, 4, 0)
		r.wr(cc+ccGF, 4, bad&0xffff_ffff)
		r.wr(cc+ccGFSelect, 4, 1)
		r.wr(cc+ccGF, 4, bad>>32)
		r.wr(cc+ccStatus, 1, 3|virtio.StatusFeaturesOK)
		if r.rd(cc+ccStatus, 1)&virtio.StatusFeaturesOK != 0 {
			t.Errorf("FEATURES_OK accepted for features %#x", bad)
		}
	}

	r.setup(virtio.FeatureVersion1 | 1<<3)
	// Device configuration passes through.
	if got := r.rd(r.capOff(4)+4, 1); got != 4 {
		t.Errorf("device config byte 4 = %d", got)
	}
	buf := r.drv.Alloc(100, 8)
	r.drv.Post(r.drv.Chain(virtiotest.Buf{Addr: buf, Len: 10}, virtiotest.Buf{Addr: buf + 10, Len: 90, Write: true}))
	r.kick(true)
	r.waitSignal(0)
	if e, ok := r.drv.PopUsed(); !ok || e.ID != 0 || e.Len != 90 {
		t.Fatalf("used %+v %v", e, ok)
	}
	// ISR: the queue bit, cleared by the read.
	isr := r.capOff(3)
	if v := r.rd(isr, 1); v&1 == 0 {
		t.Errorf("ISR %#x, want the queue bit", v)
	}
	if v := r.rd(isr, 1); v != 0 {
		t.Errorf("ISR %#x after read, want 0", v)
	}

	// A masked vector is held in the PBA and sent on unmask.
	tbl := uint64(r.cfgRead(uint32(r.msix)+4, 4) &^ 7)
	pba := uint64(r.cfgRead(uint32(r.msix)+8, 4) &^ 7)
	r.wr(tbl+12, 4, 1)
	r.drv.Post(r.drv.Chain(virtiotest.Buf{Addr: buf, Len: 8, Write: true}))
	r.kick(true)
	deadline := time.Now().Add(5 * time.Second)
	for r.rd(pba, 8)&1 == 0 {
		if time.Now().After(deadline) {
			t.Fatal("masked vector never became pending")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case v := <-r.msi.signals:
		t.Fatalf("vector %d signalled while masked", v)
	default:
	}
	r.wr(tbl+12, 4, 0)
	r.waitSignal(0)
	if r.rd(pba, 8) != 0 {
		t.Error("PBA bit still set after delivery")
	}
	r.drv.PopUsed()

	// A hostile chain: DEVICE_NEEDS_RESET, a config interrupt, ISR bit 1.
	r.drv.PutDesc(r.drv.Desc, 5, 0xdead_0000, 16, 0, 0)
	r.drv.Post(5)
	r.kick(false)
	r.waitSignal(1)
	if st := r.rd(cc+ccStatus, 1); st&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatalf("status %#x, want DEVICE_NEEDS_RESET", st)
	}
	if v := r.rd(isr, 1); v&2 == 0 {
		t.Errorf("ISR %#x, want the config bit", v)
	}

	// Reset clears everything, including the queue's setup.
	r.wr(cc+ccStatus, 1, 0)
	if st := r.rd(cc+ccStatus, 1); st != 0 {
		t.Fatalf("status %#x after reset", st)
	}
	if en, v := r.rd(cc+ccQEnable, 2), r.rd(cc+ccQMSIX, 2); en != 0 || v != virtio.NoVector {
		t.Errorf("after reset queue_enable=%d vector=%#x", en, v)
	}
	if d := r.rd(cc+ccQDesc, 8); d != 0 {
		t.Errorf("after reset queue_desc=%#x", d)
	}

	// The PCI configuration access capability reaches BAR 0 (§4.1.4.9).
	c := uint32(r.caps[5])
	r.cfgWrite(c+4, 1, 0)
	r.cfgWrite(c+8, 4, uint32(cc+ccNumQ))
	r.cfgWrite(c+12, 4, 2)
	if got := r.cfgRead(c+16, 2); got != 1 {
		t.Errorf("num_queues through pci_cfg_data = %d", got)
	}
	// With MSI-X in use, INTx# never moved.
	if n := r.intx.count(); n != 0 {
		t.Errorf("INTx asserted %d times with MSI-X enabled", n)
	}
}

// TestPCITransportBadQueue checks that DRIVER_OK with a ring outside guest
// memory sets DEVICE_NEEDS_RESET instead of activating the device.
func TestPCITransportBadQueue(t *testing.T) {
	r := newRig(t)
	r.enumerate()
	r.drv.Used = 0x7000_0000
	r.setup(virtio.FeatureVersion1)
	cc := r.capOff(1)
	if st := r.rd(cc+ccStatus, 1); st&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatalf("status %#x, want DEVICE_NEEDS_RESET", st)
	}
	r.waitSignal(1)
}

// pickyDevice refuses feature bit 3 without bit 4 (as virtio-net refuses
// MQ without CTRL_VQ).
type pickyDevice struct{ echoDevice }

func (*pickyDevice) Features() uint64 { return 1<<3 | 1<<4 }
func (*pickyDevice) CheckFeatures(f uint64) error {
	if f&(1<<3) != 0 && f&(1<<4) == 0 {
		return errors.New("bit 3 needs bit 4")
	}
	return nil
}

// TestPCIFeatureChecker: a combination the device refuses leaves
// FEATURES_OK clear (§3.1.1); one it accepts sets it.
func TestPCIFeatureChecker(t *testing.T) {
	for _, tt := range []struct {
		features uint64
		ok       bool
	}{
		{virtio.FeatureVersion1 | 1<<3, false},
		{virtio.FeatureVersion1 | 1<<3 | 1<<4, true},
		{virtio.FeatureVersion1, true},
	} {
		r := newRigFor(t, &pickyDevice{})
		r.enumerate()
		cc := r.capOff(1)
		r.wr(cc+ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
		r.wr(cc+ccGFSelect, 4, 0)
		r.wr(cc+ccGF, 4, tt.features&0xffff_ffff)
		r.wr(cc+ccGFSelect, 4, 1)
		r.wr(cc+ccGF, 4, tt.features>>32)
		r.wr(cc+ccStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
		if got := r.rd(cc+ccStatus, 1)&virtio.StatusFeaturesOK != 0; got != tt.ok {
			t.Errorf("features %#x: FEATURES_OK %v, want %v", tt.features, got, tt.ok)
		}
	}
}
