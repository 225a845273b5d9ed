package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
)

// Packet header (struct virtio_vsock_hdr, §5.10.6): le64 src_cid,
// le64 dst_cid, le32 src_port, le32 dst_port, le32 len, le16 type,
// le16 op, le32 flags, le32 buf_alloc, le32 fwd_cnt.
const (
	hdrSrcCID   = 0
	hdrDstCID   = 8
	hdrSrcPort  = 16
	hdrDstPort  = 20
	hdrLen      = 24
	hdrType     = 28
	hdrOp       = 30
	hdrFlags    = 32
	hdrBufAlloc = 36
	hdrFwdCnt   = 40
	// HeaderSize is the size of the packet header.
	HeaderSize = 44
)

// Socket types (§5.10.6).
const (
	TypeStream = 1 // VIRTIO_VSOCK_TYPE_STREAM
)

// Operations (§5.10.6).
const (
	OpInvalid       = 0 // VIRTIO_VSOCK_OP_INVALID
	OpRequest       = 1 // VIRTIO_VSOCK_OP_REQUEST
	OpResponse      = 2 // VIRTIO_VSOCK_OP_RESPONSE
	OpRST           = 3 // VIRTIO_VSOCK_OP_RST
	OpShutdown      = 4 // VIRTIO_VSOCK_OP_SHUTDOWN
	OpRW            = 5 // VIRTIO_VSOCK_OP_RW
	OpCreditUpdate  = 6 // VIRTIO_VSOCK_OP_CREDIT_UPDATE
	OpCreditRequest = 7 // VIRTIO_VSOCK_OP_CREDIT_REQUEST
)

// SHUTDOWN flags (§5.10.6.5).
const (
	ShutdownRcv  = 1 // VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE: the sender will receive no more
	ShutdownSend = 2 // VIRTIO_VSOCK_SHUTDOWN_F_SEND: the sender will send no more
	shutdownBoth = ShutdownRcv | ShutdownSend
)

// Events (struct virtio_vsock_event, §5.10.6.6): le32 id.
const (
	eventSize           = 4
	eventTransportReset = 0 // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
)

// Header is a decoded packet header.
type Header struct {
	SrcCID, DstCID   uint64
	SrcPort, DstPort uint32
	Len              uint32
	Type, Op         uint16
	Flags            uint32
	BufAlloc, FwdCnt uint32
}

// Encode writes h into b (at least HeaderSize bytes).
func (h *Header) Encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[hdrSrcCID:], h.SrcCID)
	le.PutUint64(b[hdrDstCID:], h.DstCID)
	le.PutUint32(b[hdrSrcPort:], h.SrcPort)
	le.PutUint32(b[hdrDstPort:], h.DstPort)
	le.PutUint32(b[hdrLen:], h.Len)
	le.PutUint16(b[hdrType:], h.Type)
	le.PutUint16(b[hdrOp:], h.Op)
	le.PutUint32(b[hdrFlags:], h.Flags)
	le.PutUint32(b[hdrBufAlloc:], h.BufAlloc)
	le.PutUint32(b[hdrFwdCnt:], h.FwdCnt)
}

// DecodeHeader reads a header from b (at least HeaderSize bytes).
func DecodeHeader(b []byte) Header {
	le := binary.LittleEndian
	return Header{
		SrcCID: le.Uint64(b[hdrSrcCID:]), DstCID: le.Uint64(b[hdrDstCID:]),
		SrcPort: le.Uint32(b[hdrSrcPort:]), DstPort: le.Uint32(b[hdrDstPort:]),
		Len: le.Uint32(b[hdrLen:]), Type: le.Uint16(b[hdrType:]), Op: le.Uint16(b[hdrOp:]),
		Flags: le.Uint32(b[hdrFlags:]), BufAlloc: le.Uint32(b[hdrBufAlloc:]), FwdCnt: le.Uint32(b[hdrFwdCnt:]),
	}
}

func (h *Header) String() string {
	return fmt.Sprintf("op %d type %d %d:%d -> %d:%d len %d flags %#x buf_alloc %d fwd_cnt %d",
		h.Op, h.Type, h.SrcCID, h.SrcPort, h.DstCID, h.DstPort, h.Len, h.Flags, h.BufAlloc, h.FwdCnt)
}

// errMalformed marks a chain that can't carry a packet at all (no room for
// the header): the driver broke the protocol.
var errMalformed = errors.New("malformed virtio-vsock packet")

// iovec is a list of guest-memory slices, one direction of a chain.
type iovec [][]byte

func (v iovec) size() uint64 {
	var n uint64
	for _, b := range v {
		n += uint64(len(b))
	}
	return n
}

// copyOut copies up to len(p) bytes from the start of v into p and returns
// how many it copied.
func (v iovec) copyOut(p []byte) int {
	n := 0
	for _, b := range v {
		if n == len(p) {
			break
		}
		n += copy(p[n:], b)
	}
	return n
}

// skip returns v without its first n bytes.
func (v iovec) skip(n uint64) iovec {
	for len(v) > 0 && n > 0 {
		if uint64(len(v[0])) > n {
			return append(iovec{v[0][n:]}, v[1:]...)
		}
		n -= uint64(len(v[0]))
		v = v[1:]
	}
	return v
}

// copyIn copies p into the start of v and returns how many bytes fit.
func (v iovec) copyIn(p []byte) int {
	n := 0
	for _, b := range v {
		if n == len(p) {
			break
		}
		n += copy(b, p[n:])
	}
	return n
}

// buffers maps a chain's readable and writable buffers.
func buffers(mem *memory.Guest, c virtio.Chain) (r, w iovec, err error) {
	for _, b := range c.Buffers {
		s, err := mem.Slice(b.Addr, uint64(b.Len))
		if err != nil {
			return nil, nil, fmt.Errorf("map buffer: %w", err)
		}
		if b.Write {
			w = append(w, s)
		} else {
			r = append(r, s)
		}
	}
	return r, w, nil
}
