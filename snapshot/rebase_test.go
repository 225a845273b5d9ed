package snapshot

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testPage = 4096

// writeSparse creates path of size bytes holding data at the given page
// offsets (the rest holes).
func writeSparse(t *testing.T, path string, size int64, pages map[int64][]byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for p, b := range pages {
		if _, err := f.WriteAt(b, p*testPage); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

func pageOf(b byte) []byte { return bytes.Repeat([]byte{b}, testPage) }

func TestRebase(t *testing.T) {
	dir := t.TempDir()
	base, diff := filepath.Join(dir, "base"), filepath.Join(dir, "diff")
	const pages = 64
	// Base: pages 0-9 hold i+1, page 40 a pattern, the rest holes.
	basePages := map[int64][]byte{40: pageOf(0x40)}
	for i := range int64(10) {
		basePages[i] = pageOf(byte(i + 1))
	}
	writeSparse(t, base, pages*testPage, basePages)
	// Diff: page 2 changed, page 3 zeroed (data, not a hole), pages 20-21
	// new, and the last page.
	diffPages := map[int64][]byte{2: pageOf(0xaa), 3: pageOf(0), 20: pageOf(0x20), 21: pageOf(0x21), pages - 1: pageOf(0xff)}
	writeSparse(t, diff, pages*testPage, diffPages)

	if err := Rebase(base, diff); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, pages*testPage)
	for _, m := range []map[int64][]byte{basePages, diffPages} {
		for p, b := range m {
			copy(want[p*testPage:], b)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("base is %d bytes after rebase, want %d", len(got), len(want))
	}
	for p := 0; p < pages; p++ {
		if !bytes.Equal(got[p*testPage:(p+1)*testPage], want[p*testPage:(p+1)*testPage]) {
			t.Errorf("page %d: first byte %#x, want %#x", p, got[p*testPage], want[p*testPage])
		}
	}
	// The diff is read, never written.
	d, err := os.ReadFile(diff)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d[2*testPage:3*testPage], pageOf(0xaa)) || len(d) != pages*testPage {
		t.Error("the diff changed")
	}
}

func TestRebaseRefuses(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	writeSparse(t, base, 8*testPage, map[int64][]byte{0: pageOf(1)})
	before, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	larger, smaller := filepath.Join(dir, "larger"), filepath.Join(dir, "smaller")
	writeSparse(t, larger, 9*testPage, map[int64][]byte{0: pageOf(2)})
	writeSparse(t, smaller, 7*testPage, map[int64][]byte{0: pageOf(3)})
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, diff, want string
	}{
		{"larger diff", larger, "bytes"},
		{"smaller diff", smaller, "bytes"},
		{"itself", base, "same file"},
		{"missing diff", filepath.Join(dir, "nope"), "no such file"},
		{"directory", filepath.Join(dir, "d"), "not a regular file"},
	} {
		err := Rebase(base, tt.diff)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		}
	}
	if err := Rebase(filepath.Join(dir, "nobase"), larger); err == nil {
		t.Error("missing base accepted")
	}
	after, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("a refused rebase changed the base")
	}
}
