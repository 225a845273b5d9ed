package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/govmm/vmm/devices"
)

// Type 0 configuration header offsets (PCI Local Bus Specification 3.0
// §6.1, Figure 6-1).
const (
	RegVendorID      = 0x00
	RegDeviceID      = 0x02
	RegCommand       = 0x04
	RegStatus        = 0x06
	RegRevisionID    = 0x08
	RegClassCode     = 0x09 // programming interface, subclass, base class
	RegHeaderType    = 0x0e
	RegBAR0          = 0x10
	RegSubsysVendor  = 0x2c
	RegSubsysID      = 0x2e
	RegCapPtr        = 0x34
	RegInterruptLine = 0x3c
	RegInterruptPin  = 0x3d

	// ConfigSize is the conventional configuration space reachable through
	// configuration mechanism #1.
	ConfigSize = 256
	// NumBARs is the number of base address registers in a type 0 header.
	NumBARs = 6
	// firstCapOffset is where capabilities start: right after the header.
	firstCapOffset = 0x40
)

// Command register bits (§6.2.2).
const (
	CommandIO          = 1 << 0
	CommandMemory      = 1 << 1
	CommandBusMaster   = 1 << 2
	CommandINTxDisable = 1 << 10
	// commandWritable: the bits a guest may change. We decode memory only
	// and ignore parity/SERR/fast back-to-back.
	commandWritable = CommandIO | CommandMemory | CommandBusMaster | CommandINTxDisable
)

// Status register bits (§6.2.3).
const (
	// StatusInterrupt is the Interrupt Status bit: the function asserts
	// its INTx# pin (whatever the Command register's INTx Disable says).
	StatusInterrupt = 1 << 3
	statusCapList   = 1 << 4 // a capability list starts at RegCapPtr
)

// BAR low bits (§6.2.5.1).
const (
	barMem64       = 0x4 // type 10b: 64-bit memory BAR
	barPrefetch    = 0x8
	barMemAddrMask = ^uint64(0xf)
)

// Header types (§6.2.1).
const (
	HeaderTypeDevice = 0x00
)

// Class codes (PCI Code and ID Assignment Specification).
const (
	ClassBridgeHost   = 0x060000
	ClassStorageOther = 0x018000
)

// Capability IDs (PCI Code and ID Assignment Specification §2).
const (
	CapVendor = 0x09
	CapMSIX   = 0x11
)

// BAR describes one memory base address register a function implements.
type BAR struct {
	// Size is a power of two of at least 4 KiB (one page, so BARs never
	// share a page with another device).
	Size uint64
	// Is64 makes this a 64-bit BAR, which also takes the next BAR slot.
	Is64 bool
	// Prefetchable sets the BAR's prefetchable bit.
	Prefetchable bool
	// Handler serves guest accesses inside the BAR; offsets are relative
	// to the BAR's base.
	Handler devices.Device
	// OnMap, if set, is called after the BAR is placed at addr and its
	// accesses reach Handler (mapped) or when it stops decoding
	// (!mapped). Devices use it to move ioeventfds along with the BAR.
	OnMap func(addr uint64, mapped bool)
}

// barState is a BAR plus where it currently is.
type barState struct {
	BAR
	present  bool
	addr     uint64 // programmed base
	mapped   bool   // registered on the MMIO bus at mappedAt
	mappedAt uint64
}

// Mapper places BAR ranges on the machine's MMIO bus; the PCI Bus
// implements it for the functions it holds.
type Mapper interface {
	MapBAR(name string, addr, size uint64, h devices.Device) error
	UnmapBAR(addr uint64) error
}

// ConfigSpace is a type 0 function's 256-byte configuration space. Plain
// registers are stored bytes with a write mask; the BARs, the command
// register and capabilities that need side effects have hooks.
type ConfigSpace struct {
	mu      sync.Mutex
	name    string
	data    [ConfigSize]byte
	wmask   [ConfigSize]byte // 1 bits may be written by the guest
	bars    [NumBARs]barState
	lastCap int // offset of the last capability, 0 if none
	nextCap int // where the next capability goes
	hooks   []writeHook
	rhooks  []writeHook
	mapper  Mapper
	intx    *INTx       // the INTx pin, nil if the function has none
	msix    *MSIX       // the MSI-X capability, nil if the function has none
	msixOn  atomic.Bool // MSI-X Enable: INTx# must not be asserted
}

// writeHook runs after a guest write touching [off, off+n).
type writeHook struct {
	off, n int
	fn     func()
}

// Identity is what a function tells the guest about itself.
type Identity struct {
	VendorID, DeviceID     uint16
	SubsysVendor, SubsysID uint16
	Revision               uint8
	Class                  uint32 // base class << 16 | subclass << 8 | prog-if
}

// NewConfigSpace returns a type 0 header carrying id.
func NewConfigSpace(name string, id Identity) *ConfigSpace {
	c := &ConfigSpace{name: name, nextCap: firstCapOffset}
	le := binary.LittleEndian
	le.PutUint16(c.data[RegVendorID:], id.VendorID)
	le.PutUint16(c.data[RegDeviceID:], id.DeviceID)
	c.data[RegRevisionID] = id.Revision
	c.data[RegClassCode] = byte(id.Class)
	c.data[RegClassCode+1] = byte(id.Class >> 8)
	c.data[RegClassCode+2] = byte(id.Class >> 16)
	c.data[RegHeaderType] = HeaderTypeDevice
	le.PutUint16(c.data[RegSubsysVendor:], id.SubsysVendor)
	le.PutUint16(c.data[RegSubsysID:], id.SubsysID)
	le.PutUint16(c.wmask[RegCommand:], commandWritable)
	// Interrupt Line is scratch for the OS (§6.2.4).
	c.wmask[RegInterruptLine] = 0xff
	return c
}

// Name returns the function's name used in logs and bus registrations.
func (c *ConfigSpace) Name() string { return c.name }

// SetBAR declares BAR i. Call before the function is added to a bus.
func (c *ConfigSpace) SetBAR(i int, b BAR) error {
	if i < 0 || i >= NumBARs || (b.Is64 && i == NumBARs-1) {
		return fmt.Errorf("pci %s: BAR %d out of range", c.name, i)
	}
	if b.Size < 4096 || b.Size&(b.Size-1) != 0 {
		return fmt.Errorf("pci %s: BAR %d size %#x is not a power of two >= 4 KiB", c.name, i, b.Size)
	}
	if c.bars[i].present || (i > 0 && c.bars[i-1].present && c.bars[i-1].Is64) {
		return fmt.Errorf("pci %s: BAR %d already in use", c.name, i)
	}
	c.bars[i] = barState{BAR: b, present: true}
	return nil
}

// BARAddr returns the current base of BAR i.
func (c *ConfigSpace) BARAddr(i int) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bars[i].addr
}

// AddCapability appends a capability with the given ID; body is everything
// after the ID and next-pointer bytes. writable marks the body bytes the
// guest may change (nil: none). It returns the capability's offset.
func (c *ConfigSpace) AddCapability(id byte, body, writable []byte) (int, error) {
	size := 2 + len(body)
	off := c.nextCap
	if off+size > ConfigSize {
		return 0, fmt.Errorf("pci %s: configuration space full adding capability %#x", c.name, id)
	}
	c.data[off] = id
	c.data[off+1] = 0
	copy(c.data[off+2:], body)
	copy(c.wmask[off+2:], writable)
	if c.lastCap == 0 {
		c.data[RegCapPtr] = byte(off)
		binary.LittleEndian.PutUint16(c.data[RegStatus:], binary.LittleEndian.Uint16(c.data[RegStatus:])|statusCapList)
	} else {
		c.data[c.lastCap+1] = byte(off)
	}
	c.lastCap = off
	// Capabilities are DWORD aligned (§6.7).
	c.nextCap = (off + size + 3) &^ 3
	return off, nil
}

// OnWrite registers fn to run (with the config lock held, so it may use
// the Locked accessors) after any guest write overlapping [off, off+n).
func (c *ConfigSpace) OnWrite(off, n int, fn func()) {
	c.hooks = append(c.hooks, writeHook{off, n, fn})
}

// OnRead registers fn to run (with the config lock held) before any guest
// read overlapping [off, off+n), to refresh the stored bytes there.
func (c *ConfigSpace) OnRead(off, n int, fn func()) {
	c.rhooks = append(c.rhooks, writeHook{off, n, fn})
}

// Uint16Locked and friends access stored bytes from hooks.
func (c *ConfigSpace) Uint16Locked(off int) uint16 {
	return binary.LittleEndian.Uint16(c.data[off:])
}

// Uint32Locked reads a stored dword from a hook.
func (c *ConfigSpace) Uint32Locked(off int) uint32 {
	return binary.LittleEndian.Uint32(c.data[off:])
}

// BytesLocked returns the stored bytes [off, off+n) from a hook; the slice
// aliases the space, so a hook may also fill it.
func (c *ConfigSpace) BytesLocked(off, n int) []byte { return c.data[off : off+n] }

// PutUint32Locked stores a dword from a hook (ignoring the write mask).
func (c *ConfigSpace) PutUint32Locked(off int, v uint32) {
	binary.LittleEndian.PutUint32(c.data[off:], v)
}

// Bytes returns a copy of [off, off+n) of the stored space, for tests.
func (c *ConfigSpace) Bytes(off, n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.data[off:off+n]...)
}

// barIndex returns which BAR register slot holds config offset off, and
// whether off is in the BAR area.
func barIndex(off int) (int, bool) {
	if off < RegBAR0 || off >= RegBAR0+4*NumBARs {
		return 0, false
	}
	return (off - RegBAR0) / 4, true
}

// barRegister returns the 32-bit value the guest reads from BAR slot i.
func (c *ConfigSpace) barRegister(i int) uint32 {
	if i > 0 && c.bars[i-1].present && c.bars[i-1].Is64 {
		return uint32(c.bars[i-1].addr >> 32)
	}
	b := &c.bars[i]
	if !b.present {
		return 0
	}
	v := uint32(b.addr & barMemAddrMask)
	if b.Is64 {
		v |= barMem64
	}
	if b.Prefetchable {
		v |= barPrefetch
	}
	return v
}

// writeBARRegister applies a guest dword write to BAR slot i. Bits below
// the BAR's size read back as zero, which is how the guest sizes BARs
// (write all ones, read the mask back, §6.2.5.1).
func (c *ConfigSpace) writeBARRegister(i int, v uint32) {
	if i > 0 && c.bars[i-1].present && c.bars[i-1].Is64 {
		b := &c.bars[i-1]
		b.addr = b.addr&0xffff_ffff | uint64(v)<<32
		b.addr &^= b.Size - 1
		return
	}
	b := &c.bars[i]
	if !b.present {
		return
	}
	b.addr = b.addr&^0xffff_ffff | uint64(v)&barMemAddrMask
	b.addr &^= b.Size - 1
}

// Read serves a guest configuration read of len(data) bytes at off.
func (c *ConfigSpace) Read(off int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.rhooks {
		if off < h.off+h.n && off+len(data) > h.off {
			h.fn()
		}
	}
	for i := range data {
		o := off + i
		if o < 0 || o >= ConfigSize {
			data[i] = 0xff
			continue
		}
		if bi, ok := barIndex(o); ok {
			data[i] = byte(c.barRegister(bi) >> (8 * (o & 3)))
			continue
		}
		data[i] = c.data[o]
	}
}

// Write serves a guest configuration write of len(data) bytes at off.
func (c *ConfigSpace) Write(off int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if off < 0 || off+len(data) > ConfigSize {
		return
	}
	touchedBAR := false
	for i := 0; i < len(data); i++ {
		o := off + i
		if bi, ok := barIndex(o); ok {
			// Merge the written bytes into the current register value.
			reg := c.barRegister(bi)
			shift := 8 * (o & 3)
			reg = reg&^(0xff<<shift) | uint32(data[i])<<shift
			c.writeBARRegister(bi, reg)
			touchedBAR = true
			continue
		}
		c.data[o] = c.data[o]&^c.wmask[o] | data[i]&c.wmask[o]
	}
	end := off + len(data)
	if touchedBAR || (off < RegCommand+2 && end > RegCommand) {
		c.updateMappingsLocked()
	}
	for _, h := range c.hooks {
		if off < h.off+h.n && end > h.off {
			h.fn()
		}
	}
}

// attach assigns BAR addresses from alloc and remembers where to map them.
// alloc gets each BAR's size and whether it may live above 4 GiB (64-bit
// and prefetchable, the BARs a PCI-to-PCI bridge could also forward there).
func (c *ConfigSpace) attach(m Mapper, alloc func(size uint64, high bool) (uint64, error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mapper = m
	for i := range c.bars {
		b := &c.bars[i]
		if !b.present {
			continue
		}
		addr, err := alloc(b.Size, b.Is64 && b.Prefetchable)
		if err != nil {
			return fmt.Errorf("pci %s: BAR %d: %w", c.name, i, err)
		}
		b.addr = addr
	}
	return nil
}

// memoryEnabledLocked reports whether the function decodes memory.
func (c *ConfigSpace) memoryEnabledLocked() bool {
	return c.Uint16Locked(RegCommand)&CommandMemory != 0
}

// sizing reports whether the BAR holds the all-ones pattern a guest writes
// to size it, which is not a placement, so the BAR does not decode there:
// a 32-bit BAR reading back its size mask, or a 64-bit BAR whose upper
// half does (nothing lives in the top 4 GiB of the 64-bit space). While
// only the lower half of a 64-bit BAR is being sized the BAR moves below
// the next 4 GiB boundary, as on hardware; guests turn off memory decoding
// around sizing anyway.
func (b *barState) sizing() bool {
	if b.Is64 {
		return uint32(b.addr>>32)|uint32((b.Size-1)>>32) == 0xffff_ffff
	}
	return uint32(b.addr)|uint32(b.Size-1)|uint32(^barMemAddrMask) == 0xffff_ffff
}

// updateMappingsLocked makes the MMIO bus match the BARs and the command
// register: a BAR decodes when memory space is enabled and its address is
// neither zero nor the all-ones sizing pattern.
func (c *ConfigSpace) updateMappingsLocked() {
	if c.mapper == nil {
		return
	}
	on := c.memoryEnabledLocked()
	for i := range c.bars {
		b := &c.bars[i]
		if !b.present {
			continue
		}
		want := on && b.addr != 0 && !b.sizing() && b.addr+b.Size > b.addr
		if b.mapped && (!want || b.mappedAt != b.addr) {
			_ = c.mapper.UnmapBAR(b.mappedAt)
			b.mapped = false
			if b.OnMap != nil {
				b.OnMap(b.mappedAt, false)
			}
		}
		if want && !b.mapped {
			name := fmt.Sprintf("%s-bar%d", c.name, i)
			if err := c.mapper.MapBAR(name, b.addr, b.Size, b.Handler); err != nil {
				// The guest placed the BAR over something else; it stays
				// unmapped, like a conflicting device on real hardware.
				continue
			}
			b.mapped, b.mappedAt = true, b.addr
			if b.OnMap != nil {
				b.OnMap(b.addr, true)
			}
		}
	}
}

// unmapAll removes every BAR from the bus (on teardown).
func (c *ConfigSpace) unmapAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.bars {
		b := &c.bars[i]
		if b.mapped {
			_ = c.mapper.UnmapBAR(b.mappedAt)
			b.mapped = false
			if b.OnMap != nil {
				b.OnMap(b.mappedAt, false)
			}
		}
	}
}
