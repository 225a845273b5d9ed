// Package rng is a virtio entropy device (OASIS virtio 1.2 §5.4): the
// driver posts device-writable buffers on the device's one request queue
// and the device fills them with random bytes from the host kernel's
// getrandom(2), through crypto/rand. It has no configuration space and no
// feature bits.
package rng

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"

	"github.com/govmm/vmm/virtio"
)

// TypeEntropy is the entropy device's virtio device ID (§5, "Device
// Types": 4, entropy source).
const TypeEntropy = 4

// Virtqueues (§5.4.2): one request queue.
const (
	queueRequest = 0
	numQueues    = 1
)

// Limits and defaults.
const (
	// DefaultQueueSize is the request queue's maximum size.
	DefaultQueueSize = 256
	// MaxRequestBytes bounds the random bytes one request gets. The device
	// may fill less than the whole buffer (§5.4.6.1), and a guest that
	// wants more asks again. (The kit's Run.Serve looks for a reset
	// between requests, so a guest that keeps the queue full can't keep
	// one waiting.)
	MaxRequestBytes = 64 << 10
)

// Config describes the device.
type Config struct {
	ID        string // for logs
	QueueSize uint16 // DefaultQueueSize when zero
	// Source is where random bytes come from: crypto/rand.Reader
	// (getrandom) when nil. Tests substitute predictable or failing ones.
	Source io.Reader
}

// StateVersion is the version of State this code writes and restores.
const StateVersion = 1

// State is the device as plain data, to save and rebuild it (a snapshot);
// its queue is the transport's state (virtio.PCIState). The counters are
// kept across resets, so a restored device reports the same totals.
type State struct {
	Version   int
	ID        string
	QueueSize uint16
	// Requests is the number of requests completed, Bytes the random
	// bytes written into them, SourceErrors the requests completed empty
	// because the source failed.
	Requests, Bytes, SourceErrors uint64
}

// Device is a virtio entropy device. It implements virtio.Device.
type Device struct {
	cfg Config
	log *slog.Logger

	requests, bytes, sourceErrors atomic.Uint64

	life virtio.Lifecycle // the request queue's worker, Activate to Reset
}

// New checks cfg and returns a device that has handed out nothing yet.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.QueueSize&(cfg.QueueSize-1) != 0 || cfg.QueueSize > virtio.MaxQueueSize {
		return nil, fmt.Errorf("virtio-rng %s: queue size %d is not a power of two up to %d", cfg.ID, cfg.QueueSize, virtio.MaxQueueSize)
	}
	if cfg.Source == nil {
		cfg.Source = rand.Reader
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Device{cfg: cfg, log: log.With("device", "virtio-rng", "id", cfg.ID)}, nil
}

// Restore makes the device st describes, continuing its counters, with
// random bytes from source (crypto/rand when nil) as New does.
func Restore(st State, source io.Reader, log *slog.Logger) (*Device, error) {
	if st.Version != StateVersion {
		return nil, fmt.Errorf("virtio-rng %s: restore: state version %d, this build restores %d", st.ID, st.Version, StateVersion)
	}
	d, err := New(Config{ID: st.ID, QueueSize: st.QueueSize, Source: source}, log)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	d.requests.Store(st.Requests)
	d.bytes.Store(st.Bytes)
	d.sourceErrors.Store(st.SourceErrors)
	return d, nil
}

// State returns the device's state; taken while the device runs, its
// counters keep moving.
func (d *Device) State() State {
	return State{
		Version: StateVersion, ID: d.cfg.ID, QueueSize: d.cfg.QueueSize,
		Requests: d.requests.Load(), Bytes: d.bytes.Load(), SourceErrors: d.sourceErrors.Load(),
	}
}

// Type implements virtio.Device.
func (d *Device) Type() uint16 { return TypeEntropy }

// Features implements virtio.Device: there are no device feature bits
// (§5.4.3).
func (d *Device) Features() uint64 { return 0 }

// QueueSizes implements virtio.Device.
func (d *Device) QueueSizes() []uint16 { return []uint16{d.cfg.QueueSize} }

// ReadConfig implements virtio.Device: there is no configuration space
// (§5.4.4), so every byte reads as zero.
func (d *Device) ReadConfig(_ uint64, data []byte) { clear(data) }

// WriteConfig implements virtio.Device: writes are ignored.
func (d *Device) WriteConfig(uint64, []byte) {}

// Activate implements virtio.Device: one worker serves the request queue.
func (d *Device) Activate(a *virtio.Activation) error {
	return d.life.Start(a, "virtio-rng "+d.cfg.ID, func(run *virtio.Run) error {
		if len(a.Queues) != numQueues || a.Queues[queueRequest] == nil || len(a.Kicks) != numQueues {
			return fmt.Errorf("virtio-rng %s: the driver did not enable the request queue", d.cfg.ID)
		}
		req := &requests{d: d, log: run.Log()}
		run.Serve(queueRequest, req.fill)
		return nil
	})
}

// Reset implements virtio.Device: when it returns the worker has stopped
// and nothing touches guest memory any more.
func (d *Device) Reset() { d.life.Stop() }
