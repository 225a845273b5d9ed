package blk

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/virtio"
)

// Direct I/O (Config.Direct): the image is opened with O_DIRECT, so guest
// reads and writes go between guest memory and the storage device without
// passing through the host page cache, as QEMU's cache=none or Cloud
// Hypervisor's direct=on.
//
// O_DIRECT wants the file offset and length of every transfer aligned to
// the file's direct-I/O offset alignment, and each buffer's address (and
// each iovec segment's length) aligned too. Guests make no such promise:
// requests are 512-byte sectors and buffers can be anywhere in guest
// memory. A request that meets the alignment is done in place, straight
// into guest memory; any other is bounced through an aligned buffer, in
// chunks of at most bounceSize bytes. When the offset alignment is larger
// than a sector (a 4 KiB-sector device, say), a write that covers only part
// of its first or last block reads those blocks first (read-modify-write).
// To keep a read-modify-write from undoing a concurrent write to another
// sector of the same block, such writes hold Block.rmw exclusively and
// every other write-like operation holds it shared. A partial block that
// reaches past the end of the image can't be written with O_DIRECT at all
// (the whole block would grow the file), so those writes go through a
// second, buffered descriptor of the same file; the kernel keeps the two
// coherent (a direct transfer writes back and drops cached pages of its
// range first), and one fdatasync covers both.

// bounceSize is the size of one bounce buffer; requests longer than that
// are bounced in chunks. Each worker holds at most one, so the memory is
// bounded by the number of workers.
const bounceSize = 256 << 10

// dioAlign is a file's direct-I/O alignment, in bytes.
type dioAlign struct {
	mem int64 // buffer addresses (and iovec segment lengths: off)
	off int64 // file offsets and lengths
}

// dioAlignment is the direct-I/O alignment of f, which is open with
// O_DIRECT: what statx reports (STATX_DIOALIGN, Linux 6.1), else the
// logical block size of a block device, else 512 bytes. Tests can ask for
// a coarser alignment than the host's through Config.alignment.
func dioAlignment(f *os.File) (dioAlign, error) {
	fd := int(f.Fd())
	var st unix.Statx_t
	err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN|unix.STATX_TYPE, &st)
	if err == nil && st.Mask&unix.STATX_DIOALIGN != 0 {
		if st.Dio_offset_align == 0 {
			// statx(2): both are 0 when the file does not support
			// direct I/O.
			return dioAlign{}, errNoDirect
		}
		return dioAlign{mem: int64(max(st.Dio_mem_align, 1)), off: int64(st.Dio_offset_align)}, nil
	}
	a := dioAlign{mem: SectorSize, off: SectorSize}
	if err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
		if n, err := unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil && n > 0 {
			a.off = int64(n)
		}
	}
	return a, nil
}

// errNoDirect is the reason Open and Swap give for a file system without
// direct I/O.
var errNoDirect = errors.New("its file system does not support direct I/O (O_DIRECT); use the disk without direct")

// directIO is the state of an image open with O_DIRECT.
type directIO struct {
	align dioAlign
	size  int64 // the image's size in bytes
	// tail is a buffered descriptor of the same file, for writes whose
	// last block passes the end of the image; nil when size is a
	// multiple of align.off or the disk is read-only.
	tail *os.File
	// bounces holds bounceSize buffers aligned to bouncePoolAlign, shared
	// by the device's workers.
	bounces sync.Pool
}

// newDirectIO queries f's alignment and opens the tail descriptor if one
// is needed.
func newDirectIO(f *os.File, size int64, readOnly bool, alignment func(*os.File) (dioAlign, error)) (*directIO, error) {
	if alignment == nil {
		alignment = dioAlignment
	}
	a, err := alignment(f)
	if err != nil {
		return nil, err
	}
	d := &directIO{align: a, size: size}
	d.bounces.New = func() any {
		b := alignedBuffer(bounceSize, bouncePoolAlign)
		return &b
	}
	if !readOnly && size%a.off != 0 {
		// A new open file description of the same inode, without
		// O_DIRECT; it needs no lock of its own, f holds it.
		t, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open a buffered descriptor for the image's last block: %w", err)
		}
		d.tail = t
	}
	return d, nil
}

// close releases the tail descriptor.
func (d *directIO) close() {
	if d != nil && d.tail != nil {
		d.tail.Close()
	}
}

// inPlace reports whether v can be transferred at off with O_DIRECT as it
// is: offset, length, every segment's address and length aligned.
func (d *directIO) inPlace(v virtio.Iovec, off int64) bool {
	if off%d.align.off != 0 || int64(v.Len())%d.align.off != 0 {
		return false
	}
	for _, s := range v {
		if int64(len(s))%d.align.off != 0 || int64(uintptr(unsafe.Pointer(unsafe.SliceData(s))))%d.align.mem != 0 {
			return false
		}
	}
	return true
}

const bouncePoolAlign = 4096

// alignedBuffer returns n bytes of Go memory whose address is a multiple
// of align (the Go heap does not move objects, so the address holds).
func alignedBuffer(n, align int64) []byte {
	raw := make([]byte, n+align)
	pad := (align - int64(uintptr(unsafe.Pointer(unsafe.SliceData(raw))))%align) % align
	return raw[pad : pad+n : pad+n]
}

// bounce returns a bounce buffer for d's alignment (a multiple of
// align.off long, at least one block) and the function that gives it back.
func (d *directIO) bounce() ([]byte, func()) {
	a := d.align
	if a.mem <= bouncePoolAlign && bounceSize%a.off == 0 {
		p := d.bounces.Get().(*[]byte)
		return *p, func() { d.bounces.Put(p) }
	}
	// An unusual alignment: a buffer for this request only.
	n := (bounceSize + a.off - 1) / a.off * a.off
	return alignedBuffer(n, max(a.mem, bouncePoolAlign)), func() {}
}

// readDirect fills v from the image at off through O_DIRECT.
func (b *Block) readDirect(v virtio.Iovec, off int64) error {
	d := b.dio
	fd := int(b.file.Fd())
	rest := int64(v.Len())
	if rest == 0 {
		return nil
	}
	if d.inPlace(v, off) {
		return preadvFull(fd, v, off)
	}
	b.bounced.Add(1)
	buf, put := d.bounce()
	defer put()
	al := d.align.off
	var done uint64 // bytes of v filled
	for rest > 0 {
		start := off - off%al
		skip := off - start
		k := min(int64(len(buf))-skip, rest) // bytes of v this round
		end := alignUp(off+k, al)
		// The last block may pass the end of the image: the read stops
		// there, after the bytes needed.
		if err := preadAtLeast(fd, buf[:end-start], start, skip+k); err != nil {
			return err
		}
		v.CopyIn(buf[skip:skip+k], done)
		done += uint64(k)
		off += k
		rest -= k
	}
	return nil
}

// writeDirect writes v to the image at off through O_DIRECT.
func (b *Block) writeDirect(v virtio.Iovec, off int64) error {
	d := b.dio
	al := d.align.off
	n := int64(v.Len())
	if n == 0 {
		return nil
	}
	partial := off%al != 0 || n%al != 0 // first or last block only partly written
	if al > SectorSize {
		// Requests are whole sectors, so only a coarser alignment
		// makes partial blocks, and read-modify-write.
		if partial {
			b.rmw.Lock()
			defer b.rmw.Unlock()
		} else {
			b.rmw.RLock()
			defer b.rmw.RUnlock()
		}
	}
	if partial && alignUp(off+n, al) > d.size {
		if d.tail == nil {
			return fmt.Errorf("write at byte %d: the image's last block is partial and there is no buffered descriptor", off)
		}
		return pwritevFull(int(d.tail.Fd()), v, off)
	}
	fd := int(b.file.Fd())
	if d.inPlace(v, off) {
		return pwritevFull(fd, v, off)
	}
	b.bounced.Add(1)
	buf, put := d.bounce()
	defer put()
	var done uint64 // bytes of v written
	for rest := n; rest > 0; {
		start := off - off%al
		skip := off - start
		k := min(int64(len(buf))-skip, rest)
		end := alignUp(off+k, al)
		blk := buf[:end-start]
		if skip != 0 {
			if err := preadAtLeast(fd, blk[:al], start, al); err != nil {
				return fmt.Errorf("read-modify-write: %w", err)
			}
		}
		if (off+k)%al != 0 && (skip == 0 || end-start > al) {
			if err := preadAtLeast(fd, blk[len(blk)-int(al):], end-al, al); err != nil {
				return fmt.Errorf("read-modify-write: %w", err)
			}
		}
		v.CopyOut(blk[skip:skip+k], done)
		done += uint64(k)
		if err := pwritevFull(fd, virtio.Iovec{blk}, start); err != nil {
			return err
		}
		off += k
		rest -= k
	}
	return nil
}

// writeLock holds Block.rmw shared, for a write-like operation that is
// not a read-modify-write (fallocate), when direct I/O may do those; the
// returned function releases it.
func (b *Block) writeLock() func() {
	if b.dio == nil || b.dio.align.off <= SectorSize {
		return func() {}
	}
	b.rmw.RLock()
	return b.rmw.RUnlock
}

// alignUp rounds n up to a multiple of a.
func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// preadAtLeast reads into p from fd at off until at least need bytes are
// in, or p is full.
func preadAtLeast(fd int, p []byte, off, need int64) error {
	var got int64
	for got < need {
		n, err := unix.Pread(fd, p[got:], off+got)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("read at byte %d: %w", off+got, err)
		}
		if n == 0 {
			return fmt.Errorf("read at byte %d: unexpected end of image", off+got)
		}
		got += int64(n)
	}
	return nil
}
