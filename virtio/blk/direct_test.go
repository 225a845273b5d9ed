package blk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/internal/testenv"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// directDir returns a directory whose file system supports O_DIRECT:
// t.TempDir() if it does, else a directory under /var/tmp. It skips the
// test, loudly, when neither does.
func directDir(t *testing.T) string {
	t.Helper()
	try := func(dir string) bool {
		p := filepath.Join(dir, "probe.img")
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			return false
		}
		defer os.Remove(p)
		b, err := Open(Config{ID: "probe", Path: p, Direct: true})
		if err != nil {
			t.Logf("%s: %v", dir, err)
			return false
		}
		b.Close()
		return true
	}
	if dir := t.TempDir(); try(dir) {
		return dir
	}
	if dir, err := os.MkdirTemp("/var/tmp", "blk-direct-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(dir) })
		if try(dir) {
			return dir
		}
	}
	testenv.Skip(t, "neither TMPDIR nor /var/tmp supports O_DIRECT; direct I/O is untested")
	return ""
}

// newDirectImage writes a size-byte image of random bytes (so a byte in the
// wrong place shows) under directDir and returns its path and contents.
func newDirectImage(t *testing.T, name string, size int64) (string, []byte) {
	t.Helper()
	img := make([]byte, size)
	rng := rand.New(rand.NewChaCha8([32]byte{byte(size), byte(size >> 8), 'd'}))
	for i := range img {
		img[i] = byte(rng.Uint32())
	}
	p := filepath.Join(directDir(t), name)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, img
}

// forcedAlign is a Config.alignment that makes the image report alignment
// a instead of the host's (which must divide it), so the read-modify-write
// paths run even where the host's alignment is one sector. Nil a: the
// host's.
func forcedAlign(t *testing.T, a *dioAlign) func(*os.File) (dioAlign, error) {
	t.Helper()
	if a == nil {
		return nil
	}
	return func(f *os.File) (dioAlign, error) {
		host, err := dioAlignment(f)
		if err != nil {
			return host, err
		}
		if a.off%host.off != 0 || a.mem%host.mem != 0 {
			testenv.Skipf(t, "host alignment %+v does not divide the forced %+v", host, *a)
		}
		return *a, nil
	}
}

// seg is one data descriptor: n bytes whose host address is skew bytes
// past a 4 KiB boundary.
type seg struct {
	n    int
	skew uint64
}

func segsSize(segs []seg) int {
	n := 0
	for _, s := range segs {
		n += s.n
	}
	return n
}

// hostAt allocates n bytes of guest memory whose host address is skew
// bytes past a 4 KiB boundary: what O_DIRECT sees is the host address.
func (h *harness) hostAt(n int, skew uint64) uint64 {
	a := h.d.Alloc(uint64(n)+4096, 1)
	s, err := h.d.Mem.Slice(a, 1)
	if err != nil {
		h.t.Fatal(err)
	}
	hp := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(s))))
	return a + (skew+4096-hp%4096)%4096
}

// dreq is a request whose data is spread over several descriptors.
type dreq struct {
	head   uint16
	status uint64
	addrs  []uint64
	segs   []seg
}

// submitSegs posts a read (typeIn) or write (typeOut, of data) at sector
// whose data descriptors are segs.
func (h *harness) submitSegs(typ uint32, sector uint64, segs []seg, data []byte) dreq {
	d := h.d
	hdr, status := h.header(typ, sector)
	r := dreq{status: status, segs: segs}
	bufs := []virtiotest.Buf{{Addr: hdr, Len: headerLen}}
	off := 0
	for _, s := range segs {
		a := h.hostAt(s.n, s.skew)
		if typ == typeOut {
			d.Write(a, data[off:off+s.n])
		}
		off += s.n
		r.addrs = append(r.addrs, a)
		bufs = append(bufs, virtiotest.Buf{Addr: a, Len: uint32(s.n), Write: typ == typeIn})
	}
	bufs = append(bufs, virtiotest.Buf{Addr: r.status, Len: 1, Write: true})
	r.head = d.Chain(bufs...)
	d.Post(r.head)
	return r
}

// data returns what the device wrote into r's descriptors.
func (h *harness) data(r dreq) []byte {
	var out []byte
	for i, s := range r.segs {
		out = append(out, h.d.Read(r.addrs[i], s.n)...)
	}
	return out
}

// do submits one request, waits for it and checks its status.
func (h *harness) do(typ uint32, sector uint64, segs []seg, data []byte) dreq {
	h.t.Helper()
	r := h.submitSegs(typ, sector, segs, data)
	h.run(1)
	h.used(1)
	if st := h.d.Read(r.status, 1)[0]; st != StatusOK {
		h.t.Fatalf("request type %d at sector %d (%v): status %d", typ, sector, segs, st)
	}
	return r
}

// checkImage compares the image, read through the page cache, with want.
func checkImage(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("image is %d bytes, want %d", len(got), len(want))
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("image differs from what the guest wrote at byte %d (sector %d): %#x, want %#x", i, i/SectorSize, got[i], want[i])
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// isODirect reports whether the image in service is open with O_DIRECT.
func isODirect(t *testing.T, b *Block) bool {
	t.Helper()
	b.io.RLock()
	defer b.io.RUnlock()
	fl, err := unix.FcntlInt(b.file.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl&unix.O_DIRECT != 0 && b.dio != nil
}

func TestDirectReadWrite(t *testing.T) { forEachEngine(t, testDirectReadWrite) }

func testDirectReadWrite(t *testing.T, engine Engine) {
	const mib = 1 << 20
	odd := []seg{{1, 3}, {511, 100}, {1000, 7}, {24, 4095}} // 1536 bytes
	var many []seg
	for i := range 15 {
		many = append(many, seg{n: 100 + 37*i, skew: uint64(i*29+1) % 4096})
	}
	many = append(many, seg{n: 2*512*16 - segsSize(many), skew: 17}) // 16 KiB in all
	tests := []struct {
		name   string
		align  *dioAlign // forced alignment; the host's when nil
		size   int64     // image size; 1 MiB when 0
		sector uint64
		segs   []seg
	}{
		{name: "aligned", sector: 8, segs: []seg{{4096, 0}}},
		{name: "aligned segments", sector: 9, segs: []seg{{4096, 0}, {512, 0}, {1024, 0}}},
		{name: "address off by 1", sector: 8, segs: []seg{{4096, 1}}},
		{name: "address off by 511", sector: 3, segs: []seg{{1024, 511}}},
		{name: "address off by 256, odd sector", sector: 1, segs: []seg{{512, 256}}},
		{name: "odd splits", sector: 5, segs: odd},
		{name: "many odd splits", sector: 100, segs: many},
		{name: "longer than a bounce buffer", sector: 11, segs: []seg{{bounceSize + 3*512, 64}}},
		{name: "longer than a bounce buffer, split", sector: 2, segs: []seg{{200 << 10, 5}, {100<<10 + 512, 0}}},
		{name: "last sector", sector: mib/SectorSize - 1, segs: []seg{{512, 1}}},

		// A 4 KiB alignment, as on a 4K-sector device: sector-granular
		// requests are partial blocks, so writes read-modify-write.
		{name: "4K: aligned", align: &dioAlign{4096, 4096}, sector: 8, segs: []seg{{8192, 0}}},
		{name: "4K: aligned range, address off by 512", align: &dioAlign{4096, 4096}, sector: 16, segs: []seg{{4096, 512}}},
		{name: "4K: inside one block", align: &dioAlign{4096, 4096}, sector: 3, segs: []seg{{1024, 0}}},
		{name: "4K: head and tail partial", align: &dioAlign{4096, 4096}, sector: 7, segs: []seg{{3 * 4096, 0}}},
		{name: "4K: head partial", align: &dioAlign{4096, 4096}, sector: 9, segs: []seg{{7 * 512, 0}}},
		{name: "4K: tail partial", align: &dioAlign{4096, 4096}, sector: 16, segs: []seg{{4096 + 512, 0}}},
		{name: "4K: odd splits", align: &dioAlign{4096, 4096}, sector: 13, segs: odd},
		{name: "4K: longer than a bounce buffer", align: &dioAlign{4096, 4096}, sector: 5, segs: []seg{{bounceSize + 1024, 3}}},

		// An image whose size is not a multiple of the alignment: the
		// last block is partial and can only be written buffered.
		{name: "4K, short last block: last sector", align: &dioAlign{4096, 4096}, size: 64<<10 + 1536, sector: 130, segs: []seg{{512, 0}}},
		{name: "4K, short last block: across it", align: &dioAlign{4096, 4096}, size: 64<<10 + 1536, sector: 125, segs: []seg{{3072, 1}}},
		{name: "4K, short last block: before it", align: &dioAlign{4096, 4096}, size: 64<<10 + 1536, sector: 120, segs: []seg{{1024, 9}}},
		{name: "4K, short last block: aligned before it", align: &dioAlign{4096, 4096}, size: 64<<10 + 1536, sector: 120, segs: []seg{{4096, 0}}},
		{name: "image not a whole number of sectors", size: 64<<10 + 100, sector: 127, segs: []seg{{512, 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size := tt.size
			if size == 0 {
				size = mib
			}
			path, want := newDirectImage(t, "disk.img", size)
			h := newHarness(t, Config{Engine: engine, ID: "direct", Path: path, Direct: true, alignment: forcedAlign(t, tt.align)})
			if !isODirect(t, h.b) {
				t.Fatal("image not open with O_DIRECT")
			}
			a := h.b.dio.align
			if tt.align != nil && a != *tt.align {
				t.Fatalf("alignment %+v, want the forced %+v", a, *tt.align)
			}
			off, n := int64(tt.sector)*SectorSize, int64(segsSize(tt.segs))
			inPlace := off%a.off == 0 && n%a.off == 0
			for _, s := range tt.segs {
				inPlace = inPlace && int64(s.n)%a.off == 0 && int64(s.skew)%a.mem == 0
			}
			partial := off%a.off != 0 || n%a.off != 0
			buffered := partial && alignUp(off+n, a.off) > size // the tail descriptor
			checkBounced := func(op string, before uint64, write bool) {
				t.Helper()
				got := h.b.bounced.Load() > before
				if want := !inPlace && !(write && buffered); got != want {
					t.Errorf("%s: bounced %v, want %v (alignment %+v)", op, got, want, a)
				}
			}

			// Write first, so no bounce buffer holds the blocks around
			// the range from an earlier read: a read-modify-write must
			// read them. The file, read through the page cache, has the
			// new data and the sectors around it untouched.
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(i*7+1) ^ byte(i>>9)
			}
			before := h.b.bounced.Load()
			h.do(typeOut, tt.sector, tt.segs, data)
			checkBounced("write", before, true)
			copy(want[off:], data)
			checkImage(t, path, want)

			// Read it back through the device.
			before = h.b.bounced.Load()
			r := h.do(typeIn, tt.sector, tt.segs, nil)
			if i := firstDiff(h.data(r), data); i >= 0 {
				t.Fatalf("read back differs at byte %d of %d", i, n)
			}
			checkBounced("read", before, false)
			// And a wider aligned read through the device agrees with
			// the page cache's view of the file.
			lo := max(0, off-4096) / 4096 * 4096
			hi := min(size/SectorSize*SectorSize, off+n+4096)
			r = h.do(typeIn, uint64(lo/SectorSize), []seg{{int(hi - lo), 0}}, nil)
			if i := firstDiff(h.data(r), want[lo:hi]); i >= 0 {
				t.Fatalf("read of [%d, %d) differs at byte %d", lo, hi, i)
			}
		})
	}
}

// TestDirectConcurrentPartialWrites has the workers write neighbouring
// sectors of the same 4 KiB blocks at once: each read-modify-write must
// keep the others' sectors.
func TestDirectConcurrentPartialWrites(t *testing.T) {
	forEachEngine(t, testDirectConcurrentPartialWrites)
}

func testDirectConcurrentPartialWrites(t *testing.T, engine Engine) {
	path, want := newDirectImage(t, "disk.img", 64<<10)
	h := newHarness(t, Config{Engine: engine, ID: "rmw", Path: path, Direct: true, Workers: 4, alignment: forcedAlign(t, &dioAlign{4096, 4096})})
	const batch = testQueue / 3 // three descriptors each, never wrapping onto pending ones
	for round := range 20 {
		var rs []dreq
		for i := range batch {
			sector := uint64((round*batch + i) % 128)
			data := bytes.Repeat([]byte{byte(round*batch + i)}, SectorSize)
			copy(want[sector*SectorSize:], data)
			rs = append(rs, h.submitSegs(typeOut, sector, []seg{{SectorSize, uint64(i) * 8}}, data))
		}
		h.run(len(rs))
		h.used(len(rs))
		for _, r := range rs {
			if st := h.d.Read(r.status, 1)[0]; st != StatusOK {
				t.Fatalf("round %d: status %d", round, st)
			}
		}
		checkImage(t, path, want)
	}
}

// TestDirectZeroesDiscardFlush runs the requests other than reads and
// writes of data on a direct disk, at offsets a 4 KiB alignment cuts.
func TestDirectZeroesDiscardFlush(t *testing.T) { forEachEngine(t, testDirectZeroesDiscardFlush) }

func testDirectZeroesDiscardFlush(t *testing.T, engine Engine) {
	for _, tt := range []struct {
		name  string
		align *dioAlign
		size  int64
	}{
		{name: "host alignment"},
		{name: "4K", align: &dioAlign{4096, 4096}},
		{name: "4K, short last block", align: &dioAlign{4096, 4096}, size: 64<<10 + 1536},
	} {
		t.Run(tt.name, func(t *testing.T) {
			size := tt.size
			if size == 0 {
				size = 64 << 10
			}
			path, want := newDirectImage(t, "disk.img", size)
			h := newHarness(t, Config{Engine: engine, ID: "dz", Path: path, Direct: true, alignment: forcedAlign(t, tt.align)})
			last := uint64(size/SectorSize) - 3
			wz := h.submit(typeWriteZeroes, 0, segment(3, 5, 0), 0)
			wzu := h.submit(typeWriteZeroes, 0, segment(17, 9, segmentFlagUnmap), 0)
			wzEnd := h.submit(typeWriteZeroes, 0, segment(last, 3, 0), 0)
			dc := h.submit(typeDiscard, 0, segment(40, 8, 0), 0)
			fl := h.submit(typeFlush, 0, nil, 0)
			emptyIn := h.submit(typeIn, 1, nil, 0)
			emptyOut := h.submit(typeOut, 1, nil, 0)
			h.run(7)
			h.used(7)
			for name, r := range map[string]req{"write zeroes": wz, "write zeroes unmap": wzu, "write zeroes at the end": wzEnd,
				"discard": dc, "flush": fl, "empty read": emptyIn, "empty write": emptyOut} {
				if st := h.statusOf(r); st != StatusOK {
					t.Errorf("%s: status %d", name, st)
				}
			}
			clear(want[3*SectorSize : 8*SectorSize])
			clear(want[17*SectorSize : 26*SectorSize])
			clear(want[last*SectorSize : (last+3)*SectorSize])
			// A discard leaves the data or zeroes; take what it left,
			// but nothing outside its range may change.
			img, _ := os.ReadFile(path)
			copy(want[40*SectorSize:48*SectorSize], img[40*SectorSize:48*SectorSize])
			checkImage(t, path, want)

			// The write-zeroes fallback for file systems without
			// FALLOC_FL_ZERO_RANGE writes zeroes through the direct path.
			h.b.io.RLock()
			for _, z := range [][2]int64{{5 * SectorSize, 3 * SectorSize}, {30 * SectorSize, 20 * SectorSize}, {(int64(last) - 2) * SectorSize, 5 * SectorSize}} {
				if err := h.b.writeZeroes(z[0], z[1]); err != nil {
					t.Fatalf("writeZeroes(%d, %d): %v", z[0], z[1], err)
				}
				clear(want[z[0] : z[0]+z[1]])
			}
			h.b.io.RUnlock()
			checkImage(t, path, want)
		})
	}
}

func TestDirectSwap(t *testing.T) { forEachEngine(t, testDirectSwap) }

func testDirectSwap(t *testing.T, engine Engine) {
	path, _ := newDirectImage(t, "a.img", 64<<10)
	h := newHarness(t, Config{Engine: engine, ID: "swap", Path: path, Direct: true})
	next, nextImg := newDirectImage(t, "b.img", 128<<10)
	if err := h.b.Swap(next); err != nil {
		t.Fatal(err)
	}
	if !isODirect(t, h.b) {
		t.Fatal("the swapped-in image is not open with O_DIRECT")
	}
	r := h.do(typeIn, 200, []seg{{1024, 7}}, nil)
	if !bytes.Equal(h.data(r), nextImg[200*SectorSize:202*SectorSize]) {
		t.Error("read after the swap is not the new image's")
	}
	// Swapping to the image in service keeps it open O_DIRECT.
	if err := h.b.Swap(next); err != nil {
		t.Fatal(err)
	}
	if !isODirect(t, h.b) {
		t.Fatal("image not O_DIRECT after swapping to itself")
	}
	// A swap to a file system without direct I/O fails; the image in
	// service stays.
	if shm := tmpfsDir(t); shm != "" {
		p := filepath.Join(shm, "c.img")
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
		err := h.b.Swap(p)
		if err == nil || !strings.Contains(err.Error(), "does not support direct I/O") {
			t.Errorf("swap to tmpfs: %v, want a direct I/O error", err)
		}
		if h.b.Path() != next || !isODirect(t, h.b) {
			t.Errorf("after the failed swap: path %s", h.b.Path())
		}
	}
}

// tmpfsDir returns a fresh directory on tmpfs, or "" (and logs why) when
// there is none to write to.
func tmpfsDir(t *testing.T) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Log("no tmpfs at /dev/shm: not testing a file system without direct I/O")
		return ""
	}
	dir, err := os.MkdirTemp("/dev/shm", "blk-direct-")
	if err != nil {
		t.Logf("/dev/shm: %v: not testing a file system without direct I/O", err)
		return ""
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestDirectOpenErrors(t *testing.T) {
	dir := tmpfsDir(t)
	if dir == "" {
		testenv.Skip(t, "no tmpfs")
	}
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		_, err := Open(Config{ID: "shm", Path: p, Direct: true, ReadOnly: ro})
		if err == nil || !strings.Contains(err.Error(), "does not support direct I/O") || !strings.Contains(err.Error(), p) {
			t.Errorf("Open(ro=%v) on tmpfs with Direct: %v, want an error naming the image and direct I/O", ro, err)
		}
		t.Log(err)
	}
	// Without Direct the same image opens, and the failed opens left
	// no lock behind.
	b, err := Open(Config{ID: "shm", Path: p})
	if err != nil {
		t.Fatalf("buffered open after the failed direct ones: %v", err)
	}
	b.Close()
}

func TestDirectReadOnly(t *testing.T) { forEachEngine(t, testDirectReadOnly) }

func testDirectReadOnly(t *testing.T, engine Engine) {
	path, img := newDirectImage(t, "ro.img", 64<<10)
	h := newHarness(t, Config{Engine: engine, ID: "ro", Path: path, Direct: true, ReadOnly: true})
	if !isODirect(t, h.b) || h.b.dio.tail != nil {
		t.Fatal("read-only image not O_DIRECT, or with a tail descriptor")
	}
	r := h.do(typeIn, 3, []seg{{700, 1}, {324, 9}}, nil)
	if !bytes.Equal(h.data(r), img[3*SectorSize:5*SectorSize]) {
		t.Error("read-only direct read differs")
	}
	w := h.submitSegs(typeOut, 0, []seg{{512, 0}}, make([]byte, 512))
	h.run(1)
	h.used(1)
	if st := h.d.Read(w.status, 1)[0]; st != StatusIOErr {
		t.Errorf("write to a read-only direct disk: status %d", st)
	}
}

// TestDirectBypassesPageCache reads a whole image through the device and
// counts the file's pages in the host page cache (mincore over a mapping
// of it): none with Direct, all without (which shows the check works).
func TestDirectBypassesPageCache(t *testing.T) {
	const size = 16 << 20
	const chunk = 1 << 20
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			path, img := newDirectImage(t, "cache.img", size)
			dropCache(t, path)
			if n := cachedPages(t, path); n > 0 {
				t.Logf("%d pages still cached after POSIX_FADV_DONTNEED", n)
			}
			h := newHarness(t, Config{ID: "cache", Path: path, Direct: direct})
			buf := h.hostAt(chunk, 0)
			hdr, st := h.d.Alloc(headerLen, 8), h.d.Alloc(1, 1)
			for off := 0; off < size; off += chunk {
				var b [headerLen]byte
				binary.LittleEndian.PutUint32(b[0:], typeIn)
				binary.LittleEndian.PutUint64(b[8:], uint64(off/SectorSize))
				h.d.Write(hdr, b[:])
				h.d.Post(h.d.Chain(virtiotest.Buf{Addr: hdr, Len: headerLen}, virtiotest.Buf{Addr: buf, Len: chunk, Write: true}, virtiotest.Buf{Addr: st, Len: 1, Write: true}))
				h.run(1)
				h.used(1)
				if s := h.d.Read(st, 1)[0]; s != StatusOK {
					t.Fatalf("read at %d: status %d", off, s)
				}
				if !bytes.Equal(h.d.Read(buf, chunk), img[off:off+chunk]) {
					t.Fatalf("read at %d differs", off)
				}
			}
			n, total := cachedPages(t, path), size/os.Getpagesize()
			t.Logf("direct=%v: %d of %d pages in the page cache after reading the image", direct, n, total)
			if direct && n > total/10 {
				t.Errorf("direct read left %d of %d pages in the page cache", n, total)
			}
			if !direct && n < total/2 {
				t.Skipf("buffered read left only %d of %d pages cached: the host evicts too fast for this check", n, total)
			}
		})
	}
}

// dropCache writes the file back and drops it from the page cache.
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// cachedPages counts the file's pages in the page cache.
func cachedPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	pg := os.Getpagesize()
	vec := make([]byte, (len(m)+pg-1)/pg)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(m))), uintptr(len(m)), uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
