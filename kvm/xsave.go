package kvm

import "unsafe"

// ioctl request numbers for the extended-state ioctls (<linux/kvm.h>).
const (
	ioctlGetXSAVE = 0x9000aea4 // _IOR(KVMIO, 0xa4, struct kvm_xsave)
	ioctlSetXSAVE = 0x5000aea5 // _IOW(KVMIO, 0xa5, struct kvm_xsave)
	ioctlGetXCRS  = 0x8188aea6 // _IOR(KVMIO, 0xa6, struct kvm_xcrs)
	ioctlSetXCRS  = 0x4188aea7 // _IOW(KVMIO, 0xa7, struct kvm_xcrs)
)

// XSAVESize is the size of struct kvm_xsave: an XSAVE area in the standard
// (non-compacted) format, legacy region, header and extended components
// at the offsets CPUID leaf 0xD gives, zero-padded.
const XSAVESize = 4096

// XSAVE mirrors struct kvm_xsave (api.rst §4.42, KVM_GET_XSAVE). Components
// whose XSTATE_BV bit is clear hold their initial values.
type XSAVE struct {
	Region [XSAVESize]byte
}

// XCR mirrors struct kvm_xcr: one extended control register.
type XCR struct {
	XCR      uint32
	Reserved uint32
	Value    uint64
}

// maxXCRs is KVM_MAX_XCRS.
const maxXCRs = 16

// XCRs mirrors struct kvm_xcrs (api.rst §4.43, KVM_GET_XCRS).
type XCRs struct {
	NrXCRs  uint32
	Flags   uint32
	XCRs    [maxXCRs]XCR
	Padding [16]uint64
}

// XCR0Index is the index of XCR0 (XFEATURE_ENABLED_MASK) for XSETBV/XGETBV.
const XCR0Index = 0

// Value returns the value of extended control register idx, and whether
// KVM reported it.
func (x *XCRs) Value(idx uint32) (uint64, bool) {
	for i := 0; i < int(x.NrXCRs) && i < maxXCRs; i++ {
		if x.XCRs[i].XCR == idx {
			return x.XCRs[i].Value, true
		}
	}
	return 0, false
}

// XSAVE returns the vCPU's extended state (KVM_GET_XSAVE).
func (v *VCPU) XSAVE() (*XSAVE, error) {
	x := new(XSAVE)
	err := v.get(ioctlGetXSAVE, unsafe.Pointer(x), "KVM_GET_XSAVE")
	return x, err
}

// SetXSAVE loads the vCPU's extended state (KVM_SET_XSAVE). KVM rejects
// an XSTATE_BV with features the vCPU's CPUID lacks, a non-zero XCOMP_BV
// or reserved header bytes, and MXCSR values the CPU would fault on.
func (v *VCPU) SetXSAVE(x *XSAVE) error {
	return v.get(ioctlSetXSAVE, unsafe.Pointer(x), "KVM_SET_XSAVE")
}

// XCRs returns the vCPU's extended control registers (KVM_GET_XCRS).
func (v *VCPU) XCRs() (XCRs, error) {
	var x XCRs
	err := v.get(ioctlGetXCRS, unsafe.Pointer(&x), "KVM_GET_XCRS")
	return x, err
}

// SetXCRs sets the vCPU's extended control registers (KVM_SET_XCRS).
func (v *VCPU) SetXCRs(x XCRs) error {
	return v.get(ioctlSetXCRS, unsafe.Pointer(&x), "KVM_SET_XCRS")
}
