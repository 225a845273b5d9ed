package pvmfix

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/govmm/vmm/kvm"
)

// hostLayout is the AVX-512 layout of this project's host (CPUID leaf
// 0xD): AVX 256@576, opmask 64@832, ZMM_Hi256 512@896, Hi16_ZMM 1024@1408.
func hostLayout() *XStateLayout {
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
	return NewXStateLayout(c)
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
