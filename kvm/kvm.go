// Package kvm is a typed, cgo-free wrapper over the Linux KVM ioctl API
// (Documentation/virt/kvm/api.rst) for x86-64: the system handle, VMs,
// memory slots, the in-kernel interrupt controllers, vCPUs and their state,
// irqfd, ioeventfd and GSI routing, and the VM and vCPU state a snapshot
// saves and restores (VMState, VCPUState).
package kvm

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM system device lives.
const DevicePath = "/dev/kvm"

// APIVersion is the only stable KVM API version (api.rst §4.1).
const APIVersion = 12

// ioctl request numbers, as computed by the _IO/_IOR/_IOW/_IOWR macros of
// <linux/kvm.h> for x86-64 (KVMIO = 0xAE).
const (
	ioctlGetAPIVersion       = 0xae00
	ioctlCreateVM            = 0xae01
	ioctlGetMSRIndexList     = 0xc004ae02
	ioctlCheckExtension      = 0xae03
	ioctlGetVCPUMmapSize     = 0xae04
	ioctlGetSupportedCPUID   = 0xc008ae05
	ioctlCreateVCPU          = 0xae41
	ioctlGetDirtyLog         = 0x4010ae42
	ioctlSetUserMemoryRegion = 0x4020ae46
	ioctlSetTSSAddr          = 0xae47
	ioctlSetIdentityMapAddr  = 0x4008ae48
	ioctlCreateIRQChip       = 0xae60
	ioctlIRQLine             = 0x4008ae61
	ioctlSetGSIRouting       = 0x4008ae6a
	ioctlIRQFD               = 0x4020ae76
	ioctlCreatePIT2          = 0x4040ae77
	ioctlIOEventFD           = 0x4040ae79
	ioctlRun                 = 0xae80
	ioctlGetRegs             = 0x8090ae81
	ioctlSetRegs             = 0x4090ae82
	ioctlGetSregs            = 0x8138ae83
	ioctlSetSregs            = 0x4138ae84
	ioctlGetMSRs             = 0xc008ae88
	ioctlSetMSRs             = 0x4008ae89
	ioctlGetFPU              = 0x81a0ae8c
	ioctlSetFPU              = 0x41a0ae8d
	ioctlGetLAPIC            = 0x8400ae8e
	ioctlSetLAPIC            = 0x4400ae8f
	ioctlSetCPUID2           = 0x4008ae90
	ioctlGetMPState          = 0x8004ae98
	ioctlSetMPState          = 0x4004ae99
	ioctlGetVCPUEvents       = 0x8040ae9f
	ioctlSetVCPUEvents       = 0x4040aea0
	ioctlSignalMSI           = 0x4020aea5
	ioctlGetTSCKHz           = 0xaea3
	ioctlGetClock            = 0x8030ae7c
	ioctlSetClock            = 0x4030ae7b
)

// Capability is a KVM_CAP_* extension number (api.rst §4.4, <linux/kvm.h>).
type Capability int

// Capabilities this VMM relies on or probes.
const (
	CapIRQChip           Capability = 0
	CapHLT               Capability = 1
	CapUserMemory        Capability = 3
	CapSetTSSAddr        Capability = 4
	CapExtCPUID          Capability = 7
	CapNrVCPUs           Capability = 9
	CapNrMemslots        Capability = 10
	CapPIT               Capability = 11
	CapMPState           Capability = 14
	CapIRQRouting        Capability = 25
	CapIRQFD             Capability = 32
	CapPIT2              Capability = 33
	CapIOEventFD         Capability = 36
	CapSetIdentityMapAdr Capability = 37
	CapAdjustClock       Capability = 39
	CapVCPUEvents        Capability = 41
	CapXSAVE             Capability = 55
	CapXCRS              Capability = 56
	CapMaxVCPUs          Capability = 66
	CapSignalMSI         Capability = 77
	CapImmediateExit     Capability = 136
)

func (c Capability) String() string {
	switch c {
	case CapIRQChip:
		return "KVM_CAP_IRQCHIP"
	case CapHLT:
		return "KVM_CAP_HLT"
	case CapUserMemory:
		return "KVM_CAP_USER_MEMORY"
	case CapSetTSSAddr:
		return "KVM_CAP_SET_TSS_ADDR"
	case CapExtCPUID:
		return "KVM_CAP_EXT_CPUID"
	case CapNrVCPUs:
		return "KVM_CAP_NR_VCPUS"
	case CapNrMemslots:
		return "KVM_CAP_NR_MEMSLOTS"
	case CapPIT:
		return "KVM_CAP_PIT"
	case CapMPState:
		return "KVM_CAP_MP_STATE"
	case CapIRQRouting:
		return "KVM_CAP_IRQ_ROUTING"
	case CapIRQFD:
		return "KVM_CAP_IRQFD"
	case CapPIT2:
		return "KVM_CAP_PIT2"
	case CapIOEventFD:
		return "KVM_CAP_IOEVENTFD"
	case CapSetIdentityMapAdr:
		return "KVM_CAP_SET_IDENTITY_MAP_ADDR"
	case CapAdjustClock:
		return "KVM_CAP_ADJUST_CLOCK"
	case CapVCPUEvents:
		return "KVM_CAP_VCPU_EVENTS"
	case CapMaxVCPUs:
		return "KVM_CAP_MAX_VCPUS"
	case CapXSAVE:
		return "KVM_CAP_XSAVE"
	case CapXCRS:
		return "KVM_CAP_XCRS"
	case CapSignalMSI:
		return "KVM_CAP_SIGNAL_MSI"
	case CapImmediateExit:
		return "KVM_CAP_IMMEDIATE_EXIT"
	}
	return fmt.Sprintf("KVM_CAP(%d)", int(c))
}

// RequiredCapabilities lists those a VM built by this VMM cannot run without.
func RequiredCapabilities() []Capability {
	return []Capability{
		CapIRQChip, CapUserMemory, CapSetTSSAddr, CapExtCPUID, CapPIT2,
		CapIRQRouting, CapIRQFD, CapIOEventFD, CapVCPUEvents, CapImmediateExit,
	}
}

// ErrNoKVM means the host has no KVM device at all.
var ErrNoKVM = errors.New("kvm: " + DevicePath + " does not exist (is the kvm module loaded and virtualization enabled?)")

// System is an open handle on /dev/kvm.
type System struct {
	fd       int
	mmapSize int
}

// Open opens /dev/kvm and checks the API version and the capabilities the
// VMM needs, so a host that can't run a VM is reported before any work.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, ErrNoKVM
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return nil, fmt.Errorf("kvm: no permission to open %s (add the user to the kvm group or run as root): %w", DevicePath, err)
	case err != nil:
		return nil, fmt.Errorf("kvm: open %s: %w", DevicePath, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, ioctlGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("kvm: KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("kvm: API version %d, need %d", v, APIVersion)
	}
	for _, c := range RequiredCapabilities() {
		n, err := s.CheckExtension(c)
		if err != nil {
			s.Close()
			return nil, err
		}
		if n <= 0 {
			s.Close()
			return nil, fmt.Errorf("kvm: host lacks required capability %v", c)
		}
	}
	sz, err := ioctl(fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("kvm: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	s.mmapSize = int(sz)
	return s, nil
}

// Available reports whether /dev/kvm exists on this host.
func Available() bool {
	_, err := os.Stat(DevicePath)
	return err == nil
}

// Close releases the handle. VMs created from it stay valid.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// CheckExtension returns KVM_CHECK_EXTENSION for c: 0 when absent, often 1
// or a count when present.
func (s *System) CheckExtension(c Capability) (int, error) {
	n, err := ioctl(s.fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_CHECK_EXTENSION %v: %w", c, err)
	}
	return int(n), nil
}

// MaxVCPUs returns the most vCPUs a VM may have on this host.
func (s *System) MaxVCPUs() int {
	if n, err := s.CheckExtension(CapMaxVCPUs); err == nil && n > 0 {
		return n
	}
	if n, err := s.CheckExtension(CapNrVCPUs); err == nil && n > 0 {
		return n
	}
	return 4 // api.rst: assume 4 when neither capability answers
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: every leaf KVM can expose.
func (s *System) SupportedCPUID() (CPUID, error) {
	for n := 128; n <= 4096; n *= 2 {
		buf := newCPUIDBuffer(n)
		_, err := ioctl(s.fd, ioctlGetSupportedCPUID, uintptr(unsafe.Pointer(&buf[0])))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return parseCPUIDBuffer(buf), nil
	}
	return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

// MSRIndexList returns the MSRs KVM saves and restores for a vCPU.
func (s *System) MSRIndexList() ([]uint32, error) {
	for n := 256; n <= 16384; n *= 2 {
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		_, err := ioctl(s.fd, ioctlGetMSRIndexList, uintptr(unsafe.Pointer(&buf[0])))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: %w", err)
		}
		return append([]uint32(nil), buf[1:1+buf[0]]...), nil
	}
	return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: list too long")
}

// CreateVM makes a new VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, ioctlCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{fd: int(fd), mmapSize: s.mmapSize}, nil
}

// IsPVM reports whether /dev/kvm is served by kvm-pvm (pagetable-based
// virtualization without VT-x/AMD-V). On such hosts a stock guest kernel's
// ring-0 code runs through KVM's instruction emulator, which the VMM must
// work around; see the project README.
func IsPVM() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

// maxEINTRRetries bounds how often ioctl restarts a call a signal
// interrupted. Go's runtime sends SIGURG to preempt goroutines, and some KVM
// ioctls give up with EINTR when a signal is pending (KVM_CREATE_VM does,
// in mmu_notifier_register's mm_take_all_locks): a retry is what the caller
// meant. The bound only keeps a pathological signal storm from spinning
// forever.
const maxEINTRRetries = 1000

// ioctl issues a KVM ioctl, restarting it when a signal interrupted it.
// KVM_RUN does not come through here: its EINTR is an exit the vCPU loop
// must see (runIoctl). Callers pass arg as uintptr(unsafe.Pointer(&x)):
// uintptrescapes moves such an x to the heap, where it stays put and alive
// for the call, as it would if the conversion were written in the
// unix.Syscall call itself (a stack object could move if the stack grows
// on the way down).
//
//go:uintptrescapes
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for i := 0; ; i++ {
		r, err := runIoctl(fd, req, arg)
		if err != unix.EINTR || i == maxEINTRRetries {
			return r, err
		}
	}
}

// runIoctl issues one ioctl and reports EINTR as it came.
//
//go:uintptrescapes
func runIoctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}
