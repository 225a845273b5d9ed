// Package devices holds the VMM's emulated device model: the I/O buses that
// route guest port and MMIO accesses to devices, and (in subpackages) the
// devices themselves.
package devices

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Device is something mapped on a Bus. Offsets are relative to the start of
// the device's range. Devices do their own locking: vCPUs call them
// concurrently.
type Device interface {
	// Read fills data (1, 2, 4 or 8 bytes) from the device at offset.
	Read(offset uint64, data []byte)
	// Write gives the device data written at offset.
	Write(offset uint64, data []byte)
}

// ErrUnmapped is returned for an access no device claims.
var ErrUnmapped = errors.New("no device at address")

type busRange struct {
	base, size uint64
	dev        Device
	name       string
}

func (r busRange) end() uint64 { return r.base + r.size } // exclusive

// Bus maps address ranges (I/O ports or MMIO) to devices.
type Bus struct {
	name   string
	mu     sync.RWMutex
	ranges []busRange // sorted by base, non-overlapping
}

// NewBus returns an empty bus; name appears in errors ("pio", "mmio").
func NewBus(name string) *Bus { return &Bus{name: name} }

// Register maps d at [base, base+size). Overlap with an existing range is
// an error, so a mistake in the machine layout surfaces at build time.
func (b *Bus) Register(name string, base, size uint64, d Device) error {
	if size == 0 {
		return fmt.Errorf("%s bus: %s: empty range at %#x", b.name, name, base)
	}
	if base+size < base {
		return fmt.Errorf("%s bus: %s: range %#x+%#x wraps", b.name, name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base >= base })
	if i > 0 && b.ranges[i-1].end() > base {
		p := b.ranges[i-1]
		return fmt.Errorf("%s bus: %s [%#x, %#x) overlaps %s [%#x, %#x)", b.name, name, base, base+size, p.name, p.base, p.end())
	}
	if i < len(b.ranges) && b.ranges[i].base < base+size {
		n := b.ranges[i]
		return fmt.Errorf("%s bus: %s [%#x, %#x) overlaps %s [%#x, %#x)", b.name, name, base, base+size, n.name, n.base, n.end())
	}
	b.ranges = append(b.ranges, busRange{})
	copy(b.ranges[i+1:], b.ranges[i:])
	b.ranges[i] = busRange{base: base, size: size, dev: d, name: name}
	return nil
}

// Unregister removes the range starting at base.
func (b *Bus) Unregister(base uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, r := range b.ranges {
		if r.base == base {
			b.ranges = append(b.ranges[:i], b.ranges[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("%s bus: nothing registered at %#x", b.name, base)
}

func (b *Bus) find(addr uint64, n int) (busRange, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].end() > addr })
	if i == len(b.ranges) {
		return busRange{}, false
	}
	r := b.ranges[i]
	if addr < r.base || addr+uint64(n) > r.end() {
		return busRange{}, false
	}
	return r, true
}

// Read dispatches a guest read. Unclaimed reads return all ones, as an
// undriven ISA/PCI bus does, together with ErrUnmapped.
func (b *Bus) Read(addr uint64, data []byte) error {
	r, ok := b.find(addr, len(data))
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		return fmt.Errorf("%s bus: read %d bytes at %#x: %w", b.name, len(data), addr, ErrUnmapped)
	}
	r.dev.Read(addr-r.base, data)
	return nil
}

// Write dispatches a guest write. Unclaimed writes are dropped and reported.
func (b *Bus) Write(addr uint64, data []byte) error {
	r, ok := b.find(addr, len(data))
	if !ok {
		return fmt.Errorf("%s bus: write %d bytes at %#x: %w", b.name, len(data), addr, ErrUnmapped)
	}
	r.dev.Write(addr-r.base, data)
	return nil
}

// Interrupt is a device's interrupt output. Edge-style devices call Trigger;
// devices with a level (such as the 16550's INTR pin) call SetLevel.
type Interrupt interface {
	SetLevel(high bool) error
}
