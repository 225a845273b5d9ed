package net

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/internal/testenv"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// Addresses inside the test's private namespace.
var (
	tapHostIP  = []byte{10, 201, 0, 1}
	tapGuestIP = []byte{10, 201, 0, 2}
)

func ipCmd(t testing.TB, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
}

// ipOut runs ip(8) and returns its output.
func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// newTapNetNS creates a network namespace of its own with a tap vtap0 at
// 10.201.0.1/24 (multi-queue if multi); both go away with the test.
func newTapNetNS(t testing.TB, suffix string, multi bool) string {
	t.Helper()
	testenv.RequireRoot(t, "to create a network namespace")
	testenv.RequireCommand(t, "ip", "iproute2")
	if _, err := os.Stat(tunDevice); err != nil {
		testenv.Skip(t, "no "+tunDevice)
	}
	ns := fmt.Sprintf("vmmtest-%d-%s", os.Getpid(), suffix)
	ipCmd(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	args := []string{"-n", ns, "tuntap", "add", "dev", "vtap0", "mode", "tap"}
	if multi {
		args = append(args, "multi_queue")
	}
	ipCmd(t, args...)
	ipCmd(t, "-n", ns, "addr", "add", "10.201.0.1/24", "dev", "vtap0")
	ipCmd(t, "-n", ns, "link", "set", "vtap0", "up")
	return ns
}

// inNetNS runs fn on a thread switched into namespace ns.
func inNetNS(t testing.TB, ns string, fn func() error) error {
	t.Helper()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	var fnErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A thread that fails to switch back stays locked and dies with
		// this goroutine.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			fnErr = err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			fnErr = err
			return
		}
		fnErr = fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
	return fnErr
}

// openTapInNetNS creates a network namespace of its own with a tap at
// 10.201.0.1/24 and opens the tap from it. Both go away with the test.
func openTapInNetNS(t *testing.T) *Tap {
	t.Helper()
	ns := newTapNetNS(t, "net", false)
	var tap *Tap
	if err := inNetNS(t, ns, func() (err error) {
		tap, err = OpenTap("vtap0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return tap
}

// arpRequest returns a virtio-net header and an ARP request from mac for
// the host address.
func arpRequest(mac []byte) []byte {
	f := make([]byte, HeaderLen+60)
	e := f[HeaderLen:]
	copy(e, bytes.Repeat([]byte{0xff}, 6))
	copy(e[6:], mac)
	binary.BigEndian.PutUint16(e[12:], 0x0806)
	a := e[14:]
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1)
	copy(a[8:], mac)
	copy(a[14:], tapGuestIP)
	copy(a[24:], tapHostIP)
	return f
}

// TestTapDevice runs the device on a real tap, with every offload a Linux
// driver negotiates: the fake guest ARPs for the host through the
// transmit queue and gets the reply on the receive queue.
func TestTapDevice(t *testing.T) {
	tap := openTapInNetNS(t)
	mac := StableMAC("tap-test")
	n, err := New(Config{ID: "tap", MAC: mac, QueueSize: testQueue}, tap)
	if err != nil {
		tap.Close()
		t.Fatal(err)
	}
	defer n.Close()
	features := n.Features() | virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc
	rx, tx := newDriver(t), newDriver(t)
	rxq, err := rx.Queue(features, nil)
	if err != nil {
		t.Fatal(err)
	}
	txq, err := tx.Queue(features, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Linux-style mergeable buffers: a page each.
	bufs := map[uint32]uint64{} // head -> buffer
	post := func(a uint64) {
		head := rx.Chain(virtiotest.Buf{Addr: a, Len: 4096, Write: true})
		bufs[uint32(head)] = a
		rx.Post(head)
	}
	for range 8 {
		post(rx.Alloc(4096, 4096))
	}
	fails := make(chan error, 4)
	rxKick, txKick := make(chan struct{}, 1), make(chan struct{}, 1)
	if err := n.Activate(&virtio.Activation{
		Mem: rx.Mem, Features: features, Queues: []*virtio.Queue{rxq, txq},
		Kicks: []<-chan struct{}{rxKick, txKick}, Fail: func(err error) { fails <- err },
	}); err != nil {
		t.Fatal(err) // includes TUNSETOFFLOAD with all guest offloads
	}
	defer n.Reset()

	req := arpRequest(mac)
	a := tx.Alloc(uint64(len(req)), 8)
	tx.Write(a, req)
	// The tap only transmits once the kernel's link watcher has seen its
	// carrier come up (up to a second after we attached): until then the
	// host drops its replies. Retry the request; skip the IPv6 neighbour
	// discovery and MLD frames the host also sends, giving their buffers
	// back.
	for try := 1; try <= 20; try++ {
		tx.Post(tx.Chain(virtiotest.Buf{Addr: a, Len: HeaderLen}, virtiotest.Buf{Addr: a + HeaderLen, Len: uint32(len(req) - HeaderLen)}))
		kick(txKick)
		if _, ok := tx.WaitUsed(5 * time.Second); !ok {
			t.Fatal("transmit chain not returned")
		}
		for {
			e, ok := rx.WaitUsed(250 * time.Millisecond)
			if !ok {
				break
			}
			f := rx.Read(bufs[e.ID], int(e.Len))
			if nb := binary.LittleEndian.Uint16(f[hdrNumBuffersOff:]); nb != 1 {
				t.Errorf("num_buffers %d", nb)
			}
			eth := f[HeaderLen:]
			if len(eth) >= 42 && binary.BigEndian.Uint16(eth[12:]) == 0x0806 && binary.BigEndian.Uint16(eth[20:]) == 2 {
				if !bytes.Equal(eth[:6], mac) || !bytes.Equal(eth[28:32], tapHostIP) {
					t.Errorf("ARP reply %x", eth[:42])
				}
				select {
				case err := <-fails:
					t.Fatalf("device failed: %v", err)
				default:
				}
				if got := n.Stats().TxFrames.Load(); got != uint64(try) || n.Stats().RxFrames.Load() == 0 {
					t.Errorf("stats tx %d (want %d) rx %d", got, try, n.Stats().RxFrames.Load())
				}
				return
			}
			post(bufs[e.ID])
			kick(rxKick)
		}
	}
	t.Fatal("no ARP reply")
}
