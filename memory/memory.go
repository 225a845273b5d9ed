// Package memory is the VMM's one view of guest RAM: a set of host mappings
// indexed by guest-physical address, every access bounds-checked, so no other
// package does pointer arithmetic on guest memory.
package memory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrOutOfRange reports an access that is not wholly inside one RAM region.
var ErrOutOfRange = errors.New("guest address out of range")

// Region is one contiguous range of guest RAM backed by a host mapping.
type Region struct {
	GuestAddr uint64
	Host      []byte // len(Host) is the region size
}

// End returns the first guest-physical address past the region.
func (r Region) End() uint64 { return r.GuestAddr + uint64(len(r.Host)) }

// Guest is guest RAM. It is safe for concurrent use: the mappings never change
// after construction, and callers synchronise on the bytes they share with
// the guest (as hardware does).
type Guest struct {
	regions []Region
	owned   bool
	// backing identifies the file NewFromFile mapped, so Dump can refuse
	// to overwrite it; nil for anonymous memory.
	backing *fileID
	// dirty is one bitmap per region of the pages written through this
	// Guest since TakeDirty, or nil when not tracking (Options.TrackDirty):
	// then every write path pays one nil check.
	dirty [][]atomic.Uint64
}

// Layout describes one region to allocate.
type Layout struct {
	GuestAddr uint64
	Size      uint64
}

// Options tune how host memory backing the guest is mapped.
type Options struct {
	// HugePages backs RAM with transparent huge pages where the host allows.
	HugePages bool
	// TrackDirty records the pages the VMM writes (TakeDirty), for diff
	// snapshots. The guest's own writes are KVM's to track (its dirty log).
	TrackDirty bool
}

// New maps anonymous, lazily-populated host memory for each layout entry.
// Regions must not overlap and must be page-aligned.
func New(layout []Layout, opt Options) (*Guest, error) {
	g := &Guest{owned: true}
	for _, l := range layout {
		if l.Size == 0 || l.Size%uint64(unix.Getpagesize()) != 0 || l.GuestAddr%uint64(unix.Getpagesize()) != 0 {
			g.Close()
			return nil, fmt.Errorf("memory: region %#x+%#x is not page aligned", l.GuestAddr, l.Size)
		}
		b, err := unix.Mmap(-1, 0, int(l.Size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("memory: map %d bytes for guest RAM at %#x: %w", l.Size, l.GuestAddr, err)
		}
		if opt.HugePages {
			// Best effort: THP may be disabled on the host, which only costs speed.
			_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
		}
		g.regions = append(g.regions, Region{GuestAddr: l.GuestAddr, Host: b})
	}
	if err := g.sortAndCheck(); err != nil {
		g.Close()
		return nil, err
	}
	g.trackDirty(opt.TrackDirty)
	return g, nil
}

// FromRegions wraps existing host buffers (for tests and fuzzing); Close does
// not unmap them.
func FromRegions(regions ...Region) (*Guest, error) {
	g := &Guest{regions: append([]Region(nil), regions...)}
	if err := g.sortAndCheck(); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *Guest) sortAndCheck() error {
	sort.Slice(g.regions, func(i, j int) bool { return g.regions[i].GuestAddr < g.regions[j].GuestAddr })
	for i := 1; i < len(g.regions); i++ {
		if g.regions[i].GuestAddr < g.regions[i-1].End() {
			return fmt.Errorf("memory: regions at %#x and %#x overlap", g.regions[i-1].GuestAddr, g.regions[i].GuestAddr)
		}
	}
	return nil
}

// Close unmaps guest RAM. The Guest must not be used afterwards.
func (g *Guest) Close() error {
	var first error
	if g.owned {
		for _, r := range g.regions {
			if err := unix.Munmap(r.Host); err != nil && first == nil {
				first = err
			}
		}
	}
	g.regions = nil
	return first
}

// Regions returns the RAM regions in ascending guest address order.
func (g *Guest) Regions() []Region { return append([]Region(nil), g.regions...) }

// Size returns the total RAM size in bytes.
func (g *Guest) Size() uint64 {
	var n uint64
	for _, r := range g.regions {
		n += uint64(len(r.Host))
	}
	return n
}

// Slice returns the host bytes backing [addr, addr+n). The range must lie in
// one region. The slice aliases guest memory: the guest may change it at any
// time, so parse copies, not the slice, when the content is guest-controlled.
// The caller may write the slice (an io_uring read lands in it), so when
// tracking, its pages count as dirty.
func (g *Guest) Slice(addr, n uint64) ([]byte, error) {
	s, err := g.slice(addr, n)
	if g.dirty != nil && err == nil {
		g.markDirty(addr, n)
	}
	return s, err
}

// slice is Slice for the accesses that only read, and for writers that
// mark their pages themselves.
func (g *Guest) slice(addr, n uint64) ([]byte, error) {
	for i := range g.regions {
		r := &g.regions[i]
		if addr >= r.GuestAddr && addr < r.End() {
			off := addr - r.GuestAddr
			if n > uint64(len(r.Host))-off {
				break
			}
			return r.Host[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfRange, addr, n)
}

// Contains reports whether [addr, addr+n) is wholly inside one RAM region.
func (g *Guest) Contains(addr, n uint64) bool {
	_, err := g.slice(addr, n)
	return err == nil
}

// ReadAt copies guest memory at addr into p.
func (g *Guest) ReadAt(p []byte, addr uint64) error {
	s, err := g.slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(p, s)
	return nil
}

// WriteAt copies p into guest memory at addr.
func (g *Guest) WriteAt(p []byte, addr uint64) error {
	s, err := g.Slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	copy(s, p)
	return nil
}

// Zero clears [addr, addr+n).
func (g *Guest) Zero(addr, n uint64) error {
	s, err := g.Slice(addr, n)
	if err != nil {
		return err
	}
	clear(s)
	return nil
}

// Uint16 reads a little-endian value.
func (g *Guest) Uint16(addr uint64) (uint16, error) {
	s, err := g.slice(addr, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Uint32 reads a little-endian value.
func (g *Guest) Uint32(addr uint64) (uint32, error) {
	s, err := g.slice(addr, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Uint64 reads a little-endian value.
func (g *Guest) Uint64(addr uint64) (uint64, error) {
	s, err := g.slice(addr, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// PutUint16 writes a little-endian value.
func (g *Guest) PutUint16(addr uint64, v uint16) error {
	s, err := g.Slice(addr, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

// PutUint32 writes a little-endian value.
func (g *Guest) PutUint32(addr uint64, v uint32) error {
	s, err := g.Slice(addr, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

// PutUint64 writes a little-endian value.
func (g *Guest) PutUint64(addr uint64, v uint64) error {
	s, err := g.Slice(addr, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}

// OrUint64 sets bits in the little-endian 64-bit value at addr, which must
// be 8-byte aligned, with one atomic read-modify-write, as a processor sets
// the accessed and dirty flags of a page-table entry: a vCPU updating the
// same entry at the same time loses nothing.
func (g *Guest) OrUint64(addr, bits uint64) error {
	if addr%8 != 0 {
		return fmt.Errorf("memory: unaligned 64-bit update at %#x", addr)
	}
	s, err := g.Slice(addr, 8)
	if err != nil {
		return err
	}
	p := unsafe.Pointer(unsafe.SliceData(s))
	if uintptr(p)%8 != 0 {
		// Host buffers handed to FromRegions need not be aligned.
		binary.LittleEndian.PutUint64(s, binary.LittleEndian.Uint64(s)|bits)
		return nil
	}
	atomic.OrUint64((*uint64)(p), bits) // x86-64: native order is little-endian
	return nil
}
