package rtc

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// guestView reads the index port and then every register through the
// data port, as a guest would, and selects the register the RTC had
// selected again.
func guestView(r *RTC) []byte {
	b := []byte{0}
	r.Read(0, b)
	sel := b[0]
	view := []byte{sel}
	for i := range CMOSSize {
		r.Write(0, []byte{byte(i)})
		r.Read(1, b)
		view = append(view, b[0])
	}
	r.Write(0, []byte{sel})
	r.Read(1, b)
	return append(view, b[0])
}

// TestStateRoundTrip writes CMOS RAM and selects a register through the
// ports, saves through JSON, restores into a new RTC on the same clock,
// and checks the guest reads the same everywhere.
func TestStateRoundTrip(t *testing.T) {
	clock := fixedClock(time.Date(2027, 3, 14, 15, 9, 26, 0, time.UTC))
	for _, tt := range []struct {
		name   string
		writes [][2]byte // index, value
		sel    byte      // written to the index port last
	}{
		{"reset", nil, 0},
		{"RAM written", [][2]byte{{0x0e, 0x11}, {0x10, 0x22}, {0x31, 0x33}, {0x33, 0x44}, {0x7f, 0xff}}, 0x10},
		{"clock writes ignored", [][2]byte{{regSeconds, 0x12}, {regCentury, 0x19}, {regB, 0x06}, {0x40, 0x01}}, regMinutes},
		{"NMI mask bit dropped", [][2]byte{{0x20 | 0x80, 0x5a}}, 0x20 | 0x80},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := New()
			r.now = clock
			for _, w := range tt.writes {
				r.Write(0, []byte{w[0]})
				r.Write(1, []byte{w[1]})
			}
			r.Write(0, []byte{tt.sel})
			raw, err := json.Marshal(r.State())
			if err != nil {
				t.Fatal(err)
			}
			var s State
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}
			r2 := New()
			r2.now = clock
			if err := r2.Restore(s); err != nil {
				t.Fatal(err)
			}
			if got, want := guestView(r2), guestView(r); string(got) != string(want) {
				t.Errorf("restored RTC shows the guest\n% x\nthe original\n% x", got, want)
			}
		})
	}
}

// TestRestoredTimeIsTheHosts: the time is read from the clock after a
// restore too; it is not part of the state.
func TestRestoredTimeIsTheHosts(t *testing.T) {
	r := New()
	r.now = fixedClock(time.Date(2027, 3, 14, 15, 9, 26, 0, time.UTC))
	r2 := New()
	r2.now = fixedClock(time.Date(2031, 7, 1, 8, 30, 0, 0, time.UTC))
	if err := r2.Restore(r.State()); err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	r2.Write(0, []byte{regYear})
	r2.Read(1, b)
	if b[0] != 0x31 {
		t.Errorf("year %#x after restore, want the clock's 0x31", b[0])
	}
}

// TestStateRefused: a state this RTC could not have been in is refused
// and changes nothing.
func TestStateRefused(t *testing.T) {
	r := New()
	r.Write(0, []byte{0x50})
	r.Write(1, []byte{0x77})
	good := r.State()
	for _, tt := range []struct {
		name string
		edit func(s *State)
		want string
	}{
		{"version", func(s *State) { s.Version = 0 }, "version"},
		{"index with the NMI bit", func(s *State) { s.Index = 0x80 }, "index"},
		{"short CMOS", func(s *State) { s.CMOS = s.CMOS[:64] }, "CMOS bytes"},
		{"long CMOS", func(s *State) { s.CMOS = append(s.CMOS, 0) }, "CMOS bytes"},
		{"no CMOS", func(s *State) { s.CMOS = nil }, "CMOS bytes"},
		{"seconds in RAM", func(s *State) { s.CMOS[regSeconds] = 1 }, "clock register"},
		{"status register D in RAM", func(s *State) { s.CMOS[regD] = regDValid }, "clock register"},
		{"century in RAM", func(s *State) { s.CMOS[regCentury] = 0x20 }, "clock register"},
	} {
		s := r.State()
		tt.edit(&s)
		if err := r.Restore(s); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
	}
	if got := r.State(); got.Index != good.Index || string(got.CMOS) != string(good.CMOS) {
		t.Errorf("a refused restore changed the RTC: %+v, was %+v", got, good)
	}
}
