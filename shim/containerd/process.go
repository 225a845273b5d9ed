package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"

	agent "github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
)

// process is a container's init process or one of its execs, as the
// Task API sees it.
type process struct {
	containerID string
	execID      string // "" for the init process
	spec        protocol.Process
	stdinPath   string
	stdoutPath  string
	stderrPath  string

	stdin          *stdinPump
	stdout, stderr io.WriteCloser

	// lifecycle serialises leaving the created state: Start holds it
	// across the agent call, so a Kill, Delete or ResizePty arriving
	// meanwhile sees the process either not started or running, never
	// half-started (a Kill that ended a process Start then ran would
	// record its exit twice).
	lifecycle sync.Mutex

	mu       sync.Mutex
	status   task.Status
	pid      uint32
	ap       *agent.Process
	exitCode uint32
	exitedAt time.Time
	exited   chan struct{} // closed once the exit is recorded
}

func newProcess(containerID, execID string, spec protocol.Process, stdin, stdout, stderr string) *process {
	return &process{
		containerID: containerID, execID: execID, spec: spec,
		stdinPath: stdin, stdoutPath: stdout, stderrPath: stderr,
		status: task.Status_CREATED, exited: make(chan struct{}),
	}
}

// fifoOpenTimeout bounds opening containerd's fifos: containerd opens
// its ends before it calls Create or Exec.
const fifoOpenTimeout = 10 * time.Second

// openIO opens the process's stdio as containerd named it.
func (p *process) openIO(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			p.closeIO()
		}
	}()
	if p.stdinPath != "" {
		if p.stdin, err = openStdin(p.stdinPath); err != nil {
			return err
		}
	}
	if p.stdoutPath != "" {
		if p.stdout, err = openOutput(ctx, p.stdoutPath); err != nil {
			return err
		}
	}
	if p.stderrPath != "" && !p.spec.Terminal {
		if p.stderr, err = openOutput(ctx, p.stderrPath); err != nil {
			return err
		}
	}
	return nil
}

// closeIO closes whatever openIO opened; the readers of stdout and
// stderr see EOF.
func (p *process) closeIO() {
	if p.stdin != nil {
		p.stdin.abort()
	}
	for _, c := range []io.Closer{p.stdout, p.stderr} {
		if c != nil {
			c.Close()
		}
	}
}

// stdio is what the agent client copies to and from.
func (p *process) stdio() agent.Stdio {
	var s agent.Stdio
	if p.stdin != nil {
		s.Stdin = p.stdin.r
	}
	if p.stdout != nil {
		s.Stdout = p.stdout
	}
	if p.stderr != nil {
		s.Stderr = p.stderr
	}
	return s
}

// openOutput opens a stdout or stderr destination: a fifo path (what
// containerd's cio makes) or a file:// URI.
func openOutput(ctx context.Context, path string) (io.WriteCloser, error) {
	u, err := url.Parse(path)
	if err == nil && u.Scheme != "" {
		if u.Scheme != "file" {
			return nil, fmt.Errorf("stdio %q: the vmm runtime takes fifos and file:// URIs, not %s://", path, u.Scheme)
		}
		return os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	}
	ctx, cancel := context.WithTimeout(ctx, fifoOpenTimeout)
	defer cancel()
	w, err := fifo.OpenFifo(ctx, path, unix.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return w, nil
}

// stdinPump copies containerd's stdin fifo into the pipe the agent client
// reads. The fifo is opened read-write, so it never blocks on open and
// never reads EOF when containerd's writer comes and goes (as runc's shim
// behaves: ctr never closes a piped stdin); CloseIO ends it, after what
// was written before it.
type stdinPump struct {
	f       *os.File
	r       *io.PipeReader
	w       *io.PipeWriter
	closing atomic.Bool
	done    chan struct{}
}

// stdinChunk is the pump's read size (a pipe's default capacity).
const stdinChunk = 64 << 10

func openStdin(path string) (*stdinPump, error) {
	if u, err := url.Parse(path); err == nil && u.Scheme != "" {
		return nil, fmt.Errorf("stdin %q: the vmm runtime takes a fifo", path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	r, w := io.Pipe()
	s := &stdinPump{f: f, r: r, w: w, done: make(chan struct{})}
	go s.loop()
	return s, nil
}

func (s *stdinPump) loop() {
	defer close(s.done)
	defer s.f.Close()
	rc, err := s.f.SyscallConn()
	if err != nil {
		s.w.CloseWithError(err)
		return
	}
	buf := make([]byte, stdinChunk)
	for {
		var n int
		var rerr error
		closing := s.closing.Load()
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			if rerr == unix.EAGAIN {
				// Nothing buffered: wait for more, unless CloseIO
				// asked for the end (then this is it).
				return closing
			}
			return true
		})
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			// CloseIO's wake-up: read once more without waiting.
			_ = s.f.SetReadDeadline(time.Time{})
			continue
		case err != nil:
			s.w.CloseWithError(err)
			return
		case rerr == unix.EAGAIN || (rerr == nil && n == 0):
			s.w.Close()
			return
		case rerr != nil:
			s.w.CloseWithError(rerr)
			return
		}
		if _, err := s.w.Write(buf[:n]); err != nil {
			return // the agent side is gone
		}
	}
}

// closeInput ends stdin once the data already in the fifo has gone to the
// process (CloseIO).
func (s *stdinPump) closeInput() {
	s.closing.Store(true)
	// Wake a read waiting for data; it re-reads without waiting.
	_ = s.f.SetReadDeadline(time.Now())
}

// abort stops the pump at once (the process is gone or never started).
func (s *stdinPump) abort() {
	s.closing.Store(true)
	_ = s.f.SetReadDeadline(time.Now())
	s.r.Close()
	<-s.done
}

// setExited records the exit (once) and wakes the waiters.
func (p *process) setExited(code uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == task.Status_STOPPED {
		return false
	}
	p.status, p.exitCode, p.exitedAt = task.Status_STOPPED, code, at
	close(p.exited)
	return true
}

func (p *process) state() (task.Status, uint32, uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.pid, p.exitCode, p.exitedAt
}
