package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
)

// Request types (§5.2.6).
const (
	typeIn          = 0  // VIRTIO_BLK_T_IN
	typeOut         = 1  // VIRTIO_BLK_T_OUT
	typeFlush       = 4  // VIRTIO_BLK_T_FLUSH
	typeGetID       = 8  // VIRTIO_BLK_T_GET_ID
	typeDiscard     = 11 // VIRTIO_BLK_T_DISCARD
	typeWriteZeroes = 13 // VIRTIO_BLK_T_WRITE_ZEROES
)

// Status values (§5.2.6).
const (
	StatusOK     = 0 // VIRTIO_BLK_S_OK
	StatusIOErr  = 1 // VIRTIO_BLK_S_IOERR
	StatusUnsupp = 2 // VIRTIO_BLK_S_UNSUPP
)

// Request framing (§5.2.6): a device-readable header (le32 type, le32
// reserved, le64 sector), then data, then a device-writable status byte.
// Discard and write-zeroes data is an array of le64 sector, le32
// num_sectors, le32 flags.
const (
	headerLen         = 16
	segmentLen        = 16
	segmentFlagUnmap  = 1 // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
	segmentFlagsKnown = segmentFlagUnmap
)

// errMalformed marks a request the device can't even answer (no header or
// no status byte); the driver broke the protocol.
var errMalformed = errors.New("malformed virtio-blk request")

// request is one parsed block request. A worker keeps one and parses
// request after request into it: out and in reuse their arrays.
type request struct {
	typ    uint32
	sector uint64
	out    virtio.Iovec // device-readable data after the header
	in     virtio.Iovec // device-writable data before the status byte
	status []byte
}

// parse frames chain c as a request in r without assuming how the driver
// laid out the descriptors (§2.7.4: no framing assumptions). ParseChain
// already checked every buffer (in guest RAM, readable ones first), so a
// mapping error is not expected.
func parse(mem *memory.Guest, c *virtio.Chain, r *request) error {
	if c.ReadLen < headerLen {
		return fmt.Errorf("%w: %d readable bytes, need a %d-byte header", errMalformed, c.ReadLen, headerLen)
	}
	if c.WriteLen < 1 {
		return fmt.Errorf("%w: no writable status byte", errMalformed)
	}
	var hdr [headerLen]byte
	if _, err := c.CopyOut(mem, hdr[:], 0); err != nil {
		return err
	}
	var err error
	if r.out, err = c.AppendReadable(r.out[:0], mem, headerLen); err != nil {
		return err
	}
	if r.in, err = c.AppendWritable(r.in[:0], mem, 0); err != nil {
		return err
	}
	// The status byte is the last writable one.
	last := len(r.in) - 1
	st := r.in[last]
	r.status = st[len(st)-1:]
	if len(st) == 1 {
		r.in[last] = nil
		r.in = r.in[:last]
	} else {
		r.in[last] = st[:len(st)-1]
	}
	r.typ = binary.LittleEndian.Uint32(hdr[0:])
	r.sector = binary.LittleEndian.Uint64(hdr[8:])
	return nil
}

// release drops r's references to guest memory, keeping its arrays.
func (r *request) release() {
	clear(r.out)
	clear(r.in)
	r.out, r.in, r.status = r.out[:0], r.in[:0], nil
}

// execute performs r and returns the status and how many bytes of the
// writable buffers (including the status byte) it wrote.
func (b *Block) execute(r *request, features uint64, log *slog.Logger) (status byte, written uint32) {
	switch r.typ {
	case typeIn:
		n := r.in.Len()
		if err := b.checkRange(r.sector, n); err != nil {
			b.logIOError(log, r, err)
			return StatusIOErr, 1
		}
		if err := b.preadv(r.in, int64(r.sector*SectorSize)); err != nil {
			b.logIOError(log, r, err)
			return StatusIOErr, 1
		}
		return StatusOK, uint32(n) + 1
	case typeOut:
		if b.cfg.ReadOnly {
			return StatusIOErr, 1
		}
		if err := b.checkRange(r.sector, r.out.Len()); err != nil {
			b.logIOError(log, r, err)
			return StatusIOErr, 1
		}
		if err := b.pwritev(r.out, int64(r.sector*SectorSize)); err != nil {
			b.logIOError(log, r, err)
			return StatusIOErr, 1
		}
		return StatusOK, 1
	case typeFlush:
		if b.cfg.ReadOnly {
			return StatusOK, 1
		}
		if err := unix.Fdatasync(int(b.file.Fd())); err != nil {
			b.logIOError(log, r, fmt.Errorf("fdatasync: %w", err))
			return StatusIOErr, 1
		}
		return StatusOK, 1
	case typeGetID:
		var id [IDLen]byte
		copy(id[:], b.cfg.ID)
		n := min(r.in.Len(), IDLen)
		r.in.CopyIn(id[:n], 0)
		return StatusOK, uint32(n) + 1
	case typeDiscard, typeWriteZeroes:
		feat := uint64(FeatureDiscard)
		if r.typ == typeWriteZeroes {
			feat = FeatureWriteZeroes
		}
		if features&feat == 0 {
			return StatusUnsupp, 1
		}
		if b.cfg.ReadOnly {
			return StatusIOErr, 1
		}
		return b.discard(r, log), 1
	}
	return StatusUnsupp, 1
}

// checkRange rejects transfers that aren't whole sectors or pass the end.
func (b *Block) checkRange(sector, n uint64) error {
	if n%SectorSize != 0 {
		return fmt.Errorf("length %d is not a multiple of %d", n, SectorSize)
	}
	if sector > b.sectors || n/SectorSize > b.sectors-sector {
		return fmt.Errorf("sectors [%d, +%d) pass the end of the disk (%d sectors)", sector, n/SectorSize, b.sectors)
	}
	return nil
}

// discard executes one DISCARD or WRITE_ZEROES segment (max_*_seg is 1).
func (b *Block) discard(r *request, log *slog.Logger) byte {
	if r.out.Len() != segmentLen {
		return StatusIOErr
	}
	var seg [segmentLen]byte
	r.out.CopyOut(seg[:], 0)
	sector := binary.LittleEndian.Uint64(seg[0:])
	count := binary.LittleEndian.Uint32(seg[8:])
	flags := binary.LittleEndian.Uint32(seg[12:])
	if flags&^segmentFlagsKnown != 0 {
		return StatusUnsupp
	}
	// The unmap flag is only meaningful for write zeroes (§5.2.6.2).
	if r.typ == typeDiscard && flags&segmentFlagUnmap != 0 {
		return StatusUnsupp
	}
	if count > maxDiscardSectors {
		return StatusIOErr
	}
	if err := b.checkRange(sector, uint64(count)*SectorSize); err != nil {
		b.logIOError(log, r, err)
		return StatusIOErr
	}
	off, n := int64(sector*SectorSize), int64(count)*SectorSize
	if n == 0 {
		return StatusOK
	}
	fd := int(b.file.Fd())
	if r.typ == typeDiscard {
		// Discarding is advisory: a host that can't punch holes just
		// keeps the data.
		unlock := b.writeLock()
		_ = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		unlock()
		return StatusOK
	}
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if flags&segmentFlagUnmap != 0 {
		// A punched hole reads back as zeroes and frees the space.
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	unlock := b.writeLock()
	err := unix.Fallocate(fd, mode, off, n)
	unlock()
	if err == nil {
		return StatusOK
	}
	// The file system can't do it in place: write zeroes.
	if err := b.writeZeroes(off, n); err != nil {
		b.logIOError(log, r, fmt.Errorf("write zeroes: %w", err))
		return StatusIOErr
	}
	return StatusOK
}

// writeZeroes writes n zero bytes at off, through pwritev so direct I/O
// gets its alignment.
func (b *Block) writeZeroes(off, n int64) error {
	zero := alignedBuffer(min(n, 1<<20), bouncePoolAlign)
	for done := int64(0); done < n; {
		k := min(int64(len(zero)), n-done)
		if err := b.pwritev(virtio.Iovec{zero[:k]}, off+done); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// preadv fills v from the image at off.
func (b *Block) preadv(v virtio.Iovec, off int64) error {
	if b.dio != nil {
		return b.readDirect(v, off)
	}
	return preadvFull(int(b.file.Fd()), v, off)
}

// pwritev writes v to the image at off.
func (b *Block) pwritev(v virtio.Iovec, off int64) error {
	if b.dio != nil {
		return b.writeDirect(v, off)
	}
	return pwritevFull(int(b.file.Fd()), v, off)
}

// preadvFull fills v from fd at off, retrying short reads.
func preadvFull(fd int, v virtio.Iovec, off int64) error {
	rest := v.Len()
	for rest > 0 {
		var n int
		var err error
		if len(v) == 1 {
			// One segment (a data buffer in one descriptor, the usual
			// case): pread skips the kernel's iovec import.
			n, err = unix.Pread(fd, v[0], off)
		} else {
			n, err = unix.Preadv(fd, v, off)
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("read at byte %d: %w", off, err)
		}
		if n == 0 {
			return fmt.Errorf("read at byte %d: unexpected end of image", off)
		}
		if rest -= uint64(n); rest > 0 {
			// A short read, rare: go on with the rest.
			v = v.Skip(uint64(n))
		}
		off += int64(n)
	}
	return nil
}

// pwritevFull writes v to fd at off, retrying short writes.
func pwritevFull(fd int, v virtio.Iovec, off int64) error {
	rest := v.Len()
	for rest > 0 {
		var n int
		var err error
		if len(v) == 1 {
			n, err = unix.Pwrite(fd, v[0], off)
		} else {
			n, err = unix.Pwritev(fd, v, off)
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("write at byte %d: %w", off, err)
		}
		if rest -= uint64(n); rest > 0 {
			v = v.Skip(uint64(n))
		}
		off += int64(n)
	}
	return nil
}

// logIOError reports a request that failed with VIRTIO_BLK_S_IOERR; the
// guest only sees the status byte, the host operator gets the reason.
func (b *Block) logIOError(log *slog.Logger, r *request, err error) {
	log.Warn("virtio-blk request failed", "id", b.cfg.ID, "type", r.typ, "sector", r.sector, "err", err)
}
