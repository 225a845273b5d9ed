package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

const (
	testQueue = 64
	testRAM   = 8 << 20
)

// pairBackend is a Backend over one end of a SOCK_SEQPACKET socket pair,
// which keeps frame boundaries as a tap does; the test holds the other end.
type pairBackend struct {
	*os.File
	offload atomic.Int64
}

func (p *pairBackend) SetOffload(flags uint) error {
	p.offload.Store(int64(flags))
	return nil
}

// newPair returns the device's backend and the host side's end.
func newPair(t testing.TB) (*pairBackend, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Room for a burst of 64 KiB frames.
	for _, fd := range fds {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	host := os.NewFile(uintptr(fds[1]), "host")
	t.Cleanup(func() { host.Close() })
	return &pairBackend{File: os.NewFile(uintptr(fds[0]), "device")}, host
}

// newDriver makes a fake driver over mmap'd RAM, which the race detector
// doesn't track: the test touches the rings while the device runs, as a
// guest does, and the ring protocol (not Go's memory model) orders it.
func newDriver(t testing.TB) *virtiotest.Driver {
	t.Helper()
	return virtiotest.NewMappedDriver(t, testRAM, testQueue)
}

// harness is a fake guest driving a Net's two queues; each queue has its
// own fake RAM (the device only uses a queue's own memory).
type harness struct {
	t        testing.TB
	n        *Net
	be       *pairBackend
	host     *os.File
	rx, tx   *virtiotest.Driver
	rxq, txq *virtio.Queue
	rxKick   chan struct{}
	txKick   chan struct{}
	fails    chan error
	features uint64
	active   bool
}

func newHarness(t testing.TB, features uint64) *harness {
	t.Helper()
	return newHarnessConfig(t, features, Config{ID: "test", QueueSize: testQueue})
}

// newHarnessConfig is newHarness with a device configuration of the
// test's.
func newHarnessConfig(t testing.TB, features uint64, cfg Config) *harness {
	t.Helper()
	be, host := newPair(t)
	n, err := New(cfg, be)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	h := &harness{t: t, n: n, be: be, host: host, rxKick: make(chan struct{}, 1), txKick: make(chan struct{}, 1), fails: make(chan error, 16)}
	h.features = features | virtio.FeatureVersion1
	h.rx, h.tx = newDriver(t), newDriver(t)
	if h.rxq, err = h.rx.Queue(h.features, nil); err != nil {
		t.Fatal(err)
	}
	if h.txq, err = h.tx.Queue(h.features, nil); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) activate() {
	h.t.Helper()
	a := &virtio.Activation{
		Mem: h.rx.Mem, Features: h.features,
		Queues: []*virtio.Queue{h.rxq, h.txq}, Kicks: []<-chan struct{}{h.rxKick, h.txKick},
		Fail: func(err error) { h.fails <- err },
	}
	if err := h.n.Activate(a); err != nil {
		h.t.Fatal(err)
	}
	h.active = true
	h.t.Cleanup(h.n.Reset)
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// postRx posts one receive chain of the given buffer sizes and returns
// the buffers' addresses.
func (h *harness) postRx(sizes ...uint32) (uint16, []uint64) {
	var bufs []virtiotest.Buf
	var addrs []uint64
	for _, s := range sizes {
		a := h.rx.Alloc(uint64(s), 8)
		bufs = append(bufs, virtiotest.Buf{Addr: a, Len: s, Write: true})
		addrs = append(addrs, a)
	}
	head := h.rx.Chain(bufs...)
	h.rx.Post(head)
	if h.active {
		kick(h.rxKick)
	}
	return head, addrs
}

// sendTx posts a transmit chain with pkt split at the given points.
func (h *harness) sendTx(pkt []byte, splits ...int) uint16 {
	var bufs []virtiotest.Buf
	prev := 0
	for _, s := range append(splits, len(pkt)) {
		a := h.tx.Alloc(uint64(s-prev), 8)
		h.tx.Write(a, pkt[prev:s])
		bufs = append(bufs, virtiotest.Buf{Addr: a, Len: uint32(s - prev)})
		prev = s
	}
	head := h.tx.Chain(bufs...)
	h.tx.Post(head)
	kick(h.txKick)
	return head
}

// hostRead reads one frame the device sent, with a timeout.
func (h *harness) hostRead() []byte {
	h.t.Helper()
	if err := h.host.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		h.t.Fatal(err)
	}
	b := make([]byte, HeaderLen+maxFrameLen)
	n, err := h.host.Read(b)
	if err != nil {
		h.t.Fatalf("host read: %v", err)
	}
	return b[:n]
}

func (h *harness) hostWrite(frame []byte) {
	h.t.Helper()
	if _, err := h.host.Write(frame); err != nil {
		h.t.Fatalf("host write: %v", err)
	}
}

func (h *harness) noFail() {
	h.t.Helper()
	select {
	case err := <-h.fails:
		h.t.Fatalf("device failed: %v", err)
	default:
	}
}

func (h *harness) wantFail() error {
	h.t.Helper()
	select {
	case err := <-h.fails:
		return err
	case <-time.After(5 * time.Second):
		h.t.Fatal("device did not fail")
		return nil
	}
}

// frame returns a header (with num_buffers 0) and an n-byte pattern.
func frame(n int, seed byte) []byte {
	b := make([]byte, HeaderLen+n)
	for i := range n {
		b[HeaderLen+i] = byte(i)*7 + seed
	}
	return b
}

func TestConfigSpace(t *testing.T) {
	be, _ := newPair(t)
	mac := []byte{0x06, 0, 0x0a, 0xc8, 0, 2}
	n, err := New(Config{ID: "x", MAC: mac}, be)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	cfg := make([]byte, 12)
	n.ReadConfig(0, cfg)
	if !bytes.Equal(cfg[:6], mac) || binary.LittleEndian.Uint16(cfg[6:]) != statusLinkUp || !bytes.Equal(cfg[8:], make([]byte, 4)) {
		t.Errorf("config space %x", cfg)
	}
	if n.Type() != virtio.TypeNet || len(n.QueueSizes()) != 2 {
		t.Errorf("type %d queues %v", n.Type(), n.QueueSizes())
	}
	f := n.Features()
	for _, want := range []uint64{FeatureMAC, FeatureStatus, FeatureCsum, FeatureGuestCsum, FeatureGuestTSO4, FeatureGuestTSO6, FeatureHostTSO4, FeatureHostTSO6, FeatureMrgRxbuf} {
		if f&want == 0 {
			t.Errorf("feature %#x not offered", want)
		}
	}
	if _, err := New(Config{ID: "m", MAC: []byte{1, 0, 0, 0, 0, 1}}, be); err == nil {
		t.Error("multicast MAC accepted")
	}
	if _, err := New(Config{ID: "q", QueueSize: 100}, be); err == nil {
		t.Error("queue size 100 accepted")
	}
}

func TestStableMAC(t *testing.T) {
	a, b, c := StableMAC("vm1/tap0"), StableMAC("vm1/tap0"), StableMAC("vm1/tap1")
	if !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Errorf("StableMAC not stable or not distinct: %v %v %v", a, b, c)
	}
	if a[0]&1 != 0 || a[0]&2 == 0 {
		t.Errorf("StableMAC %v is not a locally administered unicast address", a)
	}
}

func TestOffloads(t *testing.T) {
	for _, tt := range []struct {
		features uint64
		want     uint
	}{
		{0, 0},
		{FeatureGuestTSO4, 0}, // TSO without checksum offload is meaningless
		{FeatureGuestCsum, tunFCsum},
		{FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN, tunFCsum | tunFTSO4 | tunFTSO6 | tunFTSOECN},
		{FeatureGuestCsum | FeatureGuestECN, tunFCsum},
	} {
		if got := tunOffloads(tt.features); got != tt.want {
			t.Errorf("tunOffloads(%#x) = %#x, want %#x", tt.features, got, tt.want)
		}
	}
	h := newHarness(t, FeatureGuestCsum|FeatureGuestTSO4)
	h.activate()
	if got := h.be.offload.Load(); got != tunFCsum|tunFTSO4 {
		t.Errorf("offload after activation %#x", got)
	}
	h.n.Reset()
	if got := h.be.offload.Load(); got != 0 {
		t.Errorf("offload after reset %#x", got)
	}
}

func TestTransmit(t *testing.T) { ioModes(t, testTransmit) }

func testTransmit(t *testing.T, cfg Config) {
	h := newHarnessConfig(t, 0, cfg)
	h.activate()
	pkt := frame(1000, 1)
	pkt[0] = 1 // flags: NEEDS_CSUM, passed through untouched
	head := h.sendTx(pkt, HeaderLen, 500)
	if got := h.hostRead(); !bytes.Equal(got, pkt) {
		t.Errorf("host got %d bytes, want the %d the guest sent", len(got), len(pkt))
	}
	e, ok := h.tx.WaitUsed(5 * time.Second)
	if !ok || e.ID != uint32(head) || e.Len != 0 {
		t.Fatalf("used %+v %v, want head %d len 0", e, ok, head)
	}
	h.noFail()
	if h.n.Stats().TxFrames.Load() != 1 || h.n.Stats().TxBytes.Load() != 1000 {
		t.Errorf("tx stats %d frames %d bytes", h.n.Stats().TxFrames.Load(), h.n.Stats().TxBytes.Load())
	}

	// Through an indirect table as well.
	h = newHarnessConfig(t, virtio.FeatureIndirectDesc, cfg)
	h.activate()
	a := h.tx.Alloc(uint64(len(pkt)), 8)
	h.tx.Write(a, pkt)
	head = h.tx.IndirectChain(virtiotest.Buf{Addr: a, Len: HeaderLen}, virtiotest.Buf{Addr: a + HeaderLen, Len: uint32(len(pkt) - HeaderLen)})
	h.tx.Post(head)
	kick(h.txKick)
	if got := h.hostRead(); !bytes.Equal(got, pkt) {
		t.Errorf("indirect: host got %d bytes, want %d", len(got), len(pkt))
	}
	if _, ok := h.tx.WaitUsed(5 * time.Second); !ok {
		t.Fatal("indirect chain not returned")
	}
	h.noFail()
}

// ioModes runs test with bursts of frames through io_uring and frame by
// frame (as on a host without io_uring).
func ioModes(t *testing.T, test func(t *testing.T, cfg Config)) {
	for _, m := range []struct {
		name         string
		frameByFrame bool
	}{{"io_uring", false}, {"frame-by-frame", true}} {
		t.Run(m.name, func(t *testing.T) {
			test(t, Config{ID: "test", QueueSize: testQueue, frameByFrame: m.frameByFrame})
		})
	}
}

// Many frames of many sizes in a few notifications: all reach the host,
// whole and in order, and every chain comes back.
func TestTransmitBursts(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		h := newHarnessConfig(t, 0, cfg)
		var want [][]byte
		var heads []uint16
		post := func(k int) {
			for range k {
				i := len(want)
				pkt := frame(60+(i*97)%1400, byte(i))
				a := h.tx.Alloc(uint64(len(pkt)), 8)
				h.tx.Write(a, pkt)
				heads = append(heads, h.tx.Chain(virtiotest.Buf{Addr: a, Len: uint32(len(pkt))}))
				h.tx.Post(heads[len(heads)-1])
				want = append(want, pkt)
			}
		}
		post(testQueue / 2) // there before activation
		h.activate()
		kick(h.txKick)
		for i := 0; i < len(want); i++ {
			if got := h.hostRead(); !bytes.Equal(got, want[i]) {
				t.Fatalf("frame %d: host got %d bytes, want %d (out of order or damaged)", i, len(got), len(want[i]))
			}
		}
		seen := map[uint32]bool{}
		for range heads {
			e, ok := h.tx.WaitUsed(5 * time.Second)
			if !ok {
				t.Fatalf("%d of %d chains returned", len(seen), len(heads))
			}
			seen[e.ID] = true
		}
		h.noFail()
		if got := h.n.Stats().TxFrames.Load(); got != uint64(len(want)) || h.n.Stats().TxDropped.Load() != 0 {
			t.Errorf("stats: %d frames sent, %d dropped; want %d and 0", got, h.n.Stats().TxDropped.Load(), len(want))
		}
	})
}

// A backend with no room (the host is not reading): the device waits for
// room, losing and reordering nothing, and Reset still ends it.
func TestTransmitBackPressure(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		h := newHarnessConfig(t, 0, cfg)
		fd := int(h.be.File.Fd())
		// A socket buffer that holds a few frames only.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<10); err != nil {
			t.Fatal(err)
		}
		h.activate()
		var want [][]byte
		for i := range testQueue / 2 {
			pkt := frame(1000+(i%3)*200, byte(i)) // sizes vary: a smaller one must not overtake
			want = append(want, pkt)
			h.sendTx(pkt)
		}
		time.Sleep(50 * time.Millisecond) // the device fills the buffer and waits
		for i := range want {
			if got := h.hostRead(); !bytes.Equal(got, want[i]) {
				t.Fatalf("frame %d: host got %d bytes, want %d (lost or out of order)", i, len(got), len(want[i]))
			}
		}
		h.noFail()
		if got := h.n.Stats().TxFrames.Load(); got != uint64(len(want)) {
			t.Errorf("%d frames sent, want %d", got, len(want))
		}

		// Full again, and nobody reads: Reset must not wait for room.
		for i := range testQueue / 2 {
			h.sendTx(frame(1400, byte(i)))
		}
		time.Sleep(50 * time.Millisecond)
		done := make(chan struct{})
		go func() { h.n.Reset(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Reset blocked behind a full backend")
		}
	})
}

func TestReceive(t *testing.T) { ioModes(t, testReceive) }

func testReceive(t *testing.T, cfg Config) {
	h := newHarnessConfig(t, 0, cfg)
	head, addrs := h.postRx(HeaderLen, 1600)
	h.activate()
	pkt := frame(1500, 2)
	h.hostWrite(pkt)
	e, ok := h.rx.WaitUsed(5 * time.Second)
	if !ok || e.ID != uint32(head) || e.Len != uint32(len(pkt)) {
		t.Fatalf("used %+v %v, want head %d len %d", e, ok, head, len(pkt))
	}
	hdr := h.rx.Read(addrs[0], HeaderLen)
	if nb := binary.LittleEndian.Uint16(hdr[hdrNumBuffersOff:]); nb != 1 {
		t.Errorf("num_buffers %d, want 1", nb)
	}
	if got := h.rx.Read(addrs[1], 1500); !bytes.Equal(got, pkt[HeaderLen:]) {
		t.Error("frame data differs")
	}
	h.noFail()
}

// TestReceiveMergeable spreads one frame over several chains
// (VIRTIO_NET_F_MRG_RXBUF, §5.1.6.4) and reports the count in the first
// header.
func TestReceiveMergeable(t *testing.T) { ioModes(t, testReceiveMergeable) }

func testReceiveMergeable(t *testing.T, cfg Config) {
	h := newHarnessConfig(t, FeatureMrgRxbuf, cfg)
	type post struct {
		head uint16
		addr uint64
	}
	var posts []post
	for range 4 {
		head, a := h.postRx(1024)
		posts = append(posts, post{head, a[0]})
	}
	h.activate()
	pkt := frame(3000, 3)
	h.hostWrite(pkt)
	var got []byte
	for i := range 3 {
		e, ok := h.rx.WaitUsed(5 * time.Second)
		if !ok || e.ID != uint32(posts[i].head) {
			t.Fatalf("used %d: %+v %v, want head %d", i, e, ok, posts[i].head)
		}
		got = append(got, h.rx.Read(posts[i].addr, int(e.Len))...)
	}
	if len(got) != len(pkt) {
		t.Fatalf("got %d bytes over 3 chains, want %d", len(got), len(pkt))
	}
	if nb := binary.LittleEndian.Uint16(got[hdrNumBuffersOff:]); nb != 3 {
		t.Errorf("num_buffers %d, want 3", nb)
	}
	if !bytes.Equal(got[HeaderLen:], pkt[HeaderLen:]) {
		t.Error("frame data differs")
	}
	// A frame waiting for more buffers is held, not dropped.
	h.hostWrite(frame(2000, 4))
	e, ok := h.rx.WaitUsed(200 * time.Millisecond)
	if ok {
		t.Fatalf("frame completed with too few buffers: %+v", e)
	}
	h.postRx(1024)
	for i := range 2 {
		if _, ok := h.rx.WaitUsed(5 * time.Second); !ok {
			t.Fatalf("chain %d of the held frame not returned", i)
		}
	}
	h.noFail()
	if h.n.Stats().RxFrames.Load() != 2 || h.n.Stats().RxDropped.Load() != 0 {
		t.Errorf("rx stats: %d frames %d dropped", h.n.Stats().RxFrames.Load(), h.n.Stats().RxDropped.Load())
	}
}

// TestReceiveTooSmall: without MRG_RXBUF a frame larger than the chain is
// dropped and the chain reused for the next one.
// Many frames already queued on the backend when the driver posts its
// buffers, some spilling over several (MRG_RXBUF): every frame arrives
// whole and in order, with the right num_buffers, in chains published in
// the order used.
func TestReceiveBursts(t *testing.T) { ioModes(t, testReceiveBursts) }

func testReceiveBursts(t *testing.T, cfg Config) {
	h := newHarnessConfig(t, FeatureMrgRxbuf, cfg)
	addr := map[uint32]uint64{}
	post := func(k int) {
		for range k {
			head, a := h.postRx(1024)
			addr[uint32(head)] = a[0]
		}
	}
	var want [][]byte
	for i := range 40 {
		pkt := frame(50+(i*331)%2900, byte(i)) // 1 to 3 chains each
		want = append(want, pkt)
		h.hostWrite(pkt)
	}
	post(testQueue / 2)
	h.activate()
	for i, pkt := range want {
		var got []byte
		chains := 0
		for len(got) < len(pkt) {
			e, ok := h.rx.WaitUsed(5 * time.Second)
			if !ok {
				t.Fatalf("frame %d: %d of %d bytes arrived", i, len(got), len(pkt))
			}
			got = append(got, h.rx.Read(addr[e.ID], int(e.Len))...)
			chains++
			post(1)
		}
		if nb := binary.LittleEndian.Uint16(got[hdrNumBuffersOff:]); int(nb) != chains {
			t.Fatalf("frame %d: num_buffers %d, spread over %d chains", i, nb, chains)
		}
		if !bytes.Equal(got[HeaderLen:], pkt[HeaderLen:]) {
			t.Fatalf("frame %d: %d bytes, want %d (damaged or out of order)", i, len(got), len(pkt))
		}
	}
	h.noFail()
	if got := h.n.Stats().RxFrames.Load(); got != uint64(len(want)) || h.n.Stats().RxDropped.Load() != 0 {
		t.Errorf("rx stats: %d frames, %d dropped; want %d and 0", got, h.n.Stats().RxDropped.Load(), len(want))
	}
}

// Frames that spill over into chains the driver has not posted yet: the
// frames already read in a burst must reach the driver first, or it never
// gets buffers back to post (two chains, two frames of two chains each;
// then a ring of Linux-sized buffers against a backlog of large frames).
func TestReceiveSpillWaitsForDriver(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		for _, tc := range []struct {
			name          string
			posted        int
			buf           uint32
			frames, fsize int
		}{
			{"two chains", 2, 1024, 2, 1500},
			{"full ring of large frames", testQueue, 1536, 16, 16000},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h := newHarnessConfig(t, FeatureMrgRxbuf, cfg)
				for range tc.posted {
					h.postRx(tc.buf)
				}
				for i := range tc.frames {
					h.hostWrite(frame(tc.fsize, byte(i)))
				}
				h.activate()
				perFrame := (HeaderLen + tc.fsize + int(tc.buf) - 1) / int(tc.buf)
				for got := 0; got < tc.frames*perFrame; got++ {
					e, ok := h.rx.WaitUsed(5 * time.Second)
					if !ok {
						t.Fatalf("receive stalled after %d of %d used entries", got, tc.frames*perFrame)
					}
					// The driver recycles what it got back, and only that:
					// the device may return chains out of order (rescue),
					// and one it holds can't be posted again.
					h.rx.Post(uint16(e.ID))
					kick(h.rxKick)
				}
				h.noFail()
				if n := h.n.Stats().RxFrames.Load(); n != uint64(tc.frames) {
					t.Errorf("%d frames received, want %d", n, tc.frames)
				}
			})
		}
	})
}

// A malformed chain met while a frame spills over: the device fails and
// publishes nothing more from that queue (§2.1.2: it stops using it).
func TestReceiveMalformedChainInSpill(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		h := newHarnessConfig(t, FeatureMrgRxbuf, cfg)
		h.postRx(1024)
		h.activate()
		time.Sleep(50 * time.Millisecond) // the device holds the chain, waiting for a frame
		h.postRx(1024)
		a := h.rx.Alloc(1024, 8)
		h.rx.Post(h.rx.Chain(virtiotest.Buf{Addr: a, Len: 1024})) // device-readable: malformed
		h.postRx(1024)
		h.hostWrite(frame(2500, 1)) // three chains' worth
		h.wantFail()
		if e, ok := h.rx.WaitUsed(300 * time.Millisecond); ok {
			t.Errorf("used entry %+v published after the device failed", e)
		}
	})
}

// Reads shorter than a header (a socket backend can return an empty
// datagram) are dropped, and the chains they were read into serve the
// frames around them.
func TestReceiveEmptyRead(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		h := newHarnessConfig(t, FeatureMrgRxbuf, cfg)
		h.postRx(1024)
		h.postRx(1024)
		h.hostWrite(frame(1500, 1)) // two chains' worth
		if _, err := h.host.Write(nil); err != nil {
			t.Fatal(err)
		}
		h.hostWrite(frame(100, 2))
		h.activate()
		for got := 0; got < 3; got++ {
			if _, ok := h.rx.WaitUsed(5 * time.Second); !ok {
				t.Fatalf("receive stalled after %d of 3 used entries", got)
			}
			h.postRx(1024)
		}
		h.noFail()
		if f, d := h.n.Stats().RxFrames.Load(), h.n.Stats().RxDropped.Load(); f != 2 || d != 1 {
			t.Errorf("%d frames received and %d dropped, want 2 and 1", f, d)
		}
	})
}

// A driver that keeps a random, small number of chains of random sizes
// posted and reposts one for each it gets back, against random frames
// (mergeable): each frame arrives whole and in order, num_buffers counts
// its chains, and nothing stalls.
func TestReceiveRandomDriver(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		for seed := range uint64(12) {
			t.Run(fmt.Sprint(seed), func(t *testing.T) { receiveRandomDriver(t, cfg, seed) })
		}
	})
}

func receiveRandomDriver(t *testing.T, cfg Config, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	h := newHarnessConfig(t, FeatureMrgRxbuf, cfg)
	outstanding := 1 + rng.IntN(20)
	minBuf := HeaderLen + 1 + rng.IntN(2000)
	maxBuf := minBuf + rng.IntN(2000)
	addr := map[uint32]uint64{}
	post := func() {
		head, a := h.postRx(uint32(minBuf + rng.IntN(maxBuf-minBuf+1)))
		addr[uint32(head)] = a[0]
	}
	for range outstanding {
		post()
	}
	// No frame may need more chains than the driver ever has posted.
	maxFrame := min(outstanding*minBuf-HeaderLen, 12000)
	var want [][]byte
	for i := range 60 {
		pkt := frame(rng.IntN(maxFrame+1), byte(i))
		want = append(want, pkt)
		h.hostWrite(pkt)
	}
	h.activate()
	for i, pkt := range want {
		var got []byte
		chains, numBuffers := 0, 0
		for chains == 0 || chains < numBuffers {
			e, ok := h.rx.WaitUsed(5 * time.Second)
			if !ok {
				t.Fatalf("seed %d: frame %d stalled after %d chains (%d posted at a time, buffers %d..%d bytes)",
					seed, i, chains, outstanding, minBuf, maxBuf)
			}
			b := h.rx.Read(addr[e.ID], int(e.Len))
			if chains == 0 {
				numBuffers = int(binary.LittleEndian.Uint16(b[hdrNumBuffersOff:]))
			}
			got = append(got, b...)
			chains++
			post()
		}
		if !bytes.Equal(got[HeaderLen:], pkt[HeaderLen:]) {
			t.Fatalf("seed %d: frame %d: %d bytes over %d chains, want %d (damaged or out of order)", seed, i, len(got), chains, len(pkt))
		}
	}
	h.noFail()
	if n := h.n.Stats().RxFrames.Load(); n != uint64(len(want)) || h.n.Stats().RxDropped.Load() != 0 {
		t.Errorf("seed %d: %d frames, %d dropped; want %d and 0", seed, n, h.n.Stats().RxDropped.Load(), len(want))
	}
}

func TestReceiveTooSmall(t *testing.T) { ioModes(t, testReceiveTooSmall) }

func testReceiveTooSmall(t *testing.T, cfg Config) {
	h := newHarnessConfig(t, 0, cfg)
	head, _ := h.postRx(256)
	h.activate()
	h.hostWrite(frame(1000, 5))
	h.hostWrite(frame(100, 6))
	e, ok := h.rx.WaitUsed(5 * time.Second)
	if !ok || e.ID != uint32(head) || e.Len != HeaderLen+100 {
		t.Fatalf("used %+v %v, want head %d len %d", e, ok, head, HeaderLen+100)
	}
	if d := h.n.Stats().RxDropped.Load(); d != 1 {
		t.Errorf("%d dropped, want 1", d)
	}
	h.noFail()
}

// TestReceiveBackPressure: with no receive buffers the device leaves
// frames in the backend and delivers them, in order, once the driver
// posts buffers and notifies.
func TestReceiveBackPressure(t *testing.T) { ioModes(t, testReceiveBackPressure) }

func testReceiveBackPressure(t *testing.T, cfg Config) {
	h := newHarnessConfig(t, 0, cfg)
	h.activate()
	for i := range 5 {
		h.hostWrite(frame(100+i, byte(i)))
	}
	time.Sleep(50 * time.Millisecond)
	// All five still wait in the backend (SIOCINQ: bytes queued).
	if n, err := unix.IoctlGetInt(int(h.be.Fd()), unix.SIOCINQ); err != nil || n != 5*HeaderLen+500+10 {
		t.Errorf("%d bytes queued in the backend (%v), want %d", n, err, 5*HeaderLen+500+10)
	}
	for i := range 5 {
		head, _ := h.postRx(2048)
		e, ok := h.rx.WaitUsed(5 * time.Second)
		if !ok || e.ID != uint32(head) || e.Len != uint32(HeaderLen+100+i) {
			t.Fatalf("frame %d: used %+v %v, want head %d len %d", i, e, ok, head, HeaderLen+100+i)
		}
	}
	if d := h.n.Stats().RxDropped.Load(); d != 0 {
		t.Errorf("%d dropped, want 0", d)
	}
	h.noFail()
}

// TestMalformedChains: chains that break §5.1.6 mark the device broken
// (DEVICE_NEEDS_RESET) instead of being used.
func TestMalformedChains(t *testing.T) { ioModes(t, testMalformedChains) }

func testMalformedChains(t *testing.T, cfg Config) {
	t.Run("rx readable", func(t *testing.T) {
		h := newHarnessConfig(t, 0, cfg)
		a := h.rx.Alloc(2048, 8)
		h.rx.Post(h.rx.Chain(virtiotest.Buf{Addr: a, Len: 2048}))
		h.activate()
		if err := h.wantFail(); !errors.Is(err, errMalformed) {
			t.Errorf("fail reason %v", err)
		}
	})
	t.Run("rx short", func(t *testing.T) {
		h := newHarnessConfig(t, 0, cfg)
		h.postRx(HeaderLen - 1)
		h.activate()
		if err := h.wantFail(); !errors.Is(err, errMalformed) {
			t.Errorf("fail reason %v", err)
		}
	})
	t.Run("tx writable", func(t *testing.T) {
		h := newHarnessConfig(t, 0, cfg)
		a := h.tx.Alloc(100, 8)
		h.tx.Post(h.tx.Chain(virtiotest.Buf{Addr: a, Len: 50}, virtiotest.Buf{Addr: a + 50, Len: 50, Write: true}))
		h.activate()
		if err := h.wantFail(); !errors.Is(err, errMalformed) {
			t.Errorf("fail reason %v", err)
		}
	})
	t.Run("tx short", func(t *testing.T) {
		h := newHarnessConfig(t, 0, cfg)
		h.activate()
		h.sendTx(make([]byte, HeaderLen-1))
		if err := h.wantFail(); !errors.Is(err, errMalformed) {
			t.Errorf("fail reason %v", err)
		}
	})
	t.Run("outside RAM", func(t *testing.T) {
		h := newHarnessConfig(t, 0, cfg)
		h.activate()
		h.tx.Post(h.tx.Chain(virtiotest.Buf{Addr: 1 << 40, Len: 100}))
		kick(h.txKick)
		if err := h.wantFail(); !errors.Is(err, virtio.ErrBadChain) {
			t.Errorf("fail reason %v", err)
		}
	})
}

// TestHostileRings fills both queues with random descriptors and indices
// while frames flow both ways: the device must fail or carry on, never
// crash, touch memory outside the fake RAM, or hang in Reset.
func TestHostileRings(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 200 {
		h := newHarness(t, FeatureMrgRxbuf|virtio.FeatureIndirectDesc)
		h.activate()
		for _, d := range []*virtiotest.Driver{h.rx, h.tx} {
			for i := range uint16(testQueue) {
				addr := virtiotest.Base + rng.Uint64N(testRAM+4096) - 2048
				if rng.IntN(8) == 0 {
					addr = rng.Uint64()
				}
				d.PutDesc(d.Desc, i, addr, uint32(rng.IntN(5000)), uint16(rng.IntN(8)), uint16(rng.IntN(testQueue+4)))
			}
			for range rng.IntN(testQueue + 8) {
				d.Post(uint16(rng.IntN(testQueue + 4)))
			}
		}
		// Sometimes a wild avail index.
		if rng.IntN(4) == 0 {
			h.rx.Write(h.rx.Avail+2, []byte{byte(rng.IntN(256)), byte(rng.IntN(256))})
		}
		for i := range rng.IntN(4) {
			_, _ = h.host.Write(frame(rng.IntN(4000), byte(i)))
		}
		kick(h.rxKick)
		kick(h.txKick)
		time.Sleep(time.Millisecond)
		done := make(chan struct{})
		go func() { h.n.Reset(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("iteration %d: Reset hung", iter)
		}
		// Drain the host side so later iterations start clean.
		h.host.SetReadDeadline(time.Now())
		for {
			if _, err := h.host.Read(make([]byte, 70000)); err != nil {
				break
			}
		}
	}
}

// BenchmarkTransmit measures frames/s through the device to a socket
// pair, the fake guest posting bursts of 32 frames per notification as a
// driver with EVENT_IDX does; BenchmarkRawWrite is the same frames written
// straight to the socket.
func BenchmarkTransmit(b *testing.B) {
	const burst = 32
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			h := newHarness(b, 0)
			h.activate()
			go drain(h.host)
			pkt := frame(size, 0)
			a := h.tx.Alloc(uint64(len(pkt)), 8)
			h.tx.Write(a, pkt)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				k := min(burst, b.N-sent)
				for range k {
					h.tx.Post(h.tx.Chain(virtiotest.Buf{Addr: a, Len: uint32(len(pkt))}))
				}
				kick(h.txKick)
				for got := 0; got < k; {
					if _, ok := h.tx.PopUsed(); ok {
						got++
					}
				}
				sent += k
			}
		})
	}
}

func BenchmarkRawWrite(b *testing.B) {
	for _, size := range []int{64, 1500} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			be, host := newPair(b)
			defer be.Close()
			go drain(host)
			pkt := frame(size, 0)
			b.SetBytes(int64(size))
			for range b.N {
				if _, err := be.Write(pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func drain(f *os.File) {
	buf := make([]byte, 70000)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
	}
}

// resetBound is how long Reset may take whatever the driver does (issue
// 12: stop observed within 100 ms).
const resetBound = 100 * time.Millisecond

// A driver that posts transmit chains as fast as it can, re-posting each
// one it gets back, so the ring never empties (issue 12 finding 7): Reset
// still returns within resetBound.
func TestTransmitStopUnderLoad(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		// A queue larger than the device's batch of returned chains
		// (txBatch), so the ring holds chains while a batch goes back.
		const size = 4 * txBatch
		cfg.QueueSize = size
		h := newHarnessConfig(t, virtio.FeatureIndirectDesc, cfg)
		h.tx = virtiotest.NewMappedDriver(t, testRAM, size)
		var err error
		if h.txq, err = h.tx.Queue(h.features, nil); err != nil {
			t.Fatal(err)
		}
		// Large frames in many buffers: the device takes longer over one
		// than the driver over posting it again. Every chain sends the
		// same frame; the device only reads it.
		pkt := frame(maxFrameLen-HeaderLen, 1)
		a := h.tx.Alloc(uint64(len(pkt)), 8)
		h.tx.Write(a, pkt)
		bufs := make([]virtiotest.Buf, size/2) // a chain holds less than a queue's worth
		per := len(pkt) / len(bufs)
		for i := range bufs {
			bufs[i] = virtiotest.Buf{Addr: a + uint64(i*per), Len: uint32(per)}
		}
		bufs[len(bufs)-1].Len = uint32(len(pkt) - (len(bufs)-1)*per)
		for range size {
			h.tx.Post(h.tx.IndirectChain(bufs...))
		}
		quit := make(chan struct{})
		var wg sync.WaitGroup
		defer wg.Wait()
		defer close(quit)
		// The host drains the backend, so the device never waits for
		// room (where it would see stop anyway).
		wg.Go(func() {
			b := make([]byte, HeaderLen+maxFrameLen)
			for {
				select {
				case <-quit:
					return
				default:
				}
				_ = h.host.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
				_, _ = h.host.Read(b)
			}
		})
		h.activate()
		wg.Go(func() {
			for {
				select {
				case <-quit:
					return
				default:
				}
				if e, ok := h.tx.PopUsed(); ok {
					h.tx.Post(uint16(e.ID))
				}
				kick(h.txKick)
			}
		})
		// Under way: frames flow.
		for start := time.Now(); h.n.Stats().TxFrames.Load() < 4*size; {
			if time.Since(start) > 5*time.Second {
				h.noFail()
				t.Fatalf("only %d frames sent", h.n.Stats().TxFrames.Load())
			}
			time.Sleep(time.Millisecond)
		}
		t0 := time.Now()
		done := make(chan struct{})
		go func() { h.n.Reset(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Reset blocked by a driver that keeps posting")
		}
		took := time.Since(t0)
		t.Logf("Reset took %v with %d frames sent", took, h.n.Stats().TxFrames.Load())
		if took > resetBound {
			t.Errorf("Reset took %v, want at most %v", took, resetBound)
		}
		h.noFail()
	})
}
