package memory

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// A memory file (Dump writes it, NewFromFile maps it) is guest RAM as a flat
// image: the regions in ascending guest-address order, back to back, each at
// the file offset that is the sum of the sizes of the regions below it, so
// the file is exactly Size() bytes. Regions are page-sized multiples, so
// every region starts on a page boundary of the file and maps directly.
// Pages of zeros are holes, which is what makes a snapshot of a guest that
// touched little of its RAM small on disk. The layout (guest addresses and
// sizes) is not in the file: the VM state file records it.

// fileID identifies a file across opens.
type fileID struct{ dev, ino uint64 }

func statFile(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(int(f.Fd()), &st)
	return st, err
}

// Dump writes guest RAM to f as a memory file, replacing what f held, and
// fsyncs it. Pages that are all zero are left as holes. Nothing may write
// guest RAM meanwhile (pause the vCPUs and the devices first), or the file
// holds a torn image. f must not be the file this Guest was mapped from:
// truncating that would pull pages from under the mapping, so Dump refuses;
// write a new file and rename it over the old one instead.
func (g *Guest) Dump(f *os.File) error {
	page := unix.Getpagesize()
	for _, r := range g.regions {
		if len(r.Host)%page != 0 {
			return fmt.Errorf("memory: dump: region %#x+%#x is not a whole number of pages", r.GuestAddr, len(r.Host))
		}
	}
	st, err := statFile(f)
	if err != nil {
		return fmt.Errorf("memory: dump to %s: %w", f.Name(), err)
	}
	if g.backing != nil && *g.backing == (fileID{uint64(st.Dev), st.Ino}) {
		return fmt.Errorf("memory: dump to %s: guest RAM is mapped from that file", f.Name())
	}
	// Start empty, so the pages skipped below read back as zeros, not as
	// what the file held before.
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("memory: dump to %s: %w", f.Name(), err)
	}
	zero := make([]byte, page)
	var base int64
	for _, r := range g.regions {
		// Write each run of non-zero pages with one call; skip zero pages.
		for p := 0; p < len(r.Host); {
			if bytes.Equal(r.Host[p:p+page], zero) {
				p += page
				continue
			}
			start := p
			for p < len(r.Host) && !bytes.Equal(r.Host[p:p+page], zero) {
				p += page
			}
			if _, err := f.WriteAt(r.Host[start:p], base+int64(start)); err != nil {
				return fmt.Errorf("memory: dump guest RAM at %#x to %s: %w", r.GuestAddr+uint64(start), f.Name(), err)
			}
		}
		base += int64(len(r.Host))
	}
	// Trailing zero pages were never written: the size makes them holes.
	if err := f.Truncate(base); err != nil {
		return fmt.Errorf("memory: dump to %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("memory: dump to %s: %w", f.Name(), err)
	}
	return nil
}

// NewFromFile maps guest RAM from a memory file (see Dump) for the given
// layout, which must be the one dumped. Each region is a private mapping of
// its part of f: pages load from the file when first touched, and writes
// are copy-on-write and never reach the file, so many guests can share one
// file through the page cache. The file must not change while any guest
// maps it (pages not yet written would see the change). f may be read-only,
// and may be closed once NewFromFile returns; Close unmaps as for New.
// opt.HugePages is applied as in New, best effort: it can only help the
// pages the guest writes, since the page cache backs the others.
func NewFromFile(layout []Layout, f *os.File, opt Options) (*Guest, error) {
	page := uint64(unix.Getpagesize())
	sorted := slices.Clone(layout)
	slices.SortFunc(sorted, func(a, b Layout) int {
		switch {
		case a.GuestAddr < b.GuestAddr:
			return -1
		case a.GuestAddr > b.GuestAddr:
			return 1
		}
		return 0
	})
	var total uint64
	for _, l := range sorted {
		if l.Size == 0 || l.Size%page != 0 || l.GuestAddr%page != 0 {
			return nil, fmt.Errorf("memory: region %#x+%#x is not page aligned", l.GuestAddr, l.Size)
		}
		if l.Size > math.MaxInt64-total {
			return nil, fmt.Errorf("memory: layout of %d regions overflows", len(layout))
		}
		total += l.Size
	}
	st, err := statFile(f)
	if err != nil {
		return nil, fmt.Errorf("memory: %s: %w", f.Name(), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("memory: %s is not a regular file", f.Name())
	}
	if uint64(st.Size) != total {
		return nil, fmt.Errorf("memory: %s is %d bytes, but the guest's RAM layout is %d bytes", f.Name(), st.Size, total)
	}
	g := &Guest{owned: true, backing: &fileID{uint64(st.Dev), st.Ino}}
	var off int64
	for _, l := range sorted {
		b, err := unix.Mmap(int(f.Fd()), off, int(l.Size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_NORESERVE)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("memory: map %s at %d for guest RAM at %#x: %w", f.Name(), off, l.GuestAddr, err)
		}
		if opt.HugePages {
			// Best effort, as in New.
			_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
		}
		g.regions = append(g.regions, Region{GuestAddr: l.GuestAddr, Host: b})
		off += int64(l.Size)
	}
	if err := g.sortAndCheck(); err != nil {
		g.Close()
		return nil, err
	}
	g.trackDirty(opt.TrackDirty)
	return g, nil
}
