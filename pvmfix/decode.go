package pvmfix

import "encoding/binary"

// Decoding the instructions the package completes. Only the forms listed
// in each decoder's comment are accepted; anything else, including every
// prefix combination a decoder does not list, is refused and left to the
// caller's failure path. The decoders are checked against
// golang.org/x/arch/x86/x86asm by a differential fuzz test
// (oracle_test.go).

var le = binary.LittleEndian

// ---- instructions that touch only registers ----

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
	length   int    // in bytes
	src, dst int    // register numbers (0=rax … 15=r15)
	mask     uint64 // operand-size mask
}

// decodeFixup recognises the instructions completeFixup completes: int3
// (CC), ud2 (0F 0B, delivered as #UD), fwait (9B, a no-op with no unmasked
// x87 exception pending), clac/stac (0F 01 CA/CB), register-to-register
// popcnt ([66] F3 [REX] 0F B8) and rdrand/rdseed to a register ([66] [REX]
// 0F C7 /6, /7), which give the guest kernel a fast entropy source at boot
// where the emulator has none.
func decodeFixup(code []byte, long bool) (fixup, bool) {
	switch {
	case len(code) >= 1 && code[0] == 0xcc:
		return fixup{op: opBreakpoint, name: "int3", length: 1}, true
	case len(code) >= 1 && code[0] == 0x9b:
		return fixup{op: opNop, name: "fwait", length: 1}, true
	case len(code) >= 2 && code[0] == 0x0f && code[1] == 0x0b:
		// ud2 is how BUG() and WARN() trap; the guest's #UD handler prints
		// the report (and, for WARN, steps over it itself).
		return fixup{op: opInvalidOpcode, name: "ud2", length: 2}, true
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

// ---- XSAVE, XRSTOR, XGETBV ----

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
			// In 64-bit mode these overrides choose no base, and an FS or
			// GS override among the prefixes wins over them whatever the
			// order (as processors behave and x86asm, XED and Zydis
			// decode); they still decide between #SS and #GP for a
			// non-canonical address (Intel SDM vol. 1 §3.3.7.1).
			if !long || (seg != segFS && seg != segGS) {
				seg = int(b>>3) & 3 // ES, CS, SS, DS
			}
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
