package net

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/virtio"
)

// iovMax is the most buffers one writev takes (IOV_MAX, limits.h); longer
// chains are gathered into one buffer first.
const iovMax = 1024

// txBatch bounds how many transmitted chains are returned at once: enough
// to coalesce used-ring updates and interrupts, few enough that the
// driver gets its buffers back promptly.
const txBatch = 64

// txLoop sends the driver's frames on pair p's backend whenever it
// notifies the transmit queue, until stopped or the driver breaks the
// queue: in bursts of up to txRingBurst frames per io_uring_enter where
// the host has io_uring (txring.go), else one writev per frame. Chains go
// back to the driver in batches, after each burst. An off
// pair still transmits what the driver queued (the kernel accepts writes
// on a detached tap queue): frames posted before the driver turned the
// pair off must complete.
func (n *Net) txLoop(rs *runState, p *pair, q *virtio.Queue, kick <-chan struct{}) {
	var gather []byte
	var used []virtio.Used
	var bufs virtio.Iovec // the chain's buffers, reused from chain to chain
	w := newFrameWriter()
	tr := n.openTxRing(rs, p)
	defer func() {
		if tr != nil {
			tr.close()
		}
	}()
	ringUnsupported := false
	// sent accounts for one frame of a ring burst; false means stop. A
	// frame the ring could not write now (the backend is full: EAGAIN,
	// and the frames linked after it: ECANCELED) is written the blocking
	// way, which waits for room or for Reset; order is kept, since a
	// burst's writes are linked and stop at the first that fails.
	sent := func(v virtio.Iovec, size uint64, res int32) bool {
		switch {
		case res >= 0:
			n.stats.TxFrames.Add(1)
			n.stats.TxBytes.Add(size - HeaderLen)
		case res == -int32(unix.EOPNOTSUPP):
			// A backend without non-blocking writes (RWF_NOWAIT).
			ringUnsupported = true
			return n.writeFrame(rs, p, w, v, size)
		case res == -int32(unix.EAGAIN) || res == -int32(unix.ECANCELED) || res == -int32(unix.EINTR):
			return n.writeFrame(rs, p, w, v, size)
		default:
			n.stats.TxDropped.Add(1)
			rs.log.Debug("virtio-net: frame dropped by the backend", "id", n.cfg.ID, "len", size, "err", unix.Errno(-res))
		}
		return true
	}
	// burst writes the frames queued on the ring, in order, before
	// anything else is written or returned; false means stop.
	burst := func() bool {
		if tr == nil {
			return true
		}
		var err error
		if used, err = tr.send(used, sent); err != nil {
			if err != errStopped {
				n.fail(rs, err)
			}
			return false
		}
		if ringUnsupported {
			rs.log.Debug("virtio-net: the backend can't take non-blocking writes from io_uring; writing frame by frame", "id", n.cfg.ID)
			tr.close()
			tr = nil
		}
		return true
	}
	flush := func() bool {
		if !burst() {
			return false
		}
		err := q.PushAll(used)
		used = used[:0]
		if err != nil {
			n.fail(rs, err)
			return false
		}
		return true
	}
	// round counts the chains taken since stop was last looked at: a
	// driver that keeps posting (re-posting what it got back) never
	// empties the ring, so stop is also observed between rounds of
	// txBatch chains, each returned to the driver first (issue 12: stop
	// within 100 ms whatever the guest does).
	round := 0
	for {
		if round == txBatch {
			if !flush() || rs.stopped() {
				return
			}
			round = 0
		}
		c, ok, err := q.Pop()
		if err != nil {
			n.fail(rs, err)
			return
		}
		if !ok {
			if !flush() {
				return
			}
			more, err := q.Arm()
			if err != nil {
				n.fail(rs, err)
				return
			}
			if !more {
				select {
				case <-rs.stop:
					return
				case <-kick:
				}
			}
			continue
		}
		round++
		// §5.1.6.2: a transmit chain is the header then the frame, all
		// device-readable.
		if c.WriteLen != 0 || c.ReadLen < HeaderLen {
			n.fail(rs, fmt.Errorf("%w: transmit chain head %d has %d readable and %d writable bytes, want at least %d and 0",
				errMalformed, c.Head, c.ReadLen, c.WriteLen, HeaderLen))
			return
		}
		bufs, err = c.AppendReadable(bufs[:0], q.Mem(), 0)
		if err != nil {
			n.fail(rs, err)
			return
		}
		v := bufs
		if tr != nil && len(v) <= iovMax {
			if err := tr.add(c.Head, v, c.ReadLen); err != nil {
				n.fail(rs, err)
				return
			}
			if tr.full() && !burst() {
				return
			}
			if len(used) >= txBatch && !flush() {
				return
			}
			continue
		}
		if !burst() {
			return
		}
		if len(v) > iovMax {
			if gather == nil {
				gather = make([]byte, HeaderLen+maxFrameLen)
			}
			if c.ReadLen > uint64(len(gather)) {
				n.stats.TxDropped.Add(1)
				v = nil
			} else {
				v = virtio.Iovec{gather[:v.CopyOut(gather, 0)]}
			}
		}
		if v != nil {
			if !n.writeFrame(rs, p, w, v, c.ReadLen) {
				return
			}
		}
		// Transmit buffers are only read: the used length is 0.
		used = append(used, virtio.Used{Head: c.Head})
		if len(used) >= txBatch && !flush() {
			return
		}
	}
}

// frameWriter is writev of one frame as the callback of the backend's
// RawConn.Write, made once per transmit loop rather than once per frame.
type frameWriter struct {
	v   virtio.Iovec
	err error
	fn  func(fd uintptr) bool
}

func newFrameWriter() *frameWriter {
	w := &frameWriter{}
	w.fn = func(fd uintptr) bool {
		_, w.err = unix.Writev(int(fd), w.v)
		return w.err != unix.EAGAIN
	}
	return w
}

// writeFrame writes one header+frame to the backend; ok=false means stop.
// A frame the host refuses (a bad GSO header, an oversized frame, a link
// that is down) is dropped and counted, as a NIC would.
func (n *Net) writeFrame(rs *runState, p *pair, w *frameWriter, v virtio.Iovec, size uint64) bool {
	w.v = v
	defer func() { w.v = nil }()
	for {
		w.err = nil
		err := p.rc.Write(w.fn)
		if err == nil {
			err = w.err
		}
		switch {
		case err == nil:
			n.stats.TxFrames.Add(1)
			n.stats.TxBytes.Add(size - HeaderLen)
			return true
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, os.ErrDeadlineExceeded) || rs.stopped():
			return false
		default:
			n.stats.TxDropped.Add(1)
			rs.log.Debug("virtio-net: frame dropped by the backend", "id", n.cfg.ID, "len", size, "err", err)
			return true
		}
	}
}

// openTxRing returns a ring for pair p's transmit loop, or nil to write
// frame by frame.
func (n *Net) openTxRing(rs *runState, p *pair) *txRing {
	fd, ok := n.ringBackend(p)
	if !ok {
		return nil
	}
	tr, err := newTxRing(fd)
	if err != nil {
		rs.log.Debug("virtio-net: no io_uring; writing frame by frame", "id", n.cfg.ID, "err", err)
		return nil
	}
	return tr
}

// ringBackend returns the descriptor of pair p's backend for io_uring, or
// false to do without: the device is configured frame by frame, or the
// backend is not a descriptor.
func (n *Net) ringBackend(p *pair) (int, bool) {
	if n.cfg.frameByFrame {
		return -1, false
	}
	fd := -1
	if err := p.rc.Control(func(f uintptr) { fd = int(f) }); err != nil || fd < 0 {
		return -1, false
	}
	return fd, true
}
