package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/govmm/vmm/devices/eventfd"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/memory"
)

// PCI identity of modern virtio devices (§4.1.2).
const (
	PCIVendorID       = 0x1af4
	pciDeviceIDBase   = 0x1040 // + device type, non-transitional
	pciRevisionModern = 1      // non-transitional devices have revision >= 1
	pciSubsysVendorID = 0x1af4
	pciSubsysID       = 0x1100
)

// Virtio PCI capability (struct virtio_pci_cap, §4.1.4): after the generic
// ID and next bytes: cap_len, cfg_type, bar, id, 2 padding bytes, le32
// offset, le32 length; the notify capability adds le32
// notify_off_multiplier and the PCI configuration access capability adds
// the 4-byte pci_cfg_data window.
const (
	capTypeCommon = 1 // VIRTIO_PCI_CAP_COMMON_CFG
	capTypeNotify = 2 // VIRTIO_PCI_CAP_NOTIFY_CFG
	capTypeISR    = 3 // VIRTIO_PCI_CAP_ISR_CFG
	capTypeDevice = 4 // VIRTIO_PCI_CAP_DEVICE_CFG
	capTypePCICfg = 5 // VIRTIO_PCI_CAP_PCI_CFG

	capLen        = 16
	capNotifyLen  = 20
	capPCICfgLen  = 20
	capBarOff     = 4 // offsets from the capability start
	capOffsetOff  = 8
	capLengthOff  = 12
	capPCICfgData = 16
)

// Common configuration structure (struct virtio_pci_common_cfg, §4.1.4.3).
const (
	ccDeviceFeatureSelect = 0x00 // le32
	ccDeviceFeature       = 0x04 // le32, read-only
	ccDriverFeatureSelect = 0x08 // le32
	ccDriverFeature       = 0x0c // le32
	ccConfigMSIXVector    = 0x10 // le16
	ccNumQueues           = 0x12 // le16, read-only
	ccDeviceStatus        = 0x14 // u8
	ccConfigGeneration    = 0x15 // u8, read-only
	ccQueueSelect         = 0x16 // le16
	ccQueueSize           = 0x18 // le16
	ccQueueMSIXVector     = 0x1a // le16
	ccQueueEnable         = 0x1c // le16
	ccQueueNotifyOff      = 0x1e // le16, read-only
	ccQueueDesc           = 0x20 // le64
	ccQueueDriver         = 0x28 // le64
	ccQueueDevice         = 0x30 // le64
	ccQueueNotifConfData  = 0x38 // le16, read-only
	ccQueueReset          = 0x3a // le16
	commonCfgLen          = 0x3c
)

// ISR status bits (§4.1.4.5).
const (
	isrQueue  = 1
	isrConfig = 2
)

// BAR 0 layout: each structure in its own page. BAR 0 is a 64-bit
// prefetchable BAR (as QEMU's modern virtio BAR), so it also takes BAR slot
// 1 and is placed above 4 GiB when the bus has a window there; Linux's
// virtio_pci_modern and the test guest handle both halves.
const (
	barIndex         = 0
	barCommonOff     = 0x0000
	barISROff        = 0x1000
	barDeviceOff     = 0x2000
	barNotifyOff     = 0x3000
	barMSIXTableOff  = 0x4000
	regionSize       = 0x1000
	deviceCfgMax     = regionSize
	notifyMultiplier = 4 // bytes between queues' notify addresses
)

// IOEventRegistrar binds an eventfd to guest writes at an MMIO address so
// queue notifications reach the device without a vCPU exit (KVM ioeventfd).
type IOEventRegistrar interface {
	RegisterIOEvent(addr uint64, size uint32, fd int) error
	UnregisterIOEvent(addr uint64, size uint32, fd int) error
}

// PCIOptions configure a PCI transport.
type PCIOptions struct {
	Name  string // for logs and bus registrations, e.g. "virtio-blk0"
	Class uint32 // PCI class code
	Mem   *memory.Guest
	Log   *slog.Logger
	MSI   pci.MSIAllocator
	// IOEvents may be nil: notifications then arrive as MMIO writes.
	IOEvents IOEventRegistrar
}

// PCI is the virtio over PCI transport (§4.1) for one device.
type PCI struct {
	name string
	dev  Device
	mem  *memory.Guest
	log  *slog.Logger
	cfg  *pci.ConfigSpace
	msix *pci.MSIX
	intx *pci.INTx
	ioe  IOEventRegistrar

	numQueues  int
	notifyLen  uint64
	pbaOff     uint64
	pciCfgCap  int
	maxSizes   []uint16
	kicks      []chan struct{}
	notifyFDs  []*eventfd.EventFD
	pumps      sync.WaitGroup
	isr        atomic.Uint32
	configVec  atomic.Uint32
	configGen  atomic.Uint32 // config_generation, low 8 bits visible
	needsReset atomic.Bool

	mu             sync.Mutex
	status         uint8
	devFeatSel     uint32
	drvFeatSel     uint32
	driverFeatures uint64
	queueSel       uint16
	queues         []*Queue
	enabled        []bool
	active         bool
	paused         bool   // active, but the device stopped for a state save (Pause)
	ioeAt          uint64 // where ioeventfds are registered, 0 if not
}

// NewPCI wraps dev in a PCI function.
func NewPCI(dev Device, o PCIOptions) (*PCI, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	sizes := dev.QueueSizes()
	n := len(sizes)
	if n == 0 || n > 1024 {
		return nil, fmt.Errorf("virtio %s: %d queues", o.Name, n)
	}
	t := &PCI{
		name: o.Name, dev: dev, mem: o.Mem, log: o.Log, ioe: o.IOEvents,
		numQueues: n, maxSizes: sizes, notifyLen: uint64(n) * notifyMultiplier,
		queues: make([]*Queue, n), enabled: make([]bool, n),
	}
	t.configVec.Store(NoVector)
	t.resetQueuesLocked()
	if c, ok := dev.(ConfigChanger); ok {
		c.BindConfigChange(t.configChanged)
	}
	vectors := n + 1 // one per queue plus configuration changes
	tableLen := uint64(vectors) * pci.MSIXEntrySize
	t.pbaOff = barMSIXTableOff + alignUp(tableLen, regionSize)
	barSize := uint64(regionSize)
	for barSize < t.pbaOff+regionSize || barSize < barNotifyOff+alignUp(t.notifyLen, regionSize) {
		barSize <<= 1
	}
	if t.notifyLen > barMSIXTableOff-barNotifyOff {
		return nil, fmt.Errorf("virtio %s: too many queues (%d) for the notify region", o.Name, n)
	}
	t.cfg = pci.NewConfigSpace(o.Name, pci.Identity{
		VendorID: PCIVendorID, DeviceID: pciDeviceIDBase + dev.Type(),
		SubsysVendor: pciSubsysVendorID, SubsysID: pciSubsysID,
		Revision: pciRevisionModern, Class: o.Class,
	})
	if err := t.cfg.SetBAR(barIndex, pci.BAR{Size: barSize, Is64: true, Prefetchable: true, Handler: barHandler{t}, OnMap: t.barMapped}); err != nil {
		return nil, err
	}
	caps := []struct {
		typ       byte
		off, size uint64
	}{
		{capTypeCommon, barCommonOff, commonCfgLen},
		{capTypeISR, barISROff, 1},
		{capTypeDevice, barDeviceOff, deviceCfgMax},
	}
	for _, c := range caps {
		if _, err := t.cfg.AddCapability(pci.CapVendor, virtioCap(capLen, c.typ, c.off, c.size, nil), nil); err != nil {
			return nil, err
		}
	}
	mult := binary.LittleEndian.AppendUint32(nil, notifyMultiplier)
	if _, err := t.cfg.AddCapability(pci.CapVendor, virtioCap(capNotifyLen, capTypeNotify, barNotifyOff, t.notifyLen, mult), nil); err != nil {
		return nil, err
	}
	// The PCI configuration access capability (§4.1.4.9): bar, offset,
	// length and the data window are the driver's to write.
	w := make([]byte, capPCICfgLen-2)
	for _, r := range [][2]int{{capBarOff, 1}, {capOffsetOff, 4}, {capLengthOff, 4}, {capPCICfgData, 4}} {
		for i := range r[1] {
			w[r[0]-2+i] = 0xff
		}
	}
	off, err := t.cfg.AddCapability(pci.CapVendor, virtioCap(capPCICfgLen, capTypePCICfg, 0, 0, make([]byte, 4)), w)
	if err != nil {
		return nil, err
	}
	t.pciCfgCap = off
	t.cfg.OnRead(off+capPCICfgData, 4, t.pciCfgRead)
	t.cfg.OnWrite(off+capPCICfgData, 4, t.pciCfgWrite)
	if t.msix, err = pci.AddMSIX(t.cfg, barIndex, barMSIXTableOff, t.pbaOff, vectors, o.MSI, func(err error) {
		t.log.Warn("MSI-X delivery failed", "device", t.name, "err", err)
	}); err != nil {
		return nil, err
	}
	// Without MSI-X the driver gets INTA#, asserted while the ISR status
	// is non-zero (§4.1.4.5, §4.1.5.3-4): reading the ISR deasserts it.
	if t.intx, err = pci.AddINTx(t.cfg, func() bool { return t.isr.Load() != 0 }, func(err error) {
		t.log.Warn("INTx delivery failed", "device", t.name, "err", err)
	}); err != nil {
		return nil, err
	}
	// All channels and eventfds exist before any pump reads them.
	t.kicks = make([]chan struct{}, n)
	for q := range t.kicks {
		t.kicks[q] = make(chan struct{}, 1)
	}
	if t.ioe != nil {
		for q := 0; q < n; q++ {
			e, err := eventfd.New()
			if err != nil {
				t.Close()
				return nil, fmt.Errorf("virtio %s: queue %d notify: %w", o.Name, q, err)
			}
			t.notifyFDs = append(t.notifyFDs, e)
		}
		for q, e := range t.notifyFDs {
			t.pumps.Add(1)
			go t.pump(q, e)
		}
	}
	return t, nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// virtioCap builds a struct virtio_pci_cap body (without ID and next).
func virtioCap(length, typ byte, off, size uint64, extra []byte) []byte {
	b := make([]byte, capLen-2, int(length)-2)
	b[0] = length
	b[1] = typ
	b[2] = barIndex
	binary.LittleEndian.PutUint32(b[capOffsetOff-2:], uint32(off))
	binary.LittleEndian.PutUint32(b[capLengthOff-2:], uint32(size))
	return append(b, extra...)
}

// Config implements pci.Function.
func (t *PCI) Config() *pci.ConfigSpace { return t.cfg }

// Close resets the device and releases the transport's descriptors.
func (t *PCI) Close() error {
	t.mu.Lock()
	t.resetLocked()
	t.unregisterIOEventsLocked()
	t.mu.Unlock()
	for _, e := range t.notifyFDs {
		e.Close()
	}
	t.pumps.Wait()
	return t.msix.Close()
}

// pump forwards the queue's ioeventfd signals to its kick channel.
func (t *PCI) pump(q int, e *eventfd.EventFD) {
	defer t.pumps.Done()
	for {
		if _, err := e.Wait(); err != nil {
			return
		}
		t.kick(q)
	}
}

// kick records an available-buffer notification for queue q.
func (t *PCI) kick(q int) {
	if q < 0 || q >= len(t.kicks) {
		return
	}
	select {
	case t.kicks[q] <- struct{}{}:
	default: // one pending kick is as good as many
	}
}

// barMapped moves the notify ioeventfds along with BAR 0.
func (t *PCI) barMapped(addr uint64, mapped bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unregisterIOEventsLocked()
	if !mapped || t.ioe == nil {
		return
	}
	for q, e := range t.notifyFDs {
		a := addr + barNotifyOff + uint64(q)*notifyMultiplier
		if err := t.ioe.RegisterIOEvent(a, 2, e.FD()); err != nil {
			// Notifications still work, through MMIO exits.
			t.log.Warn("queue notify ioeventfd", "device", t.name, "queue", q, "err", err)
			continue
		}
	}
	t.ioeAt = addr
}

func (t *PCI) unregisterIOEventsLocked() {
	if t.ioeAt == 0 || t.ioe == nil {
		return
	}
	for q, e := range t.notifyFDs {
		_ = t.ioe.UnregisterIOEvent(t.ioeAt+barNotifyOff+uint64(q)*notifyMultiplier, 2, e.FD())
	}
	t.ioeAt = 0
}

// offeredFeatures is what the device offers the driver.
func (t *PCI) offeredFeatures() uint64 { return t.dev.Features() | transportFeatures }

// resetQueuesLocked returns every queue to its reset state (§4.1.4.3.2:
// queue_size reads the maximum, vectors NO_VECTOR, disabled).
func (t *PCI) resetQueuesLocked() {
	for i := range t.queues {
		t.queues[i] = &Queue{Index: i, Size: t.maxSizes[i], Vector: NoVector}
		t.enabled[i] = false
	}
}

// resetLocked performs a device reset (§2.4): stop the device, then
// forget features, queues and status.
func (t *PCI) resetLocked() {
	if t.active {
		t.dev.Reset()
		t.active = false
	}
	t.paused = false
	t.status = 0
	t.needsReset.Store(false)
	t.driverFeatures = 0
	t.devFeatSel, t.drvFeatSel, t.queueSel = 0, 0, 0
	t.configVec.Store(NoVector)
	t.isr.Store(0)
	t.intx.Update()
	t.resetQueuesLocked()
	for _, k := range t.kicks {
		select {
		case <-k:
		default:
		}
	}
}

// fail implements Activation.Fail: DEVICE_NEEDS_RESET plus a
// configuration change notification (§2.1.2, §4.1.4.5).
func (t *PCI) fail(reason error) {
	if t.needsReset.Swap(true) {
		return
	}
	t.log.Warn("virtio device needs reset", "device", t.name, "reason", reason)
	t.isr.Or(isrConfig)
	t.notifyConfig()
}

// configChanged is the device's ConfigChanger callback: the device
// configuration changed, so config_generation changes (§4.1.4.3) and the
// driver gets a configuration change notification (§4.1.5.4). ISR bit 1 is
// set before the generation moves, so a driver that sees the new generation
// also finds the bit. The generation is not reset with the device: a driver
// only compares two reads of it.
func (t *PCI) configChanged() {
	t.isr.Or(isrConfig)
	t.configGen.Add(1)
	t.notifyConfig()
}

// notifyConfig sends the configuration change notification: the MSI-X
// message, if the driver assigned a vector to configuration changes, or
// INTx without MSI-X.
func (t *PCI) notifyConfig() {
	t.interrupt(uint16(t.configVec.Load()))
}

// signalQueue sends queue q's used-buffer notification.
func (t *PCI) signalQueue(q *Queue) {
	t.isr.Or(isrQueue)
	t.interrupt(q.Vector)
}

// interrupt delivers a notification whose ISR bit is already set: through
// MSI-X vector vec when MSI-X is enabled (none for NO_VECTOR, §4.1.5.1.2),
// else by asserting INTx (§4.1.5.3-4), which INTx ignores while MSI-X is on.
func (t *PCI) interrupt(vec uint16) {
	if vec != NoVector && t.msix.Enabled() {
		t.msix.Notify(vec)
	}
	t.intx.Update()
}

// setStatusLocked applies a driver write of device_status.
func (t *PCI) setStatusLocked(v uint8) {
	if v == 0 {
		t.resetLocked()
		return
	}
	// DEVICE_NEEDS_RESET is the device's to set.
	v &^= StatusDeviceNeedsReset
	if v&StatusFeaturesOK != 0 && t.status&StatusFeaturesOK == 0 {
		if err := t.checkFeaturesLocked(); err != nil {
			// Leaving FEATURES_OK clear tells the driver (§2.2.2).
			t.log.Warn("virtio feature negotiation failed", "device", t.name, "err", err)
			v &^= StatusFeaturesOK
		}
	}
	t.status = v
	if v&StatusDriverOK != 0 && !t.active && v&StatusFailed == 0 {
		if v&StatusFeaturesOK == 0 {
			t.fail(errors.New("driver set DRIVER_OK without FEATURES_OK"))
			return
		}
		if err := t.activateLocked(false); err != nil {
			t.fail(err)
		}
	}
}

// checkFeaturesLocked validates the driver's feature selection.
func (t *PCI) checkFeaturesLocked() error {
	if extra := t.driverFeatures &^ t.offeredFeatures(); extra != 0 {
		return fmt.Errorf("driver accepted features %#x that were not offered", extra)
	}
	if t.driverFeatures&FeatureVersion1 == 0 {
		return errors.New("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")
	}
	if c, ok := t.dev.(FeatureChecker); ok {
		return c.CheckFeatures(t.driverFeatures)
	}
	return nil
}

// activateLocked hands the enabled queues to the device; resumed, they go
// on from the ring indices they hold.
func (t *PCI) activateLocked(resumed bool) error {
	a := &Activation{Mem: t.mem, Features: t.driverFeatures, Fail: t.fail, Log: t.log.With("device", t.name), Resumed: resumed}
	a.Queues = make([]*Queue, t.numQueues)
	a.Kicks = make([]<-chan struct{}, t.numQueues)
	for i, q := range t.queues {
		a.Kicks[i] = t.kicks[i]
		if !t.enabled[i] {
			continue
		}
		q := q
		at := q.state()
		if err := q.prepare(t.mem, t.driverFeatures, func() { t.signalQueue(q) }); err != nil {
			return err
		}
		if resumed {
			q.setPosition(at)
		}
		a.Queues[i] = q
	}
	if err := t.dev.Activate(a); err != nil {
		return fmt.Errorf("activate: %w", err)
	}
	t.active = true
	return nil
}

// commonImageLocked renders the common configuration structure.
func (t *PCI) commonImageLocked() []byte {
	b := make([]byte, commonCfgLen)
	le := binary.LittleEndian
	le.PutUint32(b[ccDeviceFeatureSelect:], t.devFeatSel)
	if t.devFeatSel < 2 {
		le.PutUint32(b[ccDeviceFeature:], uint32(t.offeredFeatures()>>(32*t.devFeatSel)))
	}
	le.PutUint32(b[ccDriverFeatureSelect:], t.drvFeatSel)
	if t.drvFeatSel < 2 {
		le.PutUint32(b[ccDriverFeature:], uint32(t.driverFeatures>>(32*t.drvFeatSel)))
	}
	le.PutUint16(b[ccConfigMSIXVector:], uint16(t.configVec.Load()))
	le.PutUint16(b[ccNumQueues:], uint16(t.numQueues))
	st := t.status
	if t.needsReset.Load() {
		st |= StatusDeviceNeedsReset
	}
	b[ccDeviceStatus] = st
	b[ccConfigGeneration] = byte(t.configGen.Load())
	le.PutUint16(b[ccQueueSelect:], t.queueSel)
	if int(t.queueSel) < t.numQueues {
		q := t.queues[t.queueSel]
		le.PutUint16(b[ccQueueSize:], q.Size)
		le.PutUint16(b[ccQueueMSIXVector:], q.Vector)
		if t.enabled[t.queueSel] {
			le.PutUint16(b[ccQueueEnable:], 1)
		}
		le.PutUint16(b[ccQueueNotifyOff:], t.queueSel)
		le.PutUint64(b[ccQueueDesc:], q.DescAddr)
		le.PutUint64(b[ccQueueDriver:], q.DriverAddr)
		le.PutUint64(b[ccQueueDevice:], q.DeviceAddr)
	}
	return b
}

func (t *PCI) readCommon(off uint64, data []byte) {
	t.mu.Lock()
	img := t.commonImageLocked()
	t.mu.Unlock()
	copyOut(img, off, data)
}

// copyOut fills data from img at off; bytes past img read as zero.
func copyOut(img []byte, off uint64, data []byte) {
	for i := range data {
		o := off + uint64(i)
		if o < uint64(len(img)) {
			data[i] = img[o]
		} else {
			data[i] = 0
		}
	}
}

// writeCommon applies a write to the common configuration: the bytes are
// merged into the current image, then each field they touch is applied, so
// a 64-bit address written as two dwords works.
func (t *PCI) writeCommon(off uint64, data []byte) {
	if off >= commonCfgLen {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	img := t.commonImageLocked()
	end := min(off+uint64(len(data)), commonCfgLen)
	copy(img[off:end], data)
	le := binary.LittleEndian
	touches := func(field, size uint64) bool { return off < field+size && end > field }
	q := (*Queue)(nil)
	qEnabled := false
	if int(t.queueSel) < t.numQueues {
		q, qEnabled = t.queues[t.queueSel], t.enabled[t.queueSel]
	}
	// A queue's configuration is frozen once enabled (§4.1.4.3.2).
	qWritable := q != nil && !qEnabled && t.status&StatusDriverOK == 0
	switch {
	case touches(ccDeviceFeatureSelect, 4):
		t.devFeatSel = le.Uint32(img[ccDeviceFeatureSelect:])
	case touches(ccDriverFeatureSelect, 4):
		t.drvFeatSel = le.Uint32(img[ccDriverFeatureSelect:])
	case touches(ccDriverFeature, 4):
		if t.drvFeatSel < 2 && t.status&StatusFeaturesOK == 0 {
			shift := 32 * t.drvFeatSel
			t.driverFeatures = t.driverFeatures&^(0xffff_ffff<<shift) | uint64(le.Uint32(img[ccDriverFeature:]))<<shift
		}
	case touches(ccConfigMSIXVector, 2):
		t.configVec.Store(uint32(t.vectorOrNone(le.Uint16(img[ccConfigMSIXVector:]))))
	case touches(ccDeviceStatus, 1):
		t.setStatusLocked(img[ccDeviceStatus])
	case touches(ccQueueSelect, 2):
		t.queueSel = le.Uint16(img[ccQueueSelect:])
	case touches(ccQueueSize, 2):
		if qWritable {
			// Any power of two up to the maximum; checked at DRIVER_OK.
			q.Size = min(le.Uint16(img[ccQueueSize:]), t.maxSizes[t.queueSel])
		}
	case touches(ccQueueMSIXVector, 2):
		// Workers read the vector without the lock, so it is fixed
		// while the device runs; drivers assign vectors during setup.
		if q != nil && !t.active {
			q.Vector = t.vectorOrNone(le.Uint16(img[ccQueueMSIXVector:]))
		}
	case touches(ccQueueEnable, 2):
		if qWritable && le.Uint16(img[ccQueueEnable:]) == 1 {
			t.enabled[t.queueSel] = true
		}
	case touches(ccQueueDesc, 8):
		if qWritable {
			q.DescAddr = le.Uint64(img[ccQueueDesc:])
		}
	case touches(ccQueueDriver, 8):
		if qWritable {
			q.DriverAddr = le.Uint64(img[ccQueueDriver:])
		}
	case touches(ccQueueDevice, 8):
		if qWritable {
			q.DeviceAddr = le.Uint64(img[ccQueueDevice:])
		}
	}
}

// vectorOrNone accepts an MSI-X vector the table has; anything else reads
// back as NO_VECTOR, which is how the driver learns it failed (§4.1.5.1.2).
func (t *PCI) vectorOrNone(v uint16) uint16 {
	if int(v) < t.msix.Vectors() {
		return v
	}
	return NoVector
}

// barHandler serves guest accesses to BAR 0.
type barHandler struct{ t *PCI }

func (h barHandler) Read(off uint64, data []byte) {
	t := h.t
	switch {
	case off < barCommonOff+regionSize:
		t.readCommon(off-barCommonOff, data)
	case off >= barISROff && off < barISROff+regionSize:
		clear(data)
		if off == barISROff {
			// Reading ISR status clears it and deasserts INTx
			// (§4.1.4.5).
			data[0] = byte(t.isr.Swap(0))
			t.intx.Update()
		}
	case off >= barDeviceOff && off < barDeviceOff+regionSize:
		t.dev.ReadConfig(off-barDeviceOff, data)
	case off >= barMSIXTableOff && off < t.pbaOff:
		t.msix.ReadTable(off-barMSIXTableOff, data)
	case off >= t.pbaOff && off < t.pbaOff+regionSize:
		t.msix.ReadPBA(off-t.pbaOff, data)
	default:
		clear(data)
	}
}

func (h barHandler) Write(off uint64, data []byte) {
	t := h.t
	switch {
	case off < barCommonOff+regionSize:
		t.writeCommon(off-barCommonOff, data)
	case off >= barDeviceOff && off < barDeviceOff+regionSize:
		t.dev.WriteConfig(off-barDeviceOff, data)
	case off >= barNotifyOff && off < barNotifyOff+t.notifyLen:
		// Reached only without an ioeventfd: the queue index is implied
		// by the address (the written value carries it too).
		t.kick(int((off - barNotifyOff) / notifyMultiplier))
	case off >= barMSIXTableOff && off < t.pbaOff:
		t.msix.WriteTable(off-barMSIXTableOff, data)
	}
}

// pciCfgWindow decodes the PCI configuration access capability's target.
func (t *PCI) pciCfgWindow() (off uint64, n int, ok bool) {
	c := t.cfg.BytesLocked(t.pciCfgCap, capPCICfgLen)
	bar := c[capBarOff]
	o := uint64(binary.LittleEndian.Uint32(c[capOffsetOff:]))
	l := binary.LittleEndian.Uint32(c[capLengthOff:])
	if bar != barIndex || (l != 1 && l != 2 && l != 4) {
		return 0, 0, false
	}
	return o, int(l), true
}

// pciCfgRead refreshes pci_cfg_data from BAR memory (§4.1.4.9.1).
func (t *PCI) pciCfgRead() {
	off, n, ok := t.pciCfgWindow()
	if !ok {
		return
	}
	d := t.cfg.BytesLocked(t.pciCfgCap+capPCICfgData, 4)
	barHandler{t}.Read(off, d[:n])
}

// pciCfgWrite forwards a pci_cfg_data write to BAR memory.
func (t *PCI) pciCfgWrite() {
	off, n, ok := t.pciCfgWindow()
	if !ok {
		return
	}
	d := append([]byte(nil), t.cfg.BytesLocked(t.pciCfgCap+capPCICfgData, n)...)
	barHandler{t}.Write(off, d)
}
