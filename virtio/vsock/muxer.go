package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/govmm/vmm/virtio"
)

// eventKind says what an event reports.
type eventKind int

const (
	evHostConnect    eventKind = iota // a host client asked for a guest port
	evHostData                        // a reader's chunk
	evHostEOF                         // a reader hit EOF or an error
	evWritten                         // a writer forwarded n bytes
	evWriteErr                        // a writer failed
	evDrained                         // a writer passed its marker
	evTimeout                         // a host-initiated REQUEST went unanswered
	evDrainTimeout                    // the host peer took too long to read a drain
	evDialed                          // a guest-initiated dial finished
	evTransportReset                  // Device.TransportReset was called
)

// event is what the pumps and the listener tell the muxer.
type event struct {
	kind eventKind
	c    *conn
	data []byte
	n    int
	err  error
	uc   net.Conn
	port uint32
	done chan error // evTransportReset: the outcome
}

// maxOrphanRSTs bounds the RSTs queued for packets that belong to no
// connection, should the guest stop taking rx buffers.
const maxOrphanRSTs = 256

// maxBatch bounds the chains the loop takes from one queue before it
// looks at Reset and the other queue again: a driver that keeps the tx
// ring full (or refills rx as fast as the device fills it) can't hold
// the loop.
const maxBatch = 64

// muxer is the device while activated: one goroutine owns every
// connection and both data queues; the listener and per-connection pumps
// talk to it through events. The loop, the pumps and the dials are the
// run's workers (Device.life).
type muxer struct {
	dev  *Device
	a    *virtio.Activation
	run  *virtio.Run
	log  *slog.Logger
	cid  uint64
	rx   *virtio.Queue
	tx   *virtio.Queue
	evq  *virtio.Queue // nil if the driver didn't enable it
	ev   chan event
	quit <-chan struct{} // closes when Reset begins

	// postMu orders post against stop, so no event carrying a socket is
	// left behind unclosed.
	postMu  sync.RWMutex
	stopped bool

	// Owned by the loop.
	conns    map[connKey]*conn
	draining map[*conn]struct{} // reset by the guest, forwarding what it sent before
	ready    []*conn            // connections that may owe the guest a packet
	orphans  []Header
	nextPort uint32
	broken   bool
	hdrBuf   [HeaderSize]byte
	// The chain being handled, mapped: its device-readable buffers (tx)
	// or device-writable ones (rx), arrays kept from chain to chain.
	txBufs, rxBufs virtio.Iovec
}

func newMuxer(d *Device, a *virtio.Activation, run *virtio.Run, log *slog.Logger) *muxer {
	return &muxer{
		dev: d, a: a, run: run, log: log, cid: d.cfg.GuestCID,
		rx: a.Queues[queueRx], tx: a.Queues[queueTx], evq: a.Queues[queueEvent],
		ev: make(chan event, 64), quit: run.Stopping(),
		conns: map[connKey]*conn{}, draining: map[*conn]struct{}{}, nextPort: firstHostPort,
	}
}

// start runs the loop; Reset then ends it and every pump, which closes
// every host socket.
func (m *muxer) start() {
	m.run.OnStop(m.stopPosting)
	m.run.Cleanup(m.drainEvents)
	m.run.Go("event loop", func(<-chan struct{}) { m.loop() })
}

// stopPosting makes post refuse events from now on.
func (m *muxer) stopPosting() {
	m.postMu.Lock()
	m.stopped = true
	m.postMu.Unlock()
}

// drainEvents closes the sockets still in flight to the loop, which has
// returned, and fails the transport resets waiting for it.
func (m *muxer) drainEvents() {
	for {
		select {
		case e := <-m.ev:
			if e.uc != nil {
				e.uc.Close()
			}
			if e.done != nil {
				e.done <- errors.New("device stopped")
			}
		default:
			return
		}
	}
}

// post hands an event to the loop; false when the device stopped.
func (m *muxer) post(e event) bool {
	m.postMu.RLock()
	defer m.postMu.RUnlock()
	if m.stopped {
		return false
	}
	select {
	case m.ev <- e:
		return true
	case <-m.quit:
		return false
	}
}

// hostConnect queues a host client's CONNECT; false when the device
// stopped (the caller closes the client).
func (m *muxer) hostConnect(uc net.Conn, port uint32) bool {
	return m.post(event{kind: evHostConnect, uc: uc, port: port})
}

func (m *muxer) loop() {
	defer m.closeAll()
	kicks := m.a.Kicks
	var evKick <-chan struct{}
	if len(kicks) > queueEvent {
		evKick = kicks[queueEvent]
	}
	// again is ready while a batch ended with work left, so the loop
	// comes back to it after looking at quit and the events.
	again := make(chan struct{})
	close(again)
	// Buffers may already be there (a kick before activation).
	txMore, rxMore := true, true
	for !m.broken {
		// Checked first: with work left select would pick quit only by
		// chance.
		if m.stopping() {
			return
		}
		var soon <-chan struct{}
		if txMore || rxMore {
			soon = again
		}
		select {
		case <-m.quit:
			return
		case <-kicks[queueRx]:
		case <-kicks[queueTx]:
			txMore = true
		case <-evKick:
			// Event buffers stay with the device until an event (only
			// TRANSPORT_RESET, for snapshots) needs one.
		case e := <-m.ev:
			m.handle(e)
			// Take what else is queued before touching the rings, but
			// no more than was there: the pumps keep posting.
			for range cap(m.ev) {
				select {
				case e := <-m.ev:
					m.handle(e)
					continue
				default:
				}
				break
			}
		case <-soon:
		}
		if txMore {
			txMore = m.processTx()
		}
		rxMore = m.flushRx()
	}
	// Broken: drop every connection and refuse new ones until the
	// driver resets the device.
	m.closeAll()
	for {
		select {
		case <-m.quit:
			return
		case e := <-m.ev:
			switch e.kind {
			case evHostConnect:
				e.uc.Close()
			case evTransportReset:
				e.done <- errors.New("the device needs a reset")
			}
		}
	}
}

// stopping reports whether Reset began. The rings are checked between
// chains too: a chain of a queue's size in descriptors costs the device
// far more than the driver, so even a batch may take long.
func (m *muxer) stopping() bool {
	select {
	case <-m.quit:
		return true
	default:
		return false
	}
}

// fail marks the device broken: the driver handed it something invalid.
func (m *muxer) fail(err error) {
	if m.broken {
		return
	}
	m.broken = true
	m.a.Fail(fmt.Errorf("virtio-vsock %s: %w", m.dev.cfg.ID, err))
}

// closeAll drops every connection when the device stops.
func (m *muxer) closeAll() {
	for _, c := range m.conns {
		m.remove(c)
	}
	for c := range m.draining {
		m.remove(c)
	}
}

// markReady queues c for the rx side.
func (m *muxer) markReady(c *conn) {
	if !c.inReady && !c.removed {
		c.inReady = true
		m.ready = append(m.ready, c)
	}
}

// remove forgets c and closes its host socket; its pumps end.
func (m *muxer) remove(c *conn) {
	if c.removed {
		return
	}
	c.removed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	close(c.dead)
	if c.uc != nil {
		c.uc.Close()
	}
	m.forget(c)
}

// forget takes c out of the connection table (its ports are free again).
func (m *muxer) forget(c *conn) {
	if m.conns[c.key] == c {
		delete(m.conns, c.key)
	}
	delete(m.draining, c)
}

// reset sends the guest RST for c and drops it.
func (m *muxer) reset(c *conn) {
	c.needRST = true
	c.pending = nil
	m.markReady(c)
	m.forget(c) // a new connection may reuse the ports
	if !c.removed {
		c.removed = true
		if c.timer != nil {
			c.timer.Stop()
		}
		close(c.dead)
		if c.uc != nil {
			c.uc.Close()
		}
	}
	// c stays on the ready list until its RST is out.
	c.inReady = true
}

// newConn registers a connection and, with its Unix socket, starts its
// pumps.
func (m *muxer) newConn(key connKey, uc net.Conn, hostInit bool) *conn {
	c := &conn{key: key, hostInit: hostInit, wq: newWriteQueue(),
		grant: make(chan struct{}, 1), dead: make(chan struct{})}
	m.conns[key] = c
	if uc != nil {
		m.attach(c, uc)
	}
	return c
}

// attach gives c its Unix socket and starts the pumps.
func (m *muxer) attach(c *conn, uc net.Conn) {
	c.uc = uc
	m.run.Go("connection reader", func(<-chan struct{}) { m.reader(c) })
	m.run.Go("connection writer", func(<-chan struct{}) { m.writer(c) })
}

// allocPort returns a free local port for a host-initiated connection.
func (m *muxer) allocPort(guestPort uint32) (uint32, bool) {
	for range lastHostPort - firstHostPort + 1 {
		p := m.nextPort
		m.nextPort++
		if m.nextPort > lastHostPort {
			m.nextPort = firstHostPort
		}
		if _, used := m.conns[connKey{p, guestPort}]; !used {
			return p, true
		}
	}
	return 0, false
}

// handle applies one event from the listener or the pumps.
func (m *muxer) handle(e event) {
	c := e.c
	if c != nil && c.removed {
		if e.kind == evDialed && e.uc != nil {
			e.uc.Close() // the guest gave up meanwhile
		}
		return // stale: the connection is gone
	}
	if c != nil && c.detached {
		// Reset by the guest: only the drain matters.
		switch e.kind {
		case evHostData:
			c.release()
		case evDrained, evWriteErr:
			m.remove(c)
		case evDrainTimeout:
			m.log.Debug("vsock: host peer did not take the guest's last bytes in time", "port", c.key.host)
			m.remove(c)
		}
		return
	}
	switch e.kind {
	case evTransportReset:
		m.transportReset(e.done)
	case evHostConnect:
		if m.full() {
			m.log.Warn("vsock: too many connections, refusing CONNECT", "port", e.port)
			e.uc.Close()
			return
		}
		p, ok := m.allocPort(e.port)
		if !ok {
			e.uc.Close()
			return
		}
		c := m.newConn(connKey{p, e.port}, e.uc, true)
		c.state = stateConnecting
		c.needRequest = true
		c.timer = time.AfterFunc(m.dev.cfg.ConnectTimeout, func() { m.post(event{kind: evTimeout, c: c}) })
		m.markReady(c)
	case evDialed:
		if e.err != nil {
			m.log.Debug("vsock: guest connection refused", "port", c.key.host, "err", e.err)
			m.reset(c)
			return
		}
		m.attach(c, e.uc)
		c.state = stateEstablished
		c.needResponse = true
		m.markReady(c)
	case evTimeout:
		if c.state == stateConnecting {
			m.log.Debug("vsock: guest did not answer REQUEST", "port", c.key.guest)
			m.reset(c)
		}
	case evHostData:
		if c.peerShutdown&ShutdownRcv != 0 {
			// The guest takes no more; the host's bytes go nowhere.
			c.release()
			return
		}
		c.pending = e.data
		m.markReady(c)
	case evHostEOF:
		c.hostEOF = true
		if c.state != stateEstablished {
			m.reset(c)
			return
		}
		// The host will send no more: tell the guest once the data
		// before the EOF is out.
		c.shutdownOwed |= ShutdownSend
		m.markReady(c)
	case evWritten:
		c.fwdCnt += uint32(e.n)
		if c.fwdCnt-c.fwdReported >= BufAlloc/4 {
			c.needCredit = true
			m.markReady(c)
		}
	case evWriteErr:
		m.log.Debug("vsock: host socket write", "port", c.key.host, "err", e.err)
		m.reset(c)
	case evDrained:
		// The guest shut down both directions and every byte it sent
		// reached the host: the connection is done (§5.10.6.5).
		m.reset(c)
	case evDrainTimeout:
		m.log.Debug("vsock: host peer did not take the guest's last bytes in time", "port", c.key.host)
		m.reset(c)
	}
}

// full reports whether the device carries as many connections as it may.
// Draining connections count: each still holds a host socket.
func (m *muxer) full() bool {
	return len(m.conns)+len(m.draining) >= m.dev.maxConns
}

// drain queues a marker behind c's last bytes for the host (the writer
// reports it with evDrained) and bounds how long the host peer may take
// to read them: at drainTimeout (Device.drainWait) the connection goes with whatever is left.
func (m *muxer) drain(c *conn) {
	if c.drainQueued {
		return
	}
	c.drainQueued = true
	c.wq.put(writeItem{marker: true})
	// Only established connections drain, so the REQUEST timer is done
	// with; remove stops this one.
	c.timer = time.AfterFunc(m.dev.drainWait, func() { m.post(event{kind: evDrainTimeout, c: c}) })
}

// processTx handles up to maxBatch packets the guest queued and reports
// whether more may be waiting (the tx notification is not armed then).
func (m *muxer) processTx() (more bool) {
	for range maxBatch {
		if m.broken || m.stopping() {
			return false
		}
		ch, ok, err := m.tx.Pop()
		if err != nil {
			m.fail(err)
			return false
		}
		if !ok {
			arrived, err := m.tx.Arm()
			if err != nil {
				m.fail(err)
				return false
			}
			if !arrived {
				return false
			}
			continue
		}
		if err := m.txPacket(ch); err != nil {
			m.fail(err)
			return false
		}
		if err := m.tx.Push(ch.Head, 0); err != nil {
			m.fail(err)
			return false
		}
	}
	return !m.broken
}

// txPacket handles one packet from the guest. Errors mean the chain can't
// be a packet at all; packets that make no sense get RST.
func (m *muxer) txPacket(ch virtio.Chain) error {
	if ch.ReadLen < HeaderSize {
		return fmt.Errorf("%w: tx chain head %d has %d readable bytes, need a %d-byte header", errMalformed, ch.Head, ch.ReadLen, HeaderSize)
	}
	r, err := ch.AppendReadable(m.txBufs[:0], m.tx.Mem(), 0)
	m.txBufs = r
	if err != nil {
		return err
	}
	defer clear(r) // no reference to guest memory kept
	var hb [HeaderSize]byte
	r.CopyOut(hb[:], 0)
	h := DecodeHeader(hb[:])
	payloadLen := ch.ReadLen - HeaderSize
	key := connKey{h.DstPort, h.SrcPort}
	c := m.conns[key]
	bad := func(why string) {
		m.log.Debug("vsock: bad packet from guest", "why", why, "hdr", h.String())
		if c != nil {
			m.reset(c)
		} else if h.Op != OpRST {
			m.orphanRST(h)
		}
	}
	switch {
	case h.SrcCID != m.cid:
		// Not from this guest: drop without a word (a reply would be
		// addressed to a CID that isn't there).
		m.log.Debug("vsock: packet with a foreign source CID", "hdr", h.String())
		return nil
	case h.DstCID != HostCID:
		bad("destination is not the host")
		return nil
	case h.Type != TypeStream:
		bad("not a stream packet")
		return nil
	case uint64(h.Len) > payloadLen:
		bad("len passes the end of the chain")
		return nil
	}
	if c != nil {
		c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	}
	switch h.Op {
	case OpRequest:
		if c != nil {
			bad("REQUEST on an existing connection")
			return nil
		}
		m.guestConnect(h)
	case OpResponse:
		if c == nil || c.state != stateConnecting {
			bad("unexpected RESPONSE")
			return nil
		}
		c.state = stateEstablished
		if c.timer != nil {
			c.timer.Stop()
		}
		c.wq.put(writeItem{data: fmt.Appendf(nil, "OK %d\n", c.key.host), handshake: true})
		m.markReady(c)
	case OpRST:
		switch {
		case c == nil:
		case c.state != stateEstablished:
			m.remove(c)
		default:
			// Forward what the guest sent before resetting, then close
			// the host socket; the ports are free at once.
			m.forget(c)
			m.draining[c] = struct{}{}
			c.detached = true
			if c.pending != nil {
				c.release()
			}
			m.drain(c)
		}
	case OpShutdown:
		if c == nil || c.state != stateEstablished {
			bad("SHUTDOWN without a connection")
			return nil
		}
		m.peerShutdown(c, h.Flags&shutdownBoth)
	case OpRW:
		if c == nil || c.state != stateEstablished {
			bad("RW without a connection")
			return nil
		}
		if c.peerShutdown&ShutdownSend != 0 {
			bad("RW after SHUTDOWN(SEND)")
			return nil
		}
		if h.Len > c.ourFree() {
			bad(fmt.Sprintf("RW of %d bytes exceeds the credit of %d", h.Len, c.ourFree()))
			return nil
		}
		if h.Len > 0 {
			data := make([]byte, h.Len)
			r.CopyOut(data, HeaderSize)
			c.rxCnt += h.Len
			c.wq.put(writeItem{data: data})
		}
		m.markReady(c) // the credit update may have opened our window
	case OpCreditUpdate:
		if c == nil {
			bad("CREDIT_UPDATE without a connection")
			return nil
		}
		c.creditRequested = false
		m.markReady(c)
	case OpCreditRequest:
		if c == nil {
			bad("CREDIT_REQUEST without a connection")
			return nil
		}
		c.needCredit = true
		m.markReady(c)
	default:
		bad("unknown operation")
	}
	return nil
}

// guestConnect serves a guest REQUEST for host port h.DstPort.
func (m *muxer) guestConnect(h Header) {
	if m.full() {
		m.log.Warn("vsock: too many connections, refusing guest REQUEST", "port", h.DstPort)
		m.orphanRST(h)
		return
	}
	c := m.newConn(connKey{h.DstPort, h.SrcPort}, nil, false)
	c.state = stateDialing
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	// Dial off the loop: a listener with a full backlog must not stall
	// every other connection.
	m.run.Go("dial", func(<-chan struct{}) {
		uc, err := m.dev.dialGuestPort(h.DstPort)
		if !m.post(event{kind: evDialed, c: c, uc: uc, err: err}) && uc != nil {
			uc.Close()
		}
	})
}

// peerShutdown applies a guest SHUTDOWN.
func (m *muxer) peerShutdown(c *conn, flags uint32) {
	newFlags := flags &^ c.peerShutdown
	c.peerShutdown |= flags
	if newFlags&ShutdownRcv != 0 {
		// The guest takes no more data: stop sending it.
		if c.pending != nil {
			c.release()
		}
	}
	if c.peerShutdown == shutdownBoth {
		m.drain(c)
		return
	}
	if newFlags&ShutdownSend != 0 {
		c.wq.put(writeItem{closeWrite: true})
	}
}

// orphanRST answers a packet that has no connection with RST.
func (m *muxer) orphanRST(h Header) {
	if len(m.orphans) >= maxOrphanRSTs {
		return
	}
	m.orphans = append(m.orphans, Header{
		SrcCID: HostCID, DstCID: m.cid, SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: TypeStream, Op: OpRST,
	})
}

// transportReset drops every connection without a word and tells the
// guest with VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.6), after which
// it re-reads guest_cid and forgets its connections; listening sockets
// survive.
func (m *muxer) transportReset(done chan error) {
	for _, c := range m.conns {
		m.remove(c)
	}
	for c := range m.draining {
		m.remove(c)
	}
	m.orphans = nil
	if m.evq == nil {
		done <- errors.New("the driver did not enable the event queue")
		return
	}
	ch, ok, err := m.evq.Pop()
	if err != nil {
		m.fail(err)
		done <- err
		return
	}
	if !ok {
		done <- errors.New("no event buffer from the driver")
		return
	}
	var ev [eventSize]byte
	binary.LittleEndian.PutUint32(ev[:], eventTransportReset)
	if ch.WriteLen < eventSize {
		err = fmt.Errorf("%w: event chain head %d has %d writable bytes, need %d", errMalformed, ch.Head, ch.WriteLen, eventSize)
	} else {
		_, err = ch.CopyIn(m.evq.Mem(), ev[:], 0)
	}
	if err != nil {
		m.fail(err)
		done <- err
		return
	}
	if err := m.evq.Push(ch.Head, eventSize); err != nil {
		m.fail(err)
		done <- err
		return
	}
	done <- nil
}

// flushRx sends the guest up to maxBatch packets it can take now and
// reports whether more may be owed.
func (m *muxer) flushRx() (more bool) {
	for range maxBatch {
		if m.broken || m.stopping() {
			return false
		}
		if len(m.orphans) == 0 && !m.readyWork() {
			return false
		}
		ch, ok, err := m.rx.Pop()
		if err != nil {
			m.fail(err)
			return false
		}
		if !ok {
			arrived, err := m.rx.Arm()
			if err != nil {
				m.fail(err)
				return false
			}
			if !arrived {
				return false // wait for the guest's rx kick
			}
			continue
		}
		if ch.WriteLen < HeaderSize {
			m.fail(fmt.Errorf("%w: rx chain head %d has %d writable bytes, need a %d-byte header", errMalformed, ch.Head, ch.WriteLen, HeaderSize))
			return false
		}
		w, err := ch.AppendWritable(m.rxBufs[:0], m.rx.Mem(), 0)
		m.rxBufs = w
		if err != nil {
			m.fail(err)
			return false
		}
		var n uint32
		if len(m.orphans) > 0 {
			h := m.orphans[0]
			m.orphans = m.orphans[1:]
			h.Encode(m.hdrBuf[:])
			w.CopyIn(m.hdrBuf[:], 0)
			n = HeaderSize
		} else {
			c := m.ready[0]
			n = m.buildPacket(c, w)
			m.ready = m.ready[1:]
			if !c.needRST && (c.removed || !c.hasWork()) {
				c.inReady = false
			} else {
				m.ready = append(m.ready, c) // round robin
			}
		}
		clear(w) // no reference to guest memory kept
		if err := m.rx.Push(ch.Head, n); err != nil {
			m.fail(err)
			return false
		}
	}
	return !m.broken
}

// readyWork drops ready connections with nothing to send and reports
// whether one is left at the head.
func (m *muxer) readyWork() bool {
	for len(m.ready) > 0 {
		c := m.ready[0]
		if c.needRST || (!c.removed && c.hasWork()) {
			return true
		}
		c.inReady = false
		m.ready = m.ready[1:]
	}
	return false
}

// buildPacket writes c's next packet into w (at least HeaderSize bytes)
// and returns its length.
func (m *muxer) buildPacket(c *conn, w virtio.Iovec) uint32 {
	h := Header{
		SrcCID: HostCID, DstCID: m.cid, SrcPort: c.key.host, DstPort: c.key.guest,
		Type: TypeStream, BufAlloc: BufAlloc, FwdCnt: c.fwdCnt,
	}
	var payload []byte
	switch {
	case c.needRST:
		h.Op = OpRST
		c.needRST = false
		c.inReady = false
	case c.needRequest:
		h.Op = OpRequest
		c.needRequest = false
	case c.needResponse:
		h.Op = OpResponse
		c.needResponse = false
	case c.canSendData():
		h.Op = OpRW
		n := min(uint64(len(c.pending)), uint64(c.peerFree()), w.Len()-HeaderSize, maxPacketPayload)
		payload = c.pending[:n]
		c.pending = c.pending[n:]
		c.txCnt += uint32(n)
		h.Len = uint32(n)
	case c.needCredit:
		h.Op = OpCreditUpdate
	case c.shutdownOwed&^c.shutdownSent != 0 && len(c.pending) == 0:
		h.Op = OpShutdown
		h.Flags = c.shutdownOwed
		c.shutdownSent = c.shutdownOwed
	default: // waiting for credit
		h.Op = OpCreditRequest
		c.creditRequested = true
	}
	c.needCredit = false
	c.fwdReported = c.fwdCnt
	h.Encode(m.hdrBuf[:])
	w.CopyIn(m.hdrBuf[:], 0)
	if len(payload) > 0 {
		w.CopyIn(payload, HeaderSize)
		if len(c.pending) == 0 {
			// Only now: the reader reuses the chunk's buffer.
			c.release()
		}
	}
	return HeaderSize + h.Len
}
