package vmm

import (
	"fmt"

	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/vsock"
)

// pciClassCommunicationOther is the "other communication controller" class
// code (PCI Code and ID Assignment Specification, base class 07h, subclass
// 80h), the class virtio-vsock functions carry.
const pciClassCommunicationOther = 0x078000

// setupVsock adds the virtio-vsock function when configured. Its Unix
// socket is created here, so a bad path or one in use surfaces before the
// guest runs.
func (m *Machine) setupVsock(st *pciState, ioe ioEventRegistrar) error {
	c := m.cfg.Vsock
	if c == nil {
		return nil
	}
	id := c.ID
	if id == "" {
		id = "vsock"
	}
	dev, err := vsock.New(vsock.Config{ID: id, GuestCID: uint64(c.GuestCID), UDSPath: c.UDSPath}, m.log)
	if err != nil {
		return err
	}
	st.closers = append(st.closers, dev)
	t, err := virtio.NewPCI(dev, virtio.PCIOptions{
		Name: "virtio-vsock-" + id, Class: pciClassCommunicationOther, Mem: m.mem, Log: m.log,
		MSI: st.msi, IOEvents: ioe,
	})
	if err != nil {
		return fmt.Errorf("virtio-vsock %s: %w", id, err)
	}
	// The transport stops the device before its sockets are closed.
	st.closers = append(st.closers[:len(st.closers)-1], t, dev)
	slot, err := st.bus.Add(t)
	if err != nil {
		return fmt.Errorf("virtio-vsock %s: %w", id, err)
	}
	m.log.Debug("virtio-vsock attached", "id", id, "cid", c.GuestCID, "uds", c.UDSPath, "pci", fmt.Sprintf("00:%02x.0", slot))
	return nil
}
