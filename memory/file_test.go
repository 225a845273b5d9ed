package memory

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// twoRegions is a small RAM layout with a gap, given out of order to show
// that the file follows guest addresses, not the order of the layout.
func twoRegions() []Layout {
	return []Layout{
		{GuestAddr: 0x1_0000_0000, Size: 1 << 20},
		{GuestAddr: 0, Size: 2 << 20},
	}
}

// fill writes a pattern that differs per page into a few places of g.
func fill(t *testing.T, g *Guest) map[uint64][]byte {
	t.Helper()
	want := map[uint64][]byte{
		0:                         []byte("first page of low RAM"),
		0x1000 - 3:                []byte("straddles a page boundary"),
		2<<20 - 8:                 []byte("lastlast"),
		0x1_0000_0000:             []byte("high RAM"),
		0x1_0000_0000 + 1<<20 - 1: {0xff},
	}
	for addr, b := range want {
		if err := g.WriteAt(b, addr); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

func dumpToFile(t *testing.T, g *Guest) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mem")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := g.Dump(f); err != nil {
		t.Fatal(err)
	}
	return path
}

func mapFile(t *testing.T, layout []Layout, path string) *Guest {
	t.Helper()
	f, err := os.Open(path) // read-only is enough for private mappings
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the mappings outlive the descriptor
	g, err := NewFromFile(layout, f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func sameRAM(t *testing.T, a, b *Guest) {
	t.Helper()
	ra, rb := a.Regions(), b.Regions()
	if len(ra) != len(rb) {
		t.Fatalf("%d regions, want %d", len(rb), len(ra))
	}
	for i := range ra {
		if ra[i].GuestAddr != rb[i].GuestAddr || !bytes.Equal(ra[i].Host, rb[i].Host) {
			t.Fatalf("region %d (%#x) differs", i, ra[i].GuestAddr)
		}
	}
}

func TestDumpAndMap(t *testing.T) {
	src, err := New(twoRegions(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := fill(t, src)
	path := dumpToFile(t, src)

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(fi.Size()) != src.Size() {
		t.Fatalf("file is %d bytes, RAM %d", fi.Size(), src.Size())
	}
	// Layout: low RAM at offset 0, high RAM right after it.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, want[0]) || !bytes.HasPrefix(raw[2<<20:], want[0x1_0000_0000]) {
		t.Error("regions are not at the running sum of their sizes in guest-address order")
	}

	dst := mapFile(t, twoRegions(), path)
	sameRAM(t, src, dst)
	if dst.Size() != src.Size() {
		t.Errorf("size %d, want %d", dst.Size(), src.Size())
	}
	for addr, b := range want {
		got := make([]byte, len(b))
		if err := dst.ReadAt(got, addr); err != nil || !bytes.Equal(got, b) {
			t.Errorf("at %#x: %q, %v; want %q", addr, got, err, b)
		}
	}
}

func TestMappedWritesStayPrivate(t *testing.T) {
	src, err := New(twoRegions(), Options{HugePages: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	fill(t, src)
	path := dumpToFile(t, src)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	a := mapFile(t, twoRegions(), path)
	b := mapFile(t, twoRegions(), path)
	if err := a.WriteAt([]byte("written by a"), 0x10); err != nil {
		t.Fatal(err)
	}
	if err := b.PutUint64(0x1_0000_0000, 0xb); err != nil {
		t.Fatal(err)
	}
	// Each guest sees only its own write.
	got := make([]byte, 12)
	if err := b.ReadAt(got, 0x10); err != nil || bytes.Equal(got, []byte("written by a")) {
		t.Errorf("b sees a's write: %q, %v", got, err)
	}
	if v, err := a.Uint64(0x1_0000_0000); err != nil || v == 0xb {
		t.Errorf("a sees b's write: %#x, %v", v, err)
	}
	if err := a.ReadAt(got, 0x10); err != nil || string(got) != "written by a" {
		t.Errorf("a lost its write: %q, %v", got, err)
	}
	// The file is untouched.
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("a guest's write reached the memory file")
	}
	// A third guest from the same file starts from the dumped contents.
	sameRAM(t, src, mapFile(t, twoRegions(), path))
}

func TestDumpIsSparse(t *testing.T) {
	const size = 64 << 20
	g, err := New([]Layout{{Size: size}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	page := uint64(unix.Getpagesize())
	touched := []uint64{0, 7 * page, size / 2, size - page}
	for _, addr := range touched {
		if err := g.PutUint32(addr+4, 0xfeedface); err != nil {
			t.Fatal(err)
		}
	}
	path := dumpToFile(t, g)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Fatalf("file is %d bytes, want %d", st.Size, size)
	}
	// st_blocks counts 512-byte units whatever the file system's block.
	if used := st.Blocks * 512; used > 1<<20 {
		t.Errorf("a guest that touched %d pages takes %d bytes on disk", len(touched), used)
	}
	back := mapFile(t, []Layout{{Size: size}}, path)
	for _, addr := range touched {
		if v, err := back.Uint32(addr + 4); err != nil || v != 0xfeedface {
			t.Errorf("at %#x: %#x, %v", addr+4, v, err)
		}
	}
}

func TestDumpReplacesOldContents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xaa}, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := New([]Layout{{Size: 1 << 20}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := g.Dump(f); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, make([]byte, 1<<20)) {
		t.Error("an all-zero guest dumped over an old file does not read back as zeros of its size")
	}
}

func TestDumpRefusesItsOwnFile(t *testing.T) {
	src, err := New([]Layout{{Size: 1 << 20}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	fill := []byte("keep me")
	if err := src.WriteAt(fill, 0x100); err != nil {
		t.Fatal(err)
	}
	path := dumpToFile(t, src)
	g := mapFile(t, []Layout{{Size: 1 << 20}}, path)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := g.Dump(f); err == nil || !strings.Contains(err.Error(), "mapped from") {
		t.Fatalf("dump into the backing file: %v", err)
	}
	got := make([]byte, len(fill))
	if err := g.ReadAt(got, 0x100); err != nil || !bytes.Equal(got, fill) {
		t.Errorf("after the refused dump: %q, %v", got, err)
	}
}

func TestNewFromFileRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mem")
	if err := os.WriteFile(path, make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, c := range []struct {
		name   string
		layout []Layout
		file   *os.File
		want   string
	}{
		{"file too big", []Layout{{Size: 2 << 20}}, f, "is 3145728 bytes, but the guest's RAM layout is 2097152 bytes"},
		{"file too small", []Layout{{Size: 2 << 20}, {GuestAddr: 4 << 20, Size: 2 << 20}}, f, "layout is 4194304 bytes"},
		{"unaligned", []Layout{{Size: 3<<20 - 1}}, f, "not page aligned"},
		{"empty region", []Layout{{Size: 0}, {Size: 3 << 20}}, f, "not page aligned"},
		{"overlap", []Layout{{Size: 2 << 20}, {GuestAddr: 1 << 20, Size: 1 << 20}}, f, "overlap"},
		{"huge", []Layout{{Size: 1 << 63}, {GuestAddr: 1 << 63, Size: 1 << 63}}, f, "overflows"},
		{"directory", []Layout{{Size: 1 << 20}}, d, "not a regular file"},
	} {
		g, err := NewFromFile(c.layout, c.file, Options{})
		if err == nil {
			g.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want it to say %q", c.name, err, c.want)
		}
	}
}

func TestDumpFromRegions(t *testing.T) {
	page := unix.Getpagesize()
	host := make([]byte, 2*page)
	host[page+1] = 7
	g, err := FromRegions(Region{GuestAddr: 0x2000, Host: host})
	if err != nil {
		t.Fatal(err)
	}
	back := mapFile(t, []Layout{{GuestAddr: 0x2000, Size: uint64(2 * page)}}, dumpToFile(t, g))
	sameRAM(t, g, back)

	odd, err := FromRegions(Region{Host: make([]byte, page+1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "odd"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := odd.Dump(f); err == nil {
		t.Error("dumped a region that is not whole pages, which could not be mapped back")
	}
}
