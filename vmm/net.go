package vmm

import (
	"fmt"
	stdnet "net"

	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/net"
)

// pciClassNetworkEthernet is the Ethernet controller class code (PCI Code
// and ID Assignment Specification, base class 02h, subclass 00h).
const pciClassNetworkEthernet = 0x020000

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

// setupNets adds one virtio-net function per configured interface, each
// attached to its tap. A missing tap or one the VMM may not open surfaces
// here, before the guest runs.
func (m *Machine) setupNets(st *pciState, ioe ioEventRegistrar) error {
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
		st.closers = append(st.closers, dev)
		t, err := virtio.NewPCI(dev, virtio.PCIOptions{
			Name: "virtio-net-" + d.id, Class: pciClassNetworkEthernet, Mem: m.mem, Log: m.log,
			MSI: st.msi, IOEvents: ioe,
		})
		if err != nil {
			return fmt.Errorf("virtio-net %s: %w", d.id, err)
		}
		// The transport stops the device before the tap is closed.
		st.closers = append(st.closers[:len(st.closers)-1], t, dev)
		slot, err := st.bus.Add(t)
		if err != nil {
			return fmt.Errorf("virtio-net %s: %w", d.id, err)
		}
		m.log.Debug("virtio-net attached", "id", d.id, "tap", taps[0].Name(), "queues", d.queues, "mac", d.mac.String(), "pci", fmt.Sprintf("00:%02x.0", slot))
	}
	return nil
}
