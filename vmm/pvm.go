package vmm

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math/bits"
	"strings"

	"github.com/govmm/vmm/kvm"
)

// Hosts whose /dev/kvm is kvm-pvm run a stock guest kernel's ring-0 code in
// KVM's instruction emulator, which cannot execute some instructions, and
// ignore KVM_SET_CPUID2 (the guest sees the host's CPUID). The VMM copes in
// two ways: it asks the guest kernel not to use the features the emulator
// lacks (command-line options below), and it completes the few failing
// instructions a kernel still executes (emulateFailedInstruction). On
// VT-x/AMD-V hosts none of this runs.

// pvmClearCPUID lists features to hide from the guest kernel; the kernel
// parses only the first 127 characters of clearcpuid=, so the list is
// ordered by importance and kept short. xsaves, xsavec and xsaveopt leave
// the kernel on plain XSAVE/XRSTOR with the standard-format area, the
// forms the VMM completes (xsave.go); with any of them it would pick an
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
// guest kernel does not reach the hardware there (measured). Now that the
// VMM completes XSAVE/XRSTOR (xsave.go) the kernel switches the full state
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

// Exception vectors (Intel SDM vol. 3A §6.15).
const (
	vectorBreakpoint    = 3
	vectorInvalidOpcode = 6
)

// rflags bits.
const (
	rflagsCF = 1 << 0
	rflagsPF = 1 << 2
	rflagsAF = 1 << 4
	rflagsZF = 1 << 6
	rflagsSF = 1 << 7
	rflagsOF = 1 << 11
	rflagsAC = 1 << 18
)

// emulateFailedInstruction completes an instruction KVM's emulator gave up
// on. It reports whether it did; false leaves the failure to the caller.
func (v *vcpu) emulateFailedInstruction() (bool, error) {
	regs, err := v.kvm.Regs()
	if err != nil {
		return false, err
	}
	sregs, err := v.kvm.Sregs()
	if err != nil {
		return false, err
	}
	code, err := v.readCode(regs.RIP, sregs, 16)
	if err != nil || len(code) == 0 {
		v.m.log.Debug("failed instruction unreadable", "vcpu", v.id, "rip", fmt.Sprintf("%#x", regs.RIP), "err", err)
		return false, nil
	}
	if xi, ok := decodeXState(code, sregs.CS.L != 0); ok {
		return v.completeXState(xi, regs, sregs)
	}
	insn, ok := decodeFixup(code, sregs.CS.L != 0)
	if !ok {
		v.m.log.Debug("failed instruction not one the VMM completes", "vcpu", v.id, "rip", fmt.Sprintf("%#x", regs.RIP), "code", fmt.Sprintf("% x", code))
		return false, nil
	}
	v.m.log.Debug("completing instruction the host's emulator refused", "vcpu", v.id, "insn", insn.name, "rip", fmt.Sprintf("%#x", regs.RIP), "symbol", v.m.syms.lookup(regs.RIP))
	regs.RIP += uint64(insn.length)
	switch insn.op {
	case opBreakpoint, opInvalidOpcode:
		// int3 is a trap: the #BP frame's RIP points past the instruction.
		// #UD is a fault: RIP stays on the instruction (length 0).
		vector := uint8(vectorBreakpoint)
		if insn.op == opInvalidOpcode {
			vector = vectorInvalidOpcode
		}
		if err := v.kvm.SetRegs(regs); err != nil {
			return false, err
		}
		ev, err := v.kvm.Events()
		if err != nil {
			return false, err
		}
		ev.Exception.Injected, ev.Exception.Nr, ev.Exception.HasErrorCode, ev.Exception.Pending = 1, vector, 0, 0
		ev.Flags = 0
		return true, v.kvm.SetEvents(ev)
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
			return false, fmt.Errorf("%s: host random source: %w", insn.name, err)
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
	return true, v.kvm.SetRegs(regs)
}

type fixupOp int

const (
	opBreakpoint fixupOp = iota + 1
	opNop
	opCLAC
	opSTAC
	opPopcnt
	opRandom
	opInvalidOpcode
)

type fixup struct {
	op       fixupOp
	name     string
	length   int
	src, dst int    // register numbers (0=rax … 15=r15)
	mask     uint64 // operand-size mask
}

// decodeFixup recognises the instructions the VMM completes itself:
// int3 (CC), ud2 (0F 0B, delivered as #UD), fwait (9B, a no-op with no unmasked x87 exception pending),
// clac/stac (0F 01 CA/CB), register-to-register popcnt (F3 [REX] 0F B8) and
// rdrand/rdseed to a register (0F C7 /6, /7), which give the guest kernel a
// fast entropy source at boot where the emulator has none.
func decodeFixup(code []byte, long bool) (fixup, bool) {
	switch {
	case len(code) >= 1 && code[0] == 0xcc:
		return fixup{op: opBreakpoint, name: "int3", length: 1}, true
	case len(code) >= 1 && code[0] == 0x9b:
		return fixup{op: opNop, name: "fwait", length: 1}, true
	case len(code) >= 2 && code[0] == 0x0f && code[1] == 0x0b:
		// ud2 is how BUG() and WARN() trap; the guest's #UD handler prints
		// the report (and, for WARN, steps over it itself).
		return fixup{op: opInvalidOpcode, name: "ud2", length: 0}, true
	case len(code) >= 3 && code[0] == 0x0f && code[1] == 0x01 && code[2] == 0xca:
		return fixup{op: opCLAC, name: "clac", length: 3}, true
	case len(code) >= 3 && code[0] == 0x0f && code[1] == 0x01 && code[2] == 0xcb:
		return fixup{op: opSTAC, name: "stac", length: 3}, true
	}
	if f, ok := decodeRandom(code, long); ok {
		return f, true
	}
	// popcnt: optional 66 (16-bit), mandatory F3, optional REX, 0F B8, ModRM.
	i := 0
	opsize16 := i < len(code) && code[i] == 0x66
	if opsize16 {
		i++
	}
	if i >= len(code) || code[i] != 0xf3 {
		return fixup{}, false
	}
	i++
	rex, i := parseREX(code, i, long)
	if i+3 > len(code) || code[i] != 0x0f || code[i+1] != 0xb8 {
		return fixup{}, false
	}
	modrm := code[i+2]
	if modrm>>6 != 3 {
		return fixup{}, false // memory operands are not completed here
	}
	return fixup{
		op: opPopcnt, name: "popcnt", length: i + 3, mask: operandMask(rex, opsize16),
		dst: int(modrm>>3&7) | int(rex>>2&1)<<3,
		src: int(modrm&7) | int(rex&1)<<3,
	}, true
}

// parseREX returns the REX prefix at code[i] (long mode only) and the
// index after it.
func parseREX(code []byte, i int, long bool) (byte, int) {
	if long && i < len(code) && code[i]&0xf0 == 0x40 {
		return code[i], i + 1
	}
	return 0, i
}

// operandMask is the register width an instruction writes: REX.W selects
// 64 bits, an 0x66 prefix 16, and 32 otherwise.
func operandMask(rex byte, opsize16 bool) uint64 {
	switch {
	case rex&0x08 != 0:
		return ^uint64(0)
	case opsize16:
		return 0xffff
	}
	return 0xffff_ffff
}

func decodeRandom(code []byte, long bool) (fixup, bool) {
	i := 0
	opsize16 := i < len(code) && code[i] == 0x66
	if opsize16 {
		i++
	}
	rex, i := parseREX(code, i, long)
	if i+3 > len(code) || code[i] != 0x0f || code[i+1] != 0xc7 {
		return fixup{}, false
	}
	modrm := code[i+2]
	reg := modrm >> 3 & 7
	if modrm>>6 != 3 || (reg != 6 && reg != 7) {
		return fixup{}, false
	}
	f := fixup{op: opRandom, name: "rdrand", length: i + 3, mask: operandMask(rex, opsize16), dst: int(modrm&7) | int(rex&1)<<3}
	if reg == 7 {
		f.name = "rdseed"
	}
	return f, true
}

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
