package vsock

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/leakcheck"
)

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
