package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Bounds that keep a fuzzed layer from filling the disk: the input, what
// it decompresses to, and the file sizes its headers declare (a sparse
// entry's logical size counts in full, since Unpack writes it out).
const (
	fuzzMaxInput    = 256 << 10
	fuzzMaxUnpacked = 16 << 20
	fuzzMaxDeclared = 8 << 20
)

// fuzzTarEntry is one entry of a seed archive.
type fuzzTarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func fuzzTar(entries ...fuzzTarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if tw.WriteHeader(hdr) != nil {
			panic("seed archive: " + e.name)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return buf.Bytes()
}

func fuzzGzip(data []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	return buf.Bytes()
}

// declaredSize is what layer unpacks to, by its own headers, read as
// Unpack reads it (gzip'd or not); ok is false when that passes the
// fuzz bounds, and the input is skipped.
func declaredSize(layer []byte) (total int64, ok bool) {
	var r io.Reader = bytes.NewReader(layer)
	if bytes.HasPrefix(layer, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return 0, true
		}
		r = zr
	}
	lr := &io.LimitedReader{R: r, N: fuzzMaxUnpacked + 1}
	tr := tar.NewReader(lr)
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		total += max(hdr.Size, 0)
		if total > fuzzMaxDeclared {
			return total, false
		}
	}
	_, _ = io.Copy(io.Discard, lr)
	return total, lr.N > 0
}

// fuzzRoots are the directories a fuzz target unpacks with: src (the
// image), dest (where it is unpacked) and outside, a sibling with a
// sentinel file that must stay as it is, all under root. They are made
// once per fuzzing process and emptied between inputs: making and
// removing them per input cost more than the unpacking.
type fuzzRoots struct{ root, src, dest, outside string }

// newFuzzRoots makes the directories in a scratch directory removed when
// f ends: on /dev/shm when that is a tmpfs, where creating and removing
// the files of an input is several times cheaper than on a disk (on this
// project's ext4 with discard, a removed file costs a discard), else in
// the default temporary directory.
func newFuzzRoots(f *testing.F) fuzzRoots {
	base := ""
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC && unix.Access("/dev/shm", unix.W_OK) == nil {
		base = "/dev/shm"
	}
	root, err := os.MkdirTemp(base, "vmm-image-fuzz-")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		if err := removeTree(root); err != nil {
			f.Error(err)
		}
	})
	r := fuzzRoots{root: root, src: filepath.Join(root, "src"), dest: filepath.Join(root, "dest"), outside: filepath.Join(root, "outside")}
	for _, d := range []string{r.src, r.dest, r.outside} {
		if err := os.Mkdir(d, 0o700); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(r.outside, "sentinel"), []byte("untouched"), 0o600); err != nil {
		f.Fatal(err)
	}
	return r
}

// reset empties src and dest for the next input.
func (r fuzzRoots) reset(t *testing.T) {
	t.Helper()
	for _, d := range []string{r.src, r.dest} {
		if err := removeTree(d); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// removeTree is os.RemoveAll that also gets through directories a layer
// left without write or search permission, which stop a non-root user.
func removeTree(path string) error {
	if os.RemoveAll(path) == nil {
		return nil
	}
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if d != nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// checkContained fails t if unpacking reached past dest: root holds only
// the three directories, outside only its sentinel, unchanged.
func checkContained(t *testing.T, root, outside string) {
	t.Helper()
	names := func(dir string) []string {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("listing %s: %v", dir, err)
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	if got := names(root); !slices.Equal(got, []string{"dest", "outside", "src"}) {
		t.Fatalf("the fuzz root holds %q after unpacking", got)
	}
	if got := names(outside); !slices.Equal(got, []string{"sentinel"}) {
		t.Fatalf("outside holds %q after unpacking", got)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "sentinel")); err != nil || string(b) != "untouched" {
		t.Fatalf("sentinel now %q (%v)", b, err)
	}
}

// unpackedFiles walks dest without following symlinks and returns its
// relative paths and the bytes its regular files hold (each inode once).
func unpackedFiles(t *testing.T, dest string) (paths []string, size int64) {
	t.Helper()
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dest, p)
		paths = append(paths, rel)
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !seen[st.Ino] {
			seen[st.Ino] = true
			size += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking the unpacked tree: %v", err)
	}
	return paths, size
}

// FuzzUnpackLayer applies an arbitrary layer (plain or gzip'd tar) of a
// docker-save image. Whatever the layer holds, nothing lands outside the
// destination, the image source is left as it was, and the tree holds no
// more bytes than the layer's headers declare.
func FuzzUnpackLayer(f *testing.F) {
	reg := func(name, body string) fuzzTarEntry {
		return fuzzTarEntry{name: name, body: body, typ: tar.TypeReg, mode: 0o644}
	}
	dirEnt := func(name string) fuzzTarEntry { return fuzzTarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
	link := func(name, target string, typ byte) fuzzTarEntry {
		return fuzzTarEntry{name: name, link: target, typ: typ, mode: 0o777}
	}
	plain := fuzzTar(dirEnt("etc"), reg("etc/hello", "hello\n"), link("etc/link", "hello", tar.TypeSymlink),
		link("etc/hard", "etc/hello", tar.TypeLink))
	f.Add(plain)
	f.Add(fuzzGzip(plain))
	f.Add(fuzzTar(dirEnt("a"), reg("a/.wh..wh..opq", ""), reg(".wh.gone", ""), reg("a/new", "x")))
	f.Add(fuzzTar(link("up", "../../outside", tar.TypeSymlink), reg("up/sentinel", "overwritten")))
	f.Add(fuzzTar(link("abs", "/", tar.TypeSymlink), reg("abs/escaped", "x"), reg("../escaped", "x")))
	f.Add(fuzzTar(link("h", "../outside/sentinel", tar.TypeLink), fuzzTarEntry{name: "./", typ: tar.TypeDir, mode: 0o777}))
	f.Add(fuzzTar(fuzzTarEntry{name: "suid", body: "#!/bin/sh\n", typ: tar.TypeReg, mode: 0o4755},
		fuzzTarEntry{name: "fifo", typ: tar.TypeFifo, mode: 0o600}))
	f.Add([]byte{})
	dirs := newFuzzRoots(f)
	f.Fuzz(func(t *testing.T, layer []byte) {
		if len(layer) > fuzzMaxInput {
			return
		}
		declared, ok := declaredSize(layer)
		if !ok {
			return
		}
		dirs.reset(t)
		root, src, dest, outside := dirs.root, dirs.src, dirs.dest, dirs.outside
		manifest := []byte(`[{"Config":"config.json","Layers":["layer.tar"]}]`)
		if err := os.WriteFile(filepath.Join(src, "manifest.json"), manifest, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "layer.tar"), layer, 0o600); err != nil {
			t.Fatal(err)
		}
		_ = Unpack(context.Background(), src, dest) // a hostile layer may well be refused
		checkContained(t, root, outside)
		if got, err := os.ReadFile(filepath.Join(src, "layer.tar")); err != nil || !bytes.Equal(got, layer) {
			t.Fatalf("unpacking changed its source (%v)", err)
		}
		if _, size := unpackedFiles(t, dest); size > declared {
			t.Fatalf("unpacked %d bytes from a layer declaring %d", size, declared)
		}
	})
}

// FuzzUnpackManifest reads arbitrary manifests: an OCI index.json and the
// manifest (or nested index) blob it may point to, or, with no index, a
// docker-save manifest.json. In them "@M", "@C" and "@L" stand for the
// digests of the manifest blob, a config and the one layer the layout
// holds, so mutations keep reaching the blobs. Whatever they say, only
// that layer's files can come out, and nothing outside the destination.
func FuzzUnpackManifest(f *testing.F) {
	layer := fuzzTar(fuzzTarEntry{name: "etc", typ: tar.TypeDir, mode: 0o755},
		fuzzTarEntry{name: "etc/hello", body: "hello\n", typ: tar.TypeReg, mode: 0o644})
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	sha := func(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }
	ociManifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"@C","size":80},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"@L","size":2048}]}`)
	index := []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"digest":"@M","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}`)
	f.Add(index, ociManifest)
	f.Add([]byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"@M"}]}`),
		[]byte(`{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"@M"}]}`))
	f.Add([]byte(`{"manifests":[{"digest":"@M","platform":{"os":"windows","architecture":"arm64"}},{"digest":"sha512:00"}]}`), ociManifest)
	f.Add([]byte{}, []byte(`[{"Config":"config.json","RepoTags":["x:latest"],"Layers":["layer.tar"]}]`))
	f.Add([]byte{}, []byte(`[{"Layers":["../outside/sentinel","/etc/passwd","blobs/sha256"]}]`))
	f.Add([]byte(`{"manifests":[]}`), []byte{})
	dirs := newFuzzRoots(f)
	f.Fuzz(func(t *testing.T, indexData, manifestData []byte) {
		if len(indexData) > fuzzMaxInput || len(manifestData) > fuzzMaxInput {
			return
		}
		dirs.reset(t)
		root, src, dest, outside := dirs.root, dirs.src, dirs.dest, dirs.outside
		fill := func(b []byte) []byte {
			s := strings.NewReplacer("@C", sha(config), "@L", sha(layer)).Replace(string(b))
			return []byte(s)
		}
		manifestData = fill(manifestData)
		indexData = []byte(strings.ReplaceAll(string(fill(indexData)), "@M", sha(manifestData)))
		files := map[string][]byte{"layer.tar": layer}
		for _, blob := range [][]byte{layer, config, manifestData} {
			files[filepath.Join("blobs/sha256", strings.TrimPrefix(sha(blob), "sha256:"))] = blob
		}
		if len(indexData) > 0 {
			files["index.json"] = indexData
		} else {
			files["manifest.json"] = manifestData
		}
		if err := os.MkdirAll(filepath.Join(src, "blobs/sha256"), 0o700); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(src, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		_ = Unpack(context.Background(), src, dest) // most manifests are refused
		checkContained(t, root, outside)
		paths, _ := unpackedFiles(t, dest)
		for _, p := range paths {
			if p != "." && p != "etc" && p != "etc/hello" {
				t.Fatalf("unpacked %q, which no layer of the image holds", p)
			}
		}
	})
}
