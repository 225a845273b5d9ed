package blk

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/iouring"
	"github.com/govmm/vmm/virtio"
)

// The io_uring engine (Config.Engine EngineAsync, the default where the
// host allows io_uring): a queue's goroutine parses the reads, writes and
// flushes it pops and hands them to the queue's ring in one io_uring_enter
// per batch, instead of one system call per request on a worker. What the
// kernel finishes at once (page-cache hits) the queue goroutine reaps
// itself right after submitting, so a cached request never leaves that
// goroutine; what goes to the disk is reaped by the queue's completer
// goroutine, which sleeps in io_uring_enter only while such requests are
// in flight. Every other request (GET_ID, discard, write zeroes, requests
// the checks refuse, direct I/O that needs a bounce buffer or a
// read-modify-write) goes to the worker pool as before.
//
// Each request in the ring holds Block.io for reading from submission to
// completion, so Swap waits for it as for a worker's.

// completerWait bounds one sleep of the completer in io_uring_enter.
const completerWait = 100 * time.Millisecond

// nopTag is the user data of the no-op that wakes the completer at Reset;
// slot numbers are below the queue size.
const nopTag = ^uint64(0)

// ringQueue is one virtqueue's ring and the requests in it.
type ringQueue struct {
	b    *Block
	rs   *runState
	q    *virtio.Queue
	ring *iouring.Ring

	// Submitter's side (the queue goroutine, or Reset once it is gone).
	prepared int // operations prepared, or done inline, since the last flush

	// mu guards the completion side: reaping, the slots in flight, the
	// free list and the used entries being gathered.
	mu       sync.Mutex
	slots    []ringSlot
	free     []uint32
	used     []virtio.Used
	inflight atomic.Int32

	nudge chan struct{} // requests went in flight: the completer should wait for them
	quit  chan struct{}
	done  chan struct{} // the completer returned
}

// ringSlot is one request in the ring; its number is the operation's user
// data.
type ringSlot struct {
	job  *job
	r    request
	want uint64 // bytes to transfer
	off  int64
	iov  []unix.Iovec // for a vectored operation: the kernel reads it until completion
}

// ringAvailable reports why io_uring can't be used here, if it can't.
func ringAvailable() error {
	r, err := iouring.New(4)
	if err != nil {
		return err
	}
	return r.Close()
}

// newRingQueue sets up a ring for q with a slot for every request the
// queue can hold at once.
func newRingQueue(b *Block, rs *runState, q *virtio.Queue) (*ringQueue, error) {
	ring, err := iouring.New(uint32(q.Size))
	if err != nil {
		return nil, err
	}
	rq := &ringQueue{b: b, rs: rs, q: q, ring: ring,
		nudge: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	n := min(ring.Entries(), uint32(q.Size))
	rq.slots = make([]ringSlot, n)
	for i := range n {
		rq.free = append(rq.free, n-1-i)
	}
	go rq.completer()
	return rq, nil
}

// start takes j into the ring if it is a read, write or flush the ring can
// do as it is, and reports whether it did; j then belongs to the ring and
// start returns a spare job in exchange (nil if it has none). The caller
// submits later (flush).
func (rq *ringQueue) start(j *job) (taken bool, spare *job) {
	b := rq.b
	n, ok := rq.takeSlot()
	if !ok {
		return false, nil
	}
	s := &rq.slots[n]
	freeSlot := func() (bool, *job) {
		s.r.release()
		rq.mu.Lock()
		rq.free = append(rq.free, n)
		rq.mu.Unlock()
		return false, nil
	}
	if err := parse(j.q.Mem(), &j.chain, &s.r); err != nil {
		return freeSlot() // a worker reports it
	}
	switch s.r.typ {
	case typeIn:
		s.want = s.r.in.Len()
	case typeOut:
		s.want = s.r.out.Len()
	case typeFlush:
		s.want = 0
	default:
		return freeSlot()
	}
	if s.r.typ != typeIn && b.cfg.ReadOnly {
		return freeSlot()
	}
	// Block.io for reading, as a worker holds it; Swap takes it for
	// writing and then blocks further readers, so never wait for it with
	// prepared operations not yet submitted: they would hold it forever.
	if !b.io.TryRLock() {
		rq.flush()
		b.io.RLock()
	}
	if b.file != nil && s.r.typ == typeOut && b.dio == nil {
		// A buffered write: io_uring can't do it without blocking on
		// most file systems (ext4 among them) and hands it to a kernel
		// worker thread, and the file system serializes writers of one
		// file anyway, so a worker pool gains nothing either: write it
		// here (measured: BenchmarkDatapath, 0.5× raw through the
		// ring, 0.5–0.9× through the pool, 0.7–1.0× here).
		status, written := b.execute(&s.r, rq.rs.a.Features, rq.rs.log)
		b.io.RUnlock()
		s.r.status[0] = status
		rq.mu.Lock()
		rq.used = append(rq.used, virtio.Used{Head: j.chain.Head, Written: written})
		rq.mu.Unlock()
		freeSlot()
		rq.prepared++ // published by the next flush, with the batch
		return true, j
	}
	if b.file == nil || !rq.fits(&s.r, s.want) {
		b.io.RUnlock()
		return freeSlot()
	}
	s.off = int64(s.r.sector * SectorSize)
	spare, s.job = s.job, j
	if err := rq.prep(n, s); err != nil {
		// Not expected: a free slot means a free submission entry.
		rq.rs.log.Warn("virtio-blk io_uring prep failed; the request goes to a worker", "id", b.cfg.ID, "err", err)
		s.job = spare
		b.io.RUnlock()
		return freeSlot()
	}
	rq.inflight.Add(1)
	rq.prepared++
	return true, spare
}

// fits reports whether r can go to the ring as it is: within the disk,
// and, for direct I/O, aligned for O_DIRECT with no read-modify-write. The
// caller holds Block.io.
func (rq *ringQueue) fits(r *request, want uint64) bool {
	b := rq.b
	if r.typ == typeFlush {
		return true
	}
	if want == 0 || b.checkRange(r.sector, want) != nil {
		return false
	}
	if b.dio == nil {
		return r.typ == typeIn // start writes buffered writes itself
	}
	v := r.in
	if r.typ == typeOut {
		if b.dio.align.off > SectorSize {
			return false // writes take Block.rmw; see direct.go
		}
		v = r.out
	}
	return b.dio.inPlace(v, int64(r.sector*SectorSize))
}

// prep queues slot n's operation.
func (rq *ringQueue) prep(n uint32, s *ringSlot) error {
	fd := int(rq.b.file.Fd())
	ud := uint64(n)
	switch s.r.typ {
	case typeFlush:
		return rq.ring.PrepFsync(fd, true, ud)
	case typeIn:
		if len(s.r.in) == 1 {
			return rq.ring.PrepRead(fd, s.r.in[0], uint64(s.off), ud)
		}
		s.iov = iouring.AppendIovecs(s.iov[:0], s.r.in)
		return rq.ring.PrepReadv(fd, s.iov, uint64(s.off), ud)
	default:
		if len(s.r.out) == 1 {
			return rq.ring.PrepWrite(fd, s.r.out[0], uint64(s.off), ud)
		}
		s.iov = iouring.AppendIovecs(s.iov[:0], s.r.out)
		return rq.ring.PrepWritev(fd, s.iov, uint64(s.off), ud)
	}
}

// takeSlot returns a free slot, submitting and reaping what is prepared
// to free one if it must. false: every slot is in flight, which only a
// driver that posts more requests than its queue holds (reusing heads)
// brings about; the request then goes to the worker pool.
func (rq *ringQueue) takeSlot() (uint32, bool) {
	for flushed := false; ; flushed = true {
		rq.mu.Lock()
		if k := len(rq.free); k > 0 {
			n := rq.free[k-1]
			rq.free = rq.free[:k-1]
			rq.mu.Unlock()
			return n, true
		}
		rq.mu.Unlock()
		if flushed {
			return 0, false
		}
		rq.flush()
	}
}

// flush submits the prepared operations, reaps those the kernel finished
// at once, and leaves the rest to the completer.
func (rq *ringQueue) flush() {
	if rq.prepared == 0 {
		return
	}
	rq.prepared = 0
	if _, err := rq.ring.Submit(); err != nil {
		// Not expected (the kernel short of memory, say): take back what
		// it did not take and serve those requests with plain system
		// calls, as an interrupted operation is (finish).
		uds := rq.ring.Retract()
		rq.rs.log.Warn("virtio-blk io_uring submit failed; serving the requests directly", "id", rq.b.cfg.ID, "n", len(uds), "err", err)
		rq.mu.Lock()
		for _, ud := range uds {
			rq.completeLocked(ud, -int32(unix.EAGAIN))
		}
		rq.mu.Unlock()
	}
	rq.reap()
	if rq.inflight.Load() > 0 {
		select {
		case rq.nudge <- struct{}{}:
		default:
		}
	}
}

// reap completes every request the kernel has finished, publishing them
// to the driver together.
func (rq *ringQueue) reap() {
	rq.mu.Lock()
	defer rq.mu.Unlock()
	rq.ring.Reap(rq.completeLocked)
	if len(rq.used) > 0 {
		if err := rq.q.PushAll(rq.used); err != nil {
			rq.rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", rq.b.cfg.ID, err))
		}
		rq.used = rq.used[:0]
	}
}

// completeLocked finishes one operation with the kernel's result res.
func (rq *ringQueue) completeLocked(ud uint64, res int32) {
	if ud >= uint64(len(rq.slots)) {
		return // nopTag
	}
	s := &rq.slots[ud]
	b := rq.b
	r := &s.r
	status, written := byte(StatusOK), uint32(1)
	if err := rq.finish(s, res); err != nil {
		b.logIOError(rq.rs.log, r, err)
		status = StatusIOErr
	} else if r.typ == typeIn {
		written += uint32(s.want)
	}
	b.io.RUnlock()
	r.status[0] = status
	rq.used = append(rq.used, virtio.Used{Head: s.job.chain.Head, Written: written})
	r.release()
	rq.free = append(rq.free, uint32(ud))
	rq.inflight.Add(-1)
}

// finish completes what the ring did not: an interrupted operation or a
// short transfer is carried on with plain system calls (both rare; a
// short read past a file truncated under the VM ends in an error).
func (rq *ringQueue) finish(s *ringSlot, res int32) error {
	fd := int(rq.b.file.Fd())
	retry := res == -int32(unix.EINTR) || res == -int32(unix.EAGAIN)
	if res < 0 && !retry {
		what := "read"
		switch s.r.typ {
		case typeOut:
			what = "write"
		case typeFlush:
			return fmt.Errorf("fdatasync: %w", unix.Errno(-res))
		}
		return fmt.Errorf("%s at byte %d: %w", what, s.off, unix.Errno(-res))
	}
	done := uint64(max(res, 0))
	switch s.r.typ {
	case typeFlush:
		if retry {
			return unix.Fdatasync(fd)
		}
		return nil
	case typeIn:
		if done < s.want {
			return preadvFull(fd, s.r.in.Skip(done), s.off+int64(done))
		}
	case typeOut:
		if done < s.want {
			return pwritevFull(fd, s.r.out.Skip(done), s.off+int64(done))
		}
	}
	return nil
}

// completer reaps the requests the kernel did not finish at submission,
// sleeping in io_uring_enter while any is in flight.
func (rq *ringQueue) completer() {
	defer close(rq.done)
	for {
		select {
		case <-rq.nudge:
		case <-rq.quit:
			return
		}
		for rq.inflight.Load() > 0 {
			// The queue goroutine may reap what this waits for: the
			// timeout bounds how long the completer sleeps after
			// that, which matters at Reset (close).
			if err := rq.ring.WaitTimeout(completerWait); err != nil {
				rq.rs.a.Fail(fmt.Errorf("virtio-blk %s: %w", rq.b.cfg.ID, err))
				return
			}
			rq.reap()
		}
	}
}

// close waits for the requests in flight, stops the completer and frees
// the ring. The queue goroutine must be gone.
func (rq *ringQueue) close() {
	rq.flush()
	close(rq.quit)
	// The completer finishes what is in flight, then returns; it may be
	// asleep in io_uring_enter for a completion the queue goroutine
	// reaped, which a no-op ends at once (and its wait's timeout soon).
	if err := rq.ring.PrepNop(nopTag); err == nil {
		if _, err = rq.ring.Submit(); err != nil {
			rq.ring.Retract()
		}
	}
	<-rq.done
	// It also returns if the ring broke: wait here for what is left,
	// since the kernel writes guest memory until each completes.
	for rq.inflight.Load() > 0 {
		if err := rq.ring.Wait(); err != nil {
			rq.rs.log.Error("virtio-blk io_uring: requests still in flight at reset", "id", rq.b.cfg.ID, "n", rq.inflight.Load(), "err", err)
			break
		}
		rq.reap()
	}
	rq.reap()
	rq.ring.Close()
}
