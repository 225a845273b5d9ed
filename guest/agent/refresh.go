package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/govmm/vmm/guest/agent/protocol"
	"golang.org/x/sys/unix"
)

// minRealtime is the earliest wall clock Refresh accepts, 2020-01-01
// 00:00 UTC in nanoseconds: a host whose clock says otherwise has no
// clock worth copying.
const minRealtime = 1577836800 * int64(time.Second)

// kernelOps are the agent's calls that change the whole guest kernel
// rather than one container: the real ones in the guest, recording fakes
// in tests that run the agent on a host (whose clock no test may set).
type kernelOps struct {
	// addEntropy adds buf to the kernel's random pool, crediting it.
	addEntropy func(buf []byte) error
	// setRealtime sets CLOCK_REALTIME.
	setRealtime func(ts unix.Timespec) error
}

// realKernelOps are the calls the agent makes in a guest.
func realKernelOps() kernelOps {
	return kernelOps{
		addEntropy: addEntropy,
		setRealtime: func(ts unix.Timespec) error {
			return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
		},
	}
}

// randPoolInfoHeader is the size of struct rand_pool_info's fixed part
// (include/uapi/linux/random.h): int entropy_count (bits), int buf_size
// (bytes), then the buffer.
const randPoolInfoHeader = 8

// addEntropy feeds buf to the kernel with RNDADDENTROPY on /dev/urandom,
// crediting every bit (it is the host's crypto/rand output), and reseeds
// the generator with it (RNDRESEEDCRNG). It needs CAP_SYS_ADMIN.
func addEntropy(buf []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	info := randPoolInfo(buf)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0])))
	if errno != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	// RNDADDENTROPY only mixes into the input pool; the generator behind
	// /dev/urandom takes it at its next scheduled reseed, up to a minute
	// of guest time away, and until then every clone of one snapshot
	// draws the same bytes. Reseed it now.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// randPoolInfo lays out struct rand_pool_info for buf, every bit
// credited.
func randPoolInfo(buf []byte) []byte {
	info := make([]byte, randPoolInfoHeader+len(buf))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(buf)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(buf)))
	copy(info[randPoolInfoHeader:], buf)
	return info
}

// validateRefresh checks a Refresh request's bounds.
func validateRefresh(req protocol.RefreshRequest) error {
	if n := len(req.Entropy); n < protocol.MinRefreshEntropy || n > protocol.MaxRefreshEntropy {
		return protocol.Errorf(protocol.CodeInvalidArgument, "entropy: %d bytes, want %d to %d", n, protocol.MinRefreshEntropy, protocol.MaxRefreshEntropy)
	}
	if req.RealtimeNanos < minRealtime {
		return protocol.Errorf(protocol.CodeInvalidArgument, "realtime_ns %d is before 2020", req.RealtimeNanos)
	}
	return nil
}

// refresh serves Refresh: entropy first, so that nothing seeded from the
// clock change (or anything after) draws on the snapshot's random state.
func (s *session) refresh(_ context.Context, _ *protocol.Conn, req protocol.RefreshRequest) (any, error) {
	if err := validateRefresh(req); err != nil {
		return nil, err
	}
	if err := s.a.kernel.addEntropy(req.Entropy); err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "adding entropy: %v", err)
	}
	if err := s.a.kernel.setRealtime(unix.NsecToTimespec(req.RealtimeNanos)); err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "setting the clock: %v", err)
	}
	return protocol.Empty{}, nil
}

// syncPoll is how often SyncBlockDevice looks at the device's size.
const syncPoll = 5 * time.Millisecond

// syncBlockDevice serves SyncBlockDevice.
func (s *session) syncBlockDevice(ctx context.Context, _ *protocol.Conn, req protocol.SyncBlockDeviceRequest) (any, error) {
	if clean := filepath.Clean(req.Path); clean != req.Path || !strings.HasPrefix(clean, "/dev/") {
		return nil, protocol.Errorf(protocol.CodeInvalidArgument, "path %q: want a clean path under /dev", req.Path)
	}
	f, err := os.OpenFile(req.Path, os.O_RDONLY, 0)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeNotFound, "%v", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		return nil, protocol.Errorf(protocol.CodeInvalidArgument, "%s is not a block device", req.Path)
	}
	fd := int(f.Fd())
	deadline := time.Now().Add(protocol.MaxSyncBlockDeviceMillis * time.Millisecond)
	for {
		size, err := blockDeviceSize(fd)
		if err != nil {
			return nil, protocol.Errorf(protocol.CodeInternal, "%s: %v", req.Path, err)
		}
		if size == req.SizeBytes {
			break
		}
		if time.Now().After(deadline) {
			return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "%s still has %d bytes after %d ms, want %d", req.Path, size, protocol.MaxSyncBlockDeviceMillis, req.SizeBytes)
		}
		select {
		case <-ctx.Done():
			return nil, protocol.Errorf(protocol.CodeUnavailable, "connection closed")
		case <-time.After(syncPoll):
		}
	}
	if err := unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0); err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "%s: BLKFLSBUF: %v", req.Path, err)
	}
	return protocol.Empty{}, nil
}

// blockDeviceSize is BLKGETSIZE64.
func blockDeviceSize(fd int) (uint64, error) {
	var size uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	if errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", errno)
	}
	return size, nil
}
