package pvmfix

import (
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

// DescribeCode renders the code at rip for a vCPU failure report: the
// bytes there and, when they decode, the instruction they start with in
// GNU (AT&T) syntax, the syntax of the guest kernel's objdump and oops
// reports; for example
//
//	code=0f 01 cb 48 89 c7 … insn="stac"
//
// Bytes that do not decode (or are cut short by an unmapped page) are
// still printed; code that cannot be read at all gives "code unavailable:"
// and the reason.
func DescribeCode(mem *memory.Guest, sregs kvm.Sregs, rip uint64) string {
	code, err := ReadCode(mem, sregs, rip, codeRead)
	if err != nil {
		return "code unavailable: " + err.Error()
	}
	return formatCode(code, codeMode(sregs), rip)
}

// codeMode is the processor mode, in x86asm's terms (16, 32 or 64 bits),
// in which the vCPU's current code segment runs.
func codeMode(sregs kvm.Sregs) int {
	switch {
	case sregs.EFER&eferLMA != 0 && sregs.CS.L != 0:
		return 64
	case sregs.CS.DB != 0:
		return 32
	}
	return 16
}

// formatCode renders code, the bytes at pc in the given mode.
func formatCode(code []byte, mode int, pc uint64) string {
	s := fmt.Sprintf("code=% x", code)
	if text, ok := disassemble(code, mode, pc); ok {
		s += fmt.Sprintf(" insn=%q", text)
	}
	return s
}

// disassemble returns the first instruction of code in GNU syntax, with
// branch targets computed from pc. The bytes come from the guest, and a
// failure report must not fail on them: a panic in the decoder counts as
// an undecodable sequence.
func disassemble(code []byte, mode int, pc uint64) (text string, ok bool) {
	defer func() {
		if recover() != nil {
			text, ok = "", false
		}
	}()
	inst, err := x86asm.Decode(code, mode)
	if err != nil || inst.Op == 0 || inst.Len == 0 {
		return "", false
	}
	return x86asm.GNUSyntax(inst, pc, nil), true
}
