package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request numbers for saving and restoring the in-kernel devices
// (<linux/kvm.h>). KVM_SET_IRQCHIP really is _IOR: the direction bits are
// a historical mistake the ABI keeps.
const (
	ioctlGetIRQChip = 0xc208ae62 // _IOWR(KVMIO, 0x62, struct kvm_irqchip)
	ioctlSetIRQChip = 0x8208ae63 // _IOR(KVMIO, 0x63, struct kvm_irqchip)
	ioctlGetPIT2    = 0x8070ae9f // _IOR(KVMIO, 0x9f, struct kvm_pit_state2)
	ioctlSetPIT2    = 0x4070aea0 // _IOW(KVMIO, 0xa0, struct kvm_pit_state2)
)

// IRQChipData is the 512-byte union of struct kvm_irqchip: a PICState or
// an IOAPICState, zero-padded. It encodes to JSON as a base64 string.
type IRQChipData [512]byte

// IRQChip mirrors struct kvm_irqchip: the state of one in-kernel interrupt
// controller, ChipID being IRQChipPICMaster, IRQChipPICSlave or
// IRQChipIOAPIC.
type IRQChip struct {
	ChipID uint32
	_      uint32
	Chip   IRQChipData
}

// PICState mirrors struct kvm_pic_state: one i8259 of the PIC pair.
type PICState struct {
	LastIRR                uint8 // for edge detection
	IRR                    uint8 // interrupt request register
	IMR                    uint8 // interrupt mask register
	ISR                    uint8 // in-service register
	PriorityAdd            uint8
	IRQBase                uint8
	ReadRegSelect          uint8
	Poll                   uint8
	SpecialMask            uint8
	InitState              uint8
	AutoEOI                uint8
	RotateOnAutoEOI        uint8
	SpecialFullyNestedMode uint8
	Init4                  uint8 // ICW4 expected
	ELCR                   uint8 // edge/level control (PIIX)
	ELCRMask               uint8
}

// IOAPICNumPins is KVM_IOAPIC_NUM_PINS, the in-kernel IOAPIC's inputs.
const IOAPICNumPins = 24

// IOAPICState mirrors struct kvm_ioapic_state. Each RedirTbl entry is the
// 64-bit redirection table register of that pin (82093AA datasheet §3.2.4).
type IOAPICState struct {
	BaseAddress uint64
	IORegSel    uint32
	ID          uint32
	IRR         uint32
	_           uint32
	RedirTbl    [IOAPICNumPins]uint64
}

// asBytes views a plain-data struct as its bytes.
func asBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// PIC decodes the chip as one i8259 (ChipID IRQChipPICMaster or
// IRQChipPICSlave).
func (c *IRQChip) PIC() PICState {
	var p PICState
	copy(asBytes(&p), c.Chip[:])
	return p
}

// SetPIC stores p as the chip's state.
func (c *IRQChip) SetPIC(p PICState) {
	c.Chip = IRQChipData{}
	copy(c.Chip[:], asBytes(&p))
}

// IOAPIC decodes the chip as the IOAPIC (ChipID IRQChipIOAPIC).
func (c *IRQChip) IOAPIC() IOAPICState {
	var s IOAPICState
	copy(asBytes(&s), c.Chip[:])
	return s
}

// SetIOAPIC stores s as the chip's state.
func (c *IRQChip) SetIOAPIC(s IOAPICState) {
	c.Chip = IRQChipData{}
	copy(c.Chip[:], asBytes(&s))
}

// irqChipName names a chip ID for errors.
func irqChipName(id uint32) string {
	switch id {
	case IRQChipPICMaster:
		return "PIC master"
	case IRQChipPICSlave:
		return "PIC slave"
	case IRQChipIOAPIC:
		return "IOAPIC"
	}
	return fmt.Sprintf("irqchip %d", id)
}

// IRQChip returns the state of in-kernel interrupt controller id
// (KVM_GET_IRQCHIP).
func (vm *VM) IRQChip(id uint32) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	if _, err := ioctl(vm.fd, ioctlGetIRQChip, uintptr(unsafe.Pointer(&c))); err != nil {
		return c, fmt.Errorf("kvm: KVM_GET_IRQCHIP %s: %w", irqChipName(id), err)
	}
	return c, nil
}

// SetIRQChip loads the state of the interrupt controller c.ChipID names
// (KVM_SET_IRQCHIP).
func (vm *VM) SetIRQChip(c IRQChip) error {
	if _, err := ioctl(vm.fd, ioctlSetIRQChip, uintptr(unsafe.Pointer(&c))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IRQCHIP %s: %w", irqChipName(c.ChipID), err)
	}
	return nil
}

// PITChannelState mirrors struct kvm_pit_channel_state: one i8254 counter.
// CountLoadTime is the host's ktime when Count was loaded; KVM_SET_PIT2
// ignores it and starts the count anew.
type PITChannelState struct {
	Count         uint32 // 0x10000 stands for a written 0
	LatchedCount  uint16
	CountLatched  uint8
	StatusLatched uint8
	Status        uint8
	ReadState     uint8
	WriteState    uint8
	WriteLatch    uint8
	RWMode        uint8
	Mode          uint8
	BCD           uint8
	Gate          uint8
	CountLoadTime int64
}

// PIT state flags (KVM_PIT_FLAGS_*, <asm/kvm.h>).
const (
	PITFlagHPETLegacy    = 1 << 0
	PITFlagSpeakerDataOn = 1 << 1
)

// PITState2 mirrors struct kvm_pit_state2: the in-kernel i8254.
type PITState2 struct {
	Channels [3]PITChannelState
	Flags    uint32
	_        [9]uint32
}

// PIT2 returns the in-kernel PIT's state (KVM_GET_PIT2).
func (vm *VM) PIT2() (PITState2, error) {
	var p PITState2
	if _, err := ioctl(vm.fd, ioctlGetPIT2, uintptr(unsafe.Pointer(&p))); err != nil {
		return p, fmt.Errorf("kvm: KVM_GET_PIT2: %w", err)
	}
	return p, nil
}

// SetPIT2 loads the in-kernel PIT's state (KVM_SET_PIT2). KVM reloads each
// counter, so a counting channel 0 starts its timer (and raises IRQ 0)
// from then on.
func (vm *VM) SetPIT2(p PITState2) error {
	if _, err := ioctl(vm.fd, ioctlSetPIT2, uintptr(unsafe.Pointer(&p))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_PIT2: %w", err)
	}
	return nil
}

// ClockData.Flags bits (KVM_CLOCK_*, <linux/kvm.h>, api.rst §4.29-4.30).
const (
	// ClockTSCStable: Clock is the exact kvmclock every vCPU read at that
	// instant. KVM_GET_CLOCK reports it; KVM_SET_CLOCK ignores it on
	// kernels that accept it and rejects it on those before 5.16.
	ClockTSCStable = 1 << 1
	// ClockRealtime: Realtime holds the host's wall clock (ns since the
	// epoch) at the instant of Clock. Given to KVM_SET_CLOCK, KVM advances
	// Clock by the wall time elapsed since then (never backwards). Since
	// Linux 5.16.
	ClockRealtime = 1 << 2
	// ClockHostTSC: HostTSC holds the host TSC at that instant.
	// KVM_GET_CLOCK output only.
	ClockHostTSC = 1 << 3
)

// clockSetFlags returns the flags of c to give KVM_SET_CLOCK: only
// ClockRealtime means anything there, and only with a wall time to
// advance from (KVM would otherwise add the whole epoch to the clock).
func clockSetFlags(c ClockData) (uint32, error) {
	f := c.Flags & ClockRealtime
	if f != 0 && c.Realtime == 0 {
		return 0, errors.New("kvm: KVM_SET_CLOCK: KVM_CLOCK_REALTIME without a wall time")
	}
	return f, nil
}

// VMState is what KVM holds for a VM outside its vCPUs and memory: the
// in-kernel PIC pair, IOAPIC and PIT, and the kvmclock. It encodes to
// JSON, the irqchip images as base64 strings.
type VMState struct {
	PICMaster IRQChip
	PICSlave  IRQChip
	IOAPIC    IRQChip
	PIT       PITState2
	// Clock is KVM_GET_CLOCK's result. With ClockRealtime in its flags,
	// RestoreState advances the guest's clock by the wall time between
	// save and restore; clear the flag to resume it where it stopped.
	Clock ClockData
}

// SaveState reads the VM's in-kernel device state and clock. The vCPUs
// must be out of KVM_RUN. The PIT counts on regardless: KVM_SET_PIT2
// restarts each counter's period from its saved reload value, so a
// restored guest sees at most one period shifted.
func (vm *VM) SaveState() (VMState, error) {
	var s VMState
	var err error
	fail := func(step string, err error) (VMState, error) {
		return VMState{}, fmt.Errorf("save VM %s: %w", step, err)
	}
	for _, c := range []struct {
		id  uint32
		dst *IRQChip
	}{
		{IRQChipPICMaster, &s.PICMaster},
		{IRQChipPICSlave, &s.PICSlave},
		{IRQChipIOAPIC, &s.IOAPIC},
	} {
		if *c.dst, err = vm.IRQChip(c.id); err != nil {
			return fail("irqchip "+irqChipName(c.id), err)
		}
	}
	if s.PIT, err = vm.PIT2(); err != nil {
		return fail("PIT", err)
	}
	if s.Clock, err = vm.Clock(); err != nil {
		return fail("clock", err)
	}
	return s, nil
}

// RestoreState loads s into a VM whose irqchip and PIT exist
// (CreateIRQChip, CreatePIT2) and whose vCPUs have not run. The irqchips
// go first: the PIT starts counting as it is restored, and its ticks must
// reach the restored PIC and IOAPIC, not reset ones the irqchip restore
// would then overwrite. The clock is restored last.
func (vm *VM) RestoreState(s VMState) error {
	fail := func(step string, err error) error {
		return fmt.Errorf("restore VM %s: %w", step, err)
	}
	for _, c := range []struct {
		id    uint32
		state IRQChip
	}{
		{IRQChipPICMaster, s.PICMaster},
		{IRQChipPICSlave, s.PICSlave},
		{IRQChipIOAPIC, s.IOAPIC},
	} {
		step := "irqchip " + irqChipName(c.id)
		if c.state.ChipID != c.id {
			return fail(step, fmt.Errorf("state is of %s", irqChipName(c.state.ChipID)))
		}
		if err := vm.SetIRQChip(c.state); err != nil {
			return fail(step, err)
		}
	}
	if err := vm.SetPIT2(s.PIT); err != nil {
		return fail("PIT", err)
	}
	if err := vm.SetClock(s.Clock); err != nil {
		return fail("clock", err)
	}
	return nil
}

// setClockErr wraps a KVM_SET_CLOCK failure. EINVAL with ClockRealtime
// set means a kernel before 5.16, which takes no flag at all.
func setClockErr(flags uint32, err error) error {
	if flags&ClockRealtime != 0 && errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("kvm: KVM_SET_CLOCK with KVM_CLOCK_REALTIME (this host kernel cannot advance the clock by wall time: that needs Linux 5.16; clear ClockRealtime to restore the clock as saved): %w", err)
	}
	return fmt.Errorf("kvm: KVM_SET_CLOCK: %w", err)
}
