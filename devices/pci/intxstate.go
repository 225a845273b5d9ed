package pci

import (
	"errors"
	"fmt"
)

// INTxStateVersion is the version of INTxState this code writes and
// restores.
const INTxStateVersion = 1

// INTxState is which of bus 0's connected INTx# pins are asserted, as
// plain data to save with the functions' own state (a snapshot).
//
// A pin's level is not state of its own: it follows from its function's
// condition (virtio: the ISR status), INTx Disable and MSI-X Enable, all
// restored with the function. RestoreINTx therefore drives each pin from
// the restored function and only checks the saved level against it. The
// pins are driven, not left to the interrupt controller state KVM saves
// (KVM_GET_IRQCHIP): that holds the I/O APIC's request bits and
// redirection table but not which sources (each irqfd, KVM_IRQ_LINE)
// hold an input high, and in a new VM every source starts low. An input
// whose restored request bit is set but which no source holds would stay
// set through KVM_IRQ_LINE, since INTx deasserts only a pin it raised:
// the guest would take the interrupt again after every EOI. Driving each
// pin once makes the sources agree with the device model, and driving it
// after the irqchip is restored also sets a request bit the saved state
// may lack. Driving again what is already driven changes nothing the
// guest sees (a level-triggered input delivers once until the guest's
// EOI), so it does not matter that virtio.PCI.Restore already drove its
// pin.
type INTxState struct {
	Version int
	// Pins holds one entry per function whose pin is connected, by
	// device number.
	Pins []INTxPin
}

// INTxPin is one function's INTx# pin.
type INTxPin struct {
	// Device is the function's device number on bus 0.
	Device int
	// GSI is the interrupt controller input the pin is routed to, which
	// the guest learned from the Interrupt Line register and the
	// firmware's routing table.
	GSI      uint32
	Asserted bool
}

// INTxState returns the state of every connected pin. Take it after the
// vCPUs stopped and every function's device paused (virtio.PCI.Pause):
// then no pin's condition changes, and each level is the one its function
// gives.
func (b *Bus) INTxState() INTxState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := INTxState{Version: INTxStateVersion}
	for dev, f := range b.slots {
		if x := pinOf(f); x != nil {
			x.mu.Lock()
			if x.line != nil {
				s.Pins = append(s.Pins, INTxPin{Device: dev, GSI: x.gsi, Asserted: x.asserted})
			}
			x.mu.Unlock()
		}
	}
	return s
}

// RestoreINTx drives every connected pin to the level its function's
// restored state gives (see INTxState for why). Call it after the
// functions are on the bus in their saved slots and restored
// (ConfigSpace.Restore, virtio.PCI.Restore) and after the interrupt
// controllers (KVM_SET_IRQCHIP, which replaces the request bits a drive
// set), before the vCPUs run. The
// state must list exactly the bus's connected pins, on the same GSIs, and
// each saved level must be the one the function now gives: a state whose
// parts disagree was not taken from one paused machine. A refused state
// drives nothing.
func (b *Bus) RestoreINTx(s INTxState) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkINTxLocked(s); err != nil {
		return fmt.Errorf("pci: restore INTx: %w", err)
	}
	var errs []error
	for _, p := range s.Pins {
		x := pinOf(b.slots[p.Device])
		x.mu.Lock()
		err := x.redriveLocked()
		x.mu.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("pci %s: restore INTx (GSI %d): %w", x.cfg.name, x.gsi, err))
		}
	}
	return errors.Join(errs...)
}

// checkINTxLocked refuses a state that is not this bus's pins.
func (b *Bus) checkINTxLocked(s INTxState) error {
	if s.Version != INTxStateVersion {
		return fmt.Errorf("state version %d, this build restores %d", s.Version, INTxStateVersion)
	}
	if len(s.Pins) > MaxDevices {
		return fmt.Errorf("%d pins saved, a bus has %d devices", len(s.Pins), MaxDevices)
	}
	var seen [MaxDevices]bool
	for _, p := range s.Pins {
		if p.Device < 0 || p.Device >= MaxDevices {
			return fmt.Errorf("pin of device %d, outside 0..%d", p.Device, MaxDevices-1)
		}
		if seen[p.Device] {
			return fmt.Errorf("device %d's pin saved twice", p.Device)
		}
		seen[p.Device] = true
		x := pinOf(b.slots[p.Device])
		if x == nil {
			return fmt.Errorf("pin of device %d saved, which has no INTx pin here", p.Device)
		}
		x.mu.Lock()
		gsi, connected, level := x.gsi, x.line != nil, x.levelLocked()
		x.mu.Unlock()
		switch {
		case !connected:
			return fmt.Errorf("pin of device %d saved, which is not connected here", p.Device)
		case gsi != p.GSI:
			return fmt.Errorf("device %d's pin was on GSI %d, here on GSI %d", p.Device, p.GSI, gsi)
		case p.Asserted && !level:
			// The other way round is expected: a restored virtio
			// transport signals its queues again (virtio.PCI.Restore),
			// which sets the ISR and raises the pin; a spurious
			// interrupt costs the driver nothing.
			return fmt.Errorf("device %d's pin was saved asserted, but its restored function leaves it low", p.Device)
		}
	}
	for dev, f := range b.slots {
		if x := pinOf(f); x != nil && !seen[dev] {
			x.mu.Lock()
			connected := x.line != nil
			x.mu.Unlock()
			if connected {
				return fmt.Errorf("device %d's pin is connected here but was not saved", dev)
			}
		}
	}
	return nil
}

// pinOf returns f's INTx pin, nil if f is absent or has none.
func pinOf(f Function) *INTx {
	if f == nil {
		return nil
	}
	return f.Config().intx
}

// redriveLocked drives the line to the pin's level even if the pin
// believes it is there already.
func (x *INTx) redriveLocked() error {
	level := x.levelLocked()
	x.asserted = level
	if x.line == nil {
		return nil
	}
	if level {
		return x.line.Assert()
	}
	return x.line.Deassert()
}
