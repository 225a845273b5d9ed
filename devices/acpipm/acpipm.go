// Package acpipm implements the registers a hardware-reduced ACPI platform
// uses to power off and reset (ACPI 6.4 §4.8.3.7 sleep control and status
// registers, §4.8.3.6 reset register), as fixed I/O ports described in the
// FADT.
//
// The device holds no state, so it has no State or Restore: reads report
// a constant "awake" and writes act at once (a machine that powered off
// or reset is not snapshotted), and there are no PM1 event or enable
// registers on a hardware-reduced platform (ACPI 6.4 §4.1). A restored
// machine builds it anew with New.
package acpipm

// Register offsets within the device's range.
const (
	SleepControl = 0 // FADT SLEEP_CONTROL_REG
	SleepStatus  = 1 // FADT SLEEP_STATUS_REG
	Reset        = 4 // FADT RESET_REG

	// Size is the number of ports the device occupies.
	Size = 8
)

// Sleep control register fields (ACPI 6.4 table 4.21).
const (
	sleepEnable    = 1 << 5 // SLP_EN
	sleepTypeShift = 2      // SLP_TYPx in bits 4:2
	sleepTypeMask  = 0x7
	wakeStatus     = 1 << 7 // WAK_STS in the status register
)

// S5SleepType is the SLP_TYP value the DSDT's \_S5 object announces; writing
// it with SLP_EN powers the machine off.
const S5SleepType = 5

// ResetValue is the value the FADT tells the guest to write to RESET_REG.
const ResetValue = 1

// PM is the device.
type PM struct {
	onPowerOff func()
	onReset    func()
}

// New returns a PM that calls onPowerOff on an S5 request and onReset on a
// write of ResetValue to the reset register.
func New(onPowerOff, onReset func()) *PM { return &PM{onPowerOff: onPowerOff, onReset: onReset} }

// Read implements devices.Device. Reads report "awake, no wake event".
func (p *PM) Read(offset uint64, data []byte) {
	clear(data)
}

// Write implements devices.Device.
func (p *PM) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	switch offset {
	case SleepControl:
		if v&sleepEnable != 0 && (v>>sleepTypeShift)&sleepTypeMask == S5SleepType && p.onPowerOff != nil {
			p.onPowerOff()
		}
	case Reset:
		if v == ResetValue && p.onReset != nil {
			p.onReset()
		}
	}
}
