package pci

import "fmt"

// BusState is what the guest programmed into the bus itself rather than
// into a function: the configuration address register (0xCF8), which a
// driver may have written just before the vCPUs stopped and reads back or
// follows with a data access after a restore, and the host bridge's
// configuration space. Functions keep their own state (FunctionState).
type BusState struct {
	ConfigAddress uint32
	HostBridge    FunctionState
}

// State returns the bus's state.
func (b *Bus) State() BusState {
	hb := b.slots[0].Config().State()
	b.mu.Lock()
	defer b.mu.Unlock()
	return BusState{ConfigAddress: b.addr, HostBridge: hb}
}

// Restore puts s back into a bus built the same way, before the guest
// runs.
func (b *Bus) Restore(s BusState) error {
	if s.ConfigAddress&configAddressReserved != 0 {
		return fmt.Errorf("pci bus: restore: configuration address %#x has reserved bits set", s.ConfigAddress)
	}
	if err := b.slots[0].Config().Restore(s.HostBridge); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addr = s.ConfigAddress
	return nil
}
