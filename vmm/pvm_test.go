package vmm

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestDecodeFixup(t *testing.T) {
	tests := []struct {
		name     string
		code     []byte
		ok       bool
		op       fixupOp
		length   int
		src, dst int
		mask     uint64
	}{
		{"int3", []byte{0xcc, 0x90}, true, opBreakpoint, 1, 0, 0, 0},
		{"fwait", []byte{0x9b}, true, opNop, 1, 0, 0, 0},
		{"ud2", []byte{0x0f, 0x0b}, true, opInvalidOpcode, 0, 0, 0, 0},
		{"clac", []byte{0x0f, 0x01, 0xca}, true, opCLAC, 3, 0, 0, 0},
		{"stac", []byte{0x0f, 0x01, 0xcb}, true, opSTAC, 3, 0, 0, 0},
		{"popcnt rdi->rax", []byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, true, opPopcnt, 5, 7, 0, ^uint64(0)},
		{"popcnt r9d->r10d", []byte{0xf3, 0x45, 0x0f, 0xb8, 0xd1}, true, opPopcnt, 5, 9, 10, 0xffffffff},
		{"popcnt cx->ax", []byte{0x66, 0xf3, 0x0f, 0xb8, 0xc1}, true, opPopcnt, 5, 1, 0, 0xffff},
		{"popcnt memory operand", []byte{0xf3, 0x48, 0x0f, 0xb8, 0x07}, false, 0, 0, 0, 0, 0},
		{"xrstor", []byte{0x48, 0x0f, 0xae, 0x2f}, false, 0, 0, 0, 0, 0},
		{"rdrand rax", []byte{0x48, 0x0f, 0xc7, 0xf0}, true, opRandom, 4, 0, 0, ^uint64(0)},
		{"rdseed r9d", []byte{0x41, 0x0f, 0xc7, 0xf9}, true, opRandom, 4, 0, 9, 0xffffffff},
		{"rdrand ax", []byte{0x66, 0x0f, 0xc7, 0xf0}, true, opRandom, 4, 0, 0, 0xffff},
		{"cmpxchg8b memory", []byte{0x0f, 0xc7, 0x0f}, false, 0, 0, 0, 0, 0},
		{"truncated popcnt", []byte{0xf3, 0x48, 0x0f}, false, 0, 0, 0, 0, 0},
		{"empty", nil, false, 0, 0, 0, 0, 0},
	}
	for _, tt := range tests {
		f, ok := decodeFixup(tt.code, true)
		if ok != tt.ok {
			t.Errorf("%s: ok = %v", tt.name, ok)
			continue
		}
		if !ok {
			continue
		}
		if f.op != tt.op || f.length != tt.length || (tt.op == opPopcnt && (f.src != tt.src || f.dst != tt.dst || f.mask != tt.mask)) || (tt.op == opRandom && (f.dst != tt.dst || f.mask != tt.mask)) {
			t.Errorf("%s: got %+v", tt.name, f)
		}
	}
}

func FuzzDecodeFixup(f *testing.F) {
	f.Add([]byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, true)
	f.Fuzz(func(t *testing.T, code []byte, long bool) {
		fx, ok := decodeFixup(code, long)
		if ok && (fx.length < 0 || fx.length > len(code) || (fx.length == 0 && fx.op != opInvalidOpcode)) {
			t.Fatalf("length %d for %d bytes", fx.length, len(code))
		}
	})
}

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
