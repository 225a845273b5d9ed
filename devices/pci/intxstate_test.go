package pci

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/govmm/vmm/devices"
)

// pinFunc is a function with an INTx pin whose condition the test sets,
// as virtio's ISR status would be, and one MSI-X vector.
type pinFunc struct {
	intxFunc
	cond atomic.Bool
}

// pinBus is a bus with a function without a pin in slot 1 and n pin
// functions after it (slots 2...), routed to GSIs 16-23.
type pinBus struct {
	bus   *Bus
	io    cfgIO
	lines *fakeLines
	funcs []*pinFunc
}

func newPinBus(t *testing.T, n int, lines *fakeLines) *pinBus {
	t.Helper()
	pb := &pinBus{lines: lines}
	c := BusConfig{MMIO: devices.NewBus("mmio"), Mem32Start: 0xc000_0000, Mem32End: 0xe000_0000, INTxRouting: INTxRouting{FirstGSI: 16, Count: 8}}
	if lines != nil {
		c.INTx = lines
	}
	pb.bus = NewBusWith(c)
	pb.io = cfgIO{pb.bus}
	if _, err := pb.bus.Add(newTestFunc(t, &alloc{})); err != nil {
		t.Fatal(err)
	}
	for range n {
		f := &pinFunc{intxFunc: intxFunc{cfg: NewConfigSpace("pin", Identity{VendorID: 0x1234, DeviceID: 2})}}
		if err := f.cfg.SetBAR(0, BAR{Size: 0x4000, Handler: fillDev{}}); err != nil {
			t.Fatal(err)
		}
		var err error
		if f.intx, err = AddINTx(f.cfg, f.cond.Load, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := AddMSIX(f.cfg, 0, 0x1000, 0x2000, 1, &alloc{}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := pb.bus.Add(f); err != nil {
			t.Fatal(err)
		}
		pb.funcs = append(pb.funcs, f)
	}
	return pb
}

func (pb *pinBus) dev(i int) uint32 { return uint32(i + 2) }

// interruptStatus is the function's Status register Interrupt Status bit
// as the guest reads it.
func (pb *pinBus) interruptStatus(i int) bool {
	return pb.io.read(pb.dev(i), RegStatus, 2)&StatusInterrupt != 0
}

// pinSetup is what the guest and the device did to one function.
type pinSetup struct {
	cond, intxDisable, msix bool
}

// TestINTxStateRoundTrip sets up pins as a guest and its devices would
// (conditions raised, INTx Disable, MSI-X on), saves the functions and
// the pins through JSON, restores them on a new bus, and checks that
// RestoreINTx drove every line to the level it had, whatever the pin
// believed, and that the pins behave alike afterwards.
func TestINTxStateRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		pins []pinSetup
	}{
		{"all quiet", []pinSetup{{}, {}}},
		{"one asserted", []pinSetup{{}, {cond: true}}},
		{"INTx Disable holds it low", []pinSetup{{cond: true, intxDisable: true}}},
		{"MSI-X holds it low", []pinSetup{{cond: true, msix: true}}},
		{"mixed", []pinSetup{{cond: true}, {cond: true, intxDisable: true}, {}, {cond: true, msix: true}, {cond: true}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newPinBus(t, len(tt.pins), &fakeLines{})
			for i, p := range tt.pins {
				dev := a.dev(i)
				if p.intxDisable {
					a.io.write(dev, RegCommand, 2, CommandINTxDisable)
				}
				if p.msix {
					a.io.write(dev, a.io.read(dev, RegCapPtr, 1)+2, 2, msixControlEnable)
				}
				a.funcs[i].cond.Store(p.cond)
				a.funcs[i].intx.Update()
				if want := p.cond && !p.intxDisable && !p.msix; a.lines.lines[i].high != want {
					t.Fatalf("pin %d: line %v before the state is taken, want %v", i, a.lines.lines[i].high, want)
				}
			}
			raw, err := json.Marshal(a.bus.INTxState())
			if err != nil {
				t.Fatal(err)
			}
			var s INTxState
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}
			if len(s.Pins) != len(tt.pins) {
				t.Fatalf("%d pins saved, want %d", len(s.Pins), len(tt.pins))
			}

			b := newPinBus(t, len(tt.pins), &fakeLines{})
			for i, f := range b.funcs {
				if err := f.cfg.Restore(a.funcs[i].cfg.State()); err != nil {
					t.Fatal(err)
				}
				// The device's own restore brings its condition back
				// without telling the pin (unlike virtio's, which does).
				f.cond.Store(a.funcs[i].cond.Load())
			}
			driven := make([]int, len(tt.pins))
			for i, l := range b.lines.lines {
				driven[i] = l.asserts + l.deasserts
			}
			if err := b.bus.RestoreINTx(s); err != nil {
				t.Fatal(err)
			}
			for i, l := range b.lines.lines {
				if l.asserts+l.deasserts == driven[i] {
					t.Errorf("pin %d: line not driven by the restore", i)
				}
				if want := a.lines.lines[i]; l.high != want.high || l.gsi != want.gsi {
					t.Errorf("pin %d: restored line GSI %d high %v, want GSI %d high %v", i, l.gsi, l.high, want.gsi, want.high)
				}
				if got, want := b.interruptStatus(i), a.interruptStatus(i); got != want {
					t.Errorf("pin %d: Interrupt Status %v after restore, want %v", i, got, want)
				}
			}
			// The condition clearing lowers both alike.
			for _, pb := range []*pinBus{a, b} {
				for _, f := range pb.funcs {
					f.cond.Store(false)
					f.intx.Update()
				}
			}
			for i, l := range b.lines.lines {
				if l.high || a.lines.lines[i].high {
					t.Errorf("pin %d: line still high after the condition cleared (restored %v, original %v)", i, l.high, a.lines.lines[i].high)
				}
			}
		})
	}
}

// TestINTxStateRefused: pins that are not this bus's, or saved asserted
// while their functions now leave them low, are refused, and no line is
// driven.
func TestINTxStateRefused(t *testing.T) {
	pb := newPinBus(t, 2, &fakeLines{})
	pb.funcs[1].cond.Store(true)
	pb.funcs[1].intx.Update()
	good := pb.bus.INTxState()
	for _, tt := range []struct {
		name string
		edit func(s *INTxState)
		want string
	}{
		{"version", func(s *INTxState) { s.Version = 0 }, "version"},
		{"too many", func(s *INTxState) { s.Pins = make([]INTxPin, MaxDevices+1) }, "pins saved"},
		{"negative device", func(s *INTxState) { s.Pins[0].Device = -1 }, "outside"},
		{"device past the bus", func(s *INTxState) { s.Pins[0].Device = MaxDevices }, "outside"},
		{"function without a pin", func(s *INTxState) { s.Pins[0].Device = 1 }, "no INTx pin"},
		{"empty slot", func(s *INTxState) { s.Pins[0].Device = 9 }, "no INTx pin"},
		{"twice", func(s *INTxState) { s.Pins[1] = s.Pins[0] }, "twice"},
		{"other GSI", func(s *INTxState) { s.Pins[0].GSI++ }, "GSI"},
		{"missing", func(s *INTxState) { s.Pins = s.Pins[1:] }, "not saved"},
		{"asserted, function quiet", func(s *INTxState) { s.Pins[0].Asserted = true }, "leaves it low"},
	} {
		s := good
		s.Pins = append([]INTxPin(nil), good.Pins...)
		tt.edit(&s)
		before := make([]int, len(pb.lines.lines))
		for i, l := range pb.lines.lines {
			before[i] = l.asserts + l.deasserts
		}
		if err := pb.bus.RestoreINTx(s); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
		for i, l := range pb.lines.lines {
			if l.asserts+l.deasserts != before[i] {
				t.Errorf("%s: refused state drove line %d", tt.name, i)
			}
		}
	}
	if err := pb.bus.RestoreINTx(good); err != nil {
		t.Errorf("the bus's own state refused: %v", err)
	}
	// Saved low, restored high: what a virtio transport's restore does
	// when it signals its queues again. Accepted, and the line follows
	// the function.
	quiet := good
	quiet.Pins = append([]INTxPin(nil), good.Pins...)
	quiet.Pins[1].Asserted = false
	if err := pb.bus.RestoreINTx(quiet); err != nil {
		t.Errorf("a pin saved low whose function now asserts it: %v", err)
	}
	if !pb.lines.lines[1].high {
		t.Error("the asserted pin's line was left low")
	}

	// Pins the bus does not connect (no interrupt routing) are in no
	// state, and a state naming one is refused.
	bare := newPinBus(t, 1, nil)
	if s := bare.bus.INTxState(); len(s.Pins) != 0 {
		t.Errorf("unconnected pins saved: %+v", s.Pins)
	}
	if err := bare.bus.RestoreINTx(INTxState{Version: INTxStateVersion, Pins: []INTxPin{{Device: 2, GSI: 18}}}); err == nil || !strings.Contains(err.Error(), "not connected") {
		t.Errorf("state naming an unconnected pin: %v", err)
	}
}
