// Package seccomp builds and installs vmm's process-wide seccomp filter: an
// allow-list of the system calls that the Go runtime, KVM, the virtio
// devices (taps, io_uring, Unix sockets, files) and the API server make,
// with ioctl narrowed to the KVM, TUN, block and terminal requests vmm
// issues, socket to AF_UNIX and prctl to thread naming. Anything else kills
// the whole process (SECCOMP_RET_KILL_PROCESS), as Firecracker's default
// filters do: a compromised device emulator then cannot reach the rest of
// the kernel's attack surface. x86-64 only.
//
// The filter is classic BPF (Documentation/userspace-api/seccomp_filter.rst)
// assembled with golang.org/x/net/bpf, checked in tests by that package's
// interpreter and by child processes that install it.
package seccomp

import (
	"fmt"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/kvm"
)

// Offsets into struct seccomp_data (<linux/seccomp.h>): int nr; __u32 arch;
// __u64 instruction_pointer; __u64 args[6]. x86-64 is little-endian, so the
// low 32 bits of args[i] are at 16+8*i.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// x32ABIBit is __X32_SYSCALL_BIT (arch/x86/include/uapi/asm/unistd.h): x32
// system calls arrive with arch AUDIT_ARCH_X86_64 and this bit in nr, so the
// arch check alone would let a second system call table through.
const x32ABIBit = 0x40000000

// argLow returns the offset of the low 32 bits of argument i.
func argLow(i int) uint32 { return uint32(offArgs + 8*i) }

// ArgRule allows system call Nr only when the low 32 bits of argument Arg
// equal one of Values. The kernel reads ioctl's request, socket's domain
// and prctl's option as 32-bit ints, so the high half cannot change what
// the call does.
type ArgRule struct {
	Nr     uint32
	Arg    int
	Values []uint32
}

// Syscalls returns the system calls allowed with any arguments, each group
// named by who needs it.
func Syscalls() []uint32 {
	return []uint32{
		// Go runtime: memory, threads, scheduling, signals, netpoll and
		// timers (runtime/sys_linux_amd64.s, runtime/os_linux.go,
		// runtime/netpoll_epoll.go).
		unix.SYS_MMAP, unix.SYS_MUNMAP, unix.SYS_MADVISE, unix.SYS_MPROTECT,
		unix.SYS_CLONE, unix.SYS_CLONE3, unix.SYS_FUTEX, unix.SYS_SCHED_YIELD,
		unix.SYS_SCHED_GETAFFINITY, unix.SYS_NANOSLEEP, unix.SYS_GETTID,
		unix.SYS_TGKILL, unix.SYS_GETPID, unix.SYS_EXIT, unix.SYS_EXIT_GROUP,
		unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN,
		unix.SYS_SIGALTSTACK, unix.SYS_RESTART_SYSCALL,
		unix.SYS_EPOLL_CREATE1, unix.SYS_EPOLL_CTL, unix.SYS_EPOLL_PWAIT,
		unix.SYS_EPOLL_WAIT, unix.SYS_EVENTFD2, unix.SYS_PIPE2,
		unix.SYS_CLOCK_GETTIME, unix.SYS_CLOCK_NANOSLEEP, unix.SYS_GETTIMEOFDAY,
		unix.SYS_SETITIMER, unix.SYS_TIMER_CREATE, unix.SYS_TIMER_SETTIME,
		unix.SYS_TIMER_DELETE, unix.SYS_GETRANDOM, unix.SYS_PRLIMIT64,
		unix.SYS_GETRLIMIT, unix.SYS_UNAME, unix.SYS_FCNTL, unix.SYS_GETUID,
		unix.SYS_GETEUID, unix.SYS_GETGID, unix.SYS_GETEGID,
		// glibc, in a binary that links it (cgo, the race detector):
		// pthread_create registers each new thread's rseq area and robust
		// futex list.
		unix.SYS_RSEQ, unix.SYS_SET_ROBUST_LIST,
		// File I/O: images, kernel and initrd loaded over the API, logs and
		// metrics files, /proc reads (os, virtio/blk incl. discard and
		// O_DIRECT probing, api).
		unix.SYS_READ, unix.SYS_WRITE, unix.SYS_PREAD64, unix.SYS_PWRITE64,
		unix.SYS_READV, unix.SYS_WRITEV, unix.SYS_PREADV, unix.SYS_PWRITEV,
		unix.SYS_PREADV2, unix.SYS_PWRITEV2, unix.SYS_OPENAT, unix.SYS_CLOSE,
		unix.SYS_LSEEK, unix.SYS_FSTAT, unix.SYS_NEWFSTATAT, unix.SYS_STATX,
		unix.SYS_FSTATFS, unix.SYS_STATFS, unix.SYS_FSYNC, unix.SYS_FDATASYNC,
		unix.SYS_FALLOCATE, unix.SYS_FADVISE64, unix.SYS_FLOCK,
		unix.SYS_FTRUNCATE, unix.SYS_GETDENTS64, unix.SYS_READLINKAT,
		unix.SYS_UNLINKAT, unix.SYS_RENAMEAT, unix.SYS_MKDIRAT, unix.SYS_DUP3,
		// Unix sockets: the API server and the hybrid vsock's host side
		// (net, api, virtio/vsock, virtio/net socket backends). socket
		// itself is an ArgRule.
		unix.SYS_SOCKETPAIR, unix.SYS_BIND, unix.SYS_LISTEN, unix.SYS_ACCEPT4,
		unix.SYS_CONNECT, unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME,
		unix.SYS_SETSOCKOPT, unix.SYS_GETSOCKOPT, unix.SYS_SENDMSG,
		unix.SYS_RECVMSG, unix.SYS_SENDTO, unix.SYS_RECVFROM, unix.SYS_SHUTDOWN,
		// io_uring: virtio-blk's async engine (iouring).
		unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	}
}

// terminalRequests are the ioctls golang.org/x/term issues on the console:
// IsTerminal and MakeRaw read the termios, MakeRaw and Restore write it.
var terminalRequests = [...]uint32{unix.TCGETS, unix.TCSETS}

// tunRequests are the ioctls virtio/net/tap.go issues: TUNSETIFF and
// TUNSETVNETHDRSZ when a tap opens (over the API, after the filter is in
// place), TUNSETOFFLOAD when the guest negotiates offloads, TUNSETQUEUE
// when it changes the number of queue pairs.
var tunRequests = [...]uint32{unix.TUNSETIFF, unix.TUNSETVNETHDRSZ, unix.TUNSETOFFLOAD, unix.TUNSETQUEUE}

// blockRequests are the ioctls virtio/blk issues: BLKSSZGET, the logical
// sector size of a block device opened with O_DIRECT (direct.go).
var blockRequests = [...]uint32{unix.BLKSSZGET}

// IoctlRequests returns the ioctl requests allowed: KVM's (from package
// kvm), TUN's, the block device's and the terminal's.
func IoctlRequests() []uint32 {
	r := kvm.IoctlRequests()
	r = append(r, tunRequests[:]...)
	r = append(r, blockRequests[:]...)
	return append(r, terminalRequests[:]...)
}

// ArgRules returns the system calls allowed only with certain arguments.
func ArgRules() []ArgRule {
	return []ArgRule{
		{Nr: unix.SYS_IOCTL, Arg: 1, Values: IoctlRequests()},
		// Sockets are Unix sockets only: the API, vsock's hybrid sockets.
		{Nr: unix.SYS_SOCKET, Arg: 0, Values: []uint32{unix.AF_UNIX}},
		// vmm/vcpu.go names vCPU threads.
		{Nr: unix.SYS_PRCTL, Arg: 0, Values: []uint32{unix.PR_SET_NAME, unix.PR_GET_NAME}},
	}
}

// maxSkip is the farthest a conditional jump of classic BPF reaches.
const maxSkip = 255

// Program returns the filter: the arch check, the x32 check, the
// argument rules, then the plain allow-list, each a compare followed by its
// own return so that no jump goes far. Anything that matches nothing is
// killed.
func Program() ([]bpf.Instruction, error) {
	kill := bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS}
	allow := bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}
	p := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AUDIT_ARCH_X86_64, SkipTrue: 1},
		kill,
		bpf.LoadAbsolute{Off: offNr, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: x32ABIBit, SkipFalse: 1},
		kill,
	}
	for _, r := range ArgRules() {
		// jeq nr, else skip the block; block: load arg, (jeq v; ret allow)*,
		// ret kill. A skipped block leaves nr in the accumulator; one that
		// is entered always returns.
		block := 1 + 2*len(r.Values) + 1
		if block > maxSkip {
			return nil, fmt.Errorf("seccomp: rule for system call %d has %d values, too many for one jump", r.Nr, len(r.Values))
		}
		p = append(p,
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: r.Nr, SkipFalse: uint8(block)},
			bpf.LoadAbsolute{Off: argLow(r.Arg), Size: 4})
		for _, v := range r.Values {
			p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipFalse: 1}, allow)
		}
		p = append(p, kill)
	}
	for _, nr := range Syscalls() {
		p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipFalse: 1}, allow)
	}
	return append(p, kill), nil
}

// Assemble returns the filter in the kernel's struct sock_filter form.
func Assemble() ([]unix.SockFilter, error) {
	prog, err := Program()
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("seccomp: assembling the filter: %w", err)
	}
	if len(raw) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("seccomp: the filter has %d instructions, more than the kernel's %d", len(raw), unix.BPF_MAXINSNS)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// Install sets no_new_privs (required to install a filter without
// CAP_SYS_ADMIN, and so that an exec cannot shed it) and installs the
// filter on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC): the Go
// runtime has several threads already, and a thread left without the
// filter would be an escape. It cannot be undone.
func Install() error {
	filter, err := Assemble()
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("seccomp: PR_SET_NO_NEW_PRIVS: %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	if errno != 0 {
		return fmt.Errorf("seccomp: SECCOMP_SET_MODE_FILTER: %w", errno)
	}
	if r != 0 {
		// With TSYNC, a positive return is a thread that could not be
		// synchronized (it has a filter of its own that conflicts).
		return fmt.Errorf("seccomp: thread %d could not take the filter", r)
	}
	return nil
}
