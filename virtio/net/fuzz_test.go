package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
//
// The two devices (one per transmit mode), their socket pairs and guest
// RAM are made once per fuzzing process; every input activates one
// afresh on reset rings (a new io_uring included) and resets it at the
// end, as a driver would a new device.
func FuzzTxHeader(f *testing.F) {
	// Seeds: what Linux sends: plain, checksum offload, TSO v4/v6 and UFO.
	f.Add(uint8(0), uint8(0), uint16(0), uint16(0), uint16(0), uint16(0), []byte("plain ethernet frame"), []byte{}, false)
	f.Add(uint8(1), uint8(0), uint16(0), uint16(0), uint16(34), uint16(16), bytes.Repeat([]byte{1}, 100), []byte{12}, false)
	f.Add(uint8(1), uint8(1), uint16(54), uint16(1448), uint16(34), uint16(16), bytes.Repeat([]byte{2}, 3000), []byte{12, 66}, true)
	f.Add(uint8(1), uint8(4), uint16(74), uint16(1428), uint16(54), uint16(16), bytes.Repeat([]byte{3}, 3000), []byte{5, 12, 200}, false)
	f.Add(uint8(1), uint8(3), uint16(42), uint16(1472), uint16(34), uint16(6), bytes.Repeat([]byte{4}, 2000), []byte{12}, false)
	f.Add(uint8(0xff), uint8(0x81), uint16(0xffff), uint16(0xffff), uint16(0xffff), uint16(0xffff), []byte{}, []byte{3}, true)
	rigs := map[bool]*fuzzRig{false: newFuzzRig(f, false), true: newFuzzRig(f, true)}
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

		rig := rigs[frameByFrame]
		h := rig.start(t)
		if short {
			a := h.tx.Alloc(HeaderLen-1, 8)
			h.tx.Post(h.tx.Chain(virtiotest.Buf{Addr: a, Len: HeaderLen - 1}))
			kick(h.txKick)
			if err := h.wantFail(); !errors.Is(err, errMalformed) {
				t.Fatalf("short chain failed the device with %v, want errMalformed", err)
			}
			return
		}
		st := h.n.Stats()
		frames0, dropped0, bytes0 := st.TxFrames.Load(), st.TxDropped.Load(), st.TxBytes.Load()
		head := h.sendTx(pkt, splits...)
		e, ok := rig.waitUsed(5 * time.Second)
		if !ok || e.ID != uint32(head) || e.Len != 0 {
			t.Fatalf("used %+v %v, want head %d len 0", e, ok, head)
		}
		h.noFail()
		frames, dropped := st.TxFrames.Load()-frames0, st.TxDropped.Load()-dropped0
		if frames+dropped != 1 {
			t.Fatalf("one frame counted as %d sent and %d dropped", frames, dropped)
		}
		if frames == 1 {
			if got := h.hostRead(); !bytes.Equal(got, pkt) {
				t.Fatalf("host got %d bytes, not the %d the guest sent", len(got), len(pkt))
			}
			if n := st.TxBytes.Load() - bytes0; n != uint64(len(payload)) {
				t.Fatalf("tx bytes %d for a %d-byte frame", n, len(payload))
			}
		}
	})
}

// fuzzRig is a device, its socket pair and guest RAM, kept for every input
// of a fuzzing process.
type fuzzRig struct {
	h *harness
	// used is signalled by the tx queue's used-buffer notifications, so
	// waitUsed wakes at once rather than at a sleep's next millisecond.
	used chan struct{}
}

func newFuzzRig(f *testing.F, frameByFrame bool) *fuzzRig {
	return &fuzzRig{
		h:    newHarnessConfig(f, 0, Config{ID: "fuzz", QueueSize: testQueue, frameByFrame: frameByFrame}),
		used: make(chan struct{}, 1),
	}
}

// start readies the device for one input reported to t: fresh rings and
// queues, nothing left from the last input (failures, frames the host did
// not read), activated; it is reset when t ends.
func (r *fuzzRig) start(t *testing.T) *harness {
	h := r.h
	h.t = t
	h.rx.Reset()
	h.tx.Reset()
	var err error
	if h.rxq, err = h.rx.Queue(h.features, nil); err != nil {
		t.Fatal(err)
	}
	notify := func() {
		select {
		case r.used <- struct{}{}:
		default:
		}
	}
	if h.txq, err = h.tx.Queue(h.features, notify); err != nil {
		t.Fatal(err)
	}
	for len(h.fails) > 0 {
		<-h.fails
	}
	for len(r.used) > 0 {
		<-r.used
	}
	// The host's end is non-blocking: read what is there, never wait.
	rc, err := h.host.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, HeaderLen+maxFrameLen)
	for drained := false; !drained; {
		if err := rc.Read(func(fd uintptr) bool {
			_, rerr := unix.Read(int(fd), buf)
			drained = rerr != nil
			return true
		}); err != nil {
			t.Fatal(err)
		}
	}
	h.activate()
	return h
}

// waitUsed waits up to timeout for the next used transmit chain.
func (r *fuzzRig) waitUsed(timeout time.Duration) (virtiotest.UsedElem, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if e, ok := r.h.tx.PopUsed(); ok {
			return e, true
		}
		select {
		case <-r.used:
		case <-deadline.C:
			return r.h.tx.PopUsed()
		}
	}
}
