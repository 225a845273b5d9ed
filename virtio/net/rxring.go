package net

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/iouring"
)

// rxRing reads a burst of frames with one io_uring_enter: a non-blocking
// read (RWF_NOWAIT) into each receive chain the driver has posted, up to
// rxRingBurst, each taking one frame from the tap or -EAGAIN once the tap
// is empty. The reads are issued in order, so frames reach the chains in
// the order the tap queued them.
type rxRing struct {
	ring  *iouring.Ring
	fd    int
	slots []rxSlot
	res   []int32
	// unsupported is set once the backend refused a non-blocking read.
	unsupported bool
}

// rxSlot is one read of a burst.
type rxSlot struct {
	c rxChain
	// overflow takes the part of a frame past c (see rxLoop); allocated
	// on first need, since a driver posting buffers for whole frames
	// needs none.
	overflow []byte
	ovf      []byte // overflow, or nil for a chain that holds any frame
	iov      []unix.Iovec
	// host, once set, holds the slot's whole frame, copied out of c so
	// that c could go to an earlier frame (rescue), in hostBuf.
	host, hostBuf []byte
}

// rxRingBurst is the most frames read per io_uring_enter.
const rxRingBurst = 16

// newRxRing sets up a ring for backend descriptor fd.
func newRxRing(fd int) (*rxRing, error) {
	ring, err := iouring.New(rxRingBurst)
	if err != nil {
		return nil, err
	}
	k := min(ring.Entries(), rxRingBurst)
	return &rxRing{ring: ring, fd: fd, slots: make([]rxSlot, k), res: make([]int32, k)}, nil
}

func (r *rxRing) close() { r.ring.Close() }

// burst reads as many frames as there are, and chains for, up to
// rxRingBurst, into f's frames to publish; it waits for the driver to
// post a first chain, but not for the backend. frames=0 means the backend
// had nothing; ok=false means stop.
func (r *rxRing) burst(f *rxFrames) (frames int, ok bool) {
	k := 0
	for k < len(r.slots) {
		var c rxChain
		if k == 0 {
			if c, ok = f.take(); !ok {
				return 0, false
			}
		} else {
			var broken bool
			if c, ok, broken = f.tryTake(); broken {
				return 0, false
			} else if !ok {
				break
			}
		}
		s := &r.slots[k]
		s.c, s.ovf = c, nil
		s.iov = iouring.AppendIovecs(s.iov[:0], c.buf)
		if c.size < HeaderLen+maxFrameLen {
			if s.overflow == nil {
				s.overflow = make([]byte, HeaderLen+maxFrameLen)
			}
			s.ovf = s.overflow
			s.iov = iouring.AppendIovecs(s.iov, [][]byte{s.ovf})
		}
		// Offset -1: the descriptor's own position, which a tap ignores.
		if err := r.ring.PrepReadvNoWait(r.fd, s.iov, ^uint64(0), uint64(k)); err != nil {
			f.hold(c)
			break
		}
		k++
	}
	if k == 0 {
		return 0, true
	}
	if err := r.ring.SubmitAll(r.res[:k]); err != nil {
		f.n.fail(f.rs, fmt.Errorf("receive burst: %w", err))
		return 0, false
	}
	// Chains the backend had no frame for go back first, so that a frame
	// spilling over into further chains uses them.
	var unfilled []rxChain
	var gone error // the backend failed: publish what was read, then stop
	for i := range k {
		switch res := r.res[i]; {
		case res >= 0:
		case res == -int32(unix.EAGAIN) || res == -int32(unix.EINTR):
			unfilled = append(unfilled, r.slots[i].c)
		case res == -int32(unix.EOPNOTSUPP):
			// A backend without non-blocking reads (RWF_NOWAIT):
			// the loop reads frame by frame from now on.
			r.unsupported = true
			unfilled = append(unfilled, r.slots[i].c)
		default:
			gone = unix.Errno(-res)
			unfilled = append(unfilled, r.slots[i].c)
		}
	}
	f.hold(unfilled...)
	// A frame spilling over into further chains when the driver has
	// posted none may take the chains of the burst's later frames, which
	// are copied out first: those chains can't be published before it, so
	// the driver would otherwise never get a buffer back. One at a time,
	// from the last, so that the frames next in line keep theirs.
	cur := 0
	f.rescue = func() bool {
		for j := k - 1; j > cur; j-- {
			s := &r.slots[j]
			if r.res[j] < 0 || s.host != nil {
				continue
			}
			got := uint64(r.res[j])
			if got < HeaderLen {
				// Not even a header (a backend other than a tap can
				// return an empty read): dropped now, as frame would,
				// so its chain is free.
				f.n.stats.RxDropped.Add(1)
				r.res[j] = -int32(unix.EAGAIN)
			} else {
				if uint64(cap(s.hostBuf)) < got {
					s.hostBuf = make([]byte, got)
				}
				s.host = s.hostBuf[:got]
				n := s.c.buf.CopyOut(s.host, 0)
				if uint64(n) < got {
					copy(s.host[n:], s.ovf)
				}
			}
			f.held = append(f.held, s.c)
			s.c = rxChain{}
			return true
		}
		return false
	}
	defer func() { f.rescue = nil }()
	for i := range k {
		cur = i
		s := &r.slots[i]
		res := r.res[i]
		if res < 0 {
			continue
		}
		got := uint64(res)
		first, ovf := s.c, []byte(nil)
		if s.host != nil {
			var ok bool
			if first, _, ok = f.next(len(f.used)); !ok {
				return frames, false
			}
			n := first.buf.CopyIn(s.host, 0)
			ovf = s.host[n:]
			s.host = nil
		} else if s.ovf != nil {
			ovf = s.ovf[:max(got, s.c.size)-s.c.size]
		}
		used, ok := f.frame(first, got, ovf)
		if !ok {
			return frames, false
		}
		if used {
			frames++
		} else {
			f.hold(first)
		}
		s.c = rxChain{}
	}
	if gone != nil {
		f.publish()
		f.n.backendGone(f.rs, f.p, gone)
		return frames, false
	}
	return frames, true
}

// openRxRing returns a ring for pair p's receive loop, or nil to read
// frame by frame.
func (n *Net) openRxRing(rs *runState, p *pair) *rxRing {
	fd, ok := n.ringBackend(p)
	if !ok {
		return nil
	}
	rr, err := newRxRing(fd)
	if err != nil {
		rs.log.Debug("virtio-net: no io_uring; reading frame by frame", "id", n.cfg.ID, "err", err)
		return nil
	}
	return rr
}
