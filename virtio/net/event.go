package net

import (
	"errors"
	"fmt"
	"log/slog"
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
	ctrl  ctrlState       // the control queue goroutine's
	stop  <-chan struct{} // closes when Reset begins (Net.life)
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
//
// Reset stops them: it interrupts the loops (a deadline in the past wakes
// a goroutine parked in the poller), waits until none touches guest
// memory, withdraws the offloads, and returns to one queue pair and the
// configured MAC.
func (n *Net) Activate(a *virtio.Activation) error {
	return n.life.Start(a, "virtio-net "+n.cfg.ID, func(run *virtio.Run) error {
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
		rs := &runState{a: a, log: run.Log(), features: a.Features, mrg: a.Features&FeatureMrgRxbuf != 0, pairs: 1, stop: run.Stopping()}
		rs.ctrl.reset(a.Features)
		if a.Features&FeatureMQ != 0 {
			rs.pairs = len(n.pairs)
		}
		n.mu.Lock()
		err := n.takeUpLocked(rs)
		n.mu.Unlock()
		if err != nil {
			return err
		}
		run.OnStop(func() { n.interrupt(rs) })
		run.Cleanup(func() { n.restore(rs) })
		for _, p := range n.pairs[:rs.pairs] {
			if i := rxQueueOf(p.index); a.Queues[i] != nil {
				run.Go(fmt.Sprintf("receive %d", p.index), func(<-chan struct{}) { n.rxLoop(rs, p, a.Queues[i], a.Kicks[i]) })
			}
			if i := txQueueOf(p.index); a.Queues[i] != nil {
				run.Go(fmt.Sprintf("transmit %d", p.index), func(<-chan struct{}) { n.txLoop(rs, p, a.Queues[i], a.Kicks[i]) })
			}
		}
		if a.Features&FeatureCtrlVQ != 0 {
			run.Serve(2*rs.pairs, func(q *virtio.Queue, c virtio.Chain) (uint32, error) {
				// The ack byte is all the device writes.
				return 1, n.ctrlChain(rs, q.Mem(), c)
			})
		}
		n.mu.Lock()
		n.run = rs
		n.mu.Unlock()
		return nil
	})
}

// Reset implements virtio.Device (see Activate).
func (n *Net) Reset() { n.life.Stop() }

// interrupt wakes the loops waiting in the poller for their backends.
func (n *Net) interrupt(rs *runState) {
	for _, p := range n.pairs {
		if err := p.be.SetDeadline(time.Unix(1, 0)); err != nil {
			rs.log.Warn("virtio-net: interrupting the backend", "id", n.cfg.ID, "queue", p.index, "err", err)
		}
	}
}

// restore returns the device, once its loops stopped, to the state after
// a reset: no offloads, one queue pair, the configured MAC. Suspended, it
// first keeps what the driver had set, to resume with.
func (n *Net) restore(rs *runState) {
	n.mu.Lock()
	if n.suspending {
		n.resume, n.suspending = n.runStateLocked(), false
	}
	n.mu.Unlock()
	if err := n.pairs[0].be.SetOffload(0); err != nil {
		rs.log.Warn("virtio-net: clearing offloads", "id", n.cfg.ID, "err", err)
	}
	if err := n.setPairs(1); err != nil {
		rs.log.Warn("virtio-net: returning to one queue pair", "id", n.cfg.ID, "err", err)
	}
	// The driver reads the MAC again after a reset; nothing compares
	// config_generation across one.
	n.setMAC(n.cfg.MAC, false)
	n.mu.Lock()
	n.run = nil
	n.mu.Unlock()
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
