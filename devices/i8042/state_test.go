package i8042

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// drain reads the data port while the status says output is full, and
// returns the bytes and the number of interrupts the reads caused.
func drain(c *Controller, irq *fakeIRQ) (out []byte, edges int) {
	before := irq.edges
	b := []byte{0}
	for range MaxStateOutput + 1 {
		c.Command().Read(0, b)
		if b[0]&statusOutputFull == 0 {
			break
		}
		c.Data().Read(0, b)
		out = append(out, b[0])
	}
	return out, irq.edges - before
}

// probe is what a guest sees of the controller: the status, the output
// and its interrupts, the effect of a data byte (which completes a
// pending command), the command byte, and a Ctrl+Alt+Del from the host.
func probe(c *Controller, irq *fakeIRQ) []byte {
	b := []byte{0}
	c.Command().Read(0, b)
	view := []byte{b[0]}
	out, edges := drain(c, irq)
	view = append(append(view, out...), byte(edges))
	c.Data().Write(0, []byte{ctrKbdInt | 0x20})
	c.Command().Write(0, []byte{cmdReadCommandByte})
	out, edges = drain(c, irq)
	view = append(append(view, out...), byte(edges))
	if err := c.SendCtrlAltDel(); err != nil {
		view = append(view, 0xee)
	}
	out, edges = drain(c, irq)
	return append(append(view, out...), byte(edges))
}

// TestStateRoundTrip drives a controller into a state through its ports,
// saves it through JSON, restores it into a new controller, and checks
// that the guest sees the same from both.
func TestStateRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name  string
		drive func(c *Controller)
		pulse bool // output waits with keyboard interrupts on
	}{
		{"reset", func(*Controller) {}, false},
		{"self test answered", func(c *Controller) {
			c.Command().Write(0, []byte{cmdSelfTest})
			c.Command().Write(0, []byte{cmdInterfaceTest})
		}, false},
		{"command byte set, output waiting", func(c *Controller) {
			c.Command().Write(0, []byte{cmdWriteCommandByte})
			c.Data().Write(0, []byte{ctrKbdInt | ctrTranslate | statusSystemFlag})
			c.Command().Write(0, []byte{cmdReadCommandByte})
		}, true},
		{"write command byte pending", func(c *Controller) {
			c.Command().Write(0, []byte{cmdWriteCommandByte})
		}, false},
		{"Ctrl+Alt+Del half read", func(c *Controller) {
			c.Command().Write(0, []byte{cmdWriteCommandByte})
			c.Data().Write(0, []byte{ctrKbdInt})
			if err := c.SendCtrlAltDel(); err != nil {
				t.Fatal(err)
			}
			b := []byte{0}
			for range 5 {
				c.Data().Read(0, b)
			}
		}, true},
		{"output full", func(c *Controller) {
			for range MaxStateOutput + 3 {
				c.Command().Write(0, []byte{cmdSelfTest})
			}
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			irq := &fakeIRQ{}
			c := New(irq, nil)
			tt.drive(c)
			raw, err := json.Marshal(c.State())
			if err != nil {
				t.Fatal(err)
			}
			var s State
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}
			irq2 := &fakeIRQ{}
			c2 := New(irq2, nil)
			if err := c2.Restore(s); err != nil {
				t.Fatal(err)
			}
			want := 0
			if tt.pulse {
				want = 1
			}
			if irq2.edges != want || irq2.high {
				t.Errorf("restore pulsed IRQ 1 %d times (left high %v), want %d", irq2.edges, irq2.high, want)
			}
			if got, want := probe(c2, irq2), probe(c, irq); !slices.Equal(got, want) {
				t.Errorf("restored controller shows the guest\n% x\nthe original\n% x", got, want)
			}
		})
	}
}

// TestStateRefused: a state this controller could not have been in is
// refused and changes nothing.
func TestStateRefused(t *testing.T) {
	c := New(nil, nil)
	c.Command().Write(0, []byte{cmdSelfTest})
	good := c.State()
	for _, tt := range []struct {
		name string
		edit func(s *State)
		want string
	}{
		{"version", func(s *State) { s.Version = 2 }, "version"},
		{"pending self test", func(s *State) { s.PendingCommand = cmdSelfTest }, "pending command"},
		{"pending reset", func(s *State) { s.PendingCommand = cmdPulseReset }, "pending command"},
		{"output overflow", func(s *State) { s.Output = make([]byte, MaxStateOutput+1) }, "output bytes"},
	} {
		s := c.State()
		tt.edit(&s)
		if err := c.Restore(s); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
	}
	if got := c.State(); got.CommandByte != good.CommandByte || got.PendingCommand != good.PendingCommand || !slices.Equal(got.Output, good.Output) {
		t.Errorf("a refused restore changed the controller: %+v, was %+v", got, good)
	}
}
