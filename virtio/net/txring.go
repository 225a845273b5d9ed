package net

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/iouring"
	"github.com/govmm/vmm/virtio"
)

// txRing sends a burst of transmit chains with one io_uring_enter: each
// frame is its own write to the backend (a tap takes one frame per
// write), but the system call, whose fixed cost is most of a small
// frame's, is paid once per burst. A tap write doesn't block (the kernel
// queues or drops), so the kernel does them inline and the burst is
// complete when Submit returns.
type txRing struct {
	ring  *iouring.Ring
	fd    int
	slots []txSlot
	res   []int32 // the kernel's result for each slot of a burst
	n     int     // slots filled in the current burst
}

// txSlot is one frame of a burst.
type txSlot struct {
	head uint16
	size uint64       // header+frame bytes
	v    virtio.Iovec // the guest buffers, for a write the kernel refused with EAGAIN
	iov  []unix.Iovec
}

// txRingBurst is the most frames written per io_uring_enter.
const txRingBurst = 64

// newTxRing sets up a ring for backend descriptor fd, or returns the
// reason there can be none (the transmit loop then writes frame by
// frame).
func newTxRing(fd int) (*txRing, error) {
	ring, err := iouring.New(txRingBurst)
	if err != nil {
		return nil, err
	}
	k := min(ring.Entries(), txRingBurst)
	return &txRing{ring: ring, fd: fd, slots: make([]txSlot, k), res: make([]int32, k)}, nil
}

// full reports whether the burst has no room for another frame.
func (t *txRing) full() bool { return t.n == len(t.slots) }

// add queues frame v (header and frame, at most iovMax buffers) of chain
// head.
func (t *txRing) add(head uint16, v virtio.Iovec, size uint64) error {
	s := &t.slots[t.n]
	s.head, s.size = head, size
	s.v = append(s.v[:0], v...)
	s.iov = iouring.AppendIovecs(s.iov[:0], v)
	if t.n > 0 {
		t.ring.LinkNext()
	}
	// Offset -1: the descriptor's own position, which a tap ignores.
	if err := t.ring.PrepWritevNoWait(t.fd, s.iov, ^uint64(0), uint64(t.n)); err != nil {
		return err
	}
	t.n++
	return nil
}

// send writes the burst and calls done for each frame in order with its
// buffers and the kernel's result (bytes written or a negative errno);
// done returns false to stop. send returns the used entries appended to
// used.
func (t *txRing) send(used []virtio.Used, done func(v virtio.Iovec, size uint64, res int32) bool) ([]virtio.Used, error) {
	if t.n == 0 {
		return used, nil
	}
	n := t.n
	t.n = 0
	res := t.res[:n]
	if err := t.ring.SubmitAll(res); err != nil {
		return used, fmt.Errorf("transmit burst of %d frames: %w", n, err)
	}
	var stop error
	for i := range n {
		s := &t.slots[i]
		if stop == nil && !done(s.v, s.size, res[i]) {
			stop = errStopped
		}
		used = append(used, virtio.Used{Head: s.head})
		clear(s.v)
		clear(s.iov)
	}
	return used, stop
}

func (t *txRing) close() { t.ring.Close() }

// errStopped is send's error when done asked to stop.
var errStopped = errors.New("stopped")
