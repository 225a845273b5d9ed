// Package pci emulates a conventional PCI bus 0 behind a host bridge:
// configuration mechanism #1 at I/O ports 0xCF8/0xCFC, type 0 configuration
// headers with memory BARs allocated from a 32-bit MMIO window, and MSI-X.
//
// References: PCI Local Bus Specification 3.0 (configuration mechanism #1
// §3.2.2.3.2, header §6.1-6.2, capabilities §6.7, MSI-X §6.8.2).
package pci

import (
	"encoding/binary"
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

// Function is one PCI function: everything about it the bus needs is its
// configuration space.
type Function interface {
	Config() *ConfigSpace
}

// Bus is PCI bus 0 with its host bridge. It serves configuration
// mechanism #1, allocates BAR addresses and places BARs on an MMIO bus.
type Bus struct {
	mu     sync.Mutex
	addr   uint32 // the 0xCF8 register
	slots  [MaxDevices]Function
	mmio   *devices.Bus
	next   uint64 // next free address in the BAR window
	winEnd uint64
}

// NewBus returns bus 0 whose BARs go on mmio and are allocated from
// [winStart, winEnd). Device 0 is the host bridge.
func NewBus(mmio *devices.Bus, winStart, winEnd uint64) *Bus {
	b := &Bus{mmio: mmio, next: winStart, winEnd: winEnd}
	b.slots[0] = NewHostBridge()
	return b
}

// Add puts f in the first free device slot, assigns its BARs and returns
// the device number.
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
	if err := f.Config().attach(b, b.allocLocked); err != nil {
		return 0, err
	}
	b.slots[slot] = f
	return slot, nil
}

// allocLocked hands out a naturally aligned range of the BAR window.
func (b *Bus) allocLocked(size uint64) (uint64, error) {
	addr := (b.next + size - 1) &^ (size - 1)
	if addr+size > b.winEnd || addr+size < addr {
		return 0, fmt.Errorf("pci: MMIO window exhausted allocating %#x bytes", size)
	}
	b.next = addr + size
	return addr, nil
}

// MapBAR implements Mapper on the bus's MMIO bus.
func (b *Bus) MapBAR(name string, addr, size uint64, h devices.Device) error {
	return b.mmio.Register(name, addr, size, h)
}

// UnmapBAR implements Mapper.
func (b *Bus) UnmapBAR(addr uint64) error { return b.mmio.Unregister(addr) }

// Close unmaps every BAR.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.slots {
		if f != nil {
			f.Config().unmapAll()
		}
	}
}

// AddressPort returns the device for the 4-byte 0xCF8 register.
func (b *Bus) AddressPort() devices.Device { return addressPort{b} }

// DataPort returns the device for the 4-byte window at 0xCFC.
func (b *Bus) DataPort() devices.Device { return dataPort{b} }

type addressPort struct{ b *Bus }

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
	p.b.addr = binary.LittleEndian.Uint32(data) &^ 0x7000_0003
}

type dataPort struct{ b *Bus }

// target decodes the address register for an access at byte off of the
// data window: the function (nil when absent or disabled) and the register.
func (p dataPort) target(off uint64) (Function, int) {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	a := p.b.addr
	if a&configAddrEnable == 0 {
		return nil, 0
	}
	bus := (a >> 16) & 0xff
	dev := (a >> 11) & 0x1f
	fn := (a >> 8) & 0x7
	reg := int(a&0xfc) + int(off)
	// Only the 256-byte conventional space exists: a register above it,
	// selected through bits 27:24, reads as all ones.
	extended := (a >> 24) & 0xf
	if bus != 0 || fn != 0 || extended != 0 {
		return nil, 0
	}
	return p.b.slots[dev], reg
}

// Read returns configuration data; an absent function reads as all ones,
// which is how the guest knows the slot is empty.
func (p dataPort) Read(off uint64, data []byte) {
	f, reg := p.target(off)
	if f == nil || reg+len(data) > ConfigSize {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	f.Config().Read(reg, data)
}

func (p dataPort) Write(off uint64, data []byte) {
	f, reg := p.target(off)
	if f == nil || reg+len(data) > ConfigSize {
		return
	}
	f.Config().Write(reg, data)
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
