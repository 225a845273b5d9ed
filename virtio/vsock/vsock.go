// Package vsock is a virtio socket device (OASIS virtio 1.2 §5.10) bridged
// to host Unix sockets the way Firecracker's "hybrid vsock" does it: the
// whole device runs in user space, no vhost-vsock.
//
//   - Host-initiated: a host process connects to the Unix socket at
//     Config.UDSPath and writes "CONNECT <port>\n"; the device sends the
//     guest a REQUEST for that port from a freshly allocated host port and,
//     once the guest answers RESPONSE, writes "OK <host port>\n" back.
//     A refusal (RST) closes the Unix connection before any "OK".
//   - Guest-initiated: a guest connection to host CID 2 port P is bridged
//     to a listener on the Unix socket "<UDSPath>_P"; without one the guest
//     gets RST.
package vsock

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/govmm/vmm/virtio"
)

// Feature bits (§5.10.3).
const (
	FeatureStream = 1 << 0 // VIRTIO_VSOCK_F_STREAM
)

// Virtqueues (§5.10.2).
const (
	queueRx    = 0
	queueTx    = 1
	queueEvent = 2
	numQueues  = 3
)

// Addresses (§5.10.4: CIDs 0-2 are reserved; 2 is the host).
const (
	// HostCID is the well-known address of the host (VMADDR_CID_HOST).
	HostCID = 2
	// MinGuestCID is the smallest CID a guest may have.
	MinGuestCID = 3
	// MaxGuestCID is the largest: the CID stays within the 32 bits
	// Linux's sockaddr_vm carries, excluding VMADDR_CID_ANY.
	MaxGuestCID = 0xffffffff - 1
)

// Device configuration layout (struct virtio_vsock_config, §5.10.4).
const (
	cfgGuestCID = 0 // le64
	cfgLen      = 8
)

// Limits and defaults.
const (
	// DefaultQueueSize is each queue's maximum size.
	DefaultQueueSize = 256
	// BufAlloc is the receive buffer space the device advertises per
	// connection (buf_alloc, §5.10.6.3): the guest never has more than
	// this many bytes in flight towards one host socket.
	BufAlloc = 256 << 10
	// MaxConns bounds the connections one device carries at a time,
	// those still draining to the host after a guest RST included.
	MaxConns = 1023
	// drainTimeout bounds how long the host peer may take to read the
	// guest's last bytes after the guest reset or shut down a connection;
	// then the host socket is closed with whatever is left.
	drainTimeout = 5 * time.Second
	// hostChunk is the most the device reads from a host socket at once;
	// a connection holds at most one such chunk while the guest can't
	// take it (rx back-pressure).
	hostChunk = 64 << 10
	// maxPacketPayload bounds one RW packet the device builds; the
	// guest's rx buffers bound it further.
	maxPacketPayload = 64 << 10
	// firstHostPort is where host-initiated connections' local ports
	// start (Firecracker: round robin in [2^30, 2^31)).
	firstHostPort = 1 << 30
	lastHostPort  = 1<<31 - 1
)

// Config describes the device.
type Config struct {
	ID        string // for logs
	GuestCID  uint64
	UDSPath   string // the hybrid vsock Unix socket
	QueueSize uint16 // DefaultQueueSize when zero
	// ConnectTimeout bounds how long the guest may take to answer a
	// host-initiated REQUEST; DefaultConnectTimeout when zero.
	ConnectTimeout time.Duration
}

// Device is a virtio-vsock device. It implements virtio.Device.
type Device struct {
	cfg    Config
	config [cfgLen]byte
	log    *slog.Logger
	ln     *listener
	// MaxConns and drainTimeout, apart so tests can reach them quickly.
	maxConns  int
	drainWait time.Duration

	// life runs the muxer between Activate and Reset; run is the muxer
	// while it takes events.
	life virtio.Lifecycle
	run  atomic.Pointer[muxer]
}

// New checks cfg and starts listening on cfg.UDSPath. Host processes may
// connect at once; their CONNECT waits until the guest driver is up.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.QueueSize&(cfg.QueueSize-1) != 0 || cfg.QueueSize < 4 || cfg.QueueSize > virtio.MaxQueueSize {
		return nil, fmt.Errorf("virtio-vsock %s: queue size %d is not a power of two in 4..%d", cfg.ID, cfg.QueueSize, virtio.MaxQueueSize)
	}
	if cfg.GuestCID < MinGuestCID || cfg.GuestCID > MaxGuestCID {
		return nil, fmt.Errorf("virtio-vsock %s: guest CID %d outside %d..%d", cfg.ID, cfg.GuestCID, MinGuestCID, uint64(MaxGuestCID))
	}
	if cfg.UDSPath == "" {
		return nil, fmt.Errorf("virtio-vsock %s: no Unix socket path", cfg.ID)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{cfg: cfg, log: log.With("device", "virtio-vsock", "id", cfg.ID),
		maxConns: MaxConns, drainWait: drainTimeout}
	binary.LittleEndian.PutUint64(d.config[cfgGuestCID:], cfg.GuestCID)
	ln, err := listen(cfg.UDSPath, d)
	if err != nil {
		return nil, fmt.Errorf("virtio-vsock %s: %w", cfg.ID, err)
	}
	d.ln = ln
	return d, nil
}

// Close stops the device, closes every connection and removes the Unix
// socket.
func (d *Device) Close() error {
	d.Reset()
	return d.ln.close()
}

// GuestCID returns the guest's CID.
func (d *Device) GuestCID() uint64 { return d.cfg.GuestCID }

// Type implements virtio.Device.
func (d *Device) Type() uint16 { return virtio.TypeVsock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return FeatureStream }

// QueueSizes implements virtio.Device.
func (d *Device) QueueSizes() []uint16 {
	return []uint16{d.cfg.QueueSize, d.cfg.QueueSize, d.cfg.QueueSize}
}

// ReadConfig implements virtio.Device.
func (d *Device) ReadConfig(off uint64, data []byte) {
	virtio.ReadConfig(d.config[:], off, data)
}

// WriteConfig implements virtio.Device: the configuration is read-only.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device.
func (d *Device) Activate(a *virtio.Activation) error {
	return d.life.Start(a, "virtio-vsock "+d.cfg.ID, func(run *virtio.Run) error {
		if len(a.Queues) != numQueues || a.Queues[queueRx] == nil || a.Queues[queueTx] == nil {
			return fmt.Errorf("virtio-vsock %s: the driver did not enable the rx and tx queues", d.cfg.ID)
		}
		log := a.Log
		if log == nil {
			log = d.log
		}
		m := newMuxer(d, a, run, log)
		d.run.Store(m)
		// First thing at Reset: new host connections are refused.
		run.OnStop(func() { d.run.Store(nil) })
		m.start()
		return nil
	})
}

// Reset implements virtio.Device: every connection is dropped (host sockets
// closed) and nothing touches guest memory any more when it returns.
func (d *Device) Reset() { d.life.Stop() }

// active returns the running muxer, nil when the driver isn't up.
func (d *Device) active() *muxer { return d.run.Load() }

// TransportReset drops every connection and sends the guest
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (§5.10.6.6), as before a snapshot:
// after a restore the guest's connections are gone but its listeners stay.
func (d *Device) TransportReset() error {
	m := d.active()
	if m == nil {
		return fmt.Errorf("virtio-vsock %s: transport reset: the driver is not running", d.cfg.ID)
	}
	done := make(chan error, 1)
	if !m.post(event{kind: evTransportReset, done: done}) {
		return fmt.Errorf("virtio-vsock %s: transport reset: device stopped", d.cfg.ID)
	}
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("virtio-vsock %s: transport reset: %w", d.cfg.ID, err)
		}
		return nil
	case <-m.quit:
		return fmt.Errorf("virtio-vsock %s: transport reset: device stopped", d.cfg.ID)
	}
}

// dialGuestPort is how the device reaches a host listener for a guest
// connection to host port p.
func (d *Device) dialGuestPort(p uint32) (net.Conn, error) {
	path := fmt.Sprintf("%s_%d", d.cfg.UDSPath, p)
	c, err := net.DialTimeout("unix", path, dialTimeout)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	return c, nil
}
