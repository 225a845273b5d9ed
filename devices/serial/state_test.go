package serial

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// probe reads every register as a guest would, the divisor latch, then
// every byte of input, then transmits one byte, and returns what the
// guest saw. It leaves LCR as it found it.
func probe(u *UART) []byte {
	var seen []byte
	for _, r := range []uint64{LSR, MSR, LCR, MCR, SCR, IER, IIR, IIR} {
		seen = append(seen, rd(u, r))
	}
	lcr := rd(u, LCR)
	wr(u, LCR, lcr|lcrDLAB)
	seen = append(seen, rd(u, DLL), rd(u, DLM))
	wr(u, LCR, lcr&^lcrDLAB)
	for i := 0; i <= MaxStateInput && rd(u, LSR)&lsrDR != 0; i++ {
		seen = append(seen, rd(u, IIR), rd(u, RBR))
	}
	seen = append(seen, rd(u, IIR), rd(u, LSR))
	wr(u, THR, 'z')
	seen = append(seen, rd(u, IIR), rd(u, IIR), rd(u, RBR))
	wr(u, LCR, lcr)
	return seen
}

// TestStateRoundTrip drives a UART into a state through its ports, saves
// it through JSON, restores it into a new UART, and checks that the guest
// sees the same registers, the same input, the same interrupt line and
// the same behaviour afterwards.
func TestStateRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name  string
		drive func(u *UART)
		irq   bool // the line's level when the state is taken
	}{
		{"reset", func(*UART) {}, false},
		{"divisor latch open", func(u *UART) {
			wr(u, LCR, lcrDLAB|0x03)
			wr(u, DLL, 0x01)
			wr(u, DLM, 0x02)
		}, false},
		{"input with RDA enabled", func(u *UART) {
			wr(u, LCR, 0x03)
			wr(u, FCR, fcrEnable)
			wr(u, IER, ierRDA|ierRLS)
			u.QueueInput([]byte("hello"))
			rd(u, RBR)
		}, true},
		{"THR empty latched", func(u *UART) {
			wr(u, IER, ierTHRE)
			wr(u, SCR, 0xa5)
		}, true},
		{"THR empty read from IIR", func(u *UART) {
			wr(u, IER, ierTHRE|ierRDA)
			rd(u, IIR)
		}, false},
		{"input masked", func(u *UART) {
			wr(u, MCR, mcrDTR|mcrRTS|mcrOUT2)
			u.QueueInput([]byte{0, 0xff, '\n'})
		}, false},
		{"loopback echo", func(u *UART) {
			wr(u, MCR, mcrLoopback|mcrRTS|mcrOUT1)
			wr(u, IER, ierRDA)
			wr(u, THR, 'L')
			wr(u, THR, 'B')
		}, true},
		{"input buffer full", func(u *UART) {
			wr(u, IER, ierRDA|ierTHRE)
			rd(u, IIR)
			u.QueueInput(bytes.Repeat([]byte("0123456789abcdef"), MaxStateInput/16))
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			irq, out := &fakeIRQ{}, &syncBuffer{}
			u := New(irq, out)
			defer u.Close()
			wr(u, THR, 'o') // output before the state: not state
			tt.drive(u)
			if high, _ := irq.last(); high != tt.irq {
				t.Fatalf("line %v before the state is taken, want %v", high, tt.irq)
			}
			raw, err := json.Marshal(u.State())
			if err != nil {
				t.Fatal(err)
			}
			var s State
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}

			irq2, out2 := &fakeIRQ{}, &syncBuffer{}
			u2 := New(irq2, out2)
			defer u2.Close()
			if err := u2.Restore(s); err != nil {
				t.Fatal(err)
			}
			if high, n := irq2.last(); n == 0 || high != tt.irq {
				t.Errorf("restored line %v after %d drives, want %v driven", high, n, tt.irq)
			}

			_, before := irq.last()
			_, before2 := irq2.last()
			want, got := probe(u), probe(u2)
			if !bytes.Equal(got, want) {
				t.Errorf("the restored UART shows the guest\n% x\nthe original\n% x", got, want)
			}
			if a, b := irq.levels[before:], irq2.levels[before2:]; !slices.Equal(a, b) {
				t.Errorf("interrupt line after restore %v, original %v", b, a)
			}
			u.Flush()
			u2.Flush()
			if got, want := out2.String(), strings.TrimPrefix(out.String(), "o"); got != want {
				t.Errorf("restored UART transmitted %q, want %q", got, want)
			}
		})
	}
}

// TestStateRefused: a state this UART could not have been in is refused
// and changes nothing.
func TestStateRefused(t *testing.T) {
	irq := &fakeIRQ{}
	u := New(irq, nil)
	wr(u, SCR, 0x42)
	u.QueueInput([]byte("ab"))
	good := u.State()
	for _, tt := range []struct {
		name string
		edit func(s *State)
		want string
	}{
		{"version", func(s *State) { s.Version = StateVersion + 1 }, "version"},
		{"no version", func(s *State) { s.Version = 0 }, "version"},
		{"IER high bits", func(s *State) { s.IER = 0x10 }, "IER"},
		{"MCR high bits", func(s *State) { s.MCR = 0x20 }, "MCR"},
		{"too much input", func(s *State) { s.Input = make([]byte, MaxStateInput+1) }, "receive buffer"},
		{"line high, nothing pending", func(s *State) { s.IRQ = true }, "interrupt line"},
		{"line low, data pending", func(s *State) { s.IER = ierRDA }, "interrupt line"},
		{"line low, THRE pending", func(s *State) { s.IER, s.THREPending = ierTHRE, true }, "interrupt line"},
	} {
		s := u.State()
		s.Input = slices.Clone(s.Input)
		tt.edit(&s)
		if err := u.Restore(s); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
	}
	if got := u.State(); !stateEqual(got, good) {
		t.Errorf("a refused restore changed the UART: %+v, was %+v", got, good)
	}
	if _, n := irq.last(); n != 0 {
		t.Errorf("a refused restore drove the line %d times", n)
	}
	u.Close()
	if err := u.Restore(good); err == nil {
		t.Error("restore into a closed UART succeeded")
	}
}

func stateEqual(a, b State) bool {
	ra, _ := json.Marshal(a)
	rb, _ := json.Marshal(b)
	return bytes.Equal(ra, rb)
}

// TestRestoreWakesInput: restoring a shorter input buffer makes room for
// a host writer blocked on a full one.
func TestRestoreWakesInput(t *testing.T) {
	u := New(nil, nil)
	defer u.Close()
	s := u.State()
	u.QueueInput(make([]byte, MaxStateInput))
	done := make(chan error)
	go func() {
		_, err := u.QueueInput([]byte("x"))
		done <- err
	}()
	if err := u.Restore(s); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a host writer stayed blocked after the restore emptied the buffer")
	}
	if got := rd(u, RBR); got != 'x' {
		t.Errorf("RBR %#x after restore and input, want 'x'", got)
	}
}
