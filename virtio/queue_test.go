package virtio_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

func TestQueuePopPush(t *testing.T) {
	d := newDriver(t)
	notified := 0
	q, err := d.Queue(0, func() { notified++ })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := q.Pop(); ok || err != nil {
		t.Fatalf("empty queue: ok=%v err=%v", ok, err)
	}
	a := d.Alloc(64, 8)
	for i := 0; i < 3; i++ {
		d.Post(d.Chain(virtiotest.Buf{Addr: a, Len: 64, Write: true}))
	}
	for i := 0; i < 3; i++ {
		c, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatalf("pop %d: ok=%v err=%v", i, ok, err)
		}
		if err := q.Push(c.Head, 10+uint32(i)); err != nil {
			t.Fatal(err)
		}
	}
	if more, err := q.Arm(); more || err != nil {
		t.Fatalf("Arm = %v, %v", more, err)
	}
	for i := 0; i < 3; i++ {
		e, ok := d.PopUsed()
		if !ok || e.ID != uint32(i) || e.Len != 10+uint32(i) {
			t.Fatalf("used %d = %+v %v", i, e, ok)
		}
	}
	if notified != 3 {
		t.Errorf("%d notifications, want 3 (no suppression)", notified)
	}
	// VIRTQ_AVAIL_F_NO_INTERRUPT suppresses them.
	d.Write(d.Avail, []byte{1, 0})
	d.Post(d.Chain(virtiotest.Buf{Addr: a, Len: 64}))
	c, _, _ := q.Pop()
	q.Push(c.Head, 0)
	if notified != 3 {
		t.Errorf("notified despite NO_INTERRUPT")
	}
}

func TestQueueEventIdx(t *testing.T) {
	d := newDriver(t)
	notified := 0
	q, err := d.Queue(virtio.FeatureEventIdx, func() { notified++ })
	if err != nil {
		t.Fatal(err)
	}
	a := d.Alloc(64, 8)
	// The driver wants to hear only once the third buffer is used.
	d.SetUsedEvent(2)
	for i := 0; i < 4; i++ {
		d.Post(d.Chain(virtiotest.Buf{Addr: a, Len: 64, Write: true}))
	}
	var counts []int
	for i := 0; i < 4; i++ {
		c, ok, err := q.Pop()
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
		q.Push(c.Head, 1)
		counts = append(counts, notified)
	}
	if want := []int{0, 0, 1, 1}; !equal(counts, want) {
		t.Errorf("notifications after each push %v, want %v", counts, want)
	}
	// Arm publishes avail_event = next index to read.
	if more, err := q.Arm(); more || err != nil {
		t.Fatal(more, err)
	}
	if got := binary.LittleEndian.Uint16(d.Read(d.Used+4+8*qsize, 2)); got != 4 {
		t.Errorf("avail_event = %d, want 4", got)
	}
	// A buffer posted after Arm's check is reported by the next Arm.
	d.Post(d.Chain(virtiotest.Buf{Addr: a, Len: 64}))
	if more, _ := q.Arm(); !more {
		t.Error("Arm missed a newly available buffer")
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestQueueAvailIndexJump(t *testing.T) {
	d := newDriver(t)
	q, err := d.Queue(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	// An avail idx more than the queue size ahead is a broken driver.
	d.Write(d.Avail+2, []byte{qsize + 1, 0})
	if _, _, err := q.Pop(); !errors.Is(err, virtio.ErrBadChain) {
		t.Fatalf("err = %v, want ErrBadChain", err)
	}
}

func TestQueueBadRings(t *testing.T) {
	d := newDriver(t)
	for _, tt := range []struct {
		name                 string
		size                 uint16
		desc, driver, device uint64
	}{
		{"size not a power of two", 6, d.Desc, d.Avail, d.Used},
		{"size 0", 0, d.Desc, d.Avail, d.Used},
		{"desc misaligned", qsize, d.Desc + 8, d.Avail, d.Used},
		{"used misaligned", qsize, d.Desc, d.Avail, d.Used + 2},
		{"desc outside RAM", qsize, 0x100, d.Avail, d.Used},
		{"used past end of RAM", qsize, d.Desc, d.Avail, virtiotest.Base + 1<<20 - 8},
	} {
		if _, err := virtio.NewTestQueue(d.Mem, tt.size, tt.desc, tt.driver, tt.device, 0, nil); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

// A head is available again only once the device returned it: popping one
// it still holds is the driver's error, so a queue never has more chains
// in flight than its size (issue 12 finding 2).
func TestQueueHeadInFlight(t *testing.T) {
	for _, tt := range []struct {
		name    string
		pushed  bool // the device returned the head before it is posted again
		wantErr bool
	}{
		{"returned, posted again", true, false},
		{"held, posted again", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newDriver(t)
			q, err := d.Queue(0, nil)
			if err != nil {
				t.Fatal(err)
			}
			head := d.Chain(virtiotest.Buf{Addr: d.Alloc(64, 8), Len: 64, Write: true})
			d.Post(head)
			if _, ok, err := q.Pop(); !ok || err != nil {
				t.Fatalf("first pop: ok=%v err=%v", ok, err)
			}
			if tt.pushed {
				if err := q.Push(head, 0); err != nil {
					t.Fatal(err)
				}
			}
			d.Post(head)
			c, ok, err := q.Pop()
			if tt.wantErr {
				if ok || !errors.Is(err, virtio.ErrBadChain) {
					t.Fatalf("pop of a head in flight: ok=%v err=%v, want ErrBadChain", ok, err)
				}
				return
			}
			if !ok || err != nil || c.Head != head {
				t.Fatalf("pop of a returned head: %+v ok=%v err=%v", c, ok, err)
			}
		})
	}
}
