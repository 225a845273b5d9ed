package virtio_test

import (
	"bytes"
	"testing"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
)

// flat returns v's bytes in order.
func flat(v virtio.Iovec) []byte {
	var b []byte
	for _, s := range v {
		b = append(b, s...)
	}
	return b
}

func abc() virtio.Iovec {
	return virtio.Iovec{[]byte("abc"), []byte("de"), []byte("fghi")}
}

func TestIovecCopyOut(t *testing.T) {
	tests := []struct {
		off  uint64
		plen int
		want string
	}{
		{0, 9, "abcdefghi"},
		{0, 20, "abcdefghi"}, // p longer than v
		{0, 0, ""},
		{0, 2, "ab"},    // within the first segment
		{2, 3, "cde"},   // across a boundary
		{3, 2, "de"},    // a whole middle segment
		{4, 5, "efghi"}, // from inside one segment to the end
		{8, 4, "i"},
		{9, 4, ""}, // at the end
		{100, 4, ""},
	}
	for _, tt := range tests {
		v := abc()
		p := bytes.Repeat([]byte{'.'}, tt.plen)
		n := v.CopyOut(p, tt.off)
		if string(p[:n]) != tt.want {
			t.Errorf("CopyOut(%d bytes, %d) = %d, %q; want %q", tt.plen, tt.off, n, p[:n], tt.want)
		}
		if rest := p[n:]; !bytes.Equal(rest, bytes.Repeat([]byte{'.'}, len(rest))) {
			t.Errorf("CopyOut(%d bytes, %d) wrote past what it returned: %q", tt.plen, tt.off, p)
		}
	}
}

func TestIovecCopyIn(t *testing.T) {
	tests := []struct {
		off   uint64
		p     string
		wantN int
		want  string
	}{
		{0, "ABCDEFGHI", 9, "ABCDEFGHI"},
		{0, "ABCDEFGHIJKL", 9, "ABCDEFGHI"}, // only what fits
		{0, "", 0, "abcdefghi"},
		{2, "XYZ", 3, "abXYZfghi"}, // across a boundary
		{3, "XY", 2, "abcXYfghi"},
		{7, "XYZ", 2, "abcdefgXY"},
		{9, "XYZ", 0, "abcdefghi"},
		{100, "XYZ", 0, "abcdefghi"},
	}
	for _, tt := range tests {
		v := abc()
		n := v.CopyIn([]byte(tt.p), tt.off)
		if n != tt.wantN || string(flat(v)) != tt.want {
			t.Errorf("CopyIn(%q, %d) = %d, v %q; want %d, %q", tt.p, tt.off, n, flat(v), tt.wantN, tt.want)
		}
	}
}

// TestIovecSkip: Skip drops whole and partial segments, shares v's array
// when it cuts none, and never changes v.
func TestIovecSkip(t *testing.T) {
	tests := []struct {
		n      uint64
		want   string
		shares bool // the result is a tail of v's own array
	}{
		{0, "abcdefghi", true},
		{2, "cdefghi", false},
		{3, "defghi", true},
		{4, "efghi", false},
		{5, "fghi", true},
		{7, "hi", false},
		{9, "", true},
		{20, "", true},
	}
	for _, tt := range tests {
		v := abc()
		got := v.Skip(tt.n)
		if string(flat(got)) != tt.want {
			t.Errorf("Skip(%d) = %q, want %q", tt.n, flat(got), tt.want)
		}
		if got.Len() != uint64(len(tt.want)) {
			t.Errorf("Skip(%d).Len() = %d, want %d", tt.n, got.Len(), len(tt.want))
		}
		if string(flat(v)) != "abcdefghi" || len(v) != 3 {
			t.Errorf("Skip(%d) changed v: %q", tt.n, v)
		}
		if len(got) > 0 {
			if shares := &got[len(got)-1] == &v[len(v)-1]; shares != tt.shares {
				t.Errorf("Skip(%d) shares v's array: %v, want %v", tt.n, shares, tt.shares)
			}
		}
	}
}

// chainRAM is guest RAM for chains built by hand.
const chainRAMBase, chainRAMSize = 0x10000, 4096

func newChainRAM(t testing.TB) ([]byte, *memory.Guest) {
	t.Helper()
	ram := make([]byte, chainRAMSize)
	mem, err := memory.FromRegions(memory.Region{GuestAddr: chainRAMBase, Host: ram})
	if err != nil {
		t.Fatal(err)
	}
	return ram, mem
}

// mkChain returns a chain of buffers at RAM offsets (readable ones first,
// as ParseChain guarantees).
func mkChain(bufs ...virtio.Buffer) virtio.Chain {
	c := virtio.Chain{Head: 7, Buffers: bufs}
	for i := range bufs {
		c.Buffers[i].Addr += chainRAMBase
		if bufs[i].Write {
			c.WriteLen += uint64(bufs[i].Len)
		} else {
			c.ReadLen += uint64(bufs[i].Len)
		}
	}
	return c
}

// TestChainIovec maps a chain (a 16-byte header split over two buffers,
// data sharing the second, a status byte after writable data) and copies
// in and out of it at offsets, the ways the devices frame their requests.
func TestChainIovec(t *testing.T) {
	ram, mem := newChainRAM(t)
	copy(ram, "HEADER--........payload-bytes...")
	c := mkChain(
		virtio.Buffer{Addr: 0, Len: 6},   // "HEADER"
		virtio.Buffer{Addr: 6, Len: 2},   // "--"
		virtio.Buffer{Addr: 8, Len: 8},   // "........"
		virtio.Buffer{Addr: 16, Len: 16}, // "payload-bytes..."
		virtio.Buffer{Addr: 100, Len: 10, Write: true},
		virtio.Buffer{Addr: 200, Len: 1, Write: true},
	)
	readable := "HEADER--........payload-bytes..."

	for _, tt := range []struct {
		from uint64
		segs int
	}{{0, 4}, {5, 4}, {6, 3}, {8, 2}, {16, 1}, {20, 1}, {32, 0}, {40, 0}} {
		v, err := c.AppendReadable(nil, mem, tt.from)
		if err != nil {
			t.Fatal(err)
		}
		want := readable[min(tt.from, uint64(len(readable))):]
		if string(flat(v)) != want || len(v) != tt.segs {
			t.Errorf("AppendReadable from %d = %d segments %q, want %d %q", tt.from, len(v), flat(v), tt.segs, want)
		}
	}
	for _, tt := range []struct {
		off  uint64
		plen int
		want string
	}{{0, 8, "HEADER--"}, {4, 8, "ER--...."}, {16, 100, "payload-bytes..."}, {32, 4, ""}} {
		p := make([]byte, tt.plen)
		n, err := c.CopyOut(mem, p, tt.off)
		if err != nil || string(p[:n]) != tt.want {
			t.Errorf("Chain.CopyOut(%d bytes, %d) = %d %q, %v; want %q", tt.plen, tt.off, n, p[:n], err, tt.want)
		}
	}

	// The writable part: data, then the status byte.
	w, err := c.AppendWritable(nil, mem, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != 2 || w.Len() != 11 || &w[0][0] != &ram[100] || &w[1][0] != &ram[200] {
		t.Fatalf("AppendWritable = %d segments of %d bytes, not aliasing the buffers", len(w), w.Len())
	}
	if n, err := c.CopyIn(mem, []byte("0123456789S!"), 0); n != 11 || err != nil {
		t.Fatalf("Chain.CopyIn = %d, %v; want 11", n, err)
	}
	if string(ram[100:110]) != "0123456789" || ram[200] != 'S' || ram[201] != 0 {
		t.Errorf("Chain.CopyIn wrote %q and %q", ram[100:110], ram[200:202])
	}
	if n, err := c.CopyIn(mem, []byte("xy"), 9); n != 2 || err != nil || ram[109] != 'x' || ram[200] != 'y' {
		t.Errorf("Chain.CopyIn at 9 = %d, %v: %q %q", n, err, ram[109], ram[200])
	}
	if n, err := c.CopyIn(mem, []byte("z"), 11); n != 0 || err != nil {
		t.Errorf("Chain.CopyIn past the end = %d, %v", n, err)
	}

	// A buffer outside RAM (ParseChain would have refused it) is an
	// error, not a panic.
	bad := mkChain(virtio.Buffer{Addr: chainRAMSize - 4, Len: 8})
	if _, err := bad.AppendReadable(nil, mem, 0); err == nil {
		t.Error("AppendReadable of a buffer past RAM: no error")
	}
	if _, err := bad.CopyOut(mem, make([]byte, 8), 0); err == nil {
		t.Error("Chain.CopyOut of a buffer past RAM: no error")
	}
}

// TestChainIovecAllocs: mapping into a reused list and copying at an
// offset allocate nothing (the devices' data paths depend on it).
func TestChainIovecAllocs(t *testing.T) {
	_, mem := newChainRAM(t)
	c := mkChain(
		virtio.Buffer{Addr: 0, Len: 16},
		virtio.Buffer{Addr: 512, Len: 512},
		virtio.Buffer{Addr: 1024, Len: 512, Write: true},
		virtio.Buffer{Addr: 2048, Len: 1, Write: true},
	)
	var r, w virtio.Iovec
	var hdr [16]byte
	var status [1]byte
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := c.CopyOut(mem, hdr[:], 0); err != nil {
			t.Fatal(err)
		}
		var err error
		if r, err = c.AppendReadable(r[:0], mem, 16); err != nil {
			t.Fatal(err)
		}
		if w, err = c.AppendWritable(w[:0], mem, 0); err != nil {
			t.Fatal(err)
		}
		w.CopyIn(status[:], 512)
		r.CopyOut(hdr[:], 100)
	})
	if allocs > 0 {
		t.Errorf("%.1f allocations per request", allocs)
	}
}

// FuzzIovec checks the copy helpers against a byte-at-a-time reference
// over chains of arbitrary, possibly overlapping, buffers: Iovec and Chain
// agree with the reference on lengths, on what they read from any offset
// and on what guest memory holds after they write at any offset.
func FuzzIovec(f *testing.F) {
	f.Add([]byte{0, 16, 0, 2, 200, 1, 9, 3, 0x80}, uint16(5), uint16(30), byte(1))
	f.Add([]byte{10, 10, 0x80, 11, 10, 0x80, 12, 10, 0x80}, uint16(0), uint16(100), byte(7))
	f.Add([]byte{1, 255, 0, 0, 1, 0, 200, 40, 0x80}, uint16(250), uint16(1), byte(0))
	f.Fuzz(func(t *testing.T, layout []byte, off16, plen16 uint16, seed byte) {
		ram, mem := newChainRAM(t)
		for i := range ram {
			ram[i] = byte(i*31) ^ seed
		}
		// Three bytes per buffer: where, how long, and which direction.
		var rd, wr []virtio.Buffer
		for i := 0; i+2 < len(layout) && len(rd)+len(wr) < 16; i += 3 {
			at := uint64(layout[i]) * 15
			n := min(uint64(layout[i+1])+1, chainRAMSize-at)
			b := virtio.Buffer{Addr: at, Len: uint32(n), Write: layout[i+2]&0x80 != 0}
			if b.Write {
				wr = append(wr, b)
			} else {
				rd = append(rd, b)
			}
		}
		c := mkChain(append(rd, wr...)...)
		off, plen := uint64(off16%600), int(plen16%600)

		for _, writable := range []bool{false, true} {
			// addrs[i] is the RAM offset of byte i of this direction.
			var addrs []int
			for _, b := range c.Buffers {
				if b.Write == writable {
					for k := range b.Len {
						addrs = append(addrs, int(b.Addr-chainRAMBase)+int(k))
					}
				}
			}
			ref := make([]byte, len(addrs))
			for i, a := range addrs {
				ref[i] = ram[a]
			}
			lo := min(int(off), len(ref))
			wantN := min(plen, len(ref)-lo)
			wantOut := ref[lo : lo+wantN]

			var v virtio.Iovec
			var err error
			if writable {
				v, err = c.AppendWritable(nil, mem, 0)
			} else {
				v, err = c.AppendReadable(nil, mem, 0)
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.Len() != uint64(len(ref)) || !bytes.Equal(flat(v), ref) {
				t.Fatalf("writable=%v: Iovec of %d bytes %x, want %x", writable, v.Len(), flat(v), ref)
			}
			var from virtio.Iovec
			if writable {
				from, err = c.AppendWritable(nil, mem, off)
			} else {
				from, err = c.AppendReadable(nil, mem, off)
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := ref[lo:]; !bytes.Equal(flat(from), want) || !bytes.Equal(flat(v.Skip(off)), want) {
				t.Fatalf("writable=%v: from %d: mapped %x, skipped %x, want %x", writable, off, flat(from), flat(v.Skip(off)), want)
			}

			// Reading.
			p := make([]byte, plen)
			if n := v.CopyOut(p, off); n != wantN || !bytes.Equal(p[:n], wantOut) {
				t.Fatalf("writable=%v: Iovec.CopyOut(%d, %d) = %d %x", writable, plen, off, n, p[:n])
			}
			if !writable {
				clear(p)
				n, err := c.CopyOut(mem, p, off)
				if err != nil || n != wantN || !bytes.Equal(p[:n], wantOut) {
					t.Fatalf("Chain.CopyOut(%d, %d) = %d %x, %v", plen, off, n, p[:n], err)
				}
				continue
			}

			// Writing, from the same start, once through each helper.
			for i := range p {
				p[i] = byte(i) ^ 0x5a ^ seed
			}
			want := append([]byte(nil), ram...)
			for i := range wantN {
				want[addrs[lo+i]] = p[i]
			}
			before := append([]byte(nil), ram...)
			if n := v.CopyIn(p, off); n != wantN || !bytes.Equal(ram, want) {
				t.Fatalf("Iovec.CopyIn(%d, %d) = %d, want %d; RAM differs: %v", plen, off, n, wantN, !bytes.Equal(ram, want))
			}
			copy(ram, before)
			if n, err := c.CopyIn(mem, p, off); err != nil || n != wantN || !bytes.Equal(ram, want) {
				t.Fatalf("Chain.CopyIn(%d, %d) = %d, %v, want %d; RAM differs: %v", plen, off, n, err, wantN, !bytes.Equal(ram, want))
			}
		}
	})
}
