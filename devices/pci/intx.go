package pci

import (
	"fmt"
	"sync"
)

// Interrupt Pin register values (§6.2.4): which INTx# pin a function uses.
const (
	PinNone = 0
	PinA    = 1 // INTA#
	maxPin  = 4 // INTD#
	// interruptLineUnknown is the Interrupt Line value for "unknown or not
	// connected" on x86 (§6.2.4, footnote on the Interrupt Line register).
	interruptLineUnknown = 0xff
)

// LevelIRQ is one level-sensitive input of the platform's interrupt
// controller, driven by a function's INTx# pin.
type LevelIRQ interface {
	// Assert raises the line (again: asserting a raised line is harmless).
	Assert() error
	// Deassert lowers it. An implementation whose line the interrupt
	// controller lowers by itself at the guest's EOI (KVM's irqfd with a
	// resample fd) may do nothing here.
	Deassert() error
	Close() error
}

// LevelIRQAllocator connects INTx# pins to the interrupt controller.
type LevelIRQAllocator interface {
	// NewLevelIRQ returns the line for GSI gsi. asserted reports whether
	// the function still asserts its pin: an implementation whose line is
	// lowered at EOI calls it then and raises the line again while it
	// returns true, which is what makes the input level-triggered.
	NewLevelIRQ(gsi uint32, asserted func() bool) (LevelIRQ, error)
}

// INTxRouting maps the interrupt pins of bus 0's devices to a block of
// GSIs: pin P (1 = INTA#) of device D reaches
//
//	FirstGSI + (D + P - 1) mod Count
//
// the conventional swizzle (PCI-to-PCI Bridge Architecture §9.1), so with
// at most Count devices every device's INTA# has a GSI of its own. The
// firmware tables (the DSDT's _PRT) describe the same mapping.
type INTxRouting struct {
	FirstGSI, Count uint32
}

// GSI returns the GSI of pin (1-4) of device dev.
func (r INTxRouting) GSI(dev, pin int) uint32 {
	if r.Count == 0 {
		return r.FirstGSI
	}
	return r.FirstGSI + uint32(dev+pin-1)%r.Count
}

// INTx is a function's legacy interrupt pin. The function says when it
// wants an interrupt through the condition given to AddINTx (for virtio:
// the ISR status is non-zero) and calls Update whenever that may have
// changed; INTx asserts the pin while the condition holds, unless the
// Command register's INTx Disable is set or MSI-X is enabled (§6.8.2: a
// function with MSI-X enabled does not use INTx#), and mirrors the pin in
// the Status register's Interrupt Status bit.
type INTx struct {
	cfg  *ConfigSpace
	cond func() bool
	errs func(error)

	mu       sync.Mutex
	line     LevelIRQ // nil until the function is on a bus with INTx routing
	gsi      uint32
	disabled bool // Command.INTxDisable
	asserted bool // the level last driven
}

// AddINTx gives cfg interrupt pin INTA# driven by cond, which must be cheap
// and take no locks that are held around Update (an atomic load is ideal).
// The bus connects the pin to a GSI when the function is added, and the
// Interrupt Line register then holds that GSI (the firmware's job on a PC).
// onErr receives failures to drive the line (it may be nil).
func AddINTx(cfg *ConfigSpace, cond func() bool, onErr func(error)) (*INTx, error) {
	if cfg.intx != nil {
		return nil, fmt.Errorf("pci %s: INTx pin already set", cfg.name)
	}
	x := &INTx{cfg: cfg, cond: cond, errs: onErr}
	cfg.intx = x
	cfg.data[RegInterruptPin] = PinA
	cfg.data[RegInterruptLine] = interruptLineUnknown
	cfg.OnWrite(RegCommand, 2, x.commandWritten)
	cfg.OnRead(RegStatus, 2, x.refreshStatus)
	return x, nil
}

// GSI returns the GSI the pin is connected to and whether it is connected.
func (x *INTx) GSI() (uint32, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.gsi, x.line != nil
}

// levelLocked is the pin's level: the function's condition, gated.
func (x *INTx) levelLocked() bool {
	return !x.disabled && !x.cfg.msixOn.Load() && x.cond()
}

// Update drives the pin to match the function's condition. Call it after
// every change of the condition (an interrupt raised, the ISR read).
func (x *INTx) Update() {
	if x == nil {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.driveLocked()
}

func (x *INTx) driveLocked() {
	level := x.levelLocked()
	if x.line != nil {
		var err error
		switch {
		case level:
			err = x.line.Assert()
		case x.asserted:
			err = x.line.Deassert()
		}
		if err != nil && x.errs != nil {
			x.errs(fmt.Errorf("pci %s: INTx (GSI %d): %w", x.cfg.name, x.gsi, err))
		}
	}
	x.asserted = level
}

// Asserted reports whether the pin is asserted now. LevelIRQ
// implementations call it to resample the line after an EOI.
func (x *INTx) Asserted() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.asserted = x.levelLocked()
	return x.asserted
}

// commandWritten runs under the config lock after a Command write:
// INTx Disable gates the pin.
func (x *INTx) commandWritten() {
	disabled := x.cfg.Uint16Locked(RegCommand)&CommandINTxDisable != 0
	x.mu.Lock()
	defer x.mu.Unlock()
	if disabled != x.disabled {
		x.disabled = disabled
		x.driveLocked()
	}
}

// refreshStatus runs under the config lock before a Status read: the
// Interrupt Status bit shows the function's condition, INTx Disable or not
// (§6.2.3), but not while MSI-X is in use.
func (x *INTx) refreshStatus() {
	pending := !x.cfg.msixOn.Load() && x.cond()
	st := x.cfg.BytesLocked(RegStatus, 1)
	if pending {
		st[0] |= StatusInterrupt
	} else {
		st[0] &^= StatusInterrupt
	}
}

// msixChanged runs under the config lock when MSI-X is turned on or off:
// the pin stops or resumes.
func (x *INTx) msixChanged() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.driveLocked()
}

// connect attaches the pin of device dev to the bus's interrupt routing.
func (x *INTx) connect(dev int, r INTxRouting, alloc LevelIRQAllocator) error {
	gsi := r.GSI(dev, PinA)
	line, err := alloc.NewLevelIRQ(gsi, x.Asserted)
	if err != nil {
		return fmt.Errorf("pci %s: INTx to GSI %d: %w", x.cfg.name, gsi, err)
	}
	x.cfg.mu.Lock()
	if gsi < interruptLineUnknown {
		x.cfg.data[RegInterruptLine] = byte(gsi)
	}
	x.cfg.mu.Unlock()
	x.mu.Lock()
	defer x.mu.Unlock()
	x.line, x.gsi = line, gsi
	x.driveLocked()
	return nil
}

// disconnect closes the line (on teardown). The line is closed without
// the lock: closing may wait for a resampler that is calling Asserted.
func (x *INTx) disconnect() error {
	x.mu.Lock()
	line := x.line
	x.line = nil
	x.mu.Unlock()
	if line == nil {
		return nil
	}
	return line.Close()
}
