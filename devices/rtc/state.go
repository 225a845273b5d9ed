package rtc

import "fmt"

// StateVersion is the version of State this code writes and restores.
const StateVersion = 1

// State is the RTC as plain data, to save and restore (a snapshot): the
// selected register and the CMOS RAM the guest wrote.
//
// The time is not state: every read of a clock register reads the host's
// clock, so a restored guest reads the host's time then, not the time it
// was saved at plus the time it ran. A guest that only reads the RTC at
// boot (Linux, without an RTC driver's periodic sync) keeps its own clock
// from its clock source after a restore, behind the host's by as long as
// the snapshot waited; the RTC then disagrees with it, as after a resume
// from hibernation. Registers A-D are constants here and not state either.
type State struct {
	Version int
	// Index is the register selected through port 0x70 (the NMI mask bit
	// is not kept: this RTC ignores it).
	Index byte
	// CMOS holds the CMOSSize bytes of CMOS RAM by register index; the
	// clock and status registers' bytes (0x00-0x0d and the century at
	// 0x32) are always zero: they are not RAM.
	CMOS []byte
}

// State returns the RTC's state.
func (r *RTC) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return State{Version: StateVersion, Index: r.index, CMOS: append([]byte(nil), r.cmos[:]...)}
}

// Restore puts the RTC into the state s. Call it before the vCPUs run: a
// guest's index write racing with it may select another register than the
// guest then reads. A refused state changes nothing.
func (r *RTC) Restore(s State) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("rtc: restore: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.index = s.Index
	copy(r.cmos[:], s.CMOS)
	return nil
}

// check refuses a state this RTC could not have been in.
func (s State) check() error {
	switch {
	case s.Version != StateVersion:
		return fmt.Errorf("state version %d, this build restores %d", s.Version, StateVersion)
	case s.Index&^indexMask != 0:
		return fmt.Errorf("register index %#x beyond %#x", s.Index, indexMask)
	case len(s.CMOS) != CMOSSize:
		return fmt.Errorf("%d CMOS bytes, want %d", len(s.CMOS), CMOSSize)
	}
	for i, b := range s.CMOS {
		if !isRAM(byte(i)) && b != 0 {
			return fmt.Errorf("CMOS register %#x holds %#x, but it is a clock register, not RAM", i, b)
		}
	}
	return nil
}

// isRAM reports whether register i is CMOS RAM, which the guest may
// write, rather than a clock or status register.
func isRAM(i byte) bool { return i > regD && i != regCentury }
