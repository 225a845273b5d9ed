package serial

import (
	"errors"
	"fmt"
)

// StateVersion is the version of State this code writes and restores.
const StateVersion = 1

// MaxStateInput is the most received bytes a State holds: the receive
// buffer's capacity.
const MaxStateInput = rxCapacity

// State is a UART as the guest sees it, as plain data to save and restore
// (a snapshot). IIR, LSR and MSR are not in it: this UART computes them
// from the rest (the interrupt sources from IER, the input and
// THREPending; LSR from whether input waits, the transmitter being always
// empty; MSR from MCR), so a saved copy could only disagree. Output the
// guest already transmitted is not state: it went to the host's writer.
type State struct {
	Version int
	// The registers the guest writes. FCR is kept as written; only its
	// FIFO Enable bit is visible (in IIR).
	IER, FCR, LCR, MCR, SCR byte
	// DLL and DLM are the divisor latch (DLAB=1).
	DLL, DLM byte
	// Input is what was received and not yet read, oldest first (at most
	// MaxStateInput bytes).
	Input []byte
	// THREPending is the latched "THR empty" interrupt, which reading IIR
	// or writing THR clears.
	THREPending bool
	// IRQ is the level the UART drives its interrupt line to. It follows
	// from the fields above; Restore checks that it does.
	IRQ bool
}

// State returns the UART's state. Take it with the vCPUs stopped: a
// guest access after it changes what a restore would bring back.
func (u *UART) State() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	return State{
		Version: StateVersion,
		IER:     u.ier, FCR: u.fcr, LCR: u.lcr, MCR: u.mcr, SCR: u.scr, DLL: u.dll, DLM: u.dlm,
		Input:       append([]byte(nil), u.rx...),
		THREPending: u.threPending,
		IRQ:         u.irqHigh,
	}
}

// Restore puts the UART, made by New, into the state s, and drives the
// interrupt line to the restored level. Call it before the vCPUs run and
// before the host queues input (it replaces the registers and the receive
// buffer wholesale), and after the interrupt controllers are restored
// (KVM_SET_IRQCHIP), which would otherwise overwrite what the drive did.
// A refused state changes nothing.
//
// The line is driven rather than left to the interrupt controllers' saved
// state because the two need not agree: host input can arrive after the
// controllers were saved and raise the line in the UART's state only. The
// UART makes an edge only when its level changes, so a line restored
// high in the UART but never raised in KVM would leave the guest waiting
// for an interrupt that never comes. Driving it costs at most one
// spurious interrupt (an edge-triggered I/O APIC input takes every
// raise), which the guest's driver finds with nothing pending in IIR.
func (u *UART) Restore(s State) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("serial: restore: %w", err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return errors.New("serial: restore: the UART is closed")
	}
	u.ier, u.fcr, u.lcr, u.mcr, u.scr, u.dll, u.dlm = s.IER, s.FCR, s.LCR, s.MCR, s.SCR, s.DLL, s.DLM
	u.rx = nil
	if len(s.Input) > 0 {
		u.rx = append([]byte(nil), s.Input...)
	}
	u.threPending = s.THREPending
	u.irqHigh = s.IRQ
	u.rxSpace.Broadcast() // the buffer may have room it lacked
	if u.irq != nil {
		if err := u.irq.SetLevel(s.IRQ); err != nil {
			return fmt.Errorf("serial: restore: drive the interrupt line: %w", err)
		}
	}
	return nil
}

// check refuses a state this UART could not have been in.
func (s State) check() error {
	switch {
	case s.Version != StateVersion:
		return fmt.Errorf("state version %d, this build restores %d", s.Version, StateVersion)
	case s.IER&^ierMask != 0:
		return fmt.Errorf("IER %#x has bits above %#x", s.IER, ierMask)
	case s.MCR&^mcrMask != 0:
		return fmt.Errorf("MCR %#x has bits above %#x", s.MCR, mcrMask)
	case len(s.Input) > MaxStateInput:
		return fmt.Errorf("%d bytes of input, the receive buffer holds %d", len(s.Input), MaxStateInput)
	}
	if want := interruptSource(s.IER, len(s.Input) > 0, s.THREPending) != iirNone; s.IRQ != want {
		return fmt.Errorf("interrupt line %v, but the registers and input say %v", s.IRQ, want)
	}
	return nil
}
