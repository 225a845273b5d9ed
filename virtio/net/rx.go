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
	buf  iovec
	size uint64
}

// takeRx pops and maps the next receive chain, waiting for the driver to
// post one: the tap is not read while the ring is empty, so frames queue
// (and, past the tap's queue length, are dropped and counted) in the host
// kernel, never silently in the VMM (back-pressure).
func (n *Net) takeRx(rs *runState, q *virtio.Queue, kick <-chan struct{}) (rxChain, bool) {
	c, ok := n.nextChain(rs, q, kick)
	if !ok {
		return rxChain{}, false
	}
	// §5.1.6.3.1: receive buffers are device-writable and hold at least
	// the header.
	if c.ReadLen != 0 || c.WriteLen < HeaderLen {
		n.fail(rs, fmt.Errorf("%w: receive chain head %d has %d readable and %d writable bytes, want 0 and at least %d",
			errMalformed, c.Head, c.ReadLen, c.WriteLen, HeaderLen))
		return rxChain{}, false
	}
	v, err := guestBuffers(q, c, true)
	if err != nil {
		n.fail(rs, err)
		return rxChain{}, false
	}
	return rxChain{head: c.Head, buf: v, size: c.WriteLen}, true
}

// rxLoop moves frames from pair p's backend into its receive queue until
// stopped. While the pair is off it doesn't read the backend, and a frame
// read just before the pair went off is dropped rather than published.
func (n *Net) rxLoop(rs *runState, p *pair, q *virtio.Queue, kick <-chan struct{}) {
	defer rs.wg.Done()
	// overflow takes the part of a frame that doesn't fit the first
	// chain: spread over further chains with MRG_RXBUF, dropped without.
	overflow := make([]byte, HeaderLen+maxFrameLen)
	var first rxChain
	var held []rxChain // chains taken for a dropped frame, used first
	take := func() (rxChain, bool) {
		if len(held) > 0 {
			c := held[0]
			held = held[1:]
			return c, true
		}
		return n.takeRx(rs, q, kick)
	}
	var iov iovec // first's buffers, then overflow; reused across frames
	fr := newFrameReader()
	var used []virtio.Used
	var rest []rxChain // the chains after first that a frame uses
	for {
		if !n.waitOn(rs, p) {
			return
		}
		if first.buf == nil {
			var ok bool
			if first, ok = take(); !ok {
				return
			}
		}
		iov = append(append(iov[:0], first.buf...), overflow)
		got, ok := n.readFrame(rs, p, fr, iov)
		if !ok {
			return
		}
		if got < HeaderLen {
			// Not even a header: nothing a guest could use.
			n.stats.RxDropped.Add(1)
			continue
		}
		used = append(used[:0], virtio.Used{Head: first.head, Written: uint32(min(got, first.size))})
		rest = rest[:0]
		if got > first.size {
			if !rs.mrg {
				// §5.1.6.3.1: without MRG_RXBUF the driver must post
				// buffers for the largest frame it accepts; keep the
				// chain for the next frame and drop this one.
				n.stats.RxDropped.Add(1)
				rs.log.Debug("virtio-net: receive buffer too small", "id", n.cfg.ID, "frame", got, "buffer", first.size)
				continue
			}
			tail := overflow[:got-first.size]
			for len(tail) > 0 {
				c, ok := take()
				if !ok {
					return
				}
				k := c.buf.copyIn(0, tail)
				tail = tail[k:]
				used = append(used, virtio.Used{Head: c.head, Written: uint32(k)})
				rest = append(rest, c)
			}
		}
		// num_buffers (§5.1.6.4): 1 without MRG_RXBUF, else the number of
		// chains the frame uses. The tap leaves the field alone.
		var nb [2]byte
		binary.LittleEndian.PutUint16(nb[:], uint16(len(used)))
		first.buf.copyIn(hdrNumBuffersOff, nb[:])
		// All chains of a frame are published together: a driver seeing
		// num_buffers > 1 expects the rest to be there already.
		p.gate.RLock()
		if !p.on {
			p.gate.RUnlock()
			// The pair went off while the frame was on its way: the
			// queue must not get it (§5.1.6.5.5). Its chains stay ours
			// for the frames after the pair comes back on.
			n.stats.RxDropped.Add(1)
			held = append(append([]rxChain(nil), rest...), held...)
			continue
		}
		err := q.PushAll(used)
		p.gate.RUnlock()
		if err != nil {
			n.fail(rs, err)
			return
		}
		n.stats.RxFrames.Add(1)
		n.stats.RxBytes.Add(got - HeaderLen)
		first = rxChain{}
	}
}

// frameReader is readv of one frame as the callback of the backend's
// RawConn.Read, made once per receive loop rather than once per frame.
type frameReader struct {
	v   iovec
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
func (n *Net) readFrame(rs *runState, p *pair, r *frameReader, v iovec) (uint64, bool) {
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
			// The tap went away (deleted, or its namespace): nothing
			// more will arrive. Keep the guest's buffers and stop.
			rs.log.Warn("virtio-net: backend read failed; receive stopped", "id", n.cfg.ID, "queue", p.index, "err", err)
			return 0, false
		}
	}
}
