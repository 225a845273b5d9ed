package pvmfix

import (
	"fmt"

	"github.com/govmm/vmm/kvm"
)

// XSAVE, XRSTOR and XGETBV on kvm-pvm hosts.
//
// There a guest kernel's ring-0 code runs in KVM's instruction emulator,
// which cannot execute these instructions, while guest user space runs on
// the hardware under the host's XCR0: it sees AVX and AVX-512 as usable. A
// kernel limited to FXSAVE then loses the upper YMM/ZMM halves and the
// opmask registers of its processes at every context switch and signal.
// So the kernel's XSAVE/XRSTOR are completed here (Intel SDM vol. 1
// ch. 13, vol. 2 "XSAVE", "XRSTOR", "XGETBV"): it reads the vCPU's extended
// state with KVM_GET_XSAVE (a standard-format XSAVE image), writes it to
// guest memory or loads it from there and hands it back with
// KVM_SET_XSAVE. The VMM tells the guest kernel to use only the
// standard-format XSAVE/XRSTOR (its clearcpuid= option hides XSAVEOPT,
// XSAVEC and XSAVES).
//
// Not implemented: the compacted form of XRSTOR (an XCOMP_BV with bit 63
// set raises #GP, as on a CPU without XSAVEC), XSAVEOPT/XSAVEC/XSAVES/
// XRSTORS, 16-bit addressing and 32-bit paging modes; those fall back to
// the failure path.

// The standard-format XSAVE area (Intel SDM vol. 1 §13.4, table 13-1).
const (
	xsFCW       = 0
	xsFIP       = 8
	xsFDP       = 16
	xsMXCSR     = 24
	xsMXCSRMask = 28
	xsST0       = 32
	xsXMM0      = 160
	xsLegacyEnd = 416
	xsHeader    = 512
	xsXCompBV   = 520
	xsHeaderEnd = 576 // the extended region starts here
	xsAreaMax   = kvm.XSAVESize
)

// State-component bits of XCR0, XSTATE_BV and the instruction mask.
const (
	xfeatX87 = 1 << 0
	xfeatSSE = 1 << 1
	xfeatAVX = 1 << 2
)

// Initial values (Intel SDM vol. 1 §13.6, the x87 control word's as at
// FINIT, §8.1.5) and the MXCSR_MASK to assume when the CPU reports none
// (vol. 1 §11.6.6).
const (
	mxcsrDefaultMask = 0xffbf
	x87FCWInit       = 0x37f
)

// Control-register bits the instructions check.
const (
	cr0TS      = 1 << 3
	cr4OSXSAVE = 1 << 18
)

// cpuidLeafXState is CPUID leaf 0xD: XSAVE features and component layout.
const cpuidLeafXState = 0xd

// XStateLayout holds where each extended state component (2..62) lies in
// a standard-format XSAVE area, from CPUID.(EAX=0DH,ECX=i): EBX is the
// offset, EAX the size. Zero size: unknown, or a supervisor component
// (which has no standard-format offset).
type XStateLayout struct {
	off, size [64]uint32
}

// NewXStateLayout reads the layout from the CPUID a vCPU was given.
func NewXStateLayout(c kvm.CPUID) *XStateLayout {
	l := &XStateLayout{}
	for i := uint32(2); i < 63; i++ {
		e := c.Find(cpuidLeafXState, i)
		if e == nil || e.Index != i || e.EAX == 0 || e.EBX < xsHeaderEnd || e.EBX > xsAreaMax || e.EAX > xsAreaMax-e.EBX {
			continue
		}
		l.off[i], l.size[i] = e.EBX, e.EAX
	}
	return l
}

// covers reports whether every extended component in mask has a known
// place inside the 4 KiB image KVM_GET_XSAVE returns.
func (l *XStateLayout) covers(mask uint64) bool {
	for i := 2; i < 64; i++ {
		if mask&(1<<i) != 0 && l.size[i] == 0 {
			return false
		}
	}
	return true
}

// byteRange is a span of an XSAVE area: offset and length.
type byteRange struct{ off, n uint32 }

// componentRanges lists the bytes holding the state components in mask:
// the x87 registers (not MXCSR), the XMM registers and the extended
// components.
func (l *XStateLayout) componentRanges(mask uint64) []byteRange {
	var r []byteRange
	if mask&xfeatX87 != 0 {
		r = append(r, byteRange{xsFCW, xsMXCSR}, byteRange{xsST0, xsXMM0 - xsST0})
	}
	if mask&xfeatSSE != 0 {
		r = append(r, byteRange{xsXMM0, xsLegacyEnd - xsXMM0})
	}
	for i := 2; i < 64; i++ {
		if mask&(1<<i) != 0 && l.size[i] != 0 {
			r = append(r, byteRange{l.off[i], l.size[i]})
		}
	}
	return r
}

// xsaveRanges lists the bytes XSAVE writes for the requested-feature
// bitmap rfbm: the components, MXCSR and MXCSR_MASK when SSE or AVX state
// is requested, and XSTATE_BV.
func xsaveRanges(rfbm uint64, l *XStateLayout) []byteRange {
	r := l.componentRanges(rfbm)
	if rfbm&(xfeatSSE|xfeatAVX) != 0 {
		r = append(r, byteRange{xsMXCSR, 8})
	}
	return append(r, byteRange{xsHeader, 8})
}

// xrstorRanges lists the bytes XRSTOR reads beyond the header: MXCSR when
// SSE or AVX state is requested, and the components it loads from memory.
func xrstorRanges(rfbm, xstateBV uint64, l *XStateLayout) []byteRange {
	r := l.componentRanges(rfbm & xstateBV)
	if rfbm&(xfeatSSE|xfeatAVX) != 0 {
		r = append(r, byteRange{xsMXCSR, 4})
	}
	return r
}

// rangesEnd returns the offset just past the last byte of r.
func rangesEnd(r []byteRange) uint32 {
	var end uint32
	for _, x := range r {
		end = max(end, x.off+x.n)
	}
	return end
}

// xsaveToArea performs XSAVE's stores into area, a standard-format XSAVE
// area (at least xsAreaMax bytes, holding the guest's current header), from
// img, the vCPU's state as KVM_GET_XSAVE returns it (components not in use
// hold their initial values there). For each component in rfbm it writes
// the component and sets XSTATE_BV[i] to the component's in-use bit;
// XSTATE_BV bits outside rfbm, the rest of the header and bytes 416-511
// are left alone. Without REX.W the x87 instruction and data pointers are
// stored in the 32-bit layout (offset only; the selectors, which 64-bit
// processors may deprecate, as 0).
func xsaveToArea(area, img []byte, rfbm uint64, l *XStateLayout, rexW bool) {
	if rfbm&xfeatX87 != 0 {
		copy(area[xsFCW:xsMXCSR], img[xsFCW:xsMXCSR])
		copy(area[xsST0:xsXMM0], img[xsST0:xsXMM0])
		if !rexW {
			clear(area[xsFIP+4 : xsFIP+8])
			clear(area[xsFDP+4 : xsFDP+8])
		}
	}
	if rfbm&(xfeatSSE|xfeatAVX) != 0 {
		copy(area[xsMXCSR:xsST0], img[xsMXCSR:xsST0])
	}
	if rfbm&xfeatSSE != 0 {
		copy(area[xsXMM0:xsLegacyEnd], img[xsXMM0:xsLegacyEnd])
	}
	for i := 2; i < 64; i++ {
		if rfbm&(1<<i) != 0 && l.size[i] != 0 {
			o, n := l.off[i], l.size[i]
			copy(area[o:o+n], img[o:o+n])
		}
	}
	bv := le.Uint64(area[xsHeader:])
	le.PutUint64(area[xsHeader:], bv&^rfbm|le.Uint64(img[xsHeader:])&rfbm)
}

// xrstorHeaderOK reports whether the standard form of XRSTOR accepts the
// 64-byte header hdr under xcr0; false means #GP(0). XSTATE_BV may name
// only components XCR0 enables, XCOMP_BV must be 0 (bit 63 would select
// the compacted form, which the guest is not offered) and the reserved
// bytes 16-63 must be 0.
func xrstorHeaderOK(hdr []byte, xcr0 uint64) bool {
	if len(hdr) < xsHeaderEnd-xsHeader {
		return false
	}
	if le.Uint64(hdr)&^xcr0 != 0 || le.Uint64(hdr[8:]) != 0 {
		return false
	}
	for _, b := range hdr[16:64] {
		if b != 0 {
			return false
		}
	}
	return true
}

// mxcsrOK reports whether XRSTOR may load mxcsr: bits clear in the CPU's
// MXCSR_MASK are reserved (#GP(0)).
func mxcsrOK(mxcsr, mask uint32) bool {
	if mask == 0 {
		mask = mxcsrDefaultMask
	}
	return mxcsr&^mask == 0
}

// xrstorFromArea performs XRSTOR's loads into img (the vCPU's state as
// KVM_GET_XSAVE returned it, to be handed to KVM_SET_XSAVE) from area, a
// standard-format XSAVE area whose header has passed xrstorHeaderOK and
// whose MXCSR has passed mxcsrOK. For each component i in rfbm:
// XSTATE_BV[i] = 1 loads it from area, 0 puts it in its initial state;
// MXCSR is loaded whenever SSE or AVX state is requested; components
// outside rfbm keep their values. Without REX.W the x87 pointers are read
// in the 32-bit layout.
//
// The image it leaves names every component xcr0 enables in XSTATE_BV,
// those in their initial state included, with their values spelled out.
// KVM applies an image's cleared XSTATE_BV bit by clearing the bit in its
// own (compacted) buffer without touching the component's old bytes there,
// and the host's XRSTORS/XSAVES pair may then save the component as in use
// but unmodified, bringing the old values back (measured on kvm-pvm: the
// upper YMM halves reappeared after an initializing XRSTOR). Marking a
// component in use in its initial configuration is architecturally
// allowed (XINUSE[i] may be 1 then), so a later XSAVE may report
// XSTATE_BV[i] = 1 with initial values. It also makes KVM load MXCSR,
// which XRSTORS would otherwise reset along with the XMM registers.
func xrstorFromArea(img, area []byte, rfbm, xcr0 uint64, l *XStateLayout, rexW bool) {
	bv := le.Uint64(area[xsHeader:])
	load := func(bit uint64, o, n uint32) {
		if bv&bit != 0 {
			copy(img[o:o+n], area[o:o+n])
		} else {
			clear(img[o : o+n])
		}
	}
	if rfbm&xfeatX87 != 0 {
		load(xfeatX87, xsFCW, xsMXCSR)
		load(xfeatX87, xsST0, xsXMM0-xsST0)
		switch {
		case bv&xfeatX87 == 0:
			le.PutUint16(img[xsFCW:], x87FCWInit)
		case !rexW:
			clear(img[xsFIP+4 : xsFIP+8])
			clear(img[xsFDP+4 : xsFDP+8])
		}
	}
	if rfbm&(xfeatSSE|xfeatAVX) != 0 {
		copy(img[xsMXCSR:xsMXCSRMask], area[xsMXCSR:xsMXCSRMask])
	}
	if rfbm&xfeatSSE != 0 {
		load(xfeatSSE, xsXMM0, xsLegacyEnd-xsXMM0)
	}
	for i := 2; i < 64; i++ {
		if rfbm&(1<<i) != 0 && l.size[i] != 0 {
			load(1<<i, l.off[i], l.size[i])
		}
	}
	le.PutUint64(img[xsHeader:], le.Uint64(img[xsHeader:])|xcr0)
}

// completeXState completes an XSAVE, XRSTOR or XGETBV the host's emulator
// refused: it either finishes the instruction and advances RIP, or raises
// the exception the instruction raises. Cases it does not handle are
// refused (the caller's failure path).
func completeXState(v VCPU, r Result, in xstateInsn, regs kvm.Regs, sregs kvm.Sregs) (Result, error) {
	if sregs.CR4&cr4OSXSAVE == 0 {
		return r.handled(), raise(v, &fault{Exception: Exception{Vector: vectorInvalidOpcode}}, sregs)
	}
	xcrs, err := v.XCRs()
	if err != nil {
		return r, err
	}
	xcr0, ok := xcrs.Value(kvm.XCR0Index)
	if !ok {
		return r.refused("KVM reports no XCR0"), nil
	}
	next := regs.RIP + uint64(in.length)
	if in.op == xopGetBV {
		// XGETBV(1) returns XINUSE, the components not in their initial
		// state; XCR0 is a safe over-approximation (callers save what it
		// names).
		switch uint32(regs.RCX) {
		case 0, 1:
		default:
			return r.handled(), raise(v, gpFault(), sregs)
		}
		regs.RAX, regs.RDX = xcr0&0xffff_ffff, xcr0>>32
		regs.RIP = next
		return r.handled(), v.SetRegs(regs)
	}
	if sregs.CR0&cr0TS != 0 {
		return r.handled(), raise(v, &fault{Exception: Exception{Vector: vectorDeviceNotAvailable}}, sregs)
	}
	layout := v.XStateLayout()
	if layout == nil {
		return r.refused("XSAVE component layout unknown"), nil
	}
	rfbm := xcr0 & (regs.RDX<<32 | regs.RAX&0xffff_ffff)
	if !layout.covers(rfbm) {
		return r.refused("XSAVE component layout unknown for rfbm %#x", rfbm), nil
	}
	long := sregs.EFER&eferLMA != 0 && sregs.CS.L != 0
	if !long && sregs.CS.DB == 0 {
		return r.refused("16-bit code"), nil
	}
	// The bytes the instruction may touch, for the canonical and limit
	// checks: XRSTOR reads the whole header, XSAVE writes XSTATE_BV.
	size := uint64(rangesEnd(xsaveRanges(rfbm, layout)))
	if in.op == xopRestore {
		size = max(xsHeaderEnd, uint64(rangesEnd(layout.componentRanges(rfbm))))
	}
	linear, f, ok := xstateLinear(in.mem, &regs, &sregs, next, size, long, in.op == xopSave)
	if !ok {
		return r.refused("XSAVE area in a segment or at an address not handled"), nil
	}
	if f != nil {
		return r.handled(), raise(v, f, sregs)
	}
	area := &linearArea{
		mem: v.Memory(), sregs: sregs, base: linear, pages: map[uint64]uint64{},
		acc: dataAccess{write: in.op == xopSave, user: sregs.CS.Selector&3 == 3, ac: regs.RFLAGS&rflagsAC != 0},
	}
	img, err := v.XSAVE()
	if err != nil {
		return r, err
	}
	buf := make([]byte, xsAreaMax)
	header := []byteRange{{xsHeader, xsHeaderEnd - xsHeader}}
	// The area's pages translate but lie outside guest RAM (MMIO, say):
	// leave the instruction to the failure path.
	outsideRAM := func(err error) (Result, error) {
		return r.refused("XSAVE area outside guest RAM: %v", err), nil
	}
	// A walk that failed (tables outside RAM, an unsupported paging mode)
	// gives up on the instruction; a page fault is raised.
	pageFaultOr := func(pf *pageFault, err error) (Result, error) {
		if err != nil {
			return r.refused("XSAVE area not translatable: %v", err), nil
		}
		f := &fault{Exception: Exception{Vector: vectorPageFault, ErrorCode: pf.code, HasErrorCode: true}, pf: pf}
		return r.handled(), raise(v, f, sregs)
	}
	switch in.op {
	case xopSave:
		ranges := xsaveRanges(rfbm, layout)
		if pf, err := area.translate(ranges); err != nil || pf != nil {
			return pageFaultOr(pf, err)
		}
		// XSAVE changes only the requested XSTATE_BV bits: start from
		// the guest's header.
		if err := area.copyRanges(buf, []byteRange{{xsHeader, 8}}, false); err != nil {
			return outsideRAM(err)
		}
		xsaveToArea(buf, img.Region[:], rfbm, layout, in.rexW)
		if err := area.copyRanges(buf, ranges, true); err != nil {
			return outsideRAM(err)
		}
	case xopRestore:
		if pf, err := area.translate(header); err != nil || pf != nil {
			return pageFaultOr(pf, err)
		}
		if err := area.copyRanges(buf, header, false); err != nil {
			return outsideRAM(err)
		}
		if !xrstorHeaderOK(buf[xsHeader:xsHeaderEnd], xcr0) {
			return r.handled(), raise(v, gpFault(), sregs)
		}
		ranges := xrstorRanges(rfbm, le.Uint64(buf[xsHeader:]), layout)
		if pf, err := area.translate(ranges); err != nil || pf != nil {
			return pageFaultOr(pf, err)
		}
		if err := area.copyRanges(buf, ranges, false); err != nil {
			return outsideRAM(err)
		}
		if rfbm&(xfeatSSE|xfeatAVX) != 0 && !mxcsrOK(le.Uint32(buf[xsMXCSR:]), le.Uint32(img.Region[xsMXCSRMask:])) {
			return r.handled(), raise(v, gpFault(), sregs)
		}
		xrstorFromArea(img.Region[:], buf, rfbm, xcr0, layout, in.rexW)
		if err := v.SetXSAVE(img); err != nil {
			return r, fmt.Errorf("%s at %#x: %w", in.name, regs.RIP, err)
		}
	}
	regs.RIP = next
	return r.handled(), v.SetRegs(regs)
}
