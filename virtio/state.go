package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/govmm/vmm/devices/pci"
)

// StateVersion is the version of PCIState and QueueState this code writes
// and restores. Device packages version their own state.
const StateVersion = 1

// QueueState is one virtqueue as the driver configured it (§4.1.4.3) and
// where the device is in its rings. A state taken from a paused transport
// has no chain in flight, so NextAvail equals NextUsed: the driver has had
// every chain the device took back, or will see it read again.
type QueueState struct {
	Size    uint16
	Enabled bool
	Vector  uint16 // MSI-X vector, NoVector for none
	// The three areas' guest addresses (queue_desc, queue_driver,
	// queue_device).
	DescAddr, DriverAddr, DeviceAddr uint64
	// NextAvail is the next available ring entry the device reads.
	NextAvail uint16
	// NextUsed is the used ring's idx as the device last published it.
	NextUsed uint16
	// SignalledUsed is the used idx at the last notification decision,
	// which EVENT_IDX suppression compares against (§2.7.10).
	SignalledUsed uint16
}

// state returns the queue's configuration and position (Enabled is the
// transport's). The device must not be running.
func (q *Queue) state() QueueState {
	q.mu.Lock()
	defer q.mu.Unlock()
	return QueueState{
		Size: q.Size, Vector: q.Vector, DescAddr: q.DescAddr, DriverAddr: q.DriverAddr, DeviceAddr: q.DeviceAddr,
		NextAvail: q.nextAvail, NextUsed: q.nextUsed, SignalledUsed: q.signalledUsed,
	}
}

// setPosition puts the queue at s's ring indices, after prepare.
func (q *Queue) setPosition(s QueueState) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.nextAvail, q.nextUsed, q.signalledUsed = s.NextAvail, s.NextUsed, s.SignalledUsed
}

// settle hands the driver back, once the device stopped, the chains the
// device took and did not return (a receive chain waiting for a frame).
// Those the available ring lists last are put back: nextAvail steps back
// over them, so the device reads them again when it resumes. Any others
// (a device that returns chains out of order) are returned as used with
// nothing written. Either way the driver gets each chain back exactly
// once, and the queue has nothing in flight.
func (q *Queue) settle() error {
	if q.avail == nil {
		return nil
	}
	held := 0
	for i := range q.inFlight {
		held += bits.OnesCount64(q.inFlight[i].Load())
	}
	if held == 0 {
		return nil
	}
	le := binary.LittleEndian
	back := make([]uint64, len(q.inFlight))
	n := 0
	for n < held {
		slot := int((q.nextAvail - uint16(n) - 1) % q.Size)
		h := le.Uint16(q.avail[availRingOff+availElemSize*slot:])
		w, bit := int(h/64), uint64(1)<<(h%64)
		if h >= q.Size || q.inFlight[w].Load()&bit == 0 || back[w]&bit != 0 {
			break
		}
		back[w] |= bit
		n++
	}
	q.nextAvail -= uint16(n)
	var rest []Used
	for w := range q.inFlight {
		left := q.inFlight[w].Swap(0) &^ back[w]
		for left != 0 {
			b := bits.TrailingZeros64(left)
			left &^= 1 << b
			rest = append(rest, Used{Head: uint16(64*w + b)})
		}
	}
	return q.PushAll(rest)
}

// PCIState is a virtio-PCI transport's state: the common configuration
// the driver negotiated and programmed, the ISR, every queue, and the PCI
// function's own state (configuration space, BARs, MSI-X). It is plain
// data, to be saved with the device's own state (blk.State, ...).
type PCIState struct {
	Version    int
	DeviceType uint16
	// Status is device_status as the driver set it; NeedsReset is
	// DEVICE_NEEDS_RESET, which the device sets.
	Status     uint8
	NeedsReset bool
	// The feature selectors and the driver's accepted features.
	DeviceFeatureSelect uint32
	DriverFeatureSelect uint32
	DriverFeatures      uint64
	QueueSelect         uint16
	ConfigVector        uint16 // config_msix_vector
	ConfigGeneration    uint32
	ISR                 uint8
	Queues              []QueueState
	Function            pci.FunctionState
}

// Suspender is implemented by devices with more to do when the transport
// pauses them (PCI.Pause) than Reset does. Suspend runs first, while the
// device still runs: it keeps the run-time state the driver set that Reset
// forgets (virtio-net's control queue settings), for the next Activate with
// Activation.Resumed, and may tell the driver what won't survive
// (virtio-vsock's transport reset). An Activate without Resumed drops what
// it kept.
type Suspender interface {
	Suspend()
}

// Pause stops the device so that its state, the transport's and guest
// memory can be saved: a Suspender suspends, the device stops as on Reset
// (requests in flight complete), and every chain it held is handed back
// (see QueueState). The driver sees nothing until Resume, or a restore
// from the saved state, starts the device again on the same queues. The
// guest's vCPUs should be stopped first. Pausing an inactive or paused
// device does nothing.
func (t *PCI) Pause() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.active || t.paused {
		return nil
	}
	if s, ok := t.dev.(Suspender); ok {
		s.Suspend()
	}
	t.dev.Reset()
	t.paused = true
	var errs []error
	for i, q := range t.queues {
		if t.enabled[i] {
			errs = append(errs, q.settle())
		}
	}
	return errors.Join(errs...)
}

// Resume restarts a paused device where it stopped. An error (the device
// refused to start) also marks it DEVICE_NEEDS_RESET for the driver.
func (t *PCI) Resume() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.paused {
		return nil
	}
	t.paused, t.active = false, false
	if err := t.activateLocked(true); err != nil {
		t.fail(err)
		return fmt.Errorf("virtio %s: resume: %w", t.name, err)
	}
	return nil
}

// State returns the transport's state. The device must be paused, or not
// running (before DRIVER_OK, or failed).
func (t *PCI) State() (PCIState, error) {
	// The function's lock comes before the transport's (BAR hooks).
	fn := t.cfg.State()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.active && !t.paused {
		return PCIState{}, fmt.Errorf("virtio %s: state of a running device: pause it first", t.name)
	}
	s := PCIState{
		Version: StateVersion, DeviceType: t.dev.Type(),
		Status: t.status, NeedsReset: t.needsReset.Load(),
		DeviceFeatureSelect: t.devFeatSel, DriverFeatureSelect: t.drvFeatSel, DriverFeatures: t.driverFeatures,
		QueueSelect: t.queueSel, ConfigVector: uint16(t.configVec.Load()), ConfigGeneration: t.configGen.Load(),
		ISR: uint8(t.isr.Load()), Function: fn,
	}
	for i, q := range t.queues {
		qs := q.state()
		qs.Enabled = t.enabled[i]
		s.Queues = append(s.Queues, qs)
	}
	return s, nil
}

// Restore puts a transport, new and wrapping a device rebuilt from its own
// saved state, into the saved state s: after the bus added it, before the
// guest runs. If the driver had set DRIVER_OK the device starts at once on
// its queues (Activation.Resumed), and every queue's notification is sent:
// one in flight when the state was saved may not have reached the guest,
// and a driver takes a spurious one in its stride.
func (t *PCI) Restore(s PCIState) error {
	if err := t.checkState(s); err != nil {
		return fmt.Errorf("virtio %s: restore: %w", t.name, err)
	}
	t.mu.Lock()
	fresh := !t.active && t.status == 0
	t.mu.Unlock()
	if !fresh {
		return fmt.Errorf("virtio %s: restore: the driver already uses the device", t.name)
	}
	if err := t.cfg.Restore(s.Function); err != nil {
		return fmt.Errorf("virtio %s: restore: %w", t.name, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status = s.Status
	t.needsReset.Store(s.NeedsReset)
	t.devFeatSel, t.drvFeatSel, t.driverFeatures = s.DeviceFeatureSelect, s.DriverFeatureSelect, s.DriverFeatures
	t.queueSel = s.QueueSelect
	t.configVec.Store(uint32(s.ConfigVector))
	t.configGen.Store(s.ConfigGeneration)
	t.isr.Store(uint32(s.ISR))
	for i, qs := range s.Queues {
		q := &Queue{Index: i, Size: qs.Size, Vector: qs.Vector, DescAddr: qs.DescAddr, DriverAddr: qs.DriverAddr, DeviceAddr: qs.DeviceAddr}
		q.setPosition(qs)
		t.queues[i], t.enabled[i] = q, qs.Enabled
	}
	if s.Status&StatusDriverOK != 0 && s.Status&StatusFailed == 0 && !s.NeedsReset {
		if err := t.activateLocked(true); err != nil {
			t.resetLocked()
			return fmt.Errorf("virtio %s: restore: %w", t.name, err)
		}
		for i, q := range t.queues {
			if t.enabled[i] {
				t.signalQueue(q)
			}
		}
	}
	t.intx.Update()
	return nil
}

// checkState refuses a state this transport and device can't take.
func (t *PCI) checkState(s PCIState) error {
	switch {
	case s.Version != StateVersion:
		return fmt.Errorf("state version %d, this build restores %d", s.Version, StateVersion)
	case s.DeviceType != t.dev.Type():
		return fmt.Errorf("state of a device of type %d, this is type %d", s.DeviceType, t.dev.Type())
	case len(s.Queues) != t.numQueues:
		return fmt.Errorf("%d queues saved, the device has %d", len(s.Queues), t.numQueues)
	case s.DriverFeatures&^t.offeredFeatures() != 0:
		return fmt.Errorf("driver features %#x include %#x, which the device does not offer", s.DriverFeatures, s.DriverFeatures&^t.offeredFeatures())
	case s.ISR > isrQueue|isrConfig:
		return fmt.Errorf("ISR status %#x", s.ISR)
	case s.Status&StatusDriverOK != 0 && s.Status&StatusFeaturesOK == 0:
		return errors.New("DRIVER_OK without FEATURES_OK")
	case s.ConfigVector != NoVector && int(s.ConfigVector) >= t.msix.Vectors():
		return fmt.Errorf("config vector %d outside the %d MSI-X vectors", s.ConfigVector, t.msix.Vectors())
	}
	if s.Status&StatusFeaturesOK != 0 {
		if c, ok := t.dev.(FeatureChecker); ok {
			if err := c.CheckFeatures(s.DriverFeatures); err != nil {
				return err
			}
		}
	}
	for i, q := range s.Queues {
		switch {
		case q.Size > t.maxSizes[i]:
			return fmt.Errorf("queue %d: size %d above the maximum %d", i, q.Size, t.maxSizes[i])
		case q.Vector != NoVector && int(q.Vector) >= t.msix.Vectors():
			return fmt.Errorf("queue %d: vector %d outside the %d MSI-X vectors", i, q.Vector, t.msix.Vectors())
		}
	}
	return nil
}
