// Package snapcache keeps the warm snapshots `vmm run` restores instead
// of booting: one directory per key (what the booted guest depends on)
// under $VMM_CACHE/snapshots, each built once per machine, in a temporary
// directory renamed into place, under a lock that makes concurrent first
// runs wait for the one that builds and then use its entry. Entries are
// never changed once in place; a stale one is removed whole and built
// again.
package snapcache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Files of an entry.
const (
	StateFile = "state"  // the snapshot's state (PUT /snapshot/create snapshot_path)
	MemFile   = "memory" // its guest memory (mem_file_path)
)

// PlaceholderFile is the disk a snapshot is taken with, standing for the
// image every run swaps in: shared by all entries, since the snapshot's
// state names it and restores reopen it.
const PlaceholderFile = "placeholder.img"

// PlaceholderSize is the placeholder's size: any nonzero size serves.
const PlaceholderSize = 1 << 20

// lockPoll is how often a run waiting for another's build tries the lock.
const lockPoll = 100 * time.Millisecond

// Cache is a directory of entries ($VMM_CACHE/snapshots).
type Cache struct{ Dir string }

// DefaultDir is $VMM_CACHE/snapshots, VMM_CACHE defaulting to
// ~/.cache/vmm as in the Makefile (which caches the guest kernel there).
func DefaultDir() (string, error) {
	base := os.Getenv("VMM_CACHE")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("finding the snapshot cache: %w (set VMM_CACHE)", err)
		}
		base = filepath.Join(home, ".cache", "vmm")
	}
	return filepath.Join(base, "snapshots"), nil
}

// Inputs are what a booted guest depends on.
type Inputs struct {
	// Files are identified by device, inode, size and modification time,
	// so a rebuilt kernel or initramfs gets a new key without being
	// hashed on every run; "" stands for no file.
	Files []string
	// Params are everything else, in a fixed order (memory, CPUs,
	// command line, VMM version, ...).
	Params []string
}

// keyFormat changes when what goes into a key does.
const keyFormat = "vmm-run-snapshot/1"

// Key names the entry for in: a hex digest.
func Key(in Inputs) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", keyFormat)
	for _, p := range in.Files {
		if p == "" {
			fmt.Fprintf(h, "file -\n")
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return "", fmt.Errorf("snapshot key: %s: %w", p, err)
		}
		fmt.Fprintf(h, "file %d %d %d %d.%09d\n", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	for _, p := range in.Params {
		fmt.Fprintf(h, "param %q\n", p)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// Entry is a complete snapshot in the cache.
type Entry struct {
	Key string
	Dir string
	// state identifies the state file Lookup or Build found, so Remove
	// leaves alone an entry another run has rebuilt since.
	state os.FileInfo
}

// State is the entry's state file.
func (e Entry) State() string { return filepath.Join(e.Dir, StateFile) }

// Mem is the entry's memory file.
func (e Entry) Mem() string { return filepath.Join(e.Dir, MemFile) }

func (c Cache) entry(key string) Entry { return Entry{Key: key, Dir: filepath.Join(c.Dir, key)} }

// checkKey keeps keys to what Key makes: they become file names.
func checkKey(key string) error {
	if key == "" || len(key) > 64 || strings.Trim(key, "0123456789abcdef") != "" {
		return fmt.Errorf("snapshot key %q: want a hex digest", key)
	}
	return nil
}

// Lookup returns the entry for key if it is in place.
func (c Cache) Lookup(key string) (Entry, bool) {
	if checkKey(key) != nil {
		return Entry{}, false
	}
	e := c.entry(key)
	for i, f := range []string{e.State(), e.Mem()} {
		st, err := os.Stat(f)
		if err != nil || !st.Mode().IsRegular() {
			return Entry{}, false
		}
		if i == 0 {
			e.state = st
		}
	}
	return e, true
}

// Build makes the entry for key unless another run has made it: under
// the key's lock (waiting for it until ctx ends), it calls build with an
// empty directory, which build fills with StateFile and MemFile, and
// renames the directory into place. built is false when the entry was
// found in place instead. A failed build leaves nothing.
func (c Cache) Build(ctx context.Context, key string, build func(dir string) error) (e Entry, built bool, err error) {
	if err := checkKey(key); err != nil {
		return Entry{}, false, err
	}
	unlock, err := c.lock(ctx, key)
	if err != nil {
		return Entry{}, false, err
	}
	defer unlock()
	if e, ok := c.Lookup(key); ok {
		return e, false, nil
	}
	c.removeLeftovers(key)
	tmp, err := os.MkdirTemp(c.Dir, ".build-"+key+"-")
	if err != nil {
		return Entry{}, false, fmt.Errorf("snapshot cache: %w", err)
	}
	if err := build(tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return Entry{}, false, err
	}
	e = c.entry(key)
	// A directory in the way is an incomplete entry (Lookup said so);
	// the lock is held, so nobody is reading it.
	if err := c.discard(e.Dir); err != nil {
		_ = os.RemoveAll(tmp)
		return Entry{}, false, err
	}
	if err := os.Rename(tmp, e.Dir); err != nil {
		_ = os.RemoveAll(tmp)
		return Entry{}, false, fmt.Errorf("snapshot cache: %w", err)
	}
	if err := syncDir(c.Dir); err != nil {
		return Entry{}, false, err
	}
	if st, err := os.Stat(e.State()); err == nil {
		e.state = st
	}
	return e, true, nil
}

// Remove takes a stale entry, as Lookup or Build returned it, out of the
// cache (under its lock). If the entry in place is no longer that one
// (another run found it stale too and rebuilt it meanwhile), it stays.
// Runs still restoring from the removed one keep their files: it is
// renamed away before it is deleted, and mapped files outlive their names.
func (c Cache) Remove(ctx context.Context, e Entry) error {
	if err := checkKey(e.Key); err != nil {
		return err
	}
	unlock, err := c.lock(ctx, e.Key)
	if err != nil {
		return err
	}
	defer unlock()
	dir := c.entry(e.Key).Dir
	if now, err := os.Stat(filepath.Join(dir, StateFile)); err == nil && (e.state == nil || !os.SameFile(now, e.state) || !now.ModTime().Equal(e.state.ModTime())) {
		return nil
	}
	return c.discard(dir)
}

// discard renames dir out of the way and deletes it.
func (c Cache) discard(dir string) error {
	trash, err := os.MkdirTemp(c.Dir, ".stale-")
	if err != nil {
		return fmt.Errorf("snapshot cache: %w", err)
	}
	defer os.RemoveAll(trash)
	if err := os.Rename(dir, filepath.Join(trash, "entry")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("snapshot cache: removing %s: %w", dir, err)
	}
	return nil
}

// removeLeftovers deletes what builds of key that died left behind; the
// caller holds the key's lock, so no build of it is running.
func (c Cache) removeLeftovers(key string) {
	old, _ := filepath.Glob(filepath.Join(c.Dir, ".build-"+key+"-*"))
	for _, d := range old {
		_ = os.RemoveAll(d)
	}
}

// lock takes the key's lock file, waiting for it until ctx ends.
func (c Cache) lock(ctx context.Context, key string) (unlock func(), err error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("snapshot cache: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, key+".lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("snapshot cache: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("snapshot cache: locking %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("snapshot cache: waiting for another run's snapshot of %s: %w", key, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// Placeholder returns the placeholder disk, making it if missing. It is
// never written once in place, so every snapshot's restore finds the
// disk it was taken with.
func (c Cache) Placeholder() (string, error) {
	p := filepath.Join(c.Dir, PlaceholderFile)
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Size() == PlaceholderSize {
		return p, nil
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", fmt.Errorf("snapshot cache: %w", err)
	}
	f, err := os.CreateTemp(c.Dir, ".placeholder-")
	if err != nil {
		return "", fmt.Errorf("snapshot cache: %w", err)
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	err = f.Truncate(PlaceholderSize)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		return "", fmt.Errorf("snapshot cache: making the placeholder disk: %w", err)
	}
	return p, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("snapshot cache: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("snapshot cache: syncing %s: %w", dir, err)
	}
	return nil
}

// Touch records that e was just used, so Prune keeps it: the entry
// directory's modification time is its last use.
func (c Cache) Touch(e Entry) error {
	now := time.Now()
	if err := os.Chtimes(e.Dir, now, now); err != nil {
		return fmt.Errorf("snapshot cache: %w", err)
	}
	return nil
}

// staleLeftover is how old a ".stale-" or ".placeholder-" leftover of a
// killed run must be before Prune deletes it: older than any run that
// could still be using it.
const staleLeftover = time.Hour

// Prune deletes the entries not used (Touch, Build) for maxAge, and what
// killed runs left behind. Each entry goes under its own lock, and one a
// run holds is skipped: Prune never waits. It returns the keys it deleted.
// Without it, every new kernel, initramfs, memory size or vmm build would
// leave another memory file of up to the guest's RAM behind.
func (c Cache) Prune(maxAge time.Duration) ([]string, error) {
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("snapshot cache: %w", err)
	}
	now := time.Now()
	busy, cancel := context.WithCancel(context.Background())
	cancel() // lock tries once
	var removed []string
	var errs []error
	for _, d := range ents {
		info, err := d.Info()
		if err != nil {
			continue
		}
		age := now.Sub(info.ModTime())
		name := d.Name()
		switch {
		case strings.HasPrefix(name, ".stale-") || strings.HasPrefix(name, ".placeholder-"):
			if age > staleLeftover {
				errs = append(errs, os.RemoveAll(filepath.Join(c.Dir, name)))
			}
		case d.IsDir() && checkKey(name) == nil && age > maxAge:
			unlock, err := c.lock(busy, name)
			if err != nil {
				continue // in use
			}
			c.removeLeftovers(name)
			if err := c.discard(filepath.Join(c.Dir, name)); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, name)
				_ = os.Remove(filepath.Join(c.Dir, name+".lock"))
			}
			unlock()
		}
	}
	return removed, errors.Join(errs...)
}
