package pvmfix

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
	"strings"
	"testing"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

// fakeVCPU is a VCPU over plain values; it records what Complete changes.
type fakeVCPU struct {
	regs   kvm.Regs
	sregs  kvm.Sregs
	xsave  kvm.XSAVE
	xcrs   kvm.XCRs
	layout *XStateLayout
	mem    *memory.Guest

	injected               []Exception
	setRegs, setSregs      int
	setXSAVE               int
	regsErr, setXSAVEError error
}

func (f *fakeVCPU) Regs() (kvm.Regs, error) { return f.regs, f.regsErr }
func (f *fakeVCPU) SetRegs(r kvm.Regs) error {
	f.regs = r
	f.setRegs++
	return nil
}
func (f *fakeVCPU) Sregs() (kvm.Sregs, error) { return f.sregs, nil }
func (f *fakeVCPU) SetSregs(s kvm.Sregs) error {
	f.sregs = s
	f.setSregs++
	return nil
}
func (f *fakeVCPU) XSAVE() (*kvm.XSAVE, error) {
	x := f.xsave
	return &x, nil
}
func (f *fakeVCPU) SetXSAVE(x *kvm.XSAVE) error {
	if f.setXSAVEError != nil {
		return f.setXSAVEError
	}
	f.xsave = *x
	f.setXSAVE++
	return nil
}
func (f *fakeVCPU) XCRs() (kvm.XCRs, error) { return f.xcrs, nil }
func (f *fakeVCPU) InjectException(e Exception) error {
	f.injected = append(f.injected, e)
	return nil
}
func (f *fakeVCPU) XStateLayout() *XStateLayout { return f.layout }
func (f *fakeVCPU) Memory() *memory.Guest       { return f.mem }

// The fake's guest: linear 0x40_0000 is code (physical 0x8000), the next
// two pages are writable (0x9000, 0xa000), then one not present and one
// read-only (0xb000).
const (
	fakeCode     = 0x40_0000
	fakeArea     = 0x40_1000
	fakeAbsent   = 0x40_3000
	fakeReadOnly = 0x40_4000
	fakeXCR0     = 0xe7
)

func newFakeVCPU(t *testing.T, code ...byte) *fakeVCPU {
	t.Helper()
	const rw = ptePres | pteWrite
	mem, sregs := pagedMemory(t, []uint64{0x8000, 0x9000, 0xa000, 0, 0xb000}, []uint64{rw, rw, rw, 0, ptePres}, pteWrite)
	if err := mem.WriteAt(code, 0x8000); err != nil {
		t.Fatal(err)
	}
	sregs.CS = kvm.Segment{L: 1, Present: 1, S: 1, Type: 0xb}
	sregs.CR4 |= cr4OSXSAVE
	f := &fakeVCPU{
		regs:   kvm.Regs{RIP: fakeCode, RFLAGS: 2},
		sregs:  sregs,
		layout: hostLayout(),
		mem:    mem,
	}
	f.xcrs.NrXCRs = 1
	f.xcrs.XCRs[0] = kvm.XCR{XCR: kvm.XCR0Index, Value: fakeXCR0}
	copy(f.xsave.Region[:], pattern(xsAreaMax, 40))
	clear(f.xsave.Region[xsHeader:xsHeaderEnd])
	le.PutUint64(f.xsave.Region[xsHeader:], fakeXCR0)
	le.PutUint32(f.xsave.Region[xsMXCSR:], 0x1f80)
	le.PutUint32(f.xsave.Region[xsMXCSRMask:], 0xffff)
	return f
}

func TestCompleteRegisterInstructions(t *testing.T) {
	tests := []struct {
		name  string
		code  []byte
		regs  func(*kvm.Regs)
		check func(t *testing.T, f *fakeVCPU)
	}{
		{"int3 traps past itself", []byte{0xcc}, nil, func(t *testing.T, f *fakeVCPU) {
			if f.regs.RIP != fakeCode+1 || len(f.injected) != 1 || f.injected[0] != (Exception{Vector: vectorBreakpoint}) {
				t.Errorf("RIP %#x, injected %+v", f.regs.RIP, f.injected)
			}
		}},
		{"ud2 faults on itself", []byte{0x0f, 0x0b}, nil, func(t *testing.T, f *fakeVCPU) {
			if f.setRegs != 0 || len(f.injected) != 1 || f.injected[0] != (Exception{Vector: vectorInvalidOpcode}) {
				t.Errorf("SetRegs %d times, injected %+v", f.setRegs, f.injected)
			}
		}},
		{"fwait", []byte{0x9b}, nil, func(t *testing.T, f *fakeVCPU) {
			if f.regs.RIP != fakeCode+1 || len(f.injected) != 0 {
				t.Errorf("RIP %#x, injected %+v", f.regs.RIP, f.injected)
			}
		}},
		{"stac", []byte{0x0f, 0x01, 0xcb}, nil, func(t *testing.T, f *fakeVCPU) {
			if f.regs.RIP != fakeCode+3 || f.regs.RFLAGS != 2|rflagsAC {
				t.Errorf("RIP %#x, RFLAGS %#x", f.regs.RIP, f.regs.RFLAGS)
			}
		}},
		{"clac", []byte{0x0f, 0x01, 0xca}, func(r *kvm.Regs) { r.RFLAGS |= rflagsAC }, func(t *testing.T, f *fakeVCPU) {
			if f.regs.RIP != fakeCode+3 || f.regs.RFLAGS != 2 {
				t.Errorf("RIP %#x, RFLAGS %#x", f.regs.RIP, f.regs.RFLAGS)
			}
		}},
		{"popcnt %rdi,%rax", []byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, func(r *kvm.Regs) {
			r.RDI, r.RAX, r.RFLAGS = 0xf0f0_0000_0000_0001, 99, 2|rflagsCF|rflagsZF
		}, func(t *testing.T, f *fakeVCPU) {
			if f.regs.RAX != 9 || f.regs.RIP != fakeCode+5 || f.regs.RFLAGS != 2 {
				t.Errorf("RAX %d, RIP %#x, RFLAGS %#x", f.regs.RAX, f.regs.RIP, f.regs.RFLAGS)
			}
		}},
		{"popcnt %cx,%ax of zero keeps the upper bits, sets ZF", []byte{0x66, 0xf3, 0x0f, 0xb8, 0xc1}, func(r *kvm.Regs) {
			r.RCX, r.RAX = 0xffff_0000, 0x1234_5678_9abc_def0
		}, func(t *testing.T, f *fakeVCPU) {
			if f.regs.RAX != 0x1234_5678_9abc_0000 || f.regs.RFLAGS != 2|rflagsZF {
				t.Errorf("RAX %#x, RFLAGS %#x", f.regs.RAX, f.regs.RFLAGS)
			}
		}},
		{"rdseed %r9d zeroes the upper half, sets CF", []byte{0x41, 0x0f, 0xc7, 0xf9}, func(r *kvm.Regs) {
			r.R9, r.RFLAGS = ^uint64(0), 2|rflagsZF|rflagsOF
		}, func(t *testing.T, f *fakeVCPU) {
			if f.regs.R9>>32 != 0 || f.regs.RIP != fakeCode+4 || f.regs.RFLAGS != 2|rflagsCF {
				t.Errorf("R9 %#x, RIP %#x, RFLAGS %#x", f.regs.R9, f.regs.RIP, f.regs.RFLAGS)
			}
		}},
	}
	for _, tt := range tests {
		f := newFakeVCPU(t, tt.code...)
		if tt.regs != nil {
			tt.regs(&f.regs)
		}
		r, err := Complete(f)
		if err != nil || !r.Handled || r.RIP != fakeCode || r.Insn == "" {
			t.Errorf("%s: %+v, %v", tt.name, r, err)
			continue
		}
		tt.check(t, f)
	}
}

// rdrand's values come from the host: two runs differ.
func TestCompleteRandomDiffers(t *testing.T) {
	var got [2]uint64
	for i := range got {
		f := newFakeVCPU(t, 0x48, 0x0f, 0xc7, 0xf0)
		if r, err := Complete(f); err != nil || !r.Handled || r.Insn != "rdrand" {
			t.Fatalf("%+v, %v", r, err)
		}
		got[i] = f.regs.RAX
	}
	if got[0] == got[1] || bits.OnesCount64(got[0]|got[1]) < 16 {
		t.Errorf("rdrand gave %#x then %#x", got[0], got[1])
	}
}

func TestCompleteRefuses(t *testing.T) {
	tests := []struct {
		name   string
		code   []byte
		setup  func(*fakeVCPU)
		reason string
	}{
		{"an instruction nothing completes", []byte{0x0f, 0xa2}, nil, "not an instruction"},
		{"popcnt from memory", []byte{0xf3, 0x48, 0x0f, 0xb8, 0x07}, nil, "not an instruction"},
		{"code on a page not present", nil, func(f *fakeVCPU) { f.regs.RIP = fakeAbsent }, "code unreadable"},
		{"no XSAVE layout", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) { f.layout = nil; f.regs.RDI = fakeArea }, "layout unknown"},
		{"component layout unknown", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) {
			f.xcrs.XCRs[0].Value |= 1 << 9
			f.regs.RDI, f.regs.RAX, f.regs.RDX = fakeArea, 1<<9, 0
		}, "layout unknown"},
		{"no XCR0 from KVM", []byte{0x0f, 0x01, 0xd0}, func(f *fakeVCPU) { f.xcrs.NrXCRs = 0 }, "XCR0"},
		{"XSAVE area outside guest RAM", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) {
			f.sregs.CR0 &^= cr0PG // unpaged: the linear address is physical
			f.regs.RIP, f.regs.RDI, f.regs.RAX = 0x8000, 0x100_0000, 1
		}, "outside guest RAM"},
		{"16-bit code", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) {
			f.sregs.EFER, f.sregs.CR0 = 0, 1
			f.sregs.CS = kvm.Segment{Present: 1, S: 1, Type: 0xb, Limit: 0xffff}
			f.regs.RIP = 0x8000
		}, "16-bit"},
	}
	for _, tt := range tests {
		f := newFakeVCPU(t, tt.code...)
		if tt.setup != nil {
			tt.setup(f)
		}
		before := *f
		r, err := Complete(f)
		if err != nil || r.Handled || !strings.Contains(r.Reason, tt.reason) {
			t.Errorf("%s: %+v, %v; want a refusal naming %q", tt.name, r, err, tt.reason)
		}
		if f.regs != before.regs || f.sregs != before.sregs || f.xsave != before.xsave || len(f.injected) != 0 {
			t.Errorf("%s: the vCPU changed", tt.name)
		}
	}
	f := newFakeVCPU(t, 0xcc)
	f.regsErr = errors.New("KVM_GET_REGS failed")
	if _, err := Complete(f); err == nil {
		t.Error("a failing Regs is not an error")
	}
}

func TestCompleteXState(t *testing.T) {
	gp := Exception{Vector: vectorGeneralProtection, HasErrorCode: true}
	tests := []struct {
		name   string
		code   []byte
		setup  func(*fakeVCPU)
		raised *Exception // nil: completed
		cr2    uint64
	}{
		{"xsave64 (%rdi)", []byte{0x48, 0x0f, 0xae, 0x27}, nil, nil, 0},
		{"xrstor64 (%rdi)", []byte{0x48, 0x0f, 0xae, 0x2f}, nil, nil, 0},
		{"xgetbv", []byte{0x0f, 0x01, 0xd0}, func(f *fakeVCPU) { f.regs.RCX = 0 }, nil, 0},
		{"xgetbv of a register that does not exist", []byte{0x0f, 0x01, 0xd0}, func(f *fakeVCPU) { f.regs.RCX = 2 }, &gp, 0},
		{"xsave without CR4.OSXSAVE", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) { f.sregs.CR4 &^= cr4OSXSAVE }, &Exception{Vector: vectorInvalidOpcode}, 0},
		{"xsave with CR0.TS", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) { f.sregs.CR0 |= cr0TS }, &Exception{Vector: vectorDeviceNotAvailable}, 0},
		{"xsave misaligned", []byte{0x0f, 0xae, 0x67, 0x08}, nil, &gp, 0},
		{"xsave to a page not present", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) { f.regs.RDI = fakeAbsent }, &Exception{Vector: vectorPageFault, HasErrorCode: true, ErrorCode: pfErrWrite}, fakeAbsent},
		{"xsave to a read-only page", []byte{0x0f, 0xae, 0x27}, func(f *fakeVCPU) { f.regs.RDI = fakeReadOnly }, &Exception{Vector: vectorPageFault, HasErrorCode: true, ErrorCode: pfErrWrite | pfErrPresent}, fakeReadOnly},
		{"xrstor of a compacted area", []byte{0x0f, 0xae, 0x2f}, func(f *fakeVCPU) { f.mem.PutUint64(0x9000+xsXCompBV, 1<<63|fakeXCR0) }, &gp, 0},
		{"xrstor of a reserved MXCSR bit", []byte{0x0f, 0xae, 0x2f}, func(f *fakeVCPU) { f.mem.PutUint32(0x9000+xsMXCSR, 1<<20) }, &gp, 0},
	}
	for _, tt := range tests {
		f := newFakeVCPU(t, tt.code...)
		f.regs.RDI, f.regs.RAX, f.regs.RDX = fakeArea, 0xffff_ffff, 0xffff_ffff
		// The guest's area: its own values, a valid header and MXCSR.
		area := pattern(xsAreaMax, 7)
		clear(area[xsHeader:xsHeaderEnd])
		le.PutUint64(area[xsHeader:], 0x05)
		le.PutUint32(area[xsMXCSR:], 0x1f80)
		f.mem.WriteAt(area[:pageSize], 0x9000)
		if tt.setup != nil {
			tt.setup(f)
		}
		before := *f
		r, err := Complete(f)
		if err != nil || !r.Handled {
			t.Errorf("%s: %+v, %v", tt.name, r, err)
			continue
		}
		if tt.raised != nil {
			if len(f.injected) != 1 || f.injected[0] != *tt.raised || f.regs != before.regs || f.setXSAVE != 0 {
				t.Errorf("%s: injected %+v, RIP %#x, SetXSAVE %d times; want %+v with nothing else changed", tt.name, f.injected, f.regs.RIP, f.setXSAVE, *tt.raised)
			}
			if f.sregs.CR2 != tt.cr2 {
				t.Errorf("%s: CR2 %#x, want %#x", tt.name, f.sregs.CR2, tt.cr2)
			}
			continue
		}
		if len(f.injected) != 0 || f.regs.RIP != fakeCode+uint64(len(tt.code)) {
			t.Errorf("%s: injected %+v, RIP %#x", tt.name, f.injected, f.regs.RIP)
		}
		got := make([]byte, pageSize)
		f.mem.ReadAt(got, 0x9000)
		switch r.Insn {
		case "xsave64":
			for _, rg := range xsaveRanges(fakeXCR0, f.layout) {
				if rg.off == xsHeader {
					continue
				}
				if !bytes.Equal(got[rg.off:rg.off+rg.n], f.xsave.Region[rg.off:rg.off+rg.n]) {
					t.Errorf("%s: area bytes %d+%d are not the vCPU's", tt.name, rg.off, rg.n)
				}
			}
			if bv := binary.LittleEndian.Uint64(got[xsHeader:]); bv != fakeXCR0 {
				t.Errorf("%s: XSTATE_BV %#x", tt.name, bv)
			}
			if !bytes.Equal(got[xsLegacyEnd:xsHeader], area[xsLegacyEnd:xsHeader]) {
				t.Errorf("%s: bytes 416-511 written", tt.name)
			}
		case "xrstor64":
			// XSTATE_BV 0x05: x87 and AVX from the area, SSE initialised.
			if f.setXSAVE != 1 || !bytes.Equal(f.xsave.Region[xsST0:xsXMM0], area[xsST0:xsXMM0]) ||
				!bytes.Equal(f.xsave.Region[576:832], area[576:832]) || !bytes.Equal(f.xsave.Region[xsXMM0:xsLegacyEnd], make([]byte, xsLegacyEnd-xsXMM0)) {
				t.Errorf("%s: SetXSAVE %d times; state not loaded from the area", tt.name, f.setXSAVE)
			}
		case "xgetbv":
			if f.regs.RAX != fakeXCR0 || f.regs.RDX != 0 {
				t.Errorf("%s: EDX:EAX %#x:%#x", tt.name, f.regs.RDX, f.regs.RAX)
			}
		default:
			t.Errorf("%s: completed as %q", tt.name, r.Insn)
		}
	}
	// KVM refusing the loaded state is an error, not a guest fault.
	f := newFakeVCPU(t, 0x48, 0x0f, 0xae, 0x2f)
	f.regs.RDI, f.regs.RAX = fakeArea, 1
	f.mem.PutUint64(0x9000+xsHeader, 1)
	f.setXSAVEError = errors.New("KVM_SET_XSAVE: invalid argument")
	if _, err := Complete(f); err == nil || !strings.Contains(err.Error(), "xrstor64") {
		t.Errorf("SetXSAVE failure: %v", err)
	}
}
