package vmm

import (
	"errors"
	"sync"
)

// ErrNotRunning is returned by Pause and Resume on a machine not in Run.
var ErrNotRunning = errors.New("machine is not running")

// pauser parks vCPU threads between KVM_RUN calls.
type pauser struct {
	mu      sync.Mutex
	cond    *sync.Cond
	paused  bool
	parked  int
	running bool
	// startPaused: the vCPUs park before their first KVM_RUN until Resume
	// (a machine restored without resume_vm). Resume before Run clears it.
	startPaused bool
}

func newPauser() *pauser {
	p := &pauser{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// park blocks the calling vCPU thread while the machine is paused, unless
// it is stopping. settle runs first, under the pauser's lock (so Resume
// can't undo what it sets up meanwhile), to leave the vCPU between
// instructions.
func (p *pauser) park(stopping func() bool, settle func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		return
	}
	if settle != nil {
		settle()
	}
	p.parked++
	p.cond.Broadcast()
	for p.paused && !stopping() {
		p.cond.Wait()
	}
	p.parked--
}

// Pause stops every vCPU between instructions and returns once all are
// parked. Devices keep running; guest time (the TSC) keeps going, so the
// guest sees the pause as time passing.
func (m *Machine) Pause() error {
	p := m.pause
	p.mu.Lock()
	if !p.running {
		defer p.mu.Unlock()
		if p.startPaused {
			return nil // restored, not resumed yet: already paused
		}
		return ErrNotRunning
	}
	if p.paused {
		p.mu.Unlock()
		return nil
	}
	p.paused = true
	p.mu.Unlock()
	for _, v := range m.vcpus {
		v.kvm.SetImmediateExit(true)
		v.kick()
	}
	p.mu.Lock()
	for p.parked < len(m.vcpus) && p.running {
		p.cond.Wait()
	}
	p.mu.Unlock()
	return nil
}

// Resume restarts vCPUs parked by Pause.
func (m *Machine) Resume() error {
	p := m.pause
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running && p.startPaused {
		// A restored machine resumed before Run: it starts running.
		p.startPaused = false
		return nil
	}
	if !p.running {
		return ErrNotRunning
	}
	if !p.paused {
		return nil
	}
	for _, v := range m.vcpus {
		if !v.stopping.Load() {
			v.kvm.SetImmediateExit(false)
		}
	}
	p.paused = false
	p.cond.Broadcast()
	return nil
}

// Paused reports whether the machine is paused.
func (m *Machine) Paused() bool {
	p := m.pause
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused || !p.running && p.startPaused
}

// setRunning marks the machine running (its vCPU threads start) or not.
func (m *Machine) setRunning(on bool) {
	p := m.pause
	p.mu.Lock()
	p.running = on
	p.paused = on && p.startPaused
	if on {
		p.startPaused = false
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}
