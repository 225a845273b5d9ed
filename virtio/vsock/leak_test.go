package vsock

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/leakcheck"
	"github.com/govmm/vmm/virtio"
)

// restart resets the device and brings the fake guest's driver up again on
// the same rings, laid out afresh as a driver does after a reset (§2.4):
// indices from zero, every rx and event buffer posted, no connections.
func (g *fakeGuest) restart() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dev.Reset()
	for _, r := range []*ring{g.rx, g.tx, g.ev} {
		r.availIdx, r.lastUsed = 0, 0
		g.mem.PutUint16(r.avail+2, 0)
		g.mem.PutUint16(r.used+2, 0)
		r.free = r.free[:0]
		for i := range r.size {
			r.free = append(r.free, i)
		}
	}
	for _, r := range []*ring{g.rx, g.ev} {
		for _, i := range r.free {
			r.post(i)
		}
		r.free = nil
	}
	g.heldRx = nil
	g.sendRaw = nil
	clear(g.conns)
	g.activate(uint64(virtio.FeatureVersion1 | FeatureStream))
}

// TestLeakActivateReset: leakcheck.Cycles of a host connection echoing
// through the guest, a device reset while it is open, and a new
// activation, leave the goroutines (muxer, connection readers and
// writers) and fds (host sockets) at their baseline, and every reset
// closes the host's connection.
func TestLeakActivateReset(t *testing.T) {
	g := newFakeGuest(t)
	g.mu.Lock()
	g.listening[1234] = true
	g.mu.Unlock()
	before := leakcheck.Take(t)
	for i := range leakcheck.Cycles {
		c, err := dial(t, g, 1234)
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		mustEcho(t, c, 8<<10)
		g.restart()
		wantGone(t, c, "a device reset")
		c.Close()
	}
	leakcheck.Check(t, before)
}

// TestLeakNewClose: opening the device's Unix socket listener and closing
// it leakcheck.Cycles times, with a host connection waiting for a driver
// each time, leaves no listener, connection or goroutine behind, and
// removes the socket file.
func TestLeakNewClose(t *testing.T) {
	uds := filepath.Join(t.TempDir(), "v.sock")
	before := leakcheck.Take(t)
	for i := range leakcheck.Cycles {
		d, err := New(Config{ID: "leak", GuestCID: testCID, UDSPath: uds, ConnectTimeout: 30 * time.Second}, nil)
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		// A CONNECT with no driver is refused; Close must not wait on it.
		if c, err := dial(t, &fakeGuest{uds: uds}, 1); err == nil {
			c.Close()
			t.Fatalf("cycle %d: CONNECT accepted without a driver", i)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(uds); !os.IsNotExist(err) {
			t.Fatalf("cycle %d: socket file after Close: %v", i, err)
		}
	}
	leakcheck.Check(t, before)
}
