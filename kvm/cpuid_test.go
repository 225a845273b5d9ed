package kvm

import "testing"

func TestCPUIDForVCPU(t *testing.T) {
	host := CPUID{
		{Function: leafFeatures, EBX: 0xff00abcd, ECX: 0x1 | featECXVMX},
		{Function: leafExtFeatures, ECX: featExtECXSVM | 1},
		{Function: leafTopology, Index: 0, Flags: cpuidFlagSignificantIndex},
		{Function: leafTopology, Index: 1, Flags: cpuidFlagSignificantIndex},
		{Function: leafCacheParams, Index: 3, Flags: cpuidFlagSignificantIndex, EAX: 3<<5 | 0xfc000000},
		{Function: leafThermalPower, EAX: 7},
	}
	tests := []struct {
		id, n       int
		wantAPIC    uint32
		wantCount   uint32
		wantCoreEBX uint32
		wantShift   uint32
	}{
		{0, 1, 0, 1, 1, 0},
		{1, 2, 1, 2, 2, 1},
		{3, 4, 3, 4, 4, 2},
		{4, 5, 4, 5, 5, 3},
	}
	for _, tt := range tests {
		got := host.ForVCPU(tt.id, tt.n)
		f := got.Find(leafFeatures, 0)
		if apic := f.EBX >> 24; apic != tt.wantAPIC {
			t.Errorf("vcpu %d/%d: APIC ID %d, want %d", tt.id, tt.n, apic, tt.wantAPIC)
		}
		if cnt := f.EBX >> 16 & 0xff; cnt != tt.wantCount {
			t.Errorf("vcpu %d/%d: logical count %d, want %d", tt.id, tt.n, cnt, tt.wantCount)
		}
		if f.EBX&0xffff != 0xabcd {
			t.Errorf("vcpu %d/%d: low EBX bits changed: %#x", tt.id, tt.n, f.EBX)
		}
		if f.ECX&featECXVMX != 0 || got.Find(leafExtFeatures, 0).ECX != 1 {
			t.Errorf("vcpu %d/%d: VMX or SVM offered (leaf 1 ECX %#x, leaf 0x80000001 ECX %#x)", tt.id, tt.n, f.ECX, got.Find(leafExtFeatures, 0).ECX)
		}
		if f.ECX&featECXHypervisor == 0 {
			t.Errorf("vcpu %d/%d: hypervisor bit not set", tt.id, tt.n)
		}
		core := got.Find(leafTopology, 1)
		if core.EBX != tt.wantCoreEBX || core.EAX != tt.wantShift || core.EDX != uint32(tt.id) {
			t.Errorf("vcpu %d/%d: leaf 0xb.1 = eax %d ebx %d edx %d", tt.id, tt.n, core.EAX, core.EBX, core.EDX)
		}
		if smt := got.Find(leafTopology, 0); smt.EBX != 1 || smt.ECX>>8&0xff != topoLevelSMT {
			t.Errorf("vcpu %d/%d: leaf 0xb.0 = %+v", tt.id, tt.n, smt)
		}
		if c := got.Find(leafCacheParams, 3); c.EAX>>26 != uint32(tt.n-1) {
			t.Errorf("vcpu %d/%d: leaf 4 cores-1 = %d", tt.id, tt.n, c.EAX>>26)
		}
		if th := got.Find(leafThermalPower, 0); th.EAX != 0 {
			t.Errorf("vcpu %d/%d: thermal leaf not hidden", tt.id, tt.n)
		}
	}
	if host.Find(leafFeatures, 0).EBX != 0xff00abcd {
		t.Error("ForVCPU modified the host table")
	}
}
