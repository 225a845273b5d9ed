package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/govmm/vmm/boot"
	"github.com/govmm/vmm/devices"
	"github.com/govmm/vmm/devices/acpipm"
	"github.com/govmm/vmm/devices/debugexit"
	"github.com/govmm/vmm/devices/i8042"
	"github.com/govmm/vmm/devices/rtc"
	"github.com/govmm/vmm/devices/serial"
	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
)

// ExitKind says why a machine stopped.
type ExitKind int

// Ways a machine ends.
const (
	ExitPowerOff  ExitKind = iota + 1 // the guest powered off
	ExitReset                         // the guest rebooted (or triple-faulted)
	ExitDebugPort                     // the guest wrote its status to the test exit port
	ExitStopped                       // the host stopped it (signal, console escape, API)
	ExitFailed                        // a vCPU or device failed
)

func (k ExitKind) String() string {
	switch k {
	case ExitPowerOff:
		return "power off"
	case ExitReset:
		return "reset"
	case ExitDebugPort:
		return "debug exit"
	case ExitStopped:
		return "stopped"
	case ExitFailed:
		return "failed"
	}
	return fmt.Sprintf("ExitKind(%d)", int(k))
}

// Exit is how a machine ended.
type Exit struct {
	Kind   ExitKind
	Status int   // for ExitDebugPort: the guest's status
	Err    error // for ExitFailed
}

// ExitCode maps an Exit to a process exit status: 0 when the guest shut
// down or rebooted by itself, the guest's own status for the debug port,
// 1 for failures and 130 when stopped from the host.
func (e Exit) ExitCode() int {
	switch e.Kind {
	case ExitPowerOff, ExitReset:
		return 0
	case ExitDebugPort:
		return e.Status
	case ExitStopped:
		return 130
	}
	return 1
}

// Machine is one assembled VM.
type Machine struct {
	cfg  Config
	log  *slog.Logger
	sys  *kvm.System
	vm   *kvm.VM
	mem  *memory.Guest
	pio  *devices.Bus
	mmio *devices.Bus
	uart *serial.UART
	syms *symbolTable
	pvm  bool

	vcpus []*vcpu

	exitOnce sync.Once
	exitCh   chan Exit
	pause    *pauser
	pciMu    sync.Mutex // guards pci against UpdateDrive during Close
	pci      *pciState  // nil without PCI devices
	exits    exitCounters
	kbd      *i8042.Controller
	rtc      *rtc.RTC

	snapMu sync.Mutex // one Snapshot at a time
}

// New builds a machine from cfg: KVM objects, guest memory with the kernel,
// initrd, boot parameters and ACPI tables in place, devices wired, vCPUs
// created and set up to start. Nothing runs until Run.
func New(cfg Config, log *slog.Logger) (m *Machine, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Cmdline == "" {
		cfg.Cmdline = DefaultCmdline
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kernelImage, err := os.ReadFile(cfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("read kernel: %w", err)
	}
	var initrd []byte
	if cfg.Initrd != "" {
		if initrd, err = os.ReadFile(cfg.Initrd); err != nil {
			return nil, fmt.Errorf("read initrd: %w", err)
		}
	}

	built := newMachine(cfg, log)
	m = built
	defer func() {
		if err != nil {
			built.Close()
		}
	}()
	if err = m.createVM(); err != nil {
		return nil, err
	}
	mem, err := memory.New(boot.MemoryLayout(cfg.MemSize), memory.Options{TrackDirty: cfg.TrackDirtyPages})
	if err != nil {
		return nil, err
	}
	if err = m.mapMemory(mem); err != nil {
		return nil, err
	}
	// vCPUs exist before the command line is written: on kvm-pvm hosts it
	// carries the TSC frequency KVM reports for them.
	if err = m.createVCPUs(); err != nil {
		return nil, err
	}

	kernel, err := boot.LoadKernel(m.mem, kernelImage)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", cfg.Kernel, err)
	}
	log.Debug("kernel loaded", "protocol", kernel.Protocol, "entry", fmt.Sprintf("%#x", kernel.Entry))
	params := boot.Params{Cmdline: m.cmdline(), MemSize: cfg.MemSize, Reserved: pciReserved(cfg)}
	if initrd != nil {
		addr, err := boot.LoadInitrd(m.mem, kernel, cfg.MemSize, initrd)
		if err != nil {
			return nil, fmt.Errorf("initrd %s: %w", cfg.Initrd, err)
		}
		params.InitrdAddr, params.InitrdSize = addr, uint64(len(initrd))
	}
	if params.RSDPAddr, err = boot.WriteACPITables(m.mem, boot.ACPIConfig{
		NumCPUs:          cfg.CPUs,
		SleepControlPort: pmPort + acpipm.SleepControl,
		SleepStatusPort:  pmPort + acpipm.SleepStatus,
		ResetPort:        pmPort + acpipm.Reset,
		ResetValue:       acpipm.ResetValue,
		S5SleepType:      acpipm.S5SleepType,
		PCI:              pciACPI(cfg),
		Serial:           []boot.ISASerialPort{{Name: "COM1", UID: 1, Port: com1Port, IRQ: com1IRQ}},
	}); err != nil {
		return nil, fmt.Errorf("ACPI tables: %w", err)
	}
	arg, err := boot.WriteBootParams(m.mem, kernel, params)
	if err != nil {
		return nil, fmt.Errorf("boot parameters: %w", err)
	}
	bootState, err := boot.SetupCPU(m.mem, kernel, arg)
	if err != nil {
		return nil, fmt.Errorf("boot CPU state: %w", err)
	}
	log.Debug("boot parameters written", "cmdline", params.Cmdline, "initrd", fmt.Sprintf("%#x+%#x", params.InitrdAddr, params.InitrdSize))

	if err = m.setupDevices(); err != nil {
		return nil, err
	}
	if err = m.setupPCI(); err != nil {
		return nil, err
	}
	m.syms = loadSymbols(cfg.SystemMap, cfg.Kernel, log)

	if err = m.vcpus[0].setBootState(bootState); err != nil {
		return nil, err
	}
	m.startConsole()
	return m, nil
}

// newMachine returns a machine with nothing of KVM's yet.
func newMachine(cfg Config, log *slog.Logger) *Machine {
	m := &Machine{cfg: cfg, log: log, exitCh: make(chan Exit, 1), pause: newPauser()}
	m.pvm = kvm.IsPVM()
	if cfg.HostQuirks != nil {
		m.pvm = *cfg.HostQuirks
	}
	return m
}

// createVM opens KVM and creates the VM with its in-kernel interrupt
// controllers and timer, as every machine has them.
func (m *Machine) createVM() (err error) {
	if m.sys == nil {
		if m.sys, err = kvm.Open(); err != nil {
			return err
		}
	}
	if max := m.sys.MaxVCPUs(); m.cfg.CPUs > max {
		return fmt.Errorf("%d vCPUs requested, this host allows at most %d", m.cfg.CPUs, max)
	}
	if m.vm, err = m.sys.CreateVM(); err != nil {
		return err
	}
	if err = m.vm.SetIdentityMapAddr(identityMapAddr); err != nil {
		return err
	}
	if err = m.vm.SetTSSAddr(tssAddr); err != nil {
		return err
	}
	if err = m.vm.CreateIRQChip(); err != nil {
		return err
	}
	if err = m.vm.CreatePIT2(); err != nil {
		return err
	}
	return m.vm.SetGSIRouting(kvm.DefaultRouting())
}

// mapMemory makes mem the machine's RAM, in KVM's memory slots, logging
// the guest's writes when TrackDirtyPages; the machine closes it.
func (m *Machine) mapMemory(mem *memory.Guest) error {
	m.mem = mem
	var flags uint32
	if m.cfg.TrackDirtyPages {
		flags |= kvm.MemoryFlagLogDirtyPages
	}
	// Slot i is region i: takeDirty relies on it.
	for i, r := range mem.Regions() {
		if err := m.vm.SetUserMemoryRegion(uint32(i), r.GuestAddr, r.Host, flags); err != nil {
			return err
		}
	}
	return nil
}

// createVCPUs creates the configured vCPUs with the CPUID KVM supports
// and their reset state.
func (m *Machine) createVCPUs() error {
	supported, err := m.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	for i := 0; i < m.cfg.CPUs; i++ {
		v, err := m.newVCPU(i, supported)
		if err != nil {
			return err
		}
		m.vcpus = append(m.vcpus, v)
	}
	return nil
}

// cmdline returns the kernel command line with any host workarounds added.
func (m *Machine) cmdline() string {
	c := withDriveRoot(m.cfg.Cmdline, m.cfg.Drives)
	if !m.pvm {
		return c
	}
	var tscKHz uint32
	if len(m.vcpus) > 0 {
		if khz, err := m.vcpus[0].kvm.TSCKHz(); err == nil {
			tscKHz = khz
		}
	}
	return pvmCmdline(c, tscKHz)
}

// irqLine drives one in-kernel irqchip input from a device's level.
type irqLine struct {
	vm  *kvm.VM
	irq uint32
}

func (l irqLine) SetLevel(high bool) error { return l.vm.IRQLine(l.irq, high) }

// sink swallows accesses to ports guests poke without expecting an answer.
type sink struct{}

func (sink) Read(_ uint64, data []byte) { clear(data) }
func (sink) Write(uint64, []byte)       {}

func (m *Machine) setupDevices() error {
	m.pio = devices.NewBus("pio")
	m.mmio = devices.NewBus("mmio")
	out := m.cfg.ConsoleOut
	m.uart = serial.New(irqLine{m.vm, com1IRQ}, out)
	kbd := i8042.New(irqLine{m.vm, kbdIRQ}, func() { m.finish(Exit{Kind: ExitReset}) })
	m.kbd = kbd
	pm := acpipm.New(func() { m.finish(Exit{Kind: ExitPowerOff}) }, func() { m.finish(Exit{Kind: ExitReset}) })
	m.rtc = rtc.New()
	regs := []struct {
		name       string
		base, size uint64
		dev        devices.Device
	}{
		{"com1", com1Port, serial.PortCount, m.uart},
		{"i8042-data", i8042Data, 1, kbd.Data()},
		{"i8042-cmd", i8042Cmd, 1, kbd.Command()},
		{"rtc", rtcPort, rtc.Size, m.rtc},
		{"acpi-pm", pmPort, acpipm.Size, pm},
		{"post", postPort, postSize, sink{}},
	}
	if m.cfg.DebugExit {
		regs = append(regs, struct {
			name       string
			base, size uint64
			dev        devices.Device
		}{"debug-exit", exitPort, debugexit.Size, debugexit.New(func(s int) { m.finish(Exit{Kind: ExitDebugPort, Status: s}) })})
	}
	for _, r := range regs {
		if err := m.pio.Register(r.name, r.base, r.size, r.dev); err != nil {
			return err
		}
	}
	return nil
}

// startConsole starts feeding host console input to COM1: the last step
// of building a machine, New's or Restore's. Earlier, a restore of the
// UART's state would drop what was read meanwhile, and a machine that then
// failed to build would leave its reader behind, taking input from the
// next machine on the same console.
func (m *Machine) startConsole() {
	if m.cfg.ConsoleIn != nil {
		go m.pumpConsole()
	}
}

// pumpConsole feeds host console input to COM1 until EOF. It is not joined
// on shutdown: a read from a terminal can't be interrupted, and the
// goroutine ends at its next read once the UART is closed.
func (m *Machine) pumpConsole() {
	buf := make([]byte, 256)
	for {
		n, err := m.cfg.ConsoleIn.Read(buf)
		if n > 0 {
			if _, werr := m.uart.QueueInput(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// finish records the first way the machine ended and wakes Run.
func (m *Machine) finish(e Exit) {
	m.exitOnce.Do(func() { m.exitCh <- e })
}

// Run starts every vCPU and blocks until the guest powers off or resets, a
// vCPU fails, or ctx is cancelled; then it stops and joins all vCPUs.
func (m *Machine) Run(ctx context.Context) Exit {
	start := time.Now()
	reserveVCPUProcs(len(m.vcpus))
	m.setRunning(true)
	var wg sync.WaitGroup
	for _, v := range m.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := v.loop(); err != nil {
				m.finish(Exit{Kind: ExitFailed, Err: err})
			}
		}()
	}
	var stopSampler func()
	if m.cfg.SampleRIP > 0 {
		stopSampler = m.startSampler(m.cfg.SampleRIP)
	}
	var e Exit
	select {
	case e = <-m.exitCh:
	case <-ctx.Done():
		m.finish(Exit{Kind: ExitStopped, Err: ctx.Err()})
		e = <-m.exitCh
	}
	if stopSampler != nil {
		stopSampler()
	}
	for _, v := range m.vcpus {
		v.stop()
	}
	m.setRunning(false)
	wg.Wait()
	m.uart.Flush()
	m.log.Info("machine stopped", "reason", e.Kind, "status", e.Status, "err", e.Err, "uptime", time.Since(start).Round(time.Millisecond))
	if m.syms != nil && m.cfg.SampleRIP > 0 {
		m.reportSamples(20)
	}
	return e
}

// Close releases everything New acquired. Call it after Run returns.
func (m *Machine) Close() error {
	var errs []error
	if m.uart != nil {
		errs = append(errs, m.uart.Close())
	}
	// PCI devices stop their I/O before guest memory goes away.
	errs = append(errs, m.closePCI())
	for _, v := range m.vcpus {
		errs = append(errs, v.kvm.Close())
	}
	m.vcpus = nil
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
	}
	if m.sys != nil {
		errs = append(errs, m.sys.Close())
	}
	return errors.Join(errs...)
}

// systemMapBeside finds System.map next to a kernel image.
func systemMapBeside(kernel string) string {
	p := filepath.Join(filepath.Dir(kernel), "System.map")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}
