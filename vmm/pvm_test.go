package vmm

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestPVMCmdline(t *testing.T) {
	got := pvmCmdline("console=ttyS0 lpj=5", 2596094)
	if !strings.Contains(got, "tsc_early_khz=2596094") {
		t.Fatalf("no TSC rate: %q", got)
	}
	if !strings.Contains(got, "nopv") || !strings.Contains(got, "clearcpuid=xsaves,xsavec,xsaveopt,") {
		t.Fatalf("missing options: %q", got)
	}
	if len(pvmClearCPUID) > 127 {
		t.Errorf("clearcpuid list is %d characters; the kernel reads 127", len(pvmClearCPUID))
	}
	// The guest kernel must keep XSAVE (the VMM completes XSAVE/XRSTOR)
	// but not its compacted or optimized forms.
	for _, f := range strings.Fields(got) {
		if f == "noxsave" {
			t.Errorf("noxsave on the command line: %q", got)
		}
		if v, ok := strings.CutPrefix(f, "clearcpuid="); ok && slices.Contains(strings.Split(v, ","), "xsave") {
			t.Errorf("clearcpuid hides xsave: %q", got)
		}
	}
	if strings.Count(got, "lpj=") != 1 || !strings.Contains(got, "lpj=5") {
		t.Fatalf("user's lpj overridden: %q", got)
	}
	if i := strings.Index(got, "clearcpuid="); len(got[i:])-len("clearcpuid=") > 127 && len(pvmClearCPUID) > 127 {
		t.Fatalf("clearcpuid list longer than the kernel reads: %d", len(pvmClearCPUID))
	}
	for _, f := range []string{"cpu.avx=off", "cpu.avx2=off", "cpu.avx512f=off"} {
		if !strings.Contains(got, f) {
			t.Errorf("GODEBUG lacks %s: %q", f, got)
		}
	}
	if got := pvmCmdline("console=ttyS0 GODEBUG=madvdontneed=1", 0); strings.Count(got, "GODEBUG=") != 1 || !strings.Contains(got, "GODEBUG=madvdontneed=1") {
		t.Errorf("user's GODEBUG overridden: %q", got)
	}
}

// TestPVMGODEBUGOptionsKnown runs this test binary (a Go program) with
// pvmGODEBUG: the runtime warns about cpu options it does not know, so a
// typo or a Go release that renames one shows here.
func TestPVMGODEBUGOptionsKnown(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), "GODEBUG="+pvmGODEBUG)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "GODEBUG") {
		t.Fatalf("GODEBUG=%s: %v, output %q", pvmGODEBUG, err, out)
	}
}
