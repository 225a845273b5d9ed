package i8042

import "fmt"

// StateVersion is the version of State this code writes and restores.
const StateVersion = 1

// MaxStateOutput is the most output bytes a State holds: the output
// buffer's capacity.
const MaxStateOutput = outCapacity

// State is the controller as plain data, to save and restore (a
// snapshot). The status register is not in it: it follows from Output
// (the system flag is always set). Neither is the interrupt line: the
// controller pulses IRQ 1 and leaves it low, so there is no level to
// save.
type State struct {
	Version int
	// CommandByte is the controller's configuration (command 0x60/0x20).
	CommandByte byte
	// PendingCommand is the command waiting for its data byte on port
	// 0x60: 0 for none, or 0x60 (write command byte).
	PendingCommand byte
	// Output is what waits for the guest on port 0x60, oldest first (at
	// most MaxStateOutput bytes).
	Output []byte
}

// State returns the controller's state.
func (c *Controller) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return State{Version: StateVersion, CommandByte: c.commandByte, PendingCommand: c.pendingCmd, Output: append([]byte(nil), c.out...)}
}

// Restore puts the controller into the state s. Call it before the vCPUs
// run and before the host sends keys (it replaces the output buffer
// wholesale), and after the interrupt controllers are restored
// (KVM_SET_IRQCHIP), which would otherwise overwrite the pulse below. A
// refused state changes nothing.
//
// If output waits and keyboard interrupts are on, Restore pulses IRQ 1:
// the pulse that announced the output may not be in the interrupt
// controllers' saved state (a key sent after they were saved), and
// without one the guest, which reads on interrupts, would never read it.
// At worst the guest takes one interrupt more and finds the output
// buffer empty.
func (c *Controller) Restore(s State) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("i8042: restore: %w", err)
	}
	c.mu.Lock()
	c.commandByte, c.pendingCmd = s.CommandByte, s.PendingCommand
	c.out = nil
	if len(s.Output) > 0 {
		c.out = append([]byte(nil), s.Output...)
	}
	c.mu.Unlock()
	c.pulse()
	return nil
}

// check refuses a state this controller could not have been in.
func (s State) check() error {
	switch {
	case s.Version != StateVersion:
		return fmt.Errorf("state version %d, this build restores %d", s.Version, StateVersion)
	case s.PendingCommand != 0 && s.PendingCommand != cmdWriteCommandByte:
		return fmt.Errorf("pending command %#x takes no data byte", s.PendingCommand)
	case len(s.Output) > MaxStateOutput:
		return fmt.Errorf("%d output bytes, the buffer holds %d", len(s.Output), MaxStateOutput)
	}
	return nil
}
