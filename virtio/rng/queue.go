package rng

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/govmm/vmm/virtio"
)

// worker serves the request queue from activation to reset.
type worker struct {
	d    *Device
	q    *virtio.Queue
	kick <-chan struct{}
	fail func(error)
	log  *slog.Logger
	quit chan struct{} // closed by Reset
	done chan struct{} // closed when the worker has stopped

	bufs []virtio.Buffer // reused from chain to chain
}

func newWorker(d *Device, q *virtio.Queue, kick <-chan struct{}, fail func(error), log *slog.Logger) *worker {
	return &worker{d: d, q: q, kick: kick, fail: fail, log: log, quit: make(chan struct{}), done: make(chan struct{})}
}

// loop serves requests until Reset. After a driver error it stops using
// the queue (the transport has marked the device DEVICE_NEEDS_RESET) and
// waits for the reset.
func (w *worker) loop() {
	defer close(w.done)
	for {
		more, err := w.serve(maxWakeBytes)
		if err != nil {
			w.fail(err)
			<-w.quit
			return
		}
		if more {
			select {
			case <-w.quit:
				return
			default:
				continue
			}
		}
		select {
		case <-w.kick:
		case <-w.quit:
			return
		}
	}
}

// serve completes available requests until the queue is empty (more =
// false, the queue armed for the next kick) or budget bytes or a queue's
// worth of requests have been handed out (more = true). An error is the
// driver's: the queue must not be used further.
func (w *worker) serve(budget int) (more bool, err error) {
	for served := 0; served < int(w.q.Size) && budget > 0; {
		c, ok, err := w.q.PopAppend(w.bufs)
		if err != nil {
			return false, err
		}
		if !ok {
			more, err := w.q.Arm()
			if err != nil || !more {
				return false, err
			}
			continue // chains arrived while arming
		}
		w.bufs = c.Buffers
		written, err := w.fill(c, min(budget, MaxRequestBytes))
		if err != nil {
			return false, err
		}
		if err := w.q.Push(c.Head, uint32(written)); err != nil {
			return false, err
		}
		budget -= written
		served++
	}
	return true, nil
}

// fill writes up to limit random bytes into the chain's buffers, in
// order, and returns how many it wrote. A source that fails leaves the
// request empty (the driver asks again) rather than failing the device:
// the fault is the host's, not the driver's.
func (w *worker) fill(c virtio.Chain, limit int) (int, error) {
	// The driver must not post driver-readable buffers (§5.4.6.1); a
	// chain with nothing to write into can't be answered either.
	if c.ReadLen > 0 {
		return 0, fmt.Errorf("queue %d: %w: request %d has %d device-readable bytes (virtio 1.2 §5.4.6.1)", w.q.Index, virtio.ErrBadChain, c.Head, c.ReadLen)
	}
	if c.WriteLen == 0 {
		return 0, fmt.Errorf("queue %d: %w: request %d has no device-writable buffer", w.q.Index, virtio.ErrBadChain, c.Head)
	}
	mem := w.q.Mem()
	written := 0
	for _, b := range c.Buffers {
		if written >= limit {
			break
		}
		n := min(int(b.Len), limit-written)
		dst, err := mem.Slice(b.Addr, uint64(n))
		if err != nil {
			// ParseChain checked the buffer lies in RAM.
			return 0, fmt.Errorf("queue %d: %w: request %d: %v", w.q.Index, virtio.ErrBadChain, c.Head, err)
		}
		if _, err := io.ReadFull(w.d.cfg.Source, dst); err != nil {
			w.d.sourceErrors.Add(1)
			w.log.Warn("virtio-rng: entropy source failed; request completed empty", "err", err)
			written = 0
			break
		}
		written += n
	}
	w.d.requests.Add(1)
	w.d.bytes.Add(uint64(written))
	return written, nil
}
