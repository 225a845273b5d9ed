package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio/virtiotest"
)

// fuzzMaxSplits bounds the descriptors one transmit chain is cut into.
const fuzzMaxSplits = 16

// FuzzTxHeader transmits one frame with an arbitrary virtio_net_hdr
// (flags, GSO type and sizes, checksum offsets: §5.1.6) and payload, cut
// into descriptors at arbitrary points, through a device on a socket-pair
// backend, by io_uring bursts or frame by frame. The device never
// interprets the header, so whatever the guest put there reaches the host
// whole and unchanged, or is dropped and counted; the chain comes back
// with used length 0 and the device keeps running. A chain too short for
// the header fails the device with errMalformed, as it must.
func FuzzTxHeader(f *testing.F) {
	// Seeds: what Linux sends: plain, checksum offload, TSO v4/v6 and UFO.
	f.Add(uint8(0), uint8(0), uint16(0), uint16(0), uint16(0), uint16(0), []byte("plain ethernet frame"), []byte{}, false)
	f.Add(uint8(1), uint8(0), uint16(0), uint16(0), uint16(34), uint16(16), bytes.Repeat([]byte{1}, 100), []byte{12}, false)
	f.Add(uint8(1), uint8(1), uint16(54), uint16(1448), uint16(34), uint16(16), bytes.Repeat([]byte{2}, 3000), []byte{12, 66}, true)
	f.Add(uint8(1), uint8(4), uint16(74), uint16(1428), uint16(54), uint16(16), bytes.Repeat([]byte{3}, 3000), []byte{5, 12, 200}, false)
	f.Add(uint8(1), uint8(3), uint16(42), uint16(1472), uint16(34), uint16(6), bytes.Repeat([]byte{4}, 2000), []byte{12}, false)
	f.Add(uint8(0xff), uint8(0x81), uint16(0xffff), uint16(0xffff), uint16(0xffff), uint16(0xffff), []byte{}, []byte{3}, true)
	f.Fuzz(func(t *testing.T, flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16, payload, cuts []byte, frameByFrame bool) {
		if len(cuts) > fuzzMaxSplits || len(payload) > maxFrameLen {
			return
		}
		pkt := make([]byte, HeaderLen, HeaderLen+len(payload))
		pkt[0], pkt[1] = flags, gsoType
		binary.LittleEndian.PutUint16(pkt[2:], hdrLen)
		binary.LittleEndian.PutUint16(pkt[4:], gsoSize)
		binary.LittleEndian.PutUint16(pkt[6:], csumStart)
		binary.LittleEndian.PutUint16(pkt[8:], csumOffset)
		pkt = append(pkt, payload...)
		// Cut points: strictly inside pkt, distinct, ascending; 255
		// becomes a cut short of the header (the malformed chain).
		short := false
		var splits []int
		for _, c := range cuts {
			if c == 0xff {
				short = true
				continue
			}
			if s := int(c) * len(pkt) / 255; s > 0 && s < len(pkt) {
				splits = append(splits, s)
			}
		}
		slices.Sort(splits)
		splits = slices.Compact(splits)

		h := newHarnessConfig(t, 0, Config{ID: "fuzz", QueueSize: testQueue, frameByFrame: frameByFrame})
		h.activate()
		if short {
			a := h.tx.Alloc(HeaderLen-1, 8)
			h.tx.Post(h.tx.Chain(virtiotest.Buf{Addr: a, Len: HeaderLen - 1}))
			kick(h.txKick)
			if err := h.wantFail(); !errors.Is(err, errMalformed) {
				t.Fatalf("short chain failed the device with %v, want errMalformed", err)
			}
			return
		}
		head := h.sendTx(pkt, splits...)
		e, ok := h.tx.WaitUsed(5 * time.Second)
		if !ok || e.ID != uint32(head) || e.Len != 0 {
			t.Fatalf("used %+v %v, want head %d len 0", e, ok, head)
		}
		h.noFail()
		st := h.n.Stats()
		frames, dropped := st.TxFrames.Load(), st.TxDropped.Load()
		if frames+dropped != 1 {
			t.Fatalf("one frame counted as %d sent and %d dropped", frames, dropped)
		}
		if frames == 1 {
			if got := h.hostRead(); !bytes.Equal(got, pkt) {
				t.Fatalf("host got %d bytes, not the %d the guest sent", len(got), len(pkt))
			}
			if st.TxBytes.Load() != uint64(len(payload)) {
				t.Fatalf("tx bytes %d for a %d-byte frame", st.TxBytes.Load(), len(payload))
			}
		}
	})
}
