package virtio

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/govmm/vmm/memory"
)

// Split virtqueue ring layout (§2.7.6, §2.7.8).
const (
	// Driver area (available ring): le16 flags, le16 idx, le16 ring[size],
	// le16 used_event.
	availFlagsOff    = 0
	availIdxOff      = 2
	availRingOff     = 4
	availElemSize    = 2
	availNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT
	// Device area (used ring): le16 flags, le16 idx, {le32 id, le32 len}
	// ring[size], le16 avail_event.
	usedIdxOff   = 2
	usedRingOff  = 4
	usedElemSize = 8
	// Alignment of the three areas (§2.7, table "Virtqueue Part Alignment").
	descAlign  = 16
	availAlign = 2
	usedAlign  = 4
	// MaxQueueSize is the largest split queue size (§2.7: up to 32768).
	MaxQueueSize = 32768
)

// NoVector is VIRTIO_MSI_NO_VECTOR (§4.1.5.1.2).
const NoVector = 0xffff

// Queue is a split virtqueue as the driver configured it. The avail side
// (Pop, Arm) belongs to one goroutine; Push may be called from several.
type Queue struct {
	Index int
	// Driver-programmed configuration (§4.1.4.3, queue_* fields).
	Size       uint16
	DescAddr   uint64
	DriverAddr uint64
	DeviceAddr uint64
	Vector     uint16

	mem *memory.Guest
	// The three areas, mapped once prepare checked they lie in RAM:
	// desc (16*Size bytes), avail (the driver area), used (the device
	// area).
	desc, avail, used []byte
	eventIdx          bool
	indirect          bool
	notify            func()

	nextAvail uint16
	// inFlight has a bit per descriptor head popped and not yet pushed,
	// so a paused queue can hand back what its device dropped (settle).
	inFlight []atomic.Uint64

	mu            sync.Mutex
	nextUsed      uint16
	signalledUsed uint16

	barrier atomic.Uint32
}

// fence orders the VMM's guest-memory stores before later loads, where the
// driver's view of the ring depends on it (the ring's "memory barrier"
// steps, §2.7.7.2, §2.7.13): a locked read-modify-write is a full barrier.
func (q *Queue) fence() { q.barrier.Add(1) }

// prepare validates the driver's ring addresses and readies the queue to
// run against mem with the negotiated features.
func (q *Queue) prepare(mem *memory.Guest, features uint64, notify func()) error {
	if q.Size == 0 || q.Size&(q.Size-1) != 0 || q.Size > MaxQueueSize {
		return fmt.Errorf("queue %d: size %d is not a power of two up to %d", q.Index, q.Size, MaxQueueSize)
	}
	n := uint64(q.Size)
	areas := []struct {
		name       string
		addr, size uint64
		align      uint64
	}{
		{"descriptor table", q.DescAddr, descSize * n, descAlign},
		{"driver area", q.DriverAddr, availRingOff + availElemSize*n + 2, availAlign},
		{"device area", q.DeviceAddr, usedRingOff + usedElemSize*n + 2, usedAlign},
	}
	var host [3][]byte
	for i, a := range areas {
		if a.addr%a.align != 0 {
			return fmt.Errorf("queue %d: %s at %#x is not %d-byte aligned", q.Index, a.name, a.addr, a.align)
		}
		s, err := mem.Slice(a.addr, a.size)
		if err != nil {
			return fmt.Errorf("queue %d: %s [%#x, +%#x) is outside guest RAM", q.Index, a.name, a.addr, a.size)
		}
		host[i] = s
	}
	q.mem = mem
	q.desc, q.avail, q.used = host[0], host[1], host[2]
	q.eventIdx = features&FeatureEventIdx != 0
	q.indirect = features&FeatureIndirectDesc != 0
	q.notify = notify
	q.nextAvail, q.nextUsed, q.signalledUsed = 0, 0, 0
	q.inFlight = make([]atomic.Uint64, (n+63)/64)
	return nil
}

// NewTestQueue returns a queue ready to use without a transport, for device
// tests driving a fake guest.
func NewTestQueue(mem *memory.Guest, size uint16, desc, driver, device uint64, features uint64, notify func()) (*Queue, error) {
	q := &Queue{Size: size, DescAddr: desc, DriverAddr: driver, DeviceAddr: device, Vector: NoVector}
	if notify == nil {
		notify = func() {}
	}
	if err := q.prepare(mem, features, notify); err != nil {
		return nil, err
	}
	return q, nil
}

// Pop returns the next available chain, ok=false when the ring is empty. A
// non-nil error means the driver broke the protocol; the queue must not be
// used further. Among the errors: a head that was popped and not yet
// pushed, so the chains a device holds are at most the queue size.
func (q *Queue) Pop() (c Chain, ok bool, err error) {
	return q.PopAppend(nil)
}

// PopAppend is Pop storing the chain's buffers in buf's array (see
// AppendChain), for a device that reuses buffer lists from chain to chain.
func (q *Queue) PopAppend(buf []Buffer) (c Chain, ok bool, err error) {
	le := binary.LittleEndian
	idx := le.Uint16(q.avail[availIdxOff:])
	if idx == q.nextAvail {
		return c, false, nil
	}
	if uint16(idx-q.nextAvail) > q.Size {
		return c, false, fmt.Errorf("queue %d: %w: avail idx %d is more than %d ahead of %d", q.Index, ErrBadChain, idx, q.Size, q.nextAvail)
	}
	slot := int(q.nextAvail % q.Size)
	head := le.Uint16(q.avail[availRingOff+availElemSize*slot:])
	q.nextAvail++
	// A head the device holds can't be made available again (§2.7.13:
	// the driver reuses a chain only once it is used): a driver that
	// re-posts one would have the device take requests without end,
	// never more than the queue size with every head counted once.
	// Only Pop sets bits and Push only clears them, so the check holds
	// until the Or below.
	if head < q.Size && q.inFlight[head/64].Load()&(1<<(head%64)) != 0 {
		return c, false, fmt.Errorf("queue %d: %w: head %d made available again while in flight", q.Index, ErrBadChain, head)
	}
	c, err = appendChain(buf, q.mem, descTable{mem: q.mem, addr: q.DescAddr, host: q.desc}, q.Size, head, q.indirect)
	if err != nil {
		return c, false, fmt.Errorf("queue %d: %w", q.Index, err)
	}
	// appendChain checked head < Size.
	q.inFlight[head/64].Or(1 << (head % 64))
	return c, true, nil
}

// Arm asks for a notification for the next buffer the driver makes
// available (with EVENT_IDX: avail_event = the next index we will read,
// §2.7.10) and reports whether buffers arrived in the meantime, in which
// case the caller must keep popping rather than wait.
func (q *Queue) Arm() (more bool, err error) {
	le := binary.LittleEndian
	if q.eventIdx {
		le.PutUint16(q.used[usedRingOff+usedElemSize*int(q.Size):], q.nextAvail)
	}
	q.fence()
	return le.Uint16(q.avail[availIdxOff:]) != q.nextAvail, nil
}

// Push returns the chain with head to the driver with written bytes
// stored in its writable buffers, and sends a used-buffer notification
// unless the driver suppressed it (§2.7.7, §2.7.10).
func (q *Queue) Push(head uint16, written uint32) error {
	le := binary.LittleEndian
	q.landed(head)
	q.mu.Lock()
	elem := q.used[usedRingOff+usedElemSize*int(q.nextUsed%q.Size):]
	le.PutUint32(elem, uint32(head))
	le.PutUint32(elem[4:], written)
	// The element must be visible before the index that publishes it.
	q.fence()
	q.nextUsed++
	le.PutUint16(q.used[usedIdxOff:], q.nextUsed)
	// ...and the index before we read the driver's suppression state.
	q.fence()
	need := q.needNotifyLocked()
	q.mu.Unlock()
	if need {
		q.notify()
	}
	return nil
}

// Used is one chain to return: its head and the bytes written to it.
type Used struct {
	Head    uint16
	Written uint32
}

// PushAll returns several chains at once: the driver sees them all
// together (one used index update) and gets at most one notification. A
// device whose answer spans several chains (virtio-net's mergeable receive
// buffers, §5.1.6.4) must publish them this way, since the driver may
// look at the used ring at any time.
func (q *Queue) PushAll(used []Used) error {
	if len(used) == 0 {
		return nil
	}
	le := binary.LittleEndian
	for _, u := range used {
		q.landed(u.Head)
	}
	q.mu.Lock()
	for i, u := range used {
		elem := q.used[usedRingOff+usedElemSize*int((q.nextUsed+uint16(i))%q.Size):]
		le.PutUint32(elem, uint32(u.Head))
		le.PutUint32(elem[4:], u.Written)
	}
	// The elements must be visible before the index that publishes them.
	q.fence()
	q.nextUsed += uint16(len(used))
	le.PutUint16(q.used[usedIdxOff:], q.nextUsed)
	// ...and the index before we read the driver's suppression state.
	q.fence()
	need := q.needNotifyLocked()
	q.mu.Unlock()
	if need {
		q.notify()
	}
	return nil
}

// needNotifyLocked decides whether the driver wants to hear about the used
// entries added since the last notification.
func (q *Queue) needNotifyLocked() bool {
	le := binary.LittleEndian
	if !q.eventIdx {
		return le.Uint16(q.avail[availFlagsOff:])&availNoInterrupt == 0
	}
	usedEvent := le.Uint16(q.avail[availRingOff+availElemSize*int(q.Size):])
	old, cur := q.signalledUsed, q.nextUsed
	q.signalledUsed = cur
	// vring_need_event (§2.7.10): notify when used_event lies in
	// [old, cur), i.e. the driver asked to hear about one of these.
	return uint16(cur-usedEvent-1) < uint16(cur-old)
}

// landed clears head's in-flight bit as it goes back to the driver.
func (q *Queue) landed(head uint16) {
	if int(head/64) < len(q.inFlight) {
		q.inFlight[head/64].And(^(1 << (head % 64)))
	}
}

// Mem returns the guest memory the queue's buffers live in.
func (q *Queue) Mem() *memory.Guest { return q.mem }
