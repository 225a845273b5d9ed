package vsock

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
)

// The fake guest lives in mmap'd memory, like a real guest's RAM, so it
// can run concurrently with the device without the race detector seeing
// the shared rings (it doesn't track memory outside the Go heap).

const (
	fgBase      = 0x100000
	fgQueueSize = 256
	fgBufSize   = HeaderSize + 4096 // Linux's rx buffer size
	testCID     = 3
)

// ring is the driver side of a split virtqueue.
type ring struct {
	mem                *memory.Guest
	size               uint16
	desc, avail, used  uint64
	bufs               []uint64 // buffer address of each descriptor
	availIdx, lastUsed uint16
	free               []uint16
}

func (r *ring) putDesc(i uint16, addr uint64, n uint32, flags uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	r.mem.WriteAt(b[:], r.desc+16*uint64(i))
}

var fence atomic.Uint32

// post makes descriptor i available.
func (r *ring) post(i uint16) {
	r.mem.PutUint16(r.avail+4+2*uint64(r.availIdx%r.size), i)
	fence.Add(1)
	r.availIdx++
	r.mem.PutUint16(r.avail+2, r.availIdx)
	fence.Add(1)
}

// popUsed returns the next used entry.
func (r *ring) popUsed() (id uint16, n uint32, ok bool) {
	fence.Add(1)
	idx, _ := r.mem.Uint16(r.used + 2)
	if idx == r.lastUsed {
		return 0, 0, false
	}
	e := r.used + 4 + 8*uint64(r.lastUsed%r.size)
	id32, _ := r.mem.Uint32(e)
	n, _ = r.mem.Uint32(e + 4)
	r.lastUsed++
	return uint16(id32), n, true
}

// gconn is a connection in the fake guest's vsock stack.
type gconn struct {
	local, peer uint32 // guest port, host port
	established bool
	refused     bool
	closed      bool // got RST or SHUTDOWN
	peerShut    uint32

	// receiving
	in          []byte
	bufAlloc    uint32
	fwdCnt      uint32
	fwdReported uint32
	hold        bool // the "application" doesn't read
	echo        bool
	// sending
	out              []byte
	txCnt            uint32
	peerBuf, peerFwd uint32
	maxInFlight      uint32
}

type gkey struct{ local, peer uint32 }

// fakeGuest drives a Device like a guest vsock driver would.
type fakeGuest struct {
	t     testing.TB
	dev   *Device
	uds   string
	mem   *memory.Guest
	rx    *ring
	tx    *ring
	ev    *ring
	kicks [numQueues]chan struct{}
	// irq is the device's used-buffer notifications (and wake's), which
	// run answers at once instead of at its next poll.
	irq   chan struct{}
	fails chan error
	stop  chan struct{}
	done  chan struct{}
	next  uint64
	// features are what the guest negotiates at every activation.
	features uint64

	mu        sync.Mutex
	cond      *sync.Cond
	conns     map[gkey]*gconn
	listening map[uint32]bool
	echoAll   bool
	bufAlloc  uint32
	refill    bool
	heldRx    []uint16
	nextPort  uint32
	unknown   []Header // packets for no connection (RSTs)
	sendRaw   []rawPacket
}

type rawPacket struct {
	hdr     []byte
	payload []byte
	hdrOnly int // when non-zero, the chain has only this many bytes
}

func (g *fakeGuest) alloc(n, align uint64) uint64 {
	a := (g.next + align - 1) &^ (align - 1)
	g.next = a + n
	if g.next > fgBase+uint64(g.mem.Size()) {
		g.t.Fatalf("fake guest RAM exhausted")
	}
	return a
}

func (g *fakeGuest) newRing(bufSize uint32, write bool) *ring {
	r := &ring{mem: g.mem, size: fgQueueSize}
	r.desc = g.alloc(16*fgQueueSize, 16)
	r.avail = g.alloc(6+2*fgQueueSize, 2)
	r.used = g.alloc(6+8*fgQueueSize, 4)
	var flags uint16
	if write {
		flags = 2
	}
	for i := range uint16(fgQueueSize) {
		a := g.alloc(uint64(bufSize), 8)
		r.bufs = append(r.bufs, a)
		r.putDesc(i, a, bufSize, flags)
		r.free = append(r.free, i)
	}
	return r
}

// newFakeGuest makes a device on a fresh socket and a fake guest driving
// it; the guest accepts on listening ports and echoes unless told not to.
func newFakeGuest(t testing.TB) *fakeGuest { return newFakeGuestWith(t, nil) }

// newFakeGuestWith is newFakeGuest with attach, if not nil, connecting
// the guest's rings to the device instead of activate.
func newFakeGuestWith(t testing.TB, attach func(g *fakeGuest, features uint64)) *fakeGuest {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	uds := filepath.Join(dir, "v.sock")
	dev, err := New(Config{ID: "test", GuestCID: testCID, UDSPath: uds, QueueSize: fgQueueSize,
		ConnectTimeout: 30 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New([]memory.Layout{{GuestAddr: fgBase, Size: 64 << 20}}, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGuest{t: t, dev: dev, uds: uds, mem: mem, next: fgBase, irq: make(chan struct{}, 1), fails: make(chan error, 16),
		stop: make(chan struct{}), done: make(chan struct{}), conns: map[gkey]*gconn{},
		listening: map[uint32]bool{}, echoAll: true, bufAlloc: 64 << 10, refill: true, nextPort: 50000}
	g.cond = sync.NewCond(&g.mu)
	g.rx = g.newRing(fgBufSize, true)
	g.tx = g.newRing(fgBufSize, false)
	g.ev = g.newRing(8, true)
	for i := range g.kicks {
		g.kicks[i] = make(chan struct{}, 1)
	}
	g.postReceiveBuffers()
	g.features = uint64(virtio.FeatureVersion1 | FeatureStream)
	if attach == nil {
		attach = (*fakeGuest).activate
	}
	attach(g, g.features)
	go g.run()
	t.Cleanup(g.close)
	return g
}

// postReceiveBuffers posts every rx and event buffer, as the guest does
// before DRIVER_OK.
func (g *fakeGuest) postReceiveBuffers() {
	for _, r := range []*ring{g.rx, g.ev} {
		for _, i := range r.free {
			r.post(i)
		}
		r.free = nil
	}
}

// clear puts the ring back as at initialisation: indices 0, every
// descriptor free. The device must be stopped.
func (r *ring) clear() {
	r.mem.WriteAt(make([]byte, 6+2*int(r.size)), r.avail)
	r.mem.WriteAt(make([]byte, 6+8*int(r.size)), r.used)
	r.availIdx, r.lastUsed = 0, 0
	r.free = r.free[:0]
	for i := range r.size {
		r.free = append(r.free, i)
	}
}

// restart resets the device and brings the fake guest's driver up again on
// the same rings, laid out afresh as a driver does after a reset (§2.4):
// indices from zero, every rx and event buffer posted, no connections.
// What the guest listens on stays.
func (g *fakeGuest) restart() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dev.Reset()
	for _, r := range []*ring{g.rx, g.tx, g.ev} {
		r.clear()
	}
	g.heldRx = nil
	g.sendRaw = nil
	clear(g.conns)
	for len(g.fails) > 0 {
		<-g.fails
	}
	g.postReceiveBuffers()
	g.activate(g.features)
}

// startInput readies the guest for one fuzz input reported to t: a
// restart, with the guest's stack as newFakeGuest leaves it (nothing
// listening, default credit, no orphan RSTs), so every input starts from
// the same state as on a new device, without the cost of a new device,
// socket and guest memory. When t ends the device is reset and what it had
// sent is checked, so nothing reports to t after that.
func (g *fakeGuest) startInput(t testing.TB) {
	g.mu.Lock()
	g.t = t
	clear(g.listening)
	g.echoAll, g.bufAlloc, g.refill, g.nextPort = true, 64<<10, true, 50000
	g.unknown = nil
	g.mu.Unlock()
	g.restart()
	t.Cleanup(func() {
		g.dev.Reset()
		g.mu.Lock()
		g.poll()
		g.mu.Unlock()
	})
}

// activate hands the guest's rings to the device as the transport would
// at DRIVER_OK.
func (g *fakeGuest) activate(feat uint64) {
	t, mem, dev := g.t, g.mem, g.dev
	var qs []*virtio.Queue
	var kicks []<-chan struct{}
	for i, r := range []*ring{g.rx, g.tx, g.ev} {
		q, err := virtio.NewTestQueue(mem, r.size, r.desc, r.avail, r.used, feat, g.wake)
		if err != nil {
			t.Fatal(err)
		}
		q.Index = i
		qs = append(qs, q)
		kicks = append(kicks, g.kicks[i])
	}
	a := &virtio.Activation{Mem: mem, Features: feat, Queues: qs, Kicks: kicks,
		Fail: func(err error) {
			select {
			case g.fails <- err:
			default:
			}
		}}
	if err := dev.Activate(a); err != nil {
		t.Fatal(err)
	}
}

func (g *fakeGuest) close() {
	select {
	case <-g.stop:
		return
	default:
	}
	close(g.stop)
	<-g.done
	g.dev.Close()
	g.mem.Close()
}

func (g *fakeGuest) kick(q int) {
	select {
	case g.kicks[q] <- struct{}{}:
	default:
	}
}

// wake makes run poll now: the device's interrupt, or a test that queued
// something to send.
func (g *fakeGuest) wake() {
	select {
	case g.irq <- struct{}{}:
	default:
	}
}

// fgPollInterval is how often run polls without an interrupt. Go sleeps
// under a millisecond for a millisecond when nothing else runs, so the
// interrupt is what keeps a round trip through the guest short.
const fgPollInterval = 20 * time.Microsecond

// run polls the rx used ring and reclaims tx buffers, like an interrupt
// handler would, at every interrupt and every fgPollInterval.
func (g *fakeGuest) run() {
	defer func() {
		// Under the lock, so a waitFor either sees done closed or is
		// waiting for this broadcast.
		g.mu.Lock()
		close(g.done)
		g.cond.Broadcast()
		g.mu.Unlock()
	}()
	timer := time.NewTimer(fgPollInterval)
	defer timer.Stop()
	for {
		g.mu.Lock()
		g.poll()
		g.mu.Unlock()
		timer.Reset(fgPollInterval)
		select {
		case <-g.stop:
			return
		case <-g.irq:
		case <-timer.C:
		}
	}
}

// poll handles received packets and flushes pending output; g.mu held.
func (g *fakeGuest) poll() {
	for {
		id, _, ok := g.tx.popUsed()
		if !ok {
			break
		}
		g.tx.free = append(g.tx.free, id)
	}
	got := false
	for {
		id, n, ok := g.rx.popUsed()
		if !ok {
			break
		}
		got = true
		if n < HeaderSize || n > fgBufSize {
			g.t.Errorf("rx used length %d", n)
		} else {
			b := make([]byte, n)
			g.mem.ReadAt(b, g.rx.bufs[id])
			h := DecodeHeader(b)
			if HeaderSize+h.Len != n {
				g.t.Errorf("rx packet len %d in a %d-byte used entry", h.Len, n)
			}
			g.recv(h, b[HeaderSize:])
		}
		if g.refill {
			g.rx.post(id)
		} else {
			g.heldRx = append(g.heldRx, id)
		}
	}
	if got && g.refill {
		g.kick(queueRx)
	}
	for len(g.sendRaw) > 0 && len(g.tx.free) > 0 {
		p := g.sendRaw[0]
		g.sendRaw = g.sendRaw[1:]
		g.txRaw(p)
	}
	if len(g.sendRaw) == 0 {
		for _, c := range g.conns {
			g.flush(c)
		}
	}
	g.cond.Broadcast()
}

// resumeRx gives the device the held rx buffers back.
func (g *fakeGuest) setRefill(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refill = on
	if on {
		for _, id := range g.heldRx {
			g.rx.post(id)
		}
		g.heldRx = nil
		g.kick(queueRx)
	}
}

func (g *fakeGuest) hdr(c *gconn, op uint16) Header {
	return Header{SrcCID: testCID, DstCID: HostCID, SrcPort: c.local, DstPort: c.peer, Type: TypeStream, Op: op,
		BufAlloc: c.bufAlloc, FwdCnt: c.fwdCnt}
}

// send queues one packet on tx, behind any backlog. g.mu held.
func (g *fakeGuest) send(h Header, payload []byte) bool {
	h.Len = uint32(len(payload))
	b := make([]byte, HeaderSize+len(payload))
	h.Encode(b)
	copy(b[HeaderSize:], payload)
	if len(g.tx.free) == 0 || len(g.sendRaw) > 0 {
		g.sendRaw = append(g.sendRaw, rawPacket{hdr: b})
		return true
	}
	g.txRaw(rawPacket{hdr: b})
	return true
}

func (g *fakeGuest) txRaw(p rawPacket) {
	id := g.tx.free[0]
	g.tx.free = g.tx.free[1:]
	b := append(append([]byte(nil), p.hdr...), p.payload...)
	n := uint32(len(b))
	if p.hdrOnly != 0 {
		n = uint32(p.hdrOnly)
	}
	g.mem.WriteAt(b, g.tx.bufs[id])
	g.tx.putDesc(id, g.tx.bufs[id], n, 0)
	g.tx.post(id)
	g.kick(queueTx)
}

// recv is the guest stack's receive path. g.mu held.
func (g *fakeGuest) recv(h Header, payload []byte) {
	if h.SrcCID != HostCID || h.DstCID != testCID || h.Type != TypeStream {
		g.t.Errorf("bad packet from the device: %s", h.String())
		return
	}
	k := gkey{h.DstPort, h.SrcPort}
	c := g.conns[k]
	if c != nil {
		c.peerBuf, c.peerFwd = h.BufAlloc, h.FwdCnt
	}
	switch h.Op {
	case OpRequest:
		if c != nil || !g.listening[h.DstPort] {
			g.send(Header{SrcCID: testCID, DstCID: HostCID, SrcPort: h.DstPort, DstPort: h.SrcPort, Type: TypeStream, Op: OpRST}, nil)
			return
		}
		c = &gconn{local: h.DstPort, peer: h.SrcPort, established: true, bufAlloc: g.bufAlloc, echo: g.echoAll,
			peerBuf: h.BufAlloc, peerFwd: h.FwdCnt}
		g.conns[k] = c
		g.send(g.hdr(c, OpResponse), nil)
	case OpResponse:
		if c == nil {
			g.t.Errorf("RESPONSE for no connection: %s", h.String())
			return
		}
		c.established = true
	case OpRST:
		if c == nil {
			g.unknown = append(g.unknown, h)
			return
		}
		if !c.established {
			c.refused = true
		}
		c.closed = true
	case OpShutdown:
		if c != nil {
			c.peerShut |= h.Flags
		}
	case OpRW:
		if c == nil {
			g.t.Errorf("RW for no connection: %s", h.String())
			return
		}
		if uint32(len(c.in))+h.Len > c.bufAlloc {
			g.t.Errorf("device overran the guest's credit: %d buffered + %d > %d", len(c.in), h.Len, c.bufAlloc)
		}
		c.in = append(c.in, payload...)
		if m := uint32(len(c.in)); m > c.maxInFlight {
			c.maxInFlight = m
		}
	case OpCreditRequest:
		if c != nil {
			g.send(g.hdr(c, OpCreditUpdate), nil)
			c.fwdReported = c.fwdCnt
		}
	case OpCreditUpdate:
	default:
		g.t.Errorf("unexpected op from the device: %s", h.String())
	}
}

// flush runs the guest "application" and sends what credit allows. g.mu
// held.
func (g *fakeGuest) flush(c *gconn) {
	if c.closed || !c.established {
		return
	}
	if !c.hold && len(c.in) > 0 {
		if c.echo {
			c.out = append(c.out, c.in...)
		}
		c.fwdCnt += uint32(len(c.in))
		c.in = c.in[:0]
	}
	for len(c.out) > 0 {
		free := c.peerBuf - (c.txCnt - c.peerFwd)
		if c.txCnt-c.peerFwd >= c.peerBuf {
			free = 0
		}
		n := min(uint32(len(c.out)), free, 4096)
		if n == 0 {
			break
		}
		if !g.send(g.hdr(c, OpRW), c.out[:n]) {
			return
		}
		c.fwdReported = c.fwdCnt
		c.txCnt += n
		c.out = c.out[n:]
	}
	if c.fwdCnt-c.fwdReported >= c.bufAlloc/4 {
		if g.send(g.hdr(c, OpCreditUpdate), nil) {
			c.fwdReported = c.fwdCnt
		}
	}
}

// waitFor waits until cond (called with g.mu held) holds.
func (g *fakeGuest) waitFor(what string, timeout time.Duration, cond func() bool) {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	g.mu.Lock()
	defer g.mu.Unlock()
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("timed out waiting for %s", what)
		}
		select {
		case err := <-g.fails:
			g.t.Fatalf("device failed while waiting for %s: %v", what, err)
		case <-g.done:
			g.t.Fatalf("the fake guest stopped while waiting for %s", what)
		default:
		}
		// poll broadcasts every round, so this is polling at the guest's
		// pace, not a millisecond's.
		g.cond.Wait()
	}
}

// connect opens a guest-initiated connection to host port p.
func (g *fakeGuest) connect(p uint32) *gconn {
	g.mu.Lock()
	g.nextPort++
	c := &gconn{local: g.nextPort, peer: p, bufAlloc: g.bufAlloc, echo: false}
	g.conns[gkey{c.local, c.peer}] = c
	g.send(g.hdr(c, OpRequest), nil)
	g.mu.Unlock()
	return c
}

func (g *fakeGuest) String() string { return fmt.Sprintf("fake guest on %s", g.uds) }
