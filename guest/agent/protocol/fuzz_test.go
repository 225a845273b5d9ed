package protocol

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// fuzzSeeds are valid streams of frames, the corpus both targets start from.
func fuzzSeeds() [][]byte {
	req := func(id uint32, method, params string) []byte {
		p, _ := json.Marshal(Request{Method: method, Params: json.RawMessage(params)})
		return rawFrame(FrameRequest, id, p)
	}
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	return [][]byte{
		{},
		req(1, MethodHello, `{"version":1}`),
		cat(req(1, MethodPing, `{}`), req(2, "Nope", `null`), rawFrame(FrameRequest, 3, []byte("not json"))),
		cat(rawFrame(FrameData, 1, []byte("stdout bytes")), rawFrame(FrameClose, 1, nil)),
		cat(rawFrame(FrameWindow, 2, []byte{0, 0, 0x80, 0}), rawFrame(FrameData, 2, nil)),
		rawFrame(FrameResponse, 7, []byte(`{"result":{}}`)),
		rawFrame(99, 1, []byte("unknown type")),
		{0x00, 0x10, 0x00, 0x01, FrameRequest, 0, 0, 0, 1}, // over MaxPayload
		{0, 0, 0, 5, FrameData, 0, 0, 0, 1, 'a'},           // truncated payload
	}
}

// FuzzReadFrame decodes arbitrary bytes as a sequence of frames: every frame
// read re-encodes to exactly the bytes it came from, no payload exceeds
// MaxPayload, and decoding ends only with the documented errors.
func FuzzReadFrame(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			before := len(data) - r.Len()
			fr, err := readFrame(r)
			if err != nil {
				switch {
				case errors.Is(err, io.EOF) && before == len(data):
				case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, ErrFrameTooLarge):
				default:
					t.Fatalf("readFrame at %d of %d: undocumented error %v", before, len(data), err)
				}
				return
			}
			if len(fr.payload) > MaxPayload {
				t.Fatalf("payload of %d bytes passed the %d limit", len(fr.payload), MaxPayload)
			}
			consumed := data[before : len(data)-r.Len()]
			if got := appendFrame(nil, fr.typ, fr.id, fr.payload); !bytes.Equal(got, consumed) {
				t.Fatalf("frame re-encodes to %x, read from %x", got, consumed)
			}
		}
	})
}

// fuzzPeer is the far end of a Conn under fuzzing: it sends a fixed byte
// string, then EOF, and checks every frame the Conn writes back as it is
// written. Problems are recorded, not reported through t, since late
// writes may come after the fuzz iteration is over.
type fuzzPeer struct {
	r        *bytes.Reader
	requests map[uint32]bool // ids of the request frames in the input

	mu        sync.Mutex
	responses int
	problems  []string
}

func (p *fuzzPeer) Read(b []byte) (int, error) { return p.r.Read(b) }
func (p *fuzzPeer) Close() error               { return nil }

func (p *fuzzPeer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fr, err := readFrame(bytes.NewReader(b))
	switch {
	case err != nil:
		p.problems = append(p.problems, fmt.Sprintf("wrote an undecodable frame %x: %v", b, err))
	case fr.typ != FrameResponse:
		// Nothing was read from a stream, so no window grant is due, and
		// this end makes no calls.
		p.problems = append(p.problems, fmt.Sprintf("wrote an unprompted frame of type %d", fr.typ))
	case !p.requests[fr.id]:
		p.problems = append(p.problems, fmt.Sprintf("answered id %d, which no request carried", fr.id))
	default:
		p.responses++
		var resp Response
		if err := json.Unmarshal(fr.payload, &resp); err != nil || (resp.Error == nil) == (resp.Result == nil) {
			p.problems = append(p.problems, fmt.Sprintf("response %s is not exactly one of result and error", fr.payload))
		}
	}
	return len(b), nil
}

// FuzzConn feeds arbitrary bytes to both ends of the protocol: the agent's
// (a handler serving every request) and the host's (no handler, streams
// open as during an exec). Either must close cleanly at the end of the
// input with a documented error, never buffer a stream past its window,
// and write back only well-formed responses to requests it was sent.
func FuzzConn(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	agent := func(ctx context.Context, conn *Conn, method string, params json.RawMessage) (any, error) {
		if method == MethodPing {
			return params, nil
		}
		if len(method)%2 == 0 {
			panic("handler panic, recovered by serve")
		}
		return nil, Errorf(CodeUnimplemented, "%s", method)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		requests := make(map[uint32]bool)
		requestFrames := 0
		for r := bytes.NewReader(data); ; {
			fr, err := readFrame(r)
			if err != nil {
				break
			}
			if fr.typ == FrameRequest {
				requests[fr.id] = true
				requestFrames++
			}
		}
		for _, handler := range []Handler{agent, nil} {
			peer := &fuzzPeer{r: bytes.NewReader(data), requests: requests}
			c := NewConn(peer, handler)
			var streams []*Stream
			if handler == nil {
				for id := uint32(1); id <= 3; id++ {
					s, err := c.OpenStream(id)
					if err != nil {
						break // the input may already have closed c
					}
					streams = append(streams, s)
				}
			}
			select {
			case <-c.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("connection still open 10s after its input ended")
			}
			err := c.Err()
			switch {
			case errors.Is(err, ErrClosed), errors.Is(err, ErrFrameTooLarge), errors.Is(err, io.ErrUnexpectedEOF):
			case err != nil && strings.HasPrefix(err.Error(), "protocol: stream "):
			default:
				t.Fatalf("closed with undocumented error %v", err)
			}
			for _, s := range streams {
				got, rerr := io.ReadAll(io.LimitReader(s, InitialWindow+1))
				if len(got) > InitialWindow {
					t.Fatalf("stream %d buffered %d bytes, more than its %d window", s.id, len(got), InitialWindow)
				}
				if rerr != nil && !errors.Is(rerr, err) {
					t.Fatalf("stream %d failed with %v, not the connection's %v", s.id, rerr, err)
				}
			}
			peer.mu.Lock()
			if len(peer.problems) > 0 {
				t.Fatalf("%d problems, first: %s", len(peer.problems), peer.problems[0])
			}
			if peer.responses > requestFrames {
				t.Fatalf("%d responses to %d requests", peer.responses, requestFrames)
			}
			peer.mu.Unlock()
		}
	})
}
