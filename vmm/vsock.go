package vmm

import (
	"github.com/govmm/vmm/virtio/vsock"
)

// openVsock makes the virtio-vsock device. Its Unix socket is created
// here, so a bad path or one in use surfaces before the guest runs.
func (m *Machine) openVsock(attach func(virtioFunc) error) error {
	c := m.cfg.Vsock
	id := c.ID
	if id == "" {
		id = "vsock"
	}
	dev, err := vsock.New(vsock.Config{ID: id, GuestCID: uint64(c.GuestCID), UDSPath: c.UDSPath}, m.log)
	if err != nil {
		return err
	}
	return attach(virtioFunc{id: id, dev: dev, backend: dev, log: []any{"cid", c.GuestCID, "uds", c.UDSPath}})
}
