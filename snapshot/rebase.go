package snapshot

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// rebaseChunk bounds the buffer Rebase copies through.
const rebaseChunk = 1 << 20

// Rebase merges a diff memory file (a Diff snapshot's: the pages written
// since the snapshot before it, the rest holes) onto the memory file of
// that earlier snapshot, as Firecracker's rebase-snap: every data region of
// diff, as SEEK_DATA and SEEK_HOLE find them, is copied in place to the same
// offset of base, which is then fsynced. base then restores with the diff
// snapshot's state file. Applied in order, a chain of diffs rebuilds the
// latest one's memory.
//
// The two files must be the same size (both are guest RAM's size) and
// must not be one file. The diff must be where its holes are still holes:
// a copy that filled them (cp without sparse support, a filesystem without
// SEEK_HOLE, which reports the whole file as data) would write zeros over
// every page of base. base must not be mapped by a running or restored
// guest meanwhile (memory files are mapped MAP_PRIVATE, and pages not yet
// loaded would see the change): rebase a copy.
func Rebase(basePath, diffPath string) (err error) {
	diff, err := os.Open(diffPath)
	if err != nil {
		return fmt.Errorf("rebase: %w", err)
	}
	defer diff.Close()
	base, err := os.OpenFile(basePath, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("rebase: %w", err)
	}
	defer func() {
		if cerr := base.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("rebase: %w", cerr)
		}
	}()
	var bst, dst unix.Stat_t
	if err := unix.Fstat(int(base.Fd()), &bst); err != nil {
		return fmt.Errorf("rebase: %s: %w", basePath, err)
	}
	if err := unix.Fstat(int(diff.Fd()), &dst); err != nil {
		return fmt.Errorf("rebase: %s: %w", diffPath, err)
	}
	for _, f := range []struct {
		name string
		st   *unix.Stat_t
	}{{basePath, &bst}, {diffPath, &dst}} {
		if f.st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("rebase: %s is not a regular file", f.name)
		}
	}
	if bst.Dev == dst.Dev && bst.Ino == dst.Ino {
		return fmt.Errorf("rebase: %s and %s are the same file", basePath, diffPath)
	}
	if bst.Size != dst.Size {
		return fmt.Errorf("rebase: the diff %s is %d bytes and the base %s %d: a diff applies only to the memory file of the snapshot before it, of the same guest", diffPath, dst.Size, basePath, bst.Size)
	}
	buf := make([]byte, rebaseChunk)
	// Each pass moves off past one data region, so the loop ends within
	// the file's size.
	for off := int64(0); off < dst.Size; {
		start, err := unix.Seek(int(diff.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole from off to the end
		}
		if err != nil {
			return fmt.Errorf("rebase: %s: finding data (SEEK_DATA): %w", diffPath, err)
		}
		end, err := unix.Seek(int(diff.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("rebase: %s: finding a hole (SEEK_HOLE): %w", diffPath, err)
		}
		if end <= start || end > dst.Size {
			return fmt.Errorf("rebase: %s: data region [%d, %d) of a %d-byte file", diffPath, start, end, dst.Size)
		}
		if err := copyRange(base, diff, start, end, buf); err != nil {
			return fmt.Errorf("rebase: %w", err)
		}
		off = end
	}
	if err := base.Sync(); err != nil {
		return fmt.Errorf("rebase: %s: %w", basePath, err)
	}
	return nil
}

// copyRange copies [start, end) of src to the same offsets of dst.
func copyRange(dst, src *os.File, start, end int64, buf []byte) error {
	for off := start; off < end; {
		n := min(int64(len(buf)), end-off)
		if _, err := src.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("%s at %d: %w", src.Name(), off, err)
		}
		if _, err := dst.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("%s at %d: %w", dst.Name(), off, err)
		}
		off += n
	}
	return nil
}
