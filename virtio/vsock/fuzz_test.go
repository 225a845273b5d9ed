package vsock

import (
	"encoding/binary"
	"testing"
	"time"
)

// fuzzMaxPackets bounds the packets one input posts, so an input can't
// outgrow the tx ring's buffers many times over.
const fuzzMaxPackets = 64

// fuzzPackets splits data into raw tx packets: each is a little-endian
// uint16 length and that many bytes (header and payload), cut to one tx
// buffer. A packet shorter than a header is zero-padded: a chain too short
// for a header fails the device by design (TestHostileHeaders), which
// would end the exploration of everything behind it.
func fuzzPackets(data []byte) [][]byte {
	var out [][]byte
	for len(data) >= 2 && len(out) < fuzzMaxPackets {
		n := int(binary.LittleEndian.Uint16(data))
		data = data[2:]
		n = min(n, len(data), fgBufSize)
		p := make([]byte, max(n, HeaderSize))
		copy(p, data[:n])
		data = data[n:]
		out = append(out, p)
	}
	return out
}

// FuzzTxPackets is a hostile guest posting arbitrary tx packets, headers
// and payloads, next to one established host connection. The device must
// not fail (every chain holds a header), must take every buffer back, must
// send the guest only well-formed packets within its credit (the fake
// guest checks each one), and the established connection must still echo
// unless a packet was addressed to it.
//
// The device, its socket and the guest's memory are made once per fuzzing
// process; every input starts with a driver reset and re-activation
// (fakeGuest.startInput), a fresh muxer with no connection, as a new device
// would be, at a fraction of the cost.
func FuzzTxPackets(f *testing.F) {
	const guestPort = 1234
	hostPort := uint32(firstHostPort) // the first host-initiated connection's port
	pkt := func(h Header, payload []byte) []byte {
		h.Len = uint32(len(payload))
		b := make([]byte, 2+HeaderSize+len(payload))
		binary.LittleEndian.PutUint16(b, uint16(HeaderSize+len(payload)))
		h.Encode(b[2:])
		copy(b[2+HeaderSize:], payload)
		return b
	}
	cat := func(ps ...[]byte) []byte {
		var b []byte
		for _, p := range ps {
			b = append(b, p...)
		}
		return b
	}
	ours := Header{SrcCID: testCID, DstCID: HostCID, SrcPort: guestPort, DstPort: hostPort, Type: TypeStream,
		BufAlloc: 64 << 10}
	other := Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 777, DstPort: 888, Type: TypeStream, BufAlloc: 4096}
	with := func(h Header, op uint16, flags uint32) Header { h.Op, h.Flags = op, flags; return h }
	f.Add([]byte{})
	f.Add(pkt(with(other, OpRequest, 0), nil))
	f.Add(cat(pkt(with(other, OpRW, 0), []byte("no connection")), pkt(with(other, OpCreditRequest, 0), nil)))
	f.Add(pkt(with(ours, OpRW, 0), []byte("to the host")))
	f.Add(cat(pkt(with(ours, OpCreditUpdate, 0), nil), pkt(with(ours, OpCreditRequest, 0), nil)))
	f.Add(cat(pkt(with(ours, OpShutdown, ShutdownSend), nil), pkt(with(ours, OpRW, 0), []byte("late"))))
	f.Add(pkt(with(ours, OpRST, 0), nil))
	f.Add(pkt(with(other, 99, 0), nil))
	g := newFakeGuest(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		packets := fuzzPackets(data)
		addressed := false
		for _, p := range packets {
			h := DecodeHeader(p)
			addressed = addressed || (h.SrcPort == guestPort && h.DstPort == hostPort)
		}
		g.startInput(t)
		c := hostDial(t, g, guestPort)
		g.mu.Lock()
		for _, p := range packets {
			g.sendRaw = append(g.sendRaw, rawPacket{hdr: p})
		}
		g.mu.Unlock()
		g.wake()
		g.waitFor("every tx buffer back", 10*time.Second, func() bool {
			return len(g.sendRaw) == 0 && len(g.tx.free) == fgQueueSize
		})
		select {
		case err := <-g.fails:
			t.Fatalf("device failed: %v", err)
		default:
		}
		if !addressed {
			mustEcho(t, c, 4096)
		}
	})
}
