package vmm

import (
	"fmt"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

// Control-register and page-table bits (Intel SDM vol. 3A §4).
const (
	cr0PG    = 1 << 31
	cr4PAE   = 1 << 5
	cr4LA57  = 1 << 12
	eferLMA  = 1 << 10
	ptePres  = 1 << 0
	ptePS    = 1 << 7
	pteAddr  = 0x000f_ffff_ffff_f000
	pageSize = 4096
)

// translate walks the guest's page tables to turn a linear address into a
// guest-physical one, for diagnostics and instruction fix-ups. It supports
// unpaged mode, 4-level long mode with 1 GiB / 2 MiB / 4 KiB pages, and
// 32-bit paging without PAE.
func translate(mem *memory.Guest, sregs kvm.Sregs, linear uint64) (uint64, error) {
	if sregs.CR0&cr0PG == 0 {
		return linear & 0xffff_ffff, nil
	}
	if sregs.EFER&eferLMA != 0 {
		if sregs.CR4&cr4LA57 != 0 {
			return 0, fmt.Errorf("5-level paging not supported")
		}
		table := sregs.CR3 & pteAddr
		for level := 3; level >= 0; level-- {
			idx := (linear >> (12 + 9*uint(level))) & 0x1ff
			e, err := mem.Uint64(table + idx*8)
			if err != nil {
				return 0, fmt.Errorf("page walk for %#x: level %d table at %#x: %w", linear, level+1, table, err)
			}
			if e&ptePres == 0 {
				return 0, fmt.Errorf("page walk for %#x: not present at level %d", linear, level+1)
			}
			if level > 0 && level < 3 && e&ptePS != 0 {
				span := uint64(1) << (12 + 9*uint(level))
				return (e & pteAddr &^ (span - 1)) | (linear & (span - 1)), nil
			}
			table = e & pteAddr
		}
		return table | (linear & (pageSize - 1)), nil
	}
	if sregs.CR4&cr4PAE != 0 {
		return 0, fmt.Errorf("32-bit PAE paging not supported")
	}
	pde, err := mem.Uint32((sregs.CR3 & 0xffff_f000) + (linear>>22)*4)
	if err != nil {
		return 0, err
	}
	if pde&ptePres == 0 {
		return 0, fmt.Errorf("page walk for %#x: PDE not present", linear)
	}
	if pde&ptePS != 0 {
		return uint64(pde&0xffc0_0000) | linear&0x3f_ffff, nil
	}
	pte, err := mem.Uint32(uint64(pde&0xffff_f000) + ((linear>>12)&0x3ff)*4)
	if err != nil {
		return 0, err
	}
	if pte&ptePres == 0 {
		return 0, fmt.Errorf("page walk for %#x: PTE not present", linear)
	}
	return uint64(pte&0xffff_f000) | linear&0xfff, nil
}
