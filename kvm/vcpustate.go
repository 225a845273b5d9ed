package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request numbers for saving and restoring a vCPU (<linux/kvm.h>).
const (
	ioctlGetCPUID2    = 0xc008ae91 // _IOWR(KVMIO, 0x91, struct kvm_cpuid2): the 8-byte header, entries follow
	ioctlGetDebugRegs = 0x8080aea1 // _IOR(KVMIO, 0xa1, struct kvm_debugregs)
	ioctlSetDebugRegs = 0x4080aea2 // _IOW(KVMIO, 0xa2, struct kvm_debugregs)
	ioctlSetTSCKHz    = 0xaea2     // _IO(KVMIO, 0xa2): the frequency is the argument itself
	ioctlKVMClockCtrl = 0xaead     // _IO(KVMIO, 0xad)
)

// DebugRegs mirrors struct kvm_debugregs (api.rst §4.32): DR0-DR3, DR6
// and DR7. KVM_SET_DEBUGREGS rejects a non-zero Flags and DR6 or DR7
// values above 32 bits.
type DebugRegs struct {
	DB    [4]uint64
	DR6   uint64
	DR7   uint64
	Flags uint64
	_     [9]uint64
}

// DebugRegs returns the debug registers (KVM_GET_DEBUGREGS).
func (v *VCPU) DebugRegs() (DebugRegs, error) {
	var d DebugRegs
	err := v.get(ioctlGetDebugRegs, unsafe.Pointer(&d), "KVM_GET_DEBUGREGS")
	return d, err
}

// SetDebugRegs sets the debug registers (KVM_SET_DEBUGREGS).
func (v *VCPU) SetDebugRegs(d DebugRegs) error {
	return v.get(ioctlSetDebugRegs, unsafe.Pointer(&d), "KVM_SET_DEBUGREGS")
}

// maxCPUIDEntries bounds the table CPUID2 accepts from KVM. The kernel
// holds at most KVM_MAX_CPUID_ENTRIES (256) per vCPU; the headroom only
// spares a kernel that raised the limit a failure.
const maxCPUIDEntries = 4096

// CPUID2 returns the CPUID table the vCPU was given (KVM_GET_CPUID2), so a
// restored vCPU gets the very table the guest booted with.
func (v *VCPU) CPUID2() (CPUID, error) {
	for n := 256; n <= maxCPUIDEntries; n *= 2 {
		buf := newCPUIDBuffer(n)
		_, err := ioctl(v.fd, ioctlGetCPUID2, uintptr(unsafe.Pointer(&buf[0])))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_CPUID2 on vCPU %d: %w", v.id, err)
		}
		if got := int(binary.LittleEndian.Uint32(buf)); got > n {
			return nil, fmt.Errorf("kvm: KVM_GET_CPUID2 on vCPU %d: %d entries reported in a buffer of %d", v.id, got, n)
		}
		return parseCPUIDBuffer(buf), nil
	}
	return nil, fmt.Errorf("kvm: KVM_GET_CPUID2 on vCPU %d: more than %d entries", v.id, maxCPUIDEntries)
}

// SetTSCKHz sets the guest TSC frequency (KVM_SET_TSC_KHZ). A rate other
// than the host's needs TSC scaling (KVM_CAP_TSC_CONTROL); without it KVM
// refuses a lower rate and emulates a higher one by catching up.
func (v *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctl(v.fd, ioctlSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_TSC_KHZ %d on vCPU %d: %w", khz, v.id, err)
	}
	return nil
}

// KVMClockCtrl tells the guest, through its kvmclock page, that the host
// stopped it (KVM_KVMCLOCK_CTRL), so its soft-lockup and RCU stall
// watchdogs forgive the gap. Call it before the vCPU runs again after a
// pause or a restore. It fails with EINVAL when the guest never enabled
// kvmclock, which a caller may ignore.
func (v *VCPU) KVMClockCtrl() error {
	if _, err := ioctl(v.fd, ioctlKVMClockCtrl, 0); err != nil {
		return fmt.Errorf("kvm: KVM_KVMCLOCK_CTRL on vCPU %d: %w", v.id, err)
	}
	return nil
}

// maxMSRsPerCall is how many MSRs one KVM_GET_MSRS or KVM_SET_MSRS may
// carry: msr_io in arch/x86/kvm/x86.c refuses nmsrs >= MAX_IO_MSRS (256).
const maxMSRsPerCall = 255

// maxMSRIndices bounds the MSR lists this package handles: KVM's index
// list has a few hundred entries.
const maxMSRIndices = 16384

// readMSRs reads every MSR of indices KVM can read, in order, and skips
// the others: KVM_GET_MSRS stops at the first MSR it cannot read and
// returns how many it read, so the MSR after those is the one to skip.
func (v *VCPU) readMSRs(indices []uint32) ([]MSR, error) {
	if len(indices) > maxMSRIndices {
		return nil, fmt.Errorf("kvm: %d MSRs to read, more than %d", len(indices), maxMSRIndices)
	}
	out := make([]MSR, 0, len(indices))
	for rest := indices; len(rest) > 0; {
		chunk := rest[:min(len(rest), maxMSRsPerCall)]
		got, err := v.MSRs(chunk...)
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
		next := len(got)
		if next < len(chunk) {
			next++ // chunk[len(got)] is unreadable on this vCPU
		}
		rest = rest[next:]
	}
	return out, nil
}

// writeMSRs writes msrs in chunks KVM accepts; it fails unless KVM took
// every one.
func (v *VCPU) writeMSRs(msrs []MSR) error {
	if len(msrs) > maxMSRIndices {
		return fmt.Errorf("kvm: %d MSRs to write, more than %d", len(msrs), maxMSRIndices)
	}
	for rest := msrs; len(rest) > 0; {
		n := min(len(rest), maxMSRsPerCall)
		if err := v.SetMSRs(rest[:n]); err != nil {
			if err := v.writeMSRsOneByOne(rest[:n]); err != nil {
				return err
			}
		}
		rest = rest[n:]
	}
	return nil
}

// writeMSRsOneByOne writes a batch KVM refused, one MSR at a time. KVM
// lists MSRs for migration that it may not take back on another host or
// kernel (or on kvm-pvm, which lists its own MSRs); one it refuses whose
// saved value is what this vCPU already has loses nothing and is skipped.
// Any other refusal is an error: the guest would run with a register that
// changed under it.
func (v *VCPU) writeMSRsOneByOne(msrs []MSR) error {
	for _, m := range msrs {
		err := v.SetMSRs([]MSR{m})
		if err == nil {
			continue
		}
		have, rerr := v.MSRs(m.Index)
		if rerr == nil && len(have) == 1 && have[0].Data == m.Data {
			continue
		}
		return fmt.Errorf("MSR %#x: KVM refuses the saved value %#x: %w", m.Index, m.Data, err)
	}
	return nil
}

// Architectural MSRs whose restore order matters (Intel SDM vol. 4).
const (
	msrIA32TSC         = 0x10
	msrIA32TSCDeadline = 0x6e0
)

// msrRestoreOrder splits saved MSRs into two KVM_SET_MSRS batches. The TSC
// deadline goes last: KVM arms the LAPIC timer from it against the guest
// TSC, so the TSC must be restored first, and the LAPIC (restored before
// any MSR) must already be in TSC-deadline mode for the write to stick.
//
// A deadline of zero is replaced by the saved TSC, so the timer fires once
// at restore. Firecracker observed snapshots whose deadline read zero
// while the interrupt of the timer that cleared it never reached the
// guest, which then waited for a tick that never came (vcpu.rs,
// fix_zero_tsc_deadline_msr). A spurious tick is harmless to a guest; one
// whose LAPIC timer is not in TSC-deadline mode never sees the write.
func msrRestoreOrder(msrs []MSR) (first, last []MSR) {
	var tsc uint64
	var haveTSC bool
	for _, m := range msrs {
		if m.Index == msrIA32TSC {
			tsc, haveTSC = m.Data, true
		}
	}
	first = make([]MSR, 0, len(msrs))
	for _, m := range msrs {
		if m.Index != msrIA32TSCDeadline {
			first = append(first, m)
			continue
		}
		if m.Data == 0 && haveTSC {
			m.Data = tsc
		}
		last = append(last, m)
	}
	return first, last
}

// MSRsToSave returns the MSRs KVM saves and restores for migration
// (KVM_GET_MSR_INDEX_LIST), each once, in KVM's order. Some may be
// unreadable on a given vCPU (a feature its CPUID lacks): VCPU.SaveState
// saves only those KVM_GET_MSRS returns.
func (s *System) MSRsToSave() ([]uint32, error) {
	list, err := s.MSRIndexList()
	if err != nil {
		return nil, err
	}
	seen := make(map[uint32]bool, len(list))
	out := make([]uint32, 0, len(list))
	for _, idx := range list {
		if !seen[idx] {
			seen[idx] = true
			out = append(out, idx)
		}
	}
	return out, nil
}

// VCPUState is everything KVM holds for one vCPU that a snapshot must
// carry. It encodes to JSON; the large register images (XSAVE, LAPIC)
// encode as base64 strings. The x87/SSE state lives in the legacy region
// of XSAVE, so there is no separate FPU field. Nested virtualization state
// (KVM_GET_NESTED_STATE) is not saved: the VMM does not offer VMX or SVM
// to guests.
type VCPUState struct {
	CPUID     CPUID
	MPState   uint32
	Regs      Regs
	Sregs     Sregs
	XSAVE     XSAVE
	XCRs      XCRs
	DebugRegs DebugRegs
	LAPIC     LAPICState
	MSRs      []MSR
	Events    VCPUEvents
	// TSCKHz is the guest TSC frequency; 0 when KVM did not know it, and
	// then a restore keeps the new vCPU's.
	TSCKHz uint32
}

// SaveState reads the vCPU's state, with the MSRs of msrIndices that KVM
// can read on this vCPU (System.MSRsToSave gives the list). Every vCPU of
// the VM must be out of KVM_RUN: KVM_GET_VCPU_EVENTS is not safe while
// another vCPU runs. Call it from the vCPU's thread, like every VCPU
// method.
//
// The order matters. KVM_GET_MP_STATE comes first because it makes KVM
// accept pending INIT and SIPI events, which changes the registers and
// the LAPIC read after it; KVM_GET_VCPU_EVENTS comes last, after every
// read that might settle pending events.
func (v *VCPU) SaveState(msrIndices []uint32) (VCPUState, error) {
	var s VCPUState
	var err error
	fail := func(step string, err error) (VCPUState, error) {
		return VCPUState{}, fmt.Errorf("save vCPU %d %s: %w", v.id, step, err)
	}
	if s.MPState, err = v.MPState(); err != nil {
		return fail("MP state", err)
	}
	if s.Regs, err = v.Regs(); err != nil {
		return fail("registers", err)
	}
	if s.Sregs, err = v.Sregs(); err != nil {
		return fail("sregs", err)
	}
	x, err := v.XSAVE()
	if err != nil {
		return fail("XSAVE", err)
	}
	s.XSAVE = *x
	if s.XCRs, err = v.XCRs(); err != nil {
		return fail("XCRs", err)
	}
	if s.DebugRegs, err = v.DebugRegs(); err != nil {
		return fail("debug registers", err)
	}
	if s.LAPIC, err = v.LAPIC(); err != nil {
		return fail("LAPIC", err)
	}
	if s.TSCKHz, err = v.TSCKHz(); err != nil {
		return fail("TSC frequency", err)
	}
	if s.CPUID, err = v.CPUID2(); err != nil {
		return fail("CPUID", err)
	}
	if s.MSRs, err = v.readMSRs(msrIndices); err != nil {
		return fail("MSRs", err)
	}
	if s.Events, err = v.Events(); err != nil {
		return fail("events", err)
	}
	return s, nil
}

// tscKHzTolerancePPM is how far apart two TSC rates may be and still count
// as the same: KVM's own tolerance (tsc_tolerance_ppm, 250 ppm), within
// which it does not scale, because calibration alone differs that much
// between boots of one host.
const tscKHzTolerancePPM = 250

// tscRateDiffers reports whether want is outside KVM's tolerance of have.
func tscRateDiffers(have, want uint32) bool {
	d := int64(have) - int64(want)
	if d < 0 {
		d = -d
	}
	return d*1_000_000 > int64(want)*tscKHzTolerancePPM
}

// RestoreState loads s into a vCPU that has not run yet, of a VM whose
// irqchip exists (the LAPIC needs it). Like SaveState, it needs every
// vCPU out of KVM_RUN and the vCPU's own thread.
//
// The order is KVM's: CPUID first, since KVM checks the XSAVE features,
// the MSRs and the MP state against it; the TSC rate before the TSC MSR is
// written against it; registers before events, since KVM_SET_REGS drops a
// pending exception that KVM_SET_VCPU_EVENTS restores; sregs before the
// LAPIC, since sregs carry the APIC base; the LAPIC before the MSRs, since
// the TSC deadline needs the timer mode the LAPIC holds; the TSC deadline
// after the TSC (msrRestoreOrder). Last, KVMClockCtrl marks the guest as
// stopped, for its watchdogs.
func (v *VCPU) RestoreState(s VCPUState) error {
	fail := func(step string, err error) error {
		return fmt.Errorf("restore vCPU %d %s: %w", v.id, step, err)
	}
	if err := v.SetCPUID2(s.CPUID); err != nil {
		return fail("CPUID", err)
	}
	if s.TSCKHz != 0 {
		have, err := v.TSCKHz()
		if err != nil {
			return fail("TSC frequency", err)
		}
		if tscRateDiffers(have, s.TSCKHz) {
			if err := v.SetTSCKHz(s.TSCKHz); err != nil {
				return fail("TSC frequency", err)
			}
		}
	}
	if err := v.SetMPState(s.MPState); err != nil {
		return fail("MP state", err)
	}
	if err := v.SetRegs(s.Regs); err != nil {
		return fail("registers", err)
	}
	if err := v.SetSregs(s.Sregs); err != nil {
		return fail("sregs", err)
	}
	x := s.XSAVE
	if err := v.SetXSAVE(&x); err != nil {
		return fail("XSAVE", err)
	}
	if err := v.SetXCRs(s.XCRs); err != nil {
		return fail("XCRs", err)
	}
	if err := v.SetDebugRegs(s.DebugRegs); err != nil {
		return fail("debug registers", err)
	}
	if err := v.SetLAPIC(s.LAPIC); err != nil {
		return fail("LAPIC", err)
	}
	first, last := msrRestoreOrder(s.MSRs)
	if err := v.writeMSRs(first); err != nil {
		return fail("MSRs", err)
	}
	if err := v.writeMSRs(last); err != nil {
		return fail("TSC deadline MSR", err)
	}
	if err := v.SetEvents(s.Events); err != nil {
		return fail("events", err)
	}
	// The guest was stopped for as long as its snapshot waited: let its
	// watchdogs know. A guest that never enabled kvmclock (EINVAL) has
	// nowhere to be told.
	if err := v.KVMClockCtrl(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fail("kvmclock stop notice", err)
	}
	return nil
}
