// Package net is a virtio network device (OASIS virtio 1.2 §5.1) backed by
// a Linux tap interface opened with IFF_VNET_HDR, so the virtio-net header
// the guest writes passes straight to the host kernel (checksum and
// segmentation offloads included) and frames move between the tap and guest
// memory with readv/writev and no intermediate copy.
//
// With one backend the device has one receive/transmit queue pair and no
// control queue, as a plain tap. With N > 1 backends (the queues of a
// multi-queue tap, OpenTapQueues) it offers VIRTIO_NET_F_MQ with
// max_virtqueue_pairs = N and the control virtqueue (ctrl.go), each pair
// runs on its own tap queue with its own receive and transmit goroutines,
// and only the pairs the driver turned on (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET)
// stay attached to the tap.
package net

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/govmm/vmm/devices/pci"
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

	FeatureCtrlGuestOffloads = 1 << 2  // VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
	FeatureCtrlVQ            = 1 << 17 // VIRTIO_NET_F_CTRL_VQ
	FeatureCtrlRx            = 1 << 18 // VIRTIO_NET_F_CTRL_RX
	FeatureMQ                = 1 << 22 // VIRTIO_NET_F_MQ
	FeatureCtrlMACAddr       = 1 << 23 // VIRTIO_NET_F_CTRL_MAC_ADDR
)

// offeredFeatures is what the device offers. UFO is left out: recent host
// kernels accept TUN_F_UFO only for compatibility, and nothing needs it.
const offeredFeatures = FeatureCsum | FeatureGuestCsum | FeatureMAC |
	FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN |
	FeatureHostTSO4 | FeatureHostTSO6 | FeatureHostECN |
	FeatureMrgRxbuf | FeatureStatus

// mqFeatures are offered on top with more than one queue pair: the
// control queue and every command class ctrl.go implements.
const mqFeatures = FeatureCtrlVQ | FeatureMQ | FeatureCtrlRx | FeatureCtrlMACAddr | FeatureCtrlGuestOffloads

// ctrlFeatures need VIRTIO_NET_F_CTRL_VQ (§5.1.3.1).
const ctrlFeatures = FeatureMQ | FeatureCtrlRx | FeatureCtrlMACAddr | FeatureCtrlGuestOffloads

// Device configuration layout (struct virtio_net_config, §5.1.4).
const (
	cfgMAC      = 0 // u8[6]
	cfgStatus   = 6 // le16
	cfgMaxPairs = 8 // le16 max_virtqueue_pairs, with VIRTIO_NET_F_MQ
	cfgLen      = 10
	// statusLinkUp is VIRTIO_NET_S_LINK_UP.
	statusLinkUp = 1
)

// Queue layout (§5.1.2): receiveq1, transmitq1, ..., receiveqN,
// transmitqN, then controlq when VIRTIO_NET_F_CTRL_VQ is offered. N is
// max_virtqueue_pairs only when VIRTIO_NET_F_MQ is negotiated, so a driver
// that takes CTRL_VQ without MQ finds the control queue at index 2.
const (
	// DefaultQueueSize is each data queue's maximum size.
	DefaultQueueSize = 256
	// CtrlQueueSize is the control queue's maximum size.
	CtrlQueueSize = 64
	// MaxQueuePairs bounds the queue pairs of one device.
	MaxQueuePairs = 16
)

func rxQueueOf(pair int) int { return 2 * pair }
func txQueueOf(pair int) int { return 2*pair + 1 }

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
	// frameByFrame turns off io_uring bursts on transmit and receive, as
	// on a host without io_uring: tests run both ways with it.
	frameByFrame bool
}

// Stats counts what the device did; all fields are updated atomically.
type Stats struct {
	RxFrames, RxBytes, RxDropped atomic.Uint64
	TxFrames, TxBytes, TxDropped atomic.Uint64
}

// Net is a virtio-net device. It implements virtio.Device,
// virtio.FeatureChecker and virtio.ConfigChanger.
type Net struct {
	cfg   Config
	pairs []*pair
	stats Stats

	cfgMu   sync.Mutex // config and changed
	config  [cfgLen]byte
	changed func()

	// pairsMu serializes turning pairs on and off (the control queue's
	// goroutine, and Reset once that goroutine has stopped).
	pairsMu sync.Mutex

	// life runs the receive, transmit and control loops between
	// Activate and Reset.
	life virtio.Lifecycle
	// mu guards run, the running loops' state (set by Activate, cleared
	// once they stopped), and resume, the run-time state a resumed
	// Activate takes up (state.go).
	mu     sync.Mutex
	run    *runState
	resume *RunState
	// suspending is set by Suspend: the Reset that follows keeps the
	// run-time state in resume, taken once the loops stopped.
	suspending bool
}

// pair is one receive/transmit queue pair and its backend.
type pair struct {
	index int
	be    Backend
	qb    QueueBackend // nil with a single pair
	rc    syscall.RawConn

	// gate orders turning the pair off against the receive goroutine
	// publishing a frame: once off is set under the write lock, no
	// further frame reaches the pair's receive queue (§5.1.6.5.5).
	gate sync.RWMutex
	on   bool
	wake chan struct{} // signalled when the pair comes on
}

func (p *pair) isOn() bool {
	p.gate.RLock()
	defer p.gate.RUnlock()
	return p.on
}

func (p *pair) setOn(on bool) {
	p.gate.Lock()
	p.on = on
	p.gate.Unlock()
	if on {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// New makes a device that sends and receives through backends (normally
// a *Tap, or the queues OpenTapQueues returned), one per queue pair; with
// more than one, each must be a QueueBackend, and all but the first are
// turned off until the driver asks for them. The device owns the backends
// from now on; Close closes them. On error the caller still owns them.
func New(cfg Config, backends ...Backend) (*Net, error) {
	if len(backends) < 1 || len(backends) > MaxQueuePairs {
		return nil, fmt.Errorf("virtio-net %s: %d queue pairs is outside 1..%d", cfg.ID, len(backends), MaxQueuePairs)
	}
	// One MSI-X vector per queue plus one for configuration changes.
	if v := 2*len(backends) + 2; v > pci.MaxMSIXVectors {
		return nil, fmt.Errorf("virtio-net %s: %d queue pairs need %d MSI-X vectors, more than %d", cfg.ID, len(backends), v, pci.MaxMSIXVectors)
	}
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
	n := &Net{cfg: cfg}
	for i, be := range backends {
		p := &pair{index: i, be: be, on: i == 0, wake: make(chan struct{}, 1)}
		if len(backends) > 1 {
			qb, ok := be.(QueueBackend)
			if !ok {
				return nil, fmt.Errorf("virtio-net %s: backend %d can't turn its queue on and off", cfg.ID, i)
			}
			p.qb = qb
		}
		rc, err := be.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("virtio-net %s: backend %d: %w", cfg.ID, i, err)
		}
		p.rc = rc
		n.pairs = append(n.pairs, p)
	}
	copy(n.config[cfgMAC:], cfg.MAC)
	binary.LittleEndian.PutUint16(n.config[cfgStatus:], statusLinkUp)
	if len(n.pairs) > 1 {
		binary.LittleEndian.PutUint16(n.config[cfgMaxPairs:], uint16(len(n.pairs)))
		// After reset only receiveq1 gets frames (§5.1.6.5.5).
		if err := n.setPairs(1); err != nil {
			return nil, fmt.Errorf("virtio-net %s: %w", cfg.ID, err)
		}
	}
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

// QueuePairs returns the number of queue pairs (max_virtqueue_pairs).
func (n *Net) QueuePairs() int { return len(n.pairs) }

// ActivePairs returns how many queue pairs currently carry frames: 1
// until the driver sends VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
func (n *Net) ActivePairs() int {
	k := 0
	for _, p := range n.pairs {
		if p.isOn() {
			k++
		}
	}
	return k
}

// Close stops the device and closes the backends.
func (n *Net) Close() error {
	n.Reset()
	var errs []error
	for _, p := range n.pairs {
		errs = append(errs, p.be.Close())
	}
	return errors.Join(errs...)
}

// Type implements virtio.Device.
func (n *Net) Type() uint16 { return virtio.TypeNet }

// Features implements virtio.Device.
func (n *Net) Features() uint64 {
	if len(n.pairs) > 1 {
		return offeredFeatures | mqFeatures
	}
	return offeredFeatures
}

// CheckFeatures implements virtio.FeatureChecker: every control command
// class needs the control queue (§5.1.3.1).
func (n *Net) CheckFeatures(f uint64) error {
	if f&FeatureCtrlVQ == 0 && f&ctrlFeatures != 0 {
		return fmt.Errorf("virtio-net %s: features %#x need VIRTIO_NET_F_CTRL_VQ", n.cfg.ID, f&ctrlFeatures)
	}
	return nil
}

// QueueSizes implements virtio.Device.
func (n *Net) QueueSizes() []uint16 {
	var s []uint16
	for range n.pairs {
		s = append(s, n.cfg.QueueSize, n.cfg.QueueSize)
	}
	if len(n.pairs) > 1 {
		s = append(s, CtrlQueueSize)
	}
	return s
}

// BindConfigChange implements virtio.ConfigChanger: the MAC changes with
// VIRTIO_NET_CTRL_MAC_ADDR_SET.
func (n *Net) BindConfigChange(changed func()) {
	n.cfgMu.Lock()
	n.changed = changed
	n.cfgMu.Unlock()
}

// setMAC changes the MAC in the configuration space; notify publishes the
// change (a new config_generation).
func (n *Net) setMAC(mac []byte, notify bool) {
	n.cfgMu.Lock()
	defer n.cfgMu.Unlock()
	if bytes.Equal(n.config[cfgMAC:cfgMAC+6], mac) {
		return
	}
	copy(n.config[cfgMAC:], mac)
	if notify && n.changed != nil {
		n.changed()
	}
}

// ReadConfig implements virtio.Device.
func (n *Net) ReadConfig(off uint64, data []byte) {
	n.cfgMu.Lock()
	defer n.cfgMu.Unlock()
	virtio.ReadConfig(n.config[:], off, data)
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
