package virtio_test

import (
	"testing"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// TestQueuePopAppend: chains popped with PopAppend land in the caller's
// buffer list, from its start, with no allocation once it is large enough,
// and an indirect table is expanded the same way.
func TestQueuePopAppend(t *testing.T) {
	d := newDriver(t)
	q, err := d.Queue(virtio.FeatureIndirectDesc, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := d.Alloc(64, 8)
	bufs := []virtiotest.Buf{{Addr: a, Len: 16}, {Addr: a + 16, Len: 32, Write: true}, {Addr: a + 48, Len: 1, Write: true}}
	head := d.Chain(bufs...)
	list := make([]virtio.Buffer, 5, 8) // stale entries: must be overwritten
	check := func(c virtio.Chain) {
		t.Helper()
		if c.Head != head || len(c.Buffers) != 3 || c.ReadLen != 16 || c.WriteLen != 33 {
			t.Fatalf("chain = %+v", c)
		}
		if &c.Buffers[0] != &list[0] {
			t.Fatal("PopAppend did not reuse the buffer list")
		}
		for i, b := range bufs {
			if c.Buffers[i] != (virtio.Buffer{Addr: b.Addr, Len: b.Len, Write: b.Write}) {
				t.Fatalf("buffer %d = %+v", i, c.Buffers[i])
			}
		}
	}
	d.Post(head)
	c, ok, err := q.PopAppend(list)
	if !ok || err != nil {
		t.Fatalf("PopAppend: ok=%v err=%v", ok, err)
	}
	check(c)
	if err := q.Push(c.Head, 0); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		d.Post(head)
		c, ok, err := q.PopAppend(list)
		if !ok || err != nil {
			t.Fatalf("PopAppend: ok=%v err=%v", ok, err)
		}
		check(c)
		if err := q.Push(c.Head, 0); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Errorf("%.1f allocations per PopAppend and Push", allocs)
	}
	// Too short a list grows like append.
	d.Post(head)
	c, ok, err = q.PopAppend(make([]virtio.Buffer, 0, 1))
	if !ok || err != nil || len(c.Buffers) != 3 {
		t.Fatalf("PopAppend into a short list: %+v ok=%v err=%v", c, ok, err)
	}
	// An indirect table lands in the list just the same.
	head = d.IndirectChain(bufs...)
	d.Post(head)
	if c, ok, err = q.PopAppend(list); !ok || err != nil {
		t.Fatalf("PopAppend of an indirect chain: ok=%v err=%v", ok, err)
	}
	check(c)
	// An empty ring leaves the list alone.
	if _, ok, err := q.PopAppend(list); ok || err != nil {
		t.Fatalf("empty ring: ok=%v err=%v", ok, err)
	}
}
