package main

import (
	"runtime"
	"sync"
)

// spawner runs the fork of every container init on one OS thread that
// lives as long as the agent. Pdeathsig, which ties a container to the
// agent, fires when the *thread* that forked the child exits, not the
// process; Go retires threads that a goroutine left locked (as exec does
// after joining a container's namespaces), so forking from an arbitrary
// goroutine would kill containers at random.
type spawner struct {
	reqs chan func()
	once sync.Once
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan func())}
	go func() {
		runtime.LockOSThread()
		for f := range s.reqs {
			f()
		}
		// Returning while locked ends the thread, and with it (through
		// Pdeathsig) any container still running.
	}()
	return s
}

// run calls f on the spawner's thread and waits for it.
func (s *spawner) run(f func()) {
	done := make(chan struct{})
	s.reqs <- func() {
		defer close(done)
		f()
	}
	<-done
}

// stop ends the spawner's thread.
func (s *spawner) stop() { s.once.Do(func() { close(s.reqs) }) }
