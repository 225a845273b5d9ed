package vmm

import (
	"fmt"
	"io"
	"slices"

	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/rng"
)

// PCI class codes of the virtio functions (PCI Code and ID Assignment
// Specification).
const (
	// pciClassNetworkEthernet: base class 02h, subclass 00h.
	pciClassNetworkEthernet = 0x020000
	// pciClassCommunicationOther: base class 07h, subclass 80h, the class
	// virtio-vsock functions carry.
	pciClassCommunicationOther = 0x078000
	// pciClassUnassigned: base class FFh, "device does not fit in any
	// defined class", which virtio entropy functions carry (as QEMU's).
	pciClassUnassigned = 0xff0000
)

// virtioKind is one row of the device table: a kind of virtio device a
// Config can ask for.
type virtioKind struct {
	// name prefixes logs and errors; with a device's id it names the
	// transport ("virtio-blk-rootfs").
	name  string
	class uint32 // PCI class code of its functions
	// configured reports whether cfg asks for any device of the kind.
	configured func(cfg *Config) bool
	// open makes each device of the kind cfg asks for, in slot order, and
	// hands it to attach, which puts it on the bus and takes care of
	// closing it. A device open refuses what the Config gets wrong before
	// it opens anything of the host's.
	open func(m *Machine, attach func(virtioFunc) error) error
	// save records the device's own state (not the transport's) in its
	// kind's field of fs; the device is paused.
	save func(m *Machine, dev virtio.Device, fs *functionState) error
	// restore rebuilds the device fs describes, with the host resources
	// Config names now (a restore may override taps and sockets), and
	// hands it to attach as open does.
	restore func(m *Machine, fs functionState, attach func(virtioFunc) error) error
}

// virtioFunc is one device made by a virtioKind's open, ready for its PCI
// transport.
type virtioFunc struct {
	id  string
	dev virtio.Device
	// backend holds the device's host resources (image, tap, sockets),
	// nil when it has none. It is closed after the transport, which stops
	// the device first.
	backend io.Closer
	// log is what the "attached" debug line says besides id and slot.
	log []any
}

// virtioKinds is the device table. Functions take bus slots in its order:
// drives, then network interfaces, vsock and entropy.
var virtioKinds = []virtioKind{
	{name: "virtio-blk", class: pci.ClassStorageOther, configured: func(c *Config) bool { return len(c.Drives) > 0 },
		open: (*Machine).openDrives, save: saveDrive, restore: (*Machine).restoreDrive},
	{name: "virtio-net", class: pciClassNetworkEthernet, configured: func(c *Config) bool { return len(c.Nets) > 0 },
		open: (*Machine).openNets, save: saveNet, restore: (*Machine).restoreNet},
	{name: "virtio-vsock", class: pciClassCommunicationOther, configured: func(c *Config) bool { return c.Vsock != nil },
		open: (*Machine).openVsock, save: saveVsock, restore: (*Machine).restoreVsock},
	{name: "virtio-rng", class: pciClassUnassigned, configured: func(c *Config) bool { return c.Entropy != nil },
		open: (*Machine).openEntropy, save: saveEntropy, restore: (*Machine).restoreEntropy},
}

// kindNamed returns the device table's row called name.
func kindNamed(name string) (*virtioKind, bool) {
	for i := range virtioKinds {
		if virtioKinds[i].name == name {
			return &virtioKinds[i], true
		}
	}
	return nil, false
}

// hasPCI reports whether the configuration needs a PCI bus at all; without
// PCI devices the machine stays as small as before.
func hasPCI(cfg Config) bool {
	return slices.ContainsFunc(virtioKinds, func(k virtioKind) bool { return k.configured(&cfg) })
}

// attachVirtio opens every configured device, kind by kind, and puts each
// on the bus.
func (m *Machine) attachVirtio(st *pciState, ioe ioEventRegistrar) error {
	for _, k := range virtioKinds {
		if !k.configured(&m.cfg) {
			continue
		}
		if err := k.open(m, func(f virtioFunc) error { return m.attach(st, ioe, k, f) }); err != nil {
			return err
		}
	}
	return nil
}

// attach wraps f in a virtio-pci transport and adds it to the bus. Every
// device closes in the same order: its transport (which stops the device)
// and then its back end. The back end is in the close list from the start,
// so it is released whatever fails here.
func (m *Machine) attach(st *pciState, ioe ioEventRegistrar, k virtioKind, f virtioFunc) error {
	if f.backend != nil {
		st.closers = append(st.closers, f.backend)
	}
	t, err := virtio.NewPCI(f.dev, virtio.PCIOptions{
		Name: k.name + "-" + f.id, Class: k.class, Mem: m.mem, Log: m.log,
		MSI: st.msi, IOEvents: ioe,
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", k.name, f.id, err)
	}
	if f.backend != nil {
		st.closers = append(st.closers[:len(st.closers)-1], t, f.backend)
	} else {
		st.closers = append(st.closers, t)
	}
	slot, err := st.bus.Add(t)
	if err != nil {
		return fmt.Errorf("%s %s: %w", k.name, f.id, err)
	}
	st.funcs = append(st.funcs, pciFunc{kind: k.name, id: f.id, slot: slot, t: t, dev: f.dev})
	attrs := append([]any{"id", f.id}, f.log...)
	attrs = append(attrs, "pci", fmt.Sprintf("00:%02x.0", slot), "bar0", fmt.Sprintf("%#x", t.Config().BARAddr(0)))
	m.log.Debug(k.name+" attached", attrs...)
	return nil
}

// entropyID names the one virtio-rng device in logs.
const entropyID = "entropy"

// openEntropy makes the virtio-rng device when configured.
func (m *Machine) openEntropy(attach func(virtioFunc) error) error {
	dev, err := rng.New(rng.Config{ID: entropyID}, m.log)
	if err != nil {
		return err
	}
	return attach(virtioFunc{id: entropyID, dev: dev})
}
