package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// mqBackend is a pairBackend that records TUNSETQUEUE-style switching.
type mqBackend struct {
	*pairBackend
	mu       sync.Mutex
	on       bool
	switches int
	failOn   error // returned (once) by the next attach
}

func (b *mqBackend) SetQueueEnabled(on bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on && b.failOn != nil {
		err := b.failOn
		b.failOn = nil
		return err
	}
	if b.on != on {
		b.switches++
	}
	b.on = on
	return nil
}

func (b *mqBackend) isOn() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.on
}

// newMQBackends returns n backends (all on, as a freshly opened tap's
// queues are) and the host ends of their socket pairs.
func newMQBackends(t testing.TB, n int) ([]*mqBackend, []*os.File) {
	t.Helper()
	var bes []*mqBackend
	var hosts []*os.File
	for range n {
		be, host := newPair(t)
		bes = append(bes, &mqBackend{pairBackend: be, on: true})
		hosts = append(hosts, host)
	}
	return bes, hosts
}

func asBackends[B Backend](bs []B) []Backend {
	var out []Backend
	for _, b := range bs {
		out = append(out, b)
	}
	return out
}

var discardLog = slog.New(slog.DiscardHandler)

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }

// allMQ is every feature a Linux driver takes from a multi-queue device.
const allMQ = FeatureMAC | FeatureStatus | FeatureMrgRxbuf | FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN |
	FeatureCsum | FeatureHostTSO4 | FeatureHostTSO6 | mqFeatures

// mqRig is a fake guest driving every queue of a multi-queue Net, each
// queue in its own fake RAM.
type mqRig struct {
	t        testing.TB
	n        *Net
	features uint64
	drv      []*virtiotest.Driver
	qs       []*virtio.Queue
	kicks    []chan struct{}
	fails    chan error
	changed  atomic.Int32 // configuration change notifications
}

func newMQRig(t testing.TB, backends []Backend, features uint64) *mqRig {
	t.Helper()
	n, err := New(Config{ID: "mq", MAC: []byte{0x06, 0, 0x0a, 0xc8, 0, 2}, QueueSize: testQueue}, backends...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	r := &mqRig{t: t, n: n, features: features | virtio.FeatureVersion1, fails: make(chan error, 16)}
	n.BindConfigChange(func() { r.changed.Add(1) })
	for range n.QueueSizes() {
		d := newDriver(t)
		q, err := d.Queue(r.features, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.drv = append(r.drv, d)
		r.qs = append(r.qs, q)
		r.kicks = append(r.kicks, make(chan struct{}, 1))
	}
	return r
}

func (r *mqRig) activate() {
	r.t.Helper()
	a := &virtio.Activation{Mem: r.drv[0].Mem, Features: r.features, Queues: r.qs, Fail: func(err error) { r.fails <- err }}
	for _, k := range r.kicks {
		a.Kicks = append(a.Kicks, k)
	}
	if err := r.n.Activate(a); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(r.n.Reset)
}

// ctrl is the control queue's index in the negotiated layout.
func (r *mqRig) ctrl() int {
	if r.features&FeatureMQ != 0 {
		return 2 * r.n.QueuePairs()
	}
	return 2
}

// command sends class, cmd and data on the control queue, the header and
// data split over descriptors at splits, and returns the ack.
func (r *mqRig) command(class, cmd byte, data []byte, splits ...int) byte {
	r.t.Helper()
	d := r.drv[r.ctrl()]
	msg := append([]byte{class, cmd}, data...)
	var bufs []virtiotest.Buf
	prev := 0
	for _, s := range append(splits, len(msg)) {
		a := d.Alloc(uint64(s-prev), 1)
		d.Write(a, msg[prev:s])
		bufs = append(bufs, virtiotest.Buf{Addr: a, Len: uint32(s - prev)})
		prev = s
	}
	ack := d.Alloc(1, 1)
	d.Write(ack, []byte{0xaa})
	head := d.Chain(append(bufs, virtiotest.Buf{Addr: ack, Len: 1, Write: true})...)
	d.Post(head)
	kick(r.kicks[r.ctrl()])
	e, ok := d.WaitUsed(5 * time.Second)
	if !ok {
		select {
		case err := <-r.fails:
			r.t.Fatalf("device failed: %v", err)
		default:
		}
		r.t.Fatal("control command not answered")
	}
	if e.ID != uint32(head) || e.Len != 1 {
		r.t.Fatalf("used %+v, want head %d len 1", e, head)
	}
	return d.Read(ack, 1)[0]
}

func (r *mqRig) noFail() {
	r.t.Helper()
	select {
	case err := <-r.fails:
		r.t.Fatalf("device failed: %v", err)
	default:
	}
}

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func macTableBytes(uc, mc int) []byte {
	b := le32(uint32(uc))
	for i := range uc {
		b = append(b, 0x06, 0, 0, 0, 0, byte(i))
	}
	b = append(b, le32(uint32(mc))...)
	for i := range mc {
		b = append(b, 0x01, 0, 0x5e, 0, 0, byte(i))
	}
	return b
}

func TestMQDevice(t *testing.T) {
	bes, _ := newMQBackends(t, 4)
	n, err := New(Config{ID: "mq"}, asBackends(bes)...)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if f := n.Features(); f&mqFeatures != mqFeatures {
		t.Errorf("features %#x lack %#x", f, mqFeatures)
	}
	sizes := n.QueueSizes()
	if len(sizes) != 9 || sizes[0] != DefaultQueueSize || sizes[7] != DefaultQueueSize || sizes[8] != CtrlQueueSize {
		t.Errorf("queue sizes %v, want 8 x %d then %d", sizes, DefaultQueueSize, CtrlQueueSize)
	}
	cfg := make([]byte, 10)
	n.ReadConfig(0, cfg)
	if got := binary.LittleEndian.Uint16(cfg[cfgMaxPairs:]); got != 4 {
		t.Errorf("max_virtqueue_pairs %d, want 4", got)
	}
	// Only the first pair carries traffic until the driver asks.
	for i, b := range bes {
		if b.isOn() != (i == 0) {
			t.Errorf("backend %d on=%v after New", i, b.isOn())
		}
	}
	if n.ActivePairs() != 1 || n.QueuePairs() != 4 {
		t.Errorf("pairs %d/%d, want 1/4", n.ActivePairs(), n.QueuePairs())
	}
	for _, tt := range []struct {
		f  uint64
		ok bool
	}{
		{0, true},
		{FeatureCtrlVQ, true},
		{FeatureCtrlVQ | FeatureMQ, true},
		{mqFeatures, true},
		{FeatureMQ, false},
		{FeatureCtrlRx, false},
		{FeatureCtrlMACAddr | FeatureMAC, false},
		{FeatureCtrlGuestOffloads | FeatureGuestCsum, false},
	} {
		if err := n.CheckFeatures(tt.f); (err == nil) != tt.ok {
			t.Errorf("CheckFeatures(%#x) = %v, want ok=%v", tt.f, err, tt.ok)
		}
	}

	// One pair: exactly the device it always was.
	one, _ := newPair(t)
	n1, err := New(Config{ID: "one"}, one)
	if err != nil {
		t.Fatal(err)
	}
	defer n1.Close()
	if n1.Features() != offeredFeatures || len(n1.QueueSizes()) != 2 {
		t.Errorf("single pair: features %#x queues %v", n1.Features(), n1.QueueSizes())
	}
	n1.ReadConfig(cfgMaxPairs, cfg[:2])
	if cfg[0] != 0 || cfg[1] != 0 {
		t.Errorf("single pair: max_virtqueue_pairs bytes %x, want 0", cfg[:2])
	}

	// Refused shapes.
	be0, _ := newPair(t)
	be1, _ := newPair(t)
	if _, err := New(Config{ID: "x"}, be0, be1); err == nil {
		t.Error("two backends that can't switch queues accepted")
	}
	if _, err := New(Config{ID: "x"}); err == nil {
		t.Error("no backend accepted")
	}
	many, _ := newMQBackends(t, MaxQueuePairs+1)
	if _, err := New(Config{ID: "x"}, asBackends(many)...); err == nil {
		t.Errorf("%d pairs accepted", MaxQueuePairs+1)
	}
}

// TestCtrlCommands sends every control command, well-formed and not, to
// a running 4-pair device and checks the ack and what the command did.
func TestCtrlCommands(t *testing.T) {
	mac := []byte{0x06, 0, 0x0a, 0xc8, 0, 9}
	type check func(t *testing.T, r *mqRig, bes []*mqBackend)
	pairsAre := func(k int) check {
		return func(t *testing.T, r *mqRig, bes []*mqBackend) {
			if got := r.n.ActivePairs(); got != k {
				t.Errorf("%d pairs on, want %d", got, k)
			}
			for i, b := range bes {
				if b.isOn() != (i < k) {
					t.Errorf("backend %d on=%v, want %v", i, b.isOn(), i < k)
				}
			}
		}
	}
	rxMode := func(promisc, allmulti bool) check {
		return func(t *testing.T, r *mqRig, _ []*mqBackend) {
			s := &r.n.run.ctrl
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.promisc != promisc || s.allmulti != allmulti {
				t.Errorf("promisc %v allmulti %v, want %v %v", s.promisc, s.allmulti, promisc, allmulti)
			}
		}
	}
	tables := func(uc, mc int) check {
		return func(t *testing.T, r *mqRig, _ []*mqBackend) {
			s := &r.n.run.ctrl
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.uc) != uc || len(s.mc) != mc {
				t.Errorf("tables %d/%d, want %d/%d", len(s.uc), len(s.mc), uc, mc)
			}
		}
	}
	macIs := func(want []byte, changes int32) check {
		return func(t *testing.T, r *mqRig, _ []*mqBackend) {
			got := make([]byte, 6)
			r.n.ReadConfig(cfgMAC, got)
			if !bytes.Equal(got, want) || r.changed.Load() != changes {
				t.Errorf("config MAC %x after %d changes, want %x after %d", got, r.changed.Load(), want, changes)
			}
		}
	}
	offloadIs := func(want uint) check {
		return func(t *testing.T, r *mqRig, bes []*mqBackend) {
			if got := bes[0].offload.Load(); got != int64(want) {
				t.Errorf("tap offloads %#x, want %#x", got, want)
			}
		}
	}
	const without = FeatureMAC | FeatureGuestCsum | FeatureGuestTSO4
	tests := []struct {
		name       string
		features   uint64 // allMQ when 0
		class, cmd byte
		data       []byte
		splits     []int
		want       byte
		check      check
	}{
		{"pairs 4", 0, ctrlClassMQ, ctrlMQPairsSet, le16(4), nil, ctrlOK, pairsAre(4)},
		{"pairs 2", 0, ctrlClassMQ, ctrlMQPairsSet, le16(2), nil, ctrlOK, pairsAre(2)},
		{"pairs 1", 0, ctrlClassMQ, ctrlMQPairsSet, le16(1), nil, ctrlOK, pairsAre(1)},
		{"pairs split header", 0, ctrlClassMQ, ctrlMQPairsSet, le16(3), []int{1, 3}, ctrlOK, pairsAre(3)},
		{"pairs 0", 0, ctrlClassMQ, ctrlMQPairsSet, le16(0), nil, ctrlErr, pairsAre(1)},
		{"pairs 5", 0, ctrlClassMQ, ctrlMQPairsSet, le16(5), nil, ctrlErr, pairsAre(1)},
		{"pairs 0x8000", 0, ctrlClassMQ, ctrlMQPairsSet, le16(0x8000), nil, ctrlErr, pairsAre(1)},
		{"pairs 1 byte", 0, ctrlClassMQ, ctrlMQPairsSet, []byte{2}, nil, ctrlErr, pairsAre(1)},
		{"pairs 3 bytes", 0, ctrlClassMQ, ctrlMQPairsSet, []byte{2, 0, 0}, nil, ctrlErr, pairsAre(1)},
		{"pairs without MQ", FeatureCtrlVQ | FeatureCtrlRx, ctrlClassMQ, ctrlMQPairsSet, le16(2), nil, ctrlErr, pairsAre(1)},
		{"MQ RSS config", 0, ctrlClassMQ, 1, make([]byte, 16), nil, ctrlErr, nil},
		{"MQ hash config", 0, ctrlClassMQ, 2, make([]byte, 16), nil, ctrlErr, nil},

		{"promisc on", 0, ctrlClassRx, ctrlRxPromisc, []byte{1}, nil, ctrlOK, rxMode(true, false)},
		{"promisc off", 0, ctrlClassRx, ctrlRxPromisc, []byte{0}, nil, ctrlOK, rxMode(false, false)},
		{"allmulti on", 0, ctrlClassRx, ctrlRxAllMulti, []byte{1}, nil, ctrlOK, rxMode(true, true)},
		{"promisc 2", 0, ctrlClassRx, ctrlRxPromisc, []byte{2}, nil, ctrlErr, rxMode(true, false)},
		{"promisc no data", 0, ctrlClassRx, ctrlRxPromisc, nil, nil, ctrlErr, nil},
		{"allmulti 2 bytes", 0, ctrlClassRx, ctrlRxAllMulti, []byte{1, 0}, nil, ctrlErr, nil},
		{"alluni (RX_EXTRA)", 0, ctrlClassRx, 2, []byte{1}, nil, ctrlErr, nil},
		{"nobcast (RX_EXTRA)", 0, ctrlClassRx, 5, []byte{1}, nil, ctrlErr, nil},
		{"promisc without CTRL_RX", FeatureCtrlVQ | FeatureMQ, ctrlClassRx, ctrlRxPromisc, []byte{1}, nil, ctrlErr, nil},

		{"MAC table empty", 0, ctrlClassMAC, ctrlMACTableSet, macTableBytes(0, 0), nil, ctrlOK, tables(0, 0)},
		{"MAC table 1+2", 0, ctrlClassMAC, ctrlMACTableSet, macTableBytes(1, 2), []int{2, 7, 13}, ctrlOK, tables(1, 2)},
		{"MAC table short", 0, ctrlClassMAC, ctrlMACTableSet, macTableBytes(1, 2)[:25], nil, ctrlErr, tables(0, 0)},
		{"MAC table trailing byte", 0, ctrlClassMAC, ctrlMACTableSet, append(macTableBytes(1, 1), 0), nil, ctrlErr, tables(0, 0)},
		{"MAC table huge count", 0, ctrlClassMAC, ctrlMACTableSet, append(le32(0xffff_ffff), make([]byte, 12)...), nil, ctrlErr, nil},
		{"MAC table no multicast part", 0, ctrlClassMAC, ctrlMACTableSet, macTableBytes(1, 0)[:10], nil, ctrlErr, nil},
		{"MAC table without CTRL_RX", FeatureCtrlVQ | FeatureMQ, ctrlClassMAC, ctrlMACTableSet, macTableBytes(0, 0), nil, ctrlErr, nil},

		{"MAC addr", 0, ctrlClassMAC, ctrlMACAddrSet, mac, nil, ctrlOK, macIs(mac, 1)},
		{"MAC addr multicast", 0, ctrlClassMAC, ctrlMACAddrSet, []byte{1, 0, 0x5e, 0, 0, 1}, nil, ctrlErr, macIs([]byte{0x06, 0, 0x0a, 0xc8, 0, 2}, 0)},
		{"MAC addr zero", 0, ctrlClassMAC, ctrlMACAddrSet, make([]byte, 6), nil, ctrlErr, nil},
		{"MAC addr 5 bytes", 0, ctrlClassMAC, ctrlMACAddrSet, mac[:5], nil, ctrlErr, nil},
		{"MAC addr 7 bytes", 0, ctrlClassMAC, ctrlMACAddrSet, append(mac, 0), nil, ctrlErr, nil},
		{"MAC addr without CTRL_MAC_ADDR", FeatureCtrlVQ | FeatureMQ | FeatureMAC, ctrlClassMAC, ctrlMACAddrSet, mac, nil, ctrlErr, nil},
		{"MAC unknown command", 0, ctrlClassMAC, 2, mac, nil, ctrlErr, nil},

		{"offloads csum+tso4", 0, ctrlClassOffloads, ctrlGuestOffloadsSet, le64(FeatureGuestCsum | FeatureGuestTSO4), nil, ctrlOK, offloadIs(tunFCsum | tunFTSO4)},
		{"offloads none", 0, ctrlClassOffloads, ctrlGuestOffloadsSet, le64(0), nil, ctrlOK, offloadIs(0)},
		{"offloads not negotiated", FeatureCtrlVQ | without | FeatureCtrlGuestOffloads, ctrlClassOffloads, ctrlGuestOffloadsSet, le64(FeatureGuestTSO6), nil, ctrlErr, offloadIs(tunFCsum | tunFTSO4)},
		{"offloads not an offload", 0, ctrlClassOffloads, ctrlGuestOffloadsSet, le64(FeatureMrgRxbuf), nil, ctrlErr, nil},
		{"offloads 4 bytes", 0, ctrlClassOffloads, ctrlGuestOffloadsSet, le32(FeatureGuestCsum), nil, ctrlErr, nil},
		{"offloads without the feature", FeatureCtrlVQ | without, ctrlClassOffloads, ctrlGuestOffloadsSet, le64(FeatureGuestCsum), nil, ctrlErr, nil},

		{"VLAN", 0, 2, 0, le16(5), nil, ctrlErr, nil},
		{"announce", 0, 3, 0, nil, nil, ctrlErr, nil},
		{"notification coalescing", 0, 6, 0, make([]byte, 8), nil, ctrlErr, nil},
		{"class 255", 0, 255, 255, nil, nil, ctrlErr, nil},
		{"too long", 0, ctrlClassMAC, ctrlMACTableSet, make([]byte, maxCtrlData+1), nil, ctrlErr, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bes, _ := newMQBackends(t, 4)
			f := tt.features
			if f == 0 {
				f = allMQ
			}
			r := newMQRig(t, asBackends(bes), f)
			r.activate()
			if got := r.command(tt.class, tt.cmd, tt.data, tt.splits...); got != tt.want {
				t.Errorf("ack %d, want %d", got, tt.want)
			}
			if tt.check != nil {
				tt.check(t, r, bes)
			}
			r.noFail()
		})
	}
}

// TestCtrlPairsSetFailure: a tap queue that won't attach makes
// VQ_PAIRS_SET answer VIRTIO_NET_ERR and leaves the pairs as they were.
func TestCtrlPairsSetFailure(t *testing.T) {
	bes, _ := newMQBackends(t, 4)
	r := newMQRig(t, asBackends(bes), allMQ)
	r.activate()
	if r.command(ctrlClassMQ, ctrlMQPairsSet, le16(2)) != ctrlOK {
		t.Fatal("pairs 2 refused")
	}
	bes[3].failOn = unix.EPERM
	if got := r.command(ctrlClassMQ, ctrlMQPairsSet, le16(4)); got != ctrlErr {
		t.Errorf("ack %d with a failing attach, want ERR", got)
	}
	if r.n.ActivePairs() != 2 || bes[2].isOn() || bes[3].isOn() || !bes[1].isOn() {
		t.Errorf("after the failure: %d pairs, backends on %v %v %v", r.n.ActivePairs(), bes[1].isOn(), bes[2].isOn(), bes[3].isOn())
	}
	r.noFail()
}

// TestCtrlUnconfiguredPair: turning on a pair whose queues the driver
// never enabled is refused.
func TestCtrlUnconfiguredPair(t *testing.T) {
	bes, _ := newMQBackends(t, 3)
	r := newMQRig(t, asBackends(bes), allMQ)
	r.qs[txQueueOf(2)] = nil
	r.activate()
	if got := r.command(ctrlClassMQ, ctrlMQPairsSet, le16(3)); got != ctrlErr {
		t.Errorf("ack %d, want ERR", got)
	}
	if got := r.command(ctrlClassMQ, ctrlMQPairsSet, le16(2)); got != ctrlOK {
		t.Errorf("ack %d, want OK", got)
	}
	r.noFail()
}

// TestCtrlLayoutWithoutMQ: a driver that takes CTRL_VQ but not MQ finds
// the control queue at index 2 (§5.1.2) and one pair.
func TestCtrlLayoutWithoutMQ(t *testing.T) {
	bes, _ := newMQBackends(t, 4)
	r := newMQRig(t, asBackends(bes), FeatureCtrlVQ|FeatureCtrlRx)
	r.activate()
	if r.ctrl() != 2 {
		t.Fatal("rig layout")
	}
	if got := r.command(ctrlClassRx, ctrlRxPromisc, []byte{1}); got != ctrlOK {
		t.Errorf("ack %d, want OK", got)
	}
	r.noFail()
}

// TestCtrlHostileChains: control chains of the wrong shape fail the
// device (DEVICE_NEEDS_RESET) and are not answered.
func TestCtrlHostileChains(t *testing.T) {
	tests := []struct {
		name  string
		bufs  func(d *virtiotest.Driver) []virtiotest.Buf
		cause error
	}{
		{"header only 1 byte", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(1, 1), Len: 1}, {Addr: d.Alloc(1, 1), Len: 1, Write: true}}
		}, errMalformed},
		{"no ack", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(4, 1), Len: 4}}
		}, errMalformed},
		{"ack readable", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(4, 1), Len: 4}, {Addr: d.Alloc(1, 1), Len: 1}}
		}, errMalformed},
		{"ack 2 bytes", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(4, 1), Len: 4}, {Addr: d.Alloc(2, 1), Len: 2, Write: true}}
		}, errMalformed},
		{"two ack buffers", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(4, 1), Len: 4}, {Addr: d.Alloc(1, 1), Len: 1, Write: true}, {Addr: d.Alloc(1, 1), Len: 1, Write: true}}
		}, errMalformed},
		{"only writable", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(1, 1), Len: 1, Write: true}}
		}, errMalformed},
		{"readable after ack", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(2, 1), Len: 2}, {Addr: d.Alloc(1, 1), Len: 1, Write: true}, {Addr: d.Alloc(2, 1), Len: 2}}
		}, virtio.ErrBadChain},
		{"command outside RAM", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: 1 << 40, Len: 4}, {Addr: d.Alloc(1, 1), Len: 1, Write: true}}
		}, virtio.ErrBadChain},
		{"ack outside RAM", func(d *virtiotest.Driver) []virtiotest.Buf {
			return []virtiotest.Buf{{Addr: d.Alloc(4, 1), Len: 4}, {Addr: virtiotest.Base + testRAM, Len: 1, Write: true}}
		}, virtio.ErrBadChain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bes, _ := newMQBackends(t, 2)
			r := newMQRig(t, asBackends(bes), allMQ)
			r.activate()
			d := r.drv[r.ctrl()]
			d.Post(d.Chain(tt.bufs(d)...))
			kick(r.kicks[r.ctrl()])
			select {
			case err := <-r.fails:
				if !errors.Is(err, tt.cause) {
					t.Errorf("fail reason %v, want %v", err, tt.cause)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("device did not fail")
			}
			if e, ok := d.PopUsed(); ok {
				t.Errorf("hostile chain answered: %+v", e)
			}
		})
	}
}

// TestMQPairs moves frames over every pair and checks that an off pair
// neither reads its backend nor receives, that a pair coming back on
// delivers what waited, and that reset returns to one pair and the
// configured MAC.
func TestMQPairs(t *testing.T) {
	bes, hosts := newMQBackends(t, 3)
	r := newMQRig(t, asBackends(bes), allMQ)
	// Every receive queue gets buffers.
	addrs := map[int]map[uint32]uint64{}
	for p := range 3 {
		d := r.drv[rxQueueOf(p)]
		addrs[p] = map[uint32]uint64{}
		for range 4 {
			a := d.Alloc(4096, 8)
			head := d.Chain(virtiotest.Buf{Addr: a, Len: 4096, Write: true})
			addrs[p][uint32(head)] = a
			d.Post(head)
		}
	}
	r.activate()
	recv := func(p int, pkt []byte) {
		t.Helper()
		e, ok := r.drv[rxQueueOf(p)].WaitUsed(5 * time.Second)
		if !ok {
			t.Fatalf("pair %d: no frame", p)
		}
		got := r.drv[rxQueueOf(p)].Read(addrs[p][e.ID], int(e.Len))
		if !bytes.Equal(got[HeaderLen:], pkt[HeaderLen:]) {
			t.Fatalf("pair %d: frame differs", p)
		}
	}
	// Before VQ_PAIRS_SET only pair 0 reads its backend.
	early := frame(100, 9)
	if _, err := hosts[2].Write(early); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if _, ok := r.drv[rxQueueOf(2)].PopUsed(); ok {
		t.Fatal("an off pair received a frame")
	}
	if r.command(ctrlClassMQ, ctrlMQPairsSet, le16(3)) != ctrlOK {
		t.Fatal("VQ_PAIRS_SET 3 refused")
	}
	recv(2, early) // held by the backend until the pair came on
	for p := range 3 {
		pkt := frame(200+p, byte(p))
		if _, err := hosts[p].Write(pkt); err != nil {
			t.Fatal(err)
		}
		recv(p, pkt)
		// Transmit on the pair's queue reaches the pair's backend.
		tx := r.drv[txQueueOf(p)]
		out := frame(300+p, byte(p+7))
		a := tx.Alloc(uint64(len(out)), 8)
		tx.Write(a, out)
		tx.Post(tx.Chain(virtiotest.Buf{Addr: a, Len: uint32(len(out))}))
		kick(r.kicks[txQueueOf(p)])
		hosts[p].SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 2048)
		k, err := hosts[p].Read(b)
		if err != nil || !bytes.Equal(b[:k], out) {
			t.Fatalf("pair %d transmit: %d bytes, %v", p, k, err)
		}
	}
	if r.command(ctrlClassMQ, ctrlMQPairsSet, le16(1)) != ctrlOK {
		t.Fatal("VQ_PAIRS_SET 1 refused")
	}
	if _, err := hosts[1].Write(frame(50, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if e, ok := r.drv[rxQueueOf(1)].PopUsed(); ok {
		t.Fatalf("pair 1 received after it went off: %+v", e)
	}
	if r.command(ctrlClassMAC, ctrlMACAddrSet, []byte{0x06, 1, 2, 3, 4, 5}) != ctrlOK {
		t.Fatal("MAC_ADDR_SET refused")
	}
	if r.command(ctrlClassMQ, ctrlMQPairsSet, le16(3)) != ctrlOK {
		t.Fatal("VQ_PAIRS_SET 3 refused")
	}
	r.noFail()
	r.n.Reset()
	if r.n.ActivePairs() != 1 || bes[1].isOn() || bes[2].isOn() {
		t.Errorf("after reset: %d pairs on", r.n.ActivePairs())
	}
	mac := make([]byte, 6)
	r.n.ReadConfig(cfgMAC, mac)
	if !bytes.Equal(mac, []byte{0x06, 0, 0x0a, 0xc8, 0, 2}) {
		t.Errorf("MAC after reset %x, want the configured one", mac)
	}
	if got := bes[0].offload.Load(); got != 0 {
		t.Errorf("offloads after reset %#x", got)
	}
}

// TestMQHostileRings runs the hostile-ring test over every queue of a
// multi-queue device, control queue included, while the pairs switch.
func TestMQHostileRings(t *testing.T) {
	rng := newRand(3)
	for iter := range 60 {
		bes, hosts := newMQBackends(t, 3)
		r := newMQRig(t, asBackends(bes), allMQ|virtio.FeatureIndirectDesc)
		r.activate()
		for qi, d := range r.drv {
			if qi == r.ctrl() && rng.IntN(2) == 0 {
				// Sometimes well-formed commands, to switch pairs.
				for range 3 {
					msg := []byte{ctrlClassMQ, ctrlMQPairsSet, byte(rng.IntN(4)), 0}
					a := d.Alloc(5, 1)
					d.Write(a, msg)
					d.Post(d.Chain(virtiotest.Buf{Addr: a, Len: 4}, virtiotest.Buf{Addr: a + 4, Len: 1, Write: true}))
				}
				continue
			}
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
		for _, h := range hosts {
			for i := range rng.IntN(3) {
				_, _ = h.Write(frame(rng.IntN(4000), byte(i)))
			}
		}
		for _, k := range r.kicks {
			kick(k)
		}
		time.Sleep(time.Millisecond)
		done := make(chan struct{})
		go func() { r.n.Reset(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("iteration %d: Reset hung", iter)
		}
		if r.n.ActivePairs() != 1 {
			t.Fatalf("iteration %d: %d pairs after reset", iter, r.n.ActivePairs())
		}
	}
}

// FuzzCtrlCommand feeds arbitrary control commands, split over up to
// three descriptors and followed by an ack buffer of any size, to the
// control queue's parser and executor: it must never panic; a chain it
// rejects must be malformed (and then nothing is written); a chain it
// accepts gets an ack of OK or ERR, OK only for a known command; and the
// device stays within 1..max pairs with a unicast MAC.
func FuzzCtrlCommand(f *testing.F) {
	f.Add([]byte{ctrlClassMQ, ctrlMQPairsSet, 3, 0}, uint16(1), uint16(3), uint8(1), uint8(0xff))
	f.Add([]byte{ctrlClassMQ, ctrlMQPairsSet, 9, 0}, uint16(2), uint16(4), uint8(1), uint8(0xff))
	f.Add([]byte{ctrlClassRx, ctrlRxPromisc, 1}, uint16(3), uint16(3), uint8(1), uint8(0xff))
	f.Add(append([]byte{ctrlClassMAC, ctrlMACTableSet}, macTableBytes(2, 1)...), uint16(6), uint16(10), uint8(1), uint8(0xff))
	f.Add([]byte{ctrlClassMAC, ctrlMACAddrSet, 6, 0, 0, 0, 0, 1}, uint16(8), uint16(8), uint8(1), uint8(0xff))
	f.Add(append([]byte{ctrlClassOffloads, ctrlGuestOffloadsSet}, le64(FeatureGuestCsum)...), uint16(2), uint16(10), uint8(1), uint8(0xff))
	f.Add([]byte{7, 7}, uint16(2), uint16(2), uint8(0), uint8(0))
	f.Add([]byte{ctrlClassMQ}, uint16(1), uint16(1), uint8(2), uint8(3))

	bes, _ := newMQBackends(f, 4)
	n, err := New(Config{ID: "fuzz", QueueSize: 8}, asBackends(bes)...)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { n.Close() })
	const ram = 0x10000
	buf := make([]byte, 0x4000)
	mem, err := memory.FromRegions(memory.Region{GuestAddr: ram, Host: buf})
	if err != nil {
		f.Fatal(err)
	}
	dummy, err := virtio.NewTestQueue(mem, 8, ram, ram+0x100, ram+0x200, 0, nil)
	if err != nil {
		f.Fatal(err)
	}
	queues := make([]*virtio.Queue, len(n.QueueSizes()))
	for i := range queues {
		queues[i] = dummy
	}
	// The features the fuzzer may take away, one per bit of drop.
	optional := []uint64{FeatureMQ, FeatureCtrlRx, FeatureCtrlMACAddr, FeatureCtrlGuestOffloads, FeatureGuestTSO4, FeatureGuestCsum}
	f.Fuzz(func(t *testing.T, cmd []byte, split1, split2 uint16, ackLen, keep uint8) {
		if len(cmd) > 0x1000 {
			return
		}
		features := uint64(allMQ)
		for i, o := range optional {
			if keep&(1<<i) == 0 {
				features &^= o
			}
		}
		clear(buf)
		// The command at +0x1000, split at split1 and split2; the ack
		// buffer right after.
		const at = ram + 0x1000
		copy(buf[0x1000:], cmd)
		var c virtio.Chain
		s1 := min(int(split1), len(cmd))
		s2 := max(s1, min(int(split2), len(cmd)))
		cuts := []int{0, s1, s2, len(cmd)}
		for i := 0; i+1 < len(cuts); i++ {
			lo, hi := cuts[i], cuts[i+1]
			if hi > lo {
				c.Buffers = append(c.Buffers, virtio.Buffer{Addr: at + uint64(lo), Len: uint32(hi - lo)})
				c.ReadLen += uint64(hi - lo)
			}
		}
		ackAt := uint64(at + 0x2000)
		if ackLen > 0 {
			c.Buffers = append(c.Buffers, virtio.Buffer{Addr: ackAt, Len: uint32(ackLen % 4), Write: true})
			c.WriteLen = uint64(ackLen % 4)
			if ackLen%4 == 0 {
				return // ParseChain rejects empty buffers
			}
		}
		buf[0x3000] = 0xaa
		rs := &runState{a: &virtio.Activation{Queues: queues}, log: discardLog, features: features, pairs: len(n.pairs), stop: make(chan struct{})}
		rs.ctrl.reset(features)
		err := n.ctrlChain(rs, mem, c)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("error %v is not errMalformed", err)
			}
			if buf[0x3000] != 0xaa {
				t.Fatal("ack written for a malformed chain")
			}
			if c.ReadLen >= ctrlHdrLen && c.WriteLen == 1 {
				t.Fatalf("well-formed chain rejected: %v", err)
			}
			return
		}
		switch ack := buf[0x3000]; ack {
		case ctrlOK:
			known := map[[2]byte]bool{{ctrlClassRx, ctrlRxPromisc}: true, {ctrlClassRx, ctrlRxAllMulti}: true,
				{ctrlClassMAC, ctrlMACTableSet}: true, {ctrlClassMAC, ctrlMACAddrSet}: true,
				{ctrlClassMQ, ctrlMQPairsSet}: true, {ctrlClassOffloads, ctrlGuestOffloadsSet}: true}
			if !known[[2]byte{cmd[0], cmd[1]}] {
				t.Fatalf("OK for unknown command %d/%d", cmd[0], cmd[1])
			}
			if cmd[0] == ctrlClassMQ && features&FeatureMQ == 0 {
				t.Fatal("VQ_PAIRS_SET accepted without MQ")
			}
		case ctrlErr:
		default:
			t.Fatalf("ack %d", ack)
		}
		if k := n.ActivePairs(); k < 1 || k > 4 {
			t.Fatalf("%d pairs on", k)
		}
		for i, b := range bes {
			if b.isOn() != (i < n.ActivePairs()) {
				t.Fatalf("backend %d on=%v with %d pairs", i, b.isOn(), n.ActivePairs())
			}
		}
		mac := make([]byte, 6)
		n.ReadConfig(cfgMAC, mac)
		if mac[0]&1 != 0 || allZero(mac) {
			t.Fatalf("MAC %x", mac)
		}
	})
}
