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
// queue. Chains go back to the driver in batches, after each burst. An off
// pair still transmits what the driver queued (the kernel accepts writes
// on a detached tap queue): frames posted before the driver turned the
// pair off must complete.
func (n *Net) txLoop(rs *runState, p *pair, q *virtio.Queue, kick <-chan struct{}) {
	defer rs.wg.Done()
	var gather []byte
	var used []virtio.Used
	var bufs iovec // the chain's buffers, reused from chain to chain
	w := newFrameWriter()
	flush := func() bool {
		err := q.PushAll(used)
		used = used[:0]
		if err != nil {
			n.fail(rs, err)
			return false
		}
		return true
	}
	for {
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
		// §5.1.6.2: a transmit chain is the header then the frame, all
		// device-readable.
		if c.WriteLen != 0 || c.ReadLen < HeaderLen {
			n.fail(rs, fmt.Errorf("%w: transmit chain head %d has %d readable and %d writable bytes, want at least %d and 0",
				errMalformed, c.Head, c.ReadLen, c.WriteLen, HeaderLen))
			return
		}
		bufs, err = appendGuestBuffers(bufs[:0], q, c, false)
		if err != nil {
			n.fail(rs, err)
			return
		}
		v := bufs
		if len(v) > iovMax {
			if gather == nil {
				gather = make([]byte, HeaderLen+maxFrameLen)
			}
			if c.ReadLen > uint64(len(gather)) {
				n.stats.TxDropped.Add(1)
				v = nil
			} else {
				v = iovec{gather[:v.copyOut(gather)]}
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
	v   iovec
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
func (n *Net) writeFrame(rs *runState, p *pair, w *frameWriter, v iovec, size uint64) bool {
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
