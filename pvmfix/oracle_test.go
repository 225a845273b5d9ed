package pvmfix

import (
	"fmt"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// The decoders against an independent one: for every byte sequence
// decodeXState or decodeFixup accepts, golang.org/x/arch/x86/x86asm must
// decode the same instruction, with the same length, operand size and
// operands (memory operand: segment, base, index, scale, displacement,
// address size; registers).
//
// x86asm v0.33.0 differs from the processor, or lacks an instruction, in
// a few places; checkOracle adjusts for each and says so, and the test
// fails if one of those differences goes away (x86asm upgraded), so that
// the adjustment is dropped:
//   - it knows a REX prefix only right before the opcode: a REX followed by
//     another prefix, which the processor ignores (Intel SDM vol. 2 §2.2.1),
//     makes it decode something else; such REX bytes are removed before
//     asking it;
//   - it lacks clac and stac (0F 01 CA/CB) and rdseed (0F C7 /7): clac and
//     stac are checked as exact byte sequences, rdseed as rdrand (0F C7 /6,
//     the same encoding but for ModRM.reg);
//   - its rdrand with REX.W has no operand (a missing table entry): only
//     the operation, length and operand size are compared.

// oracleMode is x86asm's name for the decoders' mode.
func oracleMode(long bool) int {
	if long {
		return 64
	}
	return 32
}

// dropIgnoredREX removes the REX prefixes that do not immediately precede
// the opcode (at most maxInsnLen bytes are looked at) and reports how many
// it removed. Only the legacy prefixes decodeXState accepts are skipped.
func dropIgnoredREX(code []byte) ([]byte, int) {
	out := make([]byte, 0, len(code))
	i := 0
	for ; i < len(code) && i < maxInsnLen; i++ {
		b := code[i]
		isREX := b&0xf0 == 0x40
		legacy := b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65 || b == 0x67
		if !isREX && !legacy {
			break
		}
		if isREX && i+1 < len(code) {
			if n := code[i+1]; n&0xf0 == 0x40 || n == 0x26 || n == 0x2e || n == 0x36 || n == 0x3e || n == 0x64 || n == 0x65 || n == 0x67 {
				continue // ignored: another prefix follows
			}
		}
		out = append(out, b)
	}
	out = append(out, code[i:]...)
	return out, len(code) - len(out)
}

// gpr is general register n (0=rax … 15=r15) at the given width in bits,
// in x86asm's terms.
func gpr(n, bits int) x86asm.Reg {
	switch bits {
	case 16:
		return x86asm.AX + x86asm.Reg(n)
	case 32:
		return x86asm.EAX + x86asm.Reg(n)
	}
	return x86asm.RAX + x86asm.Reg(n)
}

// maskBits is the operand size a fixup mask stands for.
func maskBits(mask uint64) int {
	switch mask {
	case 0xffff:
		return 16
	case 0xffff_ffff:
		return 32
	}
	return 64
}

// checkOracle checks whatever the decoders accept in code against x86asm.
func checkOracle(t *testing.T, code []byte, long bool) {
	t.Helper()
	if in, ok := decodeXState(code, long); ok {
		if err := compareXState(in, code, long); err != nil {
			t.Errorf("% x (long %v): decodeXState %+v: %v", code, long, in, err)
		}
	}
	if fx, ok := decodeFixup(code, long); ok {
		if err := compareFixup(fx, code, long); err != nil {
			t.Errorf("% x (long %v): decodeFixup %+v: %v", code, long, fx, err)
		}
	}
}

func compareXState(in xstateInsn, code []byte, long bool) error {
	mode := oracleMode(long)
	canon, dropped := dropIgnoredREX(code[:in.length])
	inst, err := x86asm.Decode(canon, mode)
	if err != nil {
		return fmt.Errorf("x86asm: %v", err)
	}
	if inst.Len+dropped != in.length {
		return fmt.Errorf("length %d, x86asm %d (+%d ignored REX)", in.length, inst.Len, dropped)
	}
	want := map[xstateOp][2]x86asm.Op{
		xopSave:    {x86asm.XSAVE, x86asm.XSAVE64},
		xopRestore: {x86asm.XRSTOR, x86asm.XRSTOR64},
		xopGetBV:   {x86asm.XGETBV, x86asm.XGETBV},
	}[in.op]
	if op := want[0]; in.rexW {
		op = want[1]
		if inst.Op != op {
			return fmt.Errorf("x86asm %v, want %v", inst.Op, op)
		}
	} else if inst.Op != op {
		return fmt.Errorf("x86asm %v, want %v", inst.Op, op)
	}
	if in.op == xopGetBV {
		if inst.Args[0] != nil {
			return fmt.Errorf("x86asm gives xgetbv an operand %v", inst.Args[0])
		}
		return nil
	}
	if in.rexW != (inst.DataSize == 64) {
		return fmt.Errorf("REX.W %v, x86asm operand size %d", in.rexW, inst.DataSize)
	}
	mem, ok := inst.Args[0].(x86asm.Mem)
	if !ok || inst.Args[1] != nil {
		return fmt.Errorf("x86asm operands %v", inst.Args)
	}
	m := in.mem
	if m.addr32 != (inst.AddrSize == 32) {
		return fmt.Errorf("addr32 %v, x86asm address size %d", m.addr32, inst.AddrSize)
	}
	addrBits := 64
	if m.addr32 {
		addrBits = 32
	}
	reg := func(n int) x86asm.Reg {
		switch n {
		case regNone:
			return 0
		case regRIP:
			if m.addr32 {
				return x86asm.EIP
			}
			return x86asm.RIP
		}
		return gpr(n, addrBits)
	}
	if b := reg(m.base); b != mem.Base {
		return fmt.Errorf("base %v, x86asm %v", b, mem.Base)
	}
	if x := reg(m.index); x != mem.Index {
		return fmt.Errorf("index %v, x86asm %v", x, mem.Index)
	}
	if m.index != regNone && m.scale != uint64(mem.Scale) {
		return fmt.Errorf("scale %d, x86asm %d", m.scale, mem.Scale)
	}
	if m.disp != mem.Disp {
		return fmt.Errorf("displacement %#x, x86asm %#x", m.disp, mem.Disp)
	}
	// x86asm names the segment only when a prefix overrides it, and in
	// 64-bit mode only FS and GS (ES, CS, SS and DS overrides choose no
	// base there).
	seg := x86asm.ES + x86asm.Reg(m.seg)
	switch {
	case mem.Segment != 0 && seg != mem.Segment:
		return fmt.Errorf("segment %v, x86asm %v", seg, mem.Segment)
	case mem.Segment == 0 && (m.seg == segFS || m.seg == segGS):
		return fmt.Errorf("segment %v, x86asm none", seg)
	case mem.Segment == 0 && !long:
		def := segDS
		if m.base == 4 || m.base == 5 {
			def = segSS
		}
		if m.seg != def {
			return fmt.Errorf("segment %v without an override, want the default %v", seg, x86asm.ES+x86asm.Reg(def))
		}
	}
	return nil
}

// x86asmKnows reports whether x86asm decodes all of insn as one
// instruction. What it does not know it reports as an error, or (after an
// operand-size prefix) as the prefix alone with no operation.
func x86asmKnows(insn []byte, mode int) (x86asm.Inst, bool) {
	inst, err := x86asm.Decode(insn, mode)
	return inst, err == nil && inst.Op != 0 && inst.Len == len(insn)
}

func compareFixup(fx fixup, code []byte, long bool) error {
	mode := oracleMode(long)
	insn := code[:fx.length]
	switch fx.op {
	case opCLAC, opSTAC:
		// Not in x86asm: the exact encodings.
		want := []byte{0x0f, 0x01, 0xca}
		if fx.op == opSTAC {
			want[2] = 0xcb
		}
		if string(insn) != string(want) {
			return fmt.Errorf("%s is % x", fx.name, want)
		}
		if inst, ok := x86asmKnows(insn, mode); ok {
			return fmt.Errorf("x86asm now decodes %s as %v: compare with it", fx.name, inst)
		}
		return nil
	}
	if fx.op == opRandom && fx.name == "rdseed" {
		if inst, ok := x86asmKnows(insn, mode); ok {
			return fmt.Errorf("x86asm now decodes rdseed as %v: compare with it", inst)
		}
		insn = append([]byte(nil), insn...)
		insn[len(insn)-1] = insn[len(insn)-1]&^0x38 | 6<<3 // ModRM.reg 7 -> 6
	}
	inst, err := x86asm.Decode(insn, mode)
	if err != nil {
		return fmt.Errorf("x86asm: %v", err)
	}
	if inst.Len != fx.length {
		return fmt.Errorf("length %d, x86asm %d", fx.length, inst.Len)
	}
	switch fx.op {
	case opBreakpoint:
		if inst.Op != x86asm.INT || inst.Args[0] != x86asm.Imm(3) {
			return fmt.Errorf("x86asm %v", inst)
		}
	case opNop:
		if inst.Op != x86asm.FWAIT {
			return fmt.Errorf("x86asm %v", inst)
		}
	case opInvalidOpcode:
		if inst.Op != x86asm.UD2 {
			return fmt.Errorf("x86asm %v", inst)
		}
	case opPopcnt:
		bits := maskBits(fx.mask)
		if inst.Op != x86asm.POPCNT || inst.DataSize != bits {
			return fmt.Errorf("x86asm %v, operand size %d; want %d bits", inst, inst.DataSize, bits)
		}
		if dst, src := gpr(fx.dst, bits), gpr(fx.src, bits); inst.Args[0] != dst || inst.Args[1] != src || inst.Args[2] != nil {
			return fmt.Errorf("popcnt %v, %v; x86asm %v", dst, src, inst.Args)
		}
	case opRandom:
		bits := maskBits(fx.mask)
		if inst.Op != x86asm.RDRAND || inst.DataSize != bits {
			return fmt.Errorf("x86asm %v, operand size %d; want %d bits", inst, inst.DataSize, bits)
		}
		if bits == 64 {
			// x86asm's 64-bit rdrand carries no operand.
			if inst.Args[0] != nil {
				return fmt.Errorf("x86asm now gives a 64-bit rdrand an operand (%v): compare it", inst.Args[0])
			}
			break
		}
		if dst := gpr(fx.dst, bits); inst.Args[0] != dst || inst.Args[1] != nil {
			return fmt.Errorf("%s %v; x86asm %v", fx.name, dst, inst.Args)
		}
	default:
		return fmt.Errorf("no oracle for op %d", fx.op)
	}
	return nil
}

// oracleSeeds returns encodings of every form the decoders accept, and
// neighbours they refuse, for both modes: all ModRM and SIB shapes of
// xsave and xrstor under several prefixes and REX values, xgetbv, and the
// register-only instructions over all registers and operand sizes.
func oracleSeeds() [][]byte {
	var seeds [][]byte
	add := func(parts ...[]byte) {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		seeds = append(seeds, b)
	}
	prefixes := [][]byte{nil, {0x64}, {0x65}, {0x67}, {0x26}, {0x2e}, {0x36}, {0x3e}, {0x64, 0x26}, {0x26, 0x64}, {0x65, 0x67}, {0x3e, 0x65, 0x36}, {0x66}, {0xf3}, {0xf0}}
	rexes := [][]byte{nil, {0x40}, {0x41}, {0x42}, {0x44}, {0x48}, {0x4b}, {0x4f}, {0x48, 0x41}, {0x40, 0x65}}
	disp := []byte{0x78, 0x56, 0x34, 0x92}
	// Every ModRM and SIB shape (mod 3 is a fence or refused), /4 xsave,
	// /5 xrstor and /6 xsaveopt (refused).
	sibs := []byte{0x24, 0x25, 0x65, 0xe5, 0x8d, 0xf7, 0x2c, 0x20, 0x04, 0xad}
	for _, reg := range []byte{4, 5, 6} {
		for _, rex := range [][]byte{nil, {0x41}, {0x4a}, {0x48}, {0x4f}} {
			for mod := byte(0); mod < 4; mod++ {
				for rm := byte(0); rm < 8; rm++ {
					modrm := []byte{mod<<6 | reg<<3 | rm}
					if rm != 4 || mod == 3 {
						add(rex, []byte{0x0f, 0xae}, modrm, disp)
						continue
					}
					for _, sib := range sibs {
						add(rex, []byte{0x0f, 0xae}, modrm, []byte{sib}, disp)
					}
				}
			}
		}
	}
	// Every prefix combination on a few operands: (%rdi), (%rsp),
	// RIP-relative and -16(%rsp).
	for _, reg := range []byte{4, 5} {
		for _, p := range prefixes {
			for _, rex := range rexes {
				for _, operand := range [][]byte{{0x07}, {0x04, 0x24}, {0x05}, {0x44, 0x24, 0xf0}} {
					op := append([]byte{operand[0] | reg<<3}, operand[1:]...)
					add(p, rex, []byte{0x0f, 0xae}, op, disp)
				}
			}
		}
	}
	for _, p := range prefixes {
		for _, rex := range rexes {
			add(p, rex, []byte{0x0f, 0x01, 0xd0})
		}
	}
	add([]byte{0xcc, 0x90})
	add([]byte{0x9b})
	add([]byte{0x0f, 0x0b})
	add([]byte{0x0f, 0x01, 0xca})
	add([]byte{0x0f, 0x01, 0xcb})
	for _, size := range [][]byte{nil, {0x66}} {
		for _, rex := range [][]byte{nil, {0x40}, {0x41}, {0x44}, {0x45}, {0x48}, {0x4d}} {
			for r := byte(0); r < 8; r++ {
				add(size, []byte{0xf3}, rex, []byte{0x0f, 0xb8, 0xc0 | r<<3 | (7 - r)})
				add(size, []byte{0xf3}, rex, []byte{0x0f, 0xb8, r<<3 | 7}) // memory form: refused
				add(size, rex, []byte{0x0f, 0xc7, 0xf0 | r})
				add(size, rex, []byte{0x0f, 0xc7, 0xf8 | r})
				add(size, rex, []byte{0x0f, 0xc7, 0x08 | r}) // cmpxchg8b: refused
			}
		}
	}
	return seeds
}

// TestOracleSeeds runs every seed in both modes and checks that the seeds
// do cover each form the decoders accept.
func TestOracleSeeds(t *testing.T) {
	forms := map[string]bool{}
	for _, code := range oracleSeeds() {
		for _, long := range []bool{true, false} {
			checkOracle(t, code, long)
			if in, ok := decodeXState(code, long); ok && in.op == xopGetBV {
				forms[fmt.Sprintf("xgetbv long=%v", long)] = true
			} else if ok {
				m := in.mem
				forms[fmt.Sprintf("%s long=%v base=%v index=%v disp=%v addr32=%v seg=%d", in.name, long, m.base >= 0 || m.base == regRIP, m.index >= 0, m.disp != 0, m.addr32, m.seg)] = true
			}
			if fx, ok := decodeFixup(code, long); ok {
				forms[fmt.Sprintf("%s long=%v bits=%d", fx.name, long, maskBits(fx.mask))] = true
			}
		}
	}
	for _, want := range []string{
		"xsave64 long=true base=true index=true disp=true addr32=false seg=3",
		"xrstor64 long=true base=false index=true disp=true addr32=false seg=3",
		"xsave64 long=true base=true index=false disp=true addr32=true seg=5",
		"xsave long=true base=true index=false disp=true addr32=false seg=5",
		"xrstor long=false base=true index=true disp=true addr32=true seg=2",
		"xgetbv long=false", "xgetbv long=true",
		"popcnt long=true bits=16", "popcnt long=true bits=64", "popcnt long=false bits=32",
		"rdrand long=true bits=64", "rdseed long=true bits=16", "rdseed long=false bits=32",
		"int3 long=true bits=64", "ud2 long=false bits=64", "clac long=true bits=64", "stac long=false bits=64", "fwait long=true bits=64",
	} {
		if !forms[want] {
			t.Errorf("no seed decodes as %q", want)
		}
	}
}

func FuzzDecodersAgainstX86asm(f *testing.F) {
	for _, code := range oracleSeeds() {
		f.Add(code, true)
		f.Add(code, false)
	}
	f.Fuzz(func(t *testing.T, code []byte, long bool) {
		checkOracle(t, code, long)
	})
}
