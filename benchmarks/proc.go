package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stopGrace is how long a process gets to exit after SIGTERM before it is
// killed.
const stopGrace = 5 * time.Second

// maxKeep bounds how much console output a run keeps (for markers and for
// the last lines shown when a boot fails).
const maxKeep = 4 << 20

// Proc is one launched VMM process whose output is watched for markers.
type Proc struct {
	Name  string
	cmd   *exec.Cmd
	start time.Time
	stdin io.WriteCloser

	out *watcher // stdout: the guest console
	err *watcher // stderr: the VMM's own messages

	waitErr  error
	timeout  time.Duration
	timedOut bool // the run's timeout ended it
	exited   chan struct{}
	logs     []*os.File
}

// ProcSpec says how to launch one process.
type ProcSpec struct {
	Name     string
	Argv     []string
	Stdin    bool // keep a pipe to its standard input
	Timeout  time.Duration
	Marks    []string // stdout strings to date from the start
	ErrMarks []string // the same for stderr
	// LogBase, if set: stdout and stderr are also written, as they come, to
	// LogBase.console.log and LogBase.stderr.log.
	LogBase string
}

// Launch starts spec. The start time is taken right before fork/exec, and
// VMM_LAUNCH_NS (CLOCK_MONOTONIC) is set for vmm's startup probe. The
// process is killed by PID when the timeout passes.
func Launch(ctx context.Context, spec ProcSpec) (*Proc, error) {
	if spec.Timeout <= 0 {
		return nil, fmt.Errorf("launch %s: every run needs a timeout", spec.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	cmd := exec.CommandContext(ctx, spec.Argv[0], spec.Argv[1:]...)
	// SIGTERM first so both VMMs shut down cleanly, SIGKILL after stopGrace.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	p := &Proc{Name: spec.Name, cmd: cmd, timeout: spec.Timeout, exited: make(chan struct{})}
	p.out = newWatcher()
	p.err = newWatcher()
	cmd.Stdout, cmd.Stderr = p.out, p.err
	if spec.LogBase != "" {
		var logs []*os.File
		for _, l := range []struct {
			w      *watcher
			suffix string
		}{{p.out, ".console.log"}, {p.err, ".stderr.log"}} {
			f, err := os.Create(spec.LogBase + l.suffix)
			if err != nil {
				cancel()
				return nil, fmt.Errorf("launch %s: log: %w", spec.Name, err)
			}
			l.w.tee = f
			logs = append(logs, f)
		}
		p.logs = logs
	}
	for _, s := range spec.Marks {
		p.out.mark(s)
	}
	for _, s := range spec.ErrMarks {
		p.err.mark(s)
	}
	if spec.Stdin {
		w, err := cmd.StdinPipe()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("launch %s: %w", spec.Name, err)
		}
		p.stdin = w
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		cancel()
		return nil, fmt.Errorf("launch %s: clock: %w", spec.Name, err)
	}
	cmd.Env = append(os.Environ(), "VMM_LAUNCH_NS="+strconv.FormatInt(ts.Nano(), 10))
	p.start = time.Now()
	p.out.start, p.err.start = p.start, p.start
	if err := cmd.Start(); err != nil {
		cancel()
		for _, f := range p.logs {
			f.Close()
		}
		return nil, fmt.Errorf("launch %s: %w", spec.Name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		p.timedOut = errors.Is(ctx.Err(), context.DeadlineExceeded)
		for _, f := range p.logs {
			f.Close()
		}
		cancel()
		close(p.exited)
	}()
	return p, nil
}

// PID is the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Start is when the process was launched.
func (p *Proc) Start() time.Time { return p.start }

// WaitOutput waits until s appears on stdout and returns when it did,
// relative to the launch. It fails if the process exits or d passes first.
func (p *Proc) WaitOutput(s string, d time.Duration) (time.Duration, error) {
	return p.waitFor(p.out, "stdout", s, d)
}

// WaitStderr is WaitOutput for standard error.
func (p *Proc) WaitStderr(s string, d time.Duration) (time.Duration, error) {
	return p.waitFor(p.err, "stderr", s, d)
}

func (p *Proc) waitFor(w *watcher, stream, s string, d time.Duration) (time.Duration, error) {
	m := w.mark(s)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-m.done:
		return m.at, nil
	case <-p.exited:
		// The last output may have arrived together with the exit.
		select {
		case <-m.done:
			return m.at, nil
		default:
		}
		return 0, fmt.Errorf("%s exited (%v) before %q on %s", p.Name, p.waitErr, s, stream)
	case <-timer.C:
		return 0, fmt.Errorf("%s: no %q on %s within %v", p.Name, s, stream, d)
	}
}

// FirstOutput is when the first byte arrived on stdout, if any did.
func (p *Proc) FirstOutput() (time.Duration, bool) { return p.out.first() }

// Send writes to the process's standard input.
func (p *Proc) Send(s string) error {
	if p.stdin == nil {
		return fmt.Errorf("%s: launched without a stdin pipe", p.Name)
	}
	_, err := io.WriteString(p.stdin, s)
	return err
}

// Wait waits for the process to end (at most until its timeout) and
// returns its exit status and the wall time since launch.
func (p *Proc) Wait() (code int, wall time.Duration, err error) {
	<-p.exited
	wall = time.Since(p.start)
	if p.timedOut {
		return -1, wall, fmt.Errorf("%s: killed by its %v timeout; console: %s", p.Name, p.timeout, strings.Join(p.Tail(3), " | "))
	}
	st := p.cmd.ProcessState
	if st == nil {
		return -1, wall, fmt.Errorf("%s: %w", p.Name, p.waitErr)
	}
	var ee *exec.ExitError
	if p.waitErr != nil && !errors.As(p.waitErr, &ee) {
		return st.ExitCode(), wall, fmt.Errorf("%s: %w", p.Name, p.waitErr)
	}
	return st.ExitCode(), wall, nil
}

// CPUTime is the user plus system time of the exited process (from wait4's
// rusage: the utime+stime that /proc/PID/stat showed at its end).
func (p *Proc) CPUTime() time.Duration {
	if st := p.cmd.ProcessState; st != nil {
		return st.UserTime() + st.SystemTime()
	}
	return 0
}

// Stop ends a running process by its PID: SIGTERM, then SIGKILL after
// stopGrace. It returns once the process is gone.
func (p *Proc) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// TimedOut reports whether the run's timeout ended it; call after Wait.
func (p *Proc) TimedOut() bool {
	<-p.exited
	return p.timedOut
}

// Tail returns the last n lines of the console output, for failure reports.
func (p *Proc) Tail(n int) []string { return lastLines(p.out.bytes(), n) }

// StderrTail returns the last n lines of standard error.
func (p *Proc) StderrTail(n int) []string { return lastLines(p.err.bytes(), n) }

func lastLines(b []byte, n int) []string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(string(b), "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines
}

// LiveCPUTime sums the CPU time of every thread of a running process from
// /proc/PID/task/*/schedstat (nanoseconds; utime/stime in /proc/PID/stat
// count in 10 ms ticks, too coarse for a startup measured in milliseconds).
func LiveCPUTime(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("pid %d: no task schedstat", pid)
	}
	var total int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", t, err)
		}
		total += ns
	}
	return time.Duration(total), nil
}

// watcher is an io.Writer that records when output arrives and when
// awaited strings first appear.
type watcher struct {
	mu      sync.Mutex
	start   time.Time
	buf     bytes.Buffer
	dropped int
	firstAt time.Duration
	gotAny  bool
	marks   map[string]*outputMark
	tee     io.Writer // a live copy of the stream, or nil
}

// outputMark is one awaited string; done is closed when it has appeared,
// at says when.
type outputMark struct {
	s    string
	from int // offset in the whole stream to search from next
	at   time.Duration
	done chan struct{}
}

func newWatcher() *watcher { return &watcher{marks: map[string]*outputMark{}} }

func (w *watcher) Write(b []byte) (int, error) {
	at := time.Since(w.start)
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.gotAny && len(b) > 0 {
		w.gotAny, w.firstAt = true, at
	}
	w.buf.Write(b)
	if w.tee != nil {
		_, _ = w.tee.Write(b) // a log is a convenience: its errors must not stop the run
	}
	if over := w.buf.Len() - maxKeep; over > 0 {
		w.buf.Next(over)
		w.dropped += over
	}
	for _, m := range w.marks {
		w.check(m, at)
	}
	return len(b), nil
}

// check searches for m.s from where the last search stopped and records at
// when it is there; called with w.mu held.
func (w *watcher) check(m *outputMark, at time.Duration) {
	select {
	case <-m.done:
		return
	default:
	}
	data := w.buf.Bytes()
	from := min(max(m.from-w.dropped, 0), len(data))
	if bytes.Contains(data[from:], []byte(m.s)) {
		m.at = at
		close(m.done)
		return
	}
	m.from = w.dropped + max(len(data)-len(m.s)+1, 0)
}

// mark returns the record for s, registering it if new. Register before the
// output can arrive (Launch does, for ProcSpec.Marks): output that arrived
// before registration is dated at the registration.
func (w *watcher) mark(s string) *outputMark {
	w.mu.Lock()
	defer w.mu.Unlock()
	if m, ok := w.marks[s]; ok {
		return m
	}
	m := &outputMark{s: s, done: make(chan struct{})}
	w.marks[s] = m
	w.check(m, time.Since(w.start))
	return m
}

func (w *watcher) first() (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.firstAt, w.gotAny
}

func (w *watcher) bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]byte(nil), w.buf.Bytes()...)
}

// firstSeen returns the first of ss that has appeared (each must have been
// registered with mark, e.g. through ProcSpec.ErrMarks), or "".
func (w *watcher) firstSeen(ss []string) string {
	for _, s := range ss {
		if isDone(w.mark(s)) {
			return s
		}
	}
	return ""
}

// isDone reports whether an awaited string has appeared.
func isDone(m *outputMark) bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}
