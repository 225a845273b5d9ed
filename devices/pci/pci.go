// Package pci emulates a conventional PCI bus 0 behind a host bridge. Its
// configuration space is reached through two front ends sharing one access
// path: configuration mechanism #1 at I/O ports 0xCF8/0xCFC and a PCI
// Express enhanced configuration access (ECAM) window in memory. Functions
// have type 0 headers with memory BARs (32-bit ones from a window below
// 4 GiB, 64-bit prefetchable ones from a window above it), MSI-X, and an
// INTx# pin routed to the interrupt controller.
//
// References: PCI Local Bus Specification 3.0 (configuration mechanism #1
// §3.2.2.3.2, header §6.1-6.2, capabilities §6.7, MSI-X §6.8.2), PCI
// Express Base Specification (ECAM §7.2.2), PCI Firmware Specification 3.x
// (MCFG §4.1.2).
package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/govmm/vmm/devices"
)

// Configuration mechanism #1 (§3.2.2.3.2): a dword address register at
// 0xCF8 selects bus/device/function/register; 0xCFC-0xCFF is the data
// window for that dword.
const (
	ConfigAddressPort = 0xcf8
	ConfigDataPort    = 0xcfc
	configAddrEnable  = 1 << 31
	// MaxDevices is the number of device numbers on one bus.
	MaxDevices = 32
)

// ECAM layout (PCI Express Base Specification §7.2.2): 4 KiB of
// configuration space per function at
//
//	bus<<20 | device<<15 | function<<12 | register
//
// from the window's base, so one bus takes 1 MiB.
const (
	ECAMBusSize      = 1 << 20
	ecamFunctionSize = 1 << 12
)

// Function is one PCI function: everything about it the bus needs is its
// configuration space.
type Function interface {
	Config() *ConfigSpace
}

// BusConfig describes bus 0's resources.
type BusConfig struct {
	// MMIO is where BARs are mapped.
	MMIO *devices.Bus
	// Mem32Start and Mem32End bound the window below 4 GiB that 32-bit
	// BARs (and 64-bit BARs that are not prefetchable) are allocated from.
	Mem32Start, Mem32End uint64
	// Mem64Start and Mem64End bound the window above 4 GiB for 64-bit
	// prefetchable BARs. Empty: they come from the 32-bit window too.
	Mem64Start, Mem64End uint64
	// INTx connects the functions' interrupt pins to the interrupt
	// controller as INTxRouting says; nil leaves them unconnected
	// (Interrupt Line 0xFF).
	INTx        LevelIRQAllocator
	INTxRouting INTxRouting
}

// Bus is PCI bus 0 with its host bridge. It serves the configuration
// front ends, allocates BAR addresses, places BARs on an MMIO bus and
// connects interrupt pins.
type Bus struct {
	mu      sync.Mutex
	addr    uint32 // the 0xCF8 register
	slots   [MaxDevices]Function
	mmio    *devices.Bus
	mem32   window
	mem64   window
	intx    LevelIRQAllocator
	routing INTxRouting
}

// window is a BAR allocation window [next, end).
type window struct{ next, end uint64 }

// NewBus returns bus 0 whose BARs go on mmio and are all allocated from
// [winStart, winEnd), without interrupt routing. Device 0 is the host
// bridge.
func NewBus(mmio *devices.Bus, winStart, winEnd uint64) *Bus {
	return NewBusWith(BusConfig{MMIO: mmio, Mem32Start: winStart, Mem32End: winEnd})
}

// NewBusWith returns bus 0 with the resources in c. Device 0 is the host
// bridge.
func NewBusWith(c BusConfig) *Bus {
	b := &Bus{
		mmio:    c.MMIO,
		mem32:   window{c.Mem32Start, c.Mem32End},
		mem64:   window{c.Mem64Start, c.Mem64End},
		intx:    c.INTx,
		routing: c.INTxRouting,
	}
	b.slots[0] = NewHostBridge()
	return b
}

// Add puts f in the first free device slot, assigns its BARs, connects its
// interrupt pin and returns the device number.
func (b *Bus) Add(f Function) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	slot := -1
	for i := range b.slots {
		if b.slots[i] == nil {
			slot = i
			break
		}
	}
	if slot < 0 {
		return 0, fmt.Errorf("pci: bus 0 is full (%d devices)", MaxDevices)
	}
	cfg := f.Config()
	if err := cfg.attach(b, b.allocLocked); err != nil {
		return 0, err
	}
	if cfg.intx != nil && b.intx != nil {
		if err := cfg.intx.connect(slot, b.routing, b.intx); err != nil {
			return 0, err
		}
	}
	b.slots[slot] = f
	return slot, nil
}

// allocLocked hands out a naturally aligned range of a BAR window: the one
// above 4 GiB for BARs that may go there (if the bus has it), else the
// 32-bit one.
func (b *Bus) allocLocked(size uint64, high bool) (uint64, error) {
	w := &b.mem32
	if high && b.mem64.end > b.mem64.next {
		w = &b.mem64
	}
	addr := (w.next + size - 1) &^ (size - 1)
	if addr < w.next || addr+size > w.end || addr+size < addr {
		return 0, fmt.Errorf("pci: MMIO window [%#x, %#x) exhausted allocating %#x bytes", w.next, w.end, size)
	}
	w.next = addr + size
	return addr, nil
}

// MapBAR implements Mapper on the bus's MMIO bus.
func (b *Bus) MapBAR(name string, addr, size uint64, h devices.Device) error {
	return b.mmio.Register(name, addr, size, h)
}

// UnmapBAR implements Mapper.
func (b *Bus) UnmapBAR(addr uint64) error { return b.mmio.Unregister(addr) }

// Close unmaps every BAR and disconnects every interrupt pin.
func (b *Bus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, f := range b.slots {
		if f == nil {
			continue
		}
		c := f.Config()
		c.unmapAll()
		if c.intx != nil {
			errs = append(errs, c.intx.disconnect())
		}
	}
	return errors.Join(errs...)
}

// function returns the function at bus/dev/fn, nil if there is none: only
// bus 0 exists and every device has function 0 only.
func (b *Bus) function(bus, dev, fn uint32) Function {
	if bus != 0 || fn != 0 || dev >= MaxDevices {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.slots[dev]
}

// configAccessOK reports whether an access of n bytes at register reg is
// one a function serves: 1, 2 or 4 bytes within one dword of the 256-byte
// conventional space. (Registers 0x100-0xFFF, PCI Express extended space,
// don't exist: no function has extended capabilities.)
func configAccessOK(reg, n int) bool {
	return (n == 1 || n == 2 || n == 4) && reg >= 0 && reg+n <= ConfigSize && reg&3+n <= 4
}

// ConfigRead is the configuration read path both front ends share. An
// absent function or an invalid access reads as all ones, which is how the
// guest knows a slot is empty.
func (b *Bus) ConfigRead(bus, dev, fn uint32, reg int, data []byte) {
	f := b.function(bus, dev, fn)
	if f == nil || !configAccessOK(reg, len(data)) {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	f.Config().Read(reg, data)
}

// ConfigWrite is the configuration write path both front ends share;
// writes to absent functions and invalid accesses are dropped.
func (b *Bus) ConfigWrite(bus, dev, fn uint32, reg int, data []byte) {
	f := b.function(bus, dev, fn)
	if f == nil || !configAccessOK(reg, len(data)) {
		return
	}
	f.Config().Write(reg, data)
}

// AddressPort returns the device for the 4-byte 0xCF8 register.
func (b *Bus) AddressPort() devices.Device { return addressPort{b} }

// DataPort returns the device for the 4-byte window at 0xCFC.
func (b *Bus) DataPort() devices.Device { return dataPort{b} }

// ECAM returns the device for an ECAM window of ECAMBusSize bytes (bus 0);
// offsets are relative to the window's base.
func (b *Bus) ECAM() devices.Device { return ecam{b} }

type addressPort struct{ b *Bus }

// configAddressReserved are the address register's bits that read as zero:
// 30:28 and 1:0 (§3.2.2.3.2).
const configAddressReserved = 0x7000_0003

// Read returns the address register; only dword accesses reach it, as on
// PC chipsets where byte accesses to 0xCF8-0xCFB are other registers.
func (p addressPort) Read(off uint64, data []byte) {
	if off != 0 || len(data) != 4 {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	binary.LittleEndian.PutUint32(data, p.b.addr)
}

func (p addressPort) Write(off uint64, data []byte) {
	if off != 0 || len(data) != 4 {
		return
	}
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	// Bits 1:0 are reserved and read as zero. Bits 27:24 are kept: some
	// chipsets (AMD's extended configuration access) put register bits
	// 11:8 there, which target() then refuses.
	p.b.addr = binary.LittleEndian.Uint32(data) &^ configAddressReserved
}

type dataPort struct{ b *Bus }

// target decodes the address register for an access at byte off of the
// data window. ok is false when the enable bit is clear.
func (p dataPort) target(off uint64) (bus, dev, fn uint32, reg int, ok bool) {
	p.b.mu.Lock()
	a := p.b.addr
	p.b.mu.Unlock()
	if a&configAddrEnable == 0 {
		return 0, 0, 0, 0, false
	}
	// Bits 27:24 select registers above 0xFF (AMD's extended access):
	// that part of the space reads as all ones, as through ECAM.
	reg = int((a>>24)&0xf)<<8 | int(a&0xfc) + int(off)
	return (a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 0x7, reg, true
}

func (p dataPort) Read(off uint64, data []byte) {
	bus, dev, fn, reg, ok := p.target(off)
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	p.b.ConfigRead(bus, dev, fn, reg, data)
}

func (p dataPort) Write(off uint64, data []byte) {
	if bus, dev, fn, reg, ok := p.target(off); ok {
		p.b.ConfigWrite(bus, dev, fn, reg, data)
	}
}

// ecam is the memory-mapped front end. Accesses must be 1, 2 or 4 bytes
// and naturally aligned (PCI Express §7.2.2.1); anything else reads as all
// ones and writes nothing.
type ecam struct{ b *Bus }

func decodeECAM(off uint64, n int) (bus, dev, fn uint32, reg int, ok bool) {
	if (n != 1 && n != 2 && n != 4) || off%uint64(n) != 0 || off >= 256*ECAMBusSize {
		return 0, 0, 0, 0, false
	}
	return uint32(off >> 20), uint32(off>>15) & 0x1f, uint32(off>>12) & 0x7, int(off % ecamFunctionSize), true
}

func (e ecam) Read(off uint64, data []byte) {
	bus, dev, fn, reg, ok := decodeECAM(off, len(data))
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	e.b.ConfigRead(bus, dev, fn, reg, data)
}

func (e ecam) Write(off uint64, data []byte) {
	if bus, dev, fn, reg, ok := decodeECAM(off, len(data)); ok {
		e.b.ConfigWrite(bus, dev, fn, reg, data)
	}
}

// HostBridge is the function at 00:00.0 that identifies the bus to the
// guest (Linux's configuration mechanism probe looks for a host bridge).
type HostBridge struct{ cfg *ConfigSpace }

// Host bridge identity: Red Hat's generic PCIe host bridge ID, which no
// guest driver binds to.
const (
	hostBridgeVendor = 0x1b36
	hostBridgeDevice = 0x0008
)

// NewHostBridge returns the host bridge function.
func NewHostBridge() *HostBridge {
	return &HostBridge{cfg: NewConfigSpace("host-bridge", Identity{
		VendorID: hostBridgeVendor, DeviceID: hostBridgeDevice, Class: ClassBridgeHost,
	})}
}

// Config implements Function.
func (h *HostBridge) Config() *ConfigSpace { return h.cfg }
