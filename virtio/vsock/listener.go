package vsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Hybrid vsock handshake (Firecracker docs/vsock.md): the host side sends
// one line "CONNECT <port>\n" (keyword case-insensitive) and, once the
// guest accepted, reads "OK <host port>\n" before the raw stream.
const (
	// maxConnectLine bounds the CONNECT line, newline included.
	maxConnectLine = 32
	// handshakeTimeout bounds how long a host client may take to send its
	// CONNECT line.
	handshakeTimeout = 10 * time.Second
	// DefaultConnectTimeout bounds how long the guest may take to answer
	// a host-initiated REQUEST (Firecracker: 2 s).
	DefaultConnectTimeout = 2 * time.Second
	// dialTimeout bounds connecting to a "<uds>_<port>" listener.
	dialTimeout = time.Second
)

// listener accepts host connections on the hybrid Unix socket.
type listener struct {
	path string
	ln   *net.UnixListener
	dev  *Device
	wg   sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	pending map[net.Conn]struct{} // connections still in the handshake
}

// socketMode is the hybrid socket's mode, the API socket's: whoever may
// connect may talk to the guest's vsock services.
const socketMode = 0o600

// listen binds path, replacing a stale socket nobody listens on.
func listen(path string, dev *Device) (*listener, error) {
	ln, err := listenUnix(path)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		if st, serr := os.Lstat(path); serr == nil && st.Mode()&os.ModeSocket != 0 {
			if c, derr := net.DialTimeout("unix", path, 100*time.Millisecond); derr == nil {
				c.Close()
				return nil, fmt.Errorf("listen on %s: another process is serving it", path)
			}
			if rerr := os.Remove(path); rerr == nil {
				ln, err = listenUnix(path)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	l := &listener{path: path, ln: ln, dev: dev, pending: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// listenUnix binds a Unix socket at path with mode socketMode whatever the
// umask. Linux creates the socket file with the socket inode's mode less
// the umask, so setting that mode before bind means the file is never
// wider than socketMode; the chmod after bind gives back what a stricter
// umask took away.
func listenUnix(path string) (*net.UnixListener, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // FileListener holds its own copy
	if err := syscall.Fchmod(fd, socketMode); err != nil {
		return nil, os.NewSyscallError("fchmod", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	fail := func(err error) (*net.UnixListener, error) {
		os.Remove(path)
		return nil, err
	}
	if err := os.Chmod(path, socketMode); err != nil {
		return fail(err)
	}
	if err := syscall.Listen(fd, syscall.SOMAXCONN); err != nil {
		return fail(os.NewSyscallError("listen", err))
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return fail(err)
	}
	return ln.(*net.UnixListener), nil
}

// close stops accepting, aborts handshakes in progress and removes the
// socket file.
func (l *listener) close() error {
	l.mu.Lock()
	l.closed = true
	for c := range l.pending {
		c.Close()
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.wg.Wait()
	if err != nil {
		return fmt.Errorf("close %s: %w", l.path, err)
	}
	return nil
}

func (l *listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.dev.log.Warn("vsock accept", "path", l.path, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.pending[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(c)
	}
}

// handshake reads the CONNECT line and hands the connection to the
// running device; without one (driver not up) the client is refused by a
// close.
func (l *listener) handshake(c net.Conn) {
	defer l.wg.Done()
	port, err := readConnect(c)
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		l.dev.log.Debug("vsock handshake", "err", err)
		c.Close()
		return
	}
	m := l.dev.active()
	if m == nil || !m.hostConnect(c, port) {
		l.dev.log.Debug("vsock CONNECT while the driver is not running", "port", port)
		c.Close()
	}
}

// readConnect reads "CONNECT <port>\n" byte by byte, so nothing after the
// newline is consumed.
func readConnect(c net.Conn) (uint32, error) {
	c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetReadDeadline(time.Time{})
	var line []byte
	var b [1]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			return 0, fmt.Errorf("read CONNECT line: %w", err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
		if len(line) >= maxConnectLine {
			return 0, fmt.Errorf("CONNECT line longer than %d bytes", maxConnectLine)
		}
	}
	return parseConnect(string(line))
}

// parseConnect parses the CONNECT line without its newline.
func parseConnect(s string) (uint32, error) {
	s = strings.TrimSuffix(s, "\r")
	kw, arg, ok := strings.Cut(s, " ")
	if !ok || !strings.EqualFold(kw, "CONNECT") {
		return 0, fmt.Errorf("bad CONNECT line %q", s)
	}
	p, err := strconv.ParseUint(strings.TrimSpace(arg), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port in CONNECT line %q: %w", s, err)
	}
	return uint32(p), nil
}
