// Package i8042 emulates the PC keyboard controller just far enough for a
// guest to reset the machine through it (Linux's reboot=k), and to find no
// keyboard or mouse behind it.
package i8042

import "sync"

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

	selfTestPassed = 0x55
)

// Controller is the 8042. Create one with New and register Data and
// Command on the port bus.
type Controller struct {
	mu          sync.Mutex
	onReset     func()
	commandByte byte
	pendingCmd  byte // command waiting for its data byte on port 0x60
	out         []byte
}

// New returns a controller that calls onReset when the guest pulses the
// reset line.
func New(onReset func()) *Controller {
	return &Controller{onReset: onReset, commandByte: statusSystemFlag}
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
	defer c.mu.Unlock()
	clear(data)
	if len(c.out) > 0 && len(data) > 0 {
		data[0] = c.out[0]
		c.out = c.out[1:]
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
	if len(c.out) > 16 {
		c.out = c.out[len(c.out)-16:]
	}
	c.mu.Unlock()
	if reset && c.onReset != nil {
		c.onReset()
	}
}
