package vmm

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

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
		{"xsave %es:(%rax), last override wins", []byte{0x64, 0x26, 0x0f, 0xae, 0x20}, true, true, want{op: xopSave, length: 5, seg: segES, base: 0, index: regNone, scale: 1}},
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

// hostLayout is the AVX-512 layout of this project's host (CPUID leaf
// 0xD): AVX 256@576, opmask 64@832, ZMM_Hi256 512@896, Hi16_ZMM 1024@1408.
func hostLayout() *xstateLayout {
	c := kvm.CPUID{
		{Function: 0xd, Index: 0, Flags: 1, EAX: 0xe7, EBX: 0x980, ECX: 0x980},
		{Function: 0xd, Index: 1, Flags: 1, EAX: 0xf},
		{Function: 0xd, Index: 2, Flags: 1, EAX: 0x100, EBX: 0x240},
		{Function: 0xd, Index: 5, Flags: 1, EAX: 0x40, EBX: 0x340},
		{Function: 0xd, Index: 6, Flags: 1, EAX: 0x200, EBX: 0x380},
		{Function: 0xd, Index: 7, Flags: 1, EAX: 0x400, EBX: 0x580},
		{Function: 0xd, Index: 11, Flags: 1, EAX: 0x10, ECX: 1},      // CET_U: supervisor
		{Function: 0xd, Index: 12, Flags: 1, EAX: 0x100, EBX: 0xf80}, // runs past 4 KiB
	}
	return newXStateLayout(c)
}

func TestXStateLayout(t *testing.T) {
	l := hostLayout()
	for _, tt := range []struct{ i, off, size uint32 }{{2, 576, 256}, {5, 832, 64}, {6, 896, 512}, {7, 1408, 1024}, {3, 0, 0}, {11, 0, 0}, {12, 0, 0}} {
		if l.off[tt.i] != tt.off || l.size[tt.i] != tt.size {
			t.Errorf("component %d at %d+%d, want %d+%d", tt.i, l.off[tt.i], l.size[tt.i], tt.off, tt.size)
		}
	}
	if !l.covers(0xe7) || l.covers(0xef) || l.covers(1<<11) {
		t.Error("covers")
	}
	if got := rangesEnd(xsaveRanges(0xe7, l)); got != 2432 {
		t.Errorf("XSAVE of 0xe7 ends at %d, want 2432", got)
	}
	if got := rangesEnd(xsaveRanges(xfeatX87, l)); got != 520 {
		t.Errorf("XSAVE of x87 ends at %d, want 520 (XSTATE_BV)", got)
	}
}

// pattern returns n bytes that differ from their neighbours.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

// changed lists the offsets where a and b differ.
func changed(a, b []byte) map[int]bool {
	m := map[int]bool{}
	for i := range a {
		if a[i] != b[i] {
			m[i] = true
		}
	}
	return m
}

func TestXSaveToArea(t *testing.T) {
	l := hostLayout()
	img := pattern(xsAreaMax, 3)
	binary.LittleEndian.PutUint64(img[xsHeader:], 0xc7) // in use: x87, SSE, AVX, ZMM_Hi256, Hi16_ZMM
	span := func(o, n int) [][2]int { return [][2]int{{o, n}} }
	tests := []struct {
		name   string
		rfbm   uint64
		rexW   bool
		writes [][2]int // offset, length of component data written
		bv     uint64   // XSTATE_BV after, starting from 0x118
	}{
		{"avx only", xfeatAVX, true, append(span(24, 8), span(576, 256)...), 0x11c},
		{"x87 only", xfeatX87, true, [][2]int{{0, 24}, {32, 128}}, 0x119},
		{"sse only", xfeatSSE, true, [][2]int{{24, 8}, {160, 256}}, 0x11a},
		{"opmask only (not in use)", 1 << 5, true, span(832, 64), 0x118},
		{"everything", 0xe7, true, [][2]int{{0, 24}, {24, 8}, {32, 128}, {160, 256}, {576, 256}, {832, 64}, {896, 512}, {1408, 1024}}, 0x1df},
		{"nothing", 0, true, nil, 0x118},
	}
	for _, tt := range tests {
		area := bytes.Repeat([]byte{0xcc}, xsAreaMax)
		binary.LittleEndian.PutUint64(area[xsHeader:], 0x118) // bits 3, 4, 8: outside every rfbm here
		before := append([]byte(nil), area...)
		xsaveToArea(area, img, tt.rfbm, l, tt.rexW)
		if bv := binary.LittleEndian.Uint64(area[xsHeader:]); bv != tt.bv {
			t.Errorf("%s: XSTATE_BV %#x, want %#x", tt.name, bv, tt.bv)
		}
		want := map[int]bool{}
		for _, w := range tt.writes {
			for i := w[0]; i < w[0]+w[1]; i++ {
				if before[i] != img[i] {
					want[i] = true
				}
				if area[i] != img[i] {
					t.Errorf("%s: byte %d = %#x, want the image's %#x", tt.name, i, area[i], img[i])
					break
				}
			}
		}
		for i := range changed(before, area) {
			if i >= xsHeader && i < xsHeader+8 {
				continue
			}
			if !want[i] {
				t.Errorf("%s: byte %d written outside the requested components", tt.name, i)
				break
			}
		}
	}
	// Without REX.W the pointers are 32-bit, the selector fields 0.
	area := make([]byte, xsAreaMax)
	xsaveToArea(area, img, xfeatX87, l, false)
	if !bytes.Equal(area[8:12], img[8:12]) || !bytes.Equal(area[16:20], img[16:20]) || !bytes.Equal(area[12:16], []byte{0, 0, 0, 0}) || !bytes.Equal(area[20:24], []byte{0, 0, 0, 0}) {
		t.Errorf("32-bit x87 pointers: % x", area[8:24])
	}
}

func TestXRstorHeaderOK(t *testing.T) {
	const xcr0 = 0xe7
	hdr := func(mod func(h []byte)) []byte {
		h := make([]byte, 64)
		binary.LittleEndian.PutUint64(h, 0xe7)
		if mod != nil {
			mod(h)
		}
		return h
	}
	tests := []struct {
		name string
		hdr  []byte
		ok   bool
	}{
		{"all enabled", hdr(nil), true},
		{"none", hdr(func(h []byte) { binary.LittleEndian.PutUint64(h, 0) }), true},
		{"XSTATE_BV beyond XCR0", hdr(func(h []byte) { h[1] = 1 }), false},
		{"XSTATE_BV bit 63", hdr(func(h []byte) { h[7] = 0x80 }), false},
		{"XCOMP_BV bit 0", hdr(func(h []byte) { h[8] = 1 }), false},
		{"compacted form", hdr(func(h []byte) { binary.LittleEndian.PutUint64(h[8:], 1<<63|0xe7) }), false},
		{"reserved byte 16", hdr(func(h []byte) { h[16] = 1 }), false},
		{"reserved byte 40", hdr(func(h []byte) { h[40] = 0x80 }), false},
		{"reserved byte 63", hdr(func(h []byte) { h[63] = 1 }), false},
		{"short", hdr(nil)[:32], false},
	}
	for _, tt := range tests {
		if got := xrstorHeaderOK(tt.hdr, xcr0); got != tt.ok {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.ok)
		}
	}
}

func TestMXCSROK(t *testing.T) {
	for _, tt := range []struct {
		mxcsr, mask uint32
		ok          bool
	}{
		{0x1f80, 0xffff, true},
		{0x3f80, 0, true},
		{0x1fc0, 0, false}, // DAZ without a mask that allows it
		{0x1fc0, 0xffff, true},
		{0x1_1f80, 0xffff, false},
		{0x2_1f80, 0x2_ffff, true},
		{0x8000_1f80, 0x2_ffff, false},
	} {
		if got := mxcsrOK(tt.mxcsr, tt.mask); got != tt.ok {
			t.Errorf("mxcsrOK(%#x, %#x) = %v", tt.mxcsr, tt.mask, got)
		}
	}
}

func TestXRstorFromArea(t *testing.T) {
	l := hostLayout()
	const xcr0 = 0xe7
	area := pattern(xsAreaMax, 9)
	binary.LittleEndian.PutUint32(area[xsMXCSR:], 0x3f80)
	binary.LittleEndian.PutUint32(area[xsMXCSRMask:], 0x1234)
	oldImg := pattern(xsAreaMax, 100)
	binary.LittleEndian.PutUint64(oldImg[xsHeader:], 0x23)
	binary.LittleEndian.PutUint32(oldImg[xsMXCSR:], 0x1f80)
	binary.LittleEndian.PutUint32(oldImg[xsMXCSRMask:], 0xffff)
	type span struct {
		o, n int
		from string // "area", "old", "zero"
	}
	tests := []struct {
		name     string
		rfbm, bv uint64
		rexW     bool
		spans    []span
		fcw      uint16 // expected FCW when x87 is initialized (else 0: check span)
	}{
		{"load everything", 0xe7, 0xe7, true, []span{{0, 24, "area"}, {24, 4, "area"}, {28, 4, "old"}, {32, 128, "area"}, {160, 256, "area"}, {576, 256, "area"}, {832, 64, "area"}, {896, 512, "area"}, {1408, 1024, "area"}}, 0},
		{"AVX initialized", 0xe7, 0xe3, true, []span{{0, 24, "area"}, {24, 4, "area"}, {32, 128, "area"}, {160, 256, "area"}, {576, 256, "zero"}, {832, 64, "area"}, {896, 512, "area"}, {1408, 1024, "area"}}, 0},
		{"all initialized", 0xe7, 0, true, []span{{2, 22, "zero"}, {24, 4, "area"}, {32, 128, "zero"}, {160, 256, "zero"}, {576, 256, "zero"}, {832, 64, "zero"}, {896, 512, "zero"}, {1408, 1024, "zero"}}, x87FCWInit},
		{"x87 only", xfeatX87, 0xe7, true, []span{{0, 24, "area"}, {24, 8, "old"}, {32, 128, "area"}, {160, 256, "old"}, {576, 256, "old"}, {1408, 1024, "old"}}, 0},
		{"AVX only, initialized: MXCSR still loads", xfeatAVX, 0, true, []span{{0, 24, "old"}, {24, 4, "area"}, {28, 4, "old"}, {32, 128, "old"}, {160, 256, "old"}, {576, 256, "zero"}, {832, 64, "old"}}, 0},
		{"nothing requested", 0, 0xe7, true, []span{{0, 416, "old"}, {576, 2432 - 576, "old"}}, 0},
		{"32-bit pointers", xfeatX87, 1, false, []span{{0, 12, "area"}, {12, 4, "zero"}, {16, 4, "area"}, {20, 4, "zero"}, {32, 128, "area"}}, 0},
	}
	for _, tt := range tests {
		a := append([]byte(nil), area...)
		binary.LittleEndian.PutUint64(a[xsHeader:], tt.bv)
		img := append([]byte(nil), oldImg...)
		xrstorFromArea(img, a, tt.rfbm, xcr0, l, tt.rexW)
		for _, s := range tt.spans {
			var want []byte
			switch s.from {
			case "area":
				want = a[s.o : s.o+s.n]
			case "old":
				want = oldImg[s.o : s.o+s.n]
			default:
				want = make([]byte, s.n)
			}
			if !bytes.Equal(img[s.o:s.o+s.n], want) {
				t.Errorf("%s: bytes %d+%d are not the %s values", tt.name, s.o, s.n, s.from)
			}
		}
		if tt.fcw != 0 {
			if got := binary.LittleEndian.Uint16(img[xsFCW:]); got != tt.fcw {
				t.Errorf("%s: FCW %#x, want %#x", tt.name, got, tt.fcw)
			}
		}
		// Every enabled component is spelled out for KVM; others keep
		// their bit.
		if bv := binary.LittleEndian.Uint64(img[xsHeader:]); bv != 0x23|xcr0 {
			t.Errorf("%s: image XSTATE_BV %#x, want %#x", tt.name, bv, 0x23|xcr0)
		}
		if !bytes.Equal(img[xsHeader+8:xsHeaderEnd], oldImg[xsHeader+8:xsHeaderEnd]) {
			t.Errorf("%s: image header beyond XSTATE_BV changed", tt.name)
		}
	}
}

// FuzzXStateImage feeds arbitrary XSAVE areas and masks through the image
// logic: nothing may panic, and what XRSTOR accepts and loads, XSAVE must
// give back.
func FuzzXStateImage(f *testing.F) {
	f.Add(pattern(700, 1), uint64(0xe7), uint64(0xe7), true)
	f.Add([]byte{}, uint64(0), uint64(1), false)
	l := hostLayout()
	f.Fuzz(func(t *testing.T, data []byte, rfbm, xcr0 uint64, rexW bool) {
		xcr0 = xcr0&0xe7 | 1
		rfbm &= xcr0
		area := make([]byte, xsAreaMax)
		copy(area, data)
		img := pattern(xsAreaMax, 5)
		if !xrstorHeaderOK(area[xsHeader:xsHeaderEnd], xcr0) {
			return
		}
		xrstorFromArea(img, area, rfbm, xcr0, l, rexW)
		out := make([]byte, xsAreaMax)
		xsaveToArea(out, img, rfbm, l, rexW)
		bv := binary.LittleEndian.Uint64(area[xsHeader:])
		for _, r := range l.componentRanges(rfbm & bv) {
			for i := r.off; i < r.off+r.n; i++ {
				if (i >= 12 && i < 16 || i >= 20 && i < 24) && !rexW {
					continue
				}
				if out[i] != area[i] {
					t.Fatalf("byte %d: restored %#x, saved %#x", i, area[i], out[i])
				}
			}
		}
		if binary.LittleEndian.Uint64(out[xsHeader:])&rfbm != rfbm {
			t.Fatalf("XSTATE_BV %#x lacks rfbm %#x", binary.LittleEndian.Uint64(out[xsHeader:]), rfbm)
		}
	})
}

// pagedMemory builds 4-level tables mapping linear 0x40_0000.. with 4 KiB
// pages onto the given physical pages (0: not present) with the given
// flags.
func pagedMemory(t *testing.T, pages []uint64, flags []uint64, upper uint64) (*memory.Guest, kvm.Sregs) {
	t.Helper()
	mem, err := memory.FromRegions(memory.Region{GuestAddr: 0, Host: make([]byte, 1<<20)})
	if err != nil {
		t.Fatal(err)
	}
	const pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
	mem.PutUint64(pml4, pdpt|ptePres|upper)
	mem.PutUint64(pdpt, pd|ptePres|upper)
	mem.PutUint64(pd+2*8, pt|ptePres|upper) // 0x40_0000
	for i, p := range pages {
		if p != 0 {
			mem.PutUint64(pt+uint64(i)*8, p|flags[i])
		}
	}
	return mem, kvm.Sregs{CR0: cr0PG | cr0WP | 1, CR4: cr4PAE, EFER: eferLMA | 1<<8, CR3: pml4}
}

func TestTranslateAccess(t *testing.T) {
	const va = 0x40_0000
	const rw, ro, user = ptePres | pteWrite, ptePres, ptePres | pteWrite | pteUser
	mem, sregs := pagedMemory(t, []uint64{0x8000, 0, 0x9000, 0xa000}, []uint64{rw, 0, ro, user}, pteWrite|pteUser)
	pte := func(i uint64) uint64 { v, _ := mem.Uint64(0x4000 + i*8); return v }
	noWP := sregs
	noWP.CR0 &^= cr0WP
	smap := sregs
	smap.CR4 |= cr4SMAP
	tests := []struct {
		name  string
		sregs kvm.Sregs
		va    uint64
		acc   dataAccess
		pa    uint64
		fault uint32 // error code + 1 (0: no fault)
		cr2   uint64
	}{
		{"read", sregs, va + 0x10, dataAccess{}, 0x8010, 0, 0},
		{"write", sregs, va + 0x20, dataAccess{write: true}, 0x8020, 0, 0},
		{"not present read", sregs, va + 0x1008, dataAccess{}, 0, 0 + 1, va + 0x1008},
		{"not present write", sregs, va + 0x1008, dataAccess{write: true}, 0, pfErrWrite + 1, va + 0x1008},
		{"not present user", sregs, va + 0x1000, dataAccess{user: true}, 0, pfErrUser + 1, va + 0x1000},
		{"read-only read", sregs, va + 0x2000, dataAccess{}, 0x9000, 0, 0},
		{"read-only write, WP", sregs, va + 0x2004, dataAccess{write: true}, 0, pfErrPresent | pfErrWrite + 1, va + 0x2004},
		{"read-only write, no WP", noWP, va + 0x2004, dataAccess{write: true}, 0x9004, 0, 0},
		{"read-only write, user, no WP", noWP, va + 0x2004, dataAccess{write: true, user: true}, 0, pfErrPresent | pfErrWrite | pfErrUser + 1, va + 0x2004},
		{"supervisor page, user", sregs, va, dataAccess{user: true}, 0, pfErrPresent | pfErrUser + 1, va},
		{"user page, user write", sregs, va + 0x3000, dataAccess{write: true, user: true}, 0xa000, 0, 0},
		{"user page, supervisor", sregs, va + 0x3000, dataAccess{write: true}, 0xa000, 0, 0},
		{"user page, SMAP", smap, va + 0x3000, dataAccess{write: true}, 0, pfErrPresent | pfErrWrite + 1, va + 0x3000},
		{"user page, SMAP with AC", smap, va + 0x3000, dataAccess{write: true, ac: true}, 0xa000, 0, 0},
	}
	for _, tt := range tests {
		pa, pf, err := translateAccess(mem, tt.sregs, tt.va, tt.acc)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		switch {
		case tt.fault == 0 && pf != nil:
			t.Errorf("%s: unexpected #PF %+v", tt.name, *pf)
		case tt.fault != 0 && (pf == nil || pf.code != tt.fault-1 || pf.addr != tt.cr2):
			t.Errorf("%s: #PF %+v, want code %#x at %#x", tt.name, pf, tt.fault-1, tt.cr2)
		case tt.fault == 0 && pa != tt.pa:
			t.Errorf("%s: pa %#x, want %#x", tt.name, pa, tt.pa)
		}
	}
	// Accessed on every level walked, dirty on the leaf of a write; a
	// faulting access sets nothing.
	if pte(0)&(pteAccessed|pteDirty) != pteAccessed|pteDirty {
		t.Errorf("PTE 0 = %#x, want A and D", pte(0))
	}
	if pte(2)&(pteAccessed|pteDirty) != pteAccessed|pteDirty {
		t.Errorf("read-only PTE = %#x, want A and D (written with CR0.WP clear)", pte(2))
	}
	mem.PutUint64(0x4000+2*8, 0x9000|ro)
	if _, pf, _ := translateAccess(mem, sregs, va+0x2000, dataAccess{write: true}); pf == nil || pte(2) != 0x9000|ro {
		t.Errorf("faulting write: %+v, PTE %#x; want a fault and the PTE untouched", pf, pte(2))
	}
	for _, a := range []uint64{0x1000, 0x2000, 0x3000 + 2*8} {
		if v, _ := mem.Uint64(a); v&pteAccessed == 0 || v&pteDirty != 0 {
			t.Errorf("table entry at %#x = %#x, want A only", a, v)
		}
	}
	// 2 MiB page read-only at the PDE.
	mem.PutUint64(0x3000+3*8, 0x20_0000|ptePres|ptePS)
	if _, pf, err := translateAccess(mem, sregs, 0x60_0010, dataAccess{write: true}); err != nil || pf == nil || pf.code != pfErrPresent|pfErrWrite {
		t.Errorf("write to a read-only 2 MiB page: %+v, %v", pf, err)
	}
	if pa, pf, err := translateAccess(mem, sregs, 0x60_0010, dataAccess{}); err != nil || pf != nil || pa != 0x20_0010 {
		t.Errorf("read of a 2 MiB page: %#x, %+v, %v", pa, pf, err)
	}
	// Unpaged, unsupported modes, tables outside RAM.
	if pa, pf, err := translateAccess(mem, kvm.Sregs{}, 0x1234, dataAccess{write: true}); err != nil || pf != nil || pa != 0x1234 {
		t.Errorf("unpaged: %#x, %+v, %v", pa, pf, err)
	}
	if _, _, err := translateAccess(mem, kvm.Sregs{CR0: cr0PG | 1, CR3: 0x1000}, 0x1234, dataAccess{}); err == nil {
		t.Error("32-bit paging accepted")
	}
	bad := sregs
	bad.CR3 = 1 << 40
	if _, _, err := translateAccess(mem, bad, va, dataAccess{}); err == nil {
		t.Error("walk through a table outside RAM succeeded")
	}
}

// An XSAVE area crossing from one page to a physically distant one is
// read and written in two pieces; a fault names the first byte touched on
// the page that faults.
func TestLinearAreaAcrossPages(t *testing.T) {
	const va = 0x40_0000
	mem, sregs := pagedMemory(t, []uint64{0x9000, 0x5000, 0}, []uint64{ptePres | pteWrite, ptePres | pteWrite, 0}, pteWrite)
	base := uint64(va + 0x1000 - 512)
	a := &linearArea{mem: mem, sregs: sregs, base: base, acc: dataAccess{write: true}, pages: map[uint64]uint64{}}
	ranges := []byteRange{{0, 24}, {160, 256}, {512, 8}, {576, 256}}
	if pf, err := a.translate(ranges); pf != nil || err != nil {
		t.Fatalf("translate: %+v, %v", pf, err)
	}
	buf := pattern(xsAreaMax, 1)
	if err := a.copyRanges(buf, ranges, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 256)
	mem.ReadAt(got, 0x9000+0x1000-512+160)
	if !bytes.Equal(got, buf[160:416]) {
		t.Error("first page: XMM bytes not in place")
	}
	mem.ReadAt(got[:8], 0x5000)
	if !bytes.Equal(got[:8], buf[512:520]) {
		t.Error("second page: XSTATE_BV not at its start")
	}
	mem.ReadAt(got, 0x5000+64)
	if !bytes.Equal(got, buf[576:832]) {
		t.Error("second page: AVX state not in place")
	}
	back := make([]byte, xsAreaMax)
	if err := a.copyRanges(back, ranges, false); err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if !bytes.Equal(back[r.off:r.off+r.n], buf[r.off:r.off+r.n]) {
			t.Errorf("read back %d+%d differs", r.off, r.n)
		}
	}
	// The same area one page up: its second half is not present.
	b := &linearArea{mem: mem, sregs: sregs, base: base + 0x1000, acc: dataAccess{write: true}, pages: map[uint64]uint64{}}
	pf, err := b.translate([]byteRange{{0, 24}, {512, 8}, {576, 256}})
	if err != nil || pf == nil || pf.addr != va+0x2000 || pf.code != pfErrWrite {
		t.Errorf("fault on the second page: %+v, %v", pf, err)
	}
	// Only the ranges' pages count: an area whose second page is touched
	// by no range does not fault there.
	c := &linearArea{mem: mem, sregs: sregs, base: va + 0x2000 - 64, acc: dataAccess{}, pages: map[uint64]uint64{}}
	if pf, err := c.translate([]byteRange{{0, 24}}); pf != nil || err != nil {
		t.Errorf("untouched page faulted: %+v, %v", pf, err)
	}
	if err := c.copyRanges(back, []byteRange{{0, 80}}, false); err == nil {
		t.Error("copy through an untranslated page succeeded")
	}
}

func TestXStateLinear(t *testing.T) {
	regs := kvm.Regs{RDI: 0x7fff_ffff_fc00, RSI: 0x1040, RSP: 0xffff_8000_0000_0000}
	long := kvm.Sregs{}
	long.GS.Base = 0x10_0000
	flat := kvm.Sregs{}
	for _, s := range []*kvm.Segment{&flat.DS, &flat.SS, &flat.ES} {
		*s = kvm.Segment{Limit: 0xffff_ffff, Present: 1, S: 1, Type: 3, DB: 1, G: 1}
	}
	small := flat
	small.DS.Limit = 0x17ff
	tests := []struct {
		name   string
		code   []byte
		sregs  kvm.Sregs
		long   bool
		linear uint64
		vector int // 0: none; -1: not handled
	}{
		{"aligned", []byte{0x0f, 0xae, 0x26}, long, true, 0x1040, 0},
		{"gs base", []byte{0x65, 0x0f, 0xae, 0x26}, long, true, 0x10_1040, 0},
		{"misaligned", []byte{0x0f, 0xae, 0x66, 0x10}, long, true, 0, vectorGeneralProtection},
		{"area runs past the canonical hole", []byte{0x0f, 0xae, 0x27}, long, true, 0, vectorGeneralProtection},
		{"non-canonical via SS", []byte{0x0f, 0xae, 0x24, 0x24}, long, true, 0, vectorStackFault},
		{"canonical high half", []byte{0x0f, 0xae, 0x24, 0x24}, kvm.Sregs{}, true, 0xffff_8000_0000_0000, 0},
		{"32-bit flat", []byte{0x0f, 0xae, 0x26}, flat, false, 0x1040, 0},
		{"32-bit beyond the limit", []byte{0x0f, 0xae, 0x26}, small, false, 0, vectorGeneralProtection},
		{"32-bit unusable ES", []byte{0x26, 0x0f, 0xae, 0x26}, func() kvm.Sregs { s := flat; s.ES.Unusable = 1; return s }(), false, 0, vectorGeneralProtection},
		{"32-bit expand-down", []byte{0x0f, 0xae, 0x26}, func() kvm.Sregs { s := flat; s.DS.Type = 7; return s }(), false, 0, -1},
		{"32-bit save to a read-only segment", []byte{0x0f, 0xae, 0x26}, func() kvm.Sregs { s := flat; s.DS.Type = 1; return s }(), false, 0, vectorGeneralProtection},
		{"32-bit restore from a read-only segment", []byte{0x0f, 0xae, 0x2e}, func() kvm.Sregs { s := flat; s.DS.Type = 1; return s }(), false, 0x1040, 0},
		{"32-bit save to CS", []byte{0x2e, 0x0f, 0xae, 0x26}, func() kvm.Sregs {
			s := flat
			s.CS = kvm.Segment{Limit: 0xffff_ffff, Present: 1, S: 1, Type: 0xb, DB: 1}
			return s
		}(), false, 0, vectorGeneralProtection},
	}
	regsFor := func(name string) kvm.Regs {
		r := regs
		if name == "canonical high half" {
			r.RSP = 0xffff_8000_0000_0000
		}
		return r
	}
	for _, tt := range tests {
		in, ok := decodeXState(tt.code, tt.long)
		if !ok {
			t.Fatalf("%s: not decoded", tt.name)
		}
		r := regsFor(tt.name)
		if tt.name == "non-canonical via SS" {
			r.RSP = 0x8000_0000_0000
		}
		lin, f, ok := xstateLinear(in.mem, &r, &tt.sregs, 0, 2432, tt.long, in.op == xopSave)
		switch {
		case tt.vector == -1:
			if ok {
				t.Errorf("%s: handled", tt.name)
			}
		case !ok:
			t.Errorf("%s: not handled", tt.name)
		case tt.vector == 0 && (f != nil || lin != tt.linear):
			t.Errorf("%s: %#x, %+v; want %#x", tt.name, lin, f, tt.linear)
		case tt.vector != 0 && (f == nil || int(f.vector) != tt.vector || !f.hasErr || f.errCode != 0):
			t.Errorf("%s: fault %+v, want vector %d with error code 0", tt.name, f, tt.vector)
		}
	}
}
