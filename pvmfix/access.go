package pvmfix

import (
	"fmt"
	"slices"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

// Reaching a memory operand the way the processor does before an access:
// segment checks, then guest-linear memory translated page by page with
// the page-fault checks of pagewalk.go.

// canonical reports whether a is a canonical 48-bit linear address.
func canonical(a uint64) bool {
	top := a >> 47
	return top == 0 || top == 0x1_ffff
}

// segmentOf returns the segment register seg names.
func segmentOf(sregs *kvm.Sregs, seg int) *kvm.Segment {
	switch seg {
	case segES:
		return &sregs.ES
	case segCS:
		return &sregs.CS
	case segSS:
		return &sregs.SS
	case segFS:
		return &sregs.FS
	case segGS:
		return &sregs.GS
	}
	return &sregs.DS
}

// xstateLinear turns the operand into the linear address of an XSAVE area
// of which the instruction touches the first size bytes, checking what
// the processor checks before any access: canonical form in 64-bit mode,
// segment usability, type and limit otherwise, and 64-byte alignment.
// ok=false means a case this code does not handle.
func xstateLinear(m memOperand, regs *kvm.Regs, sregs *kvm.Sregs, next, size uint64, long, write bool) (linear uint64, f *fault, ok bool) {
	ea := m.effectiveAddr(regs, next)
	segFault := gpFault()
	if m.seg == segSS {
		segFault = &fault{Exception: Exception{Vector: vectorStackFault, HasErrorCode: true}}
	}
	s := segmentOf(sregs, m.seg)
	if long {
		linear = ea
		if m.seg == segFS || m.seg == segGS {
			linear += s.Base
		}
		if !canonical(linear) || !canonical(linear+size-1) {
			return 0, segFault, true
		}
	} else {
		// Expand-down data segments are not handled.
		if s.S != 0 && s.Type&0x8 == 0 && s.Type&0x4 != 0 {
			return 0, nil, false
		}
		if s.Unusable != 0 || s.Present == 0 {
			return 0, segFault, true
		}
		// Code segments are never writable and readable only with
		// type bit 1; data segments writable only with type bit 1.
		if code := s.Type&0x8 != 0; (code && (write || s.Type&0x2 == 0)) || (!code && write && s.Type&0x2 == 0) {
			return 0, segFault, true
		}
		if ea > uint64(s.Limit) || size-1 > uint64(s.Limit)-ea {
			return 0, segFault, true
		}
		linear = (s.Base + ea) & 0xffff_ffff
		if linear+size > 1<<32 {
			return 0, nil, false // wraps around 4 GiB
		}
	}
	if linear%64 != 0 {
		return 0, gpFault(), true
	}
	return linear, nil, true
}

// linearArea is guest memory at a linear address, translated page by page
// for one kind of access.
type linearArea struct {
	mem   *memory.Guest
	sregs kvm.Sregs
	base  uint64
	acc   dataAccess
	pages map[uint64]uint64 // linear page -> guest-physical page
}

// translate translates every page the ranges touch, lowest first, and
// returns the page fault of the first page that cannot be accessed.
func (a *linearArea) translate(ranges []byteRange) (*pageFault, error) {
	first := map[uint64]uint64{} // page -> first byte touched in it
	for _, r := range ranges {
		if r.n == 0 {
			continue
		}
		start, end := a.base+uint64(r.off), a.base+uint64(r.off)+uint64(r.n)-1
		for p := start &^ (pageSize - 1); p <= end; p += pageSize {
			addr := max(p, start)
			if f, ok := first[p]; !ok || addr < f {
				first[p] = addr
			}
		}
	}
	pages := make([]uint64, 0, len(first))
	for p := range first {
		if _, done := a.pages[p]; !done {
			pages = append(pages, p)
		}
	}
	slices.Sort(pages)
	for _, p := range pages {
		pa, pf, err := translateAccess(a.mem, a.sregs, first[p], a.acc)
		if err != nil || pf != nil {
			return pf, err
		}
		a.pages[p] = pa &^ (pageSize - 1)
	}
	return nil, nil
}

// copyRanges moves the ranges between buf (indexed by area offset) and
// guest memory, splitting at page boundaries; the pages must have been
// translated.
func (a *linearArea) copyRanges(buf []byte, ranges []byteRange, write bool) error {
	for _, r := range ranges {
		for done := uint32(0); done < r.n; {
			lin := a.base + uint64(r.off+done)
			pa, ok := a.pages[lin&^(pageSize-1)]
			if !ok {
				return fmt.Errorf("xsave area page %#x not translated", lin&^(pageSize-1))
			}
			k := min(r.n-done, uint32(pageSize-lin%pageSize))
			chunk := buf[r.off+done : r.off+done+k]
			var err error
			if write {
				err = a.mem.WriteAt(chunk, pa+lin%pageSize)
			} else {
				err = a.mem.ReadAt(chunk, pa+lin%pageSize)
			}
			if err != nil {
				return err
			}
			done += k
		}
	}
	return nil
}
