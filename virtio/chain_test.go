package virtio_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

const qsize = 8

func newDriver(t testing.TB) *virtiotest.Driver {
	t.Helper()
	d, err := virtiotest.NewDriver(1<<20, qsize)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestParseChainValid(t *testing.T) {
	d := newDriver(t)
	a, b, c := d.Alloc(16, 8), d.Alloc(512, 8), d.Alloc(1, 1)
	head := d.Chain(virtiotest.Buf{Addr: a, Len: 16}, virtiotest.Buf{Addr: b, Len: 512, Write: true}, virtiotest.Buf{Addr: c, Len: 1, Write: true})
	ch, err := virtio.ParseChain(d.Mem, d.Desc, qsize, head, false)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Head != head || len(ch.Buffers) != 3 || ch.ReadLen != 16 || ch.WriteLen != 513 {
		t.Fatalf("chain %+v", ch)
	}
	if ch.Buffers[1] != (virtio.Buffer{Addr: b, Len: 512, Write: true}) {
		t.Errorf("buffer 1 = %+v", ch.Buffers[1])
	}

	// The same buffers through an indirect table.
	head = d.IndirectChain(virtiotest.Buf{Addr: a, Len: 16}, virtiotest.Buf{Addr: b, Len: 512, Write: true}, virtiotest.Buf{Addr: c, Len: 1, Write: true})
	if _, err := virtio.ParseChain(d.Mem, d.Desc, qsize, head, false); !errors.Is(err, virtio.ErrBadChain) {
		t.Errorf("indirect without the feature: err = %v, want ErrBadChain", err)
	}
	ch2, err := virtio.ParseChain(d.Mem, d.Desc, qsize, head, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch2.Buffers) != 3 || ch2.ReadLen != 16 || ch2.WriteLen != 513 {
		t.Errorf("indirect chain %+v", ch2)
	}
}

func TestParseChainHostile(t *testing.T) {
	const F, W, I = virtiotest.FlagNext, virtiotest.FlagWrite, virtiotest.FlagIndirect
	tests := []struct {
		name  string
		setup func(d *virtiotest.Driver) uint16
	}{
		{"head out of range", func(d *virtiotest.Driver) uint16 { return qsize }},
		{"buffer outside RAM", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, 0xdead_0000_0000, 16, 0, 0)
			return 0
		}},
		{"buffer at address 0", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, 0, 16, 0, 0)
			return 0
		}},
		{"buffer straddles end of RAM", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, virtiotest.Base+(1<<20)-8, 16, 0, 0)
			return 0
		}},
		{"huge length", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, virtiotest.Base, 0xffff_ffff, 0, 0)
			return 0
		}},
		{"address wraps", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, ^uint64(0)-4, 16, 0, 0)
			return 0
		}},
		{"zero length", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, d.Alloc(16, 8), 0, 0, 0)
			return 0
		}},
		{"self loop", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 3, d.Alloc(16, 8), 16, F, 3)
			return 3
		}},
		{"two-descriptor loop", func(d *virtiotest.Driver) uint16 {
			a := d.Alloc(16, 8)
			d.PutDesc(d.Desc, 0, a, 16, F, 1)
			d.PutDesc(d.Desc, 1, a, 16, F, 0)
			return 0
		}},
		{"next out of range", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, d.Alloc(16, 8), 16, F, 200)
			return 0
		}},
		{"readable after writable", func(d *virtiotest.Driver) uint16 {
			a := d.Alloc(16, 8)
			d.PutDesc(d.Desc, 0, a, 16, F|W, 1)
			d.PutDesc(d.Desc, 1, a, 16, 0, 0)
			return 0
		}},
		{"indirect inside indirect", func(d *virtiotest.Driver) uint16 {
			inner := d.Alloc(16, 16)
			d.PutDesc(inner, 0, d.Alloc(16, 8), 16, 0, 0)
			outer := d.Alloc(16, 16)
			d.PutDesc(outer, 0, inner, 16, I, 0)
			d.PutDesc(d.Desc, 0, outer, 16, I, 0)
			return 0
		}},
		{"indirect with next", func(d *virtiotest.Driver) uint16 {
			tbl := d.Alloc(16, 16)
			d.PutDesc(tbl, 0, d.Alloc(16, 8), 16, 0, 0)
			d.PutDesc(d.Desc, 0, tbl, 16, I|F, 1)
			return 0
		}},
		{"indirect table of odd length", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, d.Alloc(32, 16), 24, I, 0)
			return 0
		}},
		{"indirect table of length 0", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, d.Alloc(32, 16), 0, I, 0)
			return 0
		}},
		{"indirect table outside RAM", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, 0x4000_0000, 32, I, 0)
			return 0
		}},
		{"indirect table larger than the queue", func(d *virtiotest.Driver) uint16 {
			d.PutDesc(d.Desc, 0, d.Alloc(16*(qsize+1), 16), 16*(qsize+1), I, 0)
			return 0
		}},
		{"loop inside indirect table", func(d *virtiotest.Driver) uint16 {
			tbl := d.Alloc(32, 16)
			a := d.Alloc(16, 8)
			d.PutDesc(tbl, 0, a, 16, F, 1)
			d.PutDesc(tbl, 1, a, 16, F, 0)
			d.PutDesc(d.Desc, 0, tbl, 32, I, 0)
			return 0
		}},
		{"next outside indirect table", func(d *virtiotest.Driver) uint16 {
			tbl := d.Alloc(32, 16)
			d.PutDesc(tbl, 0, d.Alloc(16, 8), 16, F, 2)
			d.PutDesc(d.Desc, 0, tbl, 32, I, 0)
			return 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t)
			head := tt.setup(d)
			_, err := virtio.ParseChain(d.Mem, d.Desc, qsize, head, true)
			if !errors.Is(err, virtio.ErrBadChain) {
				t.Fatalf("err = %v, want ErrBadChain", err)
			}
			t.Log(err)
		})
	}
}

// FuzzDescriptorChain feeds arbitrary descriptor tables (and a head) to the
// parser: it must never panic, and whatever it accepts must be in RAM,
// bounded by the queue size, and ordered readable-then-writable.
func FuzzDescriptorChain(f *testing.F) {
	le := binary.LittleEndian
	seed := func(descs ...[4]uint64) []byte {
		var b []byte
		for _, d := range descs {
			b = le.AppendUint64(b, d[0])
			b = le.AppendUint32(b, uint32(d[1]))
			b = le.AppendUint16(b, uint16(d[2]))
			b = le.AppendUint16(b, uint16(d[3]))
		}
		return b
	}
	const ram = 0x1000
	f.Add(seed([4]uint64{ram + 0x200, 16, 1, 1}, [4]uint64{ram + 0x300, 512, 2, 0}), uint16(0), true)
	f.Add(seed([4]uint64{ram + 0x400, 32, 4, 0}), uint16(0), true)
	f.Add(seed([4]uint64{ram + 0x200, 16, 1, 0}), uint16(0), false)
	f.Add(seed([4]uint64{0xffff_ffff_ffff_fff0, 0xffff_ffff, 3, 7}), uint16(7), true)
	f.Fuzz(func(t *testing.T, table []byte, head uint16, indirect bool) {
		// RAM: one page holding the table (at the start) and buffers.
		buf := make([]byte, 0x1000)
		copy(buf, table)
		mem, err := memory.FromRegions(memory.Region{GuestAddr: ram, Host: buf})
		if err != nil {
			t.Fatal(err)
		}
		const size = 16
		c, err := virtio.ParseChain(mem, ram, size, head, indirect)
		if err != nil {
			if !errors.Is(err, virtio.ErrBadChain) {
				t.Fatalf("error %v does not wrap ErrBadChain", err)
			}
			return
		}
		if len(c.Buffers) == 0 || len(c.Buffers) > 2*size {
			t.Fatalf("accepted a chain of %d buffers", len(c.Buffers))
		}
		seenWrite := false
		var r, w uint64
		for _, b := range c.Buffers {
			if b.Len == 0 || !mem.Contains(b.Addr, uint64(b.Len)) {
				t.Fatalf("accepted buffer %+v outside RAM", b)
			}
			if !b.Write && seenWrite {
				t.Fatal("accepted readable after writable")
			}
			seenWrite = seenWrite || b.Write
			if b.Write {
				w += uint64(b.Len)
			} else {
				r += uint64(b.Len)
			}
		}
		if r != c.ReadLen || w != c.WriteLen {
			t.Fatalf("lengths %d/%d, buffers say %d/%d", c.ReadLen, c.WriteLen, r, w)
		}
	})
}
