package protocol

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
)

// Handler serves one request arriving on conn. It runs in its own
// goroutine, so calls that block (Wait) do not hold up others; ctx ends
// when the connection closes. At most maxHandlers run at once per
// connection; requests beyond that get CodeResourceExhausted.
// Returning an *Error sends that code; any other error is sent as
// CodeInternal. A panic is recovered and answered as CodeInternal, so a
// bad request never takes the connection (or the agent) down.
type Handler func(ctx context.Context, conn *Conn, method string, params json.RawMessage) (any, error)

// ErrClosed is returned for calls and stream operations after the
// connection has closed.
var ErrClosed = errors.New("protocol: connection closed")

// maxStreams bounds the streams one connection may register, so a peer
// cannot make the agent allocate without bound.
const maxStreams = 4096

// Bounds on the requests one connection serves at once, so a peer that
// floods requests (and perhaps never reads the responses) costs this end
// at most maxHandlers goroutines and maxHandlerBytes of request payloads.
// A request beyond either bound is answered CodeResourceExhausted by the
// reader itself; see admit for why it is not queued instead.
const (
	maxHandlers     = 256
	maxHandlerBytes = 16 << 20
)

// Conn multiplexes calls and streams over one byte stream. Either end may
// call and either may serve (Handler may be nil for a pure client).
type Conn struct {
	rwc     io.ReadWriteCloser
	handler Handler

	ctx    context.Context
	cancel context.CancelFunc

	wmu sync.Mutex // serialises frame writes

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]chan Response
	streams map[uint32]*Stream
	err     error // why the connection closed
	done    chan struct{}

	handlers     int // requests being served (at most maxHandlers)
	handlerBytes int // their payload bytes (at most maxHandlerBytes)
}

// NewConn starts reading frames from rwc. Close it when done.
func NewConn(rwc io.ReadWriteCloser, handler Handler) *Conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Conn{
		rwc:     rwc,
		handler: handler,
		ctx:     ctx,
		cancel:  cancel,
		pending: make(map[uint32]chan Response),
		streams: make(map[uint32]*Stream),
		done:    make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// Done is closed once the connection has closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the connection closed (nil while open).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection; pending calls fail and streams end.
func (c *Conn) Close() error {
	c.closeWith(ErrClosed)
	return nil
}

func (c *Conn) closeWith(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	streams := make([]*Stream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	close(c.done)
	c.mu.Unlock()

	c.cancel()
	c.rwc.Close()
	for _, s := range streams {
		s.fail(err)
	}
}

func (c *Conn) readLoop() {
	for {
		f, err := readFrame(c.rwc)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = ErrClosed
			}
			c.closeWith(err)
			return
		}
		if err := c.dispatch(f); err != nil {
			c.closeWith(err)
			return
		}
	}
}

// dispatch handles one frame. Only violations that desynchronise the two
// ends (flow control) return an error; bad requests get error responses.
func (c *Conn) dispatch(f frame) error {
	switch f.typ {
	case FrameRequest:
		if !c.admit(len(f.payload)) {
			c.reply(f.id, nil, Errorf(CodeResourceExhausted,
				"more than %d requests or %d bytes of requests in flight", maxHandlers, maxHandlerBytes))
			return nil
		}
		go func() {
			defer c.release(len(f.payload))
			var req Request
			if err := json.Unmarshal(f.payload, &req); err != nil {
				c.reply(f.id, nil, Errorf(CodeInvalidArgument, "malformed request: %v", err))
				return
			}
			f.payload = nil // params hold what the handler needs
			c.serve(f.id, req)
		}()
	case FrameResponse:
		var resp Response
		if err := json.Unmarshal(f.payload, &resp); err != nil {
			resp = Response{Error: Errorf(CodeInternal, "malformed response: %v", err)}
		}
		c.mu.Lock()
		ch, ok := c.pending[f.id]
		delete(c.pending, f.id)
		c.mu.Unlock()
		if ok {
			ch <- resp
		}
	case FrameData, FrameClose, FrameWindow:
		c.mu.Lock()
		s := c.streams[f.id]
		c.mu.Unlock()
		if s == nil {
			// The stream was closed here already, or never existed:
			// what the peer sent has nowhere to go.
			return nil
		}
		return s.receive(f)
	default:
		// Unknown frame types are skipped so a newer peer's optional
		// frames do not break an older one.
	}
	return nil
}

// admit takes a handler slot for a request of n payload bytes, or
// reports that the connection is serving as much as it may.
//
// A full connection answers the request with an error rather than making
// the reader wait for a slot: the reader also carries the responses,
// stream data and window credit that running handlers wait for (a Wait
// returns only after its process's output was sent, which needs credit
// from the peer), so a reader parked on a slot could deadlock a
// well-behaved peer. The error is written by the reader, so a peer that
// floods requests and never reads is held back by its own full socket.
func (c *Conn) admit(n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handlers >= maxHandlers || c.handlerBytes+n > maxHandlerBytes {
		return false
	}
	c.handlers++
	c.handlerBytes += n
	return true
}

// release returns the handler slot admit took.
func (c *Conn) release(n int) {
	c.mu.Lock()
	c.handlers--
	c.handlerBytes -= n
	c.mu.Unlock()
}

func (c *Conn) serve(id uint32, req Request) {
	if c.handler == nil {
		c.reply(id, nil, Errorf(CodeUnimplemented, "this end serves no requests"))
		return
	}
	var (
		result any
		err    error
	)
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = Errorf(CodeInternal, "panic serving %s: %v\n%s", req.Method, p, debug.Stack())
			}
		}()
		result, err = c.handler(c.ctx, c, req.Method, req.Params)
	}()
	c.reply(id, result, err)
}

func (c *Conn) reply(id uint32, result any, err error) {
	var resp Response
	if err != nil {
		var perr *Error
		if !errors.As(err, &perr) {
			perr = &Error{Code: CodeInternal, Message: err.Error()}
		}
		resp.Error = perr
	} else {
		if result == nil {
			result = Empty{}
		}
		raw, merr := json.Marshal(result)
		if merr != nil {
			resp.Error = Errorf(CodeInternal, "encoding result: %v", merr)
		} else {
			resp.Result = raw
		}
	}
	payload, merr := json.Marshal(resp)
	if merr != nil {
		return
	}
	// A write error closes the connection; nobody is left to tell.
	_ = c.writeFrame(FrameResponse, id, payload)
}

func (c *Conn) writeFrame(typ byte, id uint32, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(payload))
	}
	buf := appendFrame(make([]byte, 0, headerSize+len(payload)), typ, id, payload)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.done:
		return c.Err()
	default:
	}
	if _, err := c.rwc.Write(buf); err != nil {
		err = fmt.Errorf("protocol: write: %w", err)
		go c.closeWith(err)
		return err
	}
	return nil
}

// Call sends a request and waits for its response, decoding the result
// into result (which may be nil). Errors from the peer are *Error.
func (c *Conn) Call(ctx context.Context, method string, params, result any) error {
	if params == nil {
		params = Empty{}
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return fmt.Errorf("encoding %s params: %w", method, err)
	}
	payload, err := json.Marshal(Request{Method: method, Params: raw})
	if err != nil {
		return fmt.Errorf("encoding %s request: %w", method, err)
	}

	ch := make(chan Response, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return Errorf(CodeUnavailable, "%s: %v", method, err)
	}
	c.nextID++
	if c.nextID == 0 {
		c.nextID++
	}
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	if err := c.writeFrame(FrameRequest, id, payload); err != nil {
		forget()
		return Errorf(CodeUnavailable, "%s: %v", method, err)
	}
	select {
	case resp := <-ch:
		if resp.Error != nil {
			return resp.Error
		}
		if result != nil {
			if err := json.Unmarshal(resp.Result, result); err != nil {
				return fmt.Errorf("decoding %s result: %w", method, err)
			}
		}
		return nil
	case <-ctx.Done():
		forget()
		return fmt.Errorf("%s: %w", method, ctx.Err())
	case <-c.done:
		forget()
		return Errorf(CodeUnavailable, "%s: %v", method, c.Err())
	}
}

// OpenStream registers stream id on this end so frames for it are kept
// rather than dropped. Ids are chosen by the client and must be nonzero
// and unused on the connection.
func (c *Conn) OpenStream(id uint32) (*Stream, error) {
	if id == 0 {
		return nil, Errorf(CodeInvalidArgument, "stream id 0 is reserved")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, Errorf(CodeUnavailable, "open stream %d: %v", id, c.err)
	}
	if _, ok := c.streams[id]; ok {
		return nil, Errorf(CodeAlreadyExists, "stream %d is in use", id)
	}
	if len(c.streams) >= maxStreams {
		return nil, Errorf(CodeInvalidArgument, "too many streams (%d)", maxStreams)
	}
	s := &Stream{c: c, id: id, sendWindow: InitialWindow}
	s.cond = sync.NewCond(&s.mu)
	c.streams[id] = s
	return s, nil
}

func (c *Conn) forgetStream(id uint32) {
	c.mu.Lock()
	delete(c.streams, id)
	c.mu.Unlock()
}

// Stream is one direction-agnostic byte stream of a Conn: Read returns
// what the peer sent on it, Write sends to the peer. Each direction is
// flow controlled: a writer may have at most InitialWindow bytes unread
// by the peer's reader.
type Stream struct {
	c  *Conn
	id uint32

	mu         sync.Mutex
	cond       *sync.Cond
	buf        []byte // received, not yet read
	remoteEOF  bool   // the peer sent FrameClose
	err        error  // the connection failed or the stream was closed
	ungranted  int    // bytes read but not yet granted back to the peer
	sendWindow int    // bytes we may still send
	wroteClose bool
}

// ID is the stream's id.
func (s *Stream) ID() uint32 { return s.id }

func (s *Stream) receive(f frame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch f.typ {
	case FrameData:
		if len(s.buf)+len(f.payload) > InitialWindow {
			return fmt.Errorf("protocol: stream %d: peer overran its window", s.id)
		}
		if s.err == nil && !s.remoteEOF {
			s.buf = append(s.buf, f.payload...)
		}
	case FrameClose:
		s.remoteEOF = true
	case FrameWindow:
		if len(f.payload) != 4 {
			return fmt.Errorf("protocol: stream %d: window frame of %d bytes", s.id, len(f.payload))
		}
		credit := int(binary.BigEndian.Uint32(f.payload))
		if credit > InitialWindow || s.sendWindow+credit > InitialWindow {
			return fmt.Errorf("protocol: stream %d: window credit beyond the initial window", s.id)
		}
		s.sendWindow += credit
	}
	s.cond.Broadcast()
	return nil
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

// Read returns data the peer sent, io.EOF after the peer closed its end.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	for len(s.buf) == 0 && !s.remoteEOF && s.err == nil {
		s.cond.Wait()
	}
	if len(s.buf) == 0 {
		defer s.mu.Unlock()
		if s.remoteEOF {
			return 0, io.EOF
		}
		return 0, s.err
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	if len(s.buf) == 0 {
		s.buf = nil // let the backing array go
	}
	s.ungranted += n
	var grant int
	// Grant in batches: one window frame per byte read would double the
	// frame count of an interactive session.
	// Batches cannot deadlock: a stalled sender has a full window
	// outstanding, so draining the buffer always passes the threshold.
	if s.ungranted >= MaxData {
		grant, s.ungranted = s.ungranted, 0
	}
	s.mu.Unlock()
	if grant > 0 {
		_ = s.c.writeFrame(FrameWindow, s.id, binary.BigEndian.AppendUint32(nil, uint32(grant)))
	}
	return n, nil
}

// Write sends p, blocking while the peer's window is full.
func (s *Stream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		s.mu.Lock()
		for s.sendWindow == 0 && s.err == nil && !s.wroteClose {
			s.cond.Wait()
		}
		if s.err != nil || s.wroteClose {
			err := s.err
			if err == nil {
				err = fmt.Errorf("protocol: write to stream %d after CloseWrite", s.id)
			}
			s.mu.Unlock()
			return written, err
		}
		n := min(len(p), s.sendWindow, MaxData)
		s.sendWindow -= n
		s.mu.Unlock()
		if err := s.c.writeFrame(FrameData, s.id, p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// CloseWrite tells the peer no more data follows (its reads get io.EOF).
func (s *Stream) CloseWrite() error {
	s.mu.Lock()
	if s.wroteClose || s.err != nil {
		s.mu.Unlock()
		return nil
	}
	s.wroteClose = true
	s.cond.Broadcast()
	s.mu.Unlock()
	return s.c.writeFrame(FrameClose, s.id, nil)
}

// CloseRead makes reads return io.EOF once buffered data is consumed, as
// if the peer had closed its end (used for an explicit CloseStdin call).
func (s *Stream) CloseRead() {
	s.mu.Lock()
	s.remoteEOF = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// Close releases the stream on this end: pending reads and writes fail
// and later frames for its id are dropped.
func (s *Stream) Close() error {
	s.c.forgetStream(s.id)
	s.fail(fmt.Errorf("protocol: stream %d closed", s.id))
	return nil
}
