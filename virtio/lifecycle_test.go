package virtio_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// events records what happened, in order, from any goroutine.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	e.got = append(e.got, s)
	e.mu.Unlock()
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// logRecords is a slog handler keeping every record's message and
// attributes as text.
type logRecords struct {
	mu   sync.Mutex
	recs []string
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecords) WithGroup(string) slog.Handler            { return h }
func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	s := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		s += " " + a.String()
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, s)
	h.mu.Unlock()
	return nil
}

func (h *logRecords) all() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.recs)
}

func activation(log *slog.Logger) *virtio.Activation {
	return &virtio.Activation{Log: log, Fail: func(error) {}}
}

// TestLifecycleStopOrder: Stop closes a stage's stop channel, calls its
// OnStop functions, waits for its workers, then goes on to the next stage,
// and runs the Cleanup functions last, in order; it returns only after all
// of that.
func TestLifecycleStopOrder(t *testing.T) {
	var ev events
	logs := &logRecords{}
	var l virtio.Lifecycle
	var later *virtio.Stage
	err := l.Start(activation(slog.New(logs)), "virtio-test", func(run *virtio.Run) error {
		// A worker blocked where stop can't reach it until OnStop wakes
		// it, like a read from a tap.
		woken := make(chan struct{})
		run.Go("queue 0", func(stop <-chan struct{}) {
			<-stop
			<-woken
			time.Sleep(10 * time.Millisecond)
			ev.add("queue worker returned")
		})
		run.OnStop(func() {
			ev.add("interrupt")
			close(woken)
		})
		later = run.Later()
		for i := range 3 {
			later.Go("pool", func(stop <-chan struct{}) {
				<-stop
				ev.add(fmt.Sprintf("pool worker %d returned", i))
			})
		}
		later.OnStop(func() { ev.add("pool stopping") })
		run.Cleanup(func() { ev.add("cleanup 1") })
		run.Cleanup(func() { ev.add("cleanup 2") })
		if got := ev.list(); len(got) != 0 {
			t.Errorf("before Stop: %q", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Active() {
		t.Fatal("not active after Start")
	}
	l.Stop()
	got := ev.list()
	// The pool's three workers return in any order, after "pool stopping".
	pool := got[3:6]
	slices.Sort(pool)
	want := []string{"interrupt", "queue worker returned", "pool stopping",
		"pool worker 0 returned", "pool worker 1 returned", "pool worker 2 returned",
		"cleanup 1", "cleanup 2"}
	if !slices.Equal(got, want) {
		t.Errorf("Stop did\n%q\nwant\n%q", got, want)
	}
	if l.Active() {
		t.Error("active after Stop")
	}
	if r := logs.all(); len(r) != 0 {
		t.Errorf("a prompt stop logged %q", r)
	}
	// A worker started after its stage stopped could not be waited for.
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Go on a stopped stage did not panic")
			}
		}()
		later.Go("late", func(<-chan struct{}) {})
	}()
}

func TestLifecycleStates(t *testing.T) {
	noWorkers := func(*virtio.Run) error { return nil }
	tests := []struct {
		name string
		run  func(t *testing.T, l *virtio.Lifecycle)
	}{
		{"stop before start", func(t *testing.T, l *virtio.Lifecycle) {
			l.Stop()
			l.Stop()
			if l.Active() {
				t.Error("active")
			}
		}},
		{"start twice", func(t *testing.T, l *virtio.Lifecycle) {
			if err := l.Start(activation(nil), "virtio-test dev0", noWorkers); err != nil {
				t.Fatal(err)
			}
			called := false
			err := l.Start(activation(nil), "virtio-test dev0", func(*virtio.Run) error { called = true; return nil })
			if err == nil || called || !strings.Contains(err.Error(), "virtio-test dev0: already active") {
				t.Errorf("second Start: %v (start called: %v)", err, called)
			}
			l.Stop()
		}},
		{"restart after stop", func(t *testing.T, l *virtio.Lifecycle) {
			for i := range 3 {
				ran := make(chan struct{})
				err := l.Start(activation(nil), "virtio-test", func(run *virtio.Run) error {
					run.Go("w", func(stop <-chan struct{}) { close(ran); <-stop })
					return nil
				})
				if err != nil {
					t.Fatalf("start %d: %v", i, err)
				}
				<-ran
				l.Stop()
			}
		}},
		{"start fails", func(t *testing.T, l *virtio.Lifecycle) {
			var returned atomic.Bool
			var cleaned bool
			boom := errors.New("boom")
			err := l.Start(activation(nil), "virtio-test", func(run *virtio.Run) error {
				run.Go("w", func(stop <-chan struct{}) { <-stop; returned.Store(true) })
				run.Cleanup(func() { cleaned = true })
				return boom
			})
			if !errors.Is(err, boom) {
				t.Errorf("Start = %v, want boom", err)
			}
			if !returned.Load() || !cleaned {
				t.Errorf("after a failed start: worker returned %v, cleanup ran %v", returned.Load(), cleaned)
			}
			if l.Active() {
				t.Error("active after a failed start")
			}
			if err := l.Start(activation(nil), "virtio-test", noWorkers); err != nil {
				t.Errorf("start after a failed one: %v", err)
			}
			l.Stop()
		}},
		{"workers start workers", func(t *testing.T, l *virtio.Lifecycle) {
			// Like vsock's loop starting a connection's pumps: Stop
			// waits for those too.
			var inner atomic.Int32
			err := l.Start(activation(nil), "virtio-test", func(run *virtio.Run) error {
				run.Go("loop", func(stop <-chan struct{}) {
					for range 5 {
						run.Go("pump", func(stop <-chan struct{}) {
							<-stop
							time.Sleep(time.Millisecond)
							inner.Add(1)
						})
					}
					<-stop
				})
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
			l.Stop()
			if n := inner.Load(); n != 5 {
				t.Errorf("%d of 5 pumps returned before Stop did", n)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, new(virtio.Lifecycle)) })
	}
}

// TestLifecycleDeadline: a worker that outlives the deadline is named in a
// warning, and Stop still returns only once it has returned.
func TestLifecycleDeadline(t *testing.T) {
	logs := &logRecords{}
	l := virtio.Lifecycle{StopDeadline: 20 * time.Millisecond}
	var returned atomic.Bool
	err := l.Start(activation(slog.New(logs)), "virtio-test dev0", func(run *virtio.Run) error {
		run.Go("prompt", func(stop <-chan struct{}) { <-stop })
		run.Go("stubborn", func(stop <-chan struct{}) {
			<-stop
			time.Sleep(200 * time.Millisecond)
			returned.Store(true)
		})
		run.Later().Go("pool", func(stop <-chan struct{}) { <-stop })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	l.Stop()
	took := time.Since(start)
	if !returned.Load() || took < 200*time.Millisecond {
		t.Errorf("Stop returned after %v, before the stubborn worker (returned: %v)", took, returned.Load())
	}
	// The warning names the first stage's workers still running (the
	// prompt one too, on a machine slow enough), not the later stage's.
	recs := logs.all()
	if len(recs) != 1 || !strings.HasPrefix(recs[0], "WARN ") || !strings.Contains(recs[0], "virtio-test dev0") ||
		!strings.Contains(recs[0], "stubborn") || strings.Contains(recs[0], "pool") {
		t.Errorf("logged %q, want one warning naming the stubborn worker", recs)
	}
}

// TestServe: a Serve worker hands every chain to its handler and returns
// it with the length the handler gives; a handler error fails the device.
func TestServe(t *testing.T) {
	// The fake driver posts while the device pops, as a guest does.
	d := virtiotest.NewMappedDriver(t, 1<<20, qsize)
	irq := make(chan struct{}, 16)
	q, err := d.Queue(0, func() { irq <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	kicks := make(chan struct{}, 1)
	kick := func() {
		select {
		case kicks <- struct{}{}:
		default:
		}
	}
	failed := make(chan error, 1)
	a := &virtio.Activation{Mem: d.Mem, Queues: []*virtio.Queue{q, nil}, Kicks: []<-chan struct{}{kicks, nil},
		Fail: func(err error) { failed <- err }}
	var l virtio.Lifecycle
	err = l.Start(a, "virtio-test dev0", func(run *virtio.Run) error {
		run.Serve(1, func(*virtio.Queue, virtio.Chain) (uint32, error) {
			t.Error("handler of a queue the driver did not enable called")
			return 0, nil
		})
		run.Serve(0, func(q *virtio.Queue, c virtio.Chain) (uint32, error) {
			var cmd [4]byte
			if _, err := c.CopyOut(q.Mem(), cmd[:], 0); err != nil {
				return 0, err
			}
			if string(cmd[:]) == "fail" {
				return 0, errors.New("bad command")
			}
			n, err := c.CopyIn(q.Mem(), bytes.ToUpper(cmd[:]), 0)
			return uint32(n), err
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	post := func(cmd string) (head uint16, out uint64) {
		in, out := d.Alloc(4, 1), d.Alloc(4, 1)
		d.Write(in, []byte(cmd))
		head = d.Chain(virtiotest.Buf{Addr: in, Len: 4}, virtiotest.Buf{Addr: out, Len: 4, Write: true})
		d.Post(head)
		return head, out
	}
	h1, out1 := post("abcd")
	h2, out2 := post("wxyz")
	kick()
	for _, w := range []struct {
		head uint16
		out  uint64
		want string
	}{{h1, out1, "ABCD"}, {h2, out2, "WXYZ"}} {
		select {
		case <-irq:
		case err := <-failed:
			t.Fatalf("device failed: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatal("no used-buffer notification")
		}
		e, ok := d.PopUsed()
		if !ok || e.ID != uint32(w.head) || e.Len != 4 {
			t.Fatalf("used %+v %v, want head %d length 4", e, ok, w.head)
		}
		if got := string(d.Read(w.out, 4)); got != w.want {
			t.Errorf("wrote %q, want %q", got, w.want)
		}
	}
	post("fail")
	kick()
	select {
	case err := <-failed:
		if !strings.HasPrefix(err.Error(), "virtio-test dev0: ") || !strings.Contains(err.Error(), "bad command") {
			t.Errorf("Fail(%v)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a handler error did not fail the device")
	}
}

// filler is a one-queue device in the shape of virtio-rng: it fills every
// buffer the driver posts (here with 0xaa).
type filler struct{ life virtio.Lifecycle }

func (f *filler) Activate(a *virtio.Activation) error {
	return f.life.Start(a, "filler", func(run *virtio.Run) error {
		run.Serve(0, func(q *virtio.Queue, c virtio.Chain) (uint32, error) {
			n, err := c.CopyIn(q.Mem(), bytes.Repeat([]byte{0xaa}, int(min(c.WriteLen, 64))), 0)
			return uint32(n), err
		})
		return nil
	})
}

func (f *filler) Reset() { f.life.Stop() }

func ExampleLifecycle() {
	d, _ := virtiotest.NewDriver(1<<16, 8)
	irq := make(chan struct{}, 1)
	q, _ := d.Queue(0, func() { irq <- struct{}{} })
	kick := make(chan struct{}, 1)
	// The driver posts a buffer, then the device starts.
	buf := d.Alloc(4, 1)
	d.Post(d.Chain(virtiotest.Buf{Addr: buf, Len: 4, Write: true}))
	dev := &filler{}
	err := dev.Activate(&virtio.Activation{Mem: d.Mem, Queues: []*virtio.Queue{q}, Kicks: []<-chan struct{}{kick},
		Fail: func(err error) { fmt.Println("failed:", err) }})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dev.Reset()
	<-irq
	e, _ := d.PopUsed()
	fmt.Println(e.Len, d.Read(buf, 4))
	// Output: 4 [170 170 170 170]
}
