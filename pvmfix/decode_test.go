package pvmfix

import (
	"bytes"
	"testing"

	"github.com/govmm/vmm/kvm"
)

func TestDecodeFixup(t *testing.T) {
	tests := []struct {
		name     string
		code     []byte
		ok       bool
		op       fixupOp
		length   int
		src, dst int
		mask     uint64
	}{
		{"int3", []byte{0xcc, 0x90}, true, opBreakpoint, 1, 0, 0, 0},
		{"fwait", []byte{0x9b}, true, opNop, 1, 0, 0, 0},
		{"ud2", []byte{0x0f, 0x0b}, true, opInvalidOpcode, 2, 0, 0, 0},
		{"clac", []byte{0x0f, 0x01, 0xca}, true, opCLAC, 3, 0, 0, 0},
		{"stac", []byte{0x0f, 0x01, 0xcb}, true, opSTAC, 3, 0, 0, 0},
		{"popcnt rdi->rax", []byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, true, opPopcnt, 5, 7, 0, ^uint64(0)},
		{"popcnt r9d->r10d", []byte{0xf3, 0x45, 0x0f, 0xb8, 0xd1}, true, opPopcnt, 5, 9, 10, 0xffffffff},
		{"popcnt cx->ax", []byte{0x66, 0xf3, 0x0f, 0xb8, 0xc1}, true, opPopcnt, 5, 1, 0, 0xffff},
		{"popcnt memory operand", []byte{0xf3, 0x48, 0x0f, 0xb8, 0x07}, false, 0, 0, 0, 0, 0},
		{"xrstor", []byte{0x48, 0x0f, 0xae, 0x2f}, false, 0, 0, 0, 0, 0},
		{"rdrand rax", []byte{0x48, 0x0f, 0xc7, 0xf0}, true, opRandom, 4, 0, 0, ^uint64(0)},
		{"rdseed r9d", []byte{0x41, 0x0f, 0xc7, 0xf9}, true, opRandom, 4, 0, 9, 0xffffffff},
		{"rdrand ax", []byte{0x66, 0x0f, 0xc7, 0xf0}, true, opRandom, 4, 0, 0, 0xffff},
		{"cmpxchg8b memory", []byte{0x0f, 0xc7, 0x0f}, false, 0, 0, 0, 0, 0},
		{"truncated popcnt", []byte{0xf3, 0x48, 0x0f}, false, 0, 0, 0, 0, 0},
		{"empty", nil, false, 0, 0, 0, 0, 0},
	}
	for _, tt := range tests {
		f, ok := decodeFixup(tt.code, true)
		if ok != tt.ok {
			t.Errorf("%s: ok = %v", tt.name, ok)
			continue
		}
		if !ok {
			continue
		}
		if f.op != tt.op || f.length != tt.length || (tt.op == opPopcnt && (f.src != tt.src || f.dst != tt.dst || f.mask != tt.mask)) || (tt.op == opRandom && (f.dst != tt.dst || f.mask != tt.mask)) {
			t.Errorf("%s: got %+v", tt.name, f)
		}
	}
}

func FuzzDecodeFixup(f *testing.F) {
	f.Add([]byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, true)
	f.Fuzz(func(t *testing.T, code []byte, long bool) {
		fx, ok := decodeFixup(code, long)
		if ok && (fx.length <= 0 || fx.length > len(code) || fx.length > maxInsnLen) {
			t.Fatalf("length %d for %d bytes", fx.length, len(code))
		}
	})
}

func TestDecodeXState(t *testing.T) {
	type want struct {
		op          xstateOp
		length      int
		rexW        bool
		seg         int
		base, index int
		scale       uint64
		disp        int64
		addr32      bool
	}
	tests := []struct {
		name string
		code []byte
		long bool
		ok   bool
		w    want
	}{
		// The guest kernel's own encodings (arch/x86/kernel/fpu/xstate.h).
		{"xsave64 (%rdi)", []byte{0x48, 0x0f, 0xae, 0x27, 0x31, 0xc0}, true, true, want{op: xopSave, length: 4, rexW: true, seg: segDS, base: 7, index: regNone, scale: 1}},
		{"xrstor64 (%rdi)", []byte{0x48, 0x0f, 0xae, 0x2f}, true, true, want{op: xopRestore, length: 4, rexW: true, seg: segDS, base: 7, index: regNone, scale: 1}},
		{"xsave (%rdi)", []byte{0x0f, 0xae, 0x27}, true, true, want{op: xopSave, length: 3, seg: segDS, base: 7, index: regNone, scale: 1}},
		// SIB forms.
		{"xsave64 -0x40(%rdi,%rsi,8)", []byte{0x48, 0x0f, 0xae, 0x64, 0xf7, 0xc0}, true, true, want{op: xopSave, length: 6, rexW: true, seg: segDS, base: 7, index: 6, scale: 8, disp: -64}},
		{"xsave (%rsp)", []byte{0x0f, 0xae, 0x24, 0x24}, true, true, want{op: xopSave, length: 4, seg: segSS, base: 4, index: regNone, scale: 1}},
		{"xrstor -16(%rsp)", []byte{0x0f, 0xae, 0x6c, 0x24, 0xf0}, true, true, want{op: xopRestore, length: 5, seg: segSS, base: 4, index: regNone, scale: 1, disp: -16}},
		{"xrstor 0x100(%rsp) disp32", []byte{0x0f, 0xae, 0xac, 0x24, 0x00, 0x01, 0x00, 0x00}, true, true, want{op: xopRestore, length: 8, seg: segSS, base: 4, index: regNone, scale: 1, disp: 0x100}},
		{"xsave 0x1000 (SIB, no base, no index)", []byte{0x0f, 0xae, 0x24, 0x25, 0x00, 0x10, 0x00, 0x00}, true, true, want{op: xopSave, length: 8, seg: segDS, base: regNone, index: regNone, scale: 1, disp: 0x1000}},
		{"xrstor 0x1000(,%rcx,4)", []byte{0x0f, 0xae, 0x2c, 0x8d, 0x00, 0x10, 0x00, 0x00}, true, true, want{op: xopRestore, length: 8, seg: segDS, base: regNone, index: 1, scale: 4, disp: 0x1000}},
		{"xsave 0x10(,%r12,2) (REX.X)", []byte{0x42, 0x0f, 0xae, 0x24, 0x65, 0x10, 0x00, 0x00, 0x00}, true, true, want{op: xopSave, length: 9, seg: segDS, base: regNone, index: 12, scale: 2, disp: 0x10}},
		{"xsave64 (%r12,%r13) (REX.WXB)", []byte{0x4f, 0x0f, 0xae, 0x24, 0x2c}, true, true, want{op: xopSave, length: 5, rexW: true, seg: segDS, base: 12, index: 13, scale: 1}},
		{"xsave 8(%r13,%rax) mod 01 base 101", []byte{0x41, 0x0f, 0xae, 0x64, 0x05, 0x08}, true, true, want{op: xopSave, length: 6, seg: segDS, base: 13, index: 0, scale: 1, disp: 8}},
		// disp8/disp32 without SIB; rbp defaults to SS, r13 to DS.
		{"xsave 8(%rbp)", []byte{0x0f, 0xae, 0x65, 0x08}, true, true, want{op: xopSave, length: 4, seg: segSS, base: 5, index: regNone, scale: 1, disp: 8}},
		{"xsave 8(%r13)", []byte{0x41, 0x0f, 0xae, 0x65, 0x08}, true, true, want{op: xopSave, length: 5, seg: segDS, base: 13, index: regNone, scale: 1, disp: 8}},
		{"xrstor64 0x1000(%r9)", []byte{0x49, 0x0f, 0xae, 0xa9, 0x00, 0x10, 0x00, 0x00}, true, true, want{op: xopRestore, length: 8, rexW: true, seg: segDS, base: 9, index: regNone, scale: 1, disp: 0x1000}},
		{"xrstor -0x80000000(%rax)", []byte{0x0f, 0xae, 0xa8, 0x00, 0x00, 0x00, 0x80}, true, true, want{op: xopRestore, length: 7, seg: segDS, base: 0, index: regNone, scale: 1, disp: -0x80000000}},
		// RIP-relative (mod 00, rm 101), also with REX.B (still RIP).
		{"xsave64 0x53a97(%rip)", []byte{0x48, 0x0f, 0xae, 0x25, 0x97, 0x3a, 0x05, 0x00}, true, true, want{op: xopSave, length: 8, rexW: true, seg: segDS, base: regRIP, index: regNone, scale: 1, disp: 0x53a97}},
		{"xrstor -8(%rip) with REX.B", []byte{0x41, 0x0f, 0xae, 0x2d, 0xf8, 0xff, 0xff, 0xff}, true, true, want{op: xopRestore, length: 8, seg: segDS, base: regRIP, index: regNone, scale: 1, disp: -8}},
		// Prefixes.
		{"xsave64 %gs:(%rdi)", []byte{0x65, 0x48, 0x0f, 0xae, 0x27}, true, true, want{op: xopSave, length: 5, rexW: true, seg: segGS, base: 7, index: regNone, scale: 1}},
		{"xsave %fs:8(%rbp)", []byte{0x64, 0x0f, 0xae, 0x65, 0x08}, true, true, want{op: xopSave, length: 5, seg: segFS, base: 5, index: regNone, scale: 1, disp: 8}},
		{"xsave %fs:(%rax): FS wins over a later ES in 64-bit mode", []byte{0x64, 0x26, 0x0f, 0xae, 0x20}, true, true, want{op: xopSave, length: 5, seg: segFS, base: 0, index: regNone, scale: 1}},
		{"xsave %gs:(%rsp): GS wins over SS and DS around it", []byte{0x3e, 0x65, 0x36, 0x0f, 0xae, 0x24, 0x24}, true, true, want{op: xopSave, length: 7, seg: segGS, base: 4, index: regNone, scale: 1}},
		{"xsave %fs:(%rax), the last of FS and GS wins", []byte{0x65, 0x64, 0x0f, 0xae, 0x20}, true, true, want{op: xopSave, length: 5, seg: segFS, base: 0, index: regNone, scale: 1}},
		{"xsave %es:(%rax) after FS outside 64-bit mode: the last wins", []byte{0x64, 0x26, 0x0f, 0xae, 0x20}, false, true, want{op: xopSave, length: 5, seg: segES, base: 0, index: regNone, scale: 1, addr32: true}},
		{"xsave %ds:(%rsp), last of the null overrides", []byte{0x36, 0x3e, 0x0f, 0xae, 0x24, 0x24}, true, true, want{op: xopSave, length: 6, seg: segDS, base: 4, index: regNone, scale: 1}},
		{"xsave %ss:(%rax)", []byte{0x36, 0x0f, 0xae, 0x20}, true, true, want{op: xopSave, length: 4, seg: segSS, base: 0, index: regNone, scale: 1}},
		{"xsave64 (%edi)", []byte{0x67, 0x48, 0x0f, 0xae, 0x27}, true, true, want{op: xopSave, length: 5, rexW: true, seg: segDS, base: 7, index: regNone, scale: 1, addr32: true}},
		{"xsave 0(%eip)", []byte{0x67, 0x0f, 0xae, 0x25, 0x00, 0x00, 0x00, 0x00}, true, true, want{op: xopSave, length: 8, seg: segDS, base: regRIP, index: regNone, scale: 1, addr32: true}},
		{"two REX: the last counts", []byte{0x40, 0x48, 0x0f, 0xae, 0x27}, true, true, want{op: xopSave, length: 5, rexW: true, seg: segDS, base: 7, index: regNone, scale: 1}},
		{"REX before a legacy prefix is ignored", []byte{0x48, 0x65, 0x0f, 0xae, 0x27}, true, true, want{op: xopSave, length: 5, seg: segGS, base: 7, index: regNone, scale: 1}},
		// XGETBV.
		{"xgetbv", []byte{0x0f, 0x01, 0xd0, 0x48}, true, true, want{op: xopGetBV, length: 3}},
		{"xgetbv with REX", []byte{0x48, 0x0f, 0x01, 0xd0}, true, true, want{op: xopGetBV, length: 4}},
		{"xgetbv in 32-bit mode", []byte{0x0f, 0x01, 0xd0}, false, true, want{op: xopGetBV, length: 3}},
		// 32-bit protected mode: no REX, no RIP-relative.
		{"32-bit xsave (%edi)", []byte{0x0f, 0xae, 0x27}, false, true, want{op: xopSave, length: 3, seg: segDS, base: 7, index: regNone, scale: 1, addr32: true}},
		{"32-bit xrstor 0x1000 absolute", []byte{0x0f, 0xae, 0x2d, 0x00, 0x10, 0x00, 0x00}, false, true, want{op: xopRestore, length: 7, seg: segDS, base: regNone, index: regNone, scale: 1, disp: 0x1000, addr32: true}},
		// Refused.
		{"xsaveopt (/6)", []byte{0x48, 0x0f, 0xae, 0x37}, true, false, want{}},
		{"clflush (/7)", []byte{0x0f, 0xae, 0x38}, true, false, want{}},
		{"fxsave (/0)", []byte{0x48, 0x0f, 0xae, 0x07}, true, false, want{}},
		{"lfence", []byte{0x0f, 0xae, 0xe8}, true, false, want{}},
		{"mfence", []byte{0x0f, 0xae, 0xf0}, true, false, want{}},
		{"register form /4", []byte{0x0f, 0xae, 0xe7}, true, false, want{}},
		{"xsavec", []byte{0x48, 0x0f, 0xc7, 0x27}, true, false, want{}},
		{"xsaves", []byte{0x48, 0x0f, 0xc7, 0x2f}, true, false, want{}},
		{"xrstors", []byte{0x48, 0x0f, 0xc7, 0x1f}, true, false, want{}},
		{"xsetbv", []byte{0x0f, 0x01, 0xd1}, true, false, want{}},
		{"66 prefix (clwb family)", []byte{0x66, 0x0f, 0xae, 0x27}, true, false, want{}},
		{"f3 prefix (ptwrite)", []byte{0xf3, 0x0f, 0xae, 0x27}, true, false, want{}},
		{"f2 prefix", []byte{0xf2, 0x0f, 0xae, 0x2f}, true, false, want{}},
		{"lock", []byte{0xf0, 0x0f, 0xae, 0x27}, true, false, want{}},
		{"REX in 32-bit mode is dec", []byte{0x48, 0x0f, 0xae, 0x27}, false, false, want{}},
		{"16-bit addressing", []byte{0x67, 0x0f, 0xae, 0x27}, false, false, want{}},
		{"truncated before ModRM", []byte{0x48, 0x0f, 0xae}, true, false, want{}},
		{"truncated SIB", []byte{0x0f, 0xae, 0x24}, true, false, want{}},
		{"truncated disp8", []byte{0x0f, 0xae, 0x65}, true, false, want{}},
		{"truncated disp32", []byte{0x0f, 0xae, 0x25, 0x01, 0x02, 0x03}, true, false, want{}},
		{"longer than 15 bytes", append(bytes.Repeat([]byte{0x26}, 13), 0x0f, 0xae, 0x27), true, false, want{}},
		{"exactly 15 bytes", append(bytes.Repeat([]byte{0x26}, 12), 0x0f, 0xae, 0x27), true, true, want{op: xopSave, length: 15, seg: segES, base: 7, index: regNone, scale: 1}},
		{"empty", nil, true, false, want{}},
		{"int3", []byte{0xcc}, true, false, want{}},
	}
	for _, tt := range tests {
		in, ok := decodeXState(tt.code, tt.long)
		if ok != tt.ok {
			t.Errorf("%s: ok = %v, want %v", tt.name, ok, tt.ok)
			continue
		}
		if !ok {
			continue
		}
		w := tt.w
		if in.op != w.op || in.length != w.length || in.rexW != w.rexW {
			t.Errorf("%s: op %d length %d rexW %v, want op %d length %d rexW %v", tt.name, in.op, in.length, in.rexW, w.op, w.length, w.rexW)
		}
		if in.op == xopGetBV {
			continue
		}
		want := memOperand{seg: w.seg, base: w.base, index: w.index, scale: w.scale, disp: w.disp, addr32: w.addr32}
		if in.mem != want {
			t.Errorf("%s: operand %+v, want %+v", tt.name, in.mem, want)
		}
	}
}

func TestEffectiveAddr(t *testing.T) {
	regs := kvm.Regs{RAX: 0x1000, RCX: 0x10, RSP: 0x7fff_f000, RDI: 0xffff_ffff_8123_4000, R12: 3}
	const next = 0xffff_ffff_8100_0008
	tests := []struct {
		code []byte
		want uint64
	}{
		{[]byte{0x48, 0x0f, 0xae, 0x27}, 0xffff_ffff_8123_4000},                                 // (%rdi)
		{[]byte{0x0f, 0xae, 0x2c, 0x88}, 0x1040},                                                // (%rax,%rcx,4)
		{[]byte{0x0f, 0xae, 0x6c, 0x24, 0xf0}, 0x7fff_efF0},                                     // -16(%rsp)
		{[]byte{0x42, 0x0f, 0xae, 0x24, 0xe5, 0x00, 0x01, 0x00, 0x00}, 0x118},                   // 0x100(,%r12,8)
		{[]byte{0x48, 0x0f, 0xae, 0x25, 0xf8, 0xff, 0xff, 0xff}, next - 8},                      // -8(%rip)
		{[]byte{0x67, 0x48, 0x0f, 0xae, 0x27}, 0x8123_4000},                                     // (%edi)
		{[]byte{0x67, 0x0f, 0xae, 0x25, 0x00, 0x10, 0x00, 0x00}, (next + 0x1000) & 0xffff_ffff}, // 0x1000(%eip)
	}
	for _, tt := range tests {
		in, ok := decodeXState(tt.code, true)
		if !ok {
			t.Fatalf("% x: not decoded", tt.code)
		}
		if got := in.mem.effectiveAddr(&regs, next); got != tt.want {
			t.Errorf("% x: effective address %#x, want %#x", tt.code, got, tt.want)
		}
	}
}

func FuzzDecodeXState(f *testing.F) {
	f.Add([]byte{0x48, 0x0f, 0xae, 0x27}, true)
	f.Add([]byte{0x65, 0x67, 0x4f, 0x0f, 0xae, 0xac, 0xe4, 0x00, 0x10, 0x00, 0x00}, true)
	f.Add([]byte{0x0f, 0x01, 0xd0}, false)
	f.Fuzz(func(t *testing.T, code []byte, long bool) {
		in, ok := decodeXState(code, long)
		if !ok {
			return
		}
		if in.length <= 0 || in.length > len(code) || in.length > maxInsnLen {
			t.Fatalf("length %d for %d bytes", in.length, len(code))
		}
		again, ok := decodeXState(code[:in.length], long)
		if !ok || again != in {
			t.Fatalf("re-decoding %d bytes: %+v, %v; first %+v", in.length, again, ok, in)
		}
		if in.op == xopGetBV {
			return
		}
		m := in.mem
		if m.scale != 1 && m.scale != 2 && m.scale != 4 && m.scale != 8 {
			t.Fatalf("scale %d", m.scale)
		}
		if m.base < regRIP || m.base > 15 || m.index < regNone || m.index > 15 || m.index == 4 || m.seg < segES || m.seg > segGS {
			t.Fatalf("bad operand %+v", m)
		}
		if m.base == regRIP && !long {
			t.Fatal("RIP-relative outside 64-bit mode")
		}
		var regs kvm.Regs
		_ = m.effectiveAddr(&regs, 0)
	})
}
