// Package net is a virtio network device (OASIS virtio 1.2 §5.1) backed by
// a Linux tap interface opened with IFF_VNET_HDR, so the virtio-net header
// the guest writes passes straight to the host kernel (checksum and
// segmentation offloads included) and frames move between the tap and guest
// memory with readv/writev and no intermediate copy.
//
// Files: net.go holds the device's state and configuration space, tap.go
// opens the tap, rx.go and tx.go move frames, event.go runs the queues.
//
// One receive/transmit queue pair; VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ
// are not offered.
package net

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	stdnet "net"
	"sync"
	"sync/atomic"

	"github.com/govmm/vmm/virtio"
)

// Feature bits (§5.1.3).
const (
	FeatureCsum      = 1 << 0  // VIRTIO_NET_F_CSUM: device handles partial checksums (host offload)
	FeatureGuestCsum = 1 << 1  // VIRTIO_NET_F_GUEST_CSUM: driver handles partial checksums
	FeatureMAC       = 1 << 5  // VIRTIO_NET_F_MAC
	FeatureGuestTSO4 = 1 << 7  // VIRTIO_NET_F_GUEST_TSO4
	FeatureGuestTSO6 = 1 << 8  // VIRTIO_NET_F_GUEST_TSO6
	FeatureGuestECN  = 1 << 9  // VIRTIO_NET_F_GUEST_ECN
	FeatureGuestUFO  = 1 << 10 // VIRTIO_NET_F_GUEST_UFO
	FeatureHostTSO4  = 1 << 11 // VIRTIO_NET_F_HOST_TSO4
	FeatureHostTSO6  = 1 << 12 // VIRTIO_NET_F_HOST_TSO6
	FeatureHostECN   = 1 << 13 // VIRTIO_NET_F_HOST_ECN
	FeatureHostUFO   = 1 << 14 // VIRTIO_NET_F_HOST_UFO
	FeatureMrgRxbuf  = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF
	FeatureStatus    = 1 << 16 // VIRTIO_NET_F_STATUS
)

// offeredFeatures is what the device offers. UFO is left out: recent host
// kernels accept TUN_F_UFO only for compatibility, and nothing needs it.
const offeredFeatures = FeatureCsum | FeatureGuestCsum | FeatureMAC |
	FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN |
	FeatureHostTSO4 | FeatureHostTSO6 | FeatureHostECN |
	FeatureMrgRxbuf | FeatureStatus

// Device configuration layout (struct virtio_net_config, §5.1.4).
const (
	cfgMAC    = 0 // u8[6]
	cfgStatus = 6 // le16
	cfgLen    = 8
	// statusLinkUp is VIRTIO_NET_S_LINK_UP.
	statusLinkUp = 1
)

// Queue layout (§5.1.2): receiveq1 and transmitq1.
const (
	rxQueue = 0
	txQueue = 1
	// DefaultQueueSize is each queue's maximum size.
	DefaultQueueSize = 256
)

// The virtio-net header (struct virtio_net_hdr, §5.1.6). With
// VIRTIO_F_VERSION_1 it always includes num_buffers: 12 bytes.
const (
	HeaderLen        = 12
	hdrNumBuffersOff = 10 // le16 num_buffers
	// maxFrameLen bounds one frame from the tap: the largest GSO packet
	// (64 KiB) plus an Ethernet header and a VLAN tag.
	maxFrameLen = 65536 + 14 + 4
)

// Config describes one interface.
type Config struct {
	ID        string
	MAC       stdnet.HardwareAddr // nil: derived from ID by StableMAC
	QueueSize uint16              // DefaultQueueSize when zero
}

// Stats counts what the device did; all fields are updated atomically.
type Stats struct {
	RxFrames, RxBytes, RxDropped atomic.Uint64
	TxFrames, TxBytes, TxDropped atomic.Uint64
}

// Net is a virtio-net device. It implements virtio.Device.
type Net struct {
	cfg     Config
	backend Backend
	config  [cfgLen]byte
	stats   Stats

	mu  sync.Mutex
	run *runState // non-nil while activated
}

// New makes a device that sends and receives through backend (normally a
// *Tap). The device owns the backend from now on; Close closes it.
func New(cfg Config, backend Backend) (*Net, error) {
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.QueueSize&(cfg.QueueSize-1) != 0 || cfg.QueueSize < 4 || cfg.QueueSize > virtio.MaxQueueSize {
		return nil, fmt.Errorf("virtio-net %s: queue size %d is not a power of two in 4..%d", cfg.ID, cfg.QueueSize, virtio.MaxQueueSize)
	}
	if cfg.MAC == nil {
		cfg.MAC = StableMAC(cfg.ID)
	}
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("virtio-net %s: MAC %v is not 6 bytes", cfg.ID, cfg.MAC)
	}
	if cfg.MAC[0]&1 != 0 {
		return nil, fmt.Errorf("virtio-net %s: MAC %v is a multicast address", cfg.ID, cfg.MAC)
	}
	n := &Net{cfg: cfg, backend: backend}
	copy(n.config[cfgMAC:], cfg.MAC)
	binary.LittleEndian.PutUint16(n.config[cfgStatus:], statusLinkUp)
	return n, nil
}

// StableMAC derives a locally administered unicast MAC from seed (the VM
// and interface names), so an interface keeps its address across runs.
func StableMAC(seed string) stdnet.HardwareAddr {
	sum := sha256.Sum256([]byte("govmm virtio-net " + seed))
	mac := stdnet.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	return mac
}

// MAC returns the guest's address.
func (n *Net) MAC() stdnet.HardwareAddr { return n.cfg.MAC }

// Stats returns the device's counters.
func (n *Net) Stats() *Stats { return &n.stats }

// Close stops the device and closes the backend.
func (n *Net) Close() error {
	n.Reset()
	return n.backend.Close()
}

// Type implements virtio.Device.
func (n *Net) Type() uint16 { return virtio.TypeNet }

// Features implements virtio.Device.
func (n *Net) Features() uint64 { return offeredFeatures }

// QueueSizes implements virtio.Device.
func (n *Net) QueueSizes() []uint16 { return []uint16{n.cfg.QueueSize, n.cfg.QueueSize} }

// ReadConfig implements virtio.Device.
func (n *Net) ReadConfig(off uint64, data []byte) {
	for i := range data {
		o := off + uint64(i)
		if o < cfgLen {
			data[i] = n.config[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteConfig implements virtio.Device. The configuration is read-only for
// a VERSION_1 driver (§5.1.4: mac is writable only through the legacy
// interface or VIRTIO_NET_CTRL_MAC_ADDR_SET).
func (n *Net) WriteConfig(uint64, []byte) {}

// tunOffloads maps the negotiated guest receive offloads to the tap's
// TUN_F_* flags (TUNSETOFFLOAD): the kernel may then hand us frames with
// partial checksums or GSO, which the guest has agreed to take.
func tunOffloads(features uint64) uint {
	var f uint
	if features&FeatureGuestCsum == 0 {
		// Every segmentation offload needs checksum offload (§5.1.3.1).
		return 0
	}
	f |= tunFCsum
	if features&FeatureGuestTSO4 != 0 {
		f |= tunFTSO4
	}
	if features&FeatureGuestTSO6 != 0 {
		f |= tunFTSO6
	}
	if features&FeatureGuestECN != 0 && f&(tunFTSO4|tunFTSO6) != 0 {
		f |= tunFTSOECN
	}
	return f
}
