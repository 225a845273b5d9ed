// Package eventfd wraps Linux eventfds, the counters KVM uses to signal
// guest notifications to user space (ioeventfd) and to inject interrupts
// from user space without a vCPU exit (irqfd).
package eventfd

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// EventFD is one non-blocking eventfd. Reads go through the Go runtime's
// poller, so a goroutine blocked in Wait returns when the EventFD is closed.
type EventFD struct {
	f  *os.File
	fd int // kept apart: os.File.Fd would switch the descriptor to blocking mode
}

// New creates an eventfd with a zero counter.
func New() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// FD returns the descriptor to hand to KVM.
func (e *EventFD) FD() int { return e.fd }

// Signal adds one to the counter, waking a reader (or KVM's irqfd).
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	if _, err := e.f.Write(b[:]); err != nil {
		return fmt.Errorf("eventfd: signal: %w", err)
	}
	return nil
}

// Wait blocks until the counter is non-zero, resets it, and returns how many
// signals it collected. It fails once the EventFD is closed.
func (e *EventFD) Wait() (uint64, error) {
	var b [8]byte
	if _, err := e.f.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// Close releases the descriptor and wakes any Wait.
func (e *EventFD) Close() error { return e.f.Close() }
