package vmm

import (
	"fmt"
	"strings"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/pvmfix"
)

// Hosts whose /dev/kvm is kvm-pvm run a stock guest kernel's ring-0 code in
// KVM's instruction emulator, which cannot execute some instructions, and
// ignore KVM_SET_CPUID2 (the guest sees the host's CPUID). The VMM copes in
// two ways: it asks the guest kernel not to use the features the emulator
// lacks (command-line options below), and it completes the few failing
// instructions a kernel still executes (package pvmfix, called from
// emulateFailedInstruction). On VT-x/AMD-V hosts none of this runs.

// pvmClearCPUID lists features to hide from the guest kernel; the kernel
// parses only the first 127 characters of clearcpuid=, so the list is
// ordered by importance and kept short. xsaves, xsavec and xsaveopt leave
// the kernel on plain XSAVE/XRSTOR with the standard-format area, the
// forms pvmfix completes; with any of them it would pick an
// instruction nothing completes (Linux 6.12 xstate.h: XSAVES > XSAVEC >
// XSAVEOPT > XSAVE). Hiding xsave itself would leave the upper AVX/AVX-512
// state of guest processes, which run on the hardware under the host's
// XCR0, unsaved across context switches. fsrm and erms matter for speed,
// not correctness: with them the kernel copies and clears memory with
// byte-wise `rep movsb`/`rep stosb`, which the emulator steps one byte at a
// time.
const pvmClearCPUID = "xsaves,xsavec,xsaveopt,popcnt,cx16,smap,fsrm,erms,fsgsbase,pcid,invpcid,rtm,hle,pku,rdpid,sse4_2,sse4_1,ssse3"

// pvmCmdlineOptions are added to the guest command line on kvm-pvm hosts,
// unless the user already set the same option:
//   - nopv: KVM paravirt features loop on hypercalls the emulator serves slowly.
//   - clearcpuid: popcnt, cmpxchg16b and friends fail in the emulator, and
//     of the XSAVE family only XSAVE/XRSTOR are completed by the VMM.
//   - 8250.nr_uarts=1: each extra legacy UART probe costs seconds there.
//   - no_timer_check: the IO-APIC timer check busy-waits.
//   - tsc_early_khz (added by pvmCmdline) also makes the kernel skip the
//     delay-loop calibration, which would run instruction by instruction.
//   - GODEBUG, GLIBC_TUNABLES: see pvmGODEBUG.
func pvmCmdlineOptions() []string {
	return []string{
		"nopv",
		"clearcpuid=" + pvmClearCPUID,
		"8250.nr_uarts=1",
		"lpj=1000000",
		"no_timer_check",
		"GODEBUG=" + pvmGODEBUG,
		"GLIBC_TUNABLES=" + pvmGlibcTunables,
	}
}

// pvmGODEBUG keeps Go programs in the guest off AVX and AVX-512. On
// kvm-pvm guest user space runs under the host's XCR0 and CPUID, so it sees
// AVX-512 as usable; a guest kernel limited to FXSAVE switched only the
// x87/SSE state, the upper register halves changed under programs across
// context switches and signal delivery, and Go programs (memmove uses AVX,
// async preemption uses signals) crashed at random. Setting XCR0 from the
// guest kernel does not reach the hardware there (measured). Now that
// pvmfix completes XSAVE/XRSTOR the kernel switches the full state
// and the workaround should no longer be needed (measured: Go's gzip
// without it gives the same output as with it, where before it corrupted
// its output); it stays until that has seen more use. The kernel hands
// unknown name=value options to init as environment; the default guest's
// init passes GODEBUG on to the shell, the agent and containers.
const pvmGODEBUG = "cpu.avx=off,cpu.avx2=off,cpu.avx512f=off,cpu.avx512cd=off,cpu.avx512bw=off,cpu.avx512dq=off,cpu.avx512vl=off"

// pvmGlibcTunables does the same for glibc's string and memory functions
// (their AVX2 and EVEX variants), which containers' programs use: a static
// busybox `sleep` died of SIGSEGV without it. AVX_Fast_Unaligned_Load is
// the preference that selects the AVX memmove. Programs with their own
// CPU dispatch are not covered.
const pvmGlibcTunables = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL,-FMA,-AVX_Fast_Unaligned_Load"

// pvmCmdline returns cmdline with the kvm-pvm options added. tscKHz, when
// known, is passed as tsc_early_khz: calibrating the TSC against the PIT
// fails under the emulator (each PIT read takes too long), and without a
// known TSC rate the kernel's APIC timer calibration waits on timer ticks.
func pvmCmdline(cmdline string, tscKHz uint32) string {
	have := map[string]bool{}
	for _, f := range strings.Fields(cmdline) {
		k, _, _ := strings.Cut(f, "=")
		have[k] = true
	}
	out := cmdline
	opts := pvmCmdlineOptions()
	if tscKHz > 0 {
		opts = append(opts, fmt.Sprintf("tsc_early_khz=%d", tscKHz))
	}
	for _, o := range opts {
		k, _, _ := strings.Cut(o, "=")
		if !have[k] {
			out += " " + o
		}
	}
	return strings.TrimSpace(out)
}

// emulateFailedInstruction completes an instruction KVM's emulator gave up
// on (pvmfix.Complete). It reports whether it did; false leaves the failure
// to the caller.
func (v *vcpu) emulateFailedInstruction() (bool, error) {
	r, err := pvmfix.Complete(pvmVCPU{VCPU: v.kvm, mem: v.m.mem, xstate: v.xstate})
	if err != nil {
		return false, err
	}
	rip := fmt.Sprintf("%#x", r.RIP)
	if r.Handled {
		v.m.log.Debug("completed instruction the host's emulator refused", "vcpu", v.id, "insn", r.Insn, "rip", rip, "symbol", v.m.syms.lookup(r.RIP))
	} else {
		v.m.log.Debug("failed instruction not completed", "vcpu", v.id, "insn", r.Insn, "rip", rip, "reason", r.Reason)
	}
	return r.Handled, nil
}

// pvmVCPU is the access to one vCPU pvmfix works through: KVM's registers
// and extended state, exceptions through KVM_SET_VCPU_EVENTS, and guest RAM.
type pvmVCPU struct {
	*kvm.VCPU
	mem    *memory.Guest
	xstate *pvmfix.XStateLayout
}

var _ pvmfix.VCPU = pvmVCPU{}

func (p pvmVCPU) Memory() *memory.Guest              { return p.mem }
func (p pvmVCPU) XStateLayout() *pvmfix.XStateLayout { return p.xstate }

// InjectException queues e as an injected exception, replacing whatever
// exception KVM held (the instruction that stopped the vCPU raised none).
// Flags 0: the fields KVM applies only when flagged valid (pending NMI,
// SIPI vector, interrupt shadow, SMM) are left as they are.
func (p pvmVCPU) InjectException(e pvmfix.Exception) error {
	ev, err := p.Events()
	if err != nil {
		return err
	}
	ev.Exception.Injected, ev.Exception.Nr, ev.Exception.Pending = 1, e.Vector, 0
	ev.Exception.HasErrorCode, ev.Exception.ErrorCode = 0, 0
	if e.HasErrorCode {
		ev.Exception.HasErrorCode, ev.Exception.ErrorCode = 1, e.ErrorCode
	}
	ev.Flags = 0
	return p.SetEvents(ev)
}
