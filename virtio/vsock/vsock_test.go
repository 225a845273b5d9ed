package vsock

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/guest/agent/client"
)

func dial(t testing.TB, g *fakeGuest, port uint32) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return client.DialHybridVsock(ctx, g.uds, port)
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// echoRoundTrip writes data and reads the echo concurrently.
func echoRoundTrip(c net.Conn, data []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		errc <- err
	}()
	got := make([]byte, len(data))
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

// hostDial makes the fake guest listen on port and connects to it from the
// host; the connection is closed when the test ends.
func hostDial(t testing.TB, g *fakeGuest, port uint32) net.Conn {
	t.Helper()
	g.mu.Lock()
	g.listening[port] = true
	g.mu.Unlock()
	c, err := dial(t, g, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// mustEcho sends n random bytes over c and fails t unless they come back.
func mustEcho(t testing.TB, c net.Conn, n int) {
	t.Helper()
	if err := echoRoundTrip(c, randBytes(t, n)); err != nil {
		t.Fatal(err)
	}
}

// wantGone fails t unless c is closed by the host side (within 5 s) after
// what happened to the device.
func wantGone(t testing.TB, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("connection survived %s", what)
	}
}

func TestConfigSpace(t *testing.T) {
	g := newFakeGuest(t)
	if g.dev.Type() != 19 || g.dev.Features()&FeatureStream == 0 || len(g.dev.QueueSizes()) != 3 {
		t.Fatalf("type %d features %#x queues %d", g.dev.Type(), g.dev.Features(), len(g.dev.QueueSizes()))
	}
	b := make([]byte, 12)
	g.dev.ReadConfig(0, b)
	if binary.LittleEndian.Uint64(b) != testCID || binary.LittleEndian.Uint32(b[8:]) != 0 {
		t.Fatalf("config space %x", b)
	}
	if _, err := New(Config{GuestCID: 2, UDSPath: g.uds + "x"}, nil); err == nil {
		t.Error("CID 2 accepted")
	}
	if _, err := New(Config{GuestCID: 3, UDSPath: g.uds}, nil); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second device on a live socket: %v", err)
	}
}

func TestHostConnectEcho(t *testing.T) {
	g := newFakeGuest(t)
	c := hostDial(t, g, 1234)
	mustEcho(t, c, 3<<20)
	// The guest sees the host port from the allocated range.
	g.mu.Lock()
	for k := range g.conns {
		if k.local != 1234 || k.peer < firstHostPort {
			t.Errorf("connection %+v", k)
		}
	}
	g.mu.Unlock()
	// Host close: the guest hears SHUTDOWN(SEND).
	c.Close()
	g.waitFor("SHUTDOWN", 5*time.Second, func() bool {
		for _, gc := range g.conns {
			return gc.peerShut&ShutdownSend != 0
		}
		return false
	})
}

func TestHostConnectRaw(t *testing.T) {
	g := newFakeGuest(t)
	g.mu.Lock()
	g.listening[7] = true
	g.mu.Unlock()
	c, err := net.Dial("unix", g.uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Lower-case keyword, and data right behind the line.
	if _, err := io.WriteString(c, "connect 7\nhello"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK 1073741824") {
		t.Fatalf("reply %q, %v; want OK 1073741824 (the first host port)", line, err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "hello" {
		t.Fatalf("echo %q, %v", got, err)
	}
}

func TestHostConnectRefused(t *testing.T) {
	g := newFakeGuest(t)
	start := time.Now()
	c, err := dial(t, g, 4321)
	if err == nil {
		c.Close()
		t.Fatal("CONNECT to a port nobody listens on succeeded")
	}
	if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Errorf("refusal: %v, want EOF before OK", err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("refusal took %v", time.Since(start))
	}
	// Garbage instead of CONNECT: closed.
	raw, err := net.Dial("unix", g.uds)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(raw, "HELLO there\n")
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := raw.Read(make([]byte, 10)); err != io.EOF {
		t.Errorf("bad handshake: read %d, %v; want EOF", n, err)
	}
	raw.Close()
}

func TestGuestConnect(t *testing.T) {
	g := newFakeGuest(t)
	ln, err := net.Listen("unix", g.uds+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := randBytes(t, 1<<20)
	srv := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- err
			return
		}
		defer c.Close()
		got := make([]byte, len(data))
		if _, err := io.ReadFull(c, got); err != nil {
			srv <- err
			return
		}
		if !bytes.Equal(got, data) {
			srv <- errors.New("host got different bytes")
			return
		}
		_, err = c.Write(got)
		srv <- err
	}()
	gc := g.connect(5000)
	g.waitFor("RESPONSE", 5*time.Second, func() bool { return gc.established || gc.closed })
	g.mu.Lock()
	gc.hold = true // the test reads c.in itself
	gc.out = append(gc.out, data...)
	g.mu.Unlock()
	var got []byte
	g.waitFor("echo from the host", 20*time.Second, func() bool {
		got = append(got, gc.in...)
		gc.fwdCnt += uint32(len(gc.in))
		gc.in = gc.in[:0]
		return len(got) >= len(data)
	})
	if !bytes.Equal(got, data) {
		t.Fatal("guest got different bytes back")
	}
	if err := <-srv; err != nil {
		t.Fatal(err)
	}

	// No listener: RST.
	gc2 := g.connect(5001)
	g.waitFor("RST", 5*time.Second, func() bool { return gc2.closed })
	if !gc2.refused {
		t.Error("connection to a port without listener not refused")
	}
}

// TestCreditAndBackpressure: the device never sends more than the guest's
// credit, stops while the guest holds its rx buffers, and resumes.
func TestCreditAndBackpressure(t *testing.T) {
	g := newFakeGuest(t)
	g.mu.Lock()
	g.listening[1] = true
	g.bufAlloc = 16 << 10
	g.echoAll = false
	g.mu.Unlock()
	c, err := dial(t, g, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var gc *gconn
	g.mu.Lock()
	for _, x := range g.conns {
		gc = x
	}
	gc.hold = true
	g.mu.Unlock()
	data := randBytes(t, 200<<10)
	go c.Write(data)
	g.waitFor("16 KiB", 5*time.Second, func() bool { return len(gc.in) == 16<<10 })
	time.Sleep(100 * time.Millisecond)
	g.mu.Lock()
	if len(gc.in) != 16<<10 {
		t.Errorf("guest holds %d bytes with 16 KiB of credit", len(gc.in))
	}
	// Consume, but take the rx buffers away: nothing can arrive.
	g.refill = false
	var got []byte
	got = append(got, gc.in...)
	gc.fwdCnt += uint32(len(gc.in))
	gc.in = gc.in[:0]
	g.send(g.hdr(gc, OpCreditUpdate), nil)
	gc.fwdReported = gc.fwdCnt
	g.mu.Unlock()
	// Collect the rest once buffers flow again.
	g.waitFor("rx buffers used up", 5*time.Second, func() bool {
		got = append(got, gc.in...)
		gc.fwdCnt += uint32(len(gc.in))
		gc.in = gc.in[:0]
		_, _, ok := g.rx.popUsed()
		if ok {
			g.rx.lastUsed-- // peek only
		}
		return len(g.heldRx) > 0 || ok
	})
	g.setRefill(true)
	g.waitFor("everything", 20*time.Second, func() bool {
		got = append(got, gc.in...)
		gc.fwdCnt += uint32(len(gc.in))
		gc.in = gc.in[:0]
		if gc.fwdCnt-gc.fwdReported >= 4<<10 {
			g.send(g.hdr(gc, OpCreditUpdate), nil)
			gc.fwdReported = gc.fwdCnt
		}
		return len(got) >= len(data)
	})
	if !bytes.Equal(got, data) {
		t.Fatal("bytes lost or reordered")
	}
	if gc.maxInFlight > 16<<10 {
		t.Errorf("device had %d bytes in flight with 16 KiB of credit", gc.maxInFlight)
	}
}

// TestGuestCreditRespected: the guest may not overrun the device's
// buf_alloc; doing so resets the connection.
func TestGuestCreditOverrun(t *testing.T) {
	g := newFakeGuest(t)
	ln, err := net.Listen("unix", g.uds+"_6000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	gc := g.connect(6000)
	g.waitFor("RESPONSE", 5*time.Second, func() bool { return gc.established })
	if gc.peerBuf != BufAlloc {
		t.Errorf("device buf_alloc %d, want %d", gc.peerBuf, BufAlloc)
	}
	hc := <-accepted
	defer hc.Close()
	// Pretend the device granted more: send BufAlloc+4096 bytes while the
	// host doesn't read... the host socket buffer absorbs some, so send
	// far more than fits at once, ignoring credit.
	g.mu.Lock()
	chunk := make([]byte, 4000)
	for i := 0; i < (BufAlloc/4000)+20; i++ {
		g.sendRaw = append(g.sendRaw, rawPacket{hdr: func() []byte {
			h := g.hdr(gc, OpRW)
			h.Len = uint32(len(chunk))
			b := make([]byte, HeaderSize)
			h.Encode(b)
			return b
		}(), payload: chunk})
	}
	g.mu.Unlock()
	// Slow host: the device can't forward fast enough... but it may; the
	// guaranteed outcome is either all bytes forwarded within credit
	// (host reads them) or RST. Read everything the host gets.
	hc.SetReadDeadline(time.Now().Add(3 * time.Second))
	time.Sleep(200 * time.Millisecond)
	n, _ := io.Copy(io.Discard, hc)
	g.mu.Lock()
	closed := gc.closed
	g.mu.Unlock()
	total := int64(len(chunk) * ((BufAlloc / 4000) + 20))
	if !closed && n != total {
		t.Errorf("host got %d of %d bytes and the connection was not reset", n, total)
	}
}

// TestManyStreams runs 64 host-initiated echo streams at once.
func TestManyStreams(t *testing.T) {
	g := newFakeGuest(t)
	g.mu.Lock()
	g.listening[80] = true
	g.mu.Unlock()
	const streams = 64
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(t, g, 80)
			if err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			defer c.Close()
			if err := echoRoundTrip(c, randBytes(t, 256<<10+i*777)); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestGuestStreamsToHost runs 64 guest-initiated streams both ways.
func TestGuestStreamsToHost(t *testing.T) {
	g := newFakeGuest(t)
	ln, err := net.Listen("unix", g.uds+"_9")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c) // echo until the guest half-closes
			}()
		}
	}()
	const streams = 64
	var conns []*gconn
	var want [][]byte
	for i := range streams {
		gc := g.connect(9)
		d := randBytes(t, 64<<10+i*101)
		g.mu.Lock()
		gc.hold = true
		gc.out = append(gc.out, d...)
		g.mu.Unlock()
		conns = append(conns, gc)
		want = append(want, d)
	}
	got := make([][]byte, streams)
	g.waitFor("all echoes", 30*time.Second, func() bool {
		done := true
		for i, gc := range conns {
			got[i] = append(got[i], gc.in...)
			gc.fwdCnt += uint32(len(gc.in))
			gc.in = gc.in[:0]
			if gc.fwdCnt-gc.fwdReported >= gc.bufAlloc/4 {
				g.send(g.hdr(gc, OpCreditUpdate), nil)
				gc.fwdReported = gc.fwdCnt
			}
			if len(got[i]) < len(want[i]) {
				done = false
			}
		}
		return done
	})
	for i := range conns {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("stream %d: bytes differ", i)
		}
	}
	// Orderly close of one: SHUTDOWN both → the device forwards, RSTs.
	g.mu.Lock()
	gc := conns[0]
	h := g.hdr(gc, OpShutdown)
	h.Flags = shutdownBoth
	g.send(h, nil)
	g.mu.Unlock()
	g.waitFor("RST after SHUTDOWN", 5*time.Second, func() bool { return gc.closed })
}

// TestHostileHeaders sends packets a driver must not send; the device
// answers with RST or ignores them, and keeps working.
func TestHostileHeaders(t *testing.T) {
	g := newFakeGuest(t)
	c := hostDial(t, g, 1234)
	mk := func(h Header) []byte {
		b := make([]byte, HeaderSize)
		h.Encode(b)
		return b
	}
	base := Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 777, DstPort: 888, Type: TypeStream}
	cases := []struct {
		name string
		h    Header
		rst  bool
	}{
		{"bad op", func() Header { h := base; h.Op = 99; return h }(), true},
		{"RW without connection", func() Header { h := base; h.Op = OpRW; return h }(), true},
		{"len past the buffer", func() Header { h := base; h.Op = OpRW; h.Len = 1 << 30; return h }(), true},
		{"datagram type", func() Header { h := base; h.Op = OpRequest; h.Type = 3; return h }(), true},
		{"wrong dst cid", func() Header { h := base; h.Op = OpRequest; h.DstCID = 7; return h }(), true},
		{"wrong src cid", func() Header { h := base; h.Op = OpRequest; h.SrcCID = 9; return h }(), false},
		{"RESPONSE without request", func() Header { h := base; h.Op = OpResponse; return h }(), true},
	}
	for _, tc := range cases {
		g.mu.Lock()
		before := len(g.unknown)
		g.sendRaw = append(g.sendRaw, rawPacket{hdr: mk(tc.h)})
		g.mu.Unlock()
		if tc.rst {
			g.waitFor(tc.name+": RST", 5*time.Second, func() bool { return len(g.unknown) > before })
		} else {
			time.Sleep(50 * time.Millisecond)
			g.mu.Lock()
			if len(g.unknown) != before {
				t.Errorf("%s: answered", tc.name)
			}
			g.mu.Unlock()
		}
	}
	// The established connection still works.
	mustEcho(t, c, 100<<10)
	// A tx chain too short for a header breaks the device (NEEDS_RESET).
	g.mu.Lock()
	g.sendRaw = append(g.sendRaw, rawPacket{hdr: make([]byte, HeaderSize), hdrOnly: 10})
	g.mu.Unlock()
	select {
	case err := <-g.fails:
		if !errors.Is(err, errMalformed) {
			t.Errorf("short chain: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("short tx chain did not fail the device")
	}
	// A broken device drops its connections and refuses new ones.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Errorf("host connection after the failure: %v, want EOF", err)
	}
	if c2, err := dial(t, g, 1234); err == nil {
		c2.Close()
		t.Error("CONNECT accepted by a broken device")
	}
}

func TestResetClosesConnections(t *testing.T) {
	g := newFakeGuest(t)
	c := hostDial(t, g, 1)
	g.mu.Lock()
	g.dev.Reset()
	g.mu.Unlock()
	wantGone(t, c, "a device reset")
	// Without a driver, CONNECT is refused.
	if c, err := dial(t, g, 1); err == nil {
		c.Close()
		t.Fatal("CONNECT accepted with the device reset")
	}
}

func TestParseConnect(t *testing.T) {
	for _, tc := range []struct {
		in   string
		port uint32
		ok   bool
	}{
		{"CONNECT 52", 52, true}, {"connect 1024\r", 1024, true}, {"CONNECT 4294967295", 4294967295, true},
		{"CONNECT", 0, false}, {"CONNECT x", 0, false}, {"OPEN 5", 0, false}, {"CONNECT 4294967296", 0, false},
	} {
		p, err := parseConnect(tc.in)
		if (err == nil) != tc.ok || p != tc.port {
			t.Errorf("parseConnect(%q) = %d, %v", tc.in, p, err)
		}
	}
}

func TestTransportReset(t *testing.T) {
	g := newFakeGuest(t)
	c := hostDial(t, g, 1)
	if err := g.dev.TransportReset(); err != nil {
		t.Fatal(err)
	}
	wantGone(t, c, "a transport reset")
	takeReset(t, g)
	// New connections work afterwards.
	mustEcho(t, hostDial(t, g, 1), 10000)
}
