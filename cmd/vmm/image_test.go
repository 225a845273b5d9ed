package main

import (
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
