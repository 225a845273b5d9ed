package blk

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/govmm/vmm/virtio"
)

// runState is the device while activated: one goroutine per queue turns
// the driver's notifications into jobs, a pool of workers executes them.
type runState struct {
	a     *virtio.Activation
	log   *slog.Logger
	stop  chan struct{}
	jobs  chan job
	loops sync.WaitGroup
	pool  sync.WaitGroup
}

// job is one request popped from a queue.
type job struct {
	q     *virtio.Queue
	chain virtio.Chain
}

// Activate implements virtio.Device.
func (b *Block) Activate(a *virtio.Activation) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.run != nil {
		return fmt.Errorf("virtio-blk %s: already active", b.cfg.ID)
	}
	log := a.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rs := &runState{a: a, log: log, stop: make(chan struct{}), jobs: make(chan job, int(b.cfg.QueueSize))}
	for range b.cfg.Workers {
		rs.pool.Add(1)
		go b.worker(rs)
	}
	for i, q := range a.Queues {
		if q == nil {
			continue
		}
		rs.loops.Add(1)
		go b.queueLoop(rs, q, a.Kicks[i])
	}
	b.run = rs
	return nil
}

// Reset implements virtio.Device: stop taking requests, let the ones in
// flight finish (they write guest memory), then forget the queues.
func (b *Block) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	rs := b.run
	if rs == nil {
		return
	}
	close(rs.stop)
	rs.loops.Wait()
	close(rs.jobs)
	rs.pool.Wait()
	b.run = nil
}

// queueLoop drains q whenever the driver notifies it, until stopped or the
// driver breaks the queue.
func (b *Block) queueLoop(rs *runState, q *virtio.Queue, kick <-chan struct{}) {
	defer rs.loops.Done()
	for {
		// Buffers may already be there (a kick before activation).
		if !b.drain(rs, q) {
			return
		}
		select {
		case <-rs.stop:
			return
		case <-kick:
		}
	}
}

// drain pops every available chain and hands it to the workers, then
// re-arms notifications; false means stop.
func (b *Block) drain(rs *runState, q *virtio.Queue) bool {
	for {
		for {
			c, ok, err := q.Pop()
			if err != nil {
				rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", b.cfg.ID, err))
				return false
			}
			if !ok {
				break
			}
			select {
			case rs.jobs <- job{q, c}:
			case <-rs.stop:
				return false
			}
		}
		more, err := q.Arm()
		if err != nil {
			rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", b.cfg.ID, err))
			return false
		}
		if !more {
			return true
		}
	}
}

// worker executes jobs until the job channel closes.
func (b *Block) worker(rs *runState) {
	defer rs.pool.Done()
	for j := range rs.jobs {
		b.serve(rs, j)
	}
}

// serve executes one request and completes it.
func (b *Block) serve(rs *runState, j job) {
	r, err := parse(j.q.Mem(), j.chain)
	if err != nil {
		rs.a.Fail(fmt.Errorf("virtio-blk %s: queue %d head %d: %w", b.cfg.ID, j.q.Index, j.chain.Head, err))
		return
	}
	b.io.RLock()
	status, written := b.execute(r, rs.a.Features, rs.log)
	b.io.RUnlock()
	r.status[0] = status
	if err := j.q.Push(j.chain.Head, written); err != nil {
		rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", b.cfg.ID, err))
	}
}
