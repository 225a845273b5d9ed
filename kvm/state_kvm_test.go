package kvm

import (
	"encoding/binary"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// MSRs a restore cannot bring back bit for bit, because they count time.
const (
	// hvTimeRefCount is HV_X64_MSR_TIME_REF_COUNT: the Hyper-V partition
	// reference time, 100 ns units of kvmclock. KVM lists it and ignores a
	// host write.
	hvTimeRefCount = 0x40000020
)

// LAPIC register offsets (Intel SDM vol. 3A, table 11-1).
const (
	lapicLVTLINT0 = 0x350
	lapicLVTLINT1 = 0x360
	lvtExtINT     = 0x700 // delivery mode ExtINT
	lvtNMI        = 0x400 // delivery mode NMI
)

// stateVM creates a VM with the in-kernel irqchip and PIT, as the VMM
// builds it.
func stateVM(t *testing.T, s *System) *VM {
	t.Helper()
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(); err != nil {
		t.Fatal(err)
	}
	return vm
}

func stateVCPU(t *testing.T, vm *VM) *VCPU {
	t.Helper()
	v, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// A vCPU's state, saved, sent through JSON and restored into a vCPU of
// another VM, reads back the same from it.
func TestVCPUStateSaveRestore(t *testing.T) {
	s := openOrSkip(t)
	msrIndices, err := s.MSRsToSave()
	if err != nil {
		t.Fatal(err)
	}
	supported, err := s.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	src := stateVCPU(t, stateVM(t, s))
	if err := src.SetCPUID2(supported.ForVCPU(0, 1)); err != nil {
		t.Fatal(err)
	}

	// Put recognizable values in each part of the state.
	regs := Regs{
		RAX: 0x1111, RBX: 0x2222, RCX: 0x3333, RDX: 0x4444, RSI: 0x5555, RDI: 0x6666,
		RSP: 0x7000, RBP: 0x7100, R8: 8, R9: 9, R10: 10, R11: 11, R12: 12, R13: 13, R14: 14, R15: 15,
		RIP: 0x1234, RFLAGS: 0x2 | 0x40, // bit 1 is fixed; ZF
	}
	if err := src.SetRegs(regs); err != nil {
		t.Fatal(err)
	}
	sregs, err := src.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.DS.Base, sregs.DS.Selector = 0x12340, 0x1234
	sregs.GDT.Base, sregs.GDT.Limit = 0x5000, 0x27
	sregs.IDT.Base, sregs.IDT.Limit = 0x6000, 0x3ff
	if err := src.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	x, err := src.XSAVE()
	if err != nil {
		t.Fatal(err)
	}
	const mxcsr, xmm0 = 24, 160
	binary.LittleEndian.PutUint32(x.Region[mxcsr:], 0x3f80)
	x.Region[xmm0] = 0xa5
	binary.LittleEndian.PutUint64(x.Region[512:], binary.LittleEndian.Uint64(x.Region[512:])|3) // XSTATE_BV: x87, SSE
	if err := src.SetXSAVE(x); err != nil {
		t.Fatal(err)
	}
	dr := DebugRegs{DB: [4]uint64{0x1000, 0x2000, 0x3000, 0x4000}, DR6: 0xffff0ff0, DR7: 0x400 | 1} // bit 10 fixed; L0
	if err := src.SetDebugRegs(dr); err != nil {
		t.Fatal(err)
	}
	lapic, err := src.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(lapic.Regs[lapicLVTLINT0:], lvtExtINT)
	binary.LittleEndian.PutUint32(lapic.Regs[lapicLVTLINT1:], lvtNMI)
	if err := src.SetLAPIC(lapic); err != nil {
		t.Fatal(err)
	}
	written := []MSR{
		{Index: 0x174, Data: 0x10},                    // IA32_SYSENTER_CS
		{Index: 0x175, Data: 0xffff800000001000},      // IA32_SYSENTER_ESP
		{Index: 0xc0000081, Data: 0x0023001000000000}, // STAR
		{Index: 0xc0000082, Data: 0xffffffff81000000}, // LSTAR
		{Index: 0xc0000102, Data: 0xffff888000000000}, // KERNEL_GS_BASE
	}
	if err := src.SetMSRs(written); err != nil {
		t.Fatal(err)
	}
	if err := src.SetMPState(MPStateHalted); err != nil {
		t.Fatal(err)
	}
	ev, err := src.Events()
	if err != nil {
		t.Fatal(err)
	}
	ev.NMI.Masked = 1
	if err := src.SetEvents(ev); err != nil {
		t.Fatal(err)
	}

	saved, err := src.SaveState(msrIndices)
	if err != nil {
		t.Fatal(err)
	}
	// The save read what was written.
	if saved.Regs != regs || saved.DebugRegs.DB != dr.DB || saved.DebugRegs.DR7 != dr.DR7 ||
		saved.MPState != MPStateHalted || saved.Events.NMI.Masked != 1 ||
		saved.Sregs.GDT.Base != 0x5000 || saved.XSAVE.Region[xmm0] != 0xa5 ||
		binary.LittleEndian.Uint32(saved.LAPIC.Regs[lapicLVTLINT0:]) != lvtExtINT {
		t.Fatalf("SaveState did not read back what was set: %+v", saved)
	}
	if len(saved.CPUID) != len(supported.ForVCPU(0, 1)) {
		t.Errorf("saved %d CPUID entries, the vCPU was given %d", len(saved.CPUID), len(supported.ForVCPU(0, 1)))
	}
	savedMSRs := map[uint32]uint64{}
	for _, m := range saved.MSRs {
		savedMSRs[m.Index] = m.Data
	}
	for _, m := range written {
		if got, ok := savedMSRs[m.Index]; !ok || got != m.Data {
			t.Errorf("saved MSR %#x = %#x (present %v), want %#x", m.Index, got, ok, m.Data)
		}
	}
	if _, ok := savedMSRs[msrIA32TSC]; !ok {
		t.Error("the TSC is not among the saved MSRs")
	}

	blob, err := json.Marshal(saved)
	if err != nil {
		t.Fatal(err)
	}
	var loaded VCPUState
	if err := json.Unmarshal(blob, &loaded); err != nil {
		t.Fatal(err)
	}
	dst := stateVCPU(t, stateVM(t, s))
	if err := dst.RestoreState(loaded); err != nil {
		t.Fatal(err)
	}
	back, err := dst.SaveState(msrIndices)
	if err != nil {
		t.Fatal(err)
	}

	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"CPUID", back.CPUID, saved.CPUID},
		{"MPState", back.MPState, saved.MPState},
		{"Regs", back.Regs, saved.Regs},
		{"Sregs", back.Sregs, saved.Sregs},
		{"XSAVE", back.XSAVE, saved.XSAVE},
		{"XCRs", back.XCRs, saved.XCRs},
		{"DebugRegs", back.DebugRegs, saved.DebugRegs},
		{"LAPIC", back.LAPIC, saved.LAPIC},
		{"Events", back.Events, saved.Events},
		{"TSCKHz", back.TSCKHz, saved.TSCKHz},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("restored %s = %+v, want %+v", f.name, f.got, f.want)
		}
	}
	if len(back.MSRs) != len(saved.MSRs) {
		t.Errorf("restored vCPU has %d readable MSRs, saved %d", len(back.MSRs), len(saved.MSRs))
	}
	for i := range min(len(back.MSRs), len(saved.MSRs)) {
		b, w := back.MSRs[i], saved.MSRs[i]
		if b.Index != w.Index {
			t.Errorf("MSR %d: index %#x, saved %#x", i, b.Index, w.Index)
			continue
		}
		switch b.Index {
		case msrIA32TSC, hvTimeRefCount:
			// KVM may also match a TSC written within a second of another
			// vCPU's to that vCPU's (kvm_synchronize_tsc), as it is here.
		default:
			if b.Data != w.Data {
				t.Errorf("restored MSR %#x = %#x, saved %#x", b.Index, b.Data, w.Data)
			}
		}
	}
}

// The in-kernel PICs, IOAPIC, PIT and clock, saved, sent through JSON and
// restored into another VM, read back the same from it.
func TestVMStateSaveRestore(t *testing.T) {
	s := openOrSkip(t)
	src := stateVM(t, s)

	master, err := src.IRQChip(IRQChipPICMaster)
	if err != nil {
		t.Fatal(err)
	}
	pic := master.PIC()
	pic.IMR, pic.IRQBase = 0xfb, 0x20
	master.SetPIC(pic)
	if err := src.SetIRQChip(master); err != nil {
		t.Fatal(err)
	}
	ioapicChip, err := src.IRQChip(IRQChipIOAPIC)
	if err != nil {
		t.Fatal(err)
	}
	io := ioapicChip.IOAPIC()
	io.ID = 3
	io.RedirTbl[5] = 1<<16 | 0x35                 // masked, edge, vector 0x35
	io.RedirTbl[9] = 1<<56 | 1<<16 | 1<<15 | 0x39 // to APIC 1, masked, level, vector 0x39
	ioapicChip.SetIOAPIC(io)
	if err := src.SetIRQChip(ioapicChip); err != nil {
		t.Fatal(err)
	}
	pit, err := src.PIT2()
	if err != nil {
		t.Fatal(err)
	}
	// Channel 1 only: a programmed channel 0 would start raising IRQ 0 and
	// change the irqchips under the test.
	pit.Channels[1].Count, pit.Channels[1].Mode, pit.Channels[1].RWMode = 0x1234, 2, 3
	if err := src.SetPIT2(pit); err != nil {
		t.Fatal(err)
	}

	saved, err := src.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if got := saved.PICMaster.PIC(); got.IMR != 0xfb || got.IRQBase != 0x20 {
		t.Fatalf("saved PIC master %+v", got)
	}
	if got := saved.IOAPIC.IOAPIC(); got.ID != 3 || got.RedirTbl[9] != io.RedirTbl[9] {
		t.Fatalf("saved IOAPIC %+v", got)
	}
	if got := saved.PIT.Channels[1]; got.Count != 0x1234 || got.Mode != 2 {
		t.Fatalf("saved PIT channel 1 %+v", got)
	}
	if saved.PICMaster.ChipID != IRQChipPICMaster || saved.PICSlave.ChipID != IRQChipPICSlave || saved.IOAPIC.ChipID != IRQChipIOAPIC {
		t.Fatalf("saved chip IDs %d %d %d", saved.PICMaster.ChipID, saved.PICSlave.ChipID, saved.IOAPIC.ChipID)
	}

	blob, err := json.Marshal(saved)
	if err != nil {
		t.Fatal(err)
	}
	var loaded VMState
	if err := json.Unmarshal(blob, &loaded); err != nil {
		t.Fatal(err)
	}
	loaded.Clock.Flags &^= ClockRealtime // resume the clock where it stopped
	dst := stateVM(t, s)
	if err := dst.RestoreState(loaded); err != nil {
		t.Fatal(err)
	}
	back, err := dst.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want IRQChip
	}{
		{"PIC master", back.PICMaster, saved.PICMaster},
		{"PIC slave", back.PICSlave, saved.PICSlave},
		{"IOAPIC", back.IOAPIC, saved.IOAPIC},
	} {
		if c.got != c.want {
			t.Errorf("restored %s differs:\n got % x\nwant % x", c.name, c.got.Chip[:32], c.want.Chip[:32])
		}
	}
	// KVM_SET_PIT2 reloads each counter now; the load time is the host's.
	for i := range back.PIT.Channels {
		back.PIT.Channels[i].CountLoadTime = saved.PIT.Channels[i].CountLoadTime
	}
	if back.PIT != saved.PIT {
		t.Errorf("restored PIT %+v, saved %+v", back.PIT, saved.PIT)
	}
	if elapsed := back.Clock.Clock - saved.Clock.Clock; back.Clock.Clock < saved.Clock.Clock || elapsed > uint64(10*time.Second) {
		t.Errorf("restored clock %d, saved %d: should have gone on from the saved value", back.Clock.Clock, saved.Clock.Clock)
	}

	// With ClockRealtime, KVM adds the wall time since Realtime.
	const gap = 5 * time.Second
	c := saved.Clock
	c.Flags |= ClockRealtime
	c.Realtime = uint64(time.Now().Add(-gap).UnixNano())
	err = dst.SetClock(c)
	if err != nil {
		if !strings.Contains(err.Error(), "Linux 5.16") {
			t.Fatal(err)
		}
		return // a kernel before 5.16, and the error says so
	}
	now, err := dst.Clock()
	if err != nil {
		t.Fatal(err)
	}
	if now.Clock < c.Clock+uint64(gap) || now.Clock > c.Clock+uint64(gap+10*time.Second) {
		t.Errorf("clock set with ClockRealtime %v ago reads %d, set %d", gap, now.Clock, c.Clock)
	}
}
