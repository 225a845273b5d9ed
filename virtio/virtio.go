// Package virtio is the device-independent core of the VMM's virtio 1.x
// devices (OASIS virtio 1.2): split virtqueues with indirect descriptors and
// EVENT_IDX, feature negotiation, the device status state machine with
// reset, and the modern PCI transport (§4.1), whose state can be saved and
// restored with the queues going on where they were (PCIState). Device
// types (virtio/blk, ...) implement Device and see only queues of
// descriptor chains.
//
// What every device type needs besides comes with it: Iovec and Chain's
// copy helpers for the bytes of a chain, ReadConfig for a configuration
// space, and Lifecycle for the goroutines that serve the queues between
// Activate and Reset (its example is a whole one-queue device).
package virtio

import (
	"log/slog"

	"github.com/govmm/vmm/memory"
)

// Device status bits (§2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// Reserved feature bits (§6).
const (
	FeatureIndirectDesc = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FeatureEventIdx     = 1 << 29 // VIRTIO_F_EVENT_IDX
	FeatureVersion1     = 1 << 32 // VIRTIO_F_VERSION_1
)

// transportFeatures are what the core itself implements for every device.
const transportFeatures = FeatureIndirectDesc | FeatureEventIdx | FeatureVersion1

// Device types (§5).
const (
	TypeNet   = 1
	TypeBlock = 2
	TypeVsock = 19
)

// Device is one virtio device type's half of a device; the transport does
// the rest.
type Device interface {
	// Type returns the virtio device ID (§5).
	Type() uint16
	// Features returns the device-specific feature bits offered.
	Features() uint64
	// QueueSizes returns the maximum size of each virtqueue.
	QueueSizes() []uint16
	// ReadConfig and WriteConfig access the device configuration space.
	ReadConfig(off uint64, data []byte)
	WriteConfig(off uint64, data []byte)
	// Activate starts processing once the driver set DRIVER_OK.
	Activate(a *Activation) error
	// Reset stops all processing and returns only when nothing touches
	// guest memory any more. It is also called on teardown.
	Reset()
}

// FeatureChecker is implemented by devices with feature combinations they
// can't run (a feature that depends on another, §5.1.3.1 for
// virtio-net). The transport calls CheckFeatures with the driver's
// selection when the driver sets FEATURES_OK; an error leaves FEATURES_OK
// clear, which tells the driver the device refused (§3.1.1 step 6).
type FeatureChecker interface {
	CheckFeatures(driver uint64) error
}

// ConfigChanger is implemented by devices whose configuration space changes
// while the driver uses it (a disk whose backing file was swapped). The
// transport calls BindConfigChange once, when it wraps the device, with the
// function that publishes a change: it bumps config_generation (§4.1.4.3)
// and sends a configuration change notification (§4.1.5.4: ISR bit 1, and
// the config_msix_vector's MSI-X message when one is set). The device
// calls it after every change, while still holding the lock its ReadConfig
// takes, so a driver that reads any new byte also reads the new generation
// and a multi-access read that spans the change is retried (§2.5.1).
type ConfigChanger interface {
	BindConfigChange(changed func())
}

// Activation is everything a device needs to run after DRIVER_OK.
type Activation struct {
	Mem      *memory.Guest
	Features uint64 // negotiated
	// Queues are the enabled virtqueues, indexed by queue number (nil
	// entries were not enabled by the driver).
	Queues []*Queue
	// Kicks delivers the driver's available-buffer notifications, one
	// channel per queue. A kick may be coalesced with earlier ones.
	Kicks []<-chan struct{}
	// Fail marks the device broken (DEVICE_NEEDS_RESET, §2.1.2) because
	// the driver handed it something invalid; the device must stop using
	// the queue. Safe to call from any goroutine.
	Fail func(reason error)
	Log  *slog.Logger
	// Resumed is set when the device continues from saved state (PCI.Resume,
	// PCI.Restore): the queues go on from the indices they had, and a
	// Suspender takes up the run-time state it kept.
	Resumed bool
}
