package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// specialLayer is a layer a hostile image might ship: device nodes, a
// FIFO, set-id files, a hard link to one, a "./" entry that would open
// the staging root to everyone, and a device written through a symlink
// that points out of the tree.
func specialLayers(t *testing.T, outside string) [][]byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	add(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o777}, "")
	add(&tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8, Devminor: 0}, "")
	add(&tar.Header{Name: "dev/mem", Typeflag: tar.TypeChar, Mode: 0o640, Devmajor: 1, Devminor: 1, Uid: 0, Gid: 15}, "")
	add(&tar.Header{Name: "dev/big", Typeflag: tar.TypeChar, Mode: 0o600, Devmajor: 300, Devminor: 70000}, "")
	add(&tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o644}, "")
	add(&tar.Header{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o4755}, "#!/bin/sh\n")
	add(&tar.Header{Name: "sgid", Typeflag: tar.TypeReg, Mode: 0o2711, Gid: 42}, "#!/bin/sh\n")
	add(&tar.Header{Name: "suid-link", Typeflag: tar.TypeLink, Linkname: "suid"}, "")
	add(&tar.Header{Name: "esc", Typeflag: tar.TypeSymlink, Linkname: outside}, "")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var b2 bytes.Buffer
	tw = tar.NewWriter(&b2)
	if err := tw.WriteHeader(&tar.Header{Name: "esc/sdb", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8, Devminor: 16}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	return [][]byte{buf.Bytes(), gzipBytes(t, b2.Bytes())}
}

// scanStaging fails t for anything in dir a local user could use: a
// node, a set-id file, or (private) a directory others can enter at or
// above the staging root.
func scanStaging(t *testing.T, dir string, private bool) (files int) {
	t.Helper()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if !private {
			break
		}
		info, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if perm := info.Mode().Perm(); perm != 0o700 {
			t.Errorf("staging directory %s has mode %o, want 0700", d, perm)
		}
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
				t.Errorf("%s is set-id on the host (mode %o)", p, st.Mode)
			}
		case unix.S_IFDIR, unix.S_IFLNK:
		default:
			t.Errorf("%s is a node on the host (mode %o, rdev %d:%d)", p, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		files++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestSpecialFilesOnlyInImage: device nodes, a FIFO and set-id bits
// reach the image with their numbers and modes, while the staging tree
// holds none of them and is private to root.
func TestSpecialFilesOnlyInImage(t *testing.T) {
	requireTools(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	src := writeOCITar(t, base, specialLayers(t, outside)...)
	img := filepath.Join(base, "rootfs.ext4")
	var staged string
	opts := Options{staged: func(dir string) error {
		staged = dir
		if n := scanStaging(t, dir, true); n < 10 {
			t.Errorf("staging holds %d entries, want at least 10", n)
		}
		return nil
	}}
	if err := BuildFromOCI(context.Background(), src, img, opts); err != nil {
		t.Fatal(err)
	}
	if staged == "" {
		t.Fatal("the staging hook never ran")
	}
	if _, err := os.Lstat(filepath.Dir(staged)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("staging directory left behind: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("a layer wrote %d entries outside the image", len(entries))
	}
	cases := []struct {
		path string
		want []string
	}{
		{"/", []string{"Type: directory", "Mode:  0777"}},
		{"/dev/sda", []string{"Type: block special", "Mode:  0666", "Device major/minor number: 08:00"}},
		{"/dev/mem", []string{"Type: character special", "Mode:  0640", "Group:    15", "Device major/minor number: 01:01"}},
		{"/dev/big", []string{"Type: character special", "Device major/minor number: 300:70000"}},
		{"/dev/fifo", []string{"Type: FIFO", "Mode:  0644"}},
		{"/suid", []string{"Type: regular", "Mode:  04755", "Links: 2"}},
		{"/suid-link", []string{"Mode:  04755"}},
		{"/sgid", []string{"Mode:  02711", "Group:    42"}},
		{filepath.Join(outside, "sdb"), []string{"Type: block special", "Device major/minor number: 08:16"}},
	}
	for _, tc := range cases {
		got := debugfs(t, img, "stat "+tc.path)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("stat %s: want %q in\n%s", tc.path, w, got)
			}
		}
	}
	if got := debugfs(t, img, "cat /suid"); got != "#!/bin/sh\n" {
		t.Errorf("/suid holds %q", got)
	}
}

// TestUnpackDropsSpecials: Unpack, which has no image to put them in,
// leaves placeholders and no set-id bits, and never chmods dest.
func TestUnpackDropsSpecials(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	dest := filepath.Join(base, "root")
	os.Mkdir(dest, 0o700)
	src := writeOCITar(t, base, specialLayers(t, filepath.Join(base, "outside"))...)
	if err := Unpack(context.Background(), src, dest); err != nil {
		t.Fatal(err)
	}
	scanStaging(t, dest, false)
}

// TestDotDotDeviceRefused: a node named with ".." is refused before
// anything is made.
func TestDotDotDeviceRefused(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	dest := filepath.Join(base, "a", "root")
	os.MkdirAll(dest, 0o700)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8})
	tw.Close()
	src := writeOCITar(t, base, buf.Bytes())
	err := Unpack(context.Background(), src, dest)
	if err == nil || !strings.Contains(err.Error(), "path traversal") {
		t.Fatalf("Unpack: %v, want a path traversal error", err)
	}
	if _, err := os.Lstat(filepath.Join(base, "a", "sda")); err == nil {
		t.Error("../sda was made outside the tree")
	}
}

// paxRecord formats one PAX extended header record ("LEN key=value\n",
// LEN counting itself).
func paxRecord(k, v string) string {
	rec := " " + k + "=" + v + "\n"
	n := len(rec) + 1
	for len(strconv.Itoa(n))+len(rec) != n {
		n++
	}
	return strconv.Itoa(n) + rec
}

// sparseTar is a tar holding name, a GNU sparse 1.0 (PAX) file of size
// bytes whose only data is 4 KiB at its end: some 3 KiB of archive.
// archive/tar cannot write sparse files, so the PAX header block is a
// regular one retyped by hand.
func sparseTar(t *testing.T, name string, size int64) []byte {
	t.Helper()
	const dataLen = 4096
	records := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") +
		paxRecord("GNU.sparse.name", name) + paxRecord("GNU.sparse.realsize", strconv.FormatInt(size, 10))
	sparseMap := fmt.Sprintf("1\n%d\n%d\n", size-dataLen, dataLen)
	sparseMap += strings.Repeat("\x00", 512-len(sparseMap))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdrs := []struct {
		h    tar.Header
		body string
	}{
		{tar.Header{Name: "PaxHeaders/x", Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}, records},
		{tar.Header{Name: "GNUSparseFile.0/x", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatUSTAR}, sparseMap + strings.Repeat("d", dataLen)},
	}
	for _, e := range hdrs {
		e.h.Size = int64(len(e.body))
		if err := tw.WriteHeader(&e.h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	out := buf.Bytes()
	// Retype the first block as a PAX header and fix its checksum.
	out[156] = tar.TypeXHeader
	copy(out[148:156], "        ")
	sum := 0
	for _, c := range out[:512] {
		sum += int(c)
	}
	copy(out[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return out
}

// TestSparseBomb: a 1 GiB sparse entry from a few KiB of archive stays
// sparse on the host and in the image.
func TestSparseBomb(t *testing.T) {
	requireTools(t)
	const size = 1 << 30
	base := t.TempDir()
	layer := sparseTar(t, "big", size)
	if len(layer) > 8<<10 {
		t.Fatalf("the layer is %d bytes", len(layer))
	}
	src := writeOCITar(t, base, layer)
	img := filepath.Join(base, "rootfs.ext4")
	opts := Options{staged: func(dir string) error {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, "big"), &st); err != nil {
			return err
		}
		if st.Size != size {
			t.Errorf("staged size %d, want %d", st.Size, size)
		}
		if alloc := st.Blocks * 512; alloc > 64<<10 {
			t.Errorf("the staged 1 GiB sparse file allocates %d bytes, want at most 64 KiB", alloc)
		}
		return nil
	}}
	if err := BuildFromOCI(context.Background(), src, img, opts); err != nil {
		t.Fatal(err)
	}
	got := debugfs(t, img, "stat /big")
	if !strings.Contains(got, fmt.Sprintf("Size: %d", size)) {
		t.Errorf("/big in the image: %s", got)
	}
	// Blockcount is in 512-byte sectors: the data block and the
	// extent tree, not 2 Mi sectors.
	var blocks int64
	for _, f := range strings.Fields(got[strings.Index(got, "Blockcount:"):]) {
		if n, err := strconv.ParseInt(f, 10, 64); err == nil {
			blocks = n
			break
		}
	}
	if blocks == 0 || blocks > 128 {
		t.Errorf("/big in the image has Blockcount %d, want 1..128 sectors", blocks)
	}
	var st unix.Stat_t
	unix.Stat(img, &st)
	if st.Blocks*512 > 64<<20 {
		t.Errorf("the image allocates %d MiB on the host", st.Blocks*512>>20)
	}
}

// TestUnpackCaps: gzip bombs (a huge file, or zeros after the end of
// the tar) and too many entries stop at the caps with ErrTooLarge and a
// message naming the cap.
func TestUnpackCaps(t *testing.T) {
	requireTools(t)
	const capBytes = 4 << 20
	zeros := make([]byte, 8<<20)
	var bomb bytes.Buffer
	tw := tar.NewWriter(&bomb)
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(zeros))})
	tw.Write(zeros)
	tw.Close()
	trailing := append(makeTar(t, []entry{file("f", "x")}), zeros...)
	var many []entry
	for i := range 50 {
		many = append(many, file(fmt.Sprint("f", i), "x"))
	}
	cases := []struct {
		name  string
		layer []byte
		opts  Options
		want  string
	}{
		{"gzip bomb", gzipBytes(t, bomb.Bytes()), Options{MaxUnpacked: capBytes}, "more than 4194304 bytes (4 MiB) unpacked (MaxUnpacked)"},
		{"zeros after the tar", gzipBytes(t, trailing), Options{MaxUnpacked: capBytes}, "more than 4194304 bytes (4 MiB) unpacked (MaxUnpacked)"},
		{"sparse over the cap", sparseTar(t, "big", 1<<30), Options{MaxUnpacked: capBytes}, "more than 4194304 bytes"},
		{"entries", makeTar(t, many), Options{MaxEntries: 20}, "more than 20 entries (MaxEntries)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.layer) > 256<<10 {
				t.Fatalf("the layer is %d bytes", len(tc.layer))
			}
			base := t.TempDir()
			src := writeOCITar(t, base, tc.layer)
			err := BuildFromOCI(context.Background(), src, filepath.Join(base, "rootfs.ext4"), tc.opts)
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("BuildFromOCI: %v, want ErrTooLarge mentioning %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(base, "rootfs.ext4")); err == nil {
				t.Error("an image was written")
			}
		})
	}
}
