package pci

import (
	"encoding/binary"
	"testing"

	"github.com/govmm/vmm/devices"
)

// testFunc is a function with a 32-bit BAR 0, a 64-bit BAR 2 and MSI-X.
type testFunc struct {
	cfg  *ConfigSpace
	msix *MSIX
	mapd []uint64
}

func (f *testFunc) Config() *ConfigSpace { return f.cfg }

type barDev struct{ f *testFunc }

func (b barDev) Read(off uint64, data []byte) {
	switch {
	case off >= 0x1000 && off < 0x2000:
		b.f.msix.ReadTable(off-0x1000, data)
	case off >= 0x2000:
		b.f.msix.ReadPBA(off-0x2000, data)
	default:
		for i := range data {
			data[i] = byte(off) + byte(i)
		}
	}
}

func (b barDev) Write(off uint64, data []byte) {
	if off >= 0x1000 && off < 0x2000 {
		b.f.msix.WriteTable(off-0x1000, data)
	}
}

type route struct {
	updates, signals int
	data             uint32
}

func (r *route) Update(lo, hi, data uint32) error { r.updates++; r.data = data; return nil }
func (r *route) Signal() error                    { r.signals++; return nil }
func (r *route) Close() error                     { return nil }

type alloc struct{ routes []*route }

func (a *alloc) NewMSIRoute() (MSIRoute, error) {
	r := &route{}
	a.routes = append(a.routes, r)
	return r, nil
}

func newTestFunc(t *testing.T, a *alloc) *testFunc {
	f := &testFunc{cfg: NewConfigSpace("test", Identity{VendorID: 0x1234, DeviceID: 0x5678, Class: 0x018000, Revision: 2})}
	if err := f.cfg.SetBAR(0, BAR{Size: 0x4000, Handler: barDev{f}, OnMap: func(addr uint64, on bool) {
		if on {
			f.mapd = append(f.mapd, addr)
		}
	}}); err != nil {
		t.Fatal(err)
	}
	if err := f.cfg.SetBAR(2, BAR{Size: 0x10000, Is64: true, Prefetchable: true, Handler: barDev{f}}); err != nil {
		t.Fatal(err)
	}
	if err := f.cfg.SetBAR(3, BAR{Size: 0x1000}); err == nil {
		t.Fatal("BAR 3 accepted while BAR 2 is 64-bit")
	}
	var err error
	if f.msix, err = AddMSIX(f.cfg, 0, 0x1000, 0x2000, 3, a, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

type cfgIO struct {
	b *Bus
}

func (c cfgIO) sel(dev, reg uint32) {
	a := make([]byte, 4)
	binary.LittleEndian.PutUint32(a, 0x8000_0000|dev<<11|reg&0xfc)
	c.b.AddressPort().Write(0, a)
}

func (c cfgIO) read(dev, reg uint32, n int) uint32 {
	c.sel(dev, reg)
	b := make([]byte, n)
	c.b.DataPort().Read(uint64(reg&3), b)
	var v uint32
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint32(b[i])
	}
	return v
}

func (c cfgIO) write(dev, reg uint32, n int, v uint32) {
	c.sel(dev, reg)
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	c.b.DataPort().Write(uint64(reg&3), b)
}

func TestConfigMechanism(t *testing.T) {
	mmio := devices.NewBus("mmio")
	b := NewBus(mmio, 0xc000_0000, 0xe000_0000)
	io := cfgIO{b}
	// The address register reads back (reserved bits clear).
	io.sel(3, 0x10)
	got := make([]byte, 4)
	b.AddressPort().Read(0, got)
	if v := binary.LittleEndian.Uint32(got); v != 0x8000_0000|3<<11|0x10 {
		t.Errorf("address register %#x", v)
	}
	// Host bridge at 00:00.0.
	if v := io.read(0, 0, 4); v != hostBridgeDevice<<16|hostBridgeVendor {
		t.Errorf("00:00.0 id %#x", v)
	}
	if c := io.read(0, 0x08, 4) >> 8; c != ClassBridgeHost {
		t.Errorf("host bridge class %#x", c)
	}
	// Empty slots, other functions and buses read as all ones.
	if v := io.read(5, 0, 4); v != 0xffff_ffff {
		t.Errorf("empty slot %#x", v)
	}
	a := make([]byte, 4)
	binary.LittleEndian.PutUint32(a, 0x8000_0000|1<<16)
	b.AddressPort().Write(0, a)
	b.DataPort().Read(0, a)
	if binary.LittleEndian.Uint32(a) != 0xffff_ffff {
		t.Error("bus 1 answers")
	}
	// Extended registers (AMD-style bits 27:24) don't exist.
	binary.LittleEndian.PutUint32(a, 0x8000_0000|1<<24)
	b.AddressPort().Write(0, a)
	b.DataPort().Read(0, a)
	if binary.LittleEndian.Uint32(a) != 0xffff_ffff {
		t.Error("extended register 0x100 of the host bridge answers")
	}
	// Without the enable bit, nothing answers.
	binary.LittleEndian.PutUint32(a, 0)
	b.AddressPort().Write(0, a)
	b.DataPort().Read(0, a)
	if binary.LittleEndian.Uint32(a) != 0xffff_ffff {
		t.Error("config read without the enable bit answered")
	}

	al := &alloc{}
	f := newTestFunc(t, al)
	slot, err := b.Add(f)
	if err != nil || slot != 1 {
		t.Fatalf("Add = %d, %v", slot, err)
	}
	// Byte and word accesses within the dword.
	if v := io.read(1, 2, 2); v != 0x5678 {
		t.Errorf("device id via word read at 2: %#x", v)
	}
	if v := io.read(1, 1, 1); v != 0x12 {
		t.Errorf("vendor high byte %#x", v)
	}
	if v := io.read(1, 0x0b, 1); v != 0x01 {
		t.Errorf("base class %#x", v)
	}
	// Read-only registers ignore writes; interrupt line is scratch.
	io.write(1, 0, 4, 0)
	if io.read(1, 0, 2) != 0x1234 {
		t.Error("vendor ID writable")
	}
	io.write(1, 0x3c, 1, 0x0b)
	if io.read(1, 0x3c, 1) != 0x0b {
		t.Error("interrupt line not writable")
	}
}

func TestBARs(t *testing.T) {
	mmio := devices.NewBus("mmio")
	b := NewBus(mmio, 0xc000_0000, 0xe000_0000)
	io := cfgIO{b}
	f := newTestFunc(t, &alloc{})
	if _, err := b.Add(f); err != nil {
		t.Fatal(err)
	}
	bar0 := io.read(1, 0x10, 4)
	if bar0 != 0xc000_0000 {
		t.Errorf("BAR 0 = %#x", bar0)
	}
	bar2lo, bar2hi := io.read(1, 0x18, 4), io.read(1, 0x1c, 4)
	if bar2lo&0xf != 0xc || bar2lo&^0xf%0x10000 != 0 || bar2hi != 0 {
		t.Errorf("BAR 2 = %#x:%#x, want a naturally aligned 64-bit prefetchable BAR", bar2hi, bar2lo)
	}
	// Sizing: all ones reads back the size mask with the type bits.
	io.write(1, 0x10, 4, 0xffff_ffff)
	if v := io.read(1, 0x10, 4); v != 0xffff_c000 {
		t.Errorf("BAR 0 size mask %#x", v)
	}
	io.write(1, 0x18, 4, 0xffff_ffff)
	io.write(1, 0x1c, 4, 0xffff_ffff)
	if lo, hi := io.read(1, 0x18, 4), io.read(1, 0x1c, 4); lo != 0xffff_000c || hi != 0xffff_ffff {
		t.Errorf("BAR 2 size mask %#x:%#x", hi, lo)
	}
	io.write(1, 0x18, 4, bar2lo)
	io.write(1, 0x1c, 4, bar2hi)
	if v := io.read(1, 0x24, 4); v != 0 {
		t.Errorf("unimplemented BAR 5 = %#x", v)
	}
	// Decoding follows the command register and the programmed address.
	io.write(1, 0x10, 4, 0xd000_0000)
	if err := mmio.Read(0xd000_0000, make([]byte, 4)); err == nil {
		t.Fatal("BAR decodes before memory space is enabled")
	}
	io.write(1, 4, 2, CommandMemory)
	d := make([]byte, 2)
	if err := mmio.Read(0xd000_0010, d); err != nil || d[0] != 0x10 {
		t.Fatalf("BAR 0 at its new address: %v %x", err, d)
	}
	if err := mmio.Read(uint64(bar2lo&^0xf), d); err != nil {
		t.Fatalf("BAR 2: %v", err)
	}
	io.write(1, 0x10, 4, 0xd001_0000)
	if err := mmio.Read(0xd000_0010, d); err == nil {
		t.Error("BAR 0 still decodes at its old address")
	}
	if err := mmio.Read(0xd001_0010, d); err != nil {
		t.Errorf("BAR 0 moved: %v", err)
	}
	if len(f.mapd) != 2 || f.mapd[1] != 0xd001_0000 {
		t.Errorf("OnMap saw %#x", f.mapd)
	}
	io.write(1, 4, 2, 0)
	if err := mmio.Read(0xd001_0010, d); err == nil {
		t.Error("BAR decodes after memory space was disabled")
	}
}

func TestMSIX(t *testing.T) {
	al := &alloc{}
	f := newTestFunc(t, al)
	mmio := devices.NewBus("mmio")
	b := NewBus(mmio, 0xc000_0000, 0xe000_0000)
	if _, err := b.Add(f); err != nil {
		t.Fatal(err)
	}
	io := cfgIO{b}
	io.write(1, 4, 2, CommandMemory)
	// Find the capability.
	c := io.read(1, 0x34, 1)
	if io.read(1, c, 1) != CapMSIX {
		t.Fatalf("capability at %#x is %#x", c, io.read(1, c, 1))
	}
	if n := io.read(1, c+2, 2)&0x7ff + 1; n != 3 {
		t.Fatalf("table size %d", n)
	}
	if tb, pb := io.read(1, c+4, 4), io.read(1, c+8, 4); tb != 0x1000 || pb != 0x2000 {
		t.Fatalf("table %#x pba %#x", tb, pb)
	}
	bar := uint64(0xc000_0000)
	w32 := func(off uint64, v uint32) {
		d := binary.LittleEndian.AppendUint32(nil, v)
		mmio.Write(bar+off, d)
	}
	r32 := func(off uint64) uint32 {
		d := make([]byte, 4)
		mmio.Read(bar+off, d)
		return binary.LittleEndian.Uint32(d)
	}
	if r32(0x100c) != 1 {
		t.Error("vector 0 not masked at reset")
	}
	w32(0x1010, 0xfee0_0000)
	w32(0x1018, 0x41)
	if r32(0x1018) != 0x41 {
		t.Error("table data does not read back")
	}
	// MSI-X disabled: pending.
	f.msix.Notify(1)
	if al.routes[1].signals != 0 || r32(0x2000) != 2 {
		t.Fatalf("signals %d, PBA %#x", al.routes[1].signals, r32(0x2000))
	}
	io.write(1, c+2, 2, 0x8000|0x4000) // enable, function masked
	w32(0x101c, 0)                     // unmask vector 1
	if al.routes[1].signals != 0 {
		t.Fatal("delivered while the function is masked")
	}
	io.write(1, c+2, 2, 0x8000)
	if al.routes[1].signals != 1 || al.routes[1].data != 0x41 || r32(0x2000) != 0 {
		t.Fatalf("after unmask: signals %d data %#x PBA %#x", al.routes[1].signals, al.routes[1].data, r32(0x2000))
	}
	f.msix.Notify(1)
	f.msix.Notify(7) // out of range: ignored
	if al.routes[1].signals != 2 || al.routes[1].updates != 1 {
		t.Errorf("signals %d, route updates %d", al.routes[1].signals, al.routes[1].updates)
	}
	// A changed message reprograms the route before the next signal.
	w32(0x1018, 0x42)
	f.msix.Notify(1)
	if al.routes[1].updates != 2 || al.routes[1].data != 0x42 {
		t.Errorf("route not reprogrammed: %+v", al.routes[1])
	}
}
