package pvmfix

import (
	"testing"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

func TestTranslateLongMode(t *testing.T) {
	host := make([]byte, 1<<20)
	mem, err := memory.FromRegions(memory.Region{GuestAddr: 0, Host: host})
	if err != nil {
		t.Fatal(err)
	}
	const pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
	// Kernel-style mapping: 0xffffffff80000000 -> 0 via 2 MiB pages, and a
	// 4 KiB page at 0xffffffff80400000 -> 0x7000.
	va := uint64(0xffffffff80000000)
	mem.PutUint64(pml4+((va>>39)&0x1ff)*8, pdpt|ptePres)
	mem.PutUint64(pdpt+((va>>30)&0x1ff)*8, pd|ptePres)
	mem.PutUint64(pd+0*8, 0|ptePres|ptePS)
	mem.PutUint64(pd+2*8, pt|ptePres)
	mem.PutUint64(pt+0*8, 0x7000|ptePres)
	sregs := kvm.Sregs{CR0: cr0PG | 1, CR4: cr4PAE, EFER: eferLMA | 1<<8, CR3: pml4}
	tests := []struct {
		va      uint64
		want    uint64
		wantErr bool
	}{
		{va + 0x1234, 0x1234, false},
		{va + 0x400010, 0x7010, false},
		{va + 0x200000, 0, true}, // PD entry 1 not present
		{0x1000, 0, true},        // low half unmapped
	}
	for _, tt := range tests {
		got, err := translate(mem, sregs, tt.va)
		if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
			t.Errorf("translate(%#x) = %#x, %v; want %#x, err %v", tt.va, got, err, tt.want, tt.wantErr)
		}
	}
	// Unpaged: identity.
	if got, err := translate(mem, kvm.Sregs{}, 0x12345); err != nil || got != 0x12345 {
		t.Errorf("unpaged translate = %#x, %v", got, err)
	}
	// Page tables pointing outside guest RAM fail cleanly.
	bad := sregs
	bad.CR3 = 1 << 40
	if _, err := translate(mem, bad, va); err == nil {
		t.Error("walk through a table outside RAM succeeded")
	}
}

// pagedMemory builds 4-level tables mapping linear 0x40_0000.. with 4 KiB
// pages onto the given physical pages (0: not present) with the given
// flags.
func pagedMemory(t *testing.T, pages []uint64, flags []uint64, upper uint64) (*memory.Guest, kvm.Sregs) {
	t.Helper()
	mem, err := memory.FromRegions(memory.Region{GuestAddr: 0, Host: make([]byte, 1<<20)})
	if err != nil {
		t.Fatal(err)
	}
	const pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
	mem.PutUint64(pml4, pdpt|ptePres|upper)
	mem.PutUint64(pdpt, pd|ptePres|upper)
	mem.PutUint64(pd+2*8, pt|ptePres|upper) // 0x40_0000
	for i, p := range pages {
		if p != 0 {
			mem.PutUint64(pt+uint64(i)*8, p|flags[i])
		}
	}
	return mem, kvm.Sregs{CR0: cr0PG | cr0WP | 1, CR4: cr4PAE, EFER: eferLMA | 1<<8, CR3: pml4}
}

func TestTranslateAccess(t *testing.T) {
	const va = 0x40_0000
	const rw, ro, user = ptePres | pteWrite, ptePres, ptePres | pteWrite | pteUser
	mem, sregs := pagedMemory(t, []uint64{0x8000, 0, 0x9000, 0xa000}, []uint64{rw, 0, ro, user}, pteWrite|pteUser)
	pte := func(i uint64) uint64 { v, _ := mem.Uint64(0x4000 + i*8); return v }
	noWP := sregs
	noWP.CR0 &^= cr0WP
	smap := sregs
	smap.CR4 |= cr4SMAP
	tests := []struct {
		name  string
		sregs kvm.Sregs
		va    uint64
		acc   dataAccess
		pa    uint64
		fault uint32 // error code + 1 (0: no fault)
		cr2   uint64
	}{
		{"read", sregs, va + 0x10, dataAccess{}, 0x8010, 0, 0},
		{"write", sregs, va + 0x20, dataAccess{write: true}, 0x8020, 0, 0},
		{"not present read", sregs, va + 0x1008, dataAccess{}, 0, 0 + 1, va + 0x1008},
		{"not present write", sregs, va + 0x1008, dataAccess{write: true}, 0, pfErrWrite + 1, va + 0x1008},
		{"not present user", sregs, va + 0x1000, dataAccess{user: true}, 0, pfErrUser + 1, va + 0x1000},
		{"read-only read", sregs, va + 0x2000, dataAccess{}, 0x9000, 0, 0},
		{"read-only write, WP", sregs, va + 0x2004, dataAccess{write: true}, 0, pfErrPresent | pfErrWrite + 1, va + 0x2004},
		{"read-only write, no WP", noWP, va + 0x2004, dataAccess{write: true}, 0x9004, 0, 0},
		{"read-only write, user, no WP", noWP, va + 0x2004, dataAccess{write: true, user: true}, 0, pfErrPresent | pfErrWrite | pfErrUser + 1, va + 0x2004},
		{"supervisor page, user", sregs, va, dataAccess{user: true}, 0, pfErrPresent | pfErrUser + 1, va},
		{"user page, user write", sregs, va + 0x3000, dataAccess{write: true, user: true}, 0xa000, 0, 0},
		{"user page, supervisor", sregs, va + 0x3000, dataAccess{write: true}, 0xa000, 0, 0},
		{"user page, SMAP", smap, va + 0x3000, dataAccess{write: true}, 0, pfErrPresent | pfErrWrite + 1, va + 0x3000},
		{"user page, SMAP with AC", smap, va + 0x3000, dataAccess{write: true, ac: true}, 0xa000, 0, 0},
	}
	for _, tt := range tests {
		pa, pf, err := translateAccess(mem, tt.sregs, tt.va, tt.acc)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		switch {
		case tt.fault == 0 && pf != nil:
			t.Errorf("%s: unexpected #PF %+v", tt.name, *pf)
		case tt.fault != 0 && (pf == nil || pf.code != tt.fault-1 || pf.addr != tt.cr2):
			t.Errorf("%s: #PF %+v, want code %#x at %#x", tt.name, pf, tt.fault-1, tt.cr2)
		case tt.fault == 0 && pa != tt.pa:
			t.Errorf("%s: pa %#x, want %#x", tt.name, pa, tt.pa)
		}
	}
	// Accessed on every level walked, dirty on the leaf of a write; a
	// faulting access sets nothing.
	if pte(0)&(pteAccessed|pteDirty) != pteAccessed|pteDirty {
		t.Errorf("PTE 0 = %#x, want A and D", pte(0))
	}
	if pte(2)&(pteAccessed|pteDirty) != pteAccessed|pteDirty {
		t.Errorf("read-only PTE = %#x, want A and D (written with CR0.WP clear)", pte(2))
	}
	mem.PutUint64(0x4000+2*8, 0x9000|ro)
	if _, pf, _ := translateAccess(mem, sregs, va+0x2000, dataAccess{write: true}); pf == nil || pte(2) != 0x9000|ro {
		t.Errorf("faulting write: %+v, PTE %#x; want a fault and the PTE untouched", pf, pte(2))
	}
	for _, a := range []uint64{0x1000, 0x2000, 0x3000 + 2*8} {
		if v, _ := mem.Uint64(a); v&pteAccessed == 0 || v&pteDirty != 0 {
			t.Errorf("table entry at %#x = %#x, want A only", a, v)
		}
	}
	// 2 MiB page read-only at the PDE.
	mem.PutUint64(0x3000+3*8, 0x20_0000|ptePres|ptePS)
	if _, pf, err := translateAccess(mem, sregs, 0x60_0010, dataAccess{write: true}); err != nil || pf == nil || pf.code != pfErrPresent|pfErrWrite {
		t.Errorf("write to a read-only 2 MiB page: %+v, %v", pf, err)
	}
	if pa, pf, err := translateAccess(mem, sregs, 0x60_0010, dataAccess{}); err != nil || pf != nil || pa != 0x20_0010 {
		t.Errorf("read of a 2 MiB page: %#x, %+v, %v", pa, pf, err)
	}
	// Unpaged, unsupported modes, tables outside RAM.
	if pa, pf, err := translateAccess(mem, kvm.Sregs{}, 0x1234, dataAccess{write: true}); err != nil || pf != nil || pa != 0x1234 {
		t.Errorf("unpaged: %#x, %+v, %v", pa, pf, err)
	}
	if _, _, err := translateAccess(mem, kvm.Sregs{CR0: cr0PG | 1, CR3: 0x1000}, 0x1234, dataAccess{}); err == nil {
		t.Error("32-bit paging accepted")
	}
	bad := sregs
	bad.CR3 = 1 << 40
	if _, _, err := translateAccess(mem, bad, va, dataAccess{}); err == nil {
		t.Error("walk through a table outside RAM succeeded")
	}
}
