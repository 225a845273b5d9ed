package vsock

import (
	"encoding/binary"
	"errors"
	"fmt"
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
