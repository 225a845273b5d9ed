// Package iouring is a minimal io_uring (Linux 5.1+) for the VMM's device
// back ends, without cgo: one submission and one completion queue mapped
// from the kernel, the read, write, vectored read and write, fsync and nop
// operations, and submit and wait through io_uring_enter(2). It is what
// lets a device hand the kernel a whole batch of guest requests in one
// system call, as QEMU's aio=io_uring does.
//
// A Ring has one submitting goroutine at a time (the Prep calls and
// Submit) and one reaping goroutine at a time (Reap); the two may run
// concurrently, and Wait may be called by the reaper while the submitter
// works. Buffers handed to the kernel must stay valid, and unmoved, until
// their completion is reaped: guest memory (an mmap) or Go heap memory
// the caller keeps referenced (the Go heap does not move objects).
package iouring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// System call numbers on x86-64 (arch/x86/entry/syscalls/syscall_64.tbl).
const (
	sysSetup = 425 // io_uring_setup
	sysEnter = 426 // io_uring_enter
)

// mmap offsets of the three areas (include/uapi/linux/io_uring.h).
const (
	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

// Setup and enter flags, features, and operation codes
// (include/uapi/linux/io_uring.h).
const (
	setupClamp = 1 << 4 // IORING_SETUP_CLAMP: clamp entries to the maximum

	featSingleMmap = 1 << 0 // IORING_FEAT_SINGLE_MMAP: SQ and CQ rings share one mapping
	featExtArg     = 1 << 8 // IORING_FEAT_EXT_ARG: io_uring_enter takes a timeout (5.11)

	enterGetEvents = 1 << 0 // IORING_ENTER_GETEVENTS
	enterExtArg    = 1 << 3 // IORING_ENTER_EXT_ARG

	fsyncDatasync = 1 << 0 // IORING_FSYNC_DATASYNC

	opNop    = 0  // IORING_OP_NOP
	opReadv  = 1  // IORING_OP_READV
	opWritev = 2  // IORING_OP_WRITEV
	opFsync  = 3  // IORING_OP_FSYNC
	opRead   = 22 // IORING_OP_READ (5.6)
	opWrite  = 23 // IORING_OP_WRITE (5.6)
)

// params is struct io_uring_params.
type params struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFD         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

// sqringOffsets is struct io_sqring_offsets: where each field of the
// submission ring lies in its mapping.
type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// cqringOffsets is struct io_cqring_offsets.
type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// sqe is struct io_uring_sqe (64 bytes), for the operations used here.
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, fsync_flags, ...
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad         uint64
}

// geteventsArg is struct io_uring_getevents_arg, io_uring_enter's argument
// with IORING_ENTER_EXT_ARG.
type geteventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWait   uint32 // min_wait_usec (6.12); pad before
	ts        uint64 // *struct __kernel_timespec
}

// cqe is struct io_uring_cqe (16 bytes, without IORING_SETUP_CQE32).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

const (
	sqeSize = int(unsafe.Sizeof(sqe{}))
	cqeSize = int(unsafe.Sizeof(cqe{}))
)

// ErrFull is returned by the Prep calls when every submission slot holds
// an operation not yet submitted.
var ErrFull = errors.New("io_uring: submission queue full")

// Ring is one io_uring instance.
type Ring struct {
	fd      int
	entries uint32 // submission queue size

	sqMap, cqMap, sqeMap []byte // cqMap aliases sqMap with SINGLE_MMAP
	sqHead, sqTail       *atomic.Uint32
	sqMask               uint32
	sqes                 []sqe
	cqHead, cqTail       *atomic.Uint32
	cqMask               uint32
	cqes                 []cqe

	tail uint32 // the submitter's tail: prepared up to here, published up to sqTail

	extArg bool // the kernel takes a timeout in io_uring_enter
	// WaitTimeout's argument and timeout, in the Ring so that they are
	// on the heap: the kernel finds the timeout through an integer.
	waitArg geteventsArg
	waitTS  unix.Timespec

	// pins holds each SQE's buffer (or iovec array) as a Go pointer: a
	// buffer the kernel will use must not live on a goroutine stack,
	// which moves, and storing it here makes the compiler put it on the
	// heap, which doesn't. Cleared when the SQE is reused.
	pins []unsafe.Pointer
}

// New sets up a ring with at least entries submission slots (rounded up
// to a power of two by the kernel; its completion queue has twice as
// many). It fails where io_uring is unavailable: kernels before 5.6, or
// io_uring disabled by sysctl (kernel.io_uring_disabled) or by a seccomp
// filter.
func New(entries uint32) (*Ring, error) {
	var p params
	p.flags = setupClamp
	fd, _, errno := unix.Syscall(sysSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup(%d): %w", entries, errno)
	}
	r := &Ring{fd: int(fd), entries: p.sqEntries, extArg: p.features&featExtArg != 0}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// mapRings maps the submission ring, the completion ring and the SQE array
// and checks that every offset the kernel gave lies inside its mapping.
func (r *Ring) mapRings(p *params) error {
	sqLen := int(p.sqOff.array) + int(p.sqEntries)*4
	cqLen := int(p.cqOff.cqes) + int(p.cqEntries)*cqeSize
	single := p.features&featSingleMmap != 0
	if single {
		sqLen = max(sqLen, cqLen)
	}
	var err error
	mmap := func(off int64, n int) ([]byte, error) {
		b, err := unix.Mmap(r.fd, off, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("io_uring: mmap %#x (%d bytes): %w", off, n, err)
		}
		return b, nil
	}
	if r.sqMap, err = mmap(offSQRing, sqLen); err != nil {
		return err
	}
	if single {
		r.cqMap = r.sqMap
	} else if r.cqMap, err = mmap(offCQRing, cqLen); err != nil {
		return err
	}
	if r.sqeMap, err = mmap(offSQEs, int(p.sqEntries)*sqeSize); err != nil {
		return err
	}
	u32 := func(m []byte, off uint32) (*atomic.Uint32, error) {
		if off%4 != 0 || int(off)+4 > len(m) {
			return nil, fmt.Errorf("io_uring: ring offset %d outside its %d-byte mapping", off, len(m))
		}
		return (*atomic.Uint32)(unsafe.Pointer(&m[off])), nil
	}
	fields := []struct {
		dst **atomic.Uint32
		m   []byte
		off uint32
	}{
		{&r.sqHead, r.sqMap, p.sqOff.head}, {&r.sqTail, r.sqMap, p.sqOff.tail},
		{&r.cqHead, r.cqMap, p.cqOff.head}, {&r.cqTail, r.cqMap, p.cqOff.tail},
	}
	for _, f := range fields {
		if *f.dst, err = u32(f.m, f.off); err != nil {
			return err
		}
	}
	sqMask, err := u32(r.sqMap, p.sqOff.ringMask)
	if err != nil {
		return err
	}
	cqMask, err := u32(r.cqMap, p.cqOff.ringMask)
	if err != nil {
		return err
	}
	r.sqMask, r.cqMask = sqMask.Load(), cqMask.Load()
	if r.sqMask != p.sqEntries-1 || r.cqMask != p.cqEntries-1 {
		return fmt.Errorf("io_uring: ring masks %#x/%#x do not match %d/%d entries", r.sqMask, r.cqMask, p.sqEntries, p.cqEntries)
	}
	if p.cqOff.cqes%8 != 0 || int(p.cqOff.cqes)+int(p.cqEntries)*cqeSize > len(r.cqMap) {
		return fmt.Errorf("io_uring: completion array at %d outside its mapping", p.cqOff.cqes)
	}
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.cqMap[p.cqOff.cqes])), p.cqEntries)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMap[0])), p.sqEntries)
	r.pins = make([]unsafe.Pointer, p.sqEntries)
	// The submission ring is an array of indexes into the SQEs; slot i
	// always names SQE i, so it is written once here.
	if p.sqOff.array%4 != 0 || int(p.sqOff.array)+int(p.sqEntries)*4 > len(r.sqMap) {
		return fmt.Errorf("io_uring: submission array at %d outside its mapping", p.sqOff.array)
	}
	array := unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqMap[p.sqOff.array])), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.tail = r.sqTail.Load()
	return nil
}

// Close unmaps the rings and closes the ring descriptor. Operations still
// in flight are cancelled by the kernel; callers reap every completion
// first, since the kernel may still write their buffers until then.
func (r *Ring) Close() error {
	if r.sqeMap != nil {
		_ = unix.Munmap(r.sqeMap)
	}
	if r.cqMap != nil && (r.sqMap == nil || &r.cqMap[0] != &r.sqMap[0]) {
		_ = unix.Munmap(r.cqMap) // a mapping of its own (no SINGLE_MMAP)
	}
	if r.sqMap != nil {
		_ = unix.Munmap(r.sqMap)
	}
	r.sqeMap, r.cqMap, r.sqMap = nil, nil, nil
	r.sqes, r.cqes = nil, nil
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Entries returns the number of submission slots.
func (r *Ring) Entries() uint32 { return r.entries }

// next returns the next free SQE, cleared, or ErrFull.
func (r *Ring) next() (*sqe, error) {
	if r.sqes == nil {
		return nil, errors.New("io_uring: ring closed")
	}
	// The kernel moves sqHead as it consumes entries.
	if r.tail-r.sqHead.Load() >= r.entries {
		return nil, ErrFull
	}
	e := &r.sqes[r.tail&r.sqMask]
	*e = sqe{}
	r.tail++
	return e, nil
}

// prep fills the next SQE with an operation on fd over the memory at addr.
func (r *Ring) prep(op uint8, fd int, addr unsafe.Pointer, n int, off uint64, userData uint64) (*sqe, error) {
	e, err := r.next()
	if err != nil {
		return nil, err
	}
	r.pins[(r.tail-1)&r.sqMask] = addr
	e.opcode, e.fd, e.addr, e.len, e.off, e.userData = op, int32(fd), uint64(uintptr(addr)), uint32(n), off, userData
	return e, nil
}

// bufAddr returns b's first byte (nil for an empty b).
func bufAddr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(unsafe.SliceData(b))
}

// PrepRead queues a pread of len(buf) bytes at off (len(buf) < 4 GiB).
func (r *Ring) PrepRead(fd int, buf []byte, off uint64, userData uint64) error {
	_, err := r.prep(opRead, fd, bufAddr(buf), len(buf), off, userData)
	return err
}

// PrepWrite queues a pwrite of buf at off (len(buf) < 4 GiB).
func (r *Ring) PrepWrite(fd int, buf []byte, off uint64, userData uint64) error {
	_, err := r.prep(opWrite, fd, bufAddr(buf), len(buf), off, userData)
	return err
}

// PrepReadv queues a preadv into iov at off. iov (the array itself, not
// only the buffers) must stay valid until the completion is reaped.
func (r *Ring) PrepReadv(fd int, iov []unix.Iovec, off uint64, userData uint64) error {
	_, err := r.prep(opReadv, fd, iovAddr(iov), len(iov), off, userData)
	return err
}

// PrepWritev queues a pwritev of iov at off; iov must stay valid until
// the completion is reaped.
func (r *Ring) PrepWritev(fd int, iov []unix.Iovec, off uint64, userData uint64) error {
	_, err := r.prep(opWritev, fd, iovAddr(iov), len(iov), off, userData)
	return err
}

func iovAddr(iov []unix.Iovec) unsafe.Pointer {
	if len(iov) == 0 {
		return nil
	}
	return unsafe.Pointer(unsafe.SliceData(iov))
}

// sqeIOLink is IOSQE_IO_LINK: the next operation starts only after this
// one completes in full, and is cancelled (-ECANCELED) if it does not.
const sqeIOLink = 1 << 2

// LinkNext makes the operation prepared next wait for the one prepared
// last, and be cancelled if that one fails or transfers less than asked:
// a chain of writes that must reach a stream in order.
func (r *Ring) LinkNext() {
	if r.sqes != nil && r.tail != r.sqTail.Load() {
		r.sqes[(r.tail-1)&r.sqMask].flags |= sqeIOLink
	}
}

// rwfNoWait is RWF_NOWAIT, for PrepWritevNoWait.
const rwfNoWait = 0x8 // RWF_NOWAIT (include/uapi/linux/fs.h)

// PrepWritevNoWait is PrepWritev with RWF_NOWAIT: where the write would
// block (a full socket buffer), it completes with -EAGAIN instead of
// waiting for room inside the kernel, so the caller keeps control of how
// long it waits. The file must support non-blocking I/O (FMODE_NOWAIT),
// else the write fails with -EOPNOTSUPP.
func (r *Ring) PrepWritevNoWait(fd int, iov []unix.Iovec, off uint64, userData uint64) error {
	e, err := r.prep(opWritev, fd, iovAddr(iov), len(iov), off, userData)
	if err == nil {
		e.opFlags = rwfNoWait
	}
	return err
}

// PrepReadvNoWait is PrepReadv with RWF_NOWAIT: with nothing to read (an
// empty socket or tap), it completes at once with -EAGAIN instead of
// waiting inside the kernel. The file must support non-blocking I/O
// (FMODE_NOWAIT), else the read fails with -EOPNOTSUPP.
func (r *Ring) PrepReadvNoWait(fd int, iov []unix.Iovec, off uint64, userData uint64) error {
	e, err := r.prep(opReadv, fd, iovAddr(iov), len(iov), off, userData)
	if err == nil {
		e.opFlags = rwfNoWait
	}
	return err
}

// PrepFsync queues an fsync of fd, or an fdatasync if datasync is set.
func (r *Ring) PrepFsync(fd int, datasync bool, userData uint64) error {
	e, err := r.prep(opFsync, fd, nil, 0, 0, userData)
	if err == nil && datasync {
		e.opFlags = fsyncDatasync
	}
	return err
}

// PrepNop queues an operation that does nothing but complete: a way to
// wake a goroutine blocked in Wait.
func (r *Ring) PrepNop(userData uint64) error {
	_, err := r.prep(opNop, -1, nil, 0, 0, userData)
	return err
}

// Submit hands every prepared operation to the kernel and returns how
// many it took. Operations the kernel can finish at once (a read from the
// page cache) complete before Submit returns, so their completions can be
// reaped without waiting.
func (r *Ring) Submit() (int, error) {
	r.sqTail.Store(r.tail) // release: the SQEs before the tail
	total := 0
	for {
		pending := r.tail - r.sqHead.Load()
		if pending == 0 {
			return total, nil
		}
		n, _, errno := unix.Syscall6(sysEnter, uintptr(r.fd), uintptr(pending), 0, 0, 0, 0)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		default:
			return total, fmt.Errorf("io_uring_enter: submit %d: %w", pending, errno)
		}
		if n == 0 {
			// Nothing was taken and nothing failed: the completion
			// queue has no room, which callers prevent by keeping no
			// more in flight than it holds.
			return total, fmt.Errorf("io_uring_enter: the kernel took none of %d operations", pending)
		}
		total += int(n)
	}
}

// Retract takes back the operations prepared or submitted that the kernel
// has not consumed (after Submit failed, say), so they will never run, and
// returns their user data in order. Only the submitting goroutine may call
// it, and never while it is inside Submit.
func (r *Ring) Retract() []uint64 {
	if r.sqes == nil {
		return nil
	}
	// Without SQPOLL the kernel consumes entries only inside
	// io_uring_enter with to_submit > 0, which only the submitter calls.
	head := r.sqHead.Load()
	var uds []uint64
	for i := head; i != r.tail; i++ {
		uds = append(uds, r.sqes[i&r.sqMask].userData)
		r.pins[i&r.sqMask] = nil
	}
	r.tail = head
	r.sqTail.Store(head)
	return uds
}

// Wait blocks until at least one completion is ready to be reaped.
func (r *Ring) Wait() error {
	for r.cqTail.Load() == r.cqHead.Load() {
		_, _, errno := unix.Syscall6(sysEnter, uintptr(r.fd), 0, 1, enterGetEvents, 0, 0)
		if errno != 0 && errno != unix.EINTR && errno != unix.EAGAIN && errno != unix.ETIME {
			return fmt.Errorf("io_uring_enter: wait: %w", errno)
		}
	}
	return nil
}

// WaitTimeout is Wait for at most d: it returns with no completion ready
// once d has passed (on kernels before 5.11, which take no timeout, it is
// Wait). A goroutine that waits this way can notice, between waits, that
// what it waits for was reaped elsewhere. Only the reaping goroutine may
// call it.
func (r *Ring) WaitTimeout(d time.Duration) error {
	if !r.extArg {
		return r.Wait()
	}
	if r.cqTail.Load() != r.cqHead.Load() {
		return nil
	}
	r.waitTS = unix.NsecToTimespec(d.Nanoseconds())
	r.waitArg = geteventsArg{ts: uint64(uintptr(unsafe.Pointer(&r.waitTS)))}
	_, _, errno := unix.Syscall6(sysEnter, uintptr(r.fd), 0, 1, enterGetEvents|enterExtArg,
		uintptr(unsafe.Pointer(&r.waitArg)), unsafe.Sizeof(r.waitArg))
	if errno != 0 && errno != unix.EINTR && errno != unix.EAGAIN && errno != unix.ETIME {
		return fmt.Errorf("io_uring_enter: wait: %w", errno)
	}
	return nil
}

// Reap calls fn for every completion ready now, in completion order, and
// returns how many there were. res is the operation's result: a byte
// count, or a negative errno.
func (r *Ring) Reap(fn func(userData uint64, res int32)) int {
	head := r.cqHead.Load()
	tail := r.cqTail.Load() // acquire: the CQEs before the tail
	n := 0
	for ; head != tail; head++ {
		c := r.cqes[head&r.cqMask]
		// Free the slot before fn runs: fn may submit more.
		r.cqHead.Store(head + 1)
		fn(c.userData, c.res)
		n++
	}
	return n
}

// AppendIovecs appends bufs as iovecs to dst, for PrepReadv and
// PrepWritev (dst must then stay valid until the completion is reaped).
func AppendIovecs(dst []unix.Iovec, bufs [][]byte) []unix.Iovec {
	for _, b := range bufs {
		var e unix.Iovec
		if len(b) > 0 {
			e.Base = (*byte)(unsafe.Pointer(unsafe.SliceData(b)))
		}
		e.SetLen(len(b))
		dst = append(dst, e)
	}
	return dst
}

// SubmitAll submits the prepared operations, whose user data number them
// 0 to len(res)-1, and waits for all of them, storing each one's result in
// res at its number. It suits operations that finish at once (non-blocking
// ones), issued as one batch by a caller that has nothing else in flight.
func (r *Ring) SubmitAll(res []int32) error {
	if _, err := r.Submit(); err != nil {
		return err
	}
	got := 0
	reap := func(ud uint64, v int32) {
		if ud < uint64(len(res)) {
			res[ud] = v
			got++
		}
	}
	r.Reap(reap)
	for got < len(res) {
		if err := r.Wait(); err != nil {
			return err
		}
		r.Reap(reap)
	}
	return nil
}
