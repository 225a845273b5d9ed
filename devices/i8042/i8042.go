// Package i8042 emulates the PC keyboard controller just far enough for a
// guest to reset the machine through it (Linux's reboot=k), to find no
// mouse behind it, and to receive a Ctrl+Alt+Del key press from the host
// (Firecracker's SendCtrlAltDel), which Linux turns into a clean reboot
// request to init.
package i8042

import (
	"errors"
	"sync"

	"github.com/govmm/vmm/devices"
)

// Port offsets: the controller occupies 0x60 (data) and 0x64 (status and
// command); the VMM registers them as two one-port ranges.
const (
	DataPort    = 0x60
	CommandPort = 0x64
)

// Controller commands (IBM PC/AT technical reference, 8042 commands).
const (
	cmdReadCommandByte  = 0x20
	cmdWriteCommandByte = 0x60
	cmdSelfTest         = 0xaa
	cmdInterfaceTest    = 0xab
	cmdDisableKeyboard  = 0xad
	cmdEnableKeyboard   = 0xae
	cmdPulseReset       = 0xfe // pulse output line 0: CPU reset

	statusOutputFull = 0x01
	statusSystemFlag = 0x04

	// Command byte bits (the controller's configuration).
	ctrKbdInt    = 0x01 // raise IRQ 1 when keyboard data is in the output buffer
	ctrTranslate = 0x40 // translate the keyboard's set 2 scan codes to set 1

	selfTestPassed = 0x55

	// outCapacity bounds the output buffer, like the controller's FIFO in
	// other VMMs; a full buffer drops the oldest bytes.
	outCapacity = 16
)

// Ctrl+Alt+Del as key presses and releases. Without translation the guest
// reads what a PS/2 keyboard sends (scan code set 2); with translation on
// (command byte bit 6) the controller hands over set 1 codes instead.
var (
	ctrlAltDelSet2 = []byte{
		0x14, 0x11, 0xe0, 0x71, // make: left Ctrl, left Alt, Delete
		0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // break: Delete, Alt, Ctrl
	}
	ctrlAltDelSet1 = []byte{
		0x1d, 0x38, 0xe0, 0x53, // make
		0xe0, 0xd3, 0xb8, 0x9d, // break
	}
)

// ErrBufferFull is returned by SendCtrlAltDel while the guest has not yet
// read earlier output.
var ErrBufferFull = errors.New("i8042: output buffer full")

// Controller is the 8042. Create one with New and register Data and
// Command on the port bus.
type Controller struct {
	mu          sync.Mutex
	irq         devices.Interrupt // IRQ 1; nil for none
	onReset     func()
	commandByte byte
	pendingCmd  byte // command waiting for its data byte on port 0x60
	out         []byte
}

// New returns a controller that signals keyboard data on irq (which may be
// nil) and calls onReset when the guest pulses the reset line.
func New(irq devices.Interrupt, onReset func()) *Controller {
	return &Controller{irq: irq, onReset: onReset, commandByte: statusSystemFlag}
}

// SendCtrlAltDel queues the key presses and releases of Ctrl+Alt+Del as if
// a keyboard had sent them and interrupts the guest. It fails rather than
// drop bytes when the guest has left too much output unread.
func (c *Controller) SendCtrlAltDel() error {
	c.mu.Lock()
	codes := ctrlAltDelSet2
	if c.commandByte&ctrTranslate != 0 {
		codes = ctrlAltDelSet1
	}
	if len(c.out)+len(codes) > outCapacity {
		c.mu.Unlock()
		return ErrBufferFull
	}
	c.out = append(c.out, codes...)
	c.mu.Unlock()
	c.pulse()
	return nil
}

// pulse signals IRQ 1 if keyboard interrupts are enabled and output is
// waiting. The ISA line is edge-triggered, so each pulse delivers one
// interrupt, and the guest's handler reads one byte per interrupt; reading
// the data port pulses again while more bytes wait (as Firecracker does).
func (c *Controller) pulse() {
	c.mu.Lock()
	fire := c.irq != nil && len(c.out) > 0 && c.commandByte&ctrKbdInt != 0
	c.mu.Unlock()
	if !fire {
		return
	}
	// An interrupt that can't be injected is lost either way; the guest
	// still finds the bytes by polling the status port.
	_ = c.irq.SetLevel(true)
	_ = c.irq.SetLevel(false)
}

// Data is the device for port 0x60.
func (c *Controller) Data() dataPort { return dataPort{c} }

// Command is the device for port 0x64.
func (c *Controller) Command() commandPort { return commandPort{c} }

type dataPort struct{ c *Controller }
type commandPort struct{ c *Controller }

func (p dataPort) Read(_ uint64, data []byte) {
	c := p.c
	c.mu.Lock()
	clear(data)
	more := false
	if len(c.out) > 0 && len(data) > 0 {
		data[0] = c.out[0]
		c.out = c.out[1:]
		more = len(c.out) > 0
	}
	c.mu.Unlock()
	if more {
		c.pulse()
	}
}

func (p dataPort) Write(_ uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pendingCmd == cmdWriteCommandByte {
		c.commandByte = data[0]
	}
	// Bytes meant for a keyboard go nowhere: there is none.
	c.pendingCmd = 0
}

func (p commandPort) Read(_ uint64, data []byte) {
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(data)
	if len(data) == 0 {
		return
	}
	status := byte(statusSystemFlag)
	if len(c.out) > 0 {
		status |= statusOutputFull
	}
	data[0] = status
}

func (p commandPort) Write(_ uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	c := p.c
	c.mu.Lock()
	var reset bool
	switch data[0] {
	case cmdReadCommandByte:
		c.out = append(c.out, c.commandByte)
	case cmdWriteCommandByte:
		c.pendingCmd = cmdWriteCommandByte
	case cmdSelfTest:
		c.out = append(c.out, selfTestPassed)
	case cmdInterfaceTest:
		c.out = append(c.out, 0x00)
	case cmdPulseReset:
		reset = true
	}
	if len(c.out) > outCapacity {
		c.out = c.out[len(c.out)-outCapacity:]
	}
	c.mu.Unlock()
	if reset && c.onReset != nil {
		c.onReset()
	}
}
