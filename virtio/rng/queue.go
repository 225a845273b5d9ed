package rng

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/govmm/vmm/virtio"
)

// requests serves the request queue, one chain at a time, on the worker
// virtio.Run.Serve started; iov is reused from chain to chain.
type requests struct {
	d   *Device
	log *slog.Logger
	iov virtio.Iovec
}

// fill writes up to MaxRequestBytes random bytes into the chain's
// buffers, in order, and returns how many it wrote. A source that fails
// leaves the request empty (the driver asks again) rather than failing the
// device: the fault is the host's, not the driver's. An error is the
// driver's: the queue must not be used further.
func (r *requests) fill(q *virtio.Queue, c virtio.Chain) (uint32, error) {
	// The driver must not post driver-readable buffers (§5.4.6.1); a
	// chain with nothing to write into can't be answered either.
	if c.ReadLen > 0 {
		return 0, fmt.Errorf("queue %d: %w: request %d has %d device-readable bytes (virtio 1.2 §5.4.6.1)", q.Index, virtio.ErrBadChain, c.Head, c.ReadLen)
	}
	if c.WriteLen == 0 {
		return 0, fmt.Errorf("queue %d: %w: request %d has no device-writable buffer", q.Index, virtio.ErrBadChain, c.Head)
	}
	iov, err := c.AppendWritable(r.iov[:0], q.Mem(), 0)
	if err != nil {
		// ParseChain checked the buffers lie in RAM.
		return 0, fmt.Errorf("queue %d: %w: request %d: %v", q.Index, virtio.ErrBadChain, c.Head, err)
	}
	r.iov = iov
	written := 0
	for _, b := range iov {
		n := min(len(b), MaxRequestBytes-written)
		if n == 0 {
			break
		}
		if _, err := io.ReadFull(r.d.cfg.Source, b[:n]); err != nil {
			r.d.sourceErrors.Add(1)
			r.log.Warn("virtio-rng: entropy source failed; request completed empty", "err", err)
			written = 0
			break
		}
		written += n
	}
	r.d.requests.Add(1)
	r.d.bytes.Add(uint64(written))
	return uint32(written), nil
}
