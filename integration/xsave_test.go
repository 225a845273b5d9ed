package integration

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/govmm/vmm/internal/testenv"
)

// TestGuestXSAVE runs the test guest's xsave=1 checks: in ring 0 it enables
// XSAVE (CR4.OSXSAVE, XSETBV) for x87, SSE, AVX and, where the CPU has
// them, the AVX-512 components, then moves register state only through
// XRSTOR and XSAVE (several operand forms, an area across a page boundary,
// partial masks, an initializing XRSTOR), provokes #GP and #PF and reads
// XCR0 with XGETBV. On kvm-pvm hosts KVM's emulator cannot run XSAVE,
// XRSTOR or XGETBV and vmm completes them (pvmfix/xsave.go); on VT-x/AMD-V
// hosts the CPU does, and the results must be the same.
func TestGuestXSAVE(t *testing.T) {
	checks := []string{
		"xgetbv", "roundtrip", "form sib", "form rip", "form gs", "form addr32", "form 32",
		"cross", "cross restore", "partial save", "partial restore", "init",
		"gp xcomp_bv", "gp xstate_bv", "gp reserved", "gp mxcsr", "gp align", "gp xgetbv",
		"pf mapped", "pf save", "pf readonly", "pf restore", "pf readonly restore",
	}
	for _, tt := range []struct{ name, image, cpus string }{
		{"pvh", "testguest.elf", "1"},
		{"bzimage", "testguest.bzimage", "2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kernel := filepath.Join(shared.testGuest, tt.image)
			code, out, stderr := runVMM(t, testGuestTimeout, "--kernel", kernel, "--debug-exit", "--cpus", tt.cpus, "--cmdline", "xsave=1 exit=3")
			if strings.Contains(out, "testguest: xsave unsupported") {
				testenv.Skip(t, "the CPU has no XSAVE")
			}
			if code != 3 {
				t.Fatalf("exit status %d, want 3\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
			}
			m := regexp.MustCompile(`testguest: xsave xcr0=(0x[0-9a-f]+) size=(\d+)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no xcr0 line\nconsole:\n%s", out)
			}
			t.Logf("guest XCR0 %s, XSAVE area %s bytes", m[1], m[2])
			for _, c := range checks {
				if c == "pf mapped" && strings.Contains(out, "testguest: xsave pf skipped") {
					break
				}
				if !strings.Contains(out, "testguest: xsave "+c+" ok\r\n") {
					t.Errorf("check %q did not pass", c)
				}
			}
			if !strings.Contains(out, "testguest: xsave result pass") || strings.Contains(out, "testguest: xsave error") {
				t.Errorf("xsave test failed\nconsole:\n%s\nstderr:\n%s", out, stderr)
			}
		})
	}
}
