package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openPTY allocates a pseudo-terminal from the agent's /dev/ptmx and
// returns its master and slave ends.
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening /dev/ptmx: %w", err)
	}
	var sfd, ptyNumber int
	var peerErr error
	err = withFd(master, func(fd int) error {
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			return fmt.Errorf("unlocking pty: %w", err)
		}
		// TIOCGPTPEER opens the slave through the master, immune to
		// a different devpts being mounted at /dev/pts.
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
		if errno == 0 {
			sfd = int(r)
			return nil
		}
		peerErr = errno
		n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
		if err != nil {
			return fmt.Errorf("finding pty slave: %w", err)
		}
		ptyNumber = n
		return nil
	})
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	if peerErr != nil {
		n := ptyNumber
		slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			master.Close()
			return nil, nil, fmt.Errorf("opening pty slave: %w", err)
		}
		return master, slave, nil
	}
	return master, os.NewFile(uintptr(sfd), "pty-slave"), nil
}

// setWinsize sets the terminal size the process sees (and sends it
// SIGWINCH).
func setWinsize(master *os.File, rows, cols uint16) error {
	if rows == 0 && cols == 0 {
		return nil
	}
	ws := &unix.Winsize{Row: rows, Col: cols}
	return withFd(master, func(fd int) error {
		if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, ws); err != nil {
			return fmt.Errorf("setting window size: %w", err)
		}
		return nil
	})
}

// withFd runs fn on f's descriptor without File.Fd, which would switch
// the file to blocking mode and so stop Close from interrupting a Read.
func withFd(f *os.File, fn func(fd int) error) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var fnErr error
	if err := raw.Control(func(fd uintptr) { fnErr = fn(int(fd)) }); err != nil {
		return err
	}
	return fnErr
}
