package serial

import (
	"io"
	"sync"
)

// outputCapacity bounds guest output waiting for a slow host writer; past it
// the transmitting vCPU waits (back-pressure) instead of losing output.
const outputCapacity = 64 << 10

// asyncWriter moves guest output to the host writer on its own goroutine.
type asyncWriter struct {
	w       io.Writer
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	writing bool
	closed  bool
	done    chan struct{}
}

func newAsyncWriter(w io.Writer) *asyncWriter {
	a := &asyncWriter{w: w, done: make(chan struct{})}
	a.cond = sync.NewCond(&a.mu)
	go a.loop()
	return a
}

func (a *asyncWriter) put(b byte) {
	a.mu.Lock()
	for len(a.buf) >= outputCapacity && !a.closed {
		a.cond.Wait()
	}
	if !a.closed {
		a.buf = append(a.buf, b)
		a.cond.Broadcast()
	}
	a.mu.Unlock()
}

func (a *asyncWriter) loop() {
	defer close(a.done)
	a.mu.Lock()
	for {
		for len(a.buf) == 0 && !a.closed {
			a.cond.Wait()
		}
		if len(a.buf) == 0 && a.closed {
			a.mu.Unlock()
			return
		}
		chunk := a.buf
		a.buf = nil
		a.writing = true
		a.mu.Unlock()
		_, _ = a.w.Write(chunk) // a console that fails to print can't be helped
		a.mu.Lock()
		a.writing = false
		a.cond.Broadcast()
	}
}

// Flush waits until everything written so far reached the writer.
func (a *asyncWriter) Flush() {
	a.mu.Lock()
	for (len(a.buf) > 0 || a.writing) && !a.closed {
		a.cond.Wait()
	}
	a.mu.Unlock()
}

// Close flushes and stops the goroutine.
func (a *asyncWriter) Close() error {
	a.mu.Lock()
	a.closed = true
	a.cond.Broadcast()
	a.mu.Unlock()
	<-a.done
	return nil
}
