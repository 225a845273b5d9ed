package vmm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/blk"
	"github.com/govmm/vmm/virtio/net"
	"github.com/govmm/vmm/virtio/rng"
	"github.com/govmm/vmm/virtio/vsock"
)

// pciSnapshot is the PCI bus and its virtio functions in a snapshot.
type pciSnapshot struct {
	Bus       pci.BusState
	Functions []functionState // in slot order
	// INTx is the level of every connected interrupt pin; KVM's saved
	// irqchip has the I/O APIC's request bits but not which source holds
	// a line (pci.Bus.RestoreINTx).
	INTx pci.INTxState
}

// functionState is one virtio function: its row of the device table, its
// transport and its device. Exactly the field of its kind is set.
type functionState struct {
	Kind      string
	ID        string
	Slot      int
	Transport virtio.PCIState
	Blk       *blk.State   `json:",omitempty"`
	Net       *net.State   `json:",omitempty"`
	Tap       string       `json:",omitempty"` // the host side of Net
	Vsock     *vsock.State `json:",omitempty"`
	Rng       *rng.State   `json:",omitempty"`
}

// pausePCI stops every virtio device (virtio.PCI.Pause) so that nothing
// writes guest memory while it is saved. It returns the function that
// starts them again; on error the devices already paused are resumed.
func (m *Machine) pausePCI() (resume func() error, err error) {
	m.pciMu.Lock()
	st := m.pci
	m.pciMu.Unlock()
	if st == nil {
		return func() error { return nil }, nil
	}
	var paused []*virtio.PCI
	resume = func() error {
		var errs []error
		for _, t := range paused {
			errs = append(errs, t.Resume())
		}
		return errors.Join(errs...)
	}
	for _, f := range st.funcs {
		if err := f.t.Pause(); err != nil {
			return nil, errors.Join(fmt.Errorf("pause %s %s: %w", f.kind, f.id, err), resume())
		}
		paused = append(paused, f.t)
	}
	return resume, nil
}

// savePCI returns the state of the bus and every function; the devices
// are paused (pausePCI).
func (m *Machine) savePCI() (*pciSnapshot, error) {
	m.pciMu.Lock()
	st := m.pci
	m.pciMu.Unlock()
	if st == nil {
		return nil, nil
	}
	s := &pciSnapshot{Bus: st.bus.State(), INTx: st.bus.INTxState()}
	for _, f := range st.funcs {
		k, ok := kindNamed(f.kind)
		if !ok {
			return nil, fmt.Errorf("%s %s: not in the device table", f.kind, f.id)
		}
		ts, err := f.t.State()
		if err != nil {
			return nil, err
		}
		fs := functionState{Kind: f.kind, ID: f.id, Slot: f.slot, Transport: ts}
		if err := k.save(m, f.dev, &fs); err != nil {
			return nil, fmt.Errorf("%s %s: %w", f.kind, f.id, err)
		}
		s.Functions = append(s.Functions, fs)
	}
	return s, nil
}

// restorePCI builds the bus as setupPCI does and puts back every function
// s lists, in its slot, with its saved state; devices the driver had
// started start again. m.cfg must already describe the devices (see
// configFromSnapshot), as GET /vm/config reports it.
func (m *Machine) restorePCI(s *pciSnapshot) error {
	if s == nil {
		return nil
	}
	if err := m.setupPCIBus(); err != nil {
		return err
	}
	return m.restoreFunctions(m.pci, ioEventRegistrar{m.vm}, s)
}

// restoreFunctions is restorePCI once the bus exists.
func (m *Machine) restoreFunctions(st *pciState, ioe ioEventRegistrar, s *pciSnapshot) error {
	if err := st.bus.Restore(s.Bus); err != nil {
		return err
	}
	for _, fs := range s.Functions {
		k, ok := kindNamed(fs.Kind)
		if !ok {
			return fmt.Errorf("snapshot has a device of kind %q, which this build does not have", fs.Kind)
		}
		before := len(st.funcs)
		if err := k.restore(m, fs, func(f virtioFunc) error { return m.attach(st, ioe, *k, f) }); err != nil {
			return err
		}
		if len(st.funcs) != before+1 {
			return fmt.Errorf("%s %s: restore attached %d functions, want 1", fs.Kind, fs.ID, len(st.funcs)-before)
		}
		f := st.funcs[before]
		if f.slot != fs.Slot {
			return fmt.Errorf("%s %s: restored in slot %d, saved in slot %d", fs.Kind, fs.ID, f.slot, fs.Slot)
		}
		if err := f.t.Restore(fs.Transport); err != nil {
			return err
		}
	}
	// Once every function is back: a pin's level follows from its
	// function's restored registers.
	return st.bus.RestoreINTx(s.INTx)
}

// checkFunction refuses a function state whose kind field is missing.
func checkFunction[T any](fs functionState, st *T) (T, error) {
	var zero T
	if st == nil {
		return zero, fmt.Errorf("%s %s: no device state in the snapshot", fs.Kind, fs.ID)
	}
	return *st, nil
}

func saveDrive(_ *Machine, dev virtio.Device, fs *functionState) error {
	b, ok := dev.(*blk.Block)
	if !ok {
		return fmt.Errorf("device is a %T", dev)
	}
	st := b.State()
	fs.Blk = &st
	return nil
}

// restoreDrive reopens the image m.cfg names for the drive (the
// snapshot's, or a drive override), which must be the size the guest was
// told (blk.Restore).
func (m *Machine) restoreDrive(fs functionState, attach func(virtioFunc) error) error {
	st, err := checkFunction(fs, fs.Blk)
	if err != nil {
		return err
	}
	for i, d := range m.cfg.Drives {
		if driveID(i, d) == st.ID {
			st.Path = d.Path
		}
	}
	dev, err := blk.Restore(st)
	if err != nil {
		return err
	}
	m.pci.drives[st.ID] = dev
	return attach(virtioFunc{id: st.ID, dev: dev, backend: dev, log: []any{"path", st.Path, "ro", st.ReadOnly, "restored", true}})
}

func saveNet(m *Machine, dev virtio.Device, fs *functionState) error {
	n, ok := dev.(*net.Net)
	if !ok {
		return fmt.Errorf("device is a %T", dev)
	}
	st := n.State()
	fs.Net = &st
	i := slices.IndexFunc(m.cfg.Nets, func(c NetConfig) bool { return c.ID == st.ID })
	if i < 0 {
		return fmt.Errorf("no network interface %q in the machine's configuration", st.ID)
	}
	fs.Tap = m.cfg.Nets[i].Tap
	return nil
}

// restoreNet opens the tap m.cfg names for the interface (the saved one,
// or Firecracker's network_overrides' host_dev_name).
func (m *Machine) restoreNet(fs functionState, attach func(virtioFunc) error) error {
	st, err := checkFunction(fs, fs.Net)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(m.cfg.Nets, func(c NetConfig) bool { return c.ID == st.ID })
	if i < 0 {
		return fmt.Errorf("virtio-net %s: no tap for it", st.ID)
	}
	tapName := m.cfg.Nets[i].Tap
	var taps []*net.Tap
	if st.QueuePairs == 1 {
		tap, err := net.OpenTap(tapName)
		if err != nil {
			return fmt.Errorf("virtio-net %s: %w", st.ID, err)
		}
		taps = []*net.Tap{tap}
	} else if taps, err = net.OpenTapQueues(tapName, st.QueuePairs); err != nil {
		return fmt.Errorf("virtio-net %s: %w", st.ID, err)
	}
	backends := make([]net.Backend, len(taps))
	for i, tap := range taps {
		backends[i] = tap
	}
	dev, err := net.Restore(st, backends...)
	if err != nil {
		for _, tap := range taps {
			tap.Close()
		}
		return err
	}
	return attach(virtioFunc{id: st.ID, dev: dev, backend: dev, log: []any{"tap", tapName, "restored", true}})
}

func saveVsock(_ *Machine, dev virtio.Device, fs *functionState) error {
	d, ok := dev.(*vsock.Device)
	if !ok {
		return fmt.Errorf("device is a %T", dev)
	}
	st := d.State()
	fs.Vsock = &st
	return nil
}

// restoreVsock listens on the socket m.cfg names (the saved one, or
// Firecracker's vsock_override).
func (m *Machine) restoreVsock(fs functionState, attach func(virtioFunc) error) error {
	st, err := checkFunction(fs, fs.Vsock)
	if err != nil {
		return err
	}
	if m.cfg.Vsock == nil {
		return fmt.Errorf("virtio-vsock %s: no socket for it", st.ID)
	}
	st.UDSPath = m.cfg.Vsock.UDSPath
	dev, err := vsock.Restore(st, m.log)
	if err != nil {
		return err
	}
	return attach(virtioFunc{id: st.ID, dev: dev, backend: dev, log: []any{"uds", st.UDSPath, "restored", true}})
}

func saveEntropy(_ *Machine, dev virtio.Device, fs *functionState) error {
	d, ok := dev.(*rng.Device)
	if !ok {
		return fmt.Errorf("device is a %T", dev)
	}
	st := d.State()
	fs.Rng = &st
	return nil
}

func (m *Machine) restoreEntropy(fs functionState, attach func(virtioFunc) error) error {
	st, err := checkFunction(fs, fs.Rng)
	if err != nil {
		return err
	}
	dev, err := rng.Restore(st, nil, m.log)
	if err != nil {
		return err
	}
	return attach(virtioFunc{id: st.ID, dev: dev})
}
