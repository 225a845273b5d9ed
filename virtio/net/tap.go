package net

import (
	"errors"
	"fmt"
	"os"
	"sync"
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

// QueueBackend is one queue of a multi-queue interface (a queue of a tap
// opened by OpenTapQueues): a device with several queue pairs takes one
// per pair and turns the pairs the driver doesn't use off, so the host
// sends them nothing. Offloads (SetOffload) belong to the whole interface;
// the device sets them through the first queue, which is always on.
type QueueBackend interface {
	Backend
	// SetQueueEnabled attaches (true) or detaches (false) the queue;
	// repeating the current state is not an error.
	SetQueueEnabled(on bool) error
}

// Tap is a tap interface (or one queue of a multi-queue tap) opened with
// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and a 12-byte vnet header
// (virtio_net_hdr_v1). It implements Backend, and QueueBackend for a
// queue of a multi-queue tap.
type Tap struct {
	*os.File
	name  string
	multi bool // opened with IFF_MULTI_QUEUE

	mu       sync.Mutex
	detached bool // TUNSETQUEUE IFF_DETACH_QUEUE in effect
}

// MaxTapQueues is the most queues one tap takes (MAX_TAP_QUEUES,
// drivers/net/tun.c).
const MaxTapQueues = 256

// OpenTap attaches to the tap interface name, creating a non-persistent
// one if it doesn't exist (which needs CAP_NET_ADMIN). The interface lives
// in the calling thread's network namespace.
func OpenTap(name string) (*Tap, error) {
	return openTap(name, false)
}

// OpenTapQueues opens n queues of the multi-queue tap name
// (IFF_MULTI_QUEUE: one TUNSETIFF per queue, each on its own descriptor),
// creating the interface if it doesn't exist. An existing tap must have
// been created multi-queue (`ip tuntap add NAME mode tap multi_queue`).
// Every queue comes back attached; SetQueueEnabled detaches and
// re-attaches them. On error nothing stays open.
func OpenTapQueues(name string, n int) ([]*Tap, error) {
	if n < 1 || n > MaxTapQueues {
		return nil, fmt.Errorf("tap %s: %d queues is outside 1..%d", name, n, MaxTapQueues)
	}
	var taps []*Tap
	for i := range n {
		t, err := openTap(name, true)
		if err != nil {
			for _, o := range taps {
				o.Close()
			}
			return nil, fmt.Errorf("queue %d: %w", i, err)
		}
		// A tap created by the first open keeps the name the kernel gave it.
		name = t.name
		taps = append(taps, t)
	}
	return taps, nil
}

func openTap(name string, multi bool) (*Tap, error) {
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
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if multi {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		// EINVAL: an existing interface that is not a tap, or a queue
		// mode mismatch (the kernel wants IFF_MULTI_QUEUE exactly when
		// the tap was created with it).
		hint := ""
		switch {
		case errors.Is(err, unix.EINVAL) && multi:
			hint = " (not a tap, or not a multi_queue tap, which more than one queue needs)"
		case errors.Is(err, unix.EINVAL):
			hint = " (not a tap, or a multi_queue tap, which needs more than one queue)"
		}
		return nil, fmt.Errorf("tap %s: TUNSETIFF: %w%s", name, err, hint)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HeaderLen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETVNETHDRSZ %d: %w", name, HeaderLen, err)
	}
	t := &Tap{name: ifr.Name(), multi: multi}
	// Nothing is offloaded until a driver accepts it.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: TUNSETOFFLOAD: %w", name, err)
	}
	// A non-blocking descriptor makes the File pollable.
	t.File = os.NewFile(uintptr(fd), tunDevice+":"+t.name)
	return t, nil
}

// SetQueueEnabled implements QueueBackend: TUNSETQUEUE with
// IFF_ATTACH_QUEUE or IFF_DETACH_QUEUE. The kernel steers the
// interface's outgoing frames only to attached queues, and detaching a
// queue drops the frames waiting on it. Setting the current state again
// does nothing (the kernel would refuse it).
func (t *Tap) SetQueueEnabled(on bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.multi {
		if on {
			return nil
		}
		return fmt.Errorf("tap %s: not opened multi-queue", t.name)
	}
	if on == !t.detached {
		return nil
	}
	rc, err := t.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	flags := uint16(unix.IFF_DETACH_QUEUE)
	what := "detach"
	if on {
		flags, what = unix.IFF_ATTACH_QUEUE, "attach"
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			ioErr = err
			return
		}
		ifr.SetUint16(flags)
		ioErr = unix.IoctlIfreq(int(fd), unix.TUNSETQUEUE, ifr)
	}); err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	if ioErr != nil {
		return fmt.Errorf("tap %s: TUNSETQUEUE %s: %w", t.name, what, ioErr)
	}
	t.detached = !on
	return nil
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
