package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/shim"
	"github.com/govmm/vmm/vmm"
)

// fakeGuestDir makes a default guest (empty files suffice for flag
// parsing) and points VMM_GUEST_DIR at it.
func fakeGuestDir(t *testing.T) (dir, image string) {
	t.Helper()
	dir = t.TempDir()
	for _, name := range []string{"vmlinux", "initramfs.cpio", "test.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("VMM_GUEST_DIR", dir)
	return dir, filepath.Join(dir, "test.ext4")
}

func TestParseRunFlags(t *testing.T) {
	dir, image := fakeGuestDir(t)
	t.Setenv("FROM_HOST", "h")
	o, err := parseRunFlags([]string{"--image", image, "--mem", "512M", "--cpus", "2",
		"-e", "A=1", "-e", "B=x=y", "-e", "FROM_HOST", "-e", "UNSET_ON_HOST_XYZ",
		"-w", "/srv", "-t", "--net", "tap=vmmt0,mac=02:00:00:00:00:01", "--boot-timeout", "3m",
		"--", "sh", "-c", "echo hi"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	s := o.shim
	if s.Image != image || s.Kernel != filepath.Join(dir, "vmlinux") || s.Initrd != filepath.Join(dir, "initramfs.cpio") {
		t.Errorf("files: image %q kernel %q initrd %q", s.Image, s.Kernel, s.Initrd)
	}
	if s.Cmdline != vmm.DefaultCmdline || s.MemMiB != 512 || s.CPUs != 2 || s.Cwd != "/srv" || !s.TTY || s.BootTimeout != 3*time.Minute {
		t.Errorf("options %+v", s)
	}
	if want := []string{"A=1", "B=x=y", "FROM_HOST=h"}; !slices.Equal(s.Env, want) {
		t.Errorf("env %q, want %q", s.Env, want)
	}
	if want := []string{"sh", "-c", "echo hi"}; !slices.Equal(s.Args, want) {
		t.Errorf("args %q, want %q", s.Args, want)
	}
	if len(s.Nets) != 1 || s.Nets[0].Tap != "vmmt0" || s.Nets[0].MAC != "02:00:00:00:00:01" {
		t.Errorf("nets %+v", s.Nets)
	}
	if s.Hostname != shim.DefaultHostname || s.ImageWritable {
		t.Errorf("hostname %q, image writable %v", s.Hostname, s.ImageWritable)
	}
	o, err = parseRunFlags([]string{"--image", image, "--image-rw", "true"}, &bytes.Buffer{})
	if err != nil || !o.shim.ImageWritable {
		t.Errorf("--image-rw: %+v, %v", o, err)
	}

	// Defaults, and flags after the command belong to the command.
	o, err = parseRunFlags([]string{"--image", image, "ls", "-l", "--mem", "1G"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.shim.MemMiB != 256 || o.shim.CPUs != 1 || o.shim.BootTimeout != shim.DefaultBootTimeout || o.debug || o.noSnapshot {
		t.Errorf("defaults %+v", o.shim)
	}
	if ns, err := parseRunFlags([]string{"--image", image, "--no-snapshot", "true"}, &bytes.Buffer{}); err != nil || !ns.noSnapshot || !slices.Equal(ns.shim.Args, []string{"true"}) {
		t.Errorf("--no-snapshot: %+v, %v", ns, err)
	}
	if want := []string{"ls", "-l", "--mem", "1G"}; !slices.Equal(o.shim.Args, want) {
		t.Errorf("args %q, want %q", o.shim.Args, want)
	}
}

func TestBinaryIdentity(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmm")
	if err := os.WriteFile(p, []byte("build 1"), 0o755); err != nil {
		t.Fatal(err)
	}
	first := binaryIdentity(p)
	if again := binaryIdentity(p); again != first {
		t.Errorf("identity changed without a rebuild: %s, %s", first, again)
	}
	if err := os.WriteFile(p+".new", []byte("build 2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".new", p); err != nil {
		t.Fatal(err)
	}
	if rebuilt := binaryIdentity(p); rebuilt == first {
		t.Errorf("a rebuilt binary has the old identity %s", first)
	}
}

func TestParseRunFlagsErrors(t *testing.T) {
	_, image := fakeGuestDir(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--image", image}, "no command"},
		{[]string{"--", "true"}, "--image is required"},
		{[]string{"--image", "/nonexistent.ext4", "true"}, "no such file"},
		{[]string{"--image", image, "--mem", "lots", "true"}, "invalid --mem"},
		{[]string{"--image", image, "--mem", "1M", "true"}, "minimum"},
		{[]string{"--image", image, "--cpus", "0", "true"}, "vCPUs"},
		{[]string{"--image", image, "--boot-timeout", "0s", "true"}, "--boot-timeout"},
		{[]string{"--image", image, "--boot-timeout", "soon", "true"}, "boot-timeout"},
		{[]string{"--image", image, "--net", "tap=t0,queues=2", "true"}, "queues=2 is not supported by vmm run"},
		{[]string{"--image", image, "-e", "=v", "true"}, "KEY=VALUE"},
		{[]string{"--image", image, "-w", "rel", "true"}, "absolute"},
		{[]string{"--image", image, "--net", "mac=zz", "true"}, "net"},
		{[]string{"--image", image, "--kernel", "/nonexistent", "true"}, "kernel"},
		{[]string{"--image", image, "--bogus", "true"}, "bogus"},
	} {
		_, err := parseRunFlags(tt.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want one mentioning %q", tt.args, err, tt.want)
		}
	}
}

func TestParseRunFlagsNoDefaultGuest(t *testing.T) {
	image := filepath.Join(t.TempDir(), "img")
	os.WriteFile(image, []byte("x"), 0o644)
	t.Setenv("VMM_GUEST_DIR", t.TempDir()) // empty
	t.Chdir(t.TempDir())                   // no build/guest here either
	_, err := parseRunFlags([]string{"--image", image, "true"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "make guest") {
		t.Errorf("error %v, want a hint to run make guest", err)
	}
}

func TestRunMainUsage(t *testing.T) {
	_, image := fakeGuestDir(t)
	var stderr bytes.Buffer
	if code := runMain([]string{"--image", image, "--cpus", "x", "true"}, nil, &bytes.Buffer{}, &stderr); code != exitUsage {
		t.Errorf("bad flag: status %d, want %d", code, exitUsage)
	}
	if out := stderr.String(); strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "vmm run: ") {
		t.Errorf("bad flag: stderr %q, want one line", out)
	}
	stderr.Reset()
	if code := runMain([]string{"--help"}, nil, &bytes.Buffer{}, &stderr); code != 0 || !strings.Contains(stderr.String(), "boot-timeout") {
		t.Errorf("--help: status %d, stderr %q", code, stderr.String())
	}
	if _, err := parseRunFlags([]string{"-h"}, &bytes.Buffer{}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// TestNICFlag: vmm run's --net gives shim NICs with what the API carries,
// keeps --net's own checks, and refuses a queue count.
func TestNICFlag(t *testing.T) {
	var nets []vmm.NetConfig
	var nics []shim.NIC
	f := nicFlag{&nets, &nics}
	for _, v := range []string{"tap=t0,id=wan,mac=02:00:00:00:00:01,queues=1", "t1"} {
		if err := f.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	want := []shim.NIC{{ID: "wan", Tap: "t0", MAC: "02:00:00:00:00:01"}, {Tap: "t1"}}
	if !reflect.DeepEqual(nics, want) {
		t.Errorf("NICs %+v, want %+v", nics, want)
	}
	if f.String() != "t0 t1" {
		t.Errorf("String() = %q", f.String())
	}
	for v, want := range map[string]string{
		"tap=t0":          "used twice",
		"tap=t2,id=wan":   "used twice",
		"tap=t2,queues=2": "queues=2 is not supported by vmm run",
		"tap=t2,mac=zz":   "not an Ethernet MAC",
	} {
		if err := f.Set(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Set(%q): %v, want an error containing %q", v, err, want)
		}
	}
	if len(nics) != 2 {
		t.Errorf("refused values were added: %+v", nics)
	}
	if err := f.Set("tap=t2"); err != nil {
		t.Errorf("t2 after its refusals: %v", err)
	}
}
