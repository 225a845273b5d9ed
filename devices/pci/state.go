package pci

import (
	"bytes"
	"fmt"
)

// FunctionState is what the guest programmed into a function, as plain
// data to save and restore (a snapshot): its configuration space, where
// it placed the BARs, and its MSI-X table and pending bits. The function's
// identity, BAR sizes and capabilities are not in it: they come from the
// code that builds the function, which Restore checks against.
type FunctionState struct {
	// Config is the 256-byte configuration space; Restore takes from it
	// only the bits the guest may write.
	Config []byte
	// BARs is the programmed base of each BAR (0 for an absent BAR and
	// for the upper slot of a 64-bit one).
	BARs []uint64
	// MSIX is nil for a function without MSI-X.
	MSIX *MSIXState `json:",omitempty"`
}

// MSIXState is an MSI-X table and its pending-bit array (§6.8.2).
type MSIXState struct {
	Entries []MSIXEntry
	// Pending holds the PBA, one bit per vector.
	Pending []uint64
}

// MSIXEntry is one table entry (§6.8.2.6-9).
type MSIXEntry struct {
	AddrLo, AddrHi, Data uint32
	Masked               bool
}

// identityRanges are the read-only registers that say which function this
// is: vendor and device ID, revision and class, subsystem IDs.
var identityRanges = [][2]int{{RegVendorID, RegCommand}, {RegRevisionID, RegRevisionID + 4}, {RegSubsysVendor, RegSubsysID + 2}}

// State returns the function's state.
func (c *ConfigSpace) State() FunctionState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := FunctionState{Config: append([]byte(nil), c.data[:]...), BARs: make([]uint64, NumBARs)}
	for i := range c.bars {
		if c.bars[i].present {
			s.BARs[i] = c.bars[i].addr
		}
	}
	if m := c.msix; m != nil {
		m.mu.Lock()
		ms := &MSIXState{Pending: append([]uint64(nil), m.pending...)}
		for _, e := range m.entries {
			ms.Entries = append(ms.Entries, MSIXEntry{AddrLo: e.addrLo, AddrHi: e.addrHi, Data: e.data, Masked: e.control&msixVectorMasked != 0})
		}
		m.mu.Unlock()
		s.MSIX = ms
	}
	return s
}

// Restore puts s back into a function built the same way, after the bus
// added it (so its BARs map where the guest had them) and before the guest
// runs. Identity registers, the BAR layout and the MSI-X table size must
// match; the function's hooks see the restored Command and MSI-X Message
// Control registers as after a guest write, but no other write hook runs.
func (c *ConfigSpace) Restore(s FunctionState) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(s.Config) != ConfigSize || len(s.BARs) != NumBARs {
		return fmt.Errorf("pci %s: restore: %d configuration bytes and %d BARs, want %d and %d", c.name, len(s.Config), len(s.BARs), ConfigSize, NumBARs)
	}
	for _, r := range identityRanges {
		if !bytes.Equal(s.Config[r[0]:r[1]], c.data[r[0]:r[1]]) {
			return fmt.Errorf("pci %s: restore: saved registers %#x-%#x are % x, this function has % x", c.name, r[0], r[1]-1, s.Config[r[0]:r[1]], c.data[r[0]:r[1]])
		}
	}
	for i := range c.bars {
		b := &c.bars[i]
		upper := i > 0 && c.bars[i-1].present && c.bars[i-1].Is64
		if (!b.present || upper) && s.BARs[i] != 0 {
			return fmt.Errorf("pci %s: restore: BAR %d is not a BAR base here", c.name, i)
		}
	}
	if (c.msix == nil) != (s.MSIX == nil) {
		return fmt.Errorf("pci %s: restore: MSI-X state present %v, function has MSI-X %v", c.name, s.MSIX != nil, c.msix != nil)
	}
	if m := c.msix; m != nil && (len(s.MSIX.Entries) != len(m.entries) || len(s.MSIX.Pending) != len(m.pending)) {
		return fmt.Errorf("pci %s: restore: %d MSI-X vectors saved, function has %d", c.name, len(s.MSIX.Entries), len(m.entries))
	}
	for o := range c.data {
		if _, isBAR := barIndex(o); !isBAR {
			c.data[o] = c.data[o]&^c.wmask[o] | s.Config[o]&c.wmask[o]
		}
	}
	for i := range c.bars {
		if b := &c.bars[i]; b.present {
			b.addr = s.BARs[i] &^ (b.Size - 1)
			if !b.Is64 {
				b.addr &= 0xffff_ffff
			}
		}
	}
	c.updateMappingsLocked()
	if c.intx != nil {
		c.intx.commandWritten()
	}
	if m := c.msix; m != nil {
		m.mu.Lock()
		for i, e := range s.MSIX.Entries {
			ctl := uint32(0)
			if e.Masked {
				ctl = msixVectorMasked
			}
			// dirty: the routes are new and carry no message yet.
			m.entries[i] = msixEntry{addrLo: e.AddrLo, addrHi: e.AddrHi, data: e.Data, control: ctl, dirty: true}
		}
		copy(m.pending, s.MSIX.Pending)
		// A saved PBA's bits past the last vector name vectors that don't
		// exist; the guest must read them as zero.
		if extra := len(m.pending)*64 - len(m.entries); extra > 0 {
			m.pending[len(m.pending)-1] &= ^uint64(0) >> extra
		}
		m.mu.Unlock()
		m.controlWritten()
	}
	return nil
}
