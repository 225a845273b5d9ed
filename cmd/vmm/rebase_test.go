package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSnapshotRebaseCommand: `vmm snapshot rebase` merges a sparse diff
// onto its base (a page zeroed in the diff too), and its misuse and
// failures get their exit status and one line.
func TestSnapshotRebaseCommand(t *testing.T) {
	const page = 4096
	dir := t.TempDir()
	base, diff, short := filepath.Join(dir, "base"), filepath.Join(dir, "diff"), filepath.Join(dir, "short")
	if err := os.WriteFile(base, bytes.Repeat([]byte{1}, 4*page), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(diff)
	if err != nil {
		t.Fatal(err)
	}
	// Page 1 changes to 2s, page 2 to zeros; pages 0 and 3 are holes.
	if _, err := f.WriteAt(append(bytes.Repeat([]byte{2}, page), make([]byte, page)...), page); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4 * page); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(short, []byte{1}, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no subcommand", []string{"snapshot"}, 2, "usage:"},
		{"unknown subcommand", []string{"snapshot", "merge"}, 2, `unknown command "merge"`},
		{"no diff", []string{"snapshot", "rebase", "--base", base}, 2, "both required"},
		{"extra argument", []string{"snapshot", "rebase", "--base", base, "--diff", diff, "x"}, 2, `unexpected argument "x"`},
		{"sizes differ", []string{"snapshot", "rebase", "--base", base, "--diff", short}, 1, "bytes"},
		{"merge", []string{"snapshot", "rebase", "--base", base, "--diff", diff}, 0, ""},
	} {
		var stdout, stderr bytes.Buffer
		code := dispatch(tt.args, nil, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%s: status %d, stderr %q; want %d and %q", tt.name, code, stderr.String(), tt.code, tt.want)
		}
		if code == 1 && strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
			t.Errorf("%s: more than one line: %q", tt.name, stderr.String())
		}
	}
	got, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Join([][]byte{bytes.Repeat([]byte{1}, page), bytes.Repeat([]byte{2}, page), make([]byte, page), bytes.Repeat([]byte{1}, page)}, nil)
	if !bytes.Equal(got, want) {
		t.Error("the merged base is not the base with the diff's pages")
	}
}
