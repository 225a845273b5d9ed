package virtio

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// DefaultStopDeadline is how long Lifecycle.Stop waits for a run's workers
// before it reports the ones still running.
const DefaultStopDeadline = 2 * time.Second

// Lifecycle is the part of a device that runs between Activate and Reset:
// the goroutines that serve its queues (its workers), and stopping them so
// that Reset returns only once none of them touches guest memory any more
// (Device.Reset). A device keeps one, starts a Run from Activate and stops
// it from Reset:
//
//	func (d *Dev) Activate(a *virtio.Activation) error {
//		return d.life.Start(a, "virtio-rng "+d.id, func(run *virtio.Run) error {
//			run.Serve(0, d.fill) // pop, fill, push, until Reset
//			return nil
//		})
//	}
//
//	func (d *Dev) Reset() { d.life.Stop() }
//
// The zero Lifecycle is stopped and ready to use. Start and Stop may be
// called from any goroutine but not from a worker of the run they stop.
type Lifecycle struct {
	// StopDeadline bounds how long Stop waits silently; past it, Stop
	// logs the workers still running (Go cannot end a goroutine from
	// outside, and Reset must not return while one may write guest
	// memory, so it keeps waiting). DefaultStopDeadline when zero.
	StopDeadline time.Duration

	mu  sync.Mutex
	run *Run // non-nil between Start and Stop
}

// Start begins a run: it calls start, which starts the workers (Run.Go,
// Run.Serve) and registers what stops them. An error from start stops what
// it started and is returned; so is an attempt to start a device that is
// running. device names the device in errors and logs ("virtio-blk
// rootfs").
func (l *Lifecycle) Start(a *Activation, device string, start func(r *Run) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.run != nil {
		return fmt.Errorf("%s: already active", device)
	}
	log := a.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Run{a: a, device: device, log: log}
	r.stages = []*Stage{r.newStage()}
	if err := start(r); err != nil {
		r.stop(l.deadline())
		return err
	}
	l.run = r
	return nil
}

// Stop ends the run, if one is going, and returns once every worker
// returned and every Cleanup function ran: stage by stage, it closes the
// stage's stop channel, calls its OnStop functions and waits for its
// workers.
func (l *Lifecycle) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.run == nil {
		return
	}
	l.run.stop(l.deadline())
	l.run = nil
}

// Active reports whether a run is going.
func (l *Lifecycle) Active() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.run != nil
}

func (l *Lifecycle) deadline() time.Duration {
	if l.StopDeadline > 0 {
		return l.StopDeadline
	}
	return DefaultStopDeadline
}

// Run is one activation of a device: its workers, in stages stopped one
// after the other, and what to do once they are all gone. Most devices use
// only the Run's own stage (Go, OnStop); one whose queue workers hand work
// to other goroutines (virtio-blk's I/O pool) starts those in a later stage
// (Later), so they finish what the queue workers handed them.
type Run struct {
	a        *Activation
	device   string
	log      *slog.Logger
	stages   []*Stage // stopped in order; the Run's own is the first
	cleanups []func()
}

// Log returns the activation's logger, or one that discards.
func (r *Run) Log() *slog.Logger { return r.log }

// Fail marks the device broken (Activation.Fail) with err, prefixed with
// the device's name.
func (r *Run) Fail(err error) { r.a.Fail(fmt.Errorf("%s: %w", r.device, err)) }

// Go starts fn as a worker of the run's first stage; stop closes when Stop
// begins. Go may be called from the start function or from a running
// worker of that stage. name identifies the worker in Stop's report.
func (r *Run) Go(name string, fn func(stop <-chan struct{})) { r.stages[0].Go(name, fn) }

// OnStop registers fn to run when Stop begins, right after the first
// stage's stop channel closed: it wakes workers blocked where that channel
// can't reach them (a read from a host socket, say).
func (r *Run) OnStop(fn func()) { r.stages[0].OnStop(fn) }

// Stopping returns the first stage's stop channel, the one Go's workers
// get.
func (r *Run) Stopping() <-chan struct{} { return r.stages[0].stop }

// Later adds a stage that begins to stop only once every worker of the
// stages before it returned.
func (r *Run) Later() *Stage {
	s := r.newStage()
	r.stages = append(r.stages, s)
	return s
}

// Cleanup registers fn to run once every worker of every stage returned,
// before Stop returns, in the order registered: what the device undoes at
// reset besides stopping its workers.
func (r *Run) Cleanup(fn func()) { r.cleanups = append(r.cleanups, fn) }

// Serve starts a worker for queue i (nothing, if the driver did not enable
// it) that calls handle with every chain the driver makes available, in
// order, and returns it to the driver with the number of bytes handle says
// it wrote. It waits for the driver's notifications in between and ends at
// Stop. An error, from handle or the queue, fails the device and ends the
// worker.
func (r *Run) Serve(i int, handle func(q *Queue, c Chain) (written uint32, err error)) {
	q, kick := r.a.Queues[i], r.a.Kicks[i]
	if q == nil {
		return
	}
	r.Go(fmt.Sprintf("queue %d", i), func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, ok, err := NextChain(q, kick, stop)
			if err != nil {
				r.Fail(err)
				return
			}
			if !ok {
				return
			}
			written, err := handle(q, c)
			if err == nil {
				err = q.Push(c.Head, written)
			}
			if err != nil {
				r.Fail(err)
				return
			}
		}
	})
}

// NextChain pops q's next chain, waiting for the driver to post one
// (re-arming its notifications first, §2.7.10) until kick fires; ok=false
// means stop closed first.
func NextChain(q *Queue, kick, stop <-chan struct{}) (_ Chain, ok bool, _ error) {
	for {
		c, ok, err := q.Pop()
		if err != nil || ok {
			return c, ok, err
		}
		more, err := q.Arm()
		if err != nil {
			return c, false, err
		}
		if more {
			continue
		}
		select {
		case <-stop:
			return c, false, nil
		case <-kick:
		}
	}
}

// stop stops the stages in order, then runs the cleanups; past deadline
// it reports the workers it is still waiting for.
func (r *Run) stop(deadline time.Duration) {
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	warned := false
	for _, s := range r.stages {
		close(s.stop)
		for _, fn := range s.onStop {
			fn()
		}
		idle := s.stopping()
		if !warned {
			select {
			case <-idle:
				continue
			case <-timer.C:
			}
			warned = true
			r.log.Warn("virtio: workers still running at reset; waiting for them",
				"device", r.device, "after", deadline, "workers", s.running())
		}
		<-idle
	}
	for _, fn := range r.cleanups {
		fn()
	}
}

// Stage is a group of a run's workers that stop together.
type Stage struct {
	stop   chan struct{}
	onStop []func()

	mu   sync.Mutex
	live map[string]int // running workers by name
	// idle, once Stop began, closes when the last worker returns; done is
	// set then, and no worker may start any more.
	idle chan struct{}
	done bool
}

func (r *Run) newStage() *Stage {
	return &Stage{stop: make(chan struct{}), live: map[string]int{}}
}

// Go starts fn as a worker of s; stop closes when s begins to stop. Go may
// be called from the run's start function or from a running worker of s.
func (s *Stage) Go(name string, fn func(stop <-chan struct{})) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		// A device bug, like a sync.WaitGroup reused too early: Stop
		// could not have waited for this worker.
		panic("virtio: Stage.Go after the stage stopped")
	}
	s.live[name]++
	s.mu.Unlock()
	go func() {
		defer s.exit(name)
		fn(s.stop)
	}()
}

// OnStop registers fn to run when s begins to stop, right after its stop
// channel closed.
func (s *Stage) OnStop(fn func()) { s.onStop = append(s.onStop, fn) }

// exit accounts for a worker that returned.
func (s *Stage) exit(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live[name]--; s.live[name] == 0 {
		delete(s.live, name)
	}
	if len(s.live) == 0 && s.idle != nil && !s.done {
		s.done = true
		close(s.idle)
	}
}

// stopping returns a channel that closes once no worker of s runs.
func (s *Stage) stopping() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idle = make(chan struct{})
	if len(s.live) == 0 {
		s.done = true
		close(s.idle)
	}
	return s.idle
}

// running lists the workers of s still running, "name" or "name ×n".
func (s *Stage) running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for name, n := range s.live {
		if n > 1 {
			name = fmt.Sprintf("%s ×%d", name, n)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
