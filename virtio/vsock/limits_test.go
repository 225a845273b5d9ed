package vsock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// stuckHost listens on the fake guest's host port p and accepts
// connections it never reads; they are closed when the test ends.
func stuckHost(t testing.TB, g *fakeGuest, p uint32) {
	t.Helper()
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", g.uds, p))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
}

// fillAndClose connects to host port p, sends the whole credit the device
// gives (more than a Unix socket buffers, so a host peer that doesn't
// read leaves the writer stuck) and then closes with end (RST or
// SHUTDOWN). It reports false if the device refused the connection.
func fillAndClose(t testing.TB, g *fakeGuest, p uint32, end func(*gconn)) bool {
	t.Helper()
	gc := g.connect(p)
	g.waitFor("RESPONSE or RST", 5*time.Second, func() bool { return gc.established || gc.closed })
	g.mu.Lock()
	refused := gc.refused || !gc.established
	if !refused {
		gc.out = append(gc.out, make([]byte, BufAlloc)...)
	}
	g.mu.Unlock()
	if refused {
		return false
	}
	g.waitFor("the guest's bytes out", 10*time.Second, func() bool { return len(gc.out) == 0 })
	g.mu.Lock()
	end(gc)
	g.mu.Unlock()
	return true
}

func guestRST(g *fakeGuest) func(*gconn) {
	return func(gc *gconn) {
		g.send(g.hdr(gc, OpRST), nil)
		gc.closed = true
	}
}

func guestShutdownBoth(g *fakeGuest) func(*gconn) {
	return func(gc *gconn) {
		h := g.hdr(gc, OpShutdown)
		h.Flags = shutdownBoth
		g.send(h, nil)
	}
}

// withLimits activates the device with maxConns and drainWait in place of
// MaxConns and drainTimeout.
func withLimits(maxConns int, drainWait time.Duration) func(*fakeGuest, uint64) {
	return func(g *fakeGuest, feat uint64) {
		g.dev.maxConns, g.dev.drainWait = maxConns, drainWait
		g.activate(feat)
	}
}

// TestResetConnsCountAgainstMaxConns: connections the guest resets while
// the host peer doesn't read still hold a host socket, so they count
// against the limit; beyond it the guest's REQUESTs get RST. Neither the
// host sockets nor the connections pass the limit.
func TestResetConnsCountAgainstMaxConns(t *testing.T) {
	const limit, n = 8, 3 * 8
	g := newFakeGuestWith(t, withLimits(limit, time.Minute))
	stuckHost(t, g, 7)
	base := openFDs(t)
	accepted, maxFDs := 0, 0
	for range n {
		if fillAndClose(t, g, 7, guestRST(g)) {
			accepted++
		}
		maxFDs = max(maxFDs, openFDs(t)-base)
	}
	// Each connection holds the device's socket and the host peer's.
	const slack = 2
	if maxFDs > 2*limit+slack {
		t.Errorf("%d guest-reset connections held up to %d fds, want <= %d", n, maxFDs, 2*limit+slack)
	}
	if accepted > limit {
		t.Errorf("%d of %d connections accepted with %d draining, want <= %d", accepted, n, limit, limit)
	}
	if accepted == 0 {
		t.Error("no connection accepted")
	}
}

// TestDrainDeadline: a drain the host peer never reads ends by the
// deadline, whether the guest reset the connection or shut it down.
func TestDrainDeadline(t *testing.T) {
	const wait = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		end  func(*fakeGuest) func(*gconn)
	}{
		{"RST", guestRST},
		{"SHUTDOWN both", guestShutdownBoth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGuestWith(t, withLimits(MaxConns, wait))
			stuckHost(t, g, 7)
			base := openFDs(t)
			start := time.Now()
			if !fillAndClose(t, g, 7, tc.end(g)) {
				t.Fatal("connection refused")
			}
			// The device's socket closes; the host peer's stays open.
			for openFDs(t) > base+1 {
				if el := time.Since(start); el > wait+time.Second {
					t.Fatalf("drain still open %v after the guest closed, deadline %v", el, wait)
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("drain ended after %v (deadline %v)", time.Since(start), wait)
		})
	}
}

// descFlagNext is VIRTQ_DESC_F_NEXT (§2.7.5).
const descFlagNext = 1

// TestResetUnderTxFlood: a driver that makes tx buffers available again
// as fast as the device uses them does not delay Reset.
func TestResetUnderTxFlood(t *testing.T) {
	// The device looks at Reset between chains, so it stops within
	// microseconds (issue 12 asks for 100 ms); bound leaves room for a
	// loaded 2-core box under -race to schedule the spinning driver
	// (Reset once took 180 ms there) while staying far below floodFor,
	// so a Reset that waits for the flood to end still fails.
	const bound = time.Second
	// floodFor caps the flood, should Reset wait for it to end.
	const floodFor = 3 * time.Second
	g := newFakeGuest(t)
	// One packet from a foreign CID, which the device drops, spread over
	// chainLen descriptors so that the device takes longer to walk it
	// than the driver to post it again: the ring is never empty.
	const chainLen = 128
	h := Header{SrcCID: testCID + 1, DstCID: HostCID, SrcPort: 1, DstPort: 2, Type: TypeStream, Op: OpRW}
	pkt := make([]byte, HeaderSize)
	h.Encode(pkt)
	g.mu.Lock() // the flood owns the tx ring from now on
	g.mem.WriteAt(pkt, g.tx.bufs[0])
	for i := range uint16(chainLen) {
		n, flags := uint32(1), uint16(descFlagNext)
		if i == 0 {
			n = HeaderSize
		}
		if i == chainLen-1 {
			flags = 0
		}
		g.tx.putDesc(i, g.tx.bufs[i], n, flags)
		g.mem.PutUint16(g.tx.desc+16*uint64(i)+14, i+1)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	var posted int
	go func() {
		defer close(done)
		defer g.mu.Unlock()
		end := time.Now().Add(floodFor)
		for time.Now().Before(end) {
			select {
			case <-stop:
				return
			default:
			}
			// Keep the ring full of the same chain, posted again as
			// soon as the device used it.
			used, _ := g.tx.mem.Uint16(g.tx.used + 2)
			for g.tx.availIdx-used < g.tx.size {
				g.tx.post(0)
				posted++
			}
			g.kick(queueTx)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	g.dev.Reset()
	el := time.Since(start)
	close(stop)
	<-done
	t.Logf("Reset took %v with the guest posting (%d packets)", el, posted)
	if el > bound {
		t.Errorf("Reset took %v under a tx flood, want <= %v", el, bound)
	}
}

// TestListenerMode: the hybrid socket is 0600 whatever the umask.
func TestListenerMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, umask := range []int{0, 0o022, 0o077, 0o277} {
		syscall.Umask(umask)
		dir := t.TempDir()
		uds := filepath.Join(dir, "v.sock")
		d, err := New(Config{ID: "mode", GuestCID: testCID, UDSPath: uds}, nil)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Lstat(uds)
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != socketMode {
			t.Errorf("umask %#o: socket mode %v, want %#o", umask, st.Mode(), socketMode)
		}
	}
}
