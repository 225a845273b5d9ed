package pvmfix

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/govmm/vmm/kvm"
)

// completeFixup completes an instruction decodeFixup recognised, from the
// registers regs held when it stopped.
func completeFixup(v VCPU, insn fixup, regs kvm.Regs) error {
	if insn.op == opInvalidOpcode {
		// #UD is a fault: RIP stays on the instruction.
		return v.InjectException(Exception{Vector: vectorInvalidOpcode})
	}
	regs.RIP += uint64(insn.length)
	switch insn.op {
	case opBreakpoint:
		// int3 is a trap: the #BP frame's RIP points past the instruction.
		if err := v.SetRegs(regs); err != nil {
			return err
		}
		return v.InjectException(Exception{Vector: vectorBreakpoint})
	case opNop:
	case opCLAC:
		regs.RFLAGS &^= rflagsAC
	case opSTAC:
		regs.RFLAGS |= rflagsAC
	case opRandom:
		// The host's random source stands in for the CPU's; CF=1 says the
		// value is valid, and the other arithmetic flags are cleared.
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("%s: host random source: %w", insn.name, err)
		}
		setReg(&regs, insn.dst, binary.LittleEndian.Uint64(b[:]), insn.mask)
		regs.RFLAGS &^= rflagsPF | rflagsAF | rflagsZF | rflagsSF | rflagsOF
		regs.RFLAGS |= rflagsCF
	case opPopcnt:
		src := getReg(&regs, insn.src) & insn.mask
		setReg(&regs, insn.dst, uint64(bits.OnesCount64(src)), insn.mask)
		regs.RFLAGS &^= rflagsCF | rflagsPF | rflagsAF | rflagsZF | rflagsSF | rflagsOF
		if src == 0 {
			regs.RFLAGS |= rflagsZF
		}
	}
	return v.SetRegs(regs)
}
