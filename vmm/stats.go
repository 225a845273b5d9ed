package vmm

import (
	"sync/atomic"

	"github.com/govmm/vmm/kvm"
)

// exitCounterSlots covers every KVM exit reason number in use today.
const exitCounterSlots = 64

// exitCounters counts vCPU exits by reason without locks.
type exitCounters [exitCounterSlots]atomic.Uint64

func (c *exitCounters) add(r kvm.ExitReason) {
	if int(r) < len(c) {
		c[r].Add(1)
	}
}

// Stats is a snapshot of the machine's counters.
type Stats struct {
	// Exits counts vCPU exits by KVM exit reason name.
	Exits map[string]uint64
}

// Stats returns the machine's counters so far.
func (m *Machine) Stats() Stats {
	s := Stats{Exits: map[string]uint64{}}
	for i := range m.exits {
		if n := m.exits[i].Load(); n > 0 {
			s.Exits[kvm.ExitReason(i).String()] = n
		}
	}
	return s
}
