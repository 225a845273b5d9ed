package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VCPU is a virtual CPU. All methods but SetImmediateExit must be called from
// the OS thread that runs it.
type VCPU struct {
	id  int
	fd  int
	run []byte // the shared struct kvm_run
}

// ID returns the vCPU index (which is also its APIC ID).
func (v *VCPU) ID() int { return v.id }

// Close unmaps kvm_run and closes the vCPU.
func (v *VCPU) Close() error {
	var first error
	if v.run != nil {
		first = unix.Munmap(v.run)
		v.run = nil
	}
	if v.fd >= 0 {
		if err := unix.Close(v.fd); err != nil && first == nil {
			first = err
		}
		v.fd = -1
	}
	return first
}

// ExitReason is kvm_run.exit_reason (KVM_EXIT_*, <linux/kvm.h>).
type ExitReason uint32

// Exit reasons.
const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	ExitIntr          ExitReason = 10
	ExitSetTPR        ExitReason = 11
	ExitTPRAccess     ExitReason = 12
	ExitNMI           ExitReason = 16
	ExitInternalError ExitReason = 17
	ExitSystemEvent   ExitReason = 24
	ExitIOAPICEOI     ExitReason = 26
	ExitX86RDMSR      ExitReason = 29
	ExitX86WRMSR      ExitReason = 30
	ExitX86BusLock    ExitReason = 33
	ExitNotify        ExitReason = 37
	ExitMemoryFault   ExitReason = 39
)

func (r ExitReason) String() string {
	switch r {
	case ExitUnknown:
		return "KVM_EXIT_UNKNOWN"
	case ExitException:
		return "KVM_EXIT_EXCEPTION"
	case ExitIO:
		return "KVM_EXIT_IO"
	case ExitHypercall:
		return "KVM_EXIT_HYPERCALL"
	case ExitDebug:
		return "KVM_EXIT_DEBUG"
	case ExitHLT:
		return "KVM_EXIT_HLT"
	case ExitMMIO:
		return "KVM_EXIT_MMIO"
	case ExitIRQWindowOpen:
		return "KVM_EXIT_IRQ_WINDOW_OPEN"
	case ExitShutdown:
		return "KVM_EXIT_SHUTDOWN"
	case ExitFailEntry:
		return "KVM_EXIT_FAIL_ENTRY"
	case ExitIntr:
		return "KVM_EXIT_INTR"
	case ExitSetTPR:
		return "KVM_EXIT_SET_TPR"
	case ExitTPRAccess:
		return "KVM_EXIT_TPR_ACCESS"
	case ExitNMI:
		return "KVM_EXIT_NMI"
	case ExitInternalError:
		return "KVM_EXIT_INTERNAL_ERROR"
	case ExitSystemEvent:
		return "KVM_EXIT_SYSTEM_EVENT"
	case ExitIOAPICEOI:
		return "KVM_EXIT_IOAPIC_EOI"
	case ExitX86RDMSR:
		return "KVM_EXIT_X86_RDMSR"
	case ExitX86WRMSR:
		return "KVM_EXIT_X86_WRMSR"
	case ExitX86BusLock:
		return "KVM_EXIT_X86_BUS_LOCK"
	case ExitNotify:
		return "KVM_EXIT_NOTIFY"
	case ExitMemoryFault:
		return "KVM_EXIT_MEMORY_FAULT"
	}
	return fmt.Sprintf("KVM_EXIT(%d)", uint32(r))
}

// Offsets in struct kvm_run (<linux/kvm.h>).
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32 // the per-exit-reason union
)

// Run enters the guest until the next exit, as an ordinary blocking system
// call: while the guest runs, the Go runtime may hand the calling
// goroutine's P to another thread. EINTR (a signal or SetImmediateExit) is
// returned as ExitIntr with no error.
func (v *VCPU) Run() (ExitReason, error) {
	_, err := runIoctl(v.fd, ioctlRun, 0)
	return v.exitReason(err)
}

// RunHot enters the guest like Run, but the calling goroutine keeps its P
// (a raw system call the scheduler does not see). It suits a vCPU that
// exits to user space often. A blocking call that lasts longer than the
// runtime's 10 ms syscall threshold has its P retaken by sysmon, and every
// retake, and every later syscall entry that wakes a sleeping sysmon, puts
// sysmon back to polling every 20 µs for a while (runtime/proc.go, sysmon):
// with a guest exiting a hundred times a second, that polling cost more CPU
// than all the VMM's device emulation together (measured during fio on
// kvm-pvm). A hot run is instead preempted like running Go code: once the
// goroutine has held the P for a time slice (10 ms), the runtime's SIGURG
// interrupts KVM_RUN and RunHot returns ExitIntr, so garbage collection and
// other goroutines wait no longer than they would for any running
// goroutine. A caller should use Run after such an ExitIntr, so that an
// idle guest (halted inside KVM) does not hold a P and get woken every
// time slice, and should leave GOMAXPROCS room for its other goroutines.
func (v *VCPU) RunHot() (ExitReason, error) {
	_, _, errno := unix.RawSyscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
	var err error
	if errno != 0 {
		err = errno
	}
	return v.exitReason(err)
}

// exitReason decodes the result of KVM_RUN.
func (v *VCPU) exitReason(err error) (ExitReason, error) {
	if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
		return ExitIntr, nil
	}
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_RUN on vCPU %d: %w", v.id, err)
	}
	return ExitReason(binary.LittleEndian.Uint32(v.run[runExitReason:])), nil
}

// SetImmediateExit makes the next (or current, once kicked by a signal)
// KVM_RUN return at once. Safe from any thread: it is a single byte store
// that KVM reads on entry.
func (v *VCPU) SetImmediateExit(on bool) {
	var b byte
	if on {
		b = 1
	}
	v.run[runImmediateExit] = b
}

// Direction of a port I/O exit.
const (
	IODirIn  = 0
	IODirOut = 1
)

// IO describes a KVM_EXIT_IO: for IODirOut, Data holds what the guest wrote;
// for IODirIn, the VMM fills Data before the next Run. Data aliases kvm_run.
type IO struct {
	Direction uint8
	Size      uint8
	Port      uint16
	Count     uint32
	Data      []byte // Size*Count bytes
}

// IO decodes the current KVM_EXIT_IO.
func (v *VCPU) IO() (IO, error) {
	u := v.run[runUnion:]
	io := IO{Direction: u[0], Size: u[1], Port: binary.LittleEndian.Uint16(u[2:]), Count: binary.LittleEndian.Uint32(u[4:])}
	off := binary.LittleEndian.Uint64(u[8:])
	n := uint64(io.Size) * uint64(io.Count)
	if off > uint64(len(v.run)) || n > uint64(len(v.run))-off {
		return io, fmt.Errorf("kvm: vCPU %d: I/O exit data [%d,+%d) outside kvm_run", v.id, off, n)
	}
	io.Data = v.run[off : off+n]
	return io, nil
}

// MMIO describes a KVM_EXIT_MMIO. For reads the VMM fills Data (which
// aliases kvm_run) before the next Run.
type MMIO struct {
	PhysAddr uint64
	Data     []byte
	IsWrite  bool
}

// MMIO decodes the current KVM_EXIT_MMIO.
func (v *VCPU) MMIO() MMIO {
	u := v.run[runUnion:]
	n := binary.LittleEndian.Uint32(u[16:])
	if n > 8 {
		n = 8
	}
	return MMIO{PhysAddr: binary.LittleEndian.Uint64(u), Data: u[8 : 8+n], IsWrite: u[20] != 0}
}

// InternalError is the payload of KVM_EXIT_INTERNAL_ERROR.
type InternalError struct {
	Suberror uint32
	Data     []uint64
}

// Internal-error suberrors (<linux/kvm.h>).
const (
	InternalErrorEmulation        = 1
	InternalErrorSimulEx          = 2
	InternalErrorDeliveryEv       = 3
	InternalErrorUnexpectedExitRe = 4
)

// InternalError decodes the current KVM_EXIT_INTERNAL_ERROR.
func (v *VCPU) InternalError() InternalError {
	u := v.run[runUnion:]
	ie := InternalError{Suberror: binary.LittleEndian.Uint32(u)}
	n := binary.LittleEndian.Uint32(u[4:])
	if n > 16 {
		n = 16
	}
	for i := uint32(0); i < n; i++ {
		ie.Data = append(ie.Data, binary.LittleEndian.Uint64(u[8+8*i:]))
	}
	return ie
}

// System event types (<linux/kvm.h>).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// SystemEvent returns the type of the current KVM_EXIT_SYSTEM_EVENT.
func (v *VCPU) SystemEvent() uint32 {
	return binary.LittleEndian.Uint32(v.run[runUnion:])
}

// FailEntryReason returns hardware_entry_failure_reason of KVM_EXIT_FAIL_ENTRY.
func (v *VCPU) FailEntryReason() uint64 {
	return binary.LittleEndian.Uint64(v.run[runUnion:])
}

func (v *VCPU) get(req uintptr, p unsafe.Pointer, what string) error {
	if _, err := ioctl(v.fd, req, uintptr(p)); err != nil {
		return fmt.Errorf("kvm: %s on vCPU %d: %w", what, v.id, err)
	}
	return nil
}

// Regs returns the general-purpose registers.
func (v *VCPU) Regs() (Regs, error) {
	var r Regs
	err := v.get(ioctlGetRegs, unsafe.Pointer(&r), "KVM_GET_REGS")
	return r, err
}

// SetRegs sets the general-purpose registers.
func (v *VCPU) SetRegs(r Regs) error {
	return v.get(ioctlSetRegs, unsafe.Pointer(&r), "KVM_SET_REGS")
}

// Sregs returns the segment and control registers.
func (v *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	err := v.get(ioctlGetSregs, unsafe.Pointer(&s), "KVM_GET_SREGS")
	return s, err
}

// SetSregs sets the segment and control registers.
func (v *VCPU) SetSregs(s Sregs) error {
	return v.get(ioctlSetSregs, unsafe.Pointer(&s), "KVM_SET_SREGS")
}

// FPU returns the x87/SSE state.
func (v *VCPU) FPU() (FPU, error) {
	var f FPU
	err := v.get(ioctlGetFPU, unsafe.Pointer(&f), "KVM_GET_FPU")
	return f, err
}

// SetFPU sets the x87/SSE state.
func (v *VCPU) SetFPU(f FPU) error {
	return v.get(ioctlSetFPU, unsafe.Pointer(&f), "KVM_SET_FPU")
}

// LAPIC returns the local APIC register page.
func (v *VCPU) LAPIC() (LAPICState, error) {
	var l LAPICState
	err := v.get(ioctlGetLAPIC, unsafe.Pointer(&l), "KVM_GET_LAPIC")
	return l, err
}

// SetLAPIC sets the local APIC register page.
func (v *VCPU) SetLAPIC(l LAPICState) error {
	return v.get(ioctlSetLAPIC, unsafe.Pointer(&l), "KVM_SET_LAPIC")
}

// Events returns pending exceptions, interrupts and NMIs.
func (v *VCPU) Events() (VCPUEvents, error) {
	var e VCPUEvents
	err := v.get(ioctlGetVCPUEvents, unsafe.Pointer(&e), "KVM_GET_VCPU_EVENTS")
	return e, err
}

// SetEvents sets pending exceptions, interrupts and NMIs.
func (v *VCPU) SetEvents(e VCPUEvents) error {
	return v.get(ioctlSetVCPUEvents, unsafe.Pointer(&e), "KVM_SET_VCPU_EVENTS")
}

// MPState returns the multiprocessing state (MPState* constants).
func (v *VCPU) MPState() (uint32, error) {
	var s uint32
	err := v.get(ioctlGetMPState, unsafe.Pointer(&s), "KVM_GET_MP_STATE")
	return s, err
}

// SetMPState sets the multiprocessing state.
func (v *VCPU) SetMPState(s uint32) error {
	return v.get(ioctlSetMPState, unsafe.Pointer(&s), "KVM_SET_MP_STATE")
}

// SetCPUID2 installs the vCPU's CPUID table.
func (v *VCPU) SetCPUID2(c CPUID) error {
	buf := c.buffer()
	return v.get(ioctlSetCPUID2, unsafe.Pointer(&buf[0]), "KVM_SET_CPUID2")
}

// MSR is one model-specific register value.
type MSR struct {
	Index uint32
	Data  uint64
}

func msrBuffer(msrs []MSR) []byte {
	buf := make([]byte, 8+16*len(msrs))
	binary.LittleEndian.PutUint32(buf, uint32(len(msrs)))
	for i, m := range msrs {
		binary.LittleEndian.PutUint32(buf[8+16*i:], m.Index)
		binary.LittleEndian.PutUint64(buf[8+16*i+8:], m.Data)
	}
	return buf
}

// SetMSRs writes MSRs; it fails unless KVM accepted every one.
func (v *VCPU) SetMSRs(msrs []MSR) error {
	if len(msrs) == 0 {
		return nil
	}
	buf := msrBuffer(msrs)
	n, err := ioctl(v.fd, ioctlSetMSRs, uintptr(unsafe.Pointer(&buf[0])))
	if err != nil {
		return fmt.Errorf("kvm: KVM_SET_MSRS on vCPU %d: %w", v.id, err)
	}
	if int(n) != len(msrs) {
		return fmt.Errorf("kvm: KVM_SET_MSRS on vCPU %d: MSR %#x rejected", v.id, msrs[n].Index)
	}
	return nil
}

// MSRs reads the given MSRs.
func (v *VCPU) MSRs(indices ...uint32) ([]MSR, error) {
	in := make([]MSR, len(indices))
	for i, idx := range indices {
		in[i].Index = idx
	}
	buf := msrBuffer(in)
	n, err := ioctl(v.fd, ioctlGetMSRs, uintptr(unsafe.Pointer(&buf[0])))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_GET_MSRS on vCPU %d: %w", v.id, err)
	}
	out := make([]MSR, n)
	for i := range out {
		out[i] = MSR{Index: binary.LittleEndian.Uint32(buf[8+16*i:]), Data: binary.LittleEndian.Uint64(buf[8+16*i+8:])}
	}
	return out, nil
}

// TSCKHz returns the guest TSC frequency in kHz (KVM_GET_TSC_KHZ).
func (v *VCPU) TSCKHz() (uint32, error) {
	n, err := ioctl(v.fd, ioctlGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_TSC_KHZ on vCPU %d: %w", v.id, err)
	}
	return uint32(n), nil
}
