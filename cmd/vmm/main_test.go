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
		{"mem below minimum", []string{"--kernel", kernel, "--mem", "1M"}, "invalid --mem"},
		{"bad cpus", []string{"--kernel", kernel, "--cpus", "0"}, "invalid --cpus"},
		{"bad log level", []string{"--kernel", kernel, "--log-level", "loud"}, "invalid --log-level"},
		{"missing kernel file", []string{"--kernel", filepath.Join(dir, "nope")}, "invalid --kernel"},
		{"kernel is a directory", []string{"--kernel", dir}, "is a directory"},
		{"stray argument", []string{"--kernel", kernel, "extra"}, "unexpected argument"},
		{"restore without memory", []string{"--restore", kernel}, "--restore needs --mem-file"},
		{"mem-file without restore", []string{"--mem-file", kernel}, "go with --restore"},
		{"resume without restore", []string{"--resume"}, "go with --restore"},
		{"restore with a kernel", []string{"--restore", kernel, "--mem-file", kernel, "--resume", "--kernel", kernel, "--mem", "256M"}, "--kernel, --mem can't change it"},
		{"restore paused without an API", []string{"--restore", kernel, "--mem-file", kernel}, "leaves the guest paused"},
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

// `vmm --help` names every subcommand, one line each, before the flags (a
// newcomer must find `vmm run` there), and each one it names answers its
// own --help through the same dispatch as main.
func TestHelpNamesCommands(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		var stdout, stderr bytes.Buffer
		if code := dispatch([]string{arg}, nil, &stdout, &stderr); code != 0 {
			t.Fatalf("vmm %s: status %d, stderr %q", arg, code, stderr.String())
		}
		help := stderr.String()
		flags := strings.Index(help, "\nflags:")
		if flags < 0 {
			t.Fatalf("vmm %s lists no flags:\n%s", arg, help)
		}
		// The names, not only the table's, so a dropped row fails.
		for _, want := range []string{"vmm run ", "vmm image build ", "vmm snapshot rebase ", "vmm jailer "} {
			if i := strings.Index(help, want); i < 0 || i > flags {
				t.Errorf("vmm %s does not name %q before the flags:\n%s", arg, want, help)
			}
		}
		for _, c := range commands() {
			line := ""
			for _, l := range strings.Split(help[:flags], "\n") {
				if strings.HasPrefix(strings.TrimSpace(l), "vmm "+c.synopsis+" ") {
					line = l
				}
			}
			if !strings.Contains(line, c.summary) {
				t.Errorf("vmm %s: no line naming %q with its summary %q:\n%s", arg, c.synopsis, c.summary, help)
			}
		}
		if !strings.Contains(help[flags:], "io_engine=sync|async") {
			t.Errorf("vmm %s: --disk's help does not name io_engine:\n%s", arg, help)
		}
	}
	for _, c := range commands() {
		args := append(strings.Fields(c.synopsis), "--help")
		var stdout, stderr bytes.Buffer
		if code := dispatch(args, nil, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "usage:") || !strings.Contains(stderr.String(), "vmm "+c.synopsis) {
			t.Errorf("vmm %s: status %d, stderr %q; want 0 and its usage", strings.Join(args, " "), code, stderr.String())
		}
		if strings.Contains(stderr.String(), "\ncommands") {
			t.Errorf("vmm %s printed vmm's own help, not the command's", strings.Join(args, " "))
		}
	}
}

func TestSeccompFlag(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--seccomp"}, true},
		{[]string{"--no-seccomp"}, false},
	} {
		o, err := parseFlags(append([]string{"--api-sock", "/nonexistent/s"}, tt.args...), io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		if o.seccomp != tt.want {
			t.Errorf("%v: seccomp %v, want %v", tt.args, o.seccomp, tt.want)
		}
	}
}

// TestRestoreBadSnapshot: --restore of a file that is not a snapshot, or
// is missing, is one line and status 1 (the flags were fine), and nothing
// starts.
func TestRestoreBadSnapshot(t *testing.T) {
	dir := t.TempDir()
	notSnap := filepath.Join(dir, "state")
	if err := os.WriteFile(notSnap, []byte("definitely not a snapshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		state string
		want  string
	}{
		{"not a snapshot", notSnap, "not a vmm snapshot"},
		{"missing", filepath.Join(dir, "nope"), "snapshot_path"},
	} {
		var stderr bytes.Buffer
		code := run([]string{"--restore", tt.state, "--mem-file", notSnap, "--resume"}, nil, io.Discard, &stderr)
		out := stderr.String()
		if code != 1 || strings.Count(out, "\n") != 1 || !strings.Contains(out, tt.want) {
			t.Errorf("%s: status %d, stderr %q; want 1 and one line with %q", tt.name, code, out, tt.want)
		}
	}
}

// TestTrackDirtyPagesFlag: --track-dirty-pages reaches the machine's
// Config for a boot and the load's track_dirty_pages for --restore.
func TestTrackDirtyPagesFlag(t *testing.T) {
	o, err := parseFlags([]string{"--api-sock", "/nonexistent/s", "--track-dirty-pages"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.cfg.TrackDirtyPages {
		t.Error("--track-dirty-pages did not reach the Config")
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "s")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	o, err = parseFlags([]string{"--restore", f, "--mem-file", f, "--resume", "--track-dirty-pages"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p := o.loadParams(); p.TrackDirtyPages == nil || !*p.TrackDirtyPages {
		t.Errorf("load params %+v: track_dirty_pages not set", p)
	}
}
