package initramfs

import (
	"bytes"
	"context"
	"debug/elf"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// TestBuild compiles the real guest programs, so it takes a while on a cold
// build cache (about a minute) and is skipped with -short.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the guest userland; skipped in -short mode")
	}
	ctx := context.Background()
	first, err := Build(ctx, Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	second, err := Build(ctx, Options{})
	if err != nil {
		t.Fatalf("second Build: %v", err)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("two builds differ (%d and %d bytes): the archive is not reproducible", len(first), len(second))
	}
	t.Logf("archive size: %d bytes", len(first))

	records := readArchive(t, first)
	byName := recordsByName(records)
	checkOrdering(t, records)

	t.Run("static executables", func(t *testing.T) {
		for _, name := range []string{"init", "bin/bb", agentArchivePath} {
			r, ok := byName[name]
			if !ok {
				t.Errorf("%s missing", name)
				continue
			}
			checkStaticELF(t, r)
		}
	})
	t.Run("commands", func(t *testing.T) {
		for _, importPath := range DefaultCommands() {
			name := "bin/" + commandName(importPath)
			r, ok := byName[name]
			if !ok {
				t.Errorf("%s missing", name)
				continue
			}
			if r.Mode&cpio.S_IFMT != cpio.S_IFLNK || contents(t, r) != "bb" {
				t.Errorf("%s is not a symlink to bb", name)
			}
		}
		if r := byName["bin/sh"]; contents(t, r) != shellCommand {
			t.Errorf("bin/sh points at %q, want %q", contents(t, r), shellCommand)
		}
	})
	t.Run("console", func(t *testing.T) {
		r := byName["dev/console"]
		if r.Mode&cpio.S_IFMT != cpio.S_IFCHR || r.Rmajor != 5 || r.Rminor != 1 {
			t.Errorf("dev/console = mode %#o %d:%d, want char device 5:1", r.Mode, r.Rmajor, r.Rminor)
		}
	})
}

// checkStaticELF asserts r is an x86-64 executable the kernel can run with
// nothing else in the image: no dynamic loader requested.
func checkStaticELF(t *testing.T, r cpio.Record) {
	t.Helper()
	f, err := elf.NewFile(r.ReaderAt)
	if err != nil {
		t.Errorf("%s is not ELF: %v", r.Name, err)
		return
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("%s: machine %v type %v, want x86-64 executable", r.Name, f.Machine, f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is dynamically linked (%v)", r.Name, prog.Type)
		}
	}
	if r.Mode&0o111 == 0 {
		t.Errorf("%s mode %#o is not executable", r.Name, r.Mode)
	}
}
