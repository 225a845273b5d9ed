package vmm

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/govmm/vmm/boot"
	"github.com/govmm/vmm/devices/eventfd"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/blk"
)

// The PCI host bridge's resources, described to the guest in the DSDT.
// BARs come from the bottom of the 32-bit MMIO hole; the rest of the hole
// (up to the I/O APIC) stays free for an ECAM window and later platform
// devices.
const (
	pciMMIOStart = boot.MMIOHoleStart // 0xC000_0000
	pciMMIOEnd   = 0xE000_0000
	// firstMSIGSI is the first GSI above the IOAPIC's 24 pins: MSI routes
	// live there.
	firstMSIGSI = 24
)

// pciState is the machine's PCI bus and the devices on it.
type pciState struct {
	bus     *pci.Bus
	msi     *msiRouter
	closers []io.Closer
	drives  map[string]*blk.Block // by drive id
}

// hasPCI reports whether the configuration needs a PCI bus at all; without
// PCI devices the machine stays as small as before.
func hasPCI(cfg Config) bool {
	return len(cfg.Drives) > 0 || len(cfg.Nets) > 0 || cfg.Vsock != nil
}

// pciACPI describes the host bridge for the DSDT, nil without PCI.
func pciACPI(cfg Config) *boot.PCIHostBridge {
	if !hasPCI(cfg) {
		return nil
	}
	return &boot.PCIHostBridge{
		ConfigPort: pci.ConfigAddressPort,
		MMIOBase:   pciMMIOStart,
		MMIOSize:   pciMMIOEnd - pciMMIOStart,
	}
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
// #1 and one virtio-pci function per drive. Image problems (missing,
// unreadable, locked by another VM) surface here, before the guest runs.
func (m *Machine) setupPCI() (err error) {
	if !hasPCI(m.cfg) {
		return nil
	}
	if len(m.cfg.Drives) > 26 {
		return fmt.Errorf("%d drives: at most 26 are supported", len(m.cfg.Drives))
	}
	st := &pciState{bus: pci.NewBus(m.mmio, pciMMIOStart, pciMMIOEnd), msi: &msiRouter{vm: m.vm, next: firstMSIGSI}, drives: map[string]*blk.Block{}}
	m.pci = st
	if err := m.pio.Register("pci-config-address", pci.ConfigAddressPort, 4, st.bus.AddressPort()); err != nil {
		return err
	}
	if err := m.pio.Register("pci-config-data", pci.ConfigDataPort, 4, st.bus.DataPort()); err != nil {
		return err
	}
	ioe := ioEventRegistrar{m.vm}
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
		dev, err := blk.Open(blk.Config{ID: id, Path: d.Path, ReadOnly: d.ReadOnly, NumQueues: m.cfg.CPUs})
		if err != nil {
			return err
		}
		st.closers = append(st.closers, dev)
		st.drives[id] = dev
		t, err := virtio.NewPCI(dev, virtio.PCIOptions{
			Name: "virtio-blk-" + id, Class: pci.ClassStorageOther, Mem: m.mem, Log: m.log,
			MSI: st.msi, IOEvents: ioe,
		})
		if err != nil {
			return fmt.Errorf("virtio-blk %s: %w", id, err)
		}
		// The transport stops the device before the image is closed.
		st.closers = append(st.closers[:len(st.closers)-1], t, dev)
		slot, err := st.bus.Add(t)
		if err != nil {
			return fmt.Errorf("virtio-blk %s: %w", id, err)
		}
		m.log.Debug("virtio-blk attached", "id", id, "path", d.Path, "ro", d.ReadOnly, "pci", fmt.Sprintf("00:%02x.0", slot),
			"bar0", fmt.Sprintf("%#x", t.Config().BARAddr(0)), "sectors", dev.Sectors())
	}
	if err := m.setupNets(st, ioe); err != nil {
		return err
	}
	if err := m.setupVsock(st, ioe); err != nil {
		return err
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
	st.bus.Close()
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
