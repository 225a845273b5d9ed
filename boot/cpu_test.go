package boot

import (
	"testing"
)

func TestSegmentDescriptor(t *testing.T) {
	tests := []struct {
		name string
		seg  Segment
		want uint64
	}{
		// Well-known flat descriptors (SDM Vol. 3A §3.4.5).
		{"64-bit code", Segment{Limit: 0xFFFFFFFF, Type: 0xB, Present: 1, S: 1, L: 1, G: 1}, 0x00AF9B000000FFFF},
		{"32-bit code", Segment{Limit: 0xFFFFFFFF, Type: 0xB, Present: 1, S: 1, DB: 1, G: 1}, 0x00CF9B000000FFFF},
		{"data", Segment{Limit: 0xFFFFFFFF, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}, 0x00CF93000000FFFF},
		{"TSS", Segment{Limit: 0x67, Type: 0xB, Present: 1}, 0x00008B0000000067},
		{"base", Segment{Base: 0x12345678, Limit: 0x67, Type: 0xB, Present: 1}, 0x12008B3456780067},
	}
	for _, tt := range tests {
		if got := tt.seg.descriptor(); got != tt.want {
			t.Errorf("%s: descriptor = %#016x, want %#016x", tt.name, got, tt.want)
		}
	}
}

func TestSetupCPULinux64(t *testing.T) {
	mem := newTestGuest(t, 32*mib)
	k, err := LoadKernel(mem, makeBzImage(defaultBz()))
	if err != nil {
		t.Fatal(err)
	}
	s, err := SetupCPU(mem, k, ZeroPageAddr)
	if err != nil {
		t.Fatal(err)
	}
	if s.RIP != 0x100200 || s.RSI != ZeroPageAddr || s.RFLAGS != 2 || s.CR3 != PML4Addr {
		t.Errorf("regs: RIP %#x RSI %#x RFLAGS %#x CR3 %#x", s.RIP, s.RSI, s.RFLAGS, s.CR3)
	}
	if s.CR0&(CR0PE|CR0PG|CR0ET) != CR0PE|CR0PG|CR0ET || s.CR4&CR4PAE == 0 || s.EFER != EFERLME|EFERLMA {
		t.Errorf("CR0 %#x CR4 %#x EFER %#x", s.CR0, s.CR4, s.EFER)
	}
	if s.CS.Selector != 0x10 || s.CS.L != 1 || s.CS.DB != 0 || s.DS.Selector != 0x18 || s.TR.Selector != 0x20 {
		t.Errorf("segments: CS %+v DS %+v TR %+v", s.CS, s.DS, s.TR)
	}
	if s.GDTBase != GDTAddr || s.GDTLimit != 47 {
		t.Errorf("GDT %#x/%d", s.GDTBase, s.GDTLimit)
	}
	checkGDT(t, mem, s)
	u64 := func(a uint64) uint64 {
		v, err := mem.Uint64(a)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got := u64(PML4Addr); got != PDPTAddr|3 {
		t.Errorf("PML4[0] = %#x", got)
	}
	for i := uint64(0); i < 4; i++ {
		if got, want := u64(PDPTAddr+8*i), PDAddr+0x1000*i|3; got != want {
			t.Errorf("PDPT[%d] = %#x, want %#x", i, got, want)
		}
	}
	// Walk a few addresses through the tables.
	for _, va := range []uint64{0, 0x100200, 0x7fe00000, 0xBFFFFFFF, 0xFEE00000, 0xFFFFFFFF} {
		pdpte := u64(PDPTAddr + 8*(va>>30))
		pde := u64(pdpte&^0xFFF + 8*(va>>21&0x1FF))
		if pde&0x83 != 0x83 || pde&^0xFFF|va&0x1FFFFF != va {
			t.Errorf("VA %#x maps via PDE %#x, want identity 2 MiB page", va, pde)
		}
	}
}

func checkGDT(t *testing.T, mem interface {
	Uint64(uint64) (uint64, error)
}, s *CPUState) {
	t.Helper()
	for _, seg := range []Segment{s.CS, s.DS, s.TR} {
		d, err := mem.Uint64(s.GDTBase + uint64(seg.Selector))
		if err != nil {
			t.Fatal(err)
		}
		if d != seg.descriptor() {
			t.Errorf("GDT[%#x] = %#x, want %#x", seg.Selector, d, seg.descriptor())
		}
	}
	if d, _ := mem.Uint64(s.GDTBase); d != 0 {
		t.Errorf("GDT[0] = %#x, want null", d)
	}
}

func TestSetupCPUPVH(t *testing.T) {
	mem := newTestGuest(t, 32*mib)
	k, err := LoadKernel(mem, makeELF(defaultELF(4)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := SetupCPU(mem, k, PVHStartInfoAddr)
	if err != nil {
		t.Fatal(err)
	}
	if s.RIP != testELFEntry || s.RBX != PVHStartInfoAddr || s.RFLAGS != 2 {
		t.Errorf("RIP %#x RBX %#x RFLAGS %#x", s.RIP, s.RBX, s.RFLAGS)
	}
	if s.CR0 != CR0PE|CR0ET || s.CR4 != 0 || s.EFER != 0 || s.CR3 != 0 {
		t.Errorf("CR0 %#x CR4 %#x EFER %#x CR3 %#x", s.CR0, s.CR4, s.EFER, s.CR3)
	}
	want := Segment{Limit: 0xFFFFFFFF, Selector: 0x10, Type: 0xB, Present: 1, S: 1, DB: 1, G: 1}
	if s.CS != want {
		t.Errorf("CS = %+v, want %+v", s.CS, want)
	}
	if s.DS.Limit != 0xFFFFFFFF || s.DS.Base != 0 || s.DS.DB != 1 || s.TR.Limit != 0x67 {
		t.Errorf("DS %+v TR %+v", s.DS, s.TR)
	}
	checkGDT(t, mem, s)
	// Page tables are not written for PVH.
	if v, _ := mem.Uint64(PML4Addr); v != 0 {
		t.Errorf("PML4 written for PVH: %#x", v)
	}
}

func TestSetupCPUErrors(t *testing.T) {
	mem := newTestGuest(t, 1*mib)
	if _, err := SetupCPU(mem, nil, 0); err == nil {
		t.Error("nil kernel accepted")
	}
	if _, err := SetupCPU(mem, &Kernel{Protocol: 99}, 0); err == nil {
		t.Error("unknown protocol accepted")
	}
	small := newTestGuest(t, 0x1000) // no room for the GDT's page tables
	if _, err := SetupCPU(small, &Kernel{Protocol: ProtocolLinux64}, 0); err == nil {
		t.Error("page tables outside RAM accepted")
	}
}
