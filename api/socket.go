package api

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// socket is the API's listening Unix socket and the file it owns.
type socket struct {
	ln   *net.UnixListener
	path string
	info os.FileInfo // the socket file as created, to remove only our own
}

// maxSunPath is the room for a path in sockaddr_un (108 bytes, NUL included).
const maxSunPath = 107

// listenUnix binds a Unix socket at path with mode 0600. An existing path
// is replaced only when it is a socket nobody is listening on (a previous
// run that died); a live socket or any other file is an error.
//
// So that no other user can connect between bind and chmod, the socket is
// bound inside a fresh 0700 directory next to path, made 0600, and then
// hard-linked into place (link fails rather than replace a file created
// meanwhile). Connections find a socket by its inode, so the link works.
func listenUnix(path string) (*socket, error) {
	if err := clearStale(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".vmm-")
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxSunPath {
		return nil, fmt.Errorf("api socket %s: path too long for a Unix socket", path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*socket, error) {
		ln.Close()
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Link(tmp, path); err != nil {
		return fail(err)
	}
	info, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &socket{ln: ln, path: path, info: info}, nil
}

// clearStale removes path if it is a socket that refuses connections.
func clearStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api socket %s: %w", path, err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("api socket %s: refusing to replace an existing %s", path, describeMode(st.Mode()))
	}
	c, err := net.DialTimeout("unix", path, dialTimeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("api socket %s: another process is serving on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("api socket %s exists and could not be probed: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("api socket %s: removing stale socket: %w", path, err)
	}
	return nil
}

func describeMode(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	}
	return "file of type " + m.Type().String()
}

// remove closes the listener and removes the socket file if it is still
// the one we created.
func (s *socket) remove() error {
	err := s.ln.Close()
	if st, serr := os.Lstat(s.path); serr == nil && os.SameFile(st, s.info) {
		if rerr := os.Remove(s.path); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// dialTimeout bounds the probe of an existing socket.
const dialTimeout = time.Second
