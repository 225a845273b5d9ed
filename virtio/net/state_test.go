package net

import (
	"bytes"
	stdnet "net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// pciGuest drives every queue of a Net through a virtio-PCI transport;
// the queues share one guest RAM.
type pciGuest struct {
	t *testing.T
	d []*virtiotest.Driver
	p *virtiotest.PCI
}

func newPCIGuest(t *testing.T, n *Net) *pciGuest {
	g := &pciGuest{t: t}
	d0 := newDriver(t)
	g.d = append(g.d, d0)
	for range n.QueueSizes()[1:] {
		g.d = append(g.d, d0.Sibling(testQueue, 1<<20))
	}
	g.p = virtiotest.NewPCI(t, n, d0.Mem)
	return g
}

func (g *pciGuest) setup(features uint64) {
	var rings []virtiotest.Ring
	for _, d := range g.d {
		rings = append(rings, d.Ring())
	}
	g.p.Setup(features, rings...)
}

// command sends a control command on queue q and returns the ack.
func (g *pciGuest) command(q int, class, cmd byte, data []byte) byte {
	g.t.Helper()
	d := g.d[q]
	msg := append([]byte{class, cmd}, data...)
	a := d.Alloc(uint64(len(msg)), 1)
	d.Write(a, msg)
	ack := d.Alloc(1, 1)
	d.Write(ack, []byte{0xaa})
	head := d.Chain(virtiotest.Buf{Addr: a, Len: uint32(len(msg))}, virtiotest.Buf{Addr: ack, Len: 1, Write: true})
	d.Post(head)
	g.p.Notify(q)
	if e, ok := d.WaitUsed(5 * time.Second); !ok || e.ID != uint32(head) {
		g.t.Fatalf("control command: used %+v (present %v), want head %d", e, ok, head)
	}
	return d.Read(ack, 1)[0]
}

// postRx posts a receive chain of one 2 KiB buffer on queue q.
func (g *pciGuest) postRx(q int) (uint16, uint64) {
	d := g.d[q]
	a := d.Alloc(2048, 8)
	head := d.Chain(virtiotest.Buf{Addr: a, Len: 2048, Write: true})
	d.Post(head)
	g.p.Notify(q)
	return head, a
}

// receive sends pkt from the host end and checks it lands in the chain
// (head, addr) of queue q.
func (g *pciGuest) receive(q int, host *os.File, head uint16, addr uint64, pkt []byte) {
	g.t.Helper()
	if _, err := host.Write(pkt); err != nil {
		g.t.Fatal(err)
	}
	d := g.d[q]
	e, ok := d.WaitUsed(5 * time.Second)
	if !ok || e.ID != uint32(head) || e.Len != uint32(len(pkt)) {
		g.t.Fatalf("queue %d: used %+v (present %v), want head %d len %d", q, e, ok, head, len(pkt))
	}
	if got := d.Read(addr+HeaderLen, len(pkt)-HeaderLen); !bytes.Equal(got, pkt[HeaderLen:]) {
		g.t.Fatalf("queue %d: frame data differs", q)
	}
}

// send transmits pkt on queue q and checks the host end gets it.
func (g *pciGuest) send(q int, host *os.File, pkt []byte) {
	g.t.Helper()
	d := g.d[q]
	a := d.Alloc(uint64(len(pkt)), 8)
	d.Write(a, pkt)
	head := d.Chain(virtiotest.Buf{Addr: a, Len: uint32(len(pkt))})
	d.Post(head)
	g.p.Notify(q)
	if err := host.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		g.t.Fatal(err)
	}
	b := make([]byte, 4096)
	n, err := host.Read(b)
	if err != nil || !bytes.Equal(b[:n], pkt) {
		g.t.Fatalf("queue %d: host got %d bytes (%v), want the %d sent", q, n, err, len(pkt))
	}
	if e, ok := d.WaitUsed(5 * time.Second); !ok || e.ID != uint32(head) {
		g.t.Fatalf("queue %d: transmit chain not returned: %+v", q, e)
	}
}

// TestStateRoundTrip: a two-pair interface whose driver set every control
// command is saved with its transport (through JSON), torn down and
// rebuilt on new backends. The settings are back, the receive chains the
// device held when it paused fill with the next frames, and the control
// queue goes on.
func TestStateRoundTrip(t *testing.T) {
	bes, hosts := newMQBackends(t, 2)
	n, err := New(Config{ID: "mq", MAC: stdnet.HardwareAddr{0x06, 0, 0x0a, 0xc8, 0, 2}, QueueSize: testQueue}, asBackends(bes)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	g := newPCIGuest(t, n)
	features := uint64(allMQ | virtio.FeatureVersion1)
	g.setup(features)
	ctrl := 4
	newMAC := []byte{0x06, 1, 2, 3, 4, 5}
	for _, c := range []struct {
		class, cmd byte
		data       []byte
	}{
		{ctrlClassMQ, ctrlMQPairsSet, le16(2)},
		{ctrlClassMAC, ctrlMACAddrSet, newMAC},
		{ctrlClassRx, ctrlRxPromisc, []byte{0}},
		{ctrlClassRx, ctrlRxAllMulti, []byte{1}},
		{ctrlClassMAC, ctrlMACTableSet, macTableBytes(1, 2)},
		{ctrlClassOffloads, ctrlGuestOffloadsSet, le64(FeatureGuestCsum)},
	} {
		if ack := g.command(ctrl, c.class, c.cmd, c.data); ack != ctrlOK {
			t.Fatalf("command %d/%d: ack %d", c.class, c.cmd, ack)
		}
	}
	head, addr := g.postRx(0)
	g.receive(0, hosts[0], head, addr, frame(100, 1))
	g.send(3, hosts[1], frame(200, 2))
	// Receive chains the device holds when it pauses.
	held0, addr0 := g.postRx(0)
	held1, addr1 := g.postRx(2)
	time.Sleep(10 * time.Millisecond) // let the receive loops take them

	if err := g.p.Transport.Pause(); err != nil {
		t.Fatal(err)
	}
	ts, err := g.p.Transport.State()
	if err != nil {
		t.Fatal(err)
	}
	ts = virtiotest.JSONCopy(t, ts)
	st := virtiotest.JSONCopy(t, n.State())
	want := &RunState{
		ActivePairs: 2, MAC: stdnet.HardwareAddr(newMAC).String(), Promisc: false, AllMulti: true,
		UnicastMACs: []string{"06:00:00:00:00:00"}, MulticastMACs: []string{"01:00:5e:00:00:00", "01:00:5e:00:00:01"},
		Offloads: FeatureGuestCsum,
	}
	if !reflect.DeepEqual(st.Run, want) {
		t.Fatalf("run state %+v, want %+v", st.Run, want)
	}
	if st.QueuePairs != 2 || st.MAC != "06:00:0a:c8:00:02" || st.QueueSize != testQueue {
		t.Fatalf("state %+v", st)
	}
	for _, q := range []int{0, 2} {
		if qs := ts.Queues[q]; qs.NextAvail != qs.NextUsed {
			t.Errorf("queue %d paused with chains in flight: %+v", q, qs)
		}
	}
	g.p.Transport.Close()
	n.Close()

	bes2, hosts2 := newMQBackends(t, 2)
	if _, err := Restore(st, asBackends(bes2[:1])...); err == nil {
		t.Error("restore with too few backends accepted")
	}
	n2, err := Restore(st, asBackends(bes2)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2.Close() })
	g.p = virtiotest.NewPCI(t, n2, g.d[0].Mem)
	if err := g.p.Transport.Restore(ts); err != nil {
		t.Fatal(err)
	}
	if got := n2.State(); !reflect.DeepEqual(got.Run, want) {
		t.Errorf("run state after restore %+v, want %+v", got.Run, want)
	}
	if !bes2[1].isOn() || n2.ActivePairs() != 2 {
		t.Error("second pair not active after restore")
	}
	if got := bes2[0].offload.Load(); got != tunFCsum {
		t.Errorf("tap offloads %#x after restore, want %#x", got, tunFCsum)
	}
	var mac [6]byte
	for i := range mac {
		mac[i] = byte(g.p.DeviceConfig(cfgMAC+uint64(i), 1))
	}
	if !bytes.Equal(mac[:], newMAC) {
		t.Errorf("MAC %x after restore, want %x", mac, newMAC)
	}
	g.receive(0, hosts2[0], held0, addr0, frame(300, 3))
	g.receive(2, hosts2[1], held1, addr1, frame(400, 4))
	g.send(1, hosts2[0], frame(500, 5))
	if ack := g.command(ctrl, ctrlClassMQ, ctrlMQPairsSet, le16(1)); ack != ctrlOK || bes2[1].isOn() {
		t.Errorf("pairs set after restore: ack %d, pair 1 on %v", ack, bes2[1].isOn())
	}
}

// TestStateResumeRefused: run-time state the negotiated features can't
// carry fails the resumed activation; a fresh one ignores it.
func TestStateResumeRefused(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(r *RunState)
		want string
	}{
		{"pairs", func(r *RunState) { r.ActivePairs = 3 }, "queue pairs"},
		{"offloads", func(r *RunState) { r.Offloads = FeatureGuestUFO }, "not negotiated"},
		{"multicast MAC", func(r *RunState) { r.MAC = "01:00:00:00:00:01" }, "unicast"},
		{"table", func(r *RunState) { r.UnicastMACs = []string{"junk"} }, "filter"},
	} {
		bes, _ := newMQBackends(t, 2)
		st := State{Version: StateVersion, ID: "mq", MAC: "06:00:00:00:00:01", QueueSize: testQueue, QueuePairs: 2,
			Run: &RunState{ActivePairs: 1, MAC: "06:00:00:00:00:01", Promisc: true}}
		tt.edit(st.Run)
		n, err := Restore(st, asBackends(bes)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		a := &virtio.Activation{Features: allMQ | virtio.FeatureVersion1, Resumed: true, Fail: func(error) {}}
		for range n.QueueSizes() {
			d := newDriver(t)
			q, err := d.Queue(a.Features, nil)
			if err != nil {
				t.Fatal(err)
			}
			a.Mem = d.Mem
			a.Queues = append(a.Queues, q)
			a.Kicks = append(a.Kicks, make(chan struct{}))
		}
		if err := n.Activate(a); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %q", tt.name, err, tt.want)
		}
		// What the failed resume was given is gone: a fresh start works.
		n.Reset()
		a.Resumed = false
		if err := n.Activate(a); err != nil {
			t.Errorf("%s: fresh activation after a refused resume: %v", tt.name, err)
		}
		n.Reset()
	}
}

// TestSuspendKeepsLateCommand: a control command the device completes
// after Suspend but before the Reset that pauses it (posted before the
// vCPUs stopped) is acknowledged to the driver, so it must be in the
// state the device resumes with.
func TestSuspendKeepsLateCommand(t *testing.T) {
	bes, _ := newMQBackends(t, 2)
	n, err := New(Config{ID: "mq", MAC: stdnet.HardwareAddr{0x06, 0, 0x0a, 0xc8, 0, 2}, QueueSize: testQueue}, asBackends(bes)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	g := newPCIGuest(t, n)
	g.setup(uint64(allMQ | virtio.FeatureVersion1))
	ctrl := 4
	n.Suspend()
	late := []byte{0x06, 1, 2, 3, 4, 5}
	if ack := g.command(ctrl, ctrlClassMAC, ctrlMACAddrSet, late); ack != ctrlOK {
		t.Fatalf("MAC set: ack %d", ack)
	}
	n.Reset()
	st := n.State()
	if st.Run == nil || st.Run.MAC != stdnet.HardwareAddr(late).String() {
		t.Fatalf("suspended run state %+v, want MAC %s", st.Run, stdnet.HardwareAddr(late))
	}
}
