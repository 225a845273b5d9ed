package serial

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

type fakeIRQ struct {
	mu     sync.Mutex
	levels []bool
}

func (f *fakeIRQ) SetLevel(high bool) error {
	f.mu.Lock()
	f.levels = append(f.levels, high)
	f.mu.Unlock()
	return nil
}

func (f *fakeIRQ) last() (bool, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.levels) == 0 {
		return false, 0
	}
	return f.levels[len(f.levels)-1], len(f.levels)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func rd(u *UART, off uint64) byte {
	b := []byte{0}
	u.Read(off, b)
	return b[0]
}

func wr(u *UART, off uint64, v byte) { u.Write(off, []byte{v}) }

func TestUARTRegisterTransitions(t *testing.T) {
	irq := &fakeIRQ{}
	out := &syncBuffer{}
	u := New(irq, out)
	defer u.Close()

	steps := []struct {
		name string
		do   func()
		reg  uint64
		want byte
	}{
		{"reset LSR: THR and transmitter empty, no data", nil, LSR, lsrTHRE | lsrTEMT},
		{"reset IIR: nothing pending", nil, IIR, iirNone},
		{"IER write is masked to 4 bits", func() { wr(u, IER, 0xff) }, IER, 0x0f},
		{"enabling ETBEI raises THRE at once", func() { wr(u, IER, 0); wr(u, IER, ierTHRE) }, IIR, iirTHRE},
		{"reading IIR cleared THRE", nil, IIR, iirNone},
		{"writing THR re-arms THRE", func() { wr(u, THR, 'x') }, IIR, iirTHRE},
		{"received byte sets DR", func() { u.QueueInput([]byte("ab")) }, LSR, lsrTHRE | lsrTEMT | lsrDR},
		{"RDA not reported while masked", func() { wr(u, IER, 0) }, IIR, iirNone},
		{"RDA reported when enabled", func() { wr(u, IER, ierRDA) }, IIR, iirRDA},
		{"RBR returns first byte", nil, RBR, 'a'},
		{"RBR returns second byte", nil, RBR, 'b'},
		{"drained: no interrupt", nil, IIR, iirNone},
		{"drained: DR clear", nil, LSR, lsrTHRE | lsrTEMT},
		{"FIFO enable shows in IIR", func() { wr(u, FCR, fcrEnable) }, IIR, iirNone | iirFIFOsOn},
		{"DLAB exposes divisor low", func() { wr(u, LCR, lcrDLAB); wr(u, DLL, 1) }, DLL, 1},
		{"DLAB exposes divisor high", func() { wr(u, DLM, 0) }, DLM, 0},
		{"DLAB off: IER back", func() { wr(u, LCR, 0x03) }, IER, ierRDA},
		{"scratch register", func() { wr(u, SCR, 0x5a) }, SCR, 0x5a},
		{"loopback maps MCR to MSR", func() { wr(u, MCR, mcrLoopback|mcrDTR|mcrOUT2) }, MSR, msrDSR | msrDCD},
		{"loopback echoes THR into RBR", func() { wr(u, THR, 'L') }, RBR, 'L'},
		{"normal mode MSR: carrier, DSR, CTS", func() { wr(u, MCR, mcrOUT2) }, MSR, msrDCD | msrDSR | msrCTS},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		if got := rd(u, s.reg); got != s.want {
			t.Fatalf("%s: reg %d = %#x, want %#x", s.name, s.reg, got, s.want)
		}
	}
	u.Flush()
	if got := out.String(); got != "x" {
		t.Fatalf("output %q, want %q (loopback bytes must not be transmitted)", got, "x")
	}
}

func TestUARTInterruptEdges(t *testing.T) {
	irq := &fakeIRQ{}
	u := New(irq, &syncBuffer{})
	defer u.Close()
	wr(u, IER, ierTHRE)
	if high, _ := irq.last(); !high {
		t.Fatal("THRE enable did not raise the line")
	}
	rd(u, IIR)
	if high, _ := irq.last(); high {
		t.Fatal("reading IIR did not lower the line")
	}
	_, before := irq.last()
	wr(u, THR, 'a')
	high, after := irq.last()
	if !high || after-before != 1 {
		// Line was low: one rising edge expected.
		t.Fatalf("THR write: levels %v", irq.levels[before:])
	}
	// Line already high: a THR write must still produce a fresh edge.
	_, before = irq.last()
	wr(u, THR, 'b')
	if got := irq.levels[before:]; len(got) != 2 || got[0] || !got[1] {
		t.Fatalf("THR write with line high: levels %v, want [false true]", got)
	}
}

func TestUARTInputBlocksWhenFull(t *testing.T) {
	u := New(nil, nil)
	big := bytes.Repeat([]byte{'z'}, rxCapacity+10)
	done := make(chan int)
	go func() {
		n, _ := u.QueueInput(big)
		done <- n
	}()
	select {
	case <-done:
		t.Fatal("QueueInput returned with the buffer full: input would be lost")
	case <-time.After(50 * time.Millisecond):
	}
	for i := 0; i < 10; i++ {
		rd(u, RBR)
	}
	select {
	case n := <-done:
		if n != len(big) {
			t.Fatalf("queued %d of %d bytes", n, len(big))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("QueueInput stayed blocked after the guest drained the buffer")
	}
	u.Close()
	if _, err := u.QueueInput(big); err == nil {
		t.Fatal("QueueInput after Close succeeded")
	}
}

func FuzzUARTRegisters(f *testing.F) {
	f.Add([]byte{1, 2, 3, 0x80, 0, 5})
	f.Fuzz(func(t *testing.T, ops []byte) {
		u := New(&fakeIRQ{}, &syncBuffer{})
		defer u.Close()
		u.QueueInput([]byte("in"))
		for i := 0; i+1 < len(ops); i += 2 {
			off := uint64(ops[i] & 7)
			if ops[i]&0x80 != 0 {
				rd(u, off)
			} else {
				wr(u, off, ops[i+1])
			}
		}
		// Every state the guest can reach is one Restore accepts.
		if err := New(nil, nil).Restore(u.State()); err != nil {
			t.Fatal(err)
		}
	})
}
