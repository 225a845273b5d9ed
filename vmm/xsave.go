package vmm

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

// XSAVE, XRSTOR and XGETBV on kvm-pvm hosts.
//
// There a guest kernel's ring-0 code runs in KVM's instruction emulator,
// which cannot execute these instructions, while guest user space runs on
// the hardware under the host's XCR0: it sees AVX and AVX-512 as usable. A
// kernel limited to FXSAVE then loses the upper YMM/ZMM halves and the
// opmask registers of its processes at every context switch and signal.
// So the VMM completes the kernel's XSAVE/XRSTOR itself (Intel SDM vol. 1
// ch. 13, vol. 2 "XSAVE", "XRSTOR", "XGETBV"): it reads the vCPU's extended
// state with KVM_GET_XSAVE (a standard-format XSAVE image), writes it to
// guest memory or loads it from there and hands it back with
// KVM_SET_XSAVE. The guest kernel is told to use only the standard-format
// XSAVE/XRSTOR (pvmClearCPUID hides XSAVEOPT, XSAVEC and XSAVES).
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

// Initial values (Intel SDM vol. 1 §13.6) and the MXCSR_MASK to assume
// when the CPU reports none (vol. 1 §11.6.6).
const (
	mxcsrDefaultMask = 0xffbf
	x87FCWInit       = fpuControlWordReset
)

// Control-register bits the instructions check.
const (
	cr0TS      = 1 << 3
	cr4OSXSAVE = 1 << 18
)

// Exception vectors these instructions raise, besides #UD.
const (
	vectorDeviceNotAvailable = 7
	vectorStackFault         = 12
	vectorGeneralProtection  = 13
	vectorPageFault          = 14
)

// cpuidLeafXState is CPUID leaf 0xD: XSAVE features and component layout.
const cpuidLeafXState = 0xd

// xstateLayout holds where each extended state component (2..62) lies in
// a standard-format XSAVE area, from CPUID.(EAX=0DH,ECX=i): EBX is the
// offset, EAX the size. Zero size: unknown, or a supervisor component
// (which has no standard-format offset).
type xstateLayout struct {
	off, size [64]uint32
}

func newXStateLayout(c kvm.CPUID) *xstateLayout {
	l := &xstateLayout{}
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
func (l *xstateLayout) covers(mask uint64) bool {
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
func (l *xstateLayout) componentRanges(mask uint64) []byteRange {
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
func xsaveRanges(rfbm uint64, l *xstateLayout) []byteRange {
	r := l.componentRanges(rfbm)
	if rfbm&(xfeatSSE|xfeatAVX) != 0 {
		r = append(r, byteRange{xsMXCSR, 8})
	}
	return append(r, byteRange{xsHeader, 8})
}

// xrstorRanges lists the bytes XRSTOR reads beyond the header: MXCSR when
// SSE or AVX state is requested, and the components it loads from memory.
func xrstorRanges(rfbm, xstateBV uint64, l *xstateLayout) []byteRange {
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

var le = binary.LittleEndian

// xsaveToArea performs XSAVE's stores into area, a standard-format XSAVE
// area (at least xsAreaMax bytes, holding the guest's current header), from
// img, the vCPU's state as KVM_GET_XSAVE returns it (components not in use
// hold their initial values there). For each component in rfbm it writes
// the component and sets XSTATE_BV[i] to the component's in-use bit;
// XSTATE_BV bits outside rfbm, the rest of the header and bytes 416-511
// are left alone. Without REX.W the x87 instruction and data pointers are
// stored in the 32-bit layout (offset only; the selectors, which 64-bit
// processors may deprecate, as 0).
func xsaveToArea(area, img []byte, rfbm uint64, l *xstateLayout, rexW bool) {
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
func xrstorFromArea(img, area []byte, rfbm, xcr0 uint64, l *xstateLayout, rexW bool) {
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

// ---- decoding ----

type xstateOp int

const (
	xopSave xstateOp = iota + 1
	xopRestore
	xopGetBV
)

// Segment registers, in the x86 encoding order.
const (
	segES = iota
	segCS
	segSS
	segDS
	segFS
	segGS
)

// Pseudo register numbers for memory operands (0-15 are rax…r15).
const (
	regNone = -1
	regRIP  = -2
)

// memOperand is a decoded ModRM memory operand: seg:[base + index*scale +
// disp], computed with 32-bit addresses when addr32.
type memOperand struct {
	seg         int
	base, index int
	scale       uint64
	disp        int64
	addr32      bool
}

// xstateInsn is a decoded XSAVE, XRSTOR or XGETBV.
type xstateInsn struct {
	op     xstateOp
	name   string
	length int
	rexW   bool // xsave64/xrstor64: the 64-bit x87 pointer layout
	mem    memOperand
}

// maxInsnLen is the architectural limit on instruction length.
const maxInsnLen = 15

// decodeXState recognises, in 64-bit mode (long) or 32-bit protected
// mode: XSAVE (NP [REX] 0F AE /4) and XRSTOR (NP [REX] 0F AE /5) with any
// memory operand (ModRM with SIB, disp8/disp32, RIP-relative in 64-bit
// mode), REX.W, segment overrides and, in 64-bit mode, the address-size
// prefix; and XGETBV (NP 0F 01 D0). The 66/F2/F3 prefixes make these
// opcodes other instructions, LOCK makes them #UD, and register forms of
// 0F AE are fences: all of those are refused.
func decodeXState(code []byte, long bool) (xstateInsn, bool) {
	if len(code) > maxInsnLen {
		code = code[:maxInsnLen]
	}
	seg := -1
	addr32 := !long
	var rex byte
	i := 0
prefixes:
	for ; i < len(code); i++ {
		switch b := code[i]; {
		case b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e:
			seg = int(b>>3) & 3 // ES, CS, SS, DS
		case b == 0x64 || b == 0x65:
			seg = segFS + int(b-0x64)
		case b == 0x67:
			if !long {
				return xstateInsn{}, false // 16-bit addressing
			}
			addr32 = true
		case long && b&0xf0 == 0x40:
			rex = b
			continue // a REX prefix counts only right before the opcode
		default:
			break prefixes
		}
		rex = 0
	}
	if i+3 > len(code) || code[i] != 0x0f {
		return xstateInsn{}, false
	}
	if code[i+1] == 0x01 && code[i+2] == 0xd0 {
		return xstateInsn{op: xopGetBV, name: "xgetbv", length: i + 3}, true
	}
	if code[i+1] != 0xae {
		return xstateInsn{}, false
	}
	modrm := code[i+2]
	in := xstateInsn{rexW: rex&0x08 != 0}
	switch modrm >> 3 & 7 {
	case 4:
		in.op, in.name = xopSave, "xsave"
	case 5:
		in.op, in.name = xopRestore, "xrstor"
	default:
		return xstateInsn{}, false
	}
	if in.rexW {
		in.name += "64"
	}
	m, n, ok := decodeModRMMemory(code[i+2:], rex, long, addr32)
	if !ok {
		return xstateInsn{}, false
	}
	if seg >= 0 {
		m.seg = seg
	}
	in.mem, in.length = m, i+2+n
	return in, true
}

// decodeModRMMemory decodes a ModRM byte (code[0]) with its SIB and
// displacement as a memory operand and returns it with the number of bytes
// used. Register forms (mod 11) are refused. The default segment is SS for
// rsp/rbp-based addresses and DS otherwise.
func decodeModRMMemory(code []byte, rex byte, long, addr32 bool) (memOperand, int, bool) {
	if len(code) == 0 {
		return memOperand{}, 0, false
	}
	modrm := code[0]
	mod, rm := modrm>>6, modrm&7
	if mod == 3 {
		return memOperand{}, 0, false
	}
	m := memOperand{seg: segDS, base: regNone, index: regNone, scale: 1, addr32: addr32}
	n := 1
	dispSize := 0
	switch {
	case rm == 4:
		if n >= len(code) {
			return memOperand{}, 0, false
		}
		sib := code[n]
		n++
		m.scale = 1 << (sib >> 6)
		if idx := int(sib>>3&7) | int(rex>>1&1)<<3; idx != 4 {
			m.index = idx
		}
		if sib&7 == 5 && mod == 0 {
			dispSize = 4
		} else {
			m.base = int(sib&7) | int(rex&1)<<3
		}
	case rm == 5 && mod == 0:
		if long {
			m.base = regRIP
		}
		dispSize = 4
	default:
		m.base = int(rm) | int(rex&1)<<3
	}
	switch mod {
	case 1:
		dispSize = 1
	case 2:
		dispSize = 4
	}
	if n+dispSize > len(code) {
		return memOperand{}, 0, false
	}
	switch dispSize {
	case 1:
		m.disp = int64(int8(code[n]))
	case 4:
		m.disp = int64(int32(le.Uint32(code[n:])))
	}
	n += dispSize
	if m.base == 4 || m.base == 5 {
		m.seg = segSS
	}
	return m, n, true
}

// effectiveAddr computes the operand's offset within its segment; next is
// the address of the following instruction (the base of RIP-relative
// addressing).
func (m memOperand) effectiveAddr(regs *kvm.Regs, next uint64) uint64 {
	var ea uint64
	switch m.base {
	case regNone:
	case regRIP:
		ea = next
	default:
		ea = getReg(regs, m.base)
	}
	if m.index != regNone {
		ea += getReg(regs, m.index) * m.scale
	}
	ea += uint64(m.disp)
	if m.addr32 {
		ea &= 0xffff_ffff
	}
	return ea
}

// ---- completing the instruction ----

// xstateFault is an exception to raise instead of completing the
// instruction (RIP stays on it).
type xstateFault struct {
	vector  uint8
	errCode uint32
	hasErr  bool
	pf      *pageFault
}

func gpFault() *xstateFault { return &xstateFault{vector: vectorGeneralProtection, hasErr: true} }

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
func xstateLinear(m memOperand, regs *kvm.Regs, sregs *kvm.Sregs, next, size uint64, long, write bool) (linear uint64, f *xstateFault, ok bool) {
	ea := m.effectiveAddr(regs, next)
	segFault := gpFault()
	if m.seg == segSS {
		segFault = &xstateFault{vector: vectorStackFault, hasErr: true}
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

// completeXState completes an XSAVE, XRSTOR or XGETBV the host's emulator
// refused: it either finishes the instruction and advances RIP, or raises
// the exception the instruction raises. It reports false (the caller's
// failure path) for cases it does not handle.
func (v *vcpu) completeXState(in xstateInsn, regs kvm.Regs, sregs kvm.Sregs) (bool, error) {
	v.m.log.Debug("completing instruction the host's emulator refused", "vcpu", v.id, "insn", in.name, "rip", fmt.Sprintf("%#x", regs.RIP), "symbol", v.m.syms.lookup(regs.RIP))
	if sregs.CR4&cr4OSXSAVE == 0 {
		return true, v.raise(&xstateFault{vector: vectorInvalidOpcode}, sregs)
	}
	xcrs, err := v.kvm.XCRs()
	if err != nil {
		return false, err
	}
	xcr0, ok := xcrs.Value(kvm.XCR0Index)
	if !ok {
		return false, nil
	}
	next := regs.RIP + uint64(in.length)
	if in.op == xopGetBV {
		// XGETBV(1) returns XINUSE, the components not in their initial
		// state; XCR0 is a safe over-approximation (callers save what it
		// names).
		switch uint32(regs.RCX) {
		case 0, 1:
		default:
			return true, v.raise(gpFault(), sregs)
		}
		regs.RAX, regs.RDX = xcr0&0xffff_ffff, xcr0>>32
		regs.RIP = next
		return true, v.kvm.SetRegs(regs)
	}
	if sregs.CR0&cr0TS != 0 {
		return true, v.raise(&xstateFault{vector: vectorDeviceNotAvailable}, sregs)
	}
	if v.xstate == nil {
		return false, nil
	}
	rfbm := xcr0 & (regs.RDX<<32 | regs.RAX&0xffff_ffff)
	if !v.xstate.covers(rfbm) {
		v.m.log.Debug("xsave component layout unknown", "vcpu", v.id, "rfbm", fmt.Sprintf("%#x", rfbm))
		return false, nil
	}
	long := sregs.EFER&eferLMA != 0 && sregs.CS.L != 0
	if !long && sregs.CS.DB == 0 {
		return false, nil // 16-bit code
	}
	// The bytes the instruction may touch, for the canonical and limit
	// checks: XRSTOR reads the whole header, XSAVE writes XSTATE_BV.
	size := uint64(rangesEnd(xsaveRanges(rfbm, v.xstate)))
	if in.op == xopRestore {
		size = max(xsHeaderEnd, uint64(rangesEnd(v.xstate.componentRanges(rfbm))))
	}
	linear, f, ok := xstateLinear(in.mem, &regs, &sregs, next, size, long, in.op == xopSave)
	if !ok {
		return false, nil
	}
	if f != nil {
		return true, v.raise(f, sregs)
	}
	area := &linearArea{
		mem: v.m.mem, sregs: sregs, base: linear, pages: map[uint64]uint64{},
		acc: dataAccess{write: in.op == xopSave, user: sregs.CS.Selector&3 == 3, ac: regs.RFLAGS&rflagsAC != 0},
	}
	img, err := v.kvm.XSAVE()
	if err != nil {
		return false, err
	}
	buf := make([]byte, xsAreaMax)
	header := []byteRange{{xsHeader, xsHeaderEnd - xsHeader}}
	// The area's pages translate but lie outside guest RAM (MMIO, say):
	// leave the instruction to the failure path.
	outsideRAM := func(err error) (bool, error) {
		v.m.log.Debug("xsave area outside guest RAM", "vcpu", v.id, "err", err)
		return false, nil
	}
	switch in.op {
	case xopSave:
		ranges := xsaveRanges(rfbm, v.xstate)
		if pf, err := area.translate(ranges); err != nil || pf != nil {
			return v.pageFaultOr(err, pf, sregs)
		}
		// XSAVE changes only the requested XSTATE_BV bits: start from
		// the guest's header.
		if err := area.copyRanges(buf, []byteRange{{xsHeader, 8}}, false); err != nil {
			return outsideRAM(err)
		}
		xsaveToArea(buf, img.Region[:], rfbm, v.xstate, in.rexW)
		if err := area.copyRanges(buf, ranges, true); err != nil {
			return outsideRAM(err)
		}
	case xopRestore:
		if pf, err := area.translate(header); err != nil || pf != nil {
			return v.pageFaultOr(err, pf, sregs)
		}
		if err := area.copyRanges(buf, header, false); err != nil {
			return outsideRAM(err)
		}
		if !xrstorHeaderOK(buf[xsHeader:xsHeaderEnd], xcr0) {
			return true, v.raise(gpFault(), sregs)
		}
		ranges := xrstorRanges(rfbm, le.Uint64(buf[xsHeader:]), v.xstate)
		if pf, err := area.translate(ranges); err != nil || pf != nil {
			return v.pageFaultOr(err, pf, sregs)
		}
		if err := area.copyRanges(buf, ranges, false); err != nil {
			return outsideRAM(err)
		}
		if rfbm&(xfeatSSE|xfeatAVX) != 0 && !mxcsrOK(le.Uint32(buf[xsMXCSR:]), le.Uint32(img.Region[xsMXCSRMask:])) {
			return true, v.raise(gpFault(), sregs)
		}
		xrstorFromArea(img.Region[:], buf, rfbm, xcr0, v.xstate, in.rexW)
		if err := v.kvm.SetXSAVE(img); err != nil {
			return false, fmt.Errorf("%s at %#x: %w", in.name, regs.RIP, err)
		}
	}
	regs.RIP = next
	return true, v.kvm.SetRegs(regs)
}

// pageFaultOr raises pf, or, when the walk itself failed (tables outside
// RAM, an unsupported paging mode), gives up on the instruction.
func (v *vcpu) pageFaultOr(err error, pf *pageFault, sregs kvm.Sregs) (bool, error) {
	if err != nil {
		v.m.log.Debug("xsave area not translatable", "vcpu", v.id, "err", err)
		return false, nil
	}
	return true, v.raise(&xstateFault{vector: vectorPageFault, errCode: pf.code, hasErr: true, pf: pf}, sregs)
}

// raise injects a fault with RIP left on the faulting instruction. A page
// fault's address goes to CR2 first (KVM_SET_SREGS), as the processor does
// before delivering #PF.
func (v *vcpu) raise(f *xstateFault, sregs kvm.Sregs) error {
	if f.pf != nil {
		sregs.CR2 = f.pf.addr
		if err := v.kvm.SetSregs(sregs); err != nil {
			return err
		}
	}
	ev, err := v.kvm.Events()
	if err != nil {
		return err
	}
	ev.Exception.Injected, ev.Exception.Nr, ev.Exception.Pending = 1, f.vector, 0
	ev.Exception.HasErrorCode, ev.Exception.ErrorCode = 0, 0
	if f.hasErr {
		ev.Exception.HasErrorCode, ev.Exception.ErrorCode = 1, f.errCode
	}
	ev.Flags = 0
	return v.kvm.SetEvents(ev)
}
