package blk

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/govmm/vmm/virtio"
)

// runState is the device while activated: one goroutine per queue turns
// the driver's notifications into jobs, a pool of workers executes them
// (Block.life runs both).
type runState struct {
	a     *virtio.Activation
	log   *slog.Logger
	work  workList
	rings []*ringQueue // per queue, with EngineAsync (nil entries: none)
}

// job is one request popped from a queue. Jobs are recycled: chain's
// buffer list keeps its array from request to request.
type job struct {
	q     *virtio.Queue
	chain virtio.Chain
}

// workList hands jobs from the queue goroutines to the workers in
// batches: a queue goroutine publishes every chain it popped with one lock
// and wakes as few workers as it takes to start them; each worker that
// finds more pending wakes the next (so a deep queue gets every worker,
// and a shallow one doesn't pay for wakeups it can't use). Served jobs come
// back to its free list for the queue goroutines to pop into.
type workList struct {
	mu      sync.Mutex
	more    sync.Cond // a job was published, or the list closed
	pending []*job    // FIFO from next on
	next    int
	free    []*job
	idle    int // workers waiting on more
	waking  int // of those, the ones signalled and not yet running
	closed  bool
}

// publish adds jobs and takes free ones in exchange: it appends the free
// list to spare and returns it.
func (w *workList) publish(jobs []*job, spare []*job) []*job {
	w.mu.Lock()
	w.pending = append(w.pending, jobs...)
	spare = append(spare, w.free...)
	clear(w.free)
	w.free = w.free[:0]
	wake := w.wakeLocked()
	w.mu.Unlock()
	if wake {
		w.more.Signal()
	}
	return spare
}

// wakeLocked reports whether to signal one more worker: jobs are pending
// beyond those the workers being woken will take, and a worker is idle.
func (w *workList) wakeLocked() bool {
	if len(w.pending)-w.next > w.waking && w.idle > w.waking {
		w.waking++
		return true
	}
	return false
}

// take returns done (if not nil) to the free list and returns the next
// job, waiting for one if wait is set; nil means none is pending (!wait),
// or the list closed and is empty.
func (w *workList) take(done *job, wait bool) *job {
	w.mu.Lock()
	if done != nil {
		w.free = append(w.free, done)
	}
	for w.next == len(w.pending) {
		if w.closed || !wait {
			w.mu.Unlock()
			return nil
		}
		w.idle++
		w.more.Wait()
		w.idle--
		if w.waking > 0 {
			w.waking--
		}
	}
	j := w.pending[w.next]
	w.pending[w.next] = nil
	w.next++
	if w.next == len(w.pending) {
		w.pending, w.next = w.pending[:0], 0
	}
	wake := w.wakeLocked()
	w.mu.Unlock()
	if wake {
		w.more.Signal()
	}
	return j
}

// close lets the workers finish the pending jobs and stop.
func (w *workList) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.more.Broadcast()
}

// Activate implements virtio.Device. At Reset the queue goroutines stop
// taking requests first; then the pool, in a later stage, finishes the
// ones in flight (they write guest memory) once the rings have completed
// theirs.
func (b *Block) Activate(a *virtio.Activation) error {
	return b.life.Start(a, "virtio-blk "+b.cfg.ID, func(run *virtio.Run) error {
		rs := &runState{a: a, log: run.Log()}
		rs.work.more.L = &rs.work.mu
		pool := run.Later()
		for range b.cfg.Workers {
			pool.Go("I/O worker", func(<-chan struct{}) { b.worker(rs) })
		}
		rs.rings = make([]*ringQueue, len(a.Queues))
		for i, q := range a.Queues {
			if q == nil || b.cfg.Engine != EngineAsync {
				continue
			}
			rq, err := newRingQueue(b, rs, q)
			if err != nil {
				// Checked at Open; the pool serves this queue.
				rs.log.Warn("virtio-blk: no io_uring for a queue; using the worker pool", "id", b.cfg.ID, "queue", i, "err", err)
				continue
			}
			rs.rings[i] = rq
		}
		pool.OnStop(func() {
			for _, rq := range rs.rings {
				if rq != nil {
					rq.close()
				}
			}
			rs.work.close()
		})
		for i, q := range a.Queues {
			if q == nil {
				continue
			}
			run.Go(fmt.Sprintf("queue %d", i), func(stop <-chan struct{}) {
				b.queueLoop(rs, q, rs.rings[i], a.Kicks[i], stop)
			})
		}
		return nil
	})
}

// Reset implements virtio.Device: stop taking requests, let the ones in
// flight finish, then forget the queues.
func (b *Block) Reset() { b.life.Stop() }

// queueLoop drains q whenever the driver notifies it, until stopped or the
// driver breaks the queue.
func (b *Block) queueLoop(rs *runState, q *virtio.Queue, rq *ringQueue, kick, stop <-chan struct{}) {
	var batch, spare []*job
	for {
		// Buffers may already be there (a kick before activation).
		var ok bool
		if batch, spare, ok = b.drain(rs, q, rq, stop, batch, spare); !ok {
			return
		}
		select {
		case <-stop:
			return
		case <-kick:
		}
	}
}

// drain pops every available chain and hands them to the ring (rq, if
// not nil) or the workers, then re-arms notifications; ok=false means
// stop. batch and spare are the caller's, kept from call to call: popped
// jobs not yet published, and free jobs to pop into.
func (b *Block) drain(rs *runState, q *virtio.Queue, rq *ringQueue, stop <-chan struct{}, batch, spare []*job) (_, _ []*job, ok bool) {
	// flush submits to the ring, publishes batch and takes the free jobs
	// back into spare.
	publish := func() {
		if len(batch) > 0 {
			spare = rs.work.publish(batch, spare)
			clear(batch)
			batch = batch[:0]
		}
	}
	flush := func() {
		if rq != nil {
			rq.flush()
		}
		publish()
	}
	for {
		// One round pops at most a queue's worth, so a driver that
		// keeps posting can't keep a Reset waiting.
		popped := 0
		for popped < int(q.Size) {
			var j *job
			if n := len(spare); n > 0 {
				j, spare[n-1] = spare[n-1], nil
				spare = spare[:n-1]
			} else {
				j = new(job)
			}
			c, ok, err := q.PopAppend(j.chain.Buffers)
			if err != nil {
				// The chains popped before are valid: serve them.
				flush()
				rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", b.cfg.ID, err))
				return batch, spare, false
			}
			if !ok {
				spare = append(spare, j)
				break
			}
			j.q, j.chain = q, c
			popped++
			if rq != nil {
				if taken, back := rq.start(j); taken {
					if back != nil {
						spare = append(spare, back)
					}
					continue
				}
			}
			batch = append(batch, j)
			if len(batch) == 1 {
				// Get a worker going on the first while the rest are
				// popped.
				publish()
			}
		}
		flush()
		select {
		case <-stop:
			return batch, spare, false
		default:
		}
		if popped == int(q.Size) {
			continue
		}
		more, err := q.Arm()
		if err != nil {
			rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", b.cfg.ID, err))
			return batch, spare, false
		}
		if !more {
			return batch, spare, true
		}
	}
}

// ioRun is how many requests in a row a worker serves under one hold of
// Block.io: a Swap waits at most for those, and the lock's shared counter
// is not touched per request.
const ioRun = 16

// worker executes jobs until the work list closes. It holds Block.io for
// reading across a run of up to ioRun jobs that are there without waiting,
// and never while it waits.
func (b *Block) worker(rs *runState) {
	var r request // parsed into again for every job
	var done *job
	held := 0 // jobs served under the current hold of b.io; 0: not held
	for {
		j := rs.work.take(done, false)
		if j == nil {
			if held > 0 {
				b.io.RUnlock()
				held = 0
			}
			if j = rs.work.take(nil, true); j == nil {
				return
			}
		}
		if held == ioRun {
			b.io.RUnlock()
			held = 0
		}
		if held == 0 {
			b.io.RLock()
		}
		held++
		b.serve(rs, j, &r)
		done = j
	}
}

// serve executes one request, parsed into r, and completes it. The caller
// holds b.io for reading.
func (b *Block) serve(rs *runState, j *job, r *request) {
	defer r.release()
	if err := parse(j.q.Mem(), &j.chain, r); err != nil {
		rs.a.Fail(fmt.Errorf("virtio-blk %s: queue %d head %d: %w", b.cfg.ID, j.q.Index, j.chain.Head, err))
		return
	}
	status, written := b.execute(r, rs.a.Features, rs.log)
	r.status[0] = status
	if err := j.q.Push(j.chain.Head, written); err != nil {
		rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", b.cfg.ID, err))
	}
}
