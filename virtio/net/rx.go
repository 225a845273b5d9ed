package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/virtio"
)

// errMalformed marks a chain the device can't use at all; the driver broke
// the protocol.
var errMalformed = errors.New("malformed virtio-net buffer")

// rxChain is one receive chain mapped to guest memory.
type rxChain struct {
	head uint16
	buf  virtio.Iovec
	size uint64
}

// takeRx pops and maps the next receive chain, waiting for the driver to
// post one: the tap is not read while the ring is empty, so frames queue
// (and, past the tap's queue length, are dropped and counted) in the host
// kernel, never silently in the VMM (back-pressure).
func (n *Net) takeRx(rs *runState, q *virtio.Queue, kick <-chan struct{}) (rxChain, bool) {
	c, ok, err := virtio.NextChain(q, kick, rs.stop)
	if err != nil {
		n.fail(rs, err)
		return rxChain{}, false
	}
	if !ok {
		return rxChain{}, false
	}
	return n.mapRx(rs, q, c)
}

// mapRx checks and maps receive chain c; ok=false means the driver broke
// the queue.
func (n *Net) mapRx(rs *runState, q *virtio.Queue, c virtio.Chain) (rxChain, bool) {
	// §5.1.6.3.1: receive buffers are device-writable and hold at least
	// the header.
	if c.ReadLen != 0 || c.WriteLen < HeaderLen {
		n.fail(rs, fmt.Errorf("%w: receive chain head %d has %d readable and %d writable bytes, want 0 and at least %d",
			errMalformed, c.Head, c.ReadLen, c.WriteLen, HeaderLen))
		return rxChain{}, false
	}
	v, err := c.AppendWritable(nil, q.Mem(), 0)
	if err != nil {
		n.fail(rs, err)
		return rxChain{}, false
	}
	return rxChain{head: c.Head, buf: v, size: c.WriteLen}, true
}

// rxFrames is a receive loop's state: chains taken and not used yet, and
// the frames read but not yet published to the driver.
type rxFrames struct {
	n    *Net
	rs   *runState
	p    *pair
	q    *virtio.Queue
	kick <-chan struct{}

	held []rxChain // chains taken and not used, used first

	// rescue, if set, frees chains that hold frames read but not yet
	// assembled (a burst's later frames), when the frame being assembled
	// needs one and the driver has posted none; it reports whether it
	// freed any.
	rescue func() bool

	// The frames not yet published: their used entries, their chains (to
	// keep if they are dropped), how many and their bytes.
	used   []virtio.Used
	chains []rxChain
	frames uint64
	bytes  uint64
}

// take returns the next chain to fill, waiting for the driver to post
// one; ok=false means stop.
func (f *rxFrames) take() (rxChain, bool) {
	if len(f.held) > 0 {
		c := f.held[0]
		f.held = f.held[1:]
		return c, true
	}
	return f.n.takeRx(f.rs, f.q, f.kick)
}

// tryTake is take without waiting: ok=false when the driver has posted
// nothing more, broken=true (and ok=false) when the queue just failed and
// the loop must stop.
func (f *rxFrames) tryTake() (_ rxChain, ok, broken bool) {
	if len(f.held) > 0 {
		c := f.held[0]
		f.held = f.held[1:]
		return c, true, false
	}
	c, ok, err := f.q.Pop()
	if err != nil {
		f.n.fail(f.rs, err)
		return rxChain{}, false, true
	}
	if !ok {
		return rxChain{}, false, false
	}
	rc, ok := f.n.mapRx(f.rs, f.q, c)
	return rc, ok, !ok
}

// next returns a chain for the frame whose used entries start at
// f.used[start]: one the driver has posted, else one that rescue frees,
// else, after publishing the frames before that one (the driver may be
// waiting for them before it posts more), the next the driver posts. It
// returns where the frame's entries start then; ok=false means stop.
func (f *rxFrames) next(start int) (_ rxChain, _ int, ok bool) {
	c, ok, broken := f.tryTake()
	if ok || broken {
		return c, start, ok
	}
	if f.rescue != nil && f.rescue() {
		if c, ok, broken = f.tryTake(); ok || broken {
			return c, start, ok
		}
	}
	if start, ok = f.publishBefore(start); !ok {
		return rxChain{}, 0, false
	}
	c, ok = f.take()
	return c, start, ok
}

// hold puts chains back in front of the held ones, in order.
func (f *rxFrames) hold(cs ...rxChain) {
	f.held = append(append(make([]rxChain, 0, len(cs)+len(f.held)), cs...), f.held...)
}

// frame adds a frame of got bytes (header included) read into first, its
// part past first's size in overflow, to the frames to publish. used=false
// means it was dropped and first is still free; ok=false means stop.
func (f *rxFrames) frame(first rxChain, got uint64, overflow []byte) (used, ok bool) {
	n := f.n
	if got < HeaderLen {
		// Not even a header: nothing a guest could use.
		n.stats.RxDropped.Add(1)
		return false, true
	}
	start := len(f.used)
	f.used = append(f.used, virtio.Used{Head: first.head, Written: uint32(min(got, first.size))})
	f.chains = append(f.chains, first)
	if got > first.size {
		if !f.rs.mrg {
			// §5.1.6.3.1: without MRG_RXBUF the driver must post
			// buffers for the largest frame it accepts; keep the
			// chain for the next frame and drop this one.
			n.stats.RxDropped.Add(1)
			f.rs.log.Debug("virtio-net: receive buffer too small", "id", n.cfg.ID, "frame", got, "buffer", first.size)
			f.used, f.chains = f.used[:start], f.chains[:len(f.chains)-1]
			return false, true
		}
		tail := overflow[:got-first.size]
		for len(tail) > 0 {
			var c rxChain
			var ok bool
			if c, start, ok = f.next(start); !ok {
				return true, false
			}
			k := c.buf.CopyIn(tail, 0)
			tail = tail[k:]
			f.used = append(f.used, virtio.Used{Head: c.head, Written: uint32(k)})
			f.chains = append(f.chains, c)
		}
	}
	// num_buffers (§5.1.6.4): 1 without MRG_RXBUF, else the number of
	// chains the frame uses. The tap leaves the field alone.
	var nb [2]byte
	binary.LittleEndian.PutUint16(nb[:], uint16(len(f.used)-start))
	first.buf.CopyIn(nb[:], hdrNumBuffersOff)
	f.frames++
	f.bytes += got - HeaderLen
	return true, true
}

// publishBefore publishes the frames whose used entries come before
// f.used[start] (the frame being assembled starts there) and returns
// where that frame's entries start now; ok=false means stop.
func (f *rxFrames) publishBefore(start int) (int, bool) {
	if f.frames == 0 {
		return start, true
	}
	// The frame being assembled: its entries and chains (one each).
	used := append([]virtio.Used(nil), f.used[start:]...)
	chains := append([]rxChain(nil), f.chains[len(f.chains)-len(used):]...)
	f.used, f.chains = f.used[:start], f.chains[:len(f.chains)-len(used)]
	if !f.publish() {
		return 0, false
	}
	f.used, f.chains = append(f.used, used...), append(f.chains, chains...)
	return 0, true
}

// publish hands the frames read so far to the driver, all at once (a
// driver seeing num_buffers > 1 expects the rest to be there already);
// ok=false means stop.
func (f *rxFrames) publish() bool {
	if f.frames == 0 {
		return true
	}
	defer func() {
		clear(f.chains)
		f.used, f.chains, f.frames, f.bytes = f.used[:0], f.chains[:0], 0, 0
	}()
	p := f.p
	p.gate.RLock()
	if !p.on {
		p.gate.RUnlock()
		// The pair went off while the frames were on their way: the
		// queue must not get them (§5.1.6.5.5). Their chains stay ours
		// for the frames after the pair comes back on.
		f.n.stats.RxDropped.Add(f.frames)
		f.hold(f.chains...)
		return true
	}
	err := f.q.PushAll(f.used)
	p.gate.RUnlock()
	if err != nil {
		f.n.fail(f.rs, err)
		return false
	}
	f.n.stats.RxFrames.Add(f.frames)
	f.n.stats.RxBytes.Add(f.bytes)
	return true
}

// rxLoop moves frames from pair p's backend into its receive queue until
// stopped: in bursts, one io_uring_enter reading as many frames as the
// driver has buffers posted for (rxring.go), where the host has io_uring,
// and one readv per frame, waiting in Go's poller, when the backend has
// nothing to read or there is no ring. While the pair is off it doesn't
// read the backend, and frames read just before the pair went off are
// dropped rather than published.
func (n *Net) rxLoop(rs *runState, p *pair, q *virtio.Queue, kick <-chan struct{}) {
	f := &rxFrames{n: n, rs: rs, p: p, q: q, kick: kick}
	rr := n.openRxRing(rs, p)
	defer func() {
		if rr != nil {
			rr.close()
		}
	}()
	// overflow takes the part of a frame that doesn't fit the first
	// chain: spread over further chains with MRG_RXBUF, dropped without.
	overflow := make([]byte, HeaderLen+maxFrameLen)
	var iov virtio.Iovec // the chain's buffers, then overflow; reused across frames
	fr := newFrameReader()
	for {
		if !n.waitOn(rs, p) {
			return
		}
		if rr != nil {
			got, ok := rr.burst(f)
			if !ok {
				return
			}
			if rr.unsupported {
				rs.log.Debug("virtio-net: the backend can't take non-blocking reads from io_uring; reading frame by frame", "id", n.cfg.ID)
				rr.close()
				rr = nil
			}
			if got > 0 {
				if !f.publish() {
					return
				}
				continue
			}
			// The backend had nothing: wait for a frame below.
		}
		first, ok := f.take()
		if !ok {
			return
		}
		iov = append(append(iov[:0], first.buf...), overflow)
		got, ok := n.readFrame(rs, p, fr, iov)
		if !ok {
			f.hold(first)
			return
		}
		used, ok := f.frame(first, got, overflow[:max(got, first.size)-first.size])
		if !ok {
			return
		}
		if !used {
			f.hold(first)
		}
		if !f.publish() {
			return
		}
	}
}

// frameReader is readv of one frame as the callback of the backend's
// RawConn.Read, made once per receive loop rather than once per frame.
type frameReader struct {
	v   virtio.Iovec
	got int
	err error
	fn  func(fd uintptr) bool
}

func newFrameReader() *frameReader {
	r := &frameReader{}
	r.fn = func(fd uintptr) bool {
		r.got, r.err = unix.Readv(int(fd), r.v)
		return r.err != unix.EAGAIN
	}
	return r
}

// readFrame reads one frame with its header into v, waiting in the poller
// for one to arrive; ok=false means stop.
func (n *Net) readFrame(rs *runState, p *pair, r *frameReader, v virtio.Iovec) (uint64, bool) {
	r.v = v
	defer func() { r.v = nil }()
	for {
		r.got, r.err = 0, nil
		err := p.rc.Read(r.fn)
		if err == nil {
			err = r.err
		}
		switch {
		case err == nil:
			return uint64(r.got), true
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, os.ErrDeadlineExceeded) || rs.stopped():
			return 0, false
		default:
			n.backendGone(rs, p, err)
			return 0, false
		}
	}
}

// backendGone reports a backend that failed a read: the tap went away
// (deleted, or its namespace), so nothing more will arrive. The loop keeps
// the guest's buffers and stops.
func (n *Net) backendGone(rs *runState, p *pair, err error) {
	rs.log.Warn("virtio-net: backend read failed; receive stopped", "id", n.cfg.ID, "queue", p.index, "err", err)
}
