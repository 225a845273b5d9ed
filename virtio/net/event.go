package net

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/govmm/vmm/virtio"
)

// runState is the device while activated: a receive and a transmit
// goroutine per queue pair in the negotiated layout, and one for the
// control queue.
type runState struct {
	a        *virtio.Activation
	log      *slog.Logger
	features uint64
	mrg      bool // VIRTIO_NET_F_MRG_RXBUF negotiated
	// pairs is the number of queue pairs in the negotiated queue layout:
	// max_virtqueue_pairs with VIRTIO_NET_F_MQ, else 1.
	pairs int
	ctrl  ctrlState // the control queue goroutine's
	stop  chan struct{}
	wg    sync.WaitGroup
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
// guest accepts, then start the receive, transmit and control loops.
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
	if want := len(n.QueueSizes()); len(a.Queues) != want || len(a.Kicks) != want {
		return fmt.Errorf("virtio-net %s: %d queues, want %d", n.cfg.ID, len(a.Queues), want)
	}
	if err := n.CheckFeatures(a.Features); err != nil {
		return err
	}
	// Offloads belong to the interface; the first queue is always on.
	if err := n.pairs[0].be.SetOffload(tunOffloads(a.Features)); err != nil {
		return fmt.Errorf("virtio-net %s: %w", n.cfg.ID, err)
	}
	// Clear the deadline an earlier Reset used to stop the loops.
	for _, p := range n.pairs {
		if err := p.be.SetDeadline(time.Time{}); err != nil {
			return fmt.Errorf("virtio-net %s: backend %d: %w", n.cfg.ID, p.index, err)
		}
	}
	rs := &runState{a: a, log: log, features: a.Features, mrg: a.Features&FeatureMrgRxbuf != 0, pairs: 1, stop: make(chan struct{})}
	rs.ctrl.reset(a.Features)
	if a.Features&FeatureMQ != 0 {
		rs.pairs = len(n.pairs)
	}
	if err := n.takeUpLocked(rs); err != nil {
		return err
	}
	for _, p := range n.pairs[:rs.pairs] {
		if q := a.Queues[rxQueueOf(p.index)]; q != nil {
			rs.wg.Add(1)
			go n.rxLoop(rs, p, q, a.Kicks[rxQueueOf(p.index)])
		}
		if q := a.Queues[txQueueOf(p.index)]; q != nil {
			rs.wg.Add(1)
			go n.txLoop(rs, p, q, a.Kicks[txQueueOf(p.index)])
		}
	}
	if a.Features&FeatureCtrlVQ != 0 {
		if i := 2 * rs.pairs; a.Queues[i] != nil {
			rs.wg.Add(1)
			go n.ctrlLoop(rs, a.Queues[i], a.Kicks[i])
		}
	}
	n.run = rs
	return nil
}

// Reset implements virtio.Device: interrupt the loops (a deadline in the
// past wakes a goroutine parked in the poller), wait until none touches
// guest memory, withdraw the offloads, and return to one queue pair and
// the configured MAC.
func (n *Net) Reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	rs := n.run
	if rs == nil {
		return
	}
	close(rs.stop)
	for _, p := range n.pairs {
		if err := p.be.SetDeadline(time.Unix(1, 0)); err != nil {
			rs.log.Warn("virtio-net: interrupting the backend", "id", n.cfg.ID, "queue", p.index, "err", err)
		}
	}
	rs.wg.Wait()
	if err := n.pairs[0].be.SetOffload(0); err != nil {
		rs.log.Warn("virtio-net: clearing offloads", "id", n.cfg.ID, "err", err)
	}
	if err := n.setPairs(1); err != nil {
		rs.log.Warn("virtio-net: returning to one queue pair", "id", n.cfg.ID, "err", err)
	}
	// The driver reads the MAC again after a reset; nothing compares
	// config_generation across one.
	n.setMAC(n.cfg.MAC, false)
	n.run = nil
}

// setPairs turns queue pairs [0, k) on and the rest off: an off pair's
// tap queue is detached, so the host steers nothing to it (and drops what
// waited there), and its receive goroutine publishes nothing more. Pair 0
// is always on. On error the pairs are in between; the caller decides.
func (n *Net) setPairs(k int) error {
	n.pairsMu.Lock()
	defer n.pairsMu.Unlock()
	var errs []error
	for _, p := range n.pairs[1:] {
		if p.index < k {
			// Attach first: an on pair reads its queue.
			if err := p.qb.SetQueueEnabled(true); err != nil {
				errs = append(errs, err)
				continue
			}
			p.setOn(true)
		} else {
			// Off first: from here on the pair's frames are dropped.
			p.setOn(false)
			if err := p.qb.SetQueueEnabled(false); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// waitOn waits while p is off; false means stop.
func (n *Net) waitOn(rs *runState, p *pair) bool {
	for !p.isOn() {
		select {
		case <-rs.stop:
			return false
		case <-p.wake:
		}
	}
	return true
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
	return appendGuestBuffers(nil, q, c, writable)
}

// appendGuestBuffers is guestBuffers appending to v.
func appendGuestBuffers(v iovec, q *virtio.Queue, c virtio.Chain, writable bool) (iovec, error) {
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
