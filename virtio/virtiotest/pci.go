package virtiotest

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/devices"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
)

// Ring is where a driver placed one split virtqueue.
type Ring struct {
	Size              uint16
	Desc, Avail, Used uint64
}

// Ring returns the driver's queue layout.
func (d *Driver) Ring() Ring { return Ring{Size: d.Size, Desc: d.Desc, Avail: d.Avail, Used: d.Used} }

// Sibling returns a driver for another queue of size entries in the same
// guest RAM as d, with n bytes of d's RAM for its rings and buffers: a
// transport's queues all live in one guest memory.
func (d *Driver) Sibling(size uint16, n uint64) *Driver {
	start := d.Alloc(n, 16)
	s := &Driver{Mem: d.Mem, Size: size, ram: d.ram, next: start, end: start + n}
	s.Desc = s.Alloc(16*uint64(size), 16)
	s.Avail = s.Alloc(6+2*uint64(size), 2)
	s.Used = s.Alloc(6+8*uint64(size), 4)
	return s
}

// Virtio PCI layout the fake PCI driver needs (virtio 1.2 §4.1.4): the
// vendor capability's cfg_type and offset fields, and the common
// configuration fields it programs.
const (
	capCommon    = 1
	capNotify    = 2
	capDevice    = 4
	capTypeOff   = 3
	capOffsetOff = 8
	capMultOff   = 16

	ccDriverFeatureSelect = 0x08
	ccDriverFeature       = 0x0c
	ccConfigMSIXVector    = 0x10
	ccDeviceStatus        = 0x14
	ccQueueSelect         = 0x16
	ccQueueMSIXVector     = 0x1a
	ccQueueEnable         = 0x1c
	ccQueueNotifyOff      = 0x1e
	ccQueueDesc           = 0x20
	ccQueueDriver         = 0x28
	ccQueueDevice         = 0x30

	msixCapControl = 2
	msixCapTable   = 4
	msixEnable     = 0x8000
)

// PCI drives a virtio-PCI transport the way a guest does: configuration
// cycles and BAR 0 accesses on a PCI bus of its own, with MSI-X messages
// counted per vector (MSI).
type PCI struct {
	tb        testing.TB
	Transport *virtio.PCI
	Bus       *pci.Bus
	MMIO      *devices.Bus
	MSI       *MSI
	slot      uint32
}

// NewPCI wraps dev in a transport over mem and puts it on a new bus. The
// transport is closed when the test ends (the device is the caller's).
func NewPCI(tb testing.TB, dev virtio.Device, mem *memory.Guest) *PCI {
	tb.Helper()
	mmio, msi := devices.NewBus("mmio"), &MSI{}
	bus := pci.NewBusWith(pci.BusConfig{MMIO: mmio, Mem32Start: 0xc000_0000, Mem32End: 0xe000_0000, Mem64Start: 1 << 32, Mem64End: 1 << 34})
	t, err := virtio.NewPCI(dev, virtio.PCIOptions{Name: "virtiotest", Mem: mem, MSI: msi})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { t.Close() })
	slot, err := bus.Add(t)
	if err != nil {
		tb.Fatal(err)
	}
	p := AttachPCI(tb, bus, mmio, t, slot)
	p.MSI = msi
	return p
}

// AttachPCI drives transport t, which the caller put on bus at slot with
// its BARs on mmio, for tests that build the bus themselves (their own
// interrupt fakes); MSI is then nil.
func AttachPCI(tb testing.TB, bus *pci.Bus, mmio *devices.Bus, t *virtio.PCI, slot int) *PCI {
	return &PCI{tb: tb, Transport: t, Bus: bus, MMIO: mmio, slot: uint32(slot)}
}

// CfgRead reads n bytes of the function's configuration space at reg.
func (p *PCI) CfgRead(reg, n int) uint32 {
	b := make([]byte, n)
	p.Bus.ConfigRead(0, p.slot, 0, reg, b)
	var v uint32
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint32(b[i])
	}
	return v
}

// CfgWrite writes the low n bytes of v at reg.
func (p *PCI) CfgWrite(reg, n int, v uint32) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	p.Bus.ConfigWrite(0, p.slot, 0, reg, b)
}

// bar returns where BAR 0 (64-bit) is now.
func (p *PCI) bar() uint64 {
	return uint64(p.CfgRead(pci.RegBAR0+4, 4))<<32 | uint64(p.CfgRead(pci.RegBAR0, 4)&^0xf)
}

// capability returns the configuration offset of the first capability
// with the given ID whose byte at typeOff is typ (typeOff < 0: any).
func (p *PCI) capability(id byte, typeOff int, typ byte) int {
	for c, n := p.CfgRead(pci.RegCapPtr, 1), 0; c != 0 && n < 48; c, n = p.CfgRead(int(c)+1, 1), n+1 {
		if byte(p.CfgRead(int(c), 1)) == id && (typeOff < 0 || byte(p.CfgRead(int(c)+typeOff, 1)) == typ) {
			return int(c)
		}
	}
	p.tb.Fatalf("virtiotest: no capability %#x type %d", id, typ)
	return 0
}

// region returns the BAR 0 offset of a virtio structure.
func (p *PCI) region(typ byte) uint64 {
	return uint64(p.CfgRead(p.capability(pci.CapVendor, capTypeOff, typ)+capOffsetOff, 4))
}

// Read reads n bytes (up to 8) of BAR 0 at off.
func (p *PCI) Read(off uint64, n int) uint64 {
	b := make([]byte, n)
	if err := p.MMIO.Read(p.bar()+off, b); err != nil {
		p.tb.Fatal(err)
	}
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// Write writes the low n bytes of v to BAR 0 at off.
func (p *PCI) Write(off uint64, n int, v uint64) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	if err := p.MMIO.Write(p.bar()+off, b); err != nil {
		p.tb.Fatal(err)
	}
}

// Common reads a field of the common configuration structure.
func (p *PCI) Common(off uint64, n int) uint64 { return p.Read(p.region(capCommon)+off, n) }

// DeviceConfig reads n bytes of the device configuration at off.
func (p *PCI) DeviceConfig(off uint64, n int) uint64 { return p.Read(p.region(capDevice)+off, n) }

// Status returns device_status.
func (p *PCI) Status() uint8 { return uint8(p.Common(ccDeviceStatus, 1)) }

// Setup enumerates the function and runs the driver's initialisation
// (§3.1.1): memory decoding, MSI-X with queue i on vector i and
// configuration changes on the vector after the last queue, the given
// features, every ring in rings (queue i; a zero Ring leaves queue i
// disabled), and DRIVER_OK. It fails the test if the device refuses.
func (p *PCI) Setup(features uint64, rings ...Ring) {
	p.tb.Helper()
	p.CfgWrite(pci.RegCommand, 2, pci.CommandMemory|pci.CommandBusMaster)
	cc := p.region(capCommon)
	p.Write(cc+ccDeviceStatus, 1, 0)
	p.Write(cc+ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver)
	for sel := range uint64(2) {
		p.Write(cc+ccDriverFeatureSelect, 4, sel)
		p.Write(cc+ccDriverFeature, 4, features>>(32*sel)&0xffff_ffff)
	}
	p.Write(cc+ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	if p.Status()&virtio.StatusFeaturesOK == 0 {
		p.tb.Fatalf("virtiotest: FEATURES_OK refused for features %#x", features)
	}
	msix := p.capability(pci.CapMSIX, -1, 0)
	table := uint64(p.CfgRead(msix+msixCapTable, 4) &^ 7)
	for v := range uint64(len(rings) + 1) {
		p.Write(table+16*v, 4, 0xfee0_0000)
		p.Write(table+16*v+8, 4, 0x40+v)
		p.Write(table+16*v+12, 4, 0)
	}
	p.CfgWrite(msix+msixCapControl, 2, msixEnable)
	p.Write(cc+ccConfigMSIXVector, 2, uint64(len(rings)))
	for i, r := range rings {
		if r.Size == 0 {
			continue
		}
		p.Write(cc+ccQueueSelect, 2, uint64(i))
		p.Write(cc+ccQueueMSIXVector, 2, uint64(i))
		p.Write(cc+ccQueueDesc, 8, r.Desc)
		p.Write(cc+ccQueueDriver, 8, r.Avail)
		p.Write(cc+ccQueueDevice, 8, r.Used)
		p.Write(cc+ccQueueEnable, 2, 1)
	}
	p.Write(cc+ccDeviceStatus, 1, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	if st := p.Status(); st&virtio.StatusDeviceNeedsReset != 0 || st&virtio.StatusDriverOK == 0 {
		p.tb.Fatalf("virtiotest: device status %#x after DRIVER_OK", st)
	}
}

// Reset resets the device the way a driver does (§4.1.4.3.1): it writes 0
// to device_status and fails the test unless the status then reads 0,
// which the transport reports only once the device stopped.
func (p *PCI) Reset() {
	p.tb.Helper()
	p.Write(p.region(capCommon)+ccDeviceStatus, 1, 0)
	if st := p.Status(); st != 0 {
		p.tb.Fatalf("virtiotest: device status %#x after reset", st)
	}
}

// Notify sends queue q's available-buffer notification.
func (p *PCI) Notify(q int) {
	cc := p.region(capCommon)
	p.Write(cc+ccQueueSelect, 2, uint64(q))
	off := p.Common(ccQueueNotifyOff, 2)
	mult := uint64(p.CfgRead(p.capability(pci.CapVendor, capTypeOff, capNotify)+capMultOff, 4))
	p.Write(p.region(capNotify)+off*mult, 2, uint64(q))
}

// MSI is a fake MSI allocator that counts the messages sent per vector
// (the transport allocates vectors in order, so route i is vector i).
type MSI struct {
	mu     sync.Mutex
	routes []*msiRoute
}

type msiRoute struct {
	m          *MSI
	programmed bool
	sent       int
}

// NewMSIRoute implements pci.MSIAllocator.
func (m *MSI) NewMSIRoute() (pci.MSIRoute, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := &msiRoute{m: m}
	m.routes = append(m.routes, r)
	return r, nil
}

func (r *msiRoute) Update(lo, hi, data uint32) error {
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	r.programmed = true
	return nil
}

func (r *msiRoute) Signal() error {
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	r.sent++
	return nil
}

func (r *msiRoute) Close() error { return nil }

// Sent returns how many messages vector vec sent; a vector whose route
// was never given a message counts none.
func (m *MSI) Sent(vec int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vec >= len(m.routes) || !m.routes[vec].programmed {
		return 0
	}
	return m.routes[vec].sent
}

// WaitSent waits up to timeout until vector vec has sent at least n
// messages, and reports whether it did.
func (m *MSI) WaitSent(vec, n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for m.Sent(vec) < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Microsecond)
	}
	return true
}

// JSONCopy sends v through encoding/json and back, as a snapshot file
// would: a state that comes through equal is plain data.
func JSONCopy[T any](tb testing.TB, v T) T {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		tb.Fatal(err)
	}
	return out
}
