package net

import (
	"testing"
	"time"

	"github.com/govmm/vmm/internal/leakcheck"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// leakRingRAM is the fake RAM of one queue's fresh ring and buffers in a
// transport cycle: after a reset the driver lays out new rings (§2.4).
const leakRingRAM = 16 << 10

// TestLeakActivateReset: leakcheck.Cycles of Activate, a frame each way,
// then Reset, leave the goroutines (receive and transmit loops) and fds
// (io_uring instances) at their baseline, in both I/O modes. The cycles
// reuse one set of queues without the driver's reset, so no chain may be
// left with the device (the queue would rightly refuse its head when it
// is posted again); TestLeakTransport resets with chains held.
func TestLeakActivateReset(t *testing.T) {
	ioModes(t, func(t *testing.T, cfg Config) {
		h := newHarnessConfig(t, 0, cfg)
		before := leakcheck.Take(t)
		for i := range leakcheck.Cycles {
			a := &virtio.Activation{
				Mem: h.rx.Mem, Features: h.features,
				Queues: []*virtio.Queue{h.rxq, h.txq}, Kicks: []<-chan struct{}{h.rxKick, h.txKick},
				Fail: func(err error) { h.fails <- err },
			}
			if err := h.n.Activate(a); err != nil {
				t.Fatal(err)
			}
			h.active = true
			h.sendTx(frame(100, byte(i)))
			h.hostRead()
			if _, ok := h.tx.WaitUsed(5 * time.Second); !ok {
				t.Fatalf("cycle %d: transmit chain not returned", i)
			}
			h.postRx(2048)
			h.hostWrite(frame(200, byte(i)))
			if _, ok := h.rx.WaitUsed(5 * time.Second); !ok {
				t.Fatalf("cycle %d: frame not received", i)
			}
			h.n.Reset()
			h.active = false
			h.noFail()
		}
		leakcheck.Check(t, before)
	})
}

// TestLeakTransport: leakcheck.Cycles of driver setup through the
// virtio-PCI transport of a two-pair device with a control queue, the
// second pair turned on, a frame each way on both pairs, then a driver
// reset through device_status, leave the goroutines and fds at their
// baseline.
func TestLeakTransport(t *testing.T) {
	bes, hosts := newMQBackends(t, 2)
	n, err := New(Config{ID: "leak", QueueSize: testQueue}, asBackends(bes)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	ram := virtiotest.NewMappedDriver(t, testRAM, testQueue)
	g := &pciGuest{t: t, p: virtiotest.NewPCI(t, n, ram.Mem)}
	features := uint64(allMQ | virtio.FeatureVersion1)
	const ctrl = 4
	before := leakcheck.Take(t)
	for i := range leakcheck.Cycles {
		g.d = g.d[:0]
		for range n.QueueSizes() {
			g.d = append(g.d, ram.Sibling(testQueue, leakRingRAM))
		}
		g.setup(features)
		if ack := g.command(ctrl, ctrlClassMQ, ctrlMQPairsSet, le16(2)); ack != ctrlOK {
			t.Fatalf("cycle %d: MQ_VQ_PAIRS_SET ack %d", i, ack)
		}
		for pair, host := range hosts {
			head, addr := g.postRx(rxQueueOf(pair))
			g.receive(rxQueueOf(pair), host, head, addr, frame(100, byte(i)))
			g.send(txQueueOf(pair), host, frame(200, byte(i)))
			g.postRx(rxQueueOf(pair)) // held by the receive loop at reset
		}
		g.p.Reset()
	}
	leakcheck.Check(t, before)
}

// TestLeakNewClose: making a device over fresh socket-pair backends and
// closing it leakcheck.Cycles times closes every backend and leaves no
// goroutine.
func TestLeakNewClose(t *testing.T) {
	before := leakcheck.Take(t)
	for range leakcheck.Cycles {
		var bes []Backend
		for range 2 {
			be, host := newPair(t)
			host.Close()
			bes = append(bes, &mqBackend{pairBackend: be, on: true})
		}
		n, err := New(Config{ID: "leak", QueueSize: testQueue}, bes...)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	leakcheck.Check(t, before)
}
