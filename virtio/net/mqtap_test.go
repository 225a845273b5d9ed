package net

import (
	"bytes"
	"encoding/binary"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

var tunQueuesRE = regexp.MustCompile(`numqueues (\d+) numdisabled (\d+)`)

// tapQueues returns the attached and detached queues of vtap0 in ns, as
// the kernel reports them.
func tapQueues(t *testing.T, ns string) (attached, detached int) {
	t.Helper()
	out := ipOut(t, "-n", ns, "-d", "link", "show", "dev", "vtap0")
	m := tunQueuesRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no queue counts in ip -d link:\n%s", out)
	}
	a, _ := strconv.Atoi(m[1])
	d, _ := strconv.Atoi(m[2])
	return a, d
}

func wantTapQueues(t *testing.T, ns string, attached, detached int) {
	t.Helper()
	if a, d := tapQueues(t, ns); a != attached || d != detached {
		t.Errorf("tap has %d queues attached and %d detached, want %d and %d", a, d, attached, detached)
	}
}

// TestTapQueues opens a multi-queue tap queue by queue and detaches and
// re-attaches one with TUNSETQUEUE; a tap whose queue mode doesn't match
// is refused with a hint.
func TestTapQueues(t *testing.T) {
	ns := newTapNetNS(t, "tapq", true)
	ipCmd(t, "-n", ns, "tuntap", "add", "dev", "vtap1", "mode", "tap")
	var taps []*Tap
	var single *Tap
	var singleErr, multiErr error
	if err := inNetNS(t, ns, func() (err error) {
		single, singleErr = OpenTap("vtap0")
		_, multiErr = OpenTapQueues("vtap1", 2)
		taps, err = OpenTapQueues("vtap0", 3)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, tp := range taps {
			tp.Close()
		}
	}()
	if singleErr == nil {
		single.Close()
		t.Error("a multi_queue tap opened as a single queue")
	} else if !strings.Contains(singleErr.Error(), "multi_queue") {
		t.Errorf("error %q lacks the hint", singleErr)
	}
	if multiErr == nil || !strings.Contains(multiErr.Error(), "multi_queue") {
		t.Errorf("single-queue tap opened with queues: %v", multiErr)
	}
	wantTapQueues(t, ns, 3, 0)
	for _, on := range []bool{false, false, true, true} {
		if err := taps[2].SetQueueEnabled(on); err != nil {
			t.Fatalf("SetQueueEnabled(%v): %v", on, err)
		}
		if on {
			wantTapQueues(t, ns, 3, 0)
		} else {
			wantTapQueues(t, ns, 2, 1)
		}
	}
	if _, err := OpenTapQueues("vtap0", 0); err == nil {
		t.Error("0 queues accepted")
	}
}

// TestTapMultiQueueDevice runs a 4-pair device on a real multi-queue tap:
// only the first tap queue is attached until VQ_PAIRS_SET, the fake guest
// ARPs through the last pair and the host answers on an attached queue,
// and with one pair on again every reply comes to pair 0 even when the
// request left through pair 3 (an off pair still transmits).
func TestTapMultiQueueDevice(t *testing.T) {
	ns := newTapNetNS(t, "mq", true)
	var taps []*Tap
	if err := inNetNS(t, ns, func() (err error) {
		taps, err = OpenTapQueues("vtap0", 4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	features := uint64(allMQ | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc)
	r := newMQRig(t, asBackends(taps), features)
	wantTapQueues(t, ns, 1, 3)
	mac := r.n.MAC()

	bufs := map[int]map[uint32]uint64{} // pair -> head -> buffer
	post := func(p int, a uint64) {
		d := r.drv[rxQueueOf(p)]
		head := d.Chain(virtiotest.Buf{Addr: a, Len: 4096, Write: true})
		bufs[p][uint32(head)] = a
		d.Post(head)
	}
	for p := range 4 {
		bufs[p] = map[uint32]uint64{}
		for range 8 {
			post(p, r.drv[rxQueueOf(p)].Alloc(4096, 4096))
		}
	}
	r.activate()

	// arp sends an ARP request on pair tx's transmit queue and returns the
	// pair whose receive queue got the reply, -1 if none came. Other
	// frames (IPv6 neighbour discovery) are skipped and their buffers
	// given back.
	req := arpRequest(mac)
	arp := func(tx int) int {
		d := r.drv[txQueueOf(tx)]
		a := d.Alloc(uint64(len(req)), 8)
		d.Write(a, req)
		// The host answers only once its link watcher saw the carrier:
		// retry.
		for try := 0; try < 20; try++ {
			d.Post(d.Chain(virtiotest.Buf{Addr: a, Len: uint32(len(req))}))
			kick(r.kicks[txQueueOf(tx)])
			if _, ok := d.WaitUsed(5 * time.Second); !ok {
				t.Fatal("transmit chain not returned")
			}
			deadline := time.Now().Add(250 * time.Millisecond)
			for time.Now().Before(deadline) {
				for p := range 4 {
					e, ok := r.drv[rxQueueOf(p)].PopUsed()
					if !ok {
						continue
					}
					f := r.drv[rxQueueOf(p)].Read(bufs[p][e.ID], int(e.Len))
					eth := f[HeaderLen:]
					post(p, bufs[p][e.ID])
					kick(r.kicks[rxQueueOf(p)])
					if len(eth) >= 42 && binary.BigEndian.Uint16(eth[12:]) == 0x0806 && binary.BigEndian.Uint16(eth[20:]) == 2 &&
						bytes.Equal(eth[:6], mac) && bytes.Equal(eth[28:32], tapHostIP) {
						return p
					}
				}
				time.Sleep(time.Millisecond)
			}
		}
		return -1
	}

	if got := r.command(ctrlClassMQ, ctrlMQPairsSet, le16(4)); got != ctrlOK {
		t.Fatalf("VQ_PAIRS_SET 4: ack %d", got)
	}
	wantTapQueues(t, ns, 4, 0)
	p := arp(3)
	if p < 0 {
		t.Fatal("no ARP reply with 4 pairs")
	}
	t.Logf("ARP through pair 3: reply on pair %d", p)
	// tun steers a flow's replies to the queue that last sent on it
	// (tun_flow_update), but it learns that only after the request went
	// up the host's stack, which may answer first: the first reply may
	// land on any attached queue, the second follows the request.
	if p := arp(3); p != 3 {
		t.Errorf("second ARP through pair 3: reply on pair %d, want 3 (the tap's receive-follows-transmit steering)", p)
	}

	if got := r.command(ctrlClassMQ, ctrlMQPairsSet, le16(1)); got != ctrlOK {
		t.Fatalf("VQ_PAIRS_SET 1: ack %d", got)
	}
	wantTapQueues(t, ns, 1, 3)
	if p := arp(3); p != 0 {
		t.Errorf("with one pair on, the reply came on pair %d, want 0", p)
	}
	if got := r.command(ctrlClassMQ, ctrlMQPairsSet, le16(5)); got != ctrlErr {
		t.Errorf("VQ_PAIRS_SET 5: ack %d, want ERR", got)
	}
	if got := r.command(ctrlClassMQ, ctrlMQPairsSet, le16(2)); got != ctrlOK {
		t.Fatalf("VQ_PAIRS_SET 2: ack %d", got)
	}
	wantTapQueues(t, ns, 2, 2)
	r.noFail()
	r.n.Reset()
	wantTapQueues(t, ns, 1, 3)
	if r.n.Stats().TxFrames.Load() == 0 || r.n.Stats().RxFrames.Load() == 0 {
		t.Errorf("stats: %d frames out, %d in", r.n.Stats().TxFrames.Load(), r.n.Stats().RxFrames.Load())
	}
}
