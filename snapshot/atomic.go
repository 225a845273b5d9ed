package snapshot

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFileAtomic creates or replaces path with what write puts in a fresh
// file: write gets an empty temporary file (mode 0600, created with O_EXCL
// in path's directory, so the rename below cannot cross file systems);
// WriteFileAtomic then fsyncs it, renames it over path and fsyncs the
// directory. If write or any step before the rename fails, the temporary
// file is removed and path is untouched: a reader sees the old file or the
// whole new one, never part of one. If only the directory fsync fails,
// path holds the complete new file, which a crash might still undo.
//
// The state file goes through here; so should the memory file
// (memory.Guest.Dump has the right signature for write).
func WriteFileAtomic(path string, write func(f *os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if base == "" {
		return fmt.Errorf("snapshot: %q names a directory, not a file", path)
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("snapshot %s: create temporary file: %w", path, err)
	}
	tmp := f.Name()
	closed, renamed := false, false
	defer func() {
		if err != nil && !renamed {
			if !closed {
				f.Close()
			}
			os.Remove(tmp)
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("snapshot %s: write: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("snapshot %s: sync: %w", path, err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return fmt.Errorf("snapshot %s: close: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	renamed = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("snapshot %s: written, but sync directory %s: %w", path, dir, err)
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
