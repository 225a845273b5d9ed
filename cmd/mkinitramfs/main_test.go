package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestGzipBytesRoundTripsAndIsDeterministic(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"text", []byte("070701 newc archive")},
		{"large", bytes.Repeat([]byte("initramfs"), 1<<16)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, err := gzipBytes(tt.data)
			if err != nil {
				t.Fatalf("gzipBytes: %v", err)
			}
			second, err := gzipBytes(tt.data)
			if err != nil {
				t.Fatalf("gzipBytes: %v", err)
			}
			if !bytes.Equal(first, second) {
				t.Error("two compressions of the same data differ")
			}
			zr, err := gzip.NewReader(bytes.NewReader(first))
			if err != nil {
				t.Fatalf("gzip.NewReader: %v", err)
			}
			got, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("decompressing: %v", err)
			}
			if !bytes.Equal(got, tt.data) {
				t.Errorf("round trip changed %d bytes into %d", len(tt.data), len(got))
			}
		})
	}
}

func TestWriteOutputs(t *testing.T) {
	out := filepath.Join(t.TempDir(), "nested", "dir", "initramfs.cpio")
	if err := writeOutputs(out, []byte("archive"), []byte("compressed")); err != nil {
		t.Fatalf("writeOutputs: %v", err)
	}
	for path, want := range map[string]string{out: "archive", out + ".gz": "compressed"} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("reading %s: %v", path, err)
			continue
		}
		if string(got) != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("output directory holds %d entries, want 2 (temporary files left behind?)", len(entries))
	}
}

func TestRunRejectsBadArguments(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"unknown flag", []string{"-nope"}},
		{"positional argument", []string{"-o", "x.cpio", "extra"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := run(context.Background(), tt.args, io.Discard); err == nil {
				t.Errorf("run(%q) succeeded, want error", tt.args)
			}
		})
	}
}
