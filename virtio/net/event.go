package net

import (
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/govmm/vmm/virtio"
)

// runState is the device while activated: one goroutine per direction.
type runState struct {
	a    *virtio.Activation
	log  *slog.Logger
	rc   syscall.RawConn
	mrg  bool // VIRTIO_NET_F_MRG_RXBUF negotiated
	stop chan struct{}
	wg   sync.WaitGroup
}

// stopped reports whether Reset began.
func (rs *runState) stopped() bool {
	select {
	case <-rs.stop:
		return true
	default:
		return false
	}
}

// fail marks the device broken because the driver broke the protocol.
func (n *Net) fail(rs *runState, err error) {
	rs.a.Fail(fmt.Errorf("virtio-net %s: %w", n.cfg.ID, err))
}

// Activate implements virtio.Device: tell the tap which offloads the
// guest accepts, then start the receive and transmit loops.
func (n *Net) Activate(a *virtio.Activation) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.run != nil {
		return fmt.Errorf("virtio-net %s: already active", n.cfg.ID)
	}
	log := a.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(a.Queues) != 2 || len(a.Kicks) != 2 {
		return fmt.Errorf("virtio-net %s: %d queues, want 2", n.cfg.ID, len(a.Queues))
	}
	rc, err := n.backend.SyscallConn()
	if err != nil {
		return fmt.Errorf("virtio-net %s: backend: %w", n.cfg.ID, err)
	}
	if err := n.backend.SetOffload(tunOffloads(a.Features)); err != nil {
		return fmt.Errorf("virtio-net %s: %w", n.cfg.ID, err)
	}
	// Clear the deadline an earlier Reset used to stop the loops.
	if err := n.backend.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("virtio-net %s: backend: %w", n.cfg.ID, err)
	}
	rs := &runState{a: a, log: log, rc: rc, mrg: a.Features&FeatureMrgRxbuf != 0, stop: make(chan struct{})}
	if q := a.Queues[rxQueue]; q != nil {
		rs.wg.Add(1)
		go n.rxLoop(rs, q, a.Kicks[rxQueue])
	}
	if q := a.Queues[txQueue]; q != nil {
		rs.wg.Add(1)
		go n.txLoop(rs, q, a.Kicks[txQueue])
	}
	n.run = rs
	return nil
}

// Reset implements virtio.Device: interrupt the loops (a deadline in the
// past wakes a goroutine parked in the poller), wait until neither touches
// guest memory, and withdraw the offloads.
func (n *Net) Reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	rs := n.run
	if rs == nil {
		return
	}
	close(rs.stop)
	if err := n.backend.SetDeadline(time.Unix(1, 0)); err != nil {
		rs.log.Warn("virtio-net: interrupting the backend", "id", n.cfg.ID, "err", err)
	}
	rs.wg.Wait()
	if err := n.backend.SetOffload(0); err != nil {
		rs.log.Warn("virtio-net: clearing offloads", "id", n.cfg.ID, "err", err)
	}
	n.run = nil
}

// nextChain pops the next chain of q, waiting for the driver to post one
// (re-arming notifications first); ok=false means stop.
func (n *Net) nextChain(rs *runState, q *virtio.Queue, kick <-chan struct{}) (virtio.Chain, bool) {
	for {
		c, ok, err := q.Pop()
		if err != nil {
			n.fail(rs, err)
			return c, false
		}
		if ok {
			return c, true
		}
		more, err := q.Arm()
		if err != nil {
			n.fail(rs, err)
			return c, false
		}
		if more {
			continue
		}
		select {
		case <-rs.stop:
			return c, false
		case <-kick:
		}
	}
}

// guestBuffers maps a chain's readable or writable buffers.
func guestBuffers(q *virtio.Queue, c virtio.Chain, writable bool) (iovec, error) {
	var v iovec
	for _, b := range c.Buffers {
		if b.Write != writable {
			continue
		}
		s, err := q.Mem().Slice(b.Addr, uint64(b.Len))
		if err != nil {
			return nil, fmt.Errorf("queue %d head %d: %w", q.Index, c.Head, err)
		}
		v = append(v, s)
	}
	return v, nil
}

// iovec is a list of guest-memory slices.
type iovec [][]byte

func (v iovec) size() uint64 {
	var n uint64
	for _, b := range v {
		n += uint64(len(b))
	}
	return n
}

// copyIn copies p into v from byte off on and returns how much fitted.
func (v iovec) copyIn(off uint64, p []byte) int {
	done := 0
	for _, b := range v {
		if done == len(p) {
			break
		}
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			continue
		}
		done += copy(b[off:], p[done:])
		off = 0
	}
	return done
}

// copyOut copies v into p and returns how much it copied.
func (v iovec) copyOut(p []byte) int {
	done := 0
	for _, b := range v {
		if done == len(p) {
			break
		}
		done += copy(p[done:], b)
	}
	return done
}
