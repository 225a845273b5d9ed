package vmm

import (
	"fmt"
	stdnet "net"

	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio/net"
)

// netDevice is one validated interface configuration.
type netDevice struct {
	id, tap string
	mac     stdnet.HardwareAddr
	queues  int // queue pairs
}

// checkNets validates every interface before any tap is opened.
func checkNets(nets []NetConfig) ([]netDevice, error) {
	var devs []netDevice
	seen := map[string]bool{}
	for i, c := range nets {
		d := netDevice{id: c.ID, tap: c.Tap}
		if d.id == "" {
			d.id = fmt.Sprintf("net%d", i)
		}
		if seen[d.id] {
			return nil, fmt.Errorf("network interface id %q used twice", d.id)
		}
		seen[d.id] = true
		d.queues = c.Queues
		if d.queues == 0 {
			d.queues = 1
		}
		if err := CheckNetQueues(int64(d.queues)); err != nil {
			return nil, fmt.Errorf("virtio-net %s: %w", d.id, err)
		}
		// One MSI-X vector per queue (2 per pair and the control queue)
		// and one for configuration changes.
		if v := 2*d.queues + 2; d.queues > 1 && v > pci.MaxMSIXVectors {
			return nil, fmt.Errorf("virtio-net %s: %d queue pairs need %d MSI-X vectors, more than %d", d.id, d.queues, v, pci.MaxMSIXVectors)
		}
		if c.MAC == "" {
			d.mac = net.StableMAC(d.id + "/" + c.Tap)
		} else {
			mac, err := stdnet.ParseMAC(c.MAC)
			if err != nil {
				return nil, fmt.Errorf("virtio-net %s: %w", d.id, err)
			}
			if len(mac) != 6 || mac[0]&1 != 0 {
				return nil, fmt.Errorf("virtio-net %s: MAC %s is not a unicast Ethernet address", d.id, c.MAC)
			}
			d.mac = mac
		}
		devs = append(devs, d)
	}
	return devs, nil
}

// openNets makes one virtio-net device per configured interface, each
// attached to its tap. A missing tap or one the VMM may not open surfaces
// here, before the guest runs.
func (m *Machine) openNets(attach func(virtioFunc) error) error {
	devs, err := checkNets(m.cfg.Nets)
	if err != nil {
		return err
	}
	for _, d := range devs {
		var taps []*net.Tap
		if d.queues == 1 {
			tap, err := net.OpenTap(d.tap)
			if err != nil {
				return fmt.Errorf("virtio-net %s: %w", d.id, err)
			}
			taps = []*net.Tap{tap}
		} else if taps, err = net.OpenTapQueues(d.tap, d.queues); err != nil {
			return fmt.Errorf("virtio-net %s: %w", d.id, err)
		}
		var backends []net.Backend
		for _, tap := range taps {
			backends = append(backends, tap)
		}
		dev, err := net.New(net.Config{ID: d.id, MAC: d.mac}, backends...)
		if err != nil {
			for _, tap := range taps {
				tap.Close()
			}
			return err
		}
		if err := attach(virtioFunc{id: d.id, dev: dev, backend: dev, log: []any{
			"tap", taps[0].Name(), "queues", d.queues, "mac", d.mac.String(),
		}}); err != nil {
			return err
		}
	}
	return nil
}
