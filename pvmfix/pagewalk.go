package pvmfix

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
		w, err := walk4(mem, sregs.CR3, linear)
		if err != nil {
			return 0, err
		}
		if !w.present {
			return 0, fmt.Errorf("page walk for %#x: not present at level %d", linear, w.level)
		}
		return w.pa, nil
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

// Page-table and control bits a checked data access uses (Intel SDM vol.
// 3A §4.6, §4.8).
const (
	pteWrite    = 1 << 1
	pteUser     = 1 << 2
	pteAccessed = 1 << 5
	pteDirty    = 1 << 6
	cr0WP       = 1 << 16
	cr4SMAP     = 1 << 21
)

// Page-fault error-code bits (Intel SDM vol. 3A §4.7).
const (
	pfErrPresent = 1 << 0 // a protection violation, not a not-present page
	pfErrWrite   = 1 << 1
	pfErrUser    = 1 << 2
)

// dataAccess describes a data access to guest-linear memory.
type dataAccess struct {
	write bool
	user  bool // at CPL 3
	ac    bool // RFLAGS.AC: lets supervisor accesses reach user pages under SMAP
}

// pageFault is the #PF an access raises: the linear address for CR2 and
// the error code.
type pageFault struct {
	addr uint64
	code uint32
}

// translateAccess translates a linear address for a data access the way
// the processor does: besides walking the tables like translate, it
// checks the present, writable and user bits of every level (honouring
// CR0.WP and CR4.SMAP) and returns the page fault the access raises; on
// success it sets the accessed flag of every entry it used and, for a
// write, the dirty flag of the last one. It handles unpaged mode and
// 4-level long mode; other paging modes, and tables outside guest RAM, are
// errors (the caller gives up on the instruction).
func translateAccess(mem *memory.Guest, sregs kvm.Sregs, linear uint64, acc dataAccess) (uint64, *pageFault, error) {
	if sregs.CR0&cr0PG == 0 {
		return linear & 0xffff_ffff, nil, nil
	}
	if sregs.EFER&eferLMA == 0 || sregs.CR4&cr4LA57 != 0 {
		return 0, nil, fmt.Errorf("page walk for %#x: only 4-level long-mode paging is supported", linear)
	}
	fault := func(code uint32) *pageFault {
		if acc.write {
			code |= pfErrWrite
		}
		if acc.user {
			code |= pfErrUser
		}
		return &pageFault{addr: linear, code: code}
	}
	w, err := walk4(mem, sregs.CR3, linear)
	if err != nil {
		return 0, nil, err
	}
	if !w.present {
		return 0, fault(0), nil
	}
	switch {
	case acc.user && !w.user:
		return 0, fault(pfErrPresent), nil
	case acc.write && !w.writable && (acc.user || sregs.CR0&cr0WP != 0):
		return 0, fault(pfErrPresent), nil
	case !acc.user && w.user && sregs.CR4&cr4SMAP != 0 && !acc.ac:
		return 0, fault(pfErrPresent), nil
	}
	for i, ea := range w.entries[:w.n] {
		bits := uint64(pteAccessed)
		if i == w.n-1 && acc.write {
			bits |= pteDirty
		}
		if err := mem.OrUint64(ea, bits); err != nil {
			return 0, nil, err
		}
	}
	return w.pa, nil, nil
}

// walk is what a 4-level walk found.
type walk struct {
	present bool
	level   int       // 1-based level of the entry that was not present
	pa      uint64    // the guest-physical address, when present
	entries [4]uint64 // guest-physical addresses of the entries used, leaf last
	n       int
	// writable and user are the AND of those bits over the entries used.
	writable, user bool
}

// walk4 walks 4-level long-mode page tables rooted at cr3 for linear,
// with 1 GiB / 2 MiB / 4 KiB pages. It only reads the tables: callers
// check permissions and set accessed/dirty bits as their access needs.
func walk4(mem *memory.Guest, cr3, linear uint64) (walk, error) {
	w := walk{writable: true, user: true}
	table := cr3 & pteAddr
	for level := 3; level >= 0; level-- {
		ea := table + ((linear>>(12+9*uint(level)))&0x1ff)*8
		e, err := mem.Uint64(ea)
		if err != nil {
			return w, fmt.Errorf("page walk for %#x: level %d table at %#x: %w", linear, level+1, table, err)
		}
		if e&ptePres == 0 {
			w.level = level + 1
			return w, nil
		}
		w.entries[w.n] = ea
		w.n++
		w.writable = w.writable && e&pteWrite != 0
		w.user = w.user && e&pteUser != 0
		if e&ptePS != 0 && level > 0 {
			if level == 3 {
				return w, fmt.Errorf("page walk for %#x: PS set in a PML4 entry", linear)
			}
			span := uint64(1) << (12 + 9*uint(level))
			w.pa = (e & pteAddr &^ (span - 1)) | (linear & (span - 1))
			w.present = true
			return w, nil
		}
		table = e & pteAddr
	}
	w.pa = table | (linear & (pageSize - 1))
	w.present = true
	return w, nil
}

// ReadCode reads up to n bytes of guest code at rip, through CS and the
// guest's page tables, stopping early at a page it cannot reach; it fails
// only when not even the first byte can be read.
func ReadCode(mem *memory.Guest, sregs kvm.Sregs, rip uint64, n int) ([]byte, error) {
	linear := rip + sregs.CS.Base
	if sregs.EFER&eferLMA != 0 && sregs.CS.L != 0 {
		linear = rip
	}
	var out []byte
	for len(out) < n {
		pa, err := translate(mem, sregs, linear+uint64(len(out)))
		if err != nil {
			if len(out) > 0 {
				return out, nil
			}
			return nil, err
		}
		k := min(n-len(out), pageSize-int(pa&(pageSize-1)))
		buf := make([]byte, k)
		if err := mem.ReadAt(buf, pa); err != nil {
			if len(out) > 0 {
				return out, nil
			}
			return nil, err
		}
		out = append(out, buf...)
	}
	return out, nil
}
