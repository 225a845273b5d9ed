package kvm

import (
	"testing"
	"unsafe"
)

// The ioctl request numbers encode these sizes; a mismatch would make the
// kernel read or write past our structs.
func TestStructSizesMatchUAPI(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 0x90},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 0x138},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 0x1a0},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 0x40},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), 0x400},
		{"kvm_clock_data", unsafe.Sizeof(ClockData{}), 0x30},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userspaceMemoryRegion{}), 0x20},
		{"kvm_dirty_log", unsafe.Sizeof(dirtyLog{}), 16},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), 8},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), 0x40},
		{"kvm_irqfd", unsafe.Sizeof(irqfd{}), 0x20},
		{"kvm_ioeventfd", unsafe.Sizeof(ioeventfd{}), 0x40},
		{"kvm_msi", unsafe.Sizeof(msi{}), 0x20},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_irq_routing_entry", unsafe.Sizeof(routingEntry{}), 48},
		{"kvm_xsave", unsafe.Sizeof(XSAVE{}), 0x1000},
		{"kvm_xcrs", unsafe.Sizeof(XCRs{}), 0x188},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("sizeof(%s) = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
	if off := unsafe.Offsetof(dirtyLog{}.Bitmap); off != 8 {
		t.Errorf("kvm_dirty_log.dirty_bitmap at %d, want 8", off)
	}
	if off := unsafe.Offsetof(VCPUEvents{}.ExceptionPayload); off != 56 {
		t.Errorf("kvm_vcpu_events.exception_payload at %d, want 56", off)
	}
}
