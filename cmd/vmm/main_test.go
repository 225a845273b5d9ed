package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEscapeReader(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     string
		wantQuit bool
	}{
		{"plain", "ls\r", "ls\r", false},
		{"quit", "ab\x01xcd", "ab", true},
		{"quit upper", "\x01X", "", true},
		{"literal ctrl-a", "a\x01\x01b", "a\x01b", false},
		{"unknown command passes through", "\x01c", "\x01c", false},
		{"trailing escape held", "ab\x01", "ab", false},
	}
	for _, tt := range tests {
		quit := false
		r := newEscapeReader(&oneByteReader{s: tt.in}, func() { quit = true })
		got, _ := io.ReadAll(r)
		if string(got) != tt.want || quit != tt.wantQuit {
			t.Errorf("%s: got %q quit=%v, want %q quit=%v", tt.name, got, quit, tt.want, tt.wantQuit)
		}
	}
}

// oneByteReader splits escape sequences across reads.
type oneByteReader struct {
	s string
	i int
}

func (r *oneByteReader) Read(p []byte) (int, error) {
	if r.i >= len(r.s) {
		return 0, io.EOF
	}
	p[0] = r.s[r.i]
	r.i++
	return 1, nil
}

func TestBadFlagsExitTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "k")
	if err := os.WriteFile(kernel, []byte("not a kernel at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--bogus"}, "flag provided but not defined"},
		{"bad mem", []string{"--kernel", kernel, "--mem", "12X"}, "invalid --mem"},
		{"bad cpus", []string{"--kernel", kernel, "--cpus", "0"}, "invalid --cpus"},
		{"bad log level", []string{"--kernel", kernel, "--log-level", "loud"}, "invalid --log-level"},
		{"missing kernel file", []string{"--kernel", filepath.Join(dir, "nope")}, "invalid --kernel"},
		{"kernel is a directory", []string{"--kernel", dir}, "is a directory"},
		{"stray argument", []string{"--kernel", kernel, "extra"}, "unexpected argument"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		code := run(tt.args, nil, io.Discard, &stderr)
		if code != exitUsage {
			t.Errorf("%s: exit %d, want %d", tt.name, code, exitUsage)
		}
		out := stderr.String()
		if strings.Count(out, "\n") != 1 || !strings.Contains(out, tt.want) {
			t.Errorf("%s: stderr %q, want one line containing %q", tt.name, out, tt.want)
		}
	}
}
