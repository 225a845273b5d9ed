package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/govmm/vmm/memory"
)

// Split virtqueue descriptor layout (§2.7.5): le64 addr, le32 len,
// le16 flags, le16 next.
const (
	descSize         = 16
	descFlagNext     = 1 // VIRTQ_DESC_F_NEXT
	descFlagWrite    = 2 // VIRTQ_DESC_F_WRITE
	descFlagIndirect = 4 // VIRTQ_DESC_F_INDIRECT
	// maxChainBytes bounds a chain's total length: the used ring reports
	// lengths as le32 (§2.7.8).
	maxChainBytes = 1<<32 - 1
)

// ErrBadChain wraps every reason a descriptor chain is rejected.
var ErrBadChain = errors.New("invalid descriptor chain")

// Buffer is one guest buffer of a chain.
type Buffer struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Chain is a parsed descriptor chain: its head index (what goes back in the
// used ring) and its buffers in order, indirect tables expanded. Every
// buffer lies wholly inside guest RAM, readable ones come first.
type Chain struct {
	Head    uint16
	Buffers []Buffer
	// ReadLen and WriteLen are the total device-readable and
	// device-writable bytes.
	ReadLen, WriteLen uint64
}

func badChain(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadChain, fmt.Sprintf(format, args...))
}

// descTable is a descriptor table in guest memory: host maps it when the
// caller has it mapped (a queue's own table, an indirect table already
// checked to lie in RAM), else every descriptor is looked up in mem.
type descTable struct {
	mem  *memory.Guest
	addr uint64
	host []byte
}

// read copies descriptor i out of guest memory.
func (t *descTable) read(i uint16) (addr uint64, length uint32, flags, next uint16, err error) {
	var b [descSize]byte
	if off := int(i) * descSize; off+descSize <= len(t.host) {
		copy(b[:], t.host[off:off+descSize])
	} else if err := t.mem.ReadAt(b[:], t.addr+uint64(i)*descSize); err != nil {
		return 0, 0, 0, 0, badChain("descriptor %d: %v", i, err)
	}
	le := binary.LittleEndian
	return le.Uint64(b[0:]), le.Uint32(b[8:]), le.Uint16(b[12:]), le.Uint16(b[14:]), nil
}

// ParseChain walks the chain starting at head in the descriptor table at
// table (queueSize entries). It copies every descriptor before using it, so
// a driver changing the table concurrently can't make the result
// inconsistent. Rejected (ErrBadChain): a head or next index outside the
// table, a buffer not wholly in guest RAM, a zero-length buffer, a chain
// longer than the queue size (which also catches loops), an indirect
// descriptor when indirect wasn't negotiated, with NEXT also set, of a
// length that is zero or not a multiple of 16, or inside an indirect table
// (§2.7.5.3.1), a readable buffer after a writable one (§2.7.4.2), and a
// total length that can't be reported in the used ring.
func ParseChain(mem *memory.Guest, table uint64, queueSize uint16, head uint16, indirect bool) (Chain, error) {
	return AppendChain(nil, mem, table, queueSize, head, indirect)
}

// AppendChain is ParseChain storing the chain's buffers in buf's array
// (from buf[:0] on, growing it when it is too short): a device that keeps a
// buffer list per request slot parses chain after chain without allocating.
// The returned Chain.Buffers aliases buf's storage when it fits.
func AppendChain(buf []Buffer, mem *memory.Guest, table uint64, queueSize uint16, head uint16, indirect bool) (Chain, error) {
	return appendChain(buf, mem, descTable{mem: mem, addr: table}, queueSize, head, indirect)
}

// appendChain is AppendChain reading the queue's table through tbl.
func appendChain(buf []Buffer, mem *memory.Guest, tbl descTable, queueSize uint16, head uint16, indirect bool) (Chain, error) {
	c := Chain{Head: head, Buffers: buf[:0]}
	if queueSize == 0 {
		return c, badChain("queue size 0")
	}
	if head >= queueSize {
		return c, badChain("head %d outside a queue of %d", head, queueSize)
	}
	max := int(queueSize)
	idx := head
	tblSize := queueSize
	inIndirect := false
	for steps := 0; ; steps++ {
		if steps >= max {
			return c, badChain("chain from head %d has more than %d descriptors (loop?)", head, max)
		}
		addr, length, flags, next, err := tbl.read(idx)
		if err != nil {
			return c, err
		}
		if flags&descFlagIndirect != 0 {
			switch {
			case !indirect:
				return c, badChain("descriptor %d is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated", idx)
			case inIndirect:
				return c, badChain("indirect descriptor inside an indirect table")
			case flags&descFlagNext != 0:
				return c, badChain("descriptor %d has both INDIRECT and NEXT", idx)
			case length == 0 || length%descSize != 0:
				return c, badChain("indirect table length %d is not a non-zero multiple of %d", length, descSize)
			case uint64(length)/descSize > uint64(queueSize):
				return c, badChain("indirect table of %d descriptors exceeds the queue size %d", length/descSize, queueSize)
			}
			host, err := mem.Slice(addr, uint64(length))
			if err != nil {
				return c, badChain("indirect table [%#x, +%#x) outside guest RAM", addr, length)
			}
			// Only the head's descriptor may point to a table; the chain
			// continues there, counting entries against the same limit.
			inIndirect = true
			tbl = descTable{mem: mem, addr: addr, host: host}
			tblSize, idx = uint16(length/descSize), 0
			continue
		}
		if length == 0 {
			return c, badChain("descriptor %d has length 0", idx)
		}
		if !mem.Contains(addr, uint64(length)) {
			return c, badChain("buffer [%#x, +%#x) outside guest RAM", addr, length)
		}
		w := flags&descFlagWrite != 0
		if !w && c.WriteLen > 0 {
			return c, badChain("readable descriptor %d after a writable one", idx)
		}
		if w {
			c.WriteLen += uint64(length)
		} else {
			c.ReadLen += uint64(length)
		}
		if c.ReadLen+c.WriteLen > maxChainBytes {
			return c, badChain("chain longer than %d bytes", uint64(maxChainBytes))
		}
		c.Buffers = append(c.Buffers, Buffer{Addr: addr, Len: length, Write: w})
		if flags&descFlagNext == 0 {
			return c, nil
		}
		if next >= tblSize {
			return c, badChain("next index %d outside a table of %d", next, tblSize)
		}
		idx = next
	}
}
