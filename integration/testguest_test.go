package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/boot"
)

const testGuestTimeout = 2 * time.Minute

// TestTestGuestBoots boots the freestanding test guest through both entry
// paths and checks what it saw: its command line, the memory map and CPU
// count it was given, a working int3 path, serial input and output, and the
// exit status it chose.
func TestTestGuestBoots(t *testing.T) {
	tests := []struct {
		name, image, boot string
		mem               uint64
		memFlag           string
		cpus              int
		status            int
	}{
		{"pvh", "testguest.elf", "pvh", 256 << 20, "256M", 2, 7},
		{"bzimage", "testguest.bzimage", "linux64", 6 << 30, "6G", 3, 42},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmdline := fmt.Sprintf("echo=1 exit=%d", tt.status)
			v := Start(t, "--kernel", filepath.Join(shared.testGuest, tt.image), "--debug-exit",
				"--mem", tt.memFlag, "--cpus", strconv.Itoa(tt.cpus), "--cmdline", cmdline)
			_, off := v.WaitFor(regexp.MustCompile(`testguest: boot=`+tt.boot+`\r?\n`), 0, testGuestTimeout)
			m, off := v.WaitFor(regexp.MustCompile(`testguest: cmdline=(.*?)\r?\n`), off, testGuestTimeout)
			if !strings.HasPrefix(m[1], cmdline) {
				t.Errorf("guest command line %q, want it to start with %q", m[1], cmdline)
			}
			// The memory map the guest reports must be exactly the one the
			// boot code builds for this size.
			var want []string
			var ram uint64
			for _, e := range boot.E820Map(tt.mem) {
				want = append(want, fmt.Sprintf("testguest: e820 addr=%#x size=%#x type=%d", e.Addr, e.Size, e.Type))
				if e.Type == boot.E820RAM {
					ram += e.Size
				}
			}
			m, off = v.WaitFor(regexp.MustCompile(`(?s)((?:testguest: e820 [^\n]*\n)+)testguest: ram=(\d+)\r?\n`), off, testGuestTimeout)
			got := strings.Split(strings.TrimSpace(strings.ReplaceAll(m[1], "\r", "")), "\n")
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("guest memory map:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if m[2] != strconv.FormatUint(ram, 10) {
				t.Errorf("guest RAM %s bytes, want %d", m[2], ram)
			}
			if ram > tt.mem || ram < tt.mem-(1<<20) {
				t.Errorf("guest RAM %d bytes not within 1 MiB below --mem %d", ram, tt.mem)
			}
			m, off = v.WaitFor(regexp.MustCompile(`testguest: cpus=(\d+)`), off, testGuestTimeout)
			if m[1] != strconv.Itoa(tt.cpus) {
				t.Errorf("guest sees %s CPUs, want %d", m[1], tt.cpus)
			}
			_, off = v.WaitFor(regexp.MustCompile(`testguest: int3 ok`), off, testGuestTimeout)
			_, off = v.WaitFor(regexp.MustCompile(`testguest: ready>`), off, testGuestTimeout)
			v.Type("hello serial\r")
			v.WaitFor(regexp.MustCompile(`testguest: echo hello serial\r?\n`), off, testGuestTimeout)
			if code := v.Wait(testGuestTimeout); code != tt.status {
				t.Errorf("vmm exit status %d, want the guest's %d", code, tt.status)
			}
		})
	}
}

// TestGuestShutdownPaths checks that every way a guest can end the machine
// ends vmm with status 0.
func TestGuestShutdownPaths(t *testing.T) {
	kernel := filepath.Join(shared.testGuest, "testguest.elf")
	for _, action := range []string{"poweroff", "reboot", "acpi-reset"} {
		t.Run(action, func(t *testing.T) {
			code, out, stderr := runVMM(t, testGuestTimeout, "--kernel", kernel, "--cmdline", "action="+action)
			if code != 0 {
				t.Fatalf("exit status %d, want 0\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
			}
			if !strings.Contains(out, "testguest: done") {
				t.Fatalf("guest did not reach its action:\n%s", out)
			}
		})
	}
}

// TestBadKernelImages checks that a file that is not a kernel fails before
// boot with one clear line and exit status 2.
func TestBadKernelImages(t *testing.T) {
	requireKVM(t) // the test guest it truncates is built only where VMs run
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("this is not a kernel ", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated")
	img, err := os.ReadFile(filepath.Join(shared.testGuest, "testguest.bzimage"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(truncated, img[:0x240], 0o644); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{garbage, truncated} {
		code, _, stderr := runVMM(t, time.Minute, "--kernel", k)
		if code != 2 {
			t.Errorf("%s: exit status %d, want 2 (stderr %q)", filepath.Base(k), code, stderr)
		}
		if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "kernel") {
			t.Errorf("%s: stderr %q, want one line about the kernel", filepath.Base(k), stderr)
		}
	}
}

// TestGuestExceptionsDelivered checks that faults raised by guest kernel code
// reach the guest's own handlers (on kvm-pvm hosts some of them pass through
// the VMM's instruction fix-ups first).
func TestGuestExceptionsDelivered(t *testing.T) {
	kernel := filepath.Join(shared.testGuest, "testguest.elf")
	for _, tt := range []struct{ fault, vector string }{{"ud", "6"}, {"gp", "13"}} {
		code, out, stderr := runVMM(t, testGuestTimeout, "--kernel", kernel, "--debug-exit", "--cmdline", "fault="+tt.fault)
		if code != 99 || !strings.Contains(out, "testguest: exception "+tt.vector+" ") {
			t.Errorf("fault=%s: exit %d, want 99 with exception %s\nconsole:\n%s\nstderr:\n%s", tt.fault, code, tt.vector, out, stderr)
		}
	}
}
