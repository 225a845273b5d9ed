package kvm

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// _IOC direction bits (<asm-generic/ioctl.h>).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

// ioc computes _IOC(dir, KVMIO, nr, size).
func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 0xae<<8 | nr }

// The request numbers encode the size of the struct the kernel copies: it
// must be the size of the Go mirror, or KVM reads or writes past it.
func TestStateIoctlNumbers(t *testing.T) {
	cpuid2Header := unsafe.Sizeof(struct{ Nent, Padding uint32 }{})
	for _, tt := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_CPUID2", ioctlGetCPUID2, ioc(iocRead|iocWrite, 0x91, cpuid2Header)},
		{"KVM_GET_DEBUGREGS", ioctlGetDebugRegs, ioc(iocRead, 0xa1, unsafe.Sizeof(DebugRegs{}))},
		{"KVM_SET_DEBUGREGS", ioctlSetDebugRegs, ioc(iocWrite, 0xa2, unsafe.Sizeof(DebugRegs{}))},
		{"KVM_SET_TSC_KHZ", ioctlSetTSCKHz, ioc(iocNone, 0xa2, 0)},
		{"KVM_GET_TSC_KHZ", ioctlGetTSCKHz, ioc(iocNone, 0xa3, 0)},
		{"KVM_KVMCLOCK_CTRL", ioctlKVMClockCtrl, ioc(iocNone, 0xad, 0)},
		{"KVM_GET_IRQCHIP", ioctlGetIRQChip, ioc(iocRead|iocWrite, 0x62, unsafe.Sizeof(IRQChip{}))},
		{"KVM_SET_IRQCHIP", ioctlSetIRQChip, ioc(iocRead, 0x63, unsafe.Sizeof(IRQChip{}))},
		{"KVM_GET_PIT2", ioctlGetPIT2, ioc(iocRead, 0x9f, unsafe.Sizeof(PITState2{}))},
		{"KVM_SET_PIT2", ioctlSetPIT2, ioc(iocWrite, 0xa0, unsafe.Sizeof(PITState2{}))},
		{"KVM_GET_CLOCK", ioctlGetClock, ioc(iocRead, 0x7c, unsafe.Sizeof(ClockData{}))},
		{"KVM_SET_CLOCK", ioctlSetClock, ioc(iocWrite, 0x7b, unsafe.Sizeof(ClockData{}))},
		{"KVM_GET_VCPU_EVENTS", ioctlGetVCPUEvents, ioc(iocRead, 0x9f, unsafe.Sizeof(VCPUEvents{}))},
		{"KVM_SET_VCPU_EVENTS", ioctlSetVCPUEvents, ioc(iocWrite, 0xa0, unsafe.Sizeof(VCPUEvents{}))},
		{"KVM_GET_MP_STATE", ioctlGetMPState, ioc(iocRead, 0x98, 4)},
		{"KVM_SET_MP_STATE", ioctlSetMPState, ioc(iocWrite, 0x99, 4)},
		{"KVM_GET_LAPIC", ioctlGetLAPIC, ioc(iocRead, 0x8e, unsafe.Sizeof(LAPICState{}))},
		{"KVM_SET_LAPIC", ioctlSetLAPIC, ioc(iocWrite, 0x8f, unsafe.Sizeof(LAPICState{}))},
		{"KVM_GET_MSR_INDEX_LIST", ioctlGetMSRIndexList, ioc(iocRead|iocWrite, 0x02, 4)},
		{"KVM_GET_DIRTY_LOG", ioctlGetDirtyLog, ioc(iocWrite, 0x42, unsafe.Sizeof(dirtyLog{}))},
		{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion, ioc(iocWrite, 0x46, unsafe.Sizeof(userspaceMemoryRegion{}))},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

// Sizes and offsets from <asm/kvm.h> and <linux/kvm.h> (x86-64), checked
// with a C compiler against the installed headers.
func TestStateStructLayouts(t *testing.T) {
	var ioapic IOAPICState
	var pitCh PITChannelState
	for _, tt := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(kvm_debugregs)", unsafe.Sizeof(DebugRegs{}), 128},
		{"kvm_debugregs.dr6", unsafe.Offsetof(DebugRegs{}.DR6), 32},
		{"kvm_debugregs.dr7", unsafe.Offsetof(DebugRegs{}.DR7), 40},
		{"kvm_debugregs.flags", unsafe.Offsetof(DebugRegs{}.Flags), 48},
		{"sizeof(kvm_irqchip)", unsafe.Sizeof(IRQChip{}), 520},
		{"kvm_irqchip.chip", unsafe.Offsetof(IRQChip{}.Chip), 8},
		{"sizeof(kvm_pic_state)", unsafe.Sizeof(PICState{}), 16},
		{"kvm_pic_state.elcr", unsafe.Offsetof(PICState{}.ELCR), 14},
		{"sizeof(kvm_ioapic_state)", unsafe.Sizeof(ioapic), 216},
		{"kvm_ioapic_state.id", unsafe.Offsetof(ioapic.ID), 12},
		{"kvm_ioapic_state.irr", unsafe.Offsetof(ioapic.IRR), 16},
		{"kvm_ioapic_state.redirtbl", unsafe.Offsetof(ioapic.RedirTbl), 24},
		{"sizeof(kvm_pit_channel_state)", unsafe.Sizeof(pitCh), 24},
		{"kvm_pit_channel_state.gate", unsafe.Offsetof(pitCh.Gate), 15},
		{"kvm_pit_channel_state.count_load_time", unsafe.Offsetof(pitCh.CountLoadTime), 16},
		{"sizeof(kvm_pit_state2)", unsafe.Sizeof(PITState2{}), 112},
		{"kvm_pit_state2.flags", unsafe.Offsetof(PITState2{}.Flags), 72},
		{"kvm_clock_data.realtime", unsafe.Offsetof(ClockData{}.Realtime), 16},
		{"kvm_clock_data.host_tsc", unsafe.Offsetof(ClockData{}.HostTSC), 24},
		{"kvm_xcrs.xcrs", unsafe.Offsetof(XCRs{}.XCRs), 8},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

// The typed views of the irqchip union put each register where the kernel
// reads it.
func TestIRQChipViews(t *testing.T) {
	var c IRQChip
	pic := PICState{IRR: 0x11, IMR: 0xfb, ISR: 0x04, IRQBase: 0x20, ELCR: 0x0c, ELCRMask: 0xf8}
	c.SetPIC(pic)
	if got := c.PIC(); got != pic {
		t.Errorf("PIC() = %+v, want %+v", got, pic)
	}
	if c.Chip[1] != 0x11 || c.Chip[2] != 0xfb || c.Chip[3] != 0x04 || c.Chip[5] != 0x20 || c.Chip[14] != 0x0c {
		t.Errorf("kvm_pic_state bytes = % x", c.Chip[:16])
	}

	io := IOAPICState{BaseAddress: 0xfec00000, IORegSel: 0x10, ID: 3, IRR: 1 << 9}
	for i := range io.RedirTbl {
		io.RedirTbl[i] = 1<<16 | uint64(0x30+i) // masked, vector 0x30+pin
	}
	c.SetIOAPIC(io)
	if got := c.IOAPIC(); got != io {
		t.Errorf("IOAPIC() = %+v, want %+v", got, io)
	}
	le := binary.LittleEndian
	if le.Uint64(c.Chip[0:]) != 0xfec00000 || le.Uint32(c.Chip[12:]) != 3 || le.Uint32(c.Chip[16:]) != 1<<9 {
		t.Errorf("kvm_ioapic_state header bytes = % x", c.Chip[:24])
	}
	if got := le.Uint64(c.Chip[24+8*23:]); got != 1<<16|0x47 {
		t.Errorf("redirtbl[23] = %#x", got)
	}
	// SetPIC over an IOAPIC image leaves nothing of it behind.
	c.SetPIC(pic)
	if !slices.Equal(c.Chip[16:], make([]byte, len(c.Chip)-16)) {
		t.Error("SetPIC kept bytes of the previous image past kvm_pic_state")
	}
}

// fill sets every settable number reachable from v to a distinct value,
// every slice to three elements, so that a round trip that drops or
// mixes up any field shows.
func fill(v reflect.Value, next *uint64) {
	switch v.Kind() {
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		*next++
		v.SetUint(*next * 0x9e3779b97f4a7c15) // truncated to the width
	case reflect.Int64:
		*next++
		v.SetInt(-int64(*next * 0x9e3779b97f4a7c1))
	case reflect.Array:
		for i := range v.Len() {
			fill(v.Index(i), next)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 3, 3))
		for i := range v.Len() {
			fill(v.Index(i), next)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Field(i); f.CanSet() {
				fill(f, next)
			}
		}
	default:
		panic("fill: unhandled kind " + v.Kind().String())
	}
}

func patternedVCPUState() VCPUState {
	var s VCPUState
	var n uint64
	fill(reflect.ValueOf(&s).Elem(), &n)
	return s
}

func patternedVMState() VMState {
	var s VMState
	var n uint64
	fill(reflect.ValueOf(&s).Elem(), &n)
	return s
}

// A vCPU's state survives JSON exactly, and the big images are base64
// strings rather than arrays of numbers.
func TestVCPUStateJSONRoundTrip(t *testing.T) {
	want := patternedVCPUState()
	if want.XSAVE.Region[XSAVESize-1] == 0 || want.LAPIC.Regs[1023] == 0 || want.TSCKHz == 0 || want.Events.ExceptionPayload == 0 {
		t.Fatal("the pattern left fields zero")
	}
	blob, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var got VCPUState
	if err := json.Unmarshal(blob, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("VCPUState changed in a JSON round trip:\n got %+v\nwant %+v", got, want)
	}

	var raw map[string]json.RawMessage
	if err := json.Unmarshal(blob, &raw); err != nil {
		t.Fatal(err)
	}
	for name, img := range map[string][]byte{"XSAVE": want.XSAVE.Region[:], "LAPIC": want.LAPIC.Regs[:]} {
		var s string
		if err := json.Unmarshal(raw[name], &s); err != nil {
			t.Errorf("%s does not encode as a string: %v", name, err)
			continue
		}
		if s != base64.StdEncoding.EncodeToString(img) {
			t.Errorf("%s is not the base64 of its image", name)
		}
	}
	// 4 KiB of XSAVE and 1 KiB of LAPIC page as base64, plus some hundreds
	// of bytes per field group; as arrays of numbers it would be over 20 KiB.
	if len(blob) > 12<<10 {
		t.Errorf("VCPUState JSON is %d bytes", len(blob))
	}
}

func TestVMStateJSONRoundTrip(t *testing.T) {
	want := patternedVMState()
	blob, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var got VMState
	if err := json.Unmarshal(blob, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("VMState changed in a JSON round trip:\n got %+v\nwant %+v", got, want)
	}
	var raw struct{ IOAPIC struct{ Chip string } }
	if err := json.Unmarshal(blob, &raw); err != nil {
		t.Fatalf("the irqchip image does not encode as a string: %v", err)
	}
	if raw.IOAPIC.Chip != base64.StdEncoding.EncodeToString(want.IOAPIC.Chip[:]) {
		t.Error("IOAPIC.Chip is not the base64 of its image")
	}
}

// A snapshot file is untrusted: an image of the wrong size or a bad
// encoding is an error, never a partly restored register page.
func TestStateJSONRejectsBadImages(t *testing.T) {
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	for _, tt := range []struct {
		name, json string
		dst        any
	}{
		{"XSAVE short", `{"XSAVE":"` + b64(XSAVESize-1) + `"}`, new(VCPUState)},
		{"XSAVE long", `{"XSAVE":"` + b64(XSAVESize+3) + `"}`, new(VCPUState)},
		{"XSAVE not base64", `{"XSAVE":"` + strings.Repeat("!", len(b64(XSAVESize))) + `"}`, new(VCPUState)},
		{"XSAVE as numbers", `{"XSAVE":[1,2,3]}`, new(VCPUState)},
		{"LAPIC short", `{"LAPIC":"` + b64(1023) + `"}`, new(VCPUState)},
		{"LAPIC empty", `{"LAPIC":""}`, new(VCPUState)},
		{"irqchip short", `{"IOAPIC":{"ChipID":2,"Chip":"` + b64(216) + `"}}`, new(VMState)},
		{"irqchip padding inside", `{"PICMaster":{"Chip":"` + "AA==" + b64(512)[4:] + `"}}`, new(VMState)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := json.Unmarshal([]byte(tt.json), tt.dst); err == nil {
				t.Errorf("accepted %.60s…", tt.json)
			}
		})
	}
	// The exact size decodes.
	var s VCPUState
	if err := json.Unmarshal([]byte(`{"LAPIC":"`+b64(1024)+`"}`), &s); err != nil {
		t.Errorf("a 1 KiB LAPIC page: %v", err)
	}
}

// FuzzStateJSON feeds arbitrary snapshot JSON to the decoders: no panic,
// and whatever decodes encodes back to the same state.
func FuzzStateJSON(f *testing.F) {
	for _, v := range []any{patternedVCPUState(), patternedVMState(), VCPUState{}, VMState{}} {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"XSAVE":"AAAA","CPUID":[{"Function":1}],"MSRs":[{"Index":16,"Data":1}]}`))
	f.Add([]byte(`{"PICMaster":{"ChipID":7,"Chip":"=="}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip := func(dst, again any) {
			if json.Unmarshal(data, dst) != nil {
				return
			}
			b, err := json.Marshal(dst)
			if err != nil {
				t.Fatalf("re-encoding a decoded state: %v", err)
			}
			if err := json.Unmarshal(b, again); err != nil {
				t.Fatalf("decoding a re-encoded state: %v", err)
			}
			if !reflect.DeepEqual(dst, again) {
				t.Fatalf("state changed through JSON")
			}
		}
		roundTrip(new(VCPUState), new(VCPUState))
		roundTrip(new(VMState), new(VMState))
	})
}

func TestMSRRestoreOrder(t *testing.T) {
	const lstar = 0xc0000082
	for _, tt := range []struct {
		name        string
		in          []MSR
		first, last []MSR
	}{
		{
			name:  "deadline after everything",
			in:    []MSR{{msrIA32TSC, 1000}, {msrIA32TSCDeadline, 5000}, {lstar, 7}},
			first: []MSR{{msrIA32TSC, 1000}, {lstar, 7}},
			last:  []MSR{{msrIA32TSCDeadline, 5000}},
		},
		{
			name:  "a zero deadline fires at the saved TSC",
			in:    []MSR{{msrIA32TSCDeadline, 0}, {lstar, 7}, {msrIA32TSC, 1000}},
			first: []MSR{{lstar, 7}, {msrIA32TSC, 1000}},
			last:  []MSR{{msrIA32TSCDeadline, 1000}},
		},
		{
			name:  "a zero deadline without a saved TSC stays zero",
			in:    []MSR{{msrIA32TSCDeadline, 0}, {lstar, 7}},
			first: []MSR{{lstar, 7}},
			last:  []MSR{{msrIA32TSCDeadline, 0}},
		},
		{
			name:  "no deadline",
			in:    []MSR{{lstar, 7}, {msrIA32TSC, 1000}},
			first: []MSR{{lstar, 7}, {msrIA32TSC, 1000}},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			first, last := msrRestoreOrder(in)
			if !slices.Equal(first, tt.first) || !slices.Equal(last, tt.last) {
				t.Errorf("msrRestoreOrder(%v) = %v, %v; want %v, %v", tt.in, first, last, tt.first, tt.last)
			}
			if !slices.Equal(in, tt.in) {
				t.Errorf("msrRestoreOrder changed its input to %v", in)
			}
		})
	}
}

func TestTSCRateDiffers(t *testing.T) {
	for _, tt := range []struct {
		have, want uint32
		differs    bool
	}{
		{2_400_000, 2_400_000, false},
		{2_400_500, 2_400_000, false}, // 208 ppm: calibration noise
		{2_399_400, 2_400_000, false}, // 250 ppm exactly
		{2_399_399, 2_400_000, true},
		{2_401_000, 2_400_000, true}, // 417 ppm
		{3_000_000, 2_400_000, true},
		{0, 2_400_000, true},
	} {
		if got := tscRateDiffers(tt.have, tt.want); got != tt.differs {
			t.Errorf("tscRateDiffers(%d, %d) = %v, want %v", tt.have, tt.want, got, tt.differs)
		}
	}
}

func TestClockSetFlags(t *testing.T) {
	for _, tt := range []struct {
		name    string
		in      ClockData
		want    uint32
		wantErr bool
	}{
		{"no flags", ClockData{Clock: 5}, 0, false},
		{"GET-only flags dropped", ClockData{Flags: ClockTSCStable | ClockHostTSC, HostTSC: 9}, 0, false},
		{"realtime passed on", ClockData{Flags: ClockTSCStable | ClockRealtime | ClockHostTSC, Realtime: 1e18}, ClockRealtime, false},
		{"realtime without a wall time", ClockData{Flags: ClockRealtime}, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := clockSetFlags(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("clockSetFlags(%+v) = %#x, %v; want %#x, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// Every failure names the step it happened in. A closed descriptor makes
// the first ioctl of each sequence fail without /dev/kvm.
func TestStateErrorsNameTheStep(t *testing.T) {
	v := &VCPU{id: 1, fd: -1}
	vm := &VM{fd: -1}
	chips := VMState{
		PICMaster: IRQChip{ChipID: IRQChipPICMaster},
		PICSlave:  IRQChip{ChipID: IRQChipPICSlave},
		IOAPIC:    IRQChip{ChipID: IRQChipIOAPIC},
	}
	for _, tt := range []struct {
		name  string
		err   error
		want  string
		ebadf bool // the error came from the ioctl
	}{
		{"vCPU save", func() error { _, err := v.SaveState([]uint32{msrIA32TSC}); return err }(), "save vCPU 1 MP state: ", true},
		{"vCPU restore", v.RestoreState(patternedVCPUState()), "restore vCPU 1 CPUID: ", true},
		{"VM save", func() error { _, err := vm.SaveState(); return err }(), "save VM irqchip PIC master: ", true},
		{"VM restore", vm.RestoreState(chips), "restore VM irqchip PIC master: ", true},
		{"VM restore, chips swapped", vm.RestoreState(VMState{PICMaster: IRQChip{ChipID: IRQChipIOAPIC}}), "restore VM irqchip PIC master: state is of IOAPIC", false},
		{"clock realtime without wall time", vm.SetClock(ClockData{Flags: ClockRealtime}), "KVM_CLOCK_REALTIME without a wall time", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(tt.err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", tt.err, tt.want)
			}
			if got := errors.Is(tt.err, unix.EBADF); got != tt.ebadf {
				t.Errorf("error %q: wraps EBADF = %v, want %v", tt.err, got, tt.ebadf)
			}
		})
	}
}

// EINVAL from KVM_SET_CLOCK with ClockRealtime says what to do about it.
func TestSetClockErrExplainsRealtime(t *testing.T) {
	err := setClockErr(ClockRealtime, unix.EINVAL)
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "Linux 5.16") {
		t.Errorf("setClockErr(realtime, EINVAL) = %v", err)
	}
	err = setClockErr(0, unix.EINVAL)
	if !errors.Is(err, unix.EINVAL) || strings.Contains(err.Error(), "5.16") {
		t.Errorf("setClockErr(0, EINVAL) = %v", err)
	}
}
