package kvm

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine file descriptor.
type VM struct {
	fd       int
	mmapSize int
}

// FD returns the VM file descriptor.
func (vm *VM) FD() int { return vm.fd }

// Close releases the VM. Its vCPUs must be closed first.
func (vm *VM) Close() error {
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	return err
}

// MemoryFlagLogDirtyPages (KVM_MEM_LOG_DIRTY_PAGES, <linux/kvm.h>) asks
// KVM to track the guest's writes to a slot, for DirtyLog.
const MemoryFlagLogDirtyPages = 1

// DirtyLog returns the pages of a slot the guest wrote since the slot was
// created or DirtyLog last read it (KVM_GET_DIRTY_LOG, api.rst §4.8), and
// clears that record: bit i%64 of word i/64 is page i of the slot. pages is
// the slot's size in pages; the slot must have been set with
// MemoryFlagLogDirtyPages.
func (vm *VM) DirtyLog(slot uint32, pages int) ([]uint64, error) {
	if pages <= 0 {
		return nil, fmt.Errorf("kvm: KVM_GET_DIRTY_LOG slot %d: %d pages", slot, pages)
	}
	// KVM writes ALIGN(pages, BITS_PER_LONG)/8 bytes: whole 64-bit words.
	bitmap := make([]uint64, (pages+63)/64)
	l := dirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	_, err := ioctl(vm.fd, ioctlGetDirtyLog, uintptr(unsafe.Pointer(&l)))
	// The bitmap's address is hidden in a uint64: keep it alive (Go's heap
	// does not move) until the kernel has written it.
	runtime.KeepAlive(bitmap)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_GET_DIRTY_LOG slot %d: %w", slot, err)
	}
	return bitmap, nil
}

// SetUserMemoryRegion maps host memory host at guest-physical address gpa in
// the given slot (api.rst §4.35). A zero-length host removes the slot.
func (vm *VM) SetUserMemoryRegion(slot uint32, gpa uint64, host []byte, flags uint32) error {
	r := userspaceMemoryRegion{Slot: slot, Flags: flags, GuestPhysAddr: gpa, MemorySize: uint64(len(host))}
	if len(host) > 0 {
		r.UserspaceAddr = uint64(uintptr(unsafe.Pointer(&host[0])))
	}
	if _, err := ioctl(vm.fd, ioctlSetUserMemoryRegion, uintptr(unsafe.Pointer(&r))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION slot %d at %#x (%d bytes): %w", slot, gpa, len(host), err)
	}
	return nil
}

// SetTSSAddr places the three pages Intel VT needs for real-mode emulation.
func (vm *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctl(vm.fd, ioctlSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the one page Intel VT needs for an identity map
// in unpaged guest modes.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	a := addr
	if _, err := ioctl(vm.fd, ioctlSetIdentityMapAddr, uintptr(unsafe.Pointer(&a))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and local APICs.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, ioctlCreateIRQChip, 0); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// pitSpeakerDummy makes KVM ignore the PC speaker port rather than exit.
const pitSpeakerDummy = 1

// CreatePIT2 creates the in-kernel i8254 timer.
func (vm *VM) CreatePIT2() error {
	c := pitConfig{Flags: pitSpeakerDummy}
	if _, err := ioctl(vm.fd, ioctlCreatePIT2, uintptr(unsafe.Pointer(&c))); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line of the in-kernel irqchip.
func (vm *VM) IRQLine(irq uint32, high bool) error {
	l := irqLevel{IRQ: irq}
	if high {
		l.Level = 1
	}
	if _, err := ioctl(vm.fd, ioctlIRQLine, uintptr(unsafe.Pointer(&l))); err != nil {
		return fmt.Errorf("kvm: KVM_IRQ_LINE %d=%v: %w", irq, high, err)
	}
	return nil
}

// irqfd flags (api.rst §4.75).
const (
	irqfdFlagDeassign = 1 << 0
	irqfdFlagResample = 1 << 1
)

// RegisterIRQFD makes every write to eventfd fd raise gsi. With a resample
// fd the line is level-triggered: KVM lowers it on EOI and signals resample.
func (vm *VM) RegisterIRQFD(fd int, gsi uint32, resampleFD int) error {
	r := irqfd{FD: uint32(fd), GSI: gsi}
	if resampleFD >= 0 {
		r.Flags |= irqfdFlagResample
		r.ResampleFD = uint32(resampleFD)
	}
	if _, err := ioctl(vm.fd, ioctlIRQFD, uintptr(unsafe.Pointer(&r))); err != nil {
		return fmt.Errorf("kvm: KVM_IRQFD fd %d gsi %d: %w", fd, gsi, err)
	}
	return nil
}

// UnregisterIRQFD undoes RegisterIRQFD.
func (vm *VM) UnregisterIRQFD(fd int, gsi uint32) error {
	r := irqfd{FD: uint32(fd), GSI: gsi, Flags: irqfdFlagDeassign}
	if _, err := ioctl(vm.fd, ioctlIRQFD, uintptr(unsafe.Pointer(&r))); err != nil {
		return fmt.Errorf("kvm: KVM_IRQFD deassign fd %d gsi %d: %w", fd, gsi, err)
	}
	return nil
}

// ioeventfd flags (api.rst §4.59).
const (
	ioeventfdFlagDatamatch = 1 << 0
	ioeventfdFlagPIO       = 1 << 1
	ioeventfdFlagDeassign  = 1 << 2
)

// IOEventFD describes a guest write that KVM turns into an eventfd signal
// without leaving the kernel.
type IOEventFD struct {
	Addr      uint64
	Len       uint32 // 0 (any width), 1, 2, 4 or 8
	PIO       bool   // port I/O rather than MMIO
	Datamatch *uint64
	FD        int
}

func (e IOEventFD) raw(deassign bool) ioeventfd {
	r := ioeventfd{Addr: e.Addr, Len: e.Len, FD: int32(e.FD)}
	if e.PIO {
		r.Flags |= ioeventfdFlagPIO
	}
	if e.Datamatch != nil {
		r.Flags |= ioeventfdFlagDatamatch
		r.Datamatch = *e.Datamatch
	}
	if deassign {
		r.Flags |= ioeventfdFlagDeassign
	}
	return r
}

// RegisterIOEventFD installs e.
func (vm *VM) RegisterIOEventFD(e IOEventFD) error {
	r := e.raw(false)
	if _, err := ioctl(vm.fd, ioctlIOEventFD, uintptr(unsafe.Pointer(&r))); err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD at %#x: %w", e.Addr, err)
	}
	return nil
}

// UnregisterIOEventFD removes e.
func (vm *VM) UnregisterIOEventFD(e IOEventFD) error {
	r := e.raw(true)
	if _, err := ioctl(vm.fd, ioctlIOEventFD, uintptr(unsafe.Pointer(&r))); err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD deassign at %#x: %w", e.Addr, err)
	}
	return nil
}

// Routing entry types (api.rst §4.52).
const (
	RoutingIRQChip = 1
	RoutingMSI     = 2
)

// In-kernel irqchip identifiers for RoutingIRQChip.
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// RoutingEntry is one GSI route: to an irqchip pin or an MSI message.
type RoutingEntry struct {
	GSI  uint32
	Type uint32
	// RoutingIRQChip
	IRQChip, Pin uint32
	// RoutingMSI
	AddressLo, AddressHi, Data uint32
}

// routingEntry mirrors struct kvm_irq_routing_entry.
type routingEntry struct {
	GSI   uint32
	Type  uint32
	Flags uint32
	_     uint32
	U     [8]uint32
}

// DefaultRouting returns the legacy routes of a PC: GSIs 0-15 to the PICs,
// GSIs 1-23 to the same IOAPIC pins, and the timer's GSI 0 to IOAPIC pin 2,
// matching the interrupt source override in the MADT. (KVM's own default
// sends GSI 0 to pin 0, which contradicts the override.) KVM_SET_GSI_ROUTING
// replaces the whole table, so MSI routes must be added to these.
func DefaultRouting() []RoutingEntry {
	var r []RoutingEntry
	for gsi := uint32(0); gsi < 24; gsi++ {
		if gsi < 8 {
			r = append(r, RoutingEntry{GSI: gsi, Type: RoutingIRQChip, IRQChip: IRQChipPICMaster, Pin: gsi})
		} else if gsi < 16 {
			r = append(r, RoutingEntry{GSI: gsi, Type: RoutingIRQChip, IRQChip: IRQChipPICSlave, Pin: gsi - 8})
		}
		if gsi != 0 && gsi != 2 {
			r = append(r, RoutingEntry{GSI: gsi, Type: RoutingIRQChip, IRQChip: IRQChipIOAPIC, Pin: gsi})
		}
	}
	// The PIT's GSI 0 reaches IOAPIC pin 2, as the MADT override says.
	r = append(r, RoutingEntry{GSI: 0, Type: RoutingIRQChip, IRQChip: IRQChipIOAPIC, Pin: 2})
	return r
}

// SetGSIRouting replaces the GSI routing table.
func (vm *VM) SetGSIRouting(entries []RoutingEntry) error {
	buf := make([]byte, 8+len(entries)*int(unsafe.Sizeof(routingEntry{})))
	binary.LittleEndian.PutUint32(buf, uint32(len(entries)))
	raw := unsafe.Slice((*routingEntry)(unsafe.Pointer(&buf[8])), len(entries))
	for i, e := range entries {
		raw[i] = routingEntry{GSI: e.GSI, Type: e.Type}
		switch e.Type {
		case RoutingIRQChip:
			raw[i].U[0], raw[i].U[1] = e.IRQChip, e.Pin
		case RoutingMSI:
			raw[i].U[0], raw[i].U[1], raw[i].U[2] = e.AddressLo, e.AddressHi, e.Data
		default:
			return fmt.Errorf("kvm: GSI %d: unknown routing type %d", e.GSI, e.Type)
		}
	}
	if _, err := ioctl(vm.fd, ioctlSetGSIRouting, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_GSI_ROUTING (%d entries): %w", len(entries), err)
	}
	return nil
}

// SignalMSI injects one MSI message.
func (vm *VM) SignalMSI(addressLo, addressHi, data uint32) error {
	m := msi{AddressLo: addressLo, AddressHi: addressHi, Data: data}
	if _, err := ioctl(vm.fd, ioctlSignalMSI, uintptr(unsafe.Pointer(&m))); err != nil {
		return fmt.Errorf("kvm: KVM_SIGNAL_MSI: %w", err)
	}
	return nil
}

// Clock returns the guest's kvmclock.
func (vm *VM) Clock() (ClockData, error) {
	var c ClockData
	if _, err := ioctl(vm.fd, ioctlGetClock, uintptr(unsafe.Pointer(&c))); err != nil {
		return c, fmt.Errorf("kvm: KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets the guest's kvmclock to c.Clock (used to keep time across
// pauses and restores). With ClockRealtime in c.Flags, KVM first advances
// it by the host wall time elapsed since c.Realtime; the other flags only
// describe a KVM_GET_CLOCK result and are not passed on, since kernels
// before 5.16 reject every flag.
func (vm *VM) SetClock(c ClockData) error {
	flags, err := clockSetFlags(c)
	if err != nil {
		return err
	}
	c.Flags = flags
	if _, err := ioctl(vm.fd, ioctlSetClock, uintptr(unsafe.Pointer(&c))); err != nil {
		return setClockErr(flags, err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its shared kvm_run area.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, ioctlCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm: mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{id: id, fd: int(fd), run: run}, nil
}
