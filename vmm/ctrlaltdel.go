package vmm

import "fmt"

// kbdIRQ is the keyboard controller's ISA interrupt.
const kbdIRQ = 1

// SendCtrlAltDel presses and releases Ctrl+Alt+Del on the machine's
// keyboard controller, as Firecracker's SendCtrlAltDel action does. A Linux
// guest with a keyboard driver then asks init to reboot, which (with
// reboot=k) ends the machine. The guest may ignore it.
func (m *Machine) SendCtrlAltDel() error {
	if m.kbd == nil {
		return fmt.Errorf("send Ctrl+Alt+Del: machine has no keyboard controller")
	}
	if err := m.kbd.SendCtrlAltDel(); err != nil {
		return fmt.Errorf("send Ctrl+Alt+Del: %w", err)
	}
	return nil
}
