package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// outputGrace is how long a process's output may keep flowing after it
// exited: a background child that inherited stdout would otherwise keep
// Wait from ever answering.
const outputGrace = 2 * time.Second

// process is one running (or exited) container process.
type process struct {
	execID string
	cmd    *exec.Cmd
	pty    *os.File // master side when the process has a terminal

	stdinMu sync.Mutex
	stdin   *protocol.Stream // nil without stdin
	stdinW  *os.File         // the pipe's write end (nil with a pty)

	outputs []*os.File // read ends the agent copies from
	copies  sync.WaitGroup

	done   chan struct{}
	status protocol.ExitStatus
}

// stdio is what a new process's descriptors 0-2 are and what the agent
// keeps of them.
type stdio struct {
	child   [3]*os.File // given to the child, closed by the agent after start
	proc    *process
	streams []*protocol.Stream
}

// prepareStdio opens the streams and the pipes or terminal for p.
func prepareStdio(conn *protocol.Conn, spec *protocol.Process, execID string) (*stdio, error) {
	s := &stdio{proc: &process{execID: execID, done: make(chan struct{})}}
	ok := false
	defer func() {
		if !ok {
			s.abort()
		}
	}()

	open := func(id uint32) (*protocol.Stream, error) {
		if id == 0 {
			return nil, nil
		}
		st, err := conn.OpenStream(id)
		if err != nil {
			return nil, err
		}
		s.streams = append(s.streams, st)
		return st, nil
	}
	stdinStream, err := open(spec.StdinStream)
	if err != nil {
		return nil, err
	}
	stdoutStream, err := open(spec.StdoutStream)
	if err != nil {
		return nil, err
	}
	stderrStream, err := open(spec.StderrStream)
	if err != nil {
		return nil, err
	}
	s.proc.stdin = stdinStream

	if spec.Terminal {
		master, slave, err := openPTY()
		if err != nil {
			return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
		}
		s.proc.pty = master
		s.child = [3]*os.File{slave, slave, slave}
		if err := setWinsize(master, spec.Rows, spec.Cols); err != nil {
			return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
		}
		s.proc.outputs = []*os.File{master}
		s.proc.startCopy(master, stdoutStream)
		ok = true
		return s, nil
	}

	devNull := func() (*os.File, error) { return os.OpenFile(os.DevNull, os.O_RDWR, 0) }
	if stdinStream != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		s.child[0], s.proc.stdinW = r, w
	} else if s.child[0], err = devNull(); err != nil {
		return nil, err
	}
	for i, st := range []*protocol.Stream{stdoutStream, stderrStream} {
		if st == nil {
			if s.child[i+1], err = devNull(); err != nil {
				return nil, err
			}
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		s.child[i+1] = w
		s.proc.outputs = append(s.proc.outputs, r)
		s.proc.startCopy(r, st)
	}
	ok = true
	return s, nil
}

// started closes the child's ends (it has its own copies) and starts
// feeding stdin.
func (s *stdio) started() {
	s.closeChild()
	p := s.proc
	if p.stdin == nil {
		return
	}
	go func() {
		var dst io.Writer = p.stdinW
		if p.pty != nil {
			dst = p.pty
		}
		_, _ = io.Copy(dst, p.stdin)
		if p.pty != nil {
			// A terminal has no end of file; ^D is what a user types.
			_, _ = p.pty.Write([]byte{4})
		} else {
			p.stdinW.Close()
		}
	}()
}

func (s *stdio) closeChild() {
	seen := map[*os.File]bool{}
	for _, f := range s.child {
		if f != nil && !seen[f] {
			seen[f] = true
			f.Close()
		}
	}
}

// abort undoes prepareStdio when the process could not start.
func (s *stdio) abort() {
	s.closeChild()
	for _, f := range s.proc.outputs {
		f.Close()
	}
	if s.proc.stdinW != nil {
		s.proc.stdinW.Close()
	}
	for _, st := range s.streams {
		st.Close()
	}
}

// startCopy forwards one output of the process to its stream. When the
// stream fails (the client went away) the output is still drained, so the
// process never blocks on a full pipe.
func (p *process) startCopy(src *os.File, dst *protocol.Stream) {
	p.copies.Add(1)
	go func() {
		defer p.copies.Done()
		if dst == nil {
			_, _ = io.Copy(io.Discard, src)
			return
		}
		_, err := io.Copy(dst, src)
		if err != nil && !errors.Is(err, os.ErrClosed) && !isEIO(err) {
			_, _ = io.Copy(io.Discard, src)
		}
		_ = dst.CloseWrite()
	}()
}

// isEIO reports the error a pty master reads once its slave is closed.
func isEIO(err error) bool {
	return errors.Is(err, syscall.EIO)
}

// wait reaps the process, lets its output drain, and publishes its exit
// status. oomKills reports the container's OOM kill count.
func (p *process) wait(oomKillsBefore int, oomKills func() int, onExit func()) {
	err := p.cmd.Wait()
	drained := make(chan struct{})
	go func() {
		p.copies.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(outputGrace):
		for _, f := range p.outputs {
			f.Close()
		}
		<-drained
	}
	for _, f := range p.outputs {
		f.Close()
	}
	p.stdinMu.Lock()
	if p.stdin != nil {
		p.stdin.Close()
	}
	p.stdinMu.Unlock()

	p.status = exitStatus(p.cmd.ProcessState, err)
	if p.status.Signal == int(syscall.SIGKILL) && oomKills() > oomKillsBefore {
		p.status.OOMKilled = true
	}
	if onExit != nil {
		onExit()
	}
	close(p.done)
}

func exitStatus(state *os.ProcessState, err error) protocol.ExitStatus {
	if state == nil {
		return protocol.ExitStatus{Code: 255}
	}
	ws, ok := state.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return protocol.ExitStatus{Code: 128 + int(ws.Signal()), Signal: int(ws.Signal())}
	}
	return protocol.ExitStatus{Code: state.ExitCode()}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "process %s has exited", p.execID)
	}
	// os.Process signals through a pidfd, so a recycled PID is never hit.
	if err := p.cmd.Process.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return protocol.Errorf(protocol.CodeFailedPrecondition, "process %s has exited", p.execID)
		}
		return protocol.Errorf(protocol.CodeInternal, "signal %d: %v", sig, err)
	}
	return nil
}

func (p *process) closeStdin() error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "process %s has no stdin stream", p.execID)
	}
	// Data already received is still delivered before end of file.
	p.stdin.CloseRead()
	return nil
}

func (p *process) resize(rows, cols uint16) error {
	if p.pty == nil {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "process %s has no terminal", p.execID)
	}
	if p.exited() {
		return protocol.Errorf(protocol.CodeFailedPrecondition, "process %s has exited", p.execID)
	}
	if err := setWinsize(p.pty, rows, cols); err != nil {
		return protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	return nil
}
