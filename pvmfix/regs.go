package pvmfix

import "github.com/govmm/vmm/kvm"

// regPtr returns general register n in the x86 encoding order (0=rax …
// 15=r15, with REX.R/X/B as bit 3).
func regPtr(r *kvm.Regs, n int) *uint64 {
	switch n {
	case 0:
		return &r.RAX
	case 1:
		return &r.RCX
	case 2:
		return &r.RDX
	case 3:
		return &r.RBX
	case 4:
		return &r.RSP
	case 5:
		return &r.RBP
	case 6:
		return &r.RSI
	case 7:
		return &r.RDI
	case 8:
		return &r.R8
	case 9:
		return &r.R9
	case 10:
		return &r.R10
	case 11:
		return &r.R11
	case 12:
		return &r.R12
	case 13:
		return &r.R13
	case 14:
		return &r.R14
	}
	return &r.R15
}

func getReg(r *kvm.Regs, n int) uint64 { return *regPtr(r, n) }

// setReg writes a result the way x86 does: 32-bit results zero the upper
// half, 16-bit results leave it alone.
func setReg(r *kvm.Regs, n int, v, mask uint64) {
	p := regPtr(r, n)
	switch mask {
	case 0xffff:
		*p = *p&^0xffff | v&0xffff
	default:
		*p = v & mask
	}
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
