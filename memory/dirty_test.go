package memory

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const high = 0x1_0000_0000 // twoRegions' second region

func trackedGuest(t *testing.T) *Guest {
	t.Helper()
	g, err := New(twoRegions(), Options{TrackDirty: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// dirtyList flattens bitmaps to (region, page) pairs, region*1e6+page.
func dirtyList(bms [][]uint64) []int {
	var out []int
	for r, bm := range bms {
		for w, word := range bm {
			for b := range 64 {
				if word&(1<<b) != 0 {
					out = append(out, r*1_000_000+w*64+b)
				}
			}
		}
	}
	return out
}

func TestDirtyTrackingWritePaths(t *testing.T) {
	page := uint64(unix.Getpagesize())
	tests := []struct {
		name  string
		write func(g *Guest) error
		want  []int // region*1e6 + page
	}{
		{"WriteAt across a page boundary", func(g *Guest) error { return g.WriteAt([]byte("abcd"), 3*page-2) }, []int{2, 3}},
		{"WriteAt in high RAM", func(g *Guest) error { return g.WriteAt([]byte{1}, high+page) }, []int{1_000_001}},
		{"WriteAt empty", func(g *Guest) error { return g.WriteAt(nil, page) }, nil},
		{"Zero three pages", func(g *Guest) error { return g.Zero(5*page, 2*page+1) }, []int{5, 6, 7}},
		{"PutUint16", func(g *Guest) error { return g.PutUint16(page-1, 0xffff) }, []int{0, 1}},
		{"PutUint32", func(g *Guest) error { return g.PutUint32(9*page, 1) }, []int{9}},
		{"PutUint64", func(g *Guest) error { return g.PutUint64(high+100*page-8, 1) }, []int{1_000_099}},
		{"OrUint64", func(g *Guest) error { return g.OrUint64(64*page+8, 2) }, []int{64}},
		{"Slice (callers may write)", func(g *Guest) error { _, err := g.Slice(70*page, page+1); return err }, []int{70, 71}},
		{"ReadAt marks nothing", func(g *Guest) error { return g.ReadAt(make([]byte, 10), page) }, nil},
		{"Uint64 marks nothing", func(g *Guest) error { _, err := g.Uint64(page); return err }, nil},
		{"Contains marks nothing", func(g *Guest) error {
			if !g.Contains(0, page) {
				return errors.New("page 0 not contained")
			}
			return nil
		}, nil},
		{"write outside RAM marks nothing", func(g *Guest) error {
			if err := g.WriteAt([]byte{1, 2}, 2<<20-1); !errors.Is(err, ErrOutOfRange) {
				return errors.New("write across the end of low RAM accepted")
			}
			return nil
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := trackedGuest(t)
			if err := tt.write(g); err != nil {
				t.Fatal(err)
			}
			if got := dirtyList(g.TakeDirty()); !slices.Equal(got, tt.want) {
				t.Errorf("dirty pages %v, want %v", got, tt.want)
			}
			if got := dirtyList(g.TakeDirty()); got != nil {
				t.Errorf("second TakeDirty: %v, want none", got)
			}
		})
	}
}

func TestMarkDirtyGivesBack(t *testing.T) {
	g := trackedGuest(t)
	if err := g.PutUint64(0, 1); err != nil {
		t.Fatal(err)
	}
	taken := g.TakeDirty()
	if err := g.PutUint64(high, 1); err != nil {
		t.Fatal(err)
	}
	g.MarkDirty(taken)
	if got, want := dirtyList(g.TakeDirty()), []int{0, 1_000_000}; !slices.Equal(got, want) {
		t.Errorf("dirty pages %v, want %v", got, want)
	}
}

func TestSetDirtyRange(t *testing.T) {
	g := trackedGuest(t)
	page := uint64(unix.Getpagesize())
	bm := g.NewDirtyBitmaps()
	if err := g.SetDirtyRange(bm, high+page-1, 2); err != nil {
		t.Fatal(err)
	}
	if err := g.SetDirtyRange(bm, 65*page, 1); err != nil {
		t.Fatal(err)
	}
	if got, want := dirtyList(bm), []int{65, 1_000_000, 1_000_001}; !slices.Equal(got, want) {
		t.Errorf("dirty pages %v, want %v", got, want)
	}
	if err := g.SetDirtyRange(bm, 2<<20-1, 2); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("range past low RAM: %v", err)
	}
	if err := g.SetDirtyRange(bm[:1], 0, 1); err == nil {
		t.Error("bitmaps of another layout accepted")
	}
}

func TestDirtyTrackingOff(t *testing.T) {
	g, err := New(twoRegions(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	if g.TrackingDirty() || g.TakeDirty() != nil {
		t.Error("a Guest made without TrackDirty tracks")
	}
}

func TestTakeDirtyShape(t *testing.T) {
	g := trackedGuest(t)
	got, empty := g.TakeDirty(), g.NewDirtyBitmaps()
	pages := func(size int) int { return (size/unix.Getpagesize() + 63) / 64 }
	want := []int{pages(2 << 20), pages(1 << 20)}
	for i, bm := range [][][]uint64{got, empty} {
		if len(bm) != 2 || len(bm[0]) != want[0] || len(bm[1]) != want[1] {
			t.Errorf("bitmaps %d: shape %d regions, want words %v", i, len(bm), want)
		}
	}
}

// dataRuns lists the file's data regions as [start, end) pairs.
func dataRuns(t *testing.T, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var runs [][2]int64
	for off := int64(0); off < st.Size(); {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, [2]int64{d, h})
		off = h
	}
	return runs
}

func TestDumpDirty(t *testing.T) {
	page := int64(unix.Getpagesize())
	g := trackedGuest(t)
	fill(t, g)
	g.TakeDirty() // as a full snapshot would
	// Page 3 changes to zero (written, so it must be in the diff as data),
	// page 4 and the last page of high RAM get data.
	if err := g.Zero(3*uint64(page), uint64(page)); err != nil {
		t.Fatal(err)
	}
	if err := g.WriteAt(bytes.Repeat([]byte{7}, int(page)), 4*uint64(page)); err != nil {
		t.Fatal(err)
	}
	if err := g.PutUint32(high+1<<20-4, 0xdeadbeef); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "diff")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := g.DumpDirty(f, g.TakeDirty()); err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	if st.Size() != int64(g.Size()) {
		t.Fatalf("diff file is %d bytes, want the RAM size %d", st.Size(), g.Size())
	}
	lowEnd := int64(2 << 20)
	want := [][2]int64{{3 * page, 5 * page}, {lowEnd + 1<<20 - page, lowEnd + 1<<20}}
	if got := dataRuns(t, path); !slices.Equal(got, want) {
		t.Fatalf("data runs %v, want %v", got, want)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range want {
		gp := uint64(r[0])
		if r[0] >= lowEnd {
			gp = high + uint64(r[0]-lowEnd)
		}
		mem := make([]byte, r[1]-r[0])
		if err := g.ReadAt(mem, gp); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b[r[0]:r[1]], mem) {
			t.Errorf("file [%#x, %#x) differs from RAM", r[0], r[1])
		}
	}
}

func TestDumpDirtyRefuses(t *testing.T) {
	g := trackedGuest(t)
	f, err := os.Create(filepath.Join(t.TempDir(), "diff"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	good := g.NewDirtyBitmaps()
	for _, tt := range []struct {
		name  string
		dirty [][]uint64
	}{
		{"too few bitmaps", good[:1]},
		{"short bitmap", [][]uint64{good[0][:1], good[1]}},
	} {
		if err := g.DumpDirty(f, tt.dirty); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
	// Its own backing file.
	path := dumpToFile(t, g)
	m := mapFile(t, twoRegions(), path)
	same, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer same.Close()
	if err := m.DumpDirty(same, m.NewDirtyBitmaps()); err == nil {
		t.Error("diff dump over the file RAM is mapped from accepted")
	}
}

// BenchmarkSlice measures what tracking costs the device datapath's most
// frequent call, off (one nil check) and on (an atomic OR per page).
func BenchmarkSlice(b *testing.B) {
	for _, track := range []bool{false, true} {
		name := "untracked"
		if track {
			name = "tracked"
		}
		b.Run(name, func(b *testing.B) {
			g, err := New(twoRegions(), Options{TrackDirty: track})
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			for i := 0; b.Loop(); i++ {
				if _, err := g.Slice(uint64(i%256)*4096, 4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCheckHolesCatchesCleanData: a diff file whose data covers a page
// not marked dirty (what a file system without fine-grained holes
// leaves) is refused, and one whose data is exactly the dirty pages
// passes.
func TestCheckHolesCatchesCleanData(t *testing.T) {
	g := trackedGuest(t)
	page := int64(unix.Getpagesize())
	if err := g.WriteAt([]byte{1}, 3*uint64(page)); err != nil {
		t.Fatal(err)
	}
	dirty := g.TakeDirty()
	var size int64
	for _, r := range g.Regions() {
		size += int64(len(r.Host))
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "diff"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, page), 3*page); err != nil {
		t.Fatal(err)
	}
	if err := g.checkHoles(f, dirty); err != nil {
		t.Fatalf("data on exactly the dirty page refused: %v", err)
	}
	if _, err := f.WriteAt([]byte{0}, 7*page); err != nil { // a clean page
		t.Fatal(err)
	}
	if err := g.checkHoles(f, dirty); err == nil || !strings.Contains(err.Error(), "clean page at offset") {
		t.Fatalf("data on a clean page: %v, want it refused", err)
	}
}
