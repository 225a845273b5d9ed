package vsock

import (
	"encoding/binary"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio/virtiotest"
)

// pciAttach connects a fake guest to its device through a virtio-PCI
// transport; the guest's notifications go to whichever transport the
// returned setter last named.
func pciAttach(t *testing.T) (attach func(*fakeGuest, uint64), current func() *virtiotest.PCI, set func(*virtiotest.PCI)) {
	var mu sync.Mutex
	var cur *virtiotest.PCI
	current = func() *virtiotest.PCI {
		mu.Lock()
		defer mu.Unlock()
		return cur
	}
	set = func(p *virtiotest.PCI) {
		mu.Lock()
		defer mu.Unlock()
		cur = p
	}
	attach = func(g *fakeGuest, features uint64) {
		p := virtiotest.NewPCI(t, g.dev, g.mem)
		ring := func(r *ring) virtiotest.Ring {
			return virtiotest.Ring{Size: r.size, Desc: r.desc, Avail: r.avail, Used: r.used}
		}
		p.Setup(features, ring(g.rx), ring(g.tx), ring(g.ev))
		set(p)
		go func() {
			for {
				q := 0
				select {
				case <-g.stop:
					return
				case <-g.kicks[queueRx]:
					q = queueRx
				case <-g.kicks[queueTx]:
					q = queueTx
				case <-g.kicks[queueEvent]:
					q = queueEvent
				}
				current().Notify(q)
			}
		}()
	}
	return attach, current, set
}

// takeReset pops the event queue's next entry, checks it is
// TRANSPORT_RESET and, as a guest driver does, forgets every connection.
func takeReset(t *testing.T, g *fakeGuest) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	id, n, ok := g.ev.popUsed()
	ev := make([]byte, 4)
	if ok {
		g.mem.ReadAt(ev, g.ev.bufs[id])
	}
	if !ok || n != eventSize || binary.LittleEndian.Uint32(ev) != eventTransportReset {
		t.Fatalf("event queue: ok=%v len=%d event=%x, want TRANSPORT_RESET", ok, n, ev)
	}
	clear(g.conns)
}

// TestStateRoundTrip: a device carrying a connection is paused (the guest
// hears its connections are gone), saved with its transport through JSON,
// torn down and rebuilt; the guest's rings go on, new connections work and
// the event queue continues.
func TestStateRoundTrip(t *testing.T) {
	attach, current, set := pciAttach(t)
	g := newFakeGuestWith(t, attach)
	c := hostDial(t, g, 1234)
	mustEcho(t, c, 100<<10)

	p := current()
	if err := p.Transport.Pause(); err != nil {
		t.Fatal(err)
	}
	wantGone(t, c, "the pause")
	takeReset(t, g)
	ts, err := p.Transport.State()
	if err != nil {
		t.Fatal(err)
	}
	ts = virtiotest.JSONCopy(t, ts)
	st := virtiotest.JSONCopy(t, g.dev.State())
	want := State{Version: StateVersion, ID: "test", GuestCID: testCID, UDSPath: g.uds, QueueSize: fgQueueSize, ConnectTimeout: 30 * time.Second}
	if st != want {
		t.Fatalf("state %+v, want %+v", st, want)
	}
	if q := ts.Queues[queueEvent]; q.NextUsed != 1 {
		t.Fatalf("event queue state %+v, want one used entry", q)
	}
	p.Transport.Close()
	g.dev.Close() // frees the socket path for the new device

	dev, err := Restore(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.dev = dev // closed with the guest
	p2 := virtiotest.NewPCI(t, dev, g.mem)
	if err := p2.Transport.Restore(ts); err != nil {
		t.Fatal(err)
	}
	set(p2)
	if cid := p2.DeviceConfig(cfgGuestCID, 8); cid != testCID {
		t.Errorf("guest CID %d after restore", cid)
	}
	mustEcho(t, hostDial(t, g, 1234), 100<<10)
	if err := dev.TransportReset(); err != nil {
		t.Fatal(err)
	}
	takeReset(t, g)
}

func TestRestoreRefused(t *testing.T) {
	if _, err := Restore(State{Version: StateVersion + 1, GuestCID: testCID, UDSPath: t.TempDir() + "/v.sock"}, nil); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("other version: %v", err)
	}
	if _, err := Restore(State{Version: StateVersion, GuestCID: 1, UDSPath: t.TempDir() + "/v.sock"}, nil); err == nil {
		t.Error("reserved CID accepted")
	}
}
