package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/boot"
	"github.com/govmm/vmm/devices"
	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/pvmfix"
)

// vcpu is one virtual CPU and the OS thread that runs it.
type vcpu struct {
	m   *Machine
	kvm *kvm.VCPU
	id  int

	tid       atomic.Int32 // OS thread running KVM_RUN, for kicks
	stopping  atomic.Bool
	sampleReq atomic.Bool

	samplesMu sync.Mutex
	samples   map[uint64]int // guest RIP -> hits

	xstate *pvmfix.XStateLayout // where XSAVE puts each state component (CPUID leaf 0xD)
}

// Architectural MSRs set at reset (Intel SDM vol. 4).
const (
	msrIA32TSC          = 0x10
	msrIA32SysenterCS   = 0x174
	msrIA32SysenterESP  = 0x175
	msrIA32SysenterEIP  = 0x176
	msrIA32MiscEnable   = 0x1a0
	msrMTRRDefType      = 0x2ff
	msrSTAR             = 0xc0000081
	msrLSTAR            = 0xc0000082
	msrCSTAR            = 0xc0000083
	msrSyscallMask      = 0xc0000084
	msrKernelGSBase     = 0xc0000102
	miscEnableFastStr   = 1 << 0
	mtrrEnableWriteBack = 1<<11 | 6 // MTRRs on, default type WB
)

// Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3A §11.5).
const (
	apicLVTLINT0       = 0x350
	apicLVTLINT1       = 0x360
	apicDeliveryNMI    = 4 << 8
	apicDeliveryExtINT = 7 << 8
	apicDeliveryMask   = 7 << 8
)

// x87/SSE reset values (Intel SDM vol. 1 §8.1.5, §10.2.3).
const (
	fpuControlWordReset = 0x37f
	mxcsrReset          = 0x1f80
)

func (m *Machine) newVCPU(id int, supported kvm.CPUID) (*vcpu, error) {
	kv, err := m.vm.CreateVCPU(id)
	if err != nil {
		return nil, err
	}
	v := &vcpu{m: m, kvm: kv, id: id, xstate: pvmfix.NewXStateLayout(supported)}
	if err := kv.SetCPUID2(supported.ForVCPU(id, m.cfg.CPUs)); err != nil {
		kv.Close()
		return nil, err
	}
	v.setMSRs()
	if err := kv.SetFPU(kvm.FPU{FCW: fpuControlWordReset, MXCSR: mxcsrReset}); err != nil {
		kv.Close()
		return nil, err
	}
	if err := v.setupLAPIC(); err != nil {
		kv.Close()
		return nil, err
	}
	// The boot processor gets its entry state once the kernel is loaded;
	// application processors wait in the in-kernel LAPIC for INIT/SIPI.
	return v, nil
}

// setMSRs writes the reset values; an MSR the host refuses is logged, not
// fatal, since hosts differ in what they virtualize.
func (v *vcpu) setMSRs() {
	msrs := []kvm.MSR{
		{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterESP}, {Index: msrIA32SysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase}, {Index: msrSyscallMask}, {Index: msrLSTAR},
		{Index: msrIA32TSC},
		{Index: msrIA32MiscEnable, Data: miscEnableFastStr},
		{Index: msrMTRRDefType, Data: mtrrEnableWriteBack},
	}
	if err := v.kvm.SetMSRs(msrs); err == nil {
		return
	}
	for _, msr := range msrs {
		if err := v.kvm.SetMSRs([]kvm.MSR{msr}); err != nil {
			v.m.log.Debug("host refused MSR", "vcpu", v.id, "msr", fmt.Sprintf("%#x", msr.Index), "err", err)
		}
	}
}

// setupLAPIC wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's
// firmware does, so legacy interrupts reach the boot CPU.
func (v *vcpu) setupLAPIC() error {
	l, err := v.kvm.LAPIC()
	if err != nil {
		return err
	}
	set := func(off int, mode uint32) {
		r := uint32(l.Regs[off]) | uint32(l.Regs[off+1])<<8 | uint32(l.Regs[off+2])<<16 | uint32(l.Regs[off+3])<<24
		r = r&^apicDeliveryMask | mode
		l.Regs[off], l.Regs[off+1], l.Regs[off+2], l.Regs[off+3] = byte(r), byte(r>>8), byte(r>>16), byte(r>>24)
	}
	set(apicLVTLINT0, apicDeliveryExtINT)
	set(apicLVTLINT1, apicDeliveryNMI)
	return v.kvm.SetLAPIC(l)
}

func toKVMSegment(s boot.Segment) kvm.Segment {
	return kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL,
	}
}

// setBootState loads the register state the boot protocol asks for.
func (v *vcpu) setBootState(st *boot.CPUState) error {
	sregs, err := v.kvm.Sregs()
	if err != nil {
		return err
	}
	cs, ds := toKVMSegment(st.CS), toKVMSegment(st.DS)
	sregs.CS = cs
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = ds, ds, ds, ds, ds
	if st.TR.Present != 0 {
		sregs.TR = toKVMSegment(st.TR)
	}
	sregs.GDT = kvm.DTable{Base: st.GDTBase, Limit: st.GDTLimit}
	sregs.IDT = kvm.DTable{Base: st.IDTBase, Limit: st.IDTLimit}
	sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	if err := v.kvm.SetSregs(sregs); err != nil {
		return err
	}
	return v.kvm.SetRegs(kvm.Regs{RIP: st.RIP, RSP: st.RSP, RFLAGS: st.RFLAGS, RSI: st.RSI, RBX: st.RBX})
}

// stop asks the vCPU thread to leave KVM_RUN and return.
func (v *vcpu) stop() {
	v.stopping.Store(true)
	v.kvm.SetImmediateExit(true)
	v.kick()
}

// kick interrupts KVM_RUN with a signal. SIGURG is the Go runtime's own
// preemption signal: its handler is installed and harmless to deliver.
func (v *vcpu) kick() {
	if tid := v.tid.Load(); tid != 0 {
		_ = unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

// reserveVCPUProcs raises GOMAXPROCS so that n vCPUs in hot runs, each
// holding a P (kvm.VCPU.RunHot), still leave the device goroutines one P
// per host CPU. It never lowers it. Machines started together in one
// process share the headroom rather than adding to it; that costs device
// latency (a P frees up within a time slice), never correctness.
func reserveVCPUProcs(n int) {
	if want := runtime.NumCPU() + n; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

// loop runs the vCPU on a dedicated OS thread until stopped or failed.
func (v *vcpu) loop() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer nameThread(nameThread(fmt.Sprintf("vcpu%d", v.id)))
	v.tid.Store(int32(unix.Gettid()))
	defer v.tid.Store(0)
	var firstRun func()
	if v.id == 0 {
		firstRun = v.m.cfg.OnFirstRun
	}
	// hot: the last exit was the guest's own, so the next run keeps the
	// goroutine's P (kvm.VCPU.RunHot); after a signal (the runtime's time
	// slice ran out, or a kick) the guest may be idle, and the next run
	// gives the P up.
	hot := true
	for !v.stopping.Load() {
		v.m.pause.park(v.stopping.Load, v.settle)
		if v.stopping.Load() {
			break
		}
		if firstRun != nil {
			firstRun()
			firstRun = nil
		}
		var exit kvm.ExitReason
		var err error
		if hot {
			exit, err = v.kvm.RunHot()
		} else {
			exit, err = v.kvm.Run()
		}
		hot = exit != kvm.ExitIntr
		if err != nil {
			return fmt.Errorf("vCPU %d: %w", v.id, err)
		}
		done, err := v.handleExit(exit)
		if err != nil {
			return fmt.Errorf("vCPU %d: %w", v.id, err)
		}
		if done {
			return nil
		}
	}
	return nil
}

// maxSettleRuns bounds the KVM_RUN calls settle makes: a string I/O
// instruction (rep outsb) can need several exits to user space before it
// completes, each a page of data at most.
const maxSettleRuns = 64

// settle completes the instruction whose I/O the last exit asked for before
// the vCPU parks. KVM finishes a port or MMIO access user space served (it
// loads the data of an IN into RAX and moves RIP past the instruction) only
// on the next KVM_RUN; immediate_exit makes that run return right after.
// Without it, registers saved while paused would point at the access again
// and a restored guest would execute it twice (a UART byte read twice, a
// doorbell written twice).
func (v *vcpu) settle() {
	v.kvm.SetImmediateExit(true)
	for range maxSettleRuns {
		exit, err := v.kvm.Run()
		if err != nil {
			v.m.log.Warn("vCPU could not complete its last I/O before pausing", "vcpu", v.id, "err", err)
			return
		}
		if exit == kvm.ExitIntr {
			return
		}
		if done, err := v.handleExit(exit); err != nil || done {
			if err != nil {
				v.m.finish(Exit{Kind: ExitFailed, Err: fmt.Errorf("vCPU %d: %w", v.id, err)})
			}
			return
		}
	}
	v.m.log.Warn("vCPU still exiting for I/O after settle's bound", "vcpu", v.id, "runs", maxSettleRuns)
}

// handleExit services one exit; done means this vCPU should stop.
func (v *vcpu) handleExit(exit kvm.ExitReason) (done bool, err error) {
	v.m.exits.add(exit)
	switch exit {
	case kvm.ExitIO:
		io, err := v.kvm.IO()
		if err != nil {
			return false, err
		}
		size := int(io.Size)
		for i := 0; i+size <= len(io.Data); i += size {
			chunk := io.Data[i : i+size]
			var berr error
			if io.Direction == kvm.IODirOut {
				berr = v.m.pio.Write(uint64(io.Port), chunk)
			} else {
				berr = v.m.pio.Read(uint64(io.Port), chunk)
			}
			if berr != nil && errors.Is(berr, devices.ErrUnmapped) {
				v.m.log.Debug("unclaimed port access", "vcpu", v.id, "err", berr)
			}
		}
	case kvm.ExitMMIO:
		mm := v.kvm.MMIO()
		var berr error
		if mm.IsWrite {
			berr = v.m.mmio.Write(mm.PhysAddr, mm.Data)
		} else {
			berr = v.m.mmio.Read(mm.PhysAddr, mm.Data)
		}
		if berr != nil {
			v.m.log.Debug("unclaimed MMIO access", "vcpu", v.id, "err", berr)
		}
	case kvm.ExitIntr:
		if v.sampleReq.Swap(false) {
			v.sample()
		}
	case kvm.ExitHLT, kvm.ExitIRQWindowOpen, kvm.ExitDebug:
		// With the in-kernel irqchip these carry nothing for us to do.
	case kvm.ExitShutdown:
		// A triple fault: on a PC this resets the machine.
		v.m.log.Warn("guest triple fault; treating it as a reset", "vcpu", v.id, "state", v.describe())
		v.m.finish(Exit{Kind: ExitReset})
		return true, nil
	case kvm.ExitSystemEvent:
		switch t := v.kvm.SystemEvent(); t {
		case kvm.SystemEventShutdown:
			v.m.finish(Exit{Kind: ExitPowerOff})
		case kvm.SystemEventReset:
			v.m.finish(Exit{Kind: ExitReset})
		default:
			return true, fmt.Errorf("guest system event %d (crash)", t)
		}
		return true, nil
	case kvm.ExitInternalError:
		ie := v.kvm.InternalError()
		if ie.Suberror == kvm.InternalErrorEmulation {
			handled, err := v.emulateFailedInstruction()
			if err != nil {
				return true, err
			}
			if handled {
				return false, nil
			}
		}
		return true, fmt.Errorf("KVM internal error (suberror %d, data %x): %s", ie.Suberror, ie.Data, v.describe())
	case kvm.ExitFailEntry:
		return true, fmt.Errorf("KVM_EXIT_FAIL_ENTRY (hardware reason %#x): %s", v.kvm.FailEntryReason(), v.describe())
	default:
		return true, fmt.Errorf("unhandled exit %v: %s", exit, v.describe())
	}
	return false, nil
}

// describe renders the vCPU's state for an error: RIP, its symbol, and the
// code there (bytes and instruction).
func (v *vcpu) describe() string {
	regs, err := v.kvm.Regs()
	if err != nil {
		return "registers unavailable: " + err.Error()
	}
	sregs, err := v.kvm.Sregs()
	if err != nil {
		return "registers unavailable: " + err.Error()
	}
	s := fmt.Sprintf("rip=%#x", regs.RIP)
	if sym := v.m.syms.lookup(regs.RIP); sym != "" {
		s += " (" + sym + ")"
	}
	s += " " + pvmfix.DescribeCode(v.m.mem, sregs, regs.RIP)
	s += fmt.Sprintf(" rsp=%#x rflags=%#x cr0=%#x cr3=%#x cr4=%#x efer=%#x cs=%#x", regs.RSP, regs.RFLAGS, sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER, sregs.CS.Selector)
	return s
}

// nameThread sets the calling OS thread's name (/proc/PID/task/TID/comm,
// 15 bytes at most) and returns the previous one. vCPU threads carry
// their own name so that tools, and the benchmarks that charge device work
// apart from guest execution, can tell them from the VMM's other threads,
// as QEMU's "CPU n/KVM" threads can be told. Naming is best effort.
func nameThread(name string) string {
	var old [16]byte
	_ = unix.Prctl(unix.PR_GET_NAME, uintptr(unsafe.Pointer(&old[0])), 0, 0, 0)
	b := make([]byte, 16)
	copy(b[:15], name)
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0, 0, 0)
	return unix.ByteSliceToString(old[:])
}
