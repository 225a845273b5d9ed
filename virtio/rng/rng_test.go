package rng

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// counterSource yields 0, 1, 2, ... (mod 256), so a test knows which
// bytes the device wrote where.
type counterSource struct {
	mu sync.Mutex
	n  byte
}

func (s *counterSource) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range p {
		p[i] = s.n
		s.n++
	}
	return len(p), nil
}

// counterBytes is what a fresh counterSource yields first.
func counterBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

type failingSource struct{}

func (failingSource) Read([]byte) (int, error) { return 0, errors.New("no entropy today") }

// rig is a device activated on a fake driver's queue.
type rig struct {
	dev    *Device
	drv    *virtiotest.Driver
	kick   chan struct{}
	failed chan error
}

func newRig(t *testing.T, cfg Config, ram uint64, features uint64) *rig {
	t.Helper()
	dev, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	drv := virtiotest.NewMappedDriver(t, ram, dev.QueueSizes()[0])
	q, err := drv.Queue(features, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{dev: dev, drv: drv, kick: make(chan struct{}, 1), failed: make(chan error, 1)}
	if err := dev.Activate(&virtio.Activation{
		Mem: drv.Mem, Features: features, Queues: []*virtio.Queue{q}, Kicks: []<-chan struct{}{r.kick},
		Fail: func(err error) {
			select {
			case r.failed <- err:
			default:
			}
		},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Reset)
	return r
}

func (r *rig) notify() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// buf allocates n bytes of guest RAM filled with fill.
func (r *rig) buf(n uint32, fill byte, write bool) virtiotest.Buf {
	a := r.drv.Alloc(uint64(n), 8)
	r.drv.Write(a, bytes.Repeat([]byte{fill}, int(n)))
	return virtiotest.Buf{Addr: a, Len: n, Write: write}
}

func TestIdentity(t *testing.T) {
	d, err := New(Config{ID: "rng0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Type() != 4 || d.Features() != 0 || len(d.QueueSizes()) != 1 || d.QueueSizes()[0] != DefaultQueueSize {
		t.Errorf("type %d features %#x queues %v", d.Type(), d.Features(), d.QueueSizes())
	}
	cfg := bytes.Repeat([]byte{0xff}, 16)
	d.WriteConfig(0, []byte{1, 2, 3})
	d.ReadConfig(0, cfg)
	if !bytes.Equal(cfg, make([]byte, 16)) {
		t.Errorf("configuration space reads %x, want zeros", cfg)
	}
	for _, size := range []uint16{3, 100, 1 << 15} {
		_, err := New(Config{QueueSize: size}, nil)
		if wantOK := size&(size-1) == 0; (err == nil) != wantOK {
			t.Errorf("queue size %d: %v", size, err)
		}
	}
	if err := d.Activate(&virtio.Activation{Queues: []*virtio.Queue{nil}, Kicks: make([]<-chan struct{}, 1)}); err == nil || !strings.Contains(err.Error(), "request queue") {
		t.Errorf("Activate without the request queue: %v", err)
	}
}

// TestRequests checks what lands in the guest's buffers and in the used
// ring, and that a chain the driver must not post fails the device.
func TestRequests(t *testing.T) {
	for _, tt := range []struct {
		name     string
		bufs     []uint32 // lengths; writable unless in readable
		readable int      // how many leading buffers are device-readable
		indirect bool
		want     int    // bytes written; -1: the device fails
		failWith string // part of the failure reason
	}{
		{name: "one buffer", bufs: []uint32{64}, want: 64},
		{name: "one byte", bufs: []uint32{1}, want: 1},
		{name: "three buffers in order", bufs: []uint32{10, 20, 30}, want: 60},
		{name: "indirect", bufs: []uint32{100, 4000}, indirect: true, want: 4100},
		{name: "capped at MaxRequestBytes", bufs: []uint32{MaxRequestBytes + 4096}, want: MaxRequestBytes},
		{name: "capped across buffers", bufs: []uint32{MaxRequestBytes - 10, 100}, want: MaxRequestBytes},
		{name: "readable buffer first", bufs: []uint32{16, 64}, readable: 1, want: -1, failWith: "device-readable"},
		{name: "only readable", bufs: []uint32{16}, readable: 1, want: -1, failWith: "device-readable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			features := uint64(virtio.FeatureVersion1)
			if tt.indirect {
				features |= virtio.FeatureIndirectDesc
			}
			r := newRig(t, Config{Source: &counterSource{}}, 1<<20, features)
			var bufs []virtiotest.Buf
			for i, n := range tt.bufs {
				bufs = append(bufs, r.buf(n, 0xee, i >= tt.readable))
			}
			head := r.drv.Chain(bufs...)
			if tt.indirect {
				head = r.drv.IndirectChain(bufs...)
			}
			r.drv.Post(head)
			r.notify()
			if tt.want < 0 {
				select {
				case err := <-r.failed:
					if !errors.Is(err, virtio.ErrBadChain) || !strings.Contains(err.Error(), tt.failWith) {
						t.Errorf("failure %v, want a bad chain about %q", err, tt.failWith)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the device did not fail")
				}
				if e, ok := r.drv.PopUsed(); ok {
					t.Errorf("a failed request was returned: %+v", e)
				}
				return
			}
			e, ok := r.drv.WaitUsed(10 * time.Second)
			if !ok {
				t.Fatal("no used entry")
			}
			if e.ID != uint32(head) || e.Len != uint32(tt.want) {
				t.Fatalf("used %+v, want head %d with %d bytes", e, head, tt.want)
			}
			var got []byte
			for _, b := range bufs {
				got = append(got, r.drv.Read(b.Addr, int(b.Len))...)
			}
			want := append(counterBytes(tt.want), bytes.Repeat([]byte{0xee}, len(got)-tt.want)...)
			if !bytes.Equal(got, want) {
				t.Errorf("buffers hold the wrong bytes (first difference at %d)", firstDiff(got, want))
			}
			if st := r.dev.State(); counts(st) != [3]uint64{1, uint64(tt.want), 0} {
				t.Errorf("state %+v after one request of %d bytes", st, tt.want)
			}
			select {
			case err := <-r.failed:
				t.Errorf("device failed: %v", err)
			default:
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestGetrandom checks the default source: the bytes change, and two
// requests get different ones.
func TestGetrandom(t *testing.T) {
	r := newRig(t, Config{}, 1<<20, virtio.FeatureVersion1)
	a, b := r.buf(256, 0, true), r.buf(256, 0, true)
	r.drv.Post(r.drv.Chain(a))
	r.drv.Post(r.drv.Chain(b))
	r.notify()
	for range 2 {
		if e, ok := r.drv.WaitUsed(10 * time.Second); !ok || e.Len != 256 {
			t.Fatalf("used %+v %v", e, ok)
		}
	}
	x, y := r.drv.Read(a.Addr, 256), r.drv.Read(b.Addr, 256)
	if bytes.Equal(x, make([]byte, 256)) || bytes.Equal(x, y) {
		t.Errorf("not random: %x / %x", x[:16], y[:16])
	}
}

// TestSourceFailure: a failing host source completes requests empty and
// leaves the device working.
func TestSourceFailure(t *testing.T) {
	r := newRig(t, Config{Source: failingSource{}}, 1<<20, virtio.FeatureVersion1)
	head := r.drv.Chain(r.buf(64, 0, true))
	r.drv.Post(head)
	r.notify()
	e, ok := r.drv.WaitUsed(10 * time.Second)
	if !ok || e.ID != uint32(head) || e.Len != 0 {
		t.Fatalf("used %+v %v, want head %d with 0 bytes", e, ok, head)
	}
	if st := r.dev.State(); counts(st) != [3]uint64{1, 0, 1} {
		t.Errorf("state %+v", st)
	}
	select {
	case err := <-r.failed:
		t.Errorf("device failed for the host's fault: %v", err)
	default:
	}
}

// TestFullQueueOneKick: a full queue of the largest requests, posted with
// one kick, is all served, and the used ring takes every request.
func TestFullQueueOneKick(t *testing.T) {
	const n = 64
	r := newRig(t, Config{QueueSize: n, Source: &counterSource{}}, 6<<20, virtio.FeatureVersion1|virtio.FeatureEventIdx)
	for range n {
		r.drv.Post(r.drv.Chain(r.buf(MaxRequestBytes, 0, true)))
	}
	r.notify()
	for i := range n {
		if e, ok := r.drv.WaitUsed(10 * time.Second); !ok || e.Len != MaxRequestBytes {
			t.Fatalf("request %d: used %+v %v", i, e, ok)
		}
	}
	if st := r.dev.State(); st.Requests != n || st.Bytes != n*MaxRequestBytes {
		t.Errorf("state %+v", st)
	}
}

// TestResetReactivate: Reset stops the worker; the device serves again
// after a new activation, its counters continue, and a device built from
// its state reports the same.
func TestResetReactivate(t *testing.T) {
	r := newRig(t, Config{Source: &counterSource{}}, 1<<20, virtio.FeatureVersion1)
	r.drv.Post(r.drv.Chain(r.buf(32, 0, true)))
	r.notify()
	if _, ok := r.drv.WaitUsed(10 * time.Second); !ok {
		t.Fatal("no used entry")
	}
	r.dev.Reset()
	r.dev.Reset() // idempotent

	drv := virtiotest.NewMappedDriver(t, 1<<20, DefaultQueueSize)
	q, err := drv.Queue(virtio.FeatureVersion1, nil)
	if err != nil {
		t.Fatal(err)
	}
	kick := make(chan struct{}, 1)
	t.Cleanup(r.dev.Reset) // before the RAM is unmapped
	if err := r.dev.Activate(&virtio.Activation{Mem: drv.Mem, Queues: []*virtio.Queue{q}, Kicks: []<-chan struct{}{kick}, Fail: func(err error) { t.Errorf("fail: %v", err) }}); err != nil {
		t.Fatal(err)
	}
	if err := r.dev.Activate(&virtio.Activation{Mem: drv.Mem, Queues: []*virtio.Queue{q}, Kicks: []<-chan struct{}{kick}}); err == nil {
		t.Error("second Activate without Reset succeeded")
	}
	a := drv.Alloc(16, 8)
	drv.Post(drv.Chain(virtiotest.Buf{Addr: a, Len: 16, Write: true}))
	kick <- struct{}{}
	if e, ok := drv.WaitUsed(10 * time.Second); !ok || e.Len != 16 {
		t.Fatalf("after reactivation: used %+v %v", e, ok)
	}
	st := r.dev.State()
	if want := (State{Version: StateVersion, QueueSize: DefaultQueueSize, Requests: 2, Bytes: 48}); st != want {
		t.Errorf("state %+v, want %+v", st, want)
	}
	// Saved as plain data, restored with the same totals.
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var saved State
	if err := json.Unmarshal(raw, &saved); err != nil {
		t.Fatal(err)
	}
	restored, err := Restore(saved, &counterSource{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if restored.State() != st {
		t.Errorf("restored state %+v, want %+v", restored.State(), st)
	}
	saved.Version++
	if _, err := Restore(saved, nil, nil); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("restore of another state version: %v", err)
	}
}

// counts is a state's counters alone.
func counts(st State) [3]uint64 { return [3]uint64{st.Requests, st.Bytes, st.SourceErrors} }

// FuzzRequestQueue feeds arbitrary descriptor tables and available rings
// to the request handler: it must never panic, never write more than a request's
// bound, and account for every byte it reports; a bad chain fails the
// queue (the transport then fails the device), nothing else.
func FuzzRequestQueue(f *testing.F) {
	// Each descriptor is 7 bytes: le16 address in 16-byte units, le16
	// length, flags, next, and whether its index is posted.
	desc := func(addr16, length uint16, flags, next, post byte) []byte {
		b := binary.LittleEndian.AppendUint16(nil, addr16)
		b = binary.LittleEndian.AppendUint16(b, length)
		return append(b, flags, next, post)
	}
	f.Add(desc(0x100, 64, virtiotest.FlagWrite, 0, 1), true)
	f.Add(append(desc(0x100, 16, virtiotest.FlagNext, 1, 1), desc(0x200, 32, virtiotest.FlagWrite, 0, 0)...), false)
	f.Add(append(desc(0x100, 32, virtiotest.FlagIndirect, 0, 1), desc(0x200, 64, virtiotest.FlagWrite, 0, 0)...), true)
	f.Add(append(desc(0x100, 0xffff, virtiotest.FlagWrite|virtiotest.FlagNext, 0, 1), desc(0, 0, 0, 0, 1)...), true)
	const size = 16
	f.Fuzz(func(t *testing.T, data []byte, indirect bool) {
		drv, err := virtiotest.NewDriver(1<<20, size)
		if err != nil {
			t.Fatal(err)
		}
		features := uint64(virtio.FeatureVersion1)
		if indirect {
			features |= virtio.FeatureIndirectDesc
		}
		q, err := drv.Queue(features, nil)
		if err != nil {
			t.Fatal(err)
		}
		posted := 0
		for i := 0; i < size && len(data) >= 7; i, data = i+1, data[7:] {
			// Buffers lie above the rings (a guest that points the
			// device at its own rings only hurts itself), some past RAM.
			addr := virtiotest.Base + 0x1000 + 16*uint64(binary.LittleEndian.Uint16(data))
			drv.PutDesc(drv.Desc, uint16(i), addr, uint32(binary.LittleEndian.Uint16(data[2:])), uint16(data[4]), uint16(data[5]%(size+2)))
			if data[6]&1 != 0 {
				drv.Post(uint16(i))
				posted++
			}
		}
		d, err := New(Config{Source: &counterSource{}}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		// What Run.Serve does with each chain, without its goroutine.
		req := &requests{d: d, log: slog.New(slog.DiscardHandler)}
		var serveErr error
		for range 2 * size {
			c, ok, err := q.Pop()
			if err == nil && ok {
				var n uint32
				if n, err = req.fill(q, c); err == nil {
					err = q.Push(c.Head, n)
				}
			}
			if err != nil {
				serveErr = err
				break
			}
			if !ok {
				break
			}
		}
		if serveErr != nil && !errors.Is(serveErr, virtio.ErrBadChain) {
			t.Fatalf("serve failed with something other than a bad chain: %v", serveErr)
		}
		var used, total uint64
		for {
			e, ok := drv.PopUsed()
			if !ok {
				break
			}
			if e.Len > MaxRequestBytes || e.ID >= size {
				t.Fatalf("used element %+v", e)
			}
			used++
			total += uint64(e.Len)
		}
		if st := d.State(); st.Requests != used || st.Bytes != total || used > uint64(posted) {
			t.Fatalf("state %+v, used ring has %d requests with %d bytes (%d posted)", st, used, total, posted)
		}
		if serveErr == nil && used != uint64(posted) {
			t.Fatalf("%d of %d posted requests served without an error", used, posted)
		}
	})
}
