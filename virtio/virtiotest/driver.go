// Package virtiotest is a fake virtio driver for in-process device tests:
// it lays out a split virtqueue in guest memory built from plain Go
// buffers, posts descriptor chains and collects used entries, the way a
// guest driver would (virtio 1.2 §2.7); PCI drives a device's virtio-PCI
// transport through a PCI bus of its own (§4.1).
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
)

// Descriptor flags (§2.7.5).
const (
	FlagNext     = 1
	FlagWrite    = 2
	FlagIndirect = 4
)

// Buf is one buffer of a chain the fake driver posts.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// Driver is a fake driver owning one queue in a private guest RAM.
type Driver struct {
	Mem  *memory.Guest
	Size uint16
	// Ring addresses.
	Desc, Avail, Used uint64

	ram      []byte
	mu       sync.Mutex
	next     uint64 // bump allocator for buffers
	end      uint64 // where the allocator's RAM ends
	ringsEnd uint64 // where the rings end and the buffers begin
	nextDesc uint16
	availIdx uint16
	lastUsed uint16
}

// Base is where the fake guest RAM starts (not 0, so a zero address is
// always outside RAM).
const Base = 0x10000

// NewDriver makes ramSize bytes of guest RAM with a queue of size entries
// at its start.
func NewDriver(ramSize uint64, size uint16) (*Driver, error) {
	return NewDriverOn(make([]byte, ramSize), size)
}

// NewDriverOn is NewDriver over caller-provided RAM. Over an mmap'd
// region, which the race detector does not track, a test may touch the
// rings while the device runs, as a real guest does.
func NewDriverOn(ram []byte, size uint16) (*Driver, error) {
	mem, err := memory.FromRegions(memory.Region{GuestAddr: Base, Host: ram})
	if err != nil {
		return nil, err
	}
	d := &Driver{Mem: mem, Size: size, ram: ram, next: Base, end: Base + uint64(len(ram))}
	d.Desc = d.Alloc(16*uint64(size), 16)
	d.Avail = d.Alloc(6+2*uint64(size), 2)
	d.Used = d.Alloc(6+8*uint64(size), 4)
	d.ringsEnd = d.next
	return d, nil
}

// Reset puts the driver back as NewDriverOn left it, as a driver starts
// over after a device reset (§2.4): rings zeroed, indices from 0, and the
// RAM after the rings free again (buffers allocated before are reused by
// the next allocations). Make a new Queue after it; the device side of
// the old one must be stopped. Fuzz targets use it to give every input a
// fresh queue without allocating guest RAM each time.
func (d *Driver) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.ram[d.Desc-Base : d.ringsEnd-Base])
	d.next, d.nextDesc, d.availIdx, d.lastUsed = d.ringsEnd, 0, 0, 0
}

// NewMappedDriver is NewDriver over ramSize bytes of anonymous mmap'd RAM,
// unmapped when the test ends. The race detector tracks the Go heap, not
// such a mapping, so the test may touch the rings while the device runs,
// ordered by the ring protocol (not Go's memory model) as with a real
// guest; benchmarks use it for the same reason.
func NewMappedDriver(tb testing.TB, ramSize uint64, size uint16) *Driver {
	tb.Helper()
	ram, err := unix.Mmap(-1, 0, int(ramSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Munmap(ram) })
	d, err := NewDriverOn(ram, size)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// Alloc returns n bytes of guest RAM aligned to align. It panics when the
// fake RAM is exhausted: a bug in the test, not in the device.
func (d *Driver) Alloc(n, align uint64) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := (d.next + align - 1) &^ (align - 1)
	if a+n > d.end {
		panic(fmt.Sprintf("virtiotest: fake RAM exhausted allocating %d bytes", n))
	}
	d.next = a + n
	return a
}

// Write copies b to guest RAM at addr.
func (d *Driver) Write(addr uint64, b []byte) {
	if err := d.Mem.WriteAt(b, addr); err != nil {
		panic(err)
	}
}

// Read returns n bytes of guest RAM at addr.
func (d *Driver) Read(addr uint64, n int) []byte {
	b := make([]byte, n)
	if err := d.Mem.ReadAt(b, addr); err != nil {
		panic(err)
	}
	return b
}

// PutDesc writes descriptor i of the table at table.
func (d *Driver) PutDesc(table uint64, i uint16, addr uint64, length uint32, flags, next uint16) {
	var b [16]byte
	le := binary.LittleEndian
	le.PutUint64(b[0:], addr)
	le.PutUint32(b[8:], length)
	le.PutUint16(b[12:], flags)
	le.PutUint16(b[14:], next)
	d.Write(table+uint64(i)*16, b[:])
}

// Chain writes bufs as a chain of consecutive descriptors in the queue's
// table and returns its head (it does not post it).
func (d *Driver) Chain(bufs ...Buf) uint16 {
	d.mu.Lock()
	head := d.nextDesc
	d.nextDesc = (d.nextDesc + uint16(len(bufs))) % d.Size
	d.mu.Unlock()
	for i, b := range bufs {
		idx := (head + uint16(i)) % d.Size
		var flags uint16
		if b.Write {
			flags |= FlagWrite
		}
		if i < len(bufs)-1 {
			flags |= FlagNext
		}
		d.PutDesc(d.Desc, idx, b.Addr, b.Len, flags, (idx+1)%d.Size)
	}
	return head
}

// IndirectChain writes bufs into a new indirect table and one descriptor
// pointing at it, and returns that descriptor's index.
func (d *Driver) IndirectChain(bufs ...Buf) uint16 {
	table := d.Alloc(16*uint64(len(bufs)), 16)
	for i, b := range bufs {
		var flags uint16
		if b.Write {
			flags |= FlagWrite
		}
		if i < len(bufs)-1 {
			flags |= FlagNext
		}
		d.PutDesc(table, uint16(i), b.Addr, b.Len, flags, uint16(i+1))
	}
	d.mu.Lock()
	head := d.nextDesc
	d.nextDesc = (d.nextDesc + 1) % d.Size
	d.mu.Unlock()
	d.PutDesc(d.Desc, head, table, uint32(16*len(bufs)), FlagIndirect, 0)
	return head
}

// Post makes head available to the device.
func (d *Driver) Post(head uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	le := binary.LittleEndian
	var b [2]byte
	le.PutUint16(b[:], head)
	d.Write(d.Avail+4+2*uint64(d.availIdx%d.Size), b[:])
	d.availIdx++
	le.PutUint16(b[:], d.availIdx)
	d.Write(d.Avail+2, b[:])
}

// SetUsedEvent writes the avail ring's used_event (EVENT_IDX).
func (d *Driver) SetUsedEvent(v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	d.Write(d.Avail+4+2*uint64(d.Size), b[:])
}

// UsedElem is one entry the device returned.
type UsedElem struct {
	ID, Len uint32
}

// PopUsed returns the next used entry, if the device published one.
func (d *Driver) PopUsed() (UsedElem, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	idx := binary.LittleEndian.Uint16(d.Read(d.Used+2, 2))
	if idx == d.lastUsed {
		return UsedElem{}, false
	}
	e := d.Read(d.Used+4+8*uint64(d.lastUsed%d.Size), 8)
	d.lastUsed++
	return UsedElem{ID: binary.LittleEndian.Uint32(e), Len: binary.LittleEndian.Uint32(e[4:])}, true
}

// WaitUsed polls for the next used entry for up to timeout.
func (d *Driver) WaitUsed(timeout time.Duration) (UsedElem, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if e, ok := d.PopUsed(); ok {
			return e, true
		}
		if time.Now().After(deadline) {
			return UsedElem{}, false
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Queue returns a device-side queue over the driver's rings, as the
// transport would hand it to a device after DRIVER_OK.
func (d *Driver) Queue(features uint64, notify func()) (*virtio.Queue, error) {
	return virtio.NewTestQueue(d.Mem, d.Size, d.Desc, d.Avail, d.Used, features, notify)
}

// UsedReader reaps a queue's used ring straight from guest memory, without
// the allocation and locking per entry of PopUsed: benchmarks use it so
// that the fake guest, which shares the machine's CPUs with the device,
// costs no more than a real guest's driver would. Only its user may read
// the ring.
type UsedReader struct {
	Driver *Driver
	last   uint16
}

// Pop returns the next used element, if the device has published one.
func (u *UsedReader) Pop() (id, n uint32, ok bool) {
	d := u.Driver
	idx, err := d.Mem.Uint16(d.Used + 2)
	if err != nil || idx == u.last {
		return 0, 0, false
	}
	e := d.Used + 4 + 8*uint64(u.last%d.Size)
	id, _ = d.Mem.Uint32(e)
	n, _ = d.Mem.Uint32(e + 4)
	u.last++
	return id, n, true
}
