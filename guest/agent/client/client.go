// Package client is the host side of the guest agent protocol: it runs
// containers in a VM through a connection to vmm-agent, typically a
// virtio-vsock stream reached with DialHybridVsock.
package client

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// Client is a connection to the agent. Its methods are safe for
// concurrent use.
type Client struct {
	conn *protocol.Conn

	mu         sync.Mutex
	nextStream uint32
}

// New performs the Hello handshake over nc and returns a client that owns
// nc (Close closes it).
func New(ctx context.Context, nc net.Conn) (*Client, *protocol.HelloResponse, error) {
	c := &Client{conn: protocol.NewConn(nc, nil)}
	var hello protocol.HelloResponse
	err := c.conn.Call(ctx, protocol.MethodHello, protocol.HelloRequest{Version: protocol.Version, Client: "vmm"}, &hello)
	if err != nil {
		c.conn.Close()
		return nil, nil, fmt.Errorf("agent handshake: %w", err)
	}
	if hello.Version != protocol.Version {
		c.conn.Close()
		return nil, nil, fmt.Errorf("agent handshake: agent answered version %d, want %d", hello.Version, protocol.Version)
	}
	return c, &hello, nil
}

// DialHybridVsock connects to a guest vsock port through a
// Firecracker-style hybrid vsock Unix socket: the VMM accepts the
// connection, reads "CONNECT <port>\n", and answers "OK <host port>\n"
// before the stream starts.
func DialHybridVsock(ctx context.Context, socketPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("dialing vsock socket %s: %w", socketPath, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		nc.SetDeadline(deadline)
	}
	fail := func(err error) (net.Conn, error) {
		nc.Close()
		return nil, fmt.Errorf("vsock CONNECT %d via %s: %w", port, socketPath, err)
	}
	if _, err := fmt.Fprintf(nc, "CONNECT %d\n", port); err != nil {
		return fail(err)
	}
	// Read the reply byte by byte: anything after the newline already
	// belongs to the stream and must not be buffered away.
	line, err := readLine(nc, 64)
	if err != nil {
		return fail(err)
	}
	if !strings.HasPrefix(line, "OK ") {
		return fail(fmt.Errorf("unexpected reply %q", line))
	}
	nc.SetDeadline(time.Time{})
	return nc, nil
}

func readLine(r io.Reader, limit int) (string, error) {
	var b strings.Builder
	buf := make([]byte, 1)
	for b.Len() < limit {
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		if buf[0] == '\n' {
			return b.String(), nil
		}
		b.WriteByte(buf[0])
	}
	return "", fmt.Errorf("reply longer than %d bytes", limit)
}

// Close closes the connection. Containers keep running in the agent.
func (c *Client) Close() error { return c.conn.Close() }

// Done is closed when the connection ends.
func (c *Client) Done() <-chan struct{} { return c.conn.Done() }

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.conn.Call(ctx, protocol.MethodPing, nil, nil)
}

// Version reports the agent's protocol version and build.
func (c *Client) Version(ctx context.Context) (protocol.VersionResponse, error) {
	var v protocol.VersionResponse
	err := c.conn.Call(ctx, protocol.MethodVersion, nil, &v)
	return v, err
}

// Call makes a raw call; it is for tests and for methods this package
// has no wrapper for.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	return c.conn.Call(ctx, method, params, result)
}

// CreateContainer prepares a container (its cgroup and settings).
func (c *Client) CreateContainer(ctx context.Context, req protocol.CreateContainerRequest) (protocol.CreateContainerResponse, error) {
	var resp protocol.CreateContainerResponse
	err := c.conn.Call(ctx, protocol.MethodCreateContainer, req, &resp)
	return resp, err
}

// DestroyContainer kills the container's processes and removes it.
func (c *Client) DestroyContainer(ctx context.Context, id string) error {
	return c.conn.Call(ctx, protocol.MethodDestroyContainer, protocol.DestroyContainerRequest{ID: id}, nil)
}

// Stdio connects a process's standard streams. Nil means /dev/null in
// the container. With a terminal, output arrives on Stdout only.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Process is a process started through the client.
type Process struct {
	c      *Client
	ref    protocol.ProcessRef
	PID    int // in the agent's PID namespace
	copies sync.WaitGroup
}

// StartProcess starts the container's init process.
func (c *Client) StartProcess(ctx context.Context, containerID string, spec protocol.Process, stdio Stdio) (*Process, error) {
	ref := protocol.ProcessRef{ContainerID: containerID, ExecID: protocol.InitExecID}
	return c.start(ctx, ref, spec, stdio, func(spec protocol.Process) (any, string) {
		return protocol.StartProcessRequest{ContainerID: containerID, Process: spec}, protocol.MethodStartProcess
	})
}

// ExecProcess starts another process in a running container.
func (c *Client) ExecProcess(ctx context.Context, containerID, execID string, spec protocol.Process, stdio Stdio) (*Process, error) {
	ref := protocol.ProcessRef{ContainerID: containerID, ExecID: execID}
	return c.start(ctx, ref, spec, stdio, func(spec protocol.Process) (any, string) {
		return protocol.ExecProcessRequest{ContainerID: containerID, ExecID: execID, Process: spec}, protocol.MethodExecProcess
	})
}

func (c *Client) start(ctx context.Context, ref protocol.ProcessRef, spec protocol.Process, stdio Stdio, request func(protocol.Process) (any, string)) (*Process, error) {
	p := &Process{c: c, ref: ref}
	var streams []*protocol.Stream
	cleanup := func() {
		for _, s := range streams {
			s.Close()
		}
	}
	open := func() (*protocol.Stream, error) {
		c.mu.Lock()
		c.nextStream++
		id := c.nextStream
		c.mu.Unlock()
		s, err := c.conn.OpenStream(id)
		if err != nil {
			return nil, err
		}
		streams = append(streams, s)
		return s, nil
	}
	var stdin, stdout, stderr *protocol.Stream
	var err error
	if stdio.Stdin != nil {
		if stdin, err = open(); err != nil {
			cleanup()
			return nil, err
		}
		spec.StdinStream = stdin.ID()
	}
	if stdio.Stdout != nil {
		if stdout, err = open(); err != nil {
			cleanup()
			return nil, err
		}
		spec.StdoutStream = stdout.ID()
	}
	if stdio.Stderr != nil && !spec.Terminal {
		if stderr, err = open(); err != nil {
			cleanup()
			return nil, err
		}
		spec.StderrStream = stderr.ID()
	}

	params, method := request(spec)
	var resp protocol.ProcessResponse
	if err := c.conn.Call(ctx, method, params, &resp); err != nil {
		cleanup()
		return nil, err
	}
	p.PID = resp.PID

	// Output streams were registered before the call, so nothing the
	// process wrote early is lost.
	for _, pair := range []struct {
		s *protocol.Stream
		w io.Writer
	}{{stdout, stdio.Stdout}, {stderr, stdio.Stderr}} {
		if pair.s == nil {
			continue
		}
		p.copies.Add(1)
		go func(s *protocol.Stream, w io.Writer) {
			defer p.copies.Done()
			defer s.Close()
			if _, err := io.Copy(w, s); err != nil {
				// The writer failed: keep reading so the process is
				// not stalled by flow control.
				_, _ = io.Copy(io.Discard, s)
			}
		}(pair.s, pair.w)
	}
	if stdin != nil {
		go func() {
			_, _ = io.Copy(stdin, stdio.Stdin)
			_ = stdin.CloseWrite()
		}()
	}
	return p, nil
}

// Wait waits for the process to exit and for its output to be copied.
func (p *Process) Wait(ctx context.Context) (protocol.ExitStatus, error) {
	var status protocol.ExitStatus
	if err := p.c.conn.Call(ctx, protocol.MethodWait, p.ref, &status); err != nil {
		return status, err
	}
	// The agent closes the output streams before it answers Wait; what
	// is left is our side's copying.
	p.copies.Wait()
	return status, nil
}

// Signal sends sig to the process.
func (p *Process) Signal(ctx context.Context, sig syscall.Signal) error {
	return p.c.conn.Call(ctx, protocol.MethodSignal, protocol.SignalRequest{ProcessRef: p.ref, Signal: int(sig)}, nil)
}

// CloseStdin ends the process's stdin after what was sent so far.
func (p *Process) CloseStdin(ctx context.Context) error {
	return p.c.conn.Call(ctx, protocol.MethodCloseStdin, p.ref, nil)
}

// Resize sets the size of the process's terminal.
func (p *Process) Resize(ctx context.Context, rows, cols uint16) error {
	return p.c.conn.Call(ctx, protocol.MethodResizeTTY, protocol.ResizeTTYRequest{ProcessRef: p.ref, Rows: rows, Cols: cols}, nil)
}

// UpdateContainer applies new limits to a container's cgroup.
func (c *Client) UpdateContainer(ctx context.Context, id string, res protocol.Resources) error {
	return c.conn.Call(ctx, protocol.MethodUpdateContainer, protocol.UpdateContainerRequest{ID: id, Resources: res}, nil)
}

// ContainerStats reads a container's cgroup numbers and processes.
func (c *Client) ContainerStats(ctx context.Context, id string) (protocol.ContainerStats, error) {
	var st protocol.ContainerStats
	err := c.conn.Call(ctx, protocol.MethodContainerStats, protocol.ContainerStatsRequest{ID: id}, &st)
	return st, err
}

// Refresh gives a guest restored from a snapshot fresh entropy for its
// kernel's pool and the wall clock now (protocol.RefreshRequest).
func (c *Client) Refresh(ctx context.Context, entropy []byte, now time.Time) error {
	return c.conn.Call(ctx, protocol.MethodRefresh, protocol.RefreshRequest{Entropy: entropy, RealtimeNanos: now.UnixNano()}, nil)
}

// SyncBlockDevice waits for the guest to see a swapped image's size at
// path and drops what it cached of the old one
// (protocol.SyncBlockDeviceRequest).
func (c *Client) SyncBlockDevice(ctx context.Context, path string, size uint64) error {
	return c.conn.Call(ctx, protocol.MethodSyncBlockDevice, protocol.SyncBlockDeviceRequest{Path: path, SizeBytes: size}, nil)
}
