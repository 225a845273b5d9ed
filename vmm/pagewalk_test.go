package vmm

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
