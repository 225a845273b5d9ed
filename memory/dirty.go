package memory

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Dirty page tracking serves diff snapshots, as Firecracker's
// track_dirty_pages: a diff memory file holds only the pages written since
// the last snapshot. The guest's writes are in KVM's dirty log; the VMM's
// (virtio devices writing requests' data and used rings, the boot loader)
// never go through the guest's page tables, so KVM does not see them, and
// this package records them. A bitmap here has KVM's layout: bit p%64 of
// word p/64 is page p of a region, a page being the host's page size.

// trackDirty gives every region an empty bitmap when on.
func (g *Guest) trackDirty(on bool) {
	if !on {
		return
	}
	page := uint64(unix.Getpagesize())
	g.dirty = make([][]atomic.Uint64, len(g.regions))
	for i, r := range g.regions {
		pages := (uint64(len(r.Host)) + page - 1) / page
		g.dirty[i] = make([]atomic.Uint64, (pages+63)/64)
	}
}

// TrackingDirty reports whether the Guest records the pages written
// through it (Options.TrackDirty).
func (g *Guest) TrackingDirty() bool { return g.dirty != nil }

// markDirty records [addr, addr+n), which Slice found wholly inside one
// region, as written.
func (g *Guest) markDirty(addr, n uint64) {
	if n == 0 {
		return
	}
	shift := pageShift()
	for i := range g.regions {
		r := &g.regions[i]
		if addr < r.GuestAddr || addr >= r.End() {
			continue
		}
		off := addr - r.GuestAddr
		bm := g.dirty[i]
		for p := off >> shift; p <= (off+n-1)>>shift; p++ {
			bm[p/64].Or(1 << (p % 64))
		}
		return
	}
}

// pageShift is log2 of the host's page size.
func pageShift() uint {
	var s uint
	for p := unix.Getpagesize(); p > 1; p >>= 1 {
		s++
	}
	return s
}

// TakeDirty returns the pages written through this Guest since the last
// TakeDirty (or since it was made), one bitmap per region in ascending
// guest address order, and clears the record. It returns nil when the
// Guest does not track (Options.TrackDirty). Words are taken one at a time
// atomically, so a write through WriteAt and the like racing with
// TakeDirty lands in this record or the next. Slice marks its pages when
// it hands them out, before its caller writes: a caller still writing
// through a slice (an I/O in flight) may write after TakeDirty and be in
// neither, so callers stop such writers first (a snapshot pauses every
// device, which completes its requests).
func (g *Guest) TakeDirty() [][]uint64 {
	if g.dirty == nil {
		return nil
	}
	out := make([][]uint64, len(g.dirty))
	for i, bm := range g.dirty {
		out[i] = make([]uint64, len(bm))
		for w := range bm {
			out[i][w] = bm[w].Swap(0)
		}
	}
	return out
}

// MarkDirty adds bitmaps (as TakeDirty returns) back to the record, for a
// snapshot that took them but failed to save the pages, which the next one
// must then hold. It does nothing when the Guest does not track; bitmaps of
// another shape are added as far as they fit.
func (g *Guest) MarkDirty(bitmaps [][]uint64) {
	if g.dirty == nil {
		return
	}
	for i := range min(len(bitmaps), len(g.dirty)) {
		for w := range min(len(bitmaps[i]), len(g.dirty[i])) {
			if bitmaps[i][w] != 0 {
				g.dirty[i][w].Or(bitmaps[i][w])
			}
		}
	}
}

// SetDirtyRange sets the bits of [addr, addr+n), which must lie in one
// region, in bitmaps with this Guest's layout (NewDirtyBitmaps): for memory
// the VMM writes through a slice it keeps (a virtqueue's used ring), which
// no record of this package's sees after the slice was handed out.
func (g *Guest) SetDirtyRange(bitmaps [][]uint64, addr, n uint64) error {
	if _, err := g.slice(addr, n); err != nil {
		return err
	}
	if len(bitmaps) != len(g.regions) {
		return fmt.Errorf("memory: %d dirty bitmaps for %d regions", len(bitmaps), len(g.regions))
	}
	if n == 0 {
		return nil
	}
	shift := pageShift()
	for i, r := range g.regions {
		if addr < r.GuestAddr || addr >= r.End() {
			continue
		}
		off := addr - r.GuestAddr
		last := (off + n - 1) >> shift
		if last/64 >= uint64(len(bitmaps[i])) {
			return fmt.Errorf("memory: dirty bitmap of region %#x has %d words, too few for page %d", r.GuestAddr, len(bitmaps[i]), last)
		}
		for p := off >> shift; p <= last; p++ {
			bitmaps[i][p/64] |= 1 << (p % 64)
		}
	}
	return nil
}

// NewDirtyBitmaps returns empty bitmaps with this Guest's layout, for callers
// that gather dirty pages from elsewhere (KVM's dirty log) to pass to
// DumpDirty.
func (g *Guest) NewDirtyBitmaps() [][]uint64 {
	page := uint64(unix.Getpagesize())
	out := make([][]uint64, len(g.regions))
	for i, r := range g.regions {
		pages := (uint64(len(r.Host)) + page - 1) / page
		out[i] = make([]uint64, (pages+63)/64)
	}
	return out
}

// DumpDirty writes a diff memory file to f, replacing what f held, and
// fsyncs it: the file has a full memory file's size and layout (see Dump),
// but holds only the pages dirty marks, as data even when they are all
// zero (a page the guest cleared must overwrite the base's copy when the
// diff is merged onto it); every other page is a hole. dirty has one
// bitmap per region, as TakeDirty and NewDirtyBitmaps return. As for Dump,
// nothing may write guest RAM meanwhile, and f must not be the file this
// Guest was mapped from.
//
// Holes are what tell a merge (Firecracker's rebase-snap, snapshot.Rebase)
// which pages to copy, so the file must stay where holes are holes: on a
// filesystem whose blocks are larger than a page, a dirty page would drag
// its clean neighbours in as zeros, and DumpDirty refuses it.
func (g *Guest) DumpDirty(f *os.File, dirty [][]uint64) error {
	page := unix.Getpagesize()
	if len(dirty) != len(g.regions) {
		return fmt.Errorf("memory: diff dump: %d dirty bitmaps for %d regions", len(dirty), len(g.regions))
	}
	for i, r := range g.regions {
		if len(r.Host)%page != 0 {
			return fmt.Errorf("memory: diff dump: region %#x+%#x is not a whole number of pages", r.GuestAddr, len(r.Host))
		}
		if want := (len(r.Host)/page + 63) / 64; len(dirty[i]) != want {
			return fmt.Errorf("memory: diff dump: dirty bitmap of region %#x has %d words, want %d", r.GuestAddr, len(dirty[i]), want)
		}
	}
	st, err := statFile(f)
	if err != nil {
		return fmt.Errorf("memory: diff dump to %s: %w", f.Name(), err)
	}
	if g.backing != nil && *g.backing == (fileID{uint64(st.Dev), st.Ino}) {
		return fmt.Errorf("memory: diff dump to %s: guest RAM is mapped from that file", f.Name())
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return fmt.Errorf("memory: diff dump to %s: %w", f.Name(), err)
	}
	if fs.Bsize > int64(page) {
		return fmt.Errorf("memory: diff dump to %s: the filesystem's %d-byte blocks are larger than a page, so its holes can't mark the clean pages", f.Name(), fs.Bsize)
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("memory: diff dump to %s: %w", f.Name(), err)
	}
	isDirty := func(bm []uint64, p int) bool { return bm[p/64]&(1<<(p%64)) != 0 }
	var base int64
	for i, r := range g.regions {
		pages := len(r.Host) / page
		// One write per run of dirty pages.
		for p := 0; p < pages; {
			if !isDirty(dirty[i], p) {
				p++
				continue
			}
			start := p
			for p < pages && isDirty(dirty[i], p) {
				p++
			}
			if _, err := f.WriteAt(r.Host[start*page:p*page], base+int64(start*page)); err != nil {
				return fmt.Errorf("memory: diff dump guest RAM at %#x to %s: %w", r.GuestAddr+uint64(start*page), f.Name(), err)
			}
		}
		base += int64(len(r.Host))
	}
	if err := f.Truncate(base); err != nil {
		return fmt.Errorf("memory: diff dump to %s: %w", f.Name(), err)
	}
	if err := g.checkHoles(f, dirty); err != nil {
		return fmt.Errorf("memory: diff dump to %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("memory: diff dump to %s: %w", f.Name(), err)
	}
	return nil
}

// checkHoles makes sure the file's data regions (SEEK_DATA/SEEK_HOLE)
// cover dirty pages only. A file system that allocates more than a page
// at a time while reporting small blocks (tmpfs with huge pages), or that
// has no holes at all, would show clean pages as data, and a rebase would
// copy their zeros over the base.
func (g *Guest) checkHoles(f *os.File, dirty [][]uint64) error {
	page := int64(unix.Getpagesize())
	// pageDirty reports whether the page at file offset off is dirty.
	pageDirty := func(off int64) bool {
		var base int64
		for i, r := range g.regions {
			if size := int64(len(r.Host)); off < base+size {
				p := (off - base) / page
				return dirty[i][p/64]&(1<<(p%64)) != 0
			}
			base += int64(len(r.Host))
		}
		return false
	}
	size := int64(0)
	for _, r := range g.regions {
		size += int64(len(r.Host))
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data after off
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE: %w", err)
		}
		for p := data / page * page; p < hole; p += page {
			if !pageDirty(p) {
				return fmt.Errorf("the file system stores clean page at offset %#x as data (no fine-grained holes here: use another file system for diff snapshots)", p)
			}
		}
		off = hole
	}
	return nil
}
