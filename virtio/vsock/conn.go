package vsock

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// connKey identifies a connection: the host-side and guest-side ports (the
// CIDs are fixed: HostCID and the guest's).
type connKey struct{ host, guest uint32 }

// connState is a connection's place in its life (§5.10.6.4).
type connState int

const (
	// stateConnecting: a host-initiated REQUEST is out, waiting for the
	// guest's RESPONSE or RST.
	stateConnecting connState = iota
	// stateEstablished: bytes flow.
	stateEstablished
	// stateDialing: a guest REQUEST waits for the host listener to
	// accept (the Unix socket isn't there yet).
	stateDialing
)

// conn is one stream. Everything but the Unix-socket pumps belongs to the
// muxer goroutine.
type conn struct {
	key      connKey
	uc       net.Conn // nil while dialing
	state    connState
	hostInit bool
	timer    *time.Timer

	// Guest to host: bytes received from the guest (rxCnt) and written to
	// the Unix socket (fwdCnt), and the fwd_cnt the guest last heard.
	rxCnt, fwdCnt, fwdReported uint32
	// Host to guest: bytes sent, and the guest's credit (§5.10.6.3).
	txCnt, peerBufAlloc, peerFwdCnt uint32
	// pending is the reader's current chunk not yet sent to the guest.
	pending []byte

	// Packets owed to the guest, in this order of priority.
	needRST, needRequest, needResponse, needCredit bool
	creditRequested                                bool
	shutdownOwed                                   uint32 // SHUTDOWN flags to send once pending is empty
	shutdownSent                                   uint32
	peerShutdown                                   uint32
	hostEOF                                        bool
	// drainOnFull: the guest shut down both directions; RST once the
	// writer has forwarded everything.
	drainQueued bool

	inReady  bool
	removed  bool
	detached bool // reset by the guest, draining its last bytes

	wq    *writeQueue
	grant chan struct{} // lets the reader read its next chunk
	dead  chan struct{} // closed when the connection is removed
}

// release drops the reader's chunk and lets it read the next one. Only
// call it while the reader waits (after its chunk arrived).
func (c *conn) release() {
	c.pending = nil
	select {
	case c.grant <- struct{}{}:
	default:
	}
}

// peerFree is how many more bytes the guest can take (§5.10.6.3:
// buf_alloc - (tx_cnt - peer fwd_cnt)).
func (c *conn) peerFree() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// ourFree is how many more bytes the guest may send us.
func (c *conn) ourFree() uint32 {
	used := c.rxCnt - c.fwdCnt
	if used >= BufAlloc {
		return 0
	}
	return BufAlloc - used
}

// canSendData reports whether an RW packet can go out now.
func (c *conn) canSendData() bool {
	return c.state == stateEstablished && len(c.pending) > 0 && c.peerFree() > 0 && c.peerShutdown&ShutdownRcv == 0
}

// hasWork reports whether the connection owes the guest a packet now.
func (c *conn) hasWork() bool {
	switch {
	case c.needRST, c.needRequest, c.needResponse, c.needCredit:
		return true
	case c.canSendData():
		return true
	case c.shutdownOwed&^c.shutdownSent != 0 && len(c.pending) == 0:
		return true
	case c.state == stateEstablished && len(c.pending) > 0 && c.peerFree() == 0 && !c.creditRequested:
		return true
	}
	return false
}

// writeItem is one thing for the writer to do.
type writeItem struct {
	data       []byte
	handshake  bool // the "OK <port>\n" line: not guest data, no credit
	closeWrite bool // half-close the Unix socket (the guest sends no more)
	marker     bool // report when everything before it is written
}

// writeQueue feeds a connection's writer goroutine. Its length is bounded
// by the credit the device gives the guest (BufAlloc bytes).
type writeQueue struct {
	mu    sync.Mutex
	items []writeItem
	sig   chan struct{}
}

func newWriteQueue() *writeQueue { return &writeQueue{sig: make(chan struct{}, 1)} }

func (q *writeQueue) put(it writeItem) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	select {
	case q.sig <- struct{}{}:
	default:
	}
}

func (q *writeQueue) take() []writeItem {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

// reader pumps the Unix socket into the muxer, one chunk at a time: it
// reads the next chunk only after the muxer sent the previous one to the
// guest, so a guest that doesn't take data stops the host's writes.
func (m *muxer) reader(c *conn) {
	buf := make([]byte, hostChunk)
	for {
		n, err := c.uc.Read(buf)
		if n > 0 {
			if !m.post(event{kind: evHostData, c: c, data: buf[:n]}) {
				return
			}
			select {
			case <-c.grant:
			case <-c.dead:
				return
			case <-m.quit:
				return
			}
		}
		if err != nil {
			m.post(event{kind: evHostEOF, c: c, err: err})
			return
		}
	}
}

// writer forwards the guest's bytes to the Unix socket.
func (m *muxer) writer(c *conn) {
	for {
		select {
		case <-c.wq.sig:
		case <-c.dead:
			return
		case <-m.quit:
			return
		}
		for _, it := range c.wq.take() {
			switch {
			case it.marker:
				if !m.post(event{kind: evDrained, c: c}) {
					return
				}
			case it.closeWrite:
				if cw, ok := c.uc.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
			default:
				n, err := writeFull(c.uc, it.data)
				if n > 0 && !it.handshake && !m.post(event{kind: evWritten, c: c, n: n}) {
					return
				}
				if err != nil {
					m.post(event{kind: evWriteErr, c: c, err: err})
					return
				}
			}
		}
	}
}

func writeFull(w net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := w.Write(b[n:])
		n += k
		if err != nil {
			return n, fmt.Errorf("write to host socket: %w", err)
		}
		if k == 0 {
			return n, errors.New("write to host socket: no progress")
		}
	}
	return n, nil
}
