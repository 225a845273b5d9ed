package virtiotest

import "testing"

// TestDriverReset: after a round trip through a queue and a Reset, a new
// queue on the driver starts empty, chains are laid out from descriptor 0
// and used entries counted from 0 again, and allocation restarts where
// the first buffer went.
func TestDriverReset(t *testing.T) {
	d, err := NewDriver(64<<10, 8)
	if err != nil {
		t.Fatal(err)
	}
	first := d.Alloc(512, 8)
	roundTrip := func(round int) {
		t.Helper()
		q, err := d.Queue(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := q.Pop(); ok || err != nil {
			t.Fatalf("round %d: a new queue has a chain (%v) before any was posted", round, err)
		}
		// Three chains, so the second round only sees the ring empty
		// again if Reset cleared it.
		var heads []uint16
		for i := range 3 {
			heads = append(heads, d.Chain(Buf{Addr: first + uint64(100*i), Len: 100}, Buf{Addr: first + 400, Len: 8, Write: true}))
			d.Post(heads[i])
		}
		if heads[0] != 0 {
			t.Fatalf("round %d: the first chain's head is %d, want 0", round, heads[0])
		}
		for i, want := range heads {
			c, ok, err := q.Pop()
			if !ok || err != nil || c.Head != want || c.ReadLen != 100 || c.WriteLen != 8 {
				t.Fatalf("round %d, chain %d: %+v %v %v, want head %d", round, i, c, ok, err, want)
			}
			if err := q.Push(c.Head, uint32(i)); err != nil {
				t.Fatal(err)
			}
			e, ok := d.PopUsed()
			if !ok || e.ID != uint32(want) || e.Len != uint32(i) {
				t.Fatalf("round %d, chain %d: used %+v %v", round, i, e, ok)
			}
		}
		if _, ok := d.PopUsed(); ok {
			t.Fatalf("round %d: a used entry more than was pushed", round)
		}
	}
	roundTrip(1)
	d.Reset()
	if again := d.Alloc(512, 8); again != first {
		t.Errorf("the first allocation after Reset is at %#x, want %#x", again, first)
	}
	roundTrip(2)
}
