package net

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/internal/testenv"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// The data-path benchmarks run the device on a real tap in a network
// namespace of the benchmark's own, beside the raw syscalls on the same
// tap descriptor (the host's limit):
//
//   - tx: the fake guest posts frames on the transmit queue, keeping up to
//     dpTxWindow in flight in bursts of dpBurst per notification (which
//     the device writes with one io_uring_enter); the raw baseline
//     write(2)s the same header+frame to the tap, one call per frame. The frames are
//     addressed to a MAC that is not the tap's, so the host's stack drops
//     them at IP input: what is measured is the tap's write path, not the
//     host's UDP or TCP stack. The 64 KiB case is one TSO frame
//     (VIRTIO_NET_HDR_GSO_TCPV4) that the tap takes whole.
//   - rx: with the timer stopped, a packet socket in the namespace
//     transmits dpRxFill frames on the tap interface (sendmmsg, bypassing
//     the qdisc), which the tap queues for its reader (its queue holds
//     1000); then, timed, the device reads them into the fake guest's
//     receive buffers (posted as they come back, in bursts; the device
//     reads up to rxRingBurst frames per io_uring_enter), or the raw
//     baseline read(2)s them, one call per frame. Round after round: what is measured is the
//     reader alone, not the host's sender competing with it for the CPUs.
//
// One op is one frame: ns/op is per frame, MB/s counts the Ethernet frame
// (not the virtio-net header).
const (
	dpQueue    = 256
	dpBurst    = 32
	dpTxWindow = 128
	dpRxFill   = 512
	dpRxBuf    = 2048
	dpRAM      = 4 << 20
	// dpGSOFrame is the largest TSO frame: a 65535-byte IPv4 packet.
	dpGSOFrame = 14 + 65535
)

// dpCase is one workload: a direction and an Ethernet frame size.
type dpCase struct {
	name string
	rx   bool
	size int
	gso  bool
}

var dpCases = []dpCase{
	{"tx-64B", false, 64, false},
	{"tx-1500B", false, 1500, false},
	{"tx-64KiB-gso", false, dpGSOFrame, true},
	{"rx-64B", true, 64, false},
	{"rx-1500B", true, 1500, false},
}

var (
	dpGuestMAC = StableMAC("datapath-bench")
	dpOtherMAC = []byte{0x02, 0, 0, 0, 0, 0x99} // not the tap's: the host drops what is sent to it
	dpHostMAC  = []byte{0x02, 0, 0, 0, 0, 0x01}
)

// dpFrame returns a virtio-net header and an IPv4 frame of size bytes from
// src to dst: UDP, or for gso one TCP segment to be cut into 1448-byte
// segments (NEEDS_CSUM, GSO_TCPV4).
func dpFrame(size int, gso bool, dst, src []byte) []byte {
	f := make([]byte, HeaderLen+size)
	h, e := f[:HeaderLen], f[HeaderLen:]
	copy(e[0:], dst)
	copy(e[6:], src)
	binary.BigEndian.PutUint16(e[12:], 0x0800)
	ip := e[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size-14))
	ip[8] = 64
	ip[9] = 17 // UDP
	if gso {
		ip[9] = 6 // TCP
	}
	copy(ip[12:], tapGuestIP)
	copy(ip[16:], []byte{10, 201, 0, 9})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	l4 := e[34:]
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 9)
	if gso {
		l4[12] = 5 << 4                                // data offset: 20 bytes
		l4[13] = 0x18                                  // PSH, ACK
		h[0] = 1                                       // VIRTIO_NET_HDR_F_NEEDS_CSUM
		h[1] = 1                                       // VIRTIO_NET_HDR_GSO_TCPV4
		binary.LittleEndian.PutUint16(h[2:], 14+20+20) // hdr_len
		binary.LittleEndian.PutUint16(h[4:], 1448)     // gso_size
		binary.LittleEndian.PutUint16(h[6:], 14+20)    // csum_start
		binary.LittleEndian.PutUint16(h[8:], 16)       // csum_offset
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(size-34))
	}
	for i := range e[42:] {
		e[42+i] = byte(i)
	}
	return f
}

// keepTap is the benchmark's tap as a device backend that Close leaves
// open: every device and raw run of the benchmark shares one descriptor.
type keepTap struct{ *Tap }

func (keepTap) Close() error { return nil }

// dpEnv is what every case shares: the namespace, its tap, and a packet
// socket on the tap interface that plays the host's side for rx.
type dpEnv struct {
	ns  string
	tap *Tap
	rc  syscall.RawConn
	pkt int // AF_PACKET socket bound to vtap0
}

// newDPEnv makes the namespace and opens the tap and the packet socket in
// it; it skips, loudly, only where a tap or a namespace can't be had.
func newDPEnv(b *testing.B) *dpEnv {
	b.Helper()
	if os.Geteuid() == 0 {
		if _, err := os.Stat(tunDevice); err == nil {
			probe := fmt.Sprintf("vmmbench-%d-probe", os.Getpid())
			if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
				testenv.Skipf(b, "the net data-path benchmarks need a network namespace of their own: ip netns add: %v: %s", err, out)
			}
			_ = exec.Command("ip", "netns", "del", probe).Run()
		}
	}
	ns := newTapNetNS(b, "datapath", false) // skips without root, ip(8) or /dev/net/tun
	env := &dpEnv{ns: ns, pkt: -1}
	b.Cleanup(func() {
		if env.pkt >= 0 {
			unix.Close(env.pkt)
		}
		if env.tap != nil {
			env.tap.Close()
		}
	})
	if err := inNetNS(b, ns, func() error {
		// No IPv6: its neighbour discovery and MLD would add frames of
		// their own. (Absent when the host has IPv6 off altogether.)
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/vtap0/disable_ipv6", []byte("1"), 0)
		var err error
		if env.tap, err = OpenTap("vtap0"); err != nil {
			return err
		}
		return env.openPacketSocket()
	}); err != nil {
		b.Fatal(err)
	}
	rc, err := env.tap.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	env.rc = rc
	return env
}

// openPacketSocket opens, in the calling thread's namespace, a packet
// socket bound to vtap0 with protocol 0 (it receives nothing) that
// bypasses the qdisc, as a fast sender on the host side of the tap.
func (env *dpEnv) openPacketSocket() error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	ifi, err := ifIndex("vtap0")
	if err != nil {
		unix.Close(fd)
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind packet socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	env.pkt = fd
	return nil
}

// ifIndex is the interface index of name in the calling thread's
// namespace.
func ifIndex(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("SIOCGIFINDEX %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// BenchmarkDatapath measures frames through the whole device path beside
// the raw syscalls on the same tap. datapath.go in benchmarks/ runs it for
// the report.
func BenchmarkDatapath(b *testing.B) {
	env := newDPEnv(b)
	for _, c := range dpCases {
		b.Run(c.name, func(b *testing.B) {
			b.Run("device", func(b *testing.B) {
				if c.rx {
					env.deviceRx(b, c)
				} else {
					env.deviceTx(b, c)
				}
			})
			b.Run("raw", func(b *testing.B) {
				if c.rx {
					env.rawRx(b, c)
				} else {
					env.rawTx(b, c)
				}
			})
		})
	}
}

// dpRig is a device on the benchmark's tap driven by a fake guest.
type dpRig struct {
	n        *Net
	rx, tx   *virtiotest.Driver
	rxKick   chan struct{}
	txKick   chan struct{}
	rxIRQ    chan struct{}
	txIRQ    chan struct{}
	fails    chan error
	features uint64
	rxUsed   virtiotest.UsedReader
	txUsed   virtiotest.UsedReader
}

func dpRAMDriver(b *testing.B) *virtiotest.Driver {
	return virtiotest.NewMappedDriver(b, dpRAM, dpQueue)
}

// newRig makes the device with the offloads a Linux guest negotiates and
// EVENT_IDX; setup lays out the rings before the device starts.
func (env *dpEnv) newRig(b *testing.B, setup func(r *dpRig)) *dpRig {
	b.Helper()
	if err := env.tap.SetDeadline(time.Time{}); err != nil {
		b.Fatal(err)
	}
	n, err := New(Config{ID: "bench", MAC: dpGuestMAC, QueueSize: dpQueue}, keepTap{env.tap})
	if err != nil {
		b.Fatal(err)
	}
	r := &dpRig{n: n, rx: dpRAMDriver(b), tx: dpRAMDriver(b),
		rxKick: make(chan struct{}, 1), txKick: make(chan struct{}, 1),
		rxIRQ: make(chan struct{}, 1), txIRQ: make(chan struct{}, 1), fails: make(chan error, 4)}
	r.rxUsed, r.txUsed = virtiotest.UsedReader{Driver: r.rx}, virtiotest.UsedReader{Driver: r.tx}
	r.features = n.Features() | virtio.FeatureVersion1 | virtio.FeatureEventIdx
	irq := func(c chan struct{}) func() {
		return func() {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
	rxq, err := r.rx.Queue(r.features, irq(r.rxIRQ))
	if err != nil {
		b.Fatal(err)
	}
	txq, err := r.tx.Queue(r.features, irq(r.txIRQ))
	if err != nil {
		b.Fatal(err)
	}
	setup(r)
	if err := n.Activate(&virtio.Activation{
		Mem: r.rx.Mem, Features: r.features, Queues: []*virtio.Queue{rxq, txq},
		Kicks: []<-chan struct{}{r.rxKick, r.txKick}, Fail: func(err error) { r.fails <- err },
	}); err != nil {
		b.Fatal(err)
	}
	return r
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// wait blocks until irq fires, for at most poll (then the caller looks at
// the ring anyway); it fails the benchmark if the device failed.
func (r *dpRig) wait(b *testing.B, irq chan struct{}, timer *time.Timer, poll time.Duration) {
	timer.Reset(poll)
	select {
	case <-irq:
	case err := <-r.fails:
		b.Fatalf("device failed: %v", err)
	case <-timer.C:
	}
}

func (env *dpEnv) deviceTx(b *testing.B, c dpCase) {
	pkt := dpFrame(c.size, c.gso, dpOtherMAC, dpGuestMAC)
	r := env.newRig(b, func(r *dpRig) {
		// Every descriptor is a one-buffer chain (header and frame
		// together, as Linux lays out a transmit buffer) of the same
		// frame: the device only reads it.
		a := r.tx.Alloc(uint64(len(pkt)), 4096)
		r.tx.Write(a, pkt)
		for i := range uint16(dpQueue) {
			r.tx.PutDesc(r.tx.Desc, i, a, uint32(len(pkt)), 0, 0)
		}
	})
	defer r.n.Close()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	posted, done := 0, 0
	run := func(n int) {
		stalled := time.Now()
		for done < n {
			for posted < n && posted-done < dpTxWindow {
				k := min(dpBurst, n-posted, dpTxWindow-(posted-done))
				for j := range k {
					r.tx.Post(uint16((posted + j) % dpQueue))
				}
				posted += k
				notify(r.txKick)
			}
			// Interrupt me when the oldest burst is back.
			r.tx.SetUsedEvent(uint16(done + min(dpBurst, posted-done) - 1))
			got := 0
			for {
				if _, _, ok := r.txUsed.Pop(); !ok {
					break
				}
				got++
			}
			if got > 0 {
				done += got
				stalled = time.Now()
				continue
			}
			if time.Since(stalled) > 10*time.Second {
				b.Fatalf("%d of %d frames sent in 10 s", done, n)
			}
			r.wait(b, r.txIRQ, timer, 10*time.Millisecond)
		}
	}
	before := env.tapReceived(b)
	run(dpBurst) // warm up
	b.SetBytes(int64(c.size))
	b.ResetTimer()
	run(dpBurst + b.N)
	b.StopTimer()
	if d := r.n.Stats().TxDropped.Load(); d != 0 {
		b.Fatalf("the tap refused %d of %d frames", d, dpBurst+b.N)
	}
	// The host's side of the tap counts what the device wrote as received.
	if got := env.tapReceived(b) - before; got < uint64(dpBurst+b.N) {
		b.Fatalf("the tap received %d of the %d frames the device sent", got, dpBurst+b.N)
	}
}

// tapReceived is the frames the host's side of the tap has received: what
// the device, or the raw baseline, wrote to it.
func (env *dpEnv) tapReceived(b *testing.B) uint64 {
	b.Helper()
	out, err := exec.Command("ip", "-n", env.ns, "-s", "-j", "link", "show", "dev", "vtap0").Output()
	if err != nil {
		b.Fatalf("ip -s link show vtap0: %v", err)
	}
	var links []struct {
		Stats struct {
			RX struct {
				Packets uint64 `json:"packets"`
			} `json:"rx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		b.Fatalf("ip -s -j link show vtap0: %v: %s", err, out)
	}
	return links[0].Stats.RX.Packets
}

func (env *dpEnv) rawTx(b *testing.B, c dpCase) {
	pkt := dpFrame(c.size, c.gso, dpOtherMAC, dpGuestMAC)
	if err := env.tap.SetDeadline(time.Time{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(c.size))
	for range b.N {
		var werr error
		if err := env.rc.Write(func(fd uintptr) bool {
			_, werr = unix.Write(int(fd), pkt)
			return werr != unix.EAGAIN
		}); err != nil {
			b.Fatal(err)
		}
		if werr != nil {
			b.Fatalf("write to the tap: %v", werr)
		}
	}
}

// mmsghdr is struct mmsghdr (sendmmsg(2)).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// filler puts frames in the tap's queue, the way the host's stack
// transmits on the interface: sendmmsg on the packet socket, dpBurst
// frames a call.
type filler struct {
	fd    int
	frame []byte
	iov   unix.Iovec
	msgs  []mmsghdr
}

// newFiller sends frame (an Ethernet frame, no virtio-net header).
func (env *dpEnv) newFiller(frame []byte) *filler {
	f := &filler{fd: env.pkt, frame: frame, msgs: make([]mmsghdr, dpBurst)}
	f.iov.Base = &frame[0]
	f.iov.SetLen(len(frame))
	for i := range f.msgs {
		f.msgs[i].hdr.Iov = &f.iov
		f.msgs[i].hdr.SetIovlen(1)
	}
	return f
}

// fill queues k frames (k <= dpRxFill) on the tap; the kernel hands each
// to the tap before sendmmsg returns.
func (f *filler) fill(b *testing.B, k int) {
	for k > 0 {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(f.fd), uintptr(unsafe.Pointer(&f.msgs[0])), uintptr(min(k, len(f.msgs))), 0, 0, 0)
		switch errno {
		case 0:
			k -= int(n)
		case unix.EINTR, unix.ENOBUFS, unix.EAGAIN:
		default:
			b.Fatalf("sendmmsg on the tap interface: %v", errno)
		}
	}
}

// drain reads and drops what waits in the tap's queue.
func (env *dpEnv) drain(b *testing.B) {
	buf := make([]byte, HeaderLen+maxFrameLen)
	for {
		var err error
		if cerr := env.rc.Control(func(fd uintptr) { _, err = unix.Read(int(fd), buf) }); cerr != nil {
			b.Fatal(cerr)
		}
		if err != nil {
			return
		}
	}
}

// rxRounds receives n frames in rounds: with the timer stopped, dpRxFill
// frames are queued on the tap; then receive takes them, timed.
func rxRounds(b *testing.B, f *filler, n int, receive func(k int)) {
	for done := 0; done < n; {
		k := min(dpRxFill, n-done)
		b.StopTimer()
		f.fill(b, k)
		b.StartTimer()
		receive(k)
		done += k
	}
}

func (env *dpEnv) deviceRx(b *testing.B, c dpCase) {
	env.drain(b)
	var free []uint16 // chains not posted
	r := env.newRig(b, func(r *dpRig) {
		// One buffer per chain, as Linux posts mergeable receive buffers.
		for range dpQueue {
			free = append(free, r.rx.Chain(virtiotest.Buf{Addr: r.rx.Alloc(dpRxBuf, 64), Len: dpRxBuf, Write: true}))
		}
	})
	defer r.n.Close()
	f := env.newFiller(dpFrame(c.size, false, dpGuestMAC, dpHostMAC)[HeaderLen:])
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var used uint16 // entries reaped
	odd := 0
	// receive posts exactly k buffers, so the device has none left (and
	// reads nothing) while the next round is queued.
	receive := func(k int) {
		posted, got := 0, 0
		post := func() {
			m := min(len(free), k-posted)
			for _, h := range free[len(free)-m:] {
				r.rx.Post(h)
			}
			free = free[:len(free)-m]
			posted += m
			if m > 0 {
				notify(r.rxKick)
			}
		}
		post()
		stalled := time.Now()
		for got < k {
			n := 0
			for {
				id, length, ok := r.rxUsed.Pop()
				if !ok {
					break
				}
				if length != uint32(HeaderLen+c.size) {
					odd++
				}
				free = append(free, uint16(id))
				n++
			}
			if n > 0 {
				used += uint16(n)
				got += n
				post()
				stalled = time.Now()
				continue
			}
			if time.Since(stalled) > 10*time.Second {
				b.Fatalf("%d of %d frames received in 10 s", got, k)
			}
			r.rx.SetUsedEvent(used + uint16(min(dpBurst, k-got)) - 1)
			r.wait(b, r.rxIRQ, timer, time.Millisecond)
		}
	}
	rxRounds(b, f, dpBurst, receive) // warm up
	b.SetBytes(int64(c.size))
	b.ResetTimer()
	rxRounds(b, f, b.N, receive)
	b.StopTimer()
	if odd > b.N/100 {
		b.Fatalf("%d of %d frames were not the %d-byte frames sent", odd, b.N, c.size)
	}
}

func (env *dpEnv) rawRx(b *testing.B, c dpCase) {
	env.drain(b)
	f := env.newFiller(dpFrame(c.size, false, dpGuestMAC, dpHostMAC)[HeaderLen:])
	buf := make([]byte, HeaderLen+maxFrameLen)
	odd := 0
	receive := func(k int) {
		if err := env.tap.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			b.Fatal(err)
		}
		for range k {
			var m int
			var rerr error
			if err := env.rc.Read(func(fd uintptr) bool {
				m, rerr = unix.Read(int(fd), buf)
				return rerr != unix.EAGAIN
			}); err != nil {
				b.Fatal(err)
			}
			if rerr != nil {
				b.Fatalf("read from the tap: %v", rerr)
			}
			if m != HeaderLen+c.size {
				odd++
			}
		}
	}
	rxRounds(b, f, dpBurst, receive) // warm up
	b.SetBytes(int64(c.size))
	b.ResetTimer()
	rxRounds(b, f, b.N, receive)
	b.StopTimer()
	if err := env.tap.SetDeadline(time.Time{}); err != nil {
		b.Fatal(err)
	}
	if odd > b.N/100 {
		b.Fatalf("%d of %d frames were not the %d-byte frames sent", odd, b.N, c.size)
	}
}
