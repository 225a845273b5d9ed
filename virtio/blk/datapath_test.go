package blk

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// The data-path benchmarks: a fake guest keeps dpDepth requests in flight
// on the device (post them all, notify once, wait for the one used-buffer
// notification, reap, repeat) against a dpImageSize image in the page
// cache; the raw baseline is dpDepth goroutines doing the same preads or
// pwrites on the same file, the host's limit for that file. One op is one
// request, so ns/op is per request and MB/s counts the data moved.
const (
	dpImageSize = 64 << 20
	dpDepth     = 32
	dpQueue     = 128 // dpDepth chains of three descriptors
	dpRAM       = 8 << 20
)

// dpCase is one workload.
type dpCase struct {
	name   string
	write  bool
	size   int
	random bool
}

var dpCases = []dpCase{
	{"randread-4k-qd32", false, 4 << 10, true},
	{"randwrite-4k-qd32", true, 4 << 10, true},
	{"seqread-128k-qd32", false, 128 << 10, false},
	{"seqwrite-128k-qd32", true, 128 << 10, false},
}

// offset is the byte offset of request i: consecutive blocks for a
// sequential case, a fixed permutation of the image's blocks for a random
// one (an odd multiplier permutes the power-of-two block count), the same
// sequence for the device and the raw baseline.
func (c dpCase) offset(i int) int64 {
	blocks := uint64(dpImageSize / c.size)
	b := uint64(i)
	if c.random {
		b *= 0x9E3779B1
	}
	return int64(b&(blocks-1)) * int64(c.size)
}

// newDatapathImage writes a dpImageSize image of non-zero data (a sparse
// file would read holes) and flushes it, so no writeback of its creation
// runs during the measurement; its pages stay in the page cache.
func newDatapathImage(tb testing.TB) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "datapath.img")
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + 1)
	}
	for off := 0; off < dpImageSize; off += len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			tb.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkDatapath measures requests through the whole device path with
// the default engine (the avail ring, the queue goroutine, reads handed to
// io_uring straight into guest memory and buffered writes done by the
// queue goroutine, the used ring and its notification), each beside its
// raw baseline on the same file. datapath.go in benchmarks/ runs it for the
// report.
func BenchmarkDatapath(b *testing.B) {
	img := newDatapathImage(b)
	for _, c := range dpCases {
		b.Run(c.name, func(b *testing.B) {
			b.Run("device", func(b *testing.B) { benchDevice(b, img, c) })
			b.Run("raw", func(b *testing.B) { benchRaw(b, img, c) })
		})
	}
}

// dpRig is a fake guest with dpDepth requests laid out once in guest
// memory: slot j is descriptors 3j (header), 3j+1 (data) and 3j+2
// (status), and only the header's sector changes between batches.
type dpRig struct {
	b      *Block
	d      *virtiotest.Driver
	kick   chan struct{}
	irq    chan struct{}
	fails  chan error
	heads  []uint16
	hdrs   [][]byte // each slot's header in guest memory
	status [][]byte // each slot's status byte
	used   uint16   // used entries reaped so far
	reap   virtiotest.UsedReader
}

func newDPRig(b *testing.B, img string, c dpCase) *dpRig {
	b.Helper()
	blk, err := Open(Config{ID: "bench", Path: img, QueueSize: dpQueue})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { blk.Close() })
	// mmap'd RAM: the device reads and writes it while the fake guest
	// runs, ordered by the ring protocol as with a real guest.
	d := virtiotest.NewMappedDriver(b, dpRAM, dpQueue)
	r := &dpRig{b: blk, d: d, kick: make(chan struct{}, 1), irq: make(chan struct{}, 1), fails: make(chan error, 4), reap: virtiotest.UsedReader{Driver: d}}
	typ := uint32(typeIn)
	if c.write {
		typ = typeOut
	}
	data := make([]byte, c.size)
	for i := range data {
		data[i] = byte(i*13 + 5)
	}
	for range dpDepth {
		hdr := d.Alloc(headerLen, 16)
		buf := d.Alloc(uint64(c.size), 4096)
		st := d.Alloc(1, 1)
		var h [headerLen]byte
		binary.LittleEndian.PutUint32(h[0:], typ)
		d.Write(hdr, h[:])
		d.Write(buf, data)
		r.heads = append(r.heads, d.Chain(
			virtiotest.Buf{Addr: hdr, Len: headerLen},
			virtiotest.Buf{Addr: buf, Len: uint32(c.size), Write: !c.write},
			virtiotest.Buf{Addr: st, Len: 1, Write: true}))
		hs, _ := d.Mem.Slice(hdr, headerLen)
		ss, _ := d.Mem.Slice(st, 1)
		r.hdrs, r.status = append(r.hdrs, hs), append(r.status, ss)
	}
	features := blk.Features() | virtio.FeatureVersion1 | virtio.FeatureEventIdx
	q, err := d.Queue(features, func() {
		select {
		case r.irq <- struct{}{}:
		default:
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := blk.Activate(&virtio.Activation{
		Mem: d.Mem, Features: features, Queues: []*virtio.Queue{q}, Kicks: []<-chan struct{}{r.kick},
		Fail: func(err error) { r.fails <- err },
	}); err != nil {
		b.Fatal(err)
	}
	return r
}

// batch posts requests first..first+k-1 (k <= dpDepth), notifies the
// device once, and waits until all k are used: the driver asks to be
// interrupted only for the last one (used_event, EVENT_IDX), as a guest
// waiting for a batch does.
func (r *dpRig) batch(b *testing.B, c dpCase, first, k int, timer *time.Timer) {
	r.d.SetUsedEvent(r.used + uint16(k) - 1)
	for j := range k {
		binary.LittleEndian.PutUint64(r.hdrs[j][8:], uint64(c.offset(first+j))/SectorSize)
		r.status[j][0] = 0xff
		r.d.Post(r.heads[j])
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	timer.Reset(10 * time.Second)
	for got := 0; got < k; {
		if _, _, ok := r.reap.Pop(); ok {
			got++
			continue
		}
		select {
		case <-r.irq:
		case err := <-r.fails:
			b.Fatalf("device failed: %v", err)
		case <-timer.C:
			b.Fatalf("%d of %d requests completed in 10 s", got, k)
		}
	}
	r.used += uint16(k)
	for j := range k {
		if s := r.status[j][0]; s != StatusOK {
			b.Fatalf("request %d: status %d", first+j, s)
		}
	}
}

func benchDevice(b *testing.B, img string, c dpCase) {
	r := newDPRig(b, img, c)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	r.batch(b, c, 0, dpDepth, timer) // warm up: workers started, pages touched
	b.SetBytes(int64(c.size))
	b.ResetTimer()
	for done := 0; done < b.N; done += dpDepth {
		r.batch(b, c, done, min(dpDepth, b.N-done), timer)
	}
}

// benchRaw is the host's limit for the same requests: dpDepth goroutines
// doing preads or pwrites of the same sizes at the same offsets.
func benchRaw(b *testing.B, img string, c dpCase) {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	b.SetBytes(int64(c.size))
	b.ResetTimer()
	for range dpDepth {
		wg.Go(func() {
			buf := make([]byte, c.size)
			for i := range buf {
				buf[i] = byte(i*13 + 5)
			}
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				var err error
				if c.write {
					_, err = f.WriteAt(buf, c.offset(int(i)))
				} else {
					_, err = f.ReadAt(buf, c.offset(int(i)))
				}
				if err != nil {
					failed.Store(&err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
}
