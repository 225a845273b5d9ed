package pci

import (
	"encoding/binary"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/govmm/vmm/devices"
)

// TestFunctionStateRoundTrip programs a function as a guest would (BARs
// moved, memory decoding on, Interrupt Line, MSI-X table, enable and a
// pending vector), saves it through JSON and restores it into a function
// built the same way on a new bus: the guest's view and the routing are
// back.
func TestFunctionStateRoundTrip(t *testing.T) {
	al := &alloc{}
	f := newTestFunc(t, al)
	mmio, io := onNewBus(t, f)
	io.write(1, RegBAR0, 4, 0xd000_0000)
	io.write(1, RegBAR0+8, 4, 0x2000_0000)
	io.write(1, RegBAR0+12, 4, 0x3)
	io.write(1, RegCommand, 2, CommandMemory|CommandBusMaster)
	io.write(1, RegInterruptLine, 1, 11)
	c := io.read(1, RegCapPtr, 1)
	bar := uint64(0xd000_0000)
	w32 := func(mmio *devices.Bus, off uint64, v uint32) {
		if err := mmio.Write(bar+off, binary.LittleEndian.AppendUint32(nil, v)); err != nil {
			t.Fatal(err)
		}
	}
	w32(mmio, 0x1010, 0xfee0_1000)
	w32(mmio, 0x1018, 0x51)
	w32(mmio, 0x101c, 0) // vector 1 unmasked
	f.msix.Notify(2)     // masked: pending
	io.write(1, c+2, 2, 0x8000)

	raw, err := json.Marshal(f.cfg.State())
	if err != nil {
		t.Fatal(err)
	}
	var st FunctionState
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}

	// A hostile PBA with a bit for a vector the function lacks: restored
	// as zero.
	st.MSIX.Pending[len(st.MSIX.Pending)-1] |= 1 << 63

	al2 := &alloc{}
	f2 := newTestFunc(t, al2)
	mmio2, io2 := onNewBus(t, f2)
	if err := f2.cfg.Restore(st); err != nil {
		t.Fatal(err)
	}
	if got, want := f2.cfg.State().MSIX.Pending, f.cfg.State().MSIX.Pending; !slices.Equal(got, want) {
		t.Errorf("PBA after restore %#x, want %#x", got, want)
	}
	for _, r := range []struct {
		reg uint32
		n   int
	}{{RegCommand, 2}, {RegBAR0, 4}, {RegBAR0 + 8, 4}, {RegBAR0 + 12, 4}, {RegInterruptLine, 1}, {c + 2, 2}} {
		if got, want := io2.read(1, r.reg, r.n), io.read(1, r.reg, r.n); got != want {
			t.Errorf("register %#x = %#x after restore, want %#x", r.reg, got, want)
		}
	}
	if len(f2.mapd) != 1 || f2.mapd[0] != bar {
		t.Errorf("BAR 0 mapped at %#x after restore, want [%#x]", f2.mapd, bar)
	}
	d := make([]byte, 4)
	if err := mmio2.Read(0x3_2000_0000, d); err != nil {
		t.Errorf("64-bit BAR not decoding at its restored address: %v", err)
	}
	if err := mmio2.Read(bar+0x1018, d); err != nil || binary.LittleEndian.Uint32(d) != 0x51 {
		t.Errorf("MSI-X data after restore %#x (%v)", d, err)
	}
	if err := mmio2.Read(bar+0x2000, d); err != nil || d[0] != 4 {
		t.Errorf("PBA after restore %#x, want vector 2 pending", d)
	}
	// The new route gets the message before its first signal.
	f2.msix.Notify(1)
	if r := al2.routes[1]; r.updates != 1 || r.signals != 1 || r.data != 0x51 {
		t.Errorf("route after restore: %+v", *r)
	}
	// Unmasking vector 2 delivers the pending one.
	w32(mmio2, 0x102c, 0)
	if r := al2.routes[2]; r.signals != 1 {
		t.Errorf("pending vector 2 not delivered on unmask: %+v", *r)
	}
}

// TestFunctionStateRefused: state that can't be this function's is
// refused and changes nothing.
func TestFunctionStateRefused(t *testing.T) {
	f := newTestFunc(t, &alloc{})
	good := f.cfg.State()
	for _, tt := range []struct {
		name string
		edit func(s *FunctionState)
		want string
	}{
		{"short", func(s *FunctionState) { s.Config = s.Config[:64] }, "configuration bytes"},
		{"other device", func(s *FunctionState) { s.Config[RegDeviceID] ^= 1 }, "this function has"},
		{"BAR in the upper slot", func(s *FunctionState) { s.BARs[3] = 0x1000 }, "BAR 3"},
		{"absent BAR", func(s *FunctionState) { s.BARs[5] = 0x1000 }, "BAR 5"},
		{"no MSI-X", func(s *FunctionState) { s.MSIX = nil }, "MSI-X"},
		{"vectors", func(s *FunctionState) { s.MSIX.Entries = s.MSIX.Entries[:1] }, "MSI-X vectors"},
	} {
		s := f.cfg.State()
		tt.edit(&s)
		if err := f.cfg.Restore(s); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
	}
	if got := f.cfg.State(); string(got.Config) != string(good.Config) {
		t.Error("a refused restore changed the configuration space")
	}
}

func TestBusStateRoundTrip(t *testing.T) {
	mmio := devices.NewBus("mmio")
	b := NewBus(mmio, 0xc000_0000, 0xe000_0000)
	addr := make([]byte, 4)
	binary.LittleEndian.PutUint32(addr, 0x8000_0810)
	b.AddressPort().Write(0, addr)
	// The host bridge's Command register, as firmware writes it.
	b.ConfigWrite(0, 0, 0, 4, []byte{0x06, 0x00})
	s := b.State()
	if s.ConfigAddress != 0x8000_0810 {
		t.Fatalf("saved address %#x, want %#x", s.ConfigAddress, 0x8000_0810)
	}
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back BusState
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	b2 := NewBus(devices.NewBus("mmio"), 0xc000_0000, 0xe000_0000)
	if err := b2.Restore(back); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	b2.AddressPort().Read(0, got)
	if v := binary.LittleEndian.Uint32(got); v != 0x8000_0810 {
		t.Errorf("restored address register reads %#x, want %#x", v, 0x8000_0810)
	}
	cmd := make([]byte, 2)
	b2.ConfigRead(0, 0, 0, 4, cmd)
	if cmd[0] != 0x06 {
		t.Errorf("restored host bridge command %#x, want 0x06", cmd[0])
	}

	bad := back
	bad.ConfigAddress |= 1
	if err := NewBus(devices.NewBus("mmio"), 0xc000_0000, 0xe000_0000).Restore(bad); err == nil {
		t.Error("a configuration address with reserved bits was restored")
	}
}
