package kvm

import (
	"encoding/binary"
	"testing"

	"github.com/govmm/vmm/internal/testenv"
)

// The ioctl numbers encode the struct sizes: _IOR/_IOW(KVMIO, nr, size).
func TestXSAVEIoctlNumbers(t *testing.T) {
	ior := func(nr, size uintptr) uintptr { return 2<<30 | size<<16 | 0xae<<8 | nr }
	iow := func(nr, size uintptr) uintptr { return 1<<30 | size<<16 | 0xae<<8 | nr }
	for _, tt := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_XSAVE", ioctlGetXSAVE, ior(0xa4, XSAVESize)},
		{"KVM_SET_XSAVE", ioctlSetXSAVE, iow(0xa5, XSAVESize)},
		{"KVM_GET_XCRS", ioctlGetXCRS, ior(0xa6, 0x188)},
		{"KVM_SET_XCRS", ioctlSetXCRS, iow(0xa7, 0x188)},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

// A fresh vCPU's extended state reads back, survives a write of what was
// read, and XCR0 starts as x87 only (the reset value).
func TestXSAVERoundTrip(t *testing.T) {
	s := openOrSkip(t)
	for _, c := range []Capability{CapXSAVE, CapXCRS} {
		if n, err := s.CheckExtension(c); err != nil || n <= 0 {
			testenv.Skipf(t, "host lacks %v", c)
		}
	}
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	supported, err := s.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	vcpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer vcpu.Close()
	if err := vcpu.SetCPUID2(supported.ForVCPU(0, 1)); err != nil {
		t.Fatal(err)
	}
	xcrs, err := vcpu.XCRs()
	if err != nil {
		t.Fatal(err)
	}
	if xcr0, ok := xcrs.Value(XCR0Index); !ok || xcr0&1 == 0 {
		t.Fatalf("XCR0 = %#x (reported %v), want the x87 bit set", xcr0, ok)
	}
	x, err := vcpu.XSAVE()
	if err != nil {
		t.Fatal(err)
	}
	const mxcsr, xcompBV = 24, 520
	if got := binary.LittleEndian.Uint32(x.Region[mxcsr:]); got != 0x1f80 {
		t.Errorf("reset MXCSR = %#x, want 0x1f80", got)
	}
	if got := binary.LittleEndian.Uint64(x.Region[xcompBV:]); got != 0 {
		t.Errorf("XCOMP_BV = %#x, want 0 (standard format)", got)
	}
	// Change MXCSR and XMM0 through the image, and read them back.
	binary.LittleEndian.PutUint32(x.Region[mxcsr:], 0x3f80)
	x.Region[160] = 0xa5
	binary.LittleEndian.PutUint64(x.Region[512:], binary.LittleEndian.Uint64(x.Region[512:])|3)
	if err := vcpu.SetXSAVE(x); err != nil {
		t.Fatal(err)
	}
	y, err := vcpu.XSAVE()
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(y.Region[mxcsr:]); got != 0x3f80 || y.Region[160] != 0xa5 {
		t.Errorf("after KVM_SET_XSAVE: MXCSR %#x, XMM0[0] %#x", got, y.Region[160])
	}
	if err := vcpu.SetXCRs(xcrs); err != nil {
		t.Fatal(err)
	}
}
