package kvm

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/internal/testenv"
)

// openOrSkip opens /dev/kvm; only a host with no KVM device at all skips.
func openOrSkip(t *testing.T) *System {
	t.Helper()
	testenv.RequireKVM(t)
	s, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// realModeVCPU creates a VM with 64 KiB of memory holding code at 0x1000
// and one vCPU about to run it in 16-bit real mode.
func realModeVCPU(t *testing.T, s *System, code []byte) *VCPU {
	t.Helper()
	v, _ := realModeVM(t, s, code, 0)
	return v
}

// realModeVM is realModeVCPU with the memory slot's flags, returning the
// VM too.
func realModeVM(t *testing.T, s *System, code []byte, slotFlags uint32) (*VCPU, *VM) {
	t.Helper()
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	copy(mem[0x1000:], code)
	if err := vm.SetUserMemoryRegion(0, 0, mem, slotFlags); err != nil {
		t.Fatal(err)
	}
	vcpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vcpu.Close() })
	sregs, err := vcpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if err := vcpu.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	if err := vcpu.SetRegs(Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return vcpu, vm
}

// A 16-bit real-mode guest writes a byte to a port and halts: the smallest
// end-to-end check of memory slots, registers, KVM_RUN and exit decoding.
func TestRunRealModeGuest(t *testing.T) {
	s := openOrSkip(t)
	if n := s.MaxVCPUs(); n < 1 {
		t.Fatalf("MaxVCPUs = %d", n)
	}
	code := []byte{
		0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0xb0, 'K', // mov al, 'K'
		0xee, // out dx, al
		0xf4, // hlt
	}
	vcpu := realModeVCPU(t, s, code)
	var out []byte
	for i := 0; i < 10; i++ {
		exit, err := vcpu.Run()
		if err != nil {
			t.Fatal(err)
		}
		switch exit {
		case ExitIO:
			io, err := vcpu.IO()
			if err != nil {
				t.Fatal(err)
			}
			if io.Port != 0x3f8 || io.Direction != IODirOut || io.Size != 1 {
				t.Fatalf("unexpected I/O exit %+v", io)
			}
			out = append(out, io.Data...)
		case ExitHLT:
			if string(out) != "K" {
				t.Fatalf("guest wrote %q, want %q", out, "K")
			}
			r, err := vcpu.Regs()
			if err != nil {
				t.Fatal(err)
			}
			if r.RIP != 0x1000+uint64(len(code)) {
				t.Fatalf("RIP after hlt = %#x", r.RIP)
			}
			return
		default:
			t.Fatalf("unexpected exit %v", exit)
		}
	}
	t.Fatal("guest did not halt")
}

func TestSupportedCPUID(t *testing.T) {
	s := openOrSkip(t)
	c, err := s.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if c.Find(0, 0) == nil || c.Find(1, 0) == nil {
		t.Fatalf("supported CPUID lacks leaves 0 and 1: %d entries", len(c))
	}
	if _, err := s.MSRIndexList(); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("VMM_DEBUG") != "" {
		t.Logf("%d CPUID entries, PVM host: %v", len(c), IsPVM())
	}
}

// A vCPU spinning in the guest through RunHot holds its goroutine's P, so
// the runtime must still get it back: its preemption signal interrupts
// KVM_RUN. With a single P, garbage collection (a stop-the-world) and
// another goroutine both have to run while the guest spins.
func TestRunHotYieldsToRuntime(t *testing.T) {
	s := openOrSkip(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	vcpu := realModeVCPU(t, s, []byte{0xeb, 0xfe}) // jmp $

	var stop atomic.Bool
	var tid atomic.Int32
	type result struct {
		intrs int
		err   error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid.Store(int32(unix.Gettid()))
		var r result
		for !stop.Load() {
			exit, err := vcpu.RunHot()
			if err != nil {
				r.err = err
				break
			}
			switch exit {
			case ExitIntr:
				r.intrs++
			default:
				r.err = fmt.Errorf("unexpected exit %v from a spinning guest", exit)
			}
			if r.err != nil {
				break
			}
		}
		done <- r
	}()
	for tid.Load() == 0 {
		runtime.Gosched()
	}

	const rounds = 5
	start := time.Now()
	for range rounds {
		runtime.GC()
		woke := make(chan struct{})
		go func() { close(woke) }()
		<-woke
	}
	elapsed := time.Since(start)

	stop.Store(true)
	vcpu.SetImmediateExit(true)
	deadline := time.After(10 * time.Second)
	var r result
wait:
	for {
		_ = unix.Tgkill(unix.Getpid(), int(tid.Load()), unix.SIGURG)
		select {
		case r = <-done:
			break wait
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatal("the vCPU goroutine did not stop")
		}
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	// With one P, every step of a collection and every wake-up waits for
	// the runtime to preempt the vCPU (a time slice, 10-20 ms): a round
	// takes about 0.1 s. Without preemption it would never end.
	if limit := 10 * time.Second; elapsed > limit {
		t.Errorf("%d garbage collections and goroutine wake-ups beside a spinning vCPU took %v (limit %v)", rounds, elapsed, limit)
	}
	if r.intrs == 0 {
		t.Error("KVM_RUN was never interrupted, yet the other goroutines ran: the test did not exercise RunHot")
	}
	t.Logf("%d rounds in %v, %d interrupted runs", rounds, elapsed, r.intrs)
}
