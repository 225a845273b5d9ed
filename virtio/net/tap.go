package net

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Tap offload flags for TUNSETOFFLOAD (linux/if_tun.h).
const (
	tunFCsum   = unix.TUN_F_CSUM
	tunFTSO4   = unix.TUN_F_TSO4
	tunFTSO6   = unix.TUN_F_TSO6
	tunFTSOECN = unix.TUN_F_TSO_ECN
)

// tunDevice is the clone device every tap is opened through.
const tunDevice = "/dev/net/tun"

// Backend is the host side of an interface: a packet file descriptor on
// which each read returns, and each write takes, one Ethernet frame
// preceded by a HeaderLen-byte virtio-net header (a tap opened by OpenTap;
// a SOCK_SEQPACKET socket pair in tests). Its file descriptor must be
// non-blocking and registered with Go's poller (SyscallConn), so reads wait
// without holding a thread and SetDeadline can interrupt them.
type Backend interface {
	syscall.Conn
	// SetDeadline bounds pending and future reads and writes; a time in
	// the past interrupts them (how the device stops its goroutines).
	SetDeadline(t time.Time) error
	// SetOffload tells the backend which TUN_F_* offloads the guest
	// accepts on receive.
	SetOffload(flags uint) error
	Close() error
}

// Tap is a tap interface opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and a
// 12-byte vnet header (virtio_net_hdr_v1). It implements Backend.
type Tap struct {
	*os.File
	name string
}

// OpenTap attaches to the tap interface name, creating a non-persistent
// one if it doesn't exist (which needs CAP_NET_ADMIN). The interface lives
// in the calling thread's network namespace.
func OpenTap(name string) (*Tap, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap %q: name must be 1-%d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: open %s: %w", name, tunDevice, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w", name, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HeaderLen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETVNETHDRSZ %d: %w", name, HeaderLen, err)
	}
	t := &Tap{name: ifr.Name()}
	// Nothing is offloaded until a driver accepts it.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETOFFLOAD: %w", name, err)
	}
	// A non-blocking descriptor makes the File pollable.
	t.File = os.NewFile(uintptr(fd), tunDevice+":"+t.name)
	return t, nil
}

// Name returns the interface name.
func (t *Tap) Name() string { return t.name }

// SetOffload implements Backend (TUNSETOFFLOAD).
func (t *Tap) SetOffload(flags uint) error {
	rc, err := t.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, int(flags))
	}); err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	if ioErr != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, ioErr)
	}
	return nil
}
