package virtio

import (
	"fmt"

	"github.com/govmm/vmm/memory"
)

// Iovec is a scatter-gather list: host slices of guest memory that read and
// write as one run of bytes, as readv and writev see them. A device gets one
// from a chain (Chain.AppendReadable, Chain.AppendWritable) and hands it to
// the kernel as it is: it converts to [][]byte without copying (unix.Readv,
// unix.Pwritev, iouring.AppendIovecs).
//
// The slices alias guest memory: the guest may change the bytes at any time,
// so a device copies out what it parses (CopyOut) rather than parsing in
// place.
type Iovec [][]byte

// Len returns the number of bytes in v.
func (v Iovec) Len() uint64 {
	var n uint64
	for _, b := range v {
		n += uint64(len(b))
	}
	return n
}

// CopyOut copies v's bytes from byte off on into p and returns how many it
// copied: len(p), or fewer when v ends first.
func (v Iovec) CopyOut(p []byte, off uint64) int { return v.copyAt(p, off, false) }

// CopyIn copies p into v from byte off on and returns how many bytes fit.
func (v Iovec) CopyIn(p []byte, off uint64) int { return v.copyAt(p, off, true) }

// copyAt copies between p and v from v's byte off on: into v when in is
// set, out of it otherwise.
func (v Iovec) copyAt(p []byte, off uint64, in bool) int {
	done := 0
	for _, b := range v {
		if done == len(p) {
			break
		}
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			continue
		}
		if in {
			done += copy(b[off:], p[done:])
		} else {
			done += copy(p[done:], b[off:])
		}
		off = 0
	}
	return done
}

// Skip returns v without its first n bytes (all of them when n >= Len),
// leaving v as it is: the result shares v's array unless n cuts a segment,
// which takes a new array. It is for the rare paths (a short read or write
// carried on); a data path offsets CopyIn and CopyOut or maps the chain from
// an offset instead.
func (v Iovec) Skip(n uint64) Iovec {
	for len(v) > 0 && n >= uint64(len(v[0])) {
		n -= uint64(len(v[0]))
		v = v[1:]
	}
	if n == 0 || len(v) == 0 {
		return v
	}
	rest := make(Iovec, len(v))
	copy(rest, v)
	rest[0] = rest[0][n:]
	return rest
}

// AppendReadable appends to v the device-readable bytes of c from byte
// from on (skipping a header the caller copied out), mapped in mem, and
// returns the extended list. Passing v[:0] of a list kept from chain to
// chain maps without allocating once the array is long enough.
func (c *Chain) AppendReadable(v Iovec, mem *memory.Guest, from uint64) (Iovec, error) {
	return c.appendIovec(v, mem, false, from)
}

// AppendWritable is AppendReadable for the device-writable bytes.
func (c *Chain) AppendWritable(v Iovec, mem *memory.Guest, from uint64) (Iovec, error) {
	return c.appendIovec(v, mem, true, from)
}

func (c *Chain) appendIovec(v Iovec, mem *memory.Guest, writable bool, from uint64) (Iovec, error) {
	for _, b := range c.Buffers {
		if b.Write != writable {
			continue
		}
		if from >= uint64(b.Len) {
			from -= uint64(b.Len)
			continue
		}
		s, err := mem.Slice(b.Addr+from, uint64(b.Len)-from)
		if err != nil {
			return v, fmt.Errorf("chain head %d: map buffer: %w", c.Head, err)
		}
		from = 0
		v = append(v, s)
	}
	return v, nil
}

// CopyOut copies c's device-readable bytes from byte off on into p, without
// mapping the chain into an Iovec first, and returns how many it copied:
// len(p), or fewer when the readable part ends first.
func (c *Chain) CopyOut(mem *memory.Guest, p []byte, off uint64) (int, error) {
	return c.copyGuest(mem, p, off, false)
}

// CopyIn copies p into c's device-writable bytes from byte off on and
// returns how many bytes fit.
func (c *Chain) CopyIn(mem *memory.Guest, p []byte, off uint64) (int, error) {
	return c.copyGuest(mem, p, off, true)
}

// copyGuest copies between p and c's buffers of one direction, from byte
// off on: into guest memory when writable is set, out of it otherwise.
func (c *Chain) copyGuest(mem *memory.Guest, p []byte, off uint64, writable bool) (int, error) {
	done := 0
	for _, b := range c.Buffers {
		if done == len(p) {
			break
		}
		if b.Write != writable {
			continue
		}
		if off >= uint64(b.Len) {
			off -= uint64(b.Len)
			continue
		}
		k := min(uint64(b.Len)-off, uint64(len(p)-done))
		s, err := mem.Slice(b.Addr+off, k)
		if err != nil {
			return done, fmt.Errorf("chain head %d: map buffer: %w", c.Head, err)
		}
		if writable {
			copy(s, p[done:])
		} else {
			copy(p[done:], s)
		}
		done += int(k)
		off = 0
	}
	return done, nil
}
