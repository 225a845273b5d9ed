package main

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/internal/testenv"
)

func TestImageMainUsage(t *testing.T) {
	cases := [][]string{
		nil,
		{"frob"},
		{"build"},
		{"build", "--from-dir", "a", "--from-oci-tar", "b", "-o", "x"},
		{"build", "--from-dir", "a"},
		{"build", "--from-dir", "a", "-o", "x", "--size", "lots"},
		{"build", "--bogus"},
		{"build", "--from-dir", "a", "-o", "x", "extra"},
		{"build", "--from-oci-tar", "a", "-o", "x", "--max-unpacked", "0"},
		{"build", "--from-oci-tar", "a", "-o", "x", "--max-unpacked", "much"},
	}
	for _, args := range cases {
		var stdout, stderr bytes.Buffer
		if code := imageMain(args, &stdout, &stderr); code != exitUsage {
			t.Errorf("imageMain(%q) = %d, want %d (stderr %q)", args, code, exitUsage, stderr.String())
		}
		if stderr.Len() == 0 {
			t.Errorf("imageMain(%q) said nothing on stderr", args)
		}
	}
}

func TestImageMainBuild(t *testing.T) {
	testenv.RequireRoot(t, "mkfs.ext4 -d copies ownership")
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "hello"), []byte("hi\n"), 0o644)
	out := filepath.Join(t.TempDir(), "img.ext4")
	var stdout, stderr bytes.Buffer
	if code := imageMain([]string{"build", "--from-dir", src, "-o", out, "--size", "80M"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if info, err := os.Stat(out); err != nil || info.Size() != 80<<20 {
		t.Fatalf("image: %v", err)
	}
	if strings.TrimSpace(stdout.String()) != out {
		t.Errorf("stdout %q", stdout.String())
	}
	stderr.Reset()
	if code := imageMain([]string{"build", "--from-oci-tar", filepath.Join(src, "missing.tar"), "-o", out}, &stdout, &stderr); code != 1 {
		t.Errorf("missing tar: exit %d", code)
	}
}

// TestImageMainMaxUnpacked: a layer larger than --max-unpacked fails the
// build with an error naming the cap and the flag.
func TestImageMainMaxUnpacked(t *testing.T) {
	testenv.RequireRoot(t, "image builds stage as root")
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	dir := t.TempDir()
	// A docker save tarball: manifest.json and one 2 MiB layer.
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2 << 20})
	tw.Write(make([]byte, 2<<20))
	tw.Close()
	var outer bytes.Buffer
	tw = tar.NewWriter(&outer)
	for _, f := range []struct{ name, body string }{
		{"manifest.json", `[{"Config":"c.json","Layers":["l.tar"]}]`},
		{"l.tar", layer.String()},
	} {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.body))})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	src := filepath.Join(dir, "image.tar")
	os.WriteFile(src, outer.Bytes(), 0o644)
	var stdout, stderr bytes.Buffer
	code := imageMain([]string{"build", "--from-oci-tar", src, "-o", filepath.Join(dir, "img"), "--max-unpacked", "1M"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "more than 1048576 bytes (1 MiB) unpacked") || !strings.Contains(stderr.String(), "--max-unpacked") {
		t.Errorf("exit %d, stderr %q: want a failure naming the 1 MiB cap and --max-unpacked", code, stderr.String())
	}
}
