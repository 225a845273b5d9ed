package blk

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// newParseQueue returns a fake driver and the device side of its queue,
// popped by hand to feed parse.
func newParseQueue(tb testing.TB) (*virtiotest.Driver, *virtio.Queue) {
	tb.Helper()
	d, err := virtiotest.NewDriver(1<<20, 16)
	if err != nil {
		tb.Fatal(err)
	}
	q, err := d.Queue(0, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return d, q
}

// TestParseLayouts parses requests framed in unusual ways into one reused
// request: the header split over descriptors and sharing one with data,
// the status byte at the end of a data buffer; nothing of an earlier
// request is left behind.
func TestParseLayouts(t *testing.T) {
	d, q := newParseQueue(t)
	hdr := make([]byte, headerLen)
	binary.LittleEndian.PutUint32(hdr[0:], typeOut)
	binary.LittleEndian.PutUint64(hdr[8:], 77)
	out := d.Alloc(headerLen+1024, 8)
	d.Write(out, hdr)
	for i := range 1024 {
		d.Write(out+headerLen+uint64(i), []byte{byte(i)})
	}
	in := d.Alloc(1024+1, 8)
	type layout struct {
		name     string
		bufs     []virtiotest.Buf
		out, in  int // data bytes each way
		statusAt uint64
	}
	layouts := []layout{
		{"plain", []virtiotest.Buf{{Addr: out, Len: headerLen + 512}, {Addr: in, Len: 512, Write: true}, {Addr: in + 512, Len: 1, Write: true}}, 512, 512, in + 512},
		{"header split", []virtiotest.Buf{{Addr: out, Len: 5}, {Addr: out + 5, Len: 11}, {Addr: out + headerLen, Len: 1024}, {Addr: in, Len: 1, Write: true}}, 1024, 0, in},
		{"header and data", []virtiotest.Buf{{Addr: out, Len: 7}, {Addr: out + 7, Len: headerLen - 7 + 100}, {Addr: out + headerLen + 100, Len: 412}, {Addr: in, Len: 1025, Write: true}}, 512, 1024, in + 1024},
		{"status after data", []virtiotest.Buf{{Addr: out, Len: headerLen}, {Addr: in, Len: 300, Write: true}, {Addr: in + 300, Len: 213, Write: true}}, 0, 512, in + 512},
	}
	var r request
	for _, l := range layouts {
		d.Post(d.Chain(l.bufs...))
		c, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatalf("%s: pop: %v %v", l.name, ok, err)
		}
		if err := parse(d.Mem, &c, &r); err != nil {
			t.Fatalf("%s: %v", l.name, err)
		}
		if r.typ != typeOut || r.sector != 77 {
			t.Errorf("%s: type %d sector %d", l.name, r.typ, r.sector)
		}
		got := make([]byte, r.out.Len())
		r.out.CopyOut(got, 0)
		want := d.Read(out+headerLen, l.out)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: out data differs (%d bytes, want %d)", l.name, len(got), l.out)
		}
		if r.in.Len() != uint64(l.in) {
			t.Errorf("%s: %d writable data bytes, want %d", l.name, r.in.Len(), l.in)
		}
		s, _ := d.Mem.Slice(l.statusAt, 1)
		if &r.status[0] != &s[0] {
			t.Errorf("%s: status byte is not the last writable byte", l.name)
		}
		r.release()
		if err := q.Push(c.Head, 1); err != nil {
			t.Fatal(err)
		}
	}
	// Malformed: a short header, no writable byte.
	for _, bufs := range [][]virtiotest.Buf{
		{{Addr: out, Len: headerLen - 1}, {Addr: in, Len: 1, Write: true}},
		{{Addr: out, Len: headerLen + 512}},
	} {
		d.Post(d.Chain(bufs...))
		c, _, err := q.Pop()
		if err != nil {
			t.Fatal(err)
		}
		if err := parse(d.Mem, &c, &r); err == nil {
			t.Errorf("parse accepted %+v", bufs)
		}
	}
}
