package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/govmm/vmm/boot"
	"github.com/govmm/vmm/devices/eventfd"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/blk"
)

// The PCI host bridge's resources, described to the guest in the DSDT
// (and the ECAM window in MCFG and the e820 map). 32-bit BARs come from the
// bottom of the 32-bit MMIO hole, 64-bit prefetchable ones from a window
// above RAM; the rest of the hole (up to the I/O APIC) stays free for later
// platform devices.
const (
	pciMMIOStart = boot.MMIOHoleStart // 0xC000_0000
	pciMMIOEnd   = 0xE000_0000
	// pciECAMBase is bus 0's ECAM window (1 MiB): the first address above
	// the 32-bit BAR window, 256 MiB aligned as chipsets place it (PCI
	// Firmware Specification 3.x asks for 1 MiB per bus).
	pciECAMBase = pciMMIOEnd
	// pciMMIO64Size is the size of the window above RAM for 64-bit
	// prefetchable BARs (it starts at boot.HighMMIOStart): 32 GiB, as
	// QEMU's default 64-bit hole, ending well inside the 36 bits of
	// physical address every x86-64 CPU has while RAM stays below 28 GiB.
	pciMMIO64Size = 32 << 30
	// pciINTxFirstGSI and pciINTxGSIs: the devices' INTx# pins reach I/O
	// APIC inputs 16-23, the ones above the ISA IRQs (pci.INTxRouting
	// spreads them over the slots), level-triggered through irqfds with a
	// resample fd.
	pciINTxFirstGSI = 16
	pciINTxGSIs     = 8
	// firstMSIGSI is the first GSI above the IOAPIC's 24 pins: MSI routes
	// live there.
	firstMSIGSI = 24
)

// pciINTxRouting is how bus 0's interrupt pins reach GSIs, for the bus and
// the DSDT's _PRT alike.
var pciINTxRouting = pci.INTxRouting{FirstGSI: pciINTxFirstGSI, Count: pciINTxGSIs}

// pciState is the machine's PCI bus and the devices on it.
type pciState struct {
	bus     *pci.Bus
	msi     pci.MSIAllocator // the VM's msiRouter; tests without KVM substitute one
	closers []io.Closer
	drives  map[string]*blk.Block // by drive id
	funcs   []pciFunc             // the virtio functions, in slot order
}

// pciFunc is one virtio function on the bus.
type pciFunc struct {
	kind string // its virtioKind's name
	id   string
	slot int
	t    *virtio.PCI
	dev  virtio.Device
}

// pciACPI describes the host bridge for the ACPI tables, nil without PCI.
func pciACPI(cfg Config) *boot.PCIHostBridge {
	if !hasPCI(cfg) {
		return nil
	}
	h := &boot.PCIHostBridge{
		ConfigPort: pci.ConfigAddressPort,
		MMIOBase:   pciMMIOStart,
		MMIOSize:   pciMMIOEnd - pciMMIOStart,
		MMIO64Base: boot.HighMMIOStart(cfg.MemSize),
		MMIO64Size: pciMMIO64Size,
		ECAMBase:   pciECAMBase,
	}
	// Every slot's four pins, as firmware describes a bus whatever is
	// plugged in (slot 0, the host bridge, has none).
	for dev := 1; dev < pci.MaxDevices; dev++ {
		for pin := 1; pin <= 4; pin++ {
			h.INTx = append(h.INTx, boot.PCIINTxRoute{Device: uint8(dev), Pin: uint8(pin - 1), GSI: pciINTxRouting.GSI(dev, pin)})
		}
	}
	return h
}

// pciReserved returns the e820 reservations PCI needs: the ECAM window,
// which Linux checks against the memory map before it trusts MCFG (early,
// when firmware has no DMI date of 2016 or later) besides looking for the
// PNP0C02 device that reserves it.
func pciReserved(cfg Config) []boot.E820Entry {
	if !hasPCI(cfg) {
		return nil
	}
	return []boot.E820Entry{{Addr: pciECAMBase, Size: pci.ECAMBusSize, Type: boot.E820Reserved}}
}

// withDriveRoot appends root= for the drive marked Root. Disks appear to
// Linux in PCI slot order, which is the order of cfg.Drives: vda, vdb, ...
func withDriveRoot(cmdline string, drives []DriveConfig) string {
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "root=") {
			return cmdline // the user's choice wins
		}
	}
	for i, d := range drives {
		if !d.Root {
			continue
		}
		root := "root=/dev/vd" + string(rune('a'+i))
		if d.PartUUID != "" {
			root = "root=PARTUUID=" + d.PartUUID
		}
		if d.ReadOnly {
			root += " ro"
		} else {
			root += " rw"
		}
		return strings.TrimSpace(cmdline + " " + root)
	}
	return cmdline
}

// setupPCI creates bus 0 with its host bridge on configuration mechanism
// #1 and ECAM, and one virtio-pci function per device of the device table
// (virtioKinds). Device problems (an image missing, unreadable or locked
// by another VM, a tap that can't be opened) surface here, before the
// guest runs.
func (m *Machine) setupPCI() error {
	if !hasPCI(m.cfg) {
		return nil
	}
	if err := m.setupPCIBus(); err != nil {
		return err
	}
	return m.attachVirtio(m.pci, ioEventRegistrar{m.vm})
}

// setupPCIBus creates bus 0, empty but for the host bridge, with its
// configuration front ends.
func (m *Machine) setupPCIBus() error {
	mmio64 := boot.HighMMIOStart(m.cfg.MemSize)
	st := &pciState{
		bus: pci.NewBusWith(pci.BusConfig{
			MMIO:       m.mmio,
			Mem32Start: pciMMIOStart, Mem32End: pciMMIOEnd,
			Mem64Start: mmio64, Mem64End: mmio64 + pciMMIO64Size,
			INTx: &intxRouter{vm: m.vm, log: m.log}, INTxRouting: pciINTxRouting,
		}),
		msi:    &msiRouter{vm: m.vm, next: firstMSIGSI},
		drives: map[string]*blk.Block{},
	}
	m.pci = st
	if err := m.pio.Register("pci-config-address", pci.ConfigAddressPort, 4, st.bus.AddressPort()); err != nil {
		return err
	}
	if err := m.pio.Register("pci-config-data", pci.ConfigDataPort, 4, st.bus.DataPort()); err != nil {
		return err
	}
	return m.mmio.Register("pci-ecam", pciECAMBase, pci.ECAMBusSize, st.bus.ECAM())
}

// openDrives opens one virtio-blk device per drive, vda first. The drive
// count is Config.Validate's to check (CheckDrives).
func (m *Machine) openDrives(attach func(virtioFunc) error) error {
	seen := map[string]bool{}
	for i, d := range m.cfg.Drives {
		id := d.ID
		if id == "" {
			id = fmt.Sprintf("drive%d", i)
		}
		if seen[id] {
			return fmt.Errorf("drive id %q used twice", id)
		}
		seen[id] = true
		dev, err := blk.Open(blk.Config{ID: id, Path: d.Path, ReadOnly: d.ReadOnly, Direct: d.Direct, Engine: blk.Engine(d.IOEngine), NumQueues: m.cfg.CPUs})
		if err != nil {
			return err
		}
		m.pci.drives[id] = dev
		if err := attach(virtioFunc{id: id, dev: dev, backend: dev, log: []any{
			"path", d.Path, "ro", d.ReadOnly, "direct", d.Direct, "engine", dev.EngineInUse(), "sectors", dev.Sectors(),
		}}); err != nil {
			return err
		}
	}
	return nil
}

// UpdateDrive swaps the backing image of the drive with the given ID (the
// DriveConfig's ID, or drive<N> for an unnamed one) while the guest runs,
// as Firecracker's PATCH /drives/{id} with path_on_host: the guest sees a
// configuration change with the new capacity. On failure the old image
// stays in service. See blk.Block.Swap.
func (m *Machine) UpdateDrive(id, path string) error {
	m.pciMu.Lock()
	defer m.pciMu.Unlock()
	var dev *blk.Block
	if m.pci != nil {
		dev = m.pci.drives[id]
	}
	if dev == nil {
		return fmt.Errorf("no virtio-blk drive with id %q", id)
	}
	before := dev.Sectors()
	if err := dev.Swap(path); err != nil {
		return err
	}
	m.log.Info("drive swapped", "id", id, "path", path, "sectors", dev.Sectors(), "previous_sectors", before)
	return nil
}

// closePCI stops every PCI device and releases images, eventfds and routes.
func (m *Machine) closePCI() error {
	m.pciMu.Lock()
	st := m.pci
	m.pci = nil
	m.pciMu.Unlock()
	if st == nil {
		return nil
	}
	var errs []error
	for _, c := range st.closers {
		errs = append(errs, c.Close())
	}
	errs = append(errs, st.bus.Close())
	return errors.Join(errs...)
}

// ioEventRegistrar binds queue notify addresses to eventfds in KVM.
type ioEventRegistrar struct{ vm *kvm.VM }

func (r ioEventRegistrar) RegisterIOEvent(addr uint64, size uint32, fd int) error {
	return r.vm.RegisterIOEventFD(kvm.IOEventFD{Addr: addr, Len: size, FD: fd})
}

func (r ioEventRegistrar) UnregisterIOEvent(addr uint64, size uint32, fd int) error {
	return r.vm.UnregisterIOEventFD(kvm.IOEventFD{Addr: addr, Len: size, FD: fd})
}

// msiRouter owns the MSI part of the VM's GSI routing table. Each MSI-X
// vector gets its own GSI and an eventfd bound to it with irqfd; a route
// update rewrites the whole table (KVM_SET_GSI_ROUTING replaces it), the
// legacy routes first.
type msiRouter struct {
	vm     *kvm.VM
	mu     sync.Mutex
	next   uint32
	routes map[uint32]kvm.RoutingEntry
}

// NewMSIRoute implements pci.MSIAllocator.
func (r *msiRouter) NewMSIRoute() (pci.MSIRoute, error) {
	r.mu.Lock()
	gsi := r.next
	r.next++
	r.mu.Unlock()
	e, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	if err := r.vm.RegisterIRQFD(e.FD(), gsi, -1); err != nil {
		e.Close()
		return nil, err
	}
	return &msiRoute{r: r, gsi: gsi, efd: e}, nil
}

func (r *msiRouter) set(gsi uint32, e *kvm.RoutingEntry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routes == nil {
		r.routes = map[uint32]kvm.RoutingEntry{}
	}
	if e == nil {
		delete(r.routes, gsi)
	} else {
		r.routes[gsi] = *e
	}
	table := kvm.DefaultRouting()
	for _, e := range r.routes {
		table = append(table, e)
	}
	return r.vm.SetGSIRouting(table)
}

// msiRoute is one MSI-X vector's GSI and irqfd.
type msiRoute struct {
	r   *msiRouter
	gsi uint32
	efd *eventfd.EventFD
}

func (m *msiRoute) Update(addrLo, addrHi, data uint32) error {
	return m.r.set(m.gsi, &kvm.RoutingEntry{GSI: m.gsi, Type: kvm.RoutingMSI, AddressLo: addrLo, AddressHi: addrHi, Data: data})
}

func (m *msiRoute) Signal() error { return m.efd.Signal() }

func (m *msiRoute) Close() error {
	err := m.r.vm.UnregisterIRQFD(m.efd.FD(), m.gsi)
	if err2 := m.r.set(m.gsi, nil); err == nil {
		err = err2
	}
	return errors.Join(err, m.efd.Close())
}

// intxRouter connects PCI interrupt pins to I/O APIC inputs. Each pin gets
// an irqfd with a resample fd (KVM_IRQFD_FLAG_RESAMPLE): signalling the
// irqfd raises the GSI and keeps it raised; when the guest EOIs the
// interrupt KVM lowers it and signals the resample fd, and the line is
// raised again if the device still asserts its pin (for virtio: the ISR
// status was not read). That is a level-triggered input without a vCPU exit
// per interrupt. Pins sharing a GSI share KVM's resampler, which lowers the
// line for all and asks each again: a wired OR.
//
// On kvm-pvm hosts KVM acknowledges a level-triggered I/O APIC interrupt
// when it injects it, not at the guest's EOI (measured with the test
// guest's blk=intx; KVM_IRQ_LINE behaves the same there): the resample then
// finds the ISR not yet read and raises the line again, so one spurious
// interrupt follows each real one, which the guest's handler finds with a
// clear ISR. It never becomes a storm: by the next injection the ISR has
// been read.
type intxRouter struct {
	vm  *kvm.VM
	log *slog.Logger
}

// NewLevelIRQ implements pci.LevelIRQAllocator.
func (r *intxRouter) NewLevelIRQ(gsi uint32, asserted func() bool) (pci.LevelIRQ, error) {
	trigger, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	resample, err := eventfd.New()
	if err != nil {
		trigger.Close()
		return nil, err
	}
	if err := r.vm.RegisterIRQFD(trigger.FD(), gsi, resample.FD()); err != nil {
		trigger.Close()
		resample.Close()
		// A KVM without irqfd resampling still has KVM_IRQ_LINE, level
		// exact but a vCPU-independent ioctl per edge, and not shareable.
		r.log.Warn("PCI INTx: irqfd with resample failed, using KVM_IRQ_LINE", "gsi", gsi, "err", err)
		return &irqLineLevel{vm: r.vm, gsi: gsi}, nil
	}
	l := &resampledIRQ{vm: r.vm, gsi: gsi, trigger: trigger, resample: resample, asserted: asserted, done: make(chan struct{})}
	go l.resampler()
	return l, nil
}

// resampledIRQ is a level-triggered GSI driven through an irqfd with a
// resample fd.
type resampledIRQ struct {
	vm                *kvm.VM
	gsi               uint32
	trigger, resample *eventfd.EventFD
	asserted          func() bool
	done              chan struct{}
}

// Assert raises the line; KVM keeps it raised until the guest's EOI.
func (l *resampledIRQ) Assert() error { return l.trigger.Signal() }

// Deassert does nothing: KVM lowers the line at the EOI, and the resampler
// leaves it low once the device no longer asserts its pin.
func (l *resampledIRQ) Deassert() error { return nil }

// resampler raises the line again after each EOI while the pin is still
// asserted.
func (l *resampledIRQ) resampler() {
	defer close(l.done)
	for {
		if _, err := l.resample.Wait(); err != nil {
			return
		}
		if l.asserted() {
			_ = l.trigger.Signal()
		}
	}
}

func (l *resampledIRQ) Close() error {
	err := l.vm.UnregisterIRQFD(l.trigger.FD(), l.gsi)
	l.resample.Close()
	<-l.done
	return errors.Join(err, l.trigger.Close())
}

// irqLineLevel drives a GSI with KVM_IRQ_LINE.
type irqLineLevel struct {
	vm  *kvm.VM
	gsi uint32
}

func (l *irqLineLevel) Assert() error   { return l.vm.IRQLine(l.gsi, true) }
func (l *irqLineLevel) Deassert() error { return l.vm.IRQLine(l.gsi, false) }
func (l *irqLineLevel) Close() error    { return l.vm.IRQLine(l.gsi, false) }
