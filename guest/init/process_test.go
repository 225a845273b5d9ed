package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestExitCode(t *testing.T) {
	// Wait statuses as the kernel encodes them: exit code in bits 8-15,
	// terminating signal in bits 0-6.
	tests := []struct {
		name   string
		status unix.WaitStatus
		want   int
	}{
		{"success", 0, 0},
		{"exit 1", 1 << 8, 1},
		{"exit 127", 127 << 8, 127},
		{"killed", unix.WaitStatus(unix.SIGKILL), 128 + 9},
		{"interrupted", unix.WaitStatus(unix.SIGINT), 128 + 2},
	}
	for _, tt := range tests {
		if got := exitCode(tt.status); got != tt.want {
			t.Errorf("%s: exitCode(%#x) = %d, want %d", tt.name, uint32(tt.status), got, tt.want)
		}
	}
}

func TestFindProgram(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	for _, d := range []string{first, second} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path string, mode os.FileMode) {
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(second, "tool"), 0o755)
	write(filepath.Join(first, "tool"), 0o644) // not executable: skipped
	write(filepath.Join(first, "only"), 0o755)
	pathList := first + ":" + second

	tests := []struct {
		name    string
		program string
		want    string
		wantErr bool
	}{
		{name: "first match wins", program: "only", want: filepath.Join(first, "only")},
		{name: "non-executable skipped", program: "tool", want: filepath.Join(second, "tool")},
		{name: "absolute path", program: filepath.Join(second, "tool"), want: filepath.Join(second, "tool")},
		{name: "missing", program: "nothing", wantErr: true},
		{name: "absolute non-executable", program: filepath.Join(first, "tool"), wantErr: true},
		{name: "directory", program: first, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := findProgram(tt.program, pathList)
			if (err != nil) != tt.wantErr {
				t.Fatalf("findProgram(%q) error = %v, want error %v", tt.program, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("findProgram(%q) = %q, want %q", tt.program, got, tt.want)
			}
		})
	}
}

func TestChildEnv(t *testing.T) {
	env := childEnv("", noEnv)
	for _, want := range []string{"PATH=" + guestPath, "HOME=/root", "TERM=linux"} {
		if !slices.Contains(env, want) {
			t.Errorf("childEnv(\"\") = %q, missing %q", env, want)
		}
	}
	if env := childEnv("vt100", noEnv); !slices.Contains(env, "TERM=vt100") {
		t.Errorf("childEnv(vt100) = %q, want the kernel's TERM kept", env)
	}
	kernelEnv := map[string]string{"GODEBUG": "asyncpreemptoff=1", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2", "OTHER": "x"}
	env = childEnv("", func(k string) (string, bool) { v, ok := kernelEnv[k]; return v, ok })
	for _, want := range []string{"GODEBUG=asyncpreemptoff=1", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"} {
		if !slices.Contains(env, want) {
			t.Errorf("childEnv = %q, want %q passed on", env, want)
		}
	}
	if slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "OTHER=") }) {
		t.Errorf("childEnv = %q passes on a variable that is not a runtime one", env)
	}
	if env := childEnv("", noEnv); slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "GODEBUG=") }) {
		t.Errorf("childEnv without GODEBUG = %q, want none set", env)
	}
}

func noEnv(string) (string, bool) { return "", false }

func TestBootMountsNestInOrder(t *testing.T) {
	// A mount inside another filesystem must come after it, or it would be
	// hidden when the outer one is mounted on top.
	mounted := map[string]bool{"/": true}
	for _, m := range bootMounts() {
		for dir := filepath.Dir(m.target); dir != "/"; dir = filepath.Dir(dir) {
			for _, other := range bootMounts() {
				if other.target == dir && !mounted[dir] {
					t.Errorf("%s is mounted before its parent mount %s", m.target, dir)
				}
			}
		}
		mounted[m.target] = true
	}
}
