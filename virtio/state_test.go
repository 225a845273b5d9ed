package virtio_test

import (
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// wantUsed pops the next used entry and checks it.
func wantUsed(t *testing.T, d *virtiotest.Driver, id, n uint32) {
	t.Helper()
	e, ok := d.WaitUsed(5 * time.Second)
	if !ok || e.ID != id || e.Len != n {
		t.Fatalf("used entry %+v (present %v), want id %d len %d", e, ok, id, n)
	}
}

// TestPCIStateRoundTrip runs traffic, pauses, saves the transport's state
// through JSON, tears the transport down and builds a new one on a new bus
// from the state: the driver's view is back and traffic goes on in the
// same rings from the right indices, with EVENT_IDX suppression intact.
func TestPCIStateRoundTrip(t *testing.T) {
	drv := newDriver(t)
	e := &echoDevice{idle: make(chan struct{}, 16)}
	p := virtiotest.NewPCI(t, e, drv.Mem)
	features := uint64(virtio.FeatureVersion1 | virtio.FeatureEventIdx | 1<<3)
	p.Setup(features, drv.Ring())
	buf := drv.Alloc(4096, 8)
	round := func(p *virtiotest.PCI, idle chan struct{}, i int) {
		t.Helper()
		sent := p.MSI.Sent(0)
		drv.SetUsedEvent(uint16(i))
		head := drv.Chain(virtiotest.Buf{Addr: buf, Len: 8}, virtiotest.Buf{Addr: buf + 8, Len: uint32(100 + i), Write: true})
		drv.Post(head)
		p.Notify(0)
		select {
		case <-idle:
		case <-time.After(5 * time.Second):
			t.Fatal("device did not drain the queue")
		}
		wantUsed(t, drv, uint32(head), uint32(100+i))
		if !p.MSI.WaitSent(0, sent+1, 5*time.Second) {
			t.Fatalf("round %d: no notification", i)
		}
	}
	for i := range 3 {
		round(p, e.idle, i)
	}
	if _, err := p.Transport.State(); err == nil {
		t.Fatal("State of a running device did not fail")
	}
	if err := p.Transport.Pause(); err != nil {
		t.Fatal(err)
	}
	st, err := p.Transport.State()
	if err != nil {
		t.Fatal(err)
	}
	st = virtiotest.JSONCopy(t, st)
	q := st.Queues[0]
	if q.NextAvail != 3 || q.NextUsed != 3 || q.SignalledUsed != 3 || !q.Enabled || q.DescAddr != drv.Desc || q.Vector != 0 {
		t.Fatalf("queue state %+v", q)
	}
	if st.DriverFeatures != features || st.Status&virtio.StatusDriverOK == 0 || st.ConfigVector != 1 {
		t.Fatalf("transport state %+v", st)
	}
	if err := p.Transport.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := &echoDevice{idle: make(chan struct{}, 16)}
	p2 := virtiotest.NewPCI(t, e2, drv.Mem)
	if err := p2.Transport.Restore(st); err != nil {
		t.Fatal(err)
	}
	if got := p2.Status(); got != st.Status {
		t.Errorf("status %#x after restore, want %#x", got, st.Status)
	}
	// The restore re-sends every queue's notification.
	if !p2.MSI.WaitSent(0, 1, 5*time.Second) {
		t.Error("no notification on restore")
	}
	for i := 3; i < 6; i++ {
		round(p2, e2.idle, i)
	}
	if e, ok := drv.PopUsed(); ok {
		t.Errorf("extra used entry %+v", e)
	}
	// A used entry the driver didn't ask to hear about sends nothing.
	sent := p2.MSI.Sent(0)
	head := drv.Chain(virtiotest.Buf{Addr: buf, Len: 8, Write: true})
	drv.Post(head)
	p2.Notify(0)
	<-e2.idle
	wantUsed(t, drv, uint32(head), 8)
	if got := p2.MSI.Sent(0); got != sent {
		t.Errorf("%d notifications with used_event behind, want none", got-sent)
	}
}

// holdDevice pops every chain at activation and on each kick, and
// returns only those keep says to; the rest it holds, as a receive queue
// holds buffers until a frame comes, and drops on Reset.
type holdDevice struct {
	worker
	keep    func(head uint16) bool
	resumed []bool
	idle    chan struct{}
}

func (*holdDevice) Type() uint16                  { return 42 }
func (*holdDevice) Features() uint64              { return 0 }
func (*holdDevice) QueueSizes() []uint16          { return []uint16{qsize} }
func (*holdDevice) ReadConfig(uint64, []byte)     {}
func (*holdDevice) WriteConfig(uint64, []byte)    {}
func (h *holdDevice) setKeep(f func(uint16) bool) { h.mu.Lock(); h.keep = f; h.mu.Unlock() }

func (h *holdDevice) Activate(a *virtio.Activation) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resumed = append(h.resumed, a.Resumed)
	h.start(a, true, h.idle, func(q *virtio.Queue, c virtio.Chain) {
		h.mu.Lock()
		keep := h.keep(c.Head)
		h.mu.Unlock()
		if keep {
			q.Push(c.Head, uint32(c.WriteLen))
		}
	})
	return nil
}

// TestPCIPauseHandsBackChains: chains a device held when paused go back
// to the driver exactly once: the ones the available ring lists last are
// read again on resume, any others come back with nothing written.
func TestPCIPauseHandsBackChains(t *testing.T) {
	for _, tt := range []struct {
		name string
		// returned at first: heads 0-3 are posted
		first func(uint16) bool
		// used entries before and after the resume: head, length
		before, after [][2]uint32
		nextAvail     uint16
	}{
		{"in order", func(h uint16) bool { return h == 0 }, [][2]uint32{{0, 16}}, [][2]uint32{{1, 16}, {2, 16}, {3, 16}}, 1},
		{"out of order", func(h uint16) bool { return h == 0 || h == 2 }, [][2]uint32{{0, 16}, {2, 16}, {1, 0}}, [][2]uint32{{3, 16}}, 3},
		{"all held", func(uint16) bool { return false }, nil, [][2]uint32{{0, 16}, {1, 16}, {2, 16}, {3, 16}}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			drv := newDriver(t)
			h := &holdDevice{keep: tt.first, idle: make(chan struct{}, 16)}
			p := virtiotest.NewPCI(t, h, drv.Mem)
			p.Setup(virtio.FeatureVersion1, drv.Ring())
			<-h.idle
			buf := drv.Alloc(64, 8)
			for range 4 {
				drv.Post(drv.Chain(virtiotest.Buf{Addr: buf, Len: 16, Write: true}))
			}
			p.Notify(0)
			<-h.idle
			if err := p.Transport.Pause(); err != nil {
				t.Fatal(err)
			}
			for _, u := range tt.before {
				wantUsed(t, drv, u[0], u[1])
			}
			if e, ok := drv.PopUsed(); ok {
				t.Fatalf("used entry %+v beyond the expected", e)
			}
			st, err := p.Transport.State()
			if err != nil {
				t.Fatal(err)
			}
			if q := st.Queues[0]; q.NextAvail != tt.nextAvail || q.NextUsed != uint16(len(tt.before)) {
				t.Fatalf("paused queue at avail %d used %d, want %d and %d", q.NextAvail, q.NextUsed, tt.nextAvail, len(tt.before))
			}
			h.setKeep(func(uint16) bool { return true })
			if err := p.Transport.Resume(); err != nil {
				t.Fatal(err)
			}
			<-h.idle
			for _, u := range tt.after {
				wantUsed(t, drv, u[0], u[1])
			}
			if e, ok := drv.PopUsed(); ok {
				t.Fatalf("used entry %+v beyond the expected", e)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			if len(h.resumed) != 2 || h.resumed[0] || !h.resumed[1] {
				t.Errorf("activations resumed %v, want [false true]", h.resumed)
			}
		})
	}
}

// TestPCIPausedReset: a driver reset while paused forgets everything,
// and the next DRIVER_OK is a fresh start.
func TestPCIPausedReset(t *testing.T) {
	drv := newDriver(t)
	h := &holdDevice{keep: func(uint16) bool { return true }, idle: make(chan struct{}, 16)}
	p := virtiotest.NewPCI(t, h, drv.Mem)
	p.Setup(virtio.FeatureVersion1, drv.Ring())
	<-h.idle
	if err := p.Transport.Pause(); err != nil {
		t.Fatal(err)
	}
	p.Setup(virtio.FeatureVersion1, drv.Ring())
	<-h.idle
	if err := p.Transport.Resume(); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.resumed) != 2 || h.resumed[1] {
		t.Errorf("activations resumed %v, want [false false]", h.resumed)
	}
}

// TestPCIRestoreRefused: state that does not fit the transport or device
// is refused before anything changes.
func TestPCIRestoreRefused(t *testing.T) {
	drv := newDriver(t)
	e := &echoDevice{idle: make(chan struct{}, 16)}
	p := virtiotest.NewPCI(t, e, drv.Mem)
	p.Setup(virtio.FeatureVersion1|1<<3, drv.Ring())
	if err := p.Transport.Pause(); err != nil {
		t.Fatal(err)
	}
	good, err := p.Transport.State()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		edit func(s *virtio.PCIState)
		want string
	}{
		{"version", func(s *virtio.PCIState) { s.Version++ }, "version"},
		{"type", func(s *virtio.PCIState) { s.DeviceType = 1 }, "type"},
		{"queues", func(s *virtio.PCIState) { s.Queues = append(s.Queues, s.Queues[0]) }, "queues"},
		{"features", func(s *virtio.PCIState) { s.DriverFeatures |= 1 << 7 }, "does not offer"},
		{"queue size", func(s *virtio.PCIState) { s.Queues[0].Size = 2 * qsize }, "maximum"},
		{"vector", func(s *virtio.PCIState) { s.Queues[0].Vector = 9 }, "vector"},
		{"driver ok alone", func(s *virtio.PCIState) { s.Status = virtio.StatusDriverOK }, "FEATURES_OK"},
		{"function", func(s *virtio.PCIState) { s.Function.Config = s.Function.Config[:10] }, "configuration bytes"},
	} {
		s := virtiotest.JSONCopy(t, good)
		tt.edit(&s)
		p2 := virtiotest.NewPCI(t, &echoDevice{idle: make(chan struct{}, 16)}, drv.Mem)
		if err := p2.Transport.Restore(s); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
		p2.CfgWrite(pci.RegCommand, 2, pci.CommandMemory)
		if st := p2.Status(); st != 0 {
			t.Errorf("%s: status %#x after a refused restore", tt.name, st)
		}
	}
	// A transport the driver already set up takes no state.
	if err := p.Transport.Restore(good); err == nil {
		t.Error("restore into a used transport accepted")
	}
}
