package virtio_test

import (
	"encoding/binary"
	"testing"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// TestQueuePushAll: several chains published with one used index update
// and one notification, wrapping around the ring.
func TestQueuePushAll(t *testing.T) {
	d := newDriver(t)
	notified := 0
	q, err := d.Queue(0, func() { notified++ })
	if err != nil {
		t.Fatal(err)
	}
	a := d.Alloc(64, 8)
	var used []virtio.Used
	for round := 0; round < 3; round++ {
		used = used[:0]
		for i := 0; i < int(d.Size)-1; i++ {
			d.Post(d.Chain(virtiotest.Buf{Addr: a, Len: 64, Write: true}))
			c, ok, err := q.Pop()
			if !ok || err != nil {
				t.Fatalf("pop: ok=%v err=%v", ok, err)
			}
			used = append(used, virtio.Used{Head: c.Head, Written: uint32(i)})
		}
		before := notified
		if err := q.PushAll(used); err != nil {
			t.Fatal(err)
		}
		if notified != before+1 {
			t.Errorf("round %d: %d notifications, want 1", round, notified-before)
		}
		for i, u := range used {
			e, ok := d.PopUsed()
			if !ok || e.ID != uint32(u.Head) || e.Len != uint32(i) {
				t.Fatalf("round %d used %d: %+v %v, want %+v", round, i, e, ok, u)
			}
		}
	}
	if idx := binary.LittleEndian.Uint16(d.Read(d.Used+2, 2)); idx != 3*(d.Size-1) {
		t.Errorf("used idx %d, want %d", idx, 3*(d.Size-1))
	}
	if err := q.PushAll(nil); err != nil || notified != 3 {
		t.Errorf("PushAll(nil): %v, %d notifications", err, notified)
	}
}
