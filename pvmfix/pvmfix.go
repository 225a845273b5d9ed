// Package pvmfix completes the instructions KVM's instruction emulator
// refuses on kvm-pvm hosts.
//
// Hosts whose /dev/kvm is kvm-pvm (no VT-x/AMD-V) run a stock guest
// kernel's ring-0 code in KVM's instruction emulator, which cannot execute
// some instructions a kernel still uses: the vCPU stops with
// KVM_EXIT_INTERNAL_ERROR (emulation failure) and RIP on the instruction.
// Complete decodes the instruction there and, for the few it knows, does
// what the processor would (Intel SDM vol. 2): int3 and ud2 raise #BP and
// #UD, fwait, clac/stac, register-form popcnt and rdrand/rdseed run on the
// general registers, and xsave/xrstor/xgetbv move the extended state
// between KVM_GET_XSAVE/KVM_SET_XSAVE and guest memory, reached through the
// guest's page tables with #GP, #SS, #NM and #PF raised as the processor
// raises them. Anything else is reported as not handled and left to the
// caller's failure path. On VT-x/AMD-V hosts nothing here runs.
//
// The package sees the vCPU only through the VCPU interface, so it is
// tested with a fake one. Files: pvmfix.go (the interface and Complete),
// decode.go (the decoders), regs.go (general registers and effective
// addresses), fixup.go (the register-only instructions), xsave.go (the
// XSAVE area and its instructions), access.go (segment checks and
// guest-linear memory), pagewalk.go (the guest's page tables), disasm.go
// (the instruction at RIP for failure reports).
package pvmfix

import (
	"fmt"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

// VCPU is the access Complete needs to one stopped vCPU: its registers and
// extended state as KVM reports them, a way to raise an exception, where
// XSAVE puts each state component, and guest RAM.
type VCPU interface {
	Regs() (kvm.Regs, error)
	SetRegs(kvm.Regs) error
	Sregs() (kvm.Sregs, error)
	SetSregs(kvm.Sregs) error
	// XSAVE and SetXSAVE are KVM_GET_XSAVE and KVM_SET_XSAVE: the state
	// as a standard-format XSAVE image.
	XSAVE() (*kvm.XSAVE, error)
	SetXSAVE(*kvm.XSAVE) error
	// XCRs is KVM_GET_XCRS; Complete reads XCR0 from it.
	XCRs() (kvm.XCRs, error)
	// InjectException makes the exception the next event the vCPU
	// delivers when it runs again, with RIP as Complete left it.
	InjectException(Exception) error
	// XStateLayout is the vCPU's XSAVE component layout (NewXStateLayout
	// of its CPUID), or nil when unknown: XSAVE and XRSTOR are then not
	// handled.
	XStateLayout() *XStateLayout
	// Memory is guest RAM.
	Memory() *memory.Guest
}

// Exception is a processor exception to deliver (Intel SDM vol. 3A §6.3):
// its vector and, for those that push one, the error code.
type Exception struct {
	Vector       uint8
	ErrorCode    uint32
	HasErrorCode bool
}

// Result says what Complete did with the instruction at RIP.
type Result struct {
	// Handled: the instruction was completed, or raised the exception
	// the processor raises for it; the vCPU can run on.
	Handled bool
	// Insn names the instruction when it was decoded ("xsave64", "int3").
	Insn string
	RIP  uint64
	// Reason says why the instruction was not handled.
	Reason string
}

func (r Result) handled() Result { r.Handled = true; return r }

func (r Result) refused(format string, args ...any) Result {
	r.Reason = fmt.Sprintf(format, args...)
	return r
}

// Exception vectors (Intel SDM vol. 3A §6.15).
const (
	vectorBreakpoint         = 3
	vectorInvalidOpcode      = 6
	vectorDeviceNotAvailable = 7
	vectorStackFault         = 12
	vectorGeneralProtection  = 13
	vectorPageFault          = 14
)

// RFLAGS bits (Intel SDM vol. 1 §3.4.3).
const (
	rflagsCF = 1 << 0
	rflagsPF = 1 << 2
	rflagsAF = 1 << 4
	rflagsZF = 1 << 6
	rflagsSF = 1 << 7
	rflagsOF = 1 << 11
	rflagsAC = 1 << 18
)

// codeRead is how many bytes at RIP Complete decodes: more than the
// longest instruction (maxInsnLen), so every decoder sees a whole one.
const codeRead = 16

// Complete completes the instruction at the vCPU's RIP that KVM's
// emulator refused: it either finishes it (registers, extended state and
// guest memory as the processor leaves them, RIP past it) or raises the
// exception the processor would, and reports Handled. An instruction it
// does not know, or a case of one it does not handle, leaves the vCPU
// untouched and is reported with a Reason. An error is a failure to read
// or change the vCPU's state.
func Complete(v VCPU) (Result, error) {
	regs, err := v.Regs()
	if err != nil {
		return Result{}, err
	}
	sregs, err := v.Sregs()
	if err != nil {
		return Result{}, err
	}
	r := Result{RIP: regs.RIP}
	code, err := ReadCode(v.Memory(), sregs, regs.RIP, codeRead)
	if err != nil {
		return r.refused("code unreadable: %v", err), nil
	}
	long := sregs.CS.L != 0
	if xi, ok := decodeXState(code, long); ok {
		r.Insn = xi.name
		return completeXState(v, r, xi, regs, sregs)
	}
	insn, ok := decodeFixup(code, long)
	if !ok {
		return r.refused("not an instruction pvmfix completes: % x", code), nil
	}
	r.Insn = insn.name
	if err := completeFixup(v, insn, regs); err != nil {
		return r, err
	}
	return r.handled(), nil
}

// fault is an exception an instruction raises instead of completing (RIP
// stays on it).
type fault struct {
	Exception
	pf *pageFault // for #PF: what CR2 receives
}

func gpFault() *fault {
	return &fault{Exception: Exception{Vector: vectorGeneralProtection, HasErrorCode: true}}
}

// raise injects f. A page fault's address goes to CR2 first
// (KVM_SET_SREGS), as the processor sets CR2 before delivering #PF.
func raise(v VCPU, f *fault, sregs kvm.Sregs) error {
	if f.pf != nil {
		sregs.CR2 = f.pf.addr
		if err := v.SetSregs(sregs); err != nil {
			return err
		}
	}
	return v.InjectException(f.Exception)
}
