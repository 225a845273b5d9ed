package pvmfix

import (
	"bytes"
	"testing"

	"github.com/govmm/vmm/kvm"
)

// An XSAVE area crossing from one page to a physically distant one is
// read and written in two pieces; a fault names the first byte touched on
// the page that faults.
func TestLinearAreaAcrossPages(t *testing.T) {
	const va = 0x40_0000
	mem, sregs := pagedMemory(t, []uint64{0x9000, 0x5000, 0}, []uint64{ptePres | pteWrite, ptePres | pteWrite, 0}, pteWrite)
	base := uint64(va + 0x1000 - 512)
	a := &linearArea{mem: mem, sregs: sregs, base: base, acc: dataAccess{write: true}, pages: map[uint64]uint64{}}
	ranges := []byteRange{{0, 24}, {160, 256}, {512, 8}, {576, 256}}
	if pf, err := a.translate(ranges); pf != nil || err != nil {
		t.Fatalf("translate: %+v, %v", pf, err)
	}
	buf := pattern(xsAreaMax, 1)
	if err := a.copyRanges(buf, ranges, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 256)
	mem.ReadAt(got, 0x9000+0x1000-512+160)
	if !bytes.Equal(got, buf[160:416]) {
		t.Error("first page: XMM bytes not in place")
	}
	mem.ReadAt(got[:8], 0x5000)
	if !bytes.Equal(got[:8], buf[512:520]) {
		t.Error("second page: XSTATE_BV not at its start")
	}
	mem.ReadAt(got, 0x5000+64)
	if !bytes.Equal(got, buf[576:832]) {
		t.Error("second page: AVX state not in place")
	}
	back := make([]byte, xsAreaMax)
	if err := a.copyRanges(back, ranges, false); err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if !bytes.Equal(back[r.off:r.off+r.n], buf[r.off:r.off+r.n]) {
			t.Errorf("read back %d+%d differs", r.off, r.n)
		}
	}
	// The same area one page up: its second half is not present.
	b := &linearArea{mem: mem, sregs: sregs, base: base + 0x1000, acc: dataAccess{write: true}, pages: map[uint64]uint64{}}
	pf, err := b.translate([]byteRange{{0, 24}, {512, 8}, {576, 256}})
	if err != nil || pf == nil || pf.addr != va+0x2000 || pf.code != pfErrWrite {
		t.Errorf("fault on the second page: %+v, %v", pf, err)
	}
	// Only the ranges' pages count: an area whose second page is touched
	// by no range does not fault there.
	c := &linearArea{mem: mem, sregs: sregs, base: va + 0x2000 - 64, acc: dataAccess{}, pages: map[uint64]uint64{}}
	if pf, err := c.translate([]byteRange{{0, 24}}); pf != nil || err != nil {
		t.Errorf("untouched page faulted: %+v, %v", pf, err)
	}
	if err := c.copyRanges(back, []byteRange{{0, 80}}, false); err == nil {
		t.Error("copy through an untranslated page succeeded")
	}
}

func TestXStateLinear(t *testing.T) {
	regs := kvm.Regs{RDI: 0x7fff_ffff_fc00, RSI: 0x1040, RSP: 0xffff_8000_0000_0000}
	long := kvm.Sregs{}
	long.GS.Base = 0x10_0000
	flat := kvm.Sregs{}
	for _, s := range []*kvm.Segment{&flat.DS, &flat.SS, &flat.ES} {
		*s = kvm.Segment{Limit: 0xffff_ffff, Present: 1, S: 1, Type: 3, DB: 1, G: 1}
	}
	small := flat
	small.DS.Limit = 0x17ff
	tests := []struct {
		name   string
		code   []byte
		sregs  kvm.Sregs
		long   bool
		linear uint64
		vector int // 0: none; -1: not handled
	}{
		{"aligned", []byte{0x0f, 0xae, 0x26}, long, true, 0x1040, 0},
		{"gs base", []byte{0x65, 0x0f, 0xae, 0x26}, long, true, 0x10_1040, 0},
		{"misaligned", []byte{0x0f, 0xae, 0x66, 0x10}, long, true, 0, vectorGeneralProtection},
		{"area runs past the canonical hole", []byte{0x0f, 0xae, 0x27}, long, true, 0, vectorGeneralProtection},
		{"non-canonical via SS", []byte{0x0f, 0xae, 0x24, 0x24}, long, true, 0, vectorStackFault},
		{"canonical high half", []byte{0x0f, 0xae, 0x24, 0x24}, kvm.Sregs{}, true, 0xffff_8000_0000_0000, 0},
		{"32-bit flat", []byte{0x0f, 0xae, 0x26}, flat, false, 0x1040, 0},
		{"32-bit beyond the limit", []byte{0x0f, 0xae, 0x26}, small, false, 0, vectorGeneralProtection},
		{"32-bit unusable ES", []byte{0x26, 0x0f, 0xae, 0x26}, func() kvm.Sregs { s := flat; s.ES.Unusable = 1; return s }(), false, 0, vectorGeneralProtection},
		{"32-bit expand-down", []byte{0x0f, 0xae, 0x26}, func() kvm.Sregs { s := flat; s.DS.Type = 7; return s }(), false, 0, -1},
		{"32-bit save to a read-only segment", []byte{0x0f, 0xae, 0x26}, func() kvm.Sregs { s := flat; s.DS.Type = 1; return s }(), false, 0, vectorGeneralProtection},
		{"32-bit restore from a read-only segment", []byte{0x0f, 0xae, 0x2e}, func() kvm.Sregs { s := flat; s.DS.Type = 1; return s }(), false, 0x1040, 0},
		{"32-bit save to CS", []byte{0x2e, 0x0f, 0xae, 0x26}, func() kvm.Sregs {
			s := flat
			s.CS = kvm.Segment{Limit: 0xffff_ffff, Present: 1, S: 1, Type: 0xb, DB: 1}
			return s
		}(), false, 0, vectorGeneralProtection},
	}
	regsFor := func(name string) kvm.Regs {
		r := regs
		if name == "canonical high half" {
			r.RSP = 0xffff_8000_0000_0000
		}
		return r
	}
	for _, tt := range tests {
		in, ok := decodeXState(tt.code, tt.long)
		if !ok {
			t.Fatalf("%s: not decoded", tt.name)
		}
		r := regsFor(tt.name)
		if tt.name == "non-canonical via SS" {
			r.RSP = 0x8000_0000_0000
		}
		lin, f, ok := xstateLinear(in.mem, &r, &tt.sregs, 0, 2432, tt.long, in.op == xopSave)
		switch {
		case tt.vector == -1:
			if ok {
				t.Errorf("%s: handled", tt.name)
			}
		case !ok:
			t.Errorf("%s: not handled", tt.name)
		case tt.vector == 0 && (f != nil || lin != tt.linear):
			t.Errorf("%s: %#x, %+v; want %#x", tt.name, lin, f, tt.linear)
		case tt.vector != 0 && (f == nil || int(f.Vector) != tt.vector || !f.HasErrorCode || f.ErrorCode != 0):
			t.Errorf("%s: fault %+v, want vector %d with error code 0", tt.name, f, tt.vector)
		}
	}
}
