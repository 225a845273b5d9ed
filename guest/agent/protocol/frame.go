// Package protocol is the wire protocol between vmm's host-side shim and
// the guest agent (guest/agent): length-prefixed frames that multiplex JSON
// control calls and flow-controlled byte streams (a process's stdin, stdout
// and stderr) over one connection, usually a virtio-vsock stream. Both ends
// use Conn; the message types of every call are defined in messages.go.
// README.md in this directory is the specification.
package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this package speaks. The Hello call
// exchanges it; a peer with a different major version is refused.
const Version = 1

// Frame types.
const (
	FrameRequest  byte = 1 // id: request id; payload: JSON Request
	FrameResponse byte = 2 // id: request id; payload: JSON Response
	FrameData     byte = 3 // id: stream id; payload: stream bytes
	FrameClose    byte = 4 // id: stream id; no payload: the sender's end of the stream is done (EOF)
	FrameWindow   byte = 5 // id: stream id; payload: 4-byte big-endian credit in bytes
)

// headerSize is length (4) + type (1) + id (4).
const headerSize = 9

// Limits. A frame larger than MaxPayload makes the connection unusable
// (the reader cannot skip it safely without trusting the length), so the
// receiver closes the connection.
const (
	MaxPayload = 1 << 20
	// MaxData is the largest data payload a sender puts in one frame, so
	// control traffic is never stuck behind a long write.
	MaxData = 32 << 10
	// InitialWindow is how many bytes a sender may send on a new stream
	// before the receiver grants more.
	InitialWindow = 256 << 10
)

// frame is one decoded frame.
type frame struct {
	typ     byte
	id      uint32
	payload []byte
}

// ErrFrameTooLarge is returned by the reader for a frame over MaxPayload.
var ErrFrameTooLarge = errors.New("protocol: frame too large")

// readFrame reads one frame. It allocates the payload, whose size the
// header's length bounds to MaxPayload.
func readFrame(r io.Reader) (frame, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[0:4])
	f := frame{typ: hdr[4], id: binary.BigEndian.Uint32(hdr[5:9])}
	if n > MaxPayload {
		return frame{}, fmt.Errorf("%w: %d bytes (type %d, id %d)", ErrFrameTooLarge, n, f.typ, f.id)
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return frame{}, err
	}
	return f, nil
}

// appendFrame encodes a frame onto buf.
func appendFrame(buf []byte, typ byte, id uint32, payload []byte) []byte {
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(payload)))
	buf = append(buf, typ)
	buf = binary.BigEndian.AppendUint32(buf, id)
	return append(buf, payload...)
}
