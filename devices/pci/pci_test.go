package pci

import (
	"encoding/binary"
	"sync/atomic"
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

// onNewBus puts f alone on a new bus with a 32-bit window at
// 0xc000_0000-0xe000_0000 (it takes slot 1) and returns the bus's MMIO
// space and its configuration ports.
func onNewBus(t *testing.T, f *testFunc) (*devices.Bus, cfgIO) {
	t.Helper()
	mmio := devices.NewBus("mmio")
	b := NewBus(mmio, 0xc000_0000, 0xe000_0000)
	if _, err := b.Add(f); err != nil {
		t.Fatal(err)
	}
	return mmio, cfgIO{b}
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
	mmio, io := onNewBus(t, f)
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

// ecamIO accesses configuration space through the ECAM front end.
type ecamIO struct{ e devices.Device }

func ecamOff(dev, fn, reg uint32) uint64 { return uint64(dev)<<15 | uint64(fn)<<12 | uint64(reg) }

func (c ecamIO) read(off uint64, n int) uint64 {
	b := make([]byte, n)
	c.e.Read(off, b)
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func (c ecamIO) write(off uint64, n int, v uint64) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	c.e.Write(off, b)
}

// TestECAM checks the memory-mapped front end against configuration
// mechanism #1: the same registers, 1/2/4-byte naturally aligned accesses,
// and all ones (writes dropped) for everything else.
func TestECAM(t *testing.T) {
	mmio := devices.NewBus("mmio")
	b := NewBus(mmio, 0xc000_0000, 0xe000_0000)
	f := newTestFunc(t, &alloc{})
	if _, err := b.Add(f); err != nil {
		t.Fatal(err)
	}
	io, e := cfgIO{b}, ecamIO{b.ECAM()}
	for _, reg := range []uint32{0, 4, 8, 0x10, 0x18, 0x2c, 0x34, 0x3c, 0x40, 0x44} {
		if got, want := e.read(ecamOff(1, 0, reg), 4), uint64(io.read(1, reg, 4)); got != want {
			t.Errorf("ECAM dword %#x = %#x, conf1 %#x", reg, got, want)
		}
	}
	if v := e.read(ecamOff(0, 0, 0), 4); v != hostBridgeDevice<<16|hostBridgeVendor {
		t.Errorf("host bridge through ECAM: %#x", v)
	}
	if v := e.read(ecamOff(1, 0, 2), 2); v != 0x5678 {
		t.Errorf("device ID word = %#x", v)
	}
	if v := e.read(ecamOff(1, 0, 0x0b), 1); v != 0x01 {
		t.Errorf("base class byte = %#x", v)
	}
	// Writes land in the same registers conf1 sees.
	e.write(ecamOff(1, 0, 0x3c), 1, 0x0b)
	if v := io.read(1, 0x3c, 1); v != 0x0b {
		t.Errorf("interrupt line written through ECAM reads %#x through conf1", v)
	}
	e.write(ecamOff(1, 0, 0x10), 4, 0xd000_0000)
	if v := io.read(1, 0x10, 4); v != 0xd000_0000 {
		t.Errorf("BAR 0 written through ECAM = %#x", v)
	}
	e.write(ecamOff(1, 0, 4), 2, CommandMemory)
	if err := mmio.Read(0xd000_0010, make([]byte, 4)); err != nil {
		t.Errorf("BAR 0 programmed through ECAM does not decode: %v", err)
	}
	// All ones: empty slots, other functions, extended registers,
	// unaligned and odd-sized accesses; writes there change nothing.
	for _, a := range []struct {
		off uint64
		n   int
	}{
		{ecamOff(5, 0, 0), 4}, {ecamOff(1, 1, 0), 4}, {ecamOff(1, 7, 0), 2},
		{ecamOff(1, 0, 0x100), 4}, {ecamOff(1, 0, 0xffc), 4}, {ecamOff(0, 0, 0x100), 1},
		{ecamOff(1, 0, 1), 2}, {ecamOff(1, 0, 2), 4}, {ecamOff(1, 0, 3), 4}, {ecamOff(1, 0, 0), 8}, {ecamOff(1, 0, 0), 3},
	} {
		want := uint64(1)<<(8*a.n) - 1
		if a.n == 8 {
			want = ^uint64(0)
		}
		if v := e.read(a.off, a.n); v != want {
			t.Errorf("%d-byte read at %#x = %#x, want all ones", a.n, a.off, v)
		}
		e.write(a.off, a.n, 0)
	}
	if v := io.read(1, 0, 4); v != 0x5678_1234 {
		t.Errorf("ID after refused writes = %#x", v)
	}
	if v := io.read(1, 0x3c, 1); v != 0x0b {
		t.Errorf("interrupt line after refused writes: %#x", v)
	}
	// A 2-byte write straddling a dword is dropped.
	e.write(ecamOff(1, 0, 0x3b), 2, 0)
	if v := io.read(1, 0x3c, 1); v != 0x0b {
		t.Errorf("unaligned write changed the interrupt line to %#x", v)
	}
}

// bar64Func has a 64-bit prefetchable BAR 0 of the given size, a 64-bit
// non-prefetchable BAR 2 and a 32-bit BAR 4.
type bar64Func struct {
	cfg  *ConfigSpace
	mapd []uint64
	unmd []uint64
}

func (f *bar64Func) Config() *ConfigSpace { return f.cfg }

type fillDev struct{}

func (fillDev) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}
func (fillDev) Write(uint64, []byte) {}

func newBar64Func(t *testing.T, size uint64) *bar64Func {
	t.Helper()
	f := &bar64Func{cfg: NewConfigSpace("b64", Identity{VendorID: 0x1234, DeviceID: 0x64})}
	onMap := func(addr uint64, on bool) {
		if on {
			f.mapd = append(f.mapd, addr)
		} else {
			f.unmd = append(f.unmd, addr)
		}
	}
	for _, b := range []struct {
		i   int
		bar BAR
	}{
		{0, BAR{Size: size, Is64: true, Prefetchable: true, Handler: fillDev{}, OnMap: onMap}},
		{2, BAR{Size: 0x2000, Is64: true, Handler: fillDev{}}},
		{4, BAR{Size: 0x1000, Handler: fillDev{}}},
	} {
		if err := f.cfg.SetBAR(b.i, b.bar); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// Test64BitBARs checks allocation above 4 GiB, sizing of both halves and
// relocation through either half in any order.
func Test64BitBARs(t *testing.T) {
	mmio := devices.NewBus("mmio")
	b := NewBusWith(BusConfig{MMIO: mmio, Mem32Start: 0xc000_0000, Mem32End: 0xe000_0000, Mem64Start: 0x1_0000_0000, Mem64End: 0x9_0000_0000})
	const size = 0x2_0000_0000 // 8 GiB: the size mask reaches the upper half
	f := newBar64Func(t, 0x8000)
	big := newBar64Func(t, size)
	if _, err := b.Add(f); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Add(big); err != nil {
		t.Fatal(err)
	}
	io := cfgIO{b}
	bar := func(dev, i uint32) uint64 {
		return uint64(io.read(dev, 0x10+4*i, 4)) | uint64(io.read(dev, 0x14+4*i, 4))<<32
	}
	// Placement: prefetchable 64-bit above 4 GiB, naturally aligned;
	// the rest in the 32-bit window.
	if v := bar(1, 0); v != 0x1_0000_000c {
		t.Errorf("BAR 0 = %#x, want 0x1_0000_0000 | 64-bit | prefetchable", v)
	}
	if v := bar(2, 0); v != 0x2_0000_000c {
		t.Errorf("8 GiB BAR 0 = %#x, want 0x2_0000_0000 (naturally aligned) | 0xc", v)
	}
	if v := bar(1, 2); v != 0xc000_0004 {
		t.Errorf("non-prefetchable 64-bit BAR 2 = %#x, want 0xc000_0004", v)
	}
	if v := io.read(1, 0x20, 4); v != 0xc000_2000 {
		t.Errorf("32-bit BAR 4 = %#x", v)
	}
	if got := f.cfg.BARAddr(0); got != 0x1_0000_0000 {
		t.Errorf("BARAddr(0) = %#x", got)
	}

	// Sizing: all ones in both halves reads back the size mask, in
	// either order.
	for _, order := range [][2]uint32{{0x10, 0x14}, {0x14, 0x10}} {
		orig := bar(1, 0)
		io.write(1, order[0], 4, 0xffff_ffff)
		io.write(1, order[1], 4, 0xffff_ffff)
		if v := bar(1, 0); v != 0xffff_ffff_ffff_800c {
			t.Errorf("size mask (writes %#x then %#x) = %#x", order[0], order[1], v)
		}
		io.write(1, order[1], 4, uint32(orig>>(8*(order[1]-0x10))))
		io.write(1, order[0], 4, uint32(orig>>(8*(order[0]-0x10))))
		if v := bar(1, 0); v != orig {
			t.Errorf("restored BAR = %#x, want %#x", v, orig)
		}
	}
	io.write(2, 0x10, 4, 0xffff_ffff)
	io.write(2, 0x14, 4, 0xffff_ffff)
	if v := bar(2, 0); v != 0xffff_fffe_0000_000c {
		t.Errorf("8 GiB size mask = %#x", v)
	}
	if sz := ^(bar(2, 0) &^ 0xf) + 1; sz != size {
		t.Errorf("size from mask = %#x", sz)
	}
	io.write(2, 0x10, 4, 0)
	io.write(2, 0x14, 4, 2)
	// Sizing the upper half alone: only bits above the size change.
	io.write(2, 0x14, 4, 0xffff_ffff)
	if v := io.read(2, 0x14, 4); v != 0xffff_fffe {
		t.Errorf("upper half mask = %#x", v)
	}
	io.write(2, 0x14, 4, 2)

	// Decoding: enable memory, then move the BAR by its upper half, by
	// its lower half, and by both with the upper half written first.
	io.write(1, 4, 2, CommandMemory)
	d := make([]byte, 4)
	if err := mmio.Read(0x1_0000_0010, d); err != nil || d[0] != 0x10 {
		t.Fatalf("BAR 0 at 4 GiB: %v %x", err, d)
	}
	for _, m := range []struct {
		regs [][2]uint32 // register, value, in order
		want uint64
	}{
		{[][2]uint32{{0x14, 3}}, 0x3_0000_0000},
		{[][2]uint32{{0x10, 0x0010_0000}}, 0x3_0010_0000},
		{[][2]uint32{{0x14, 4}, {0x10, 0x8000}}, 0x4_0000_8000},
		{[][2]uint32{{0x10, 0x1234_5678}}, 0x4_1234_0000}, // low bits below the size read as 0
	} {
		for _, r := range m.regs {
			io.write(1, r[0], 4, r[1])
		}
		if got := f.cfg.BARAddr(0); got != m.want {
			t.Errorf("after writes %v: BAR at %#x, want %#x", m.regs, got, m.want)
		}
		if err := mmio.Read(m.want+4, d); err != nil || d[0] != 4 {
			t.Errorf("BAR does not decode at %#x: %v", m.want, err)
		}
	}
	if err := mmio.Read(0x1_0000_0010, d); err == nil {
		t.Error("BAR still decodes at its first address")
	}
	if last := f.mapd[len(f.mapd)-1]; last != 0x4_1234_0000 {
		t.Errorf("OnMap last saw %#x", last)
	}
	// While the upper half holds the sizing pattern the BAR is unmapped.
	io.write(1, 0x14, 4, 0xffff_ffff)
	if err := mmio.Read(0x4_1234_0000, d); err == nil {
		t.Error("BAR decodes at its old address while being sized")
	}
	if last := f.unmd[len(f.unmd)-1]; last != 0x4_1234_0000 {
		t.Errorf("OnMap(false) last saw %#x", last)
	}
	mapped := len(f.mapd)
	io.write(1, 0x14, 4, 4)
	if len(f.mapd) != mapped+1 || mmio.Read(0x4_1234_0000, d) != nil {
		t.Error("BAR not back after sizing")
	}

	// Without a 64-bit window, 64-bit BARs share the 32-bit one.
	b32 := NewBus(devices.NewBus("mmio"), 0xc000_0000, 0xe000_0000)
	g := newBar64Func(t, 0x8000)
	if _, err := b32.Add(g); err != nil {
		t.Fatal(err)
	}
	if a := g.cfg.BARAddr(0); a != 0xc000_0000 {
		t.Errorf("64-bit BAR without a high window at %#x", a)
	}
	// A window that is too small is an error, not a wrap.
	small := NewBusWith(BusConfig{MMIO: devices.NewBus("mmio"), Mem32Start: 0xc000_0000, Mem32End: 0xc001_0000, Mem64Start: 1 << 32, Mem64End: 1<<32 + 0x4000})
	if _, err := small.Add(newBar64Func(t, 0x8000)); err == nil {
		t.Error("a 32 KiB BAR fit a 16 KiB window")
	}
}

// fakeLine records a LevelIRQ's life.
type fakeLine struct {
	gsi                uint32
	asserted           func() bool
	asserts, deasserts int
	high               bool // the level last driven
	closed             bool
}

func (l *fakeLine) Assert() error   { l.asserts++; l.high = true; return nil }
func (l *fakeLine) Deassert() error { l.deasserts++; l.high = false; return nil }
func (l *fakeLine) Close() error    { l.closed = true; return nil }

type fakeLines struct{ lines []*fakeLine }

func (a *fakeLines) NewLevelIRQ(gsi uint32, asserted func() bool) (LevelIRQ, error) {
	l := &fakeLine{gsi: gsi, asserted: asserted}
	a.lines = append(a.lines, l)
	return l, nil
}

// intxFunc is a function with an INTx pin.
type intxFunc struct {
	cfg  *ConfigSpace
	intx *INTx
}

func (f *intxFunc) Config() *ConfigSpace { return f.cfg }

func TestINTxRouting(t *testing.T) {
	r := INTxRouting{FirstGSI: 16, Count: 8}
	for _, tt := range []struct {
		dev, pin int
		gsi      uint32
	}{{1, 1, 17}, {7, 1, 23}, {8, 1, 16}, {1, 4, 20}, {9, 2, 18}, {31, 1, 23}} {
		if got := r.GSI(tt.dev, tt.pin); got != tt.gsi {
			t.Errorf("GSI(%d, %d) = %d, want %d", tt.dev, tt.pin, got, tt.gsi)
		}
	}
}

// TestINTx checks the Interrupt Pin and Line registers, the pin following
// the function's condition, INTx Disable, MSI-X and the Status bit.
func TestINTx(t *testing.T) {
	lines := &fakeLines{}
	b := NewBusWith(BusConfig{MMIO: devices.NewBus("mmio"), Mem32Start: 0xc000_0000, Mem32End: 0xe000_0000,
		INTx: lines, INTxRouting: INTxRouting{FirstGSI: 16, Count: 8}})
	io := cfgIO{b}
	// A function without a pin: Interrupt Pin 0, nothing connected.
	if _, err := b.Add(newTestFunc(t, &alloc{})); err != nil {
		t.Fatal(err)
	}
	if pin := io.read(1, RegInterruptPin, 1); pin != 0 || len(lines.lines) != 0 {
		t.Fatalf("function without INTx: pin %d, %d lines", pin, len(lines.lines))
	}
	var cond atomic.Bool
	f := &intxFunc{cfg: NewConfigSpace("intx", Identity{VendorID: 0x1234, DeviceID: 1})}
	if err := f.cfg.SetBAR(0, BAR{Size: 0x4000, Handler: fillDev{}}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.intx, err = AddINTx(f.cfg, cond.Load, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := AddINTx(f.cfg, cond.Load, nil); err == nil {
		t.Error("second INTx pin accepted")
	}
	msix, err := AddMSIX(f.cfg, 0, 0x1000, 0x2000, 1, &alloc{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if gsi, ok := f.intx.GSI(); ok {
		t.Errorf("pin connected (GSI %d) before the function is on a bus", gsi)
	}
	slot, err := b.Add(f)
	if err != nil || slot != 2 {
		t.Fatalf("Add = %d, %v", slot, err)
	}
	if len(lines.lines) != 1 {
		t.Fatalf("%d lines", len(lines.lines))
	}
	l := lines.lines[0]
	// Device 2, INTA#: GSI 16 + (2 + 1 - 1) % 8.
	if l.gsi != 18 {
		t.Errorf("line on GSI %d, want 18", l.gsi)
	}
	if pin, line := io.read(2, RegInterruptPin, 1), io.read(2, RegInterruptLine, 1); pin != PinA || line != 18 {
		t.Errorf("Interrupt Pin %d Line %d, want 1 and 18", pin, line)
	}
	io.write(2, RegInterruptPin, 1, 3)
	if pin := io.read(2, RegInterruptPin, 1); pin != PinA {
		t.Errorf("Interrupt Pin writable: %d", pin)
	}
	io.write(2, RegInterruptLine, 1, 0x0a) // the OS's scratch
	if line := io.read(2, RegInterruptLine, 1); line != 0x0a {
		t.Errorf("Interrupt Line not writable: %d", line)
	}
	status := func() uint32 { return io.read(2, RegStatus, 2) & StatusInterrupt }

	// The condition raises the pin; raising it again asserts again (a
	// lost edge can't leave the line low); clearing it deasserts once.
	cond.Store(true)
	f.intx.Update()
	f.intx.Update()
	if l.asserts != 2 || l.deasserts != 0 || !l.asserted() || status() == 0 {
		t.Errorf("raised: %d asserts, %d deasserts, asserted %v, status %#x", l.asserts, l.deasserts, l.asserted(), status())
	}
	cond.Store(false)
	f.intx.Update()
	f.intx.Update()
	if l.deasserts != 1 || l.asserted() || status() != 0 {
		t.Errorf("cleared: %d deasserts, asserted %v, status %#x", l.deasserts, l.asserted(), status())
	}

	// INTx Disable holds the pin low; Interrupt Status still shows the
	// condition; clearing the bit raises the pin again.
	io.write(2, RegCommand, 2, CommandINTxDisable)
	cond.Store(true)
	f.intx.Update()
	if l.asserts != 2 || l.asserted() || status() == 0 {
		t.Errorf("INTx disabled: %d asserts, asserted %v, status %#x", l.asserts, l.asserted(), status())
	}
	io.write(2, RegCommand, 2, 0)
	if l.asserts != 3 || !l.asserted() {
		t.Errorf("INTx re-enabled: %d asserts, asserted %v", l.asserts, l.asserted())
	}
	io.write(2, RegCommand, 2, CommandINTxDisable)
	if l.deasserts != 2 {
		t.Errorf("INTx disabled while asserted: %d deasserts", l.deasserts)
	}
	io.write(2, RegCommand, 2, 0)

	// MSI-X enabled: no INTx at all, and no Interrupt Status.
	c := io.read(2, RegCapPtr, 1)
	io.write(2, c+2, 2, 0x8000)
	if !msix.Enabled() || l.asserted() || status() != 0 {
		t.Errorf("MSI-X on: asserted %v, status %#x", l.asserted(), status())
	}
	before := l.asserts
	f.intx.Update()
	if l.asserts != before {
		t.Error("asserted with MSI-X on")
	}
	io.write(2, c+2, 2, 0)
	if !l.asserted() || l.asserts != before+1 {
		t.Errorf("MSI-X off again: asserted %v, %d asserts", l.asserted(), l.asserts-before)
	}

	if err := b.Close(); err != nil || !l.closed {
		t.Errorf("Close: %v, line closed %v", err, l.closed)
	}
	f.intx.Update() // after Close: nothing to drive, no panic
}
