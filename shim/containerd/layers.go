package containerd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/image"
)

// layerCache turns committed snapshot directories (overlayfs lowerdirs)
// into read-only ext4 images, one per layer, made once and shared by
// every VM that uses the layer: the drives are opened read-only, which
// vmm locks shared.
//
// An entry is keyed by the directory's path and identity (device, inode
// and change time): a committed snapshot never changes, and a snapshot
// removed and re-made under the same path (a new containerd root, or an
// id reused) gets a new key.
type layerCache struct {
	dir string
}

// Cache file suffixes: the image, its source directory (for pruning),
// and the lock that serialises building it.
const (
	layerImageExt  = ".ext4"
	layerSourceExt = ".src"
	layerLockExt   = ".lock"
)

// maxCacheEntries bounds a prune's walk of the cache directory.
const maxCacheEntries = 1 << 16

func newLayerCache(dir string) (*layerCache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("layer cache: %w", err)
	}
	return &layerCache{dir: dir}, nil
}

// key names src's entry; it fails if src is not a directory.
func layerKey(src string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return "", fmt.Errorf("layer %s: %w", src, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "", fmt.Errorf("layer %s is not a directory", src)
	}
	id := fmt.Sprintf("%s\x00%d\x00%d\x00%d.%d", src, st.Dev, st.Ino, st.Ctim.Sec, st.Ctim.Nsec)
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:]), nil
}

// Image returns the path of src's image, building it first if no VM has
// used the layer yet. Concurrent calls for one layer, in one shim or
// many, build it once: the others wait on the entry's lock and find it
// made. The image appears under its name only when complete.
func (c *layerCache) Image(ctx context.Context, src string) (path string, built bool, err error) {
	key, err := layerKey(src)
	if err != nil {
		return "", false, err
	}
	img := filepath.Join(c.dir, key+layerImageExt)
	if _, err := os.Stat(img); err == nil {
		return img, false, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(c.dir, key+layerLockExt))
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if _, err := os.Stat(img); err == nil {
		return img, false, nil // another shim made it while we waited
	}
	tmp, err := os.CreateTemp(c.dir, key+".tmp-")
	if err != nil {
		return "", false, fmt.Errorf("layer cache: %w", err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpPath) // a no-op once renamed
	if err := image.BuildFromDir(ctx, src, tmpPath, image.Options{Label: "layer"}); err != nil {
		return "", false, fmt.Errorf("making the image of layer %s: %w", src, err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, key+layerSourceExt), []byte(src), 0o600); err != nil {
		return "", false, fmt.Errorf("layer cache: %w", err)
	}
	if err := os.Rename(tmpPath, img); err != nil {
		return "", false, fmt.Errorf("layer cache: %w", err)
	}
	return img, true, nil
}

// Prune removes the images of layers whose snapshot is gone (or was
// re-made), so removing an image from containerd frees its cache too.
// An image a running VM holds stays readable by that VM until it stops.
func (c *layerCache) Prune(ctx context.Context) (removed int, err error) {
	d, err := os.Open(c.dir)
	if err != nil {
		return 0, err
	}
	names, err := d.Readdirnames(maxCacheEntries)
	d.Close()
	if err != nil && len(names) == 0 {
		return 0, nil // empty directory
	}
	var errs []error
	for _, name := range names {
		key, ok := strings.CutSuffix(name, layerImageExt)
		if !ok {
			continue
		}
		src, err := os.ReadFile(filepath.Join(c.dir, key+layerSourceExt))
		if err == nil {
			if k, err := layerKey(string(src)); err == nil && k == key {
				continue
			}
		}
		unlock, err := lockFile(ctx, filepath.Join(c.dir, key+layerLockExt))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ext := range []string{layerImageExt, layerSourceExt, layerLockExt} {
			if err := os.Remove(filepath.Join(c.dir, key+ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		unlock()
		removed++
	}
	return removed, errors.Join(errs...)
}

// lockPoll is how often a waiting lockFile retries: a blocked flock(2)
// cannot be interrupted, and a build takes a second or more anyway.
const lockPoll = 50 * time.Millisecond

// lockFile takes an exclusive flock on path, waiting until ctx ends.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("layer cache lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// upperImage makes a container's writable disk at out, an ext4 image of
// sizeMiB (sparse) starting with src's contents (the snapshot's upperdir,
// empty for a fresh container; "" for none). Over layers, the contents go
// in upper/ beside an empty work/ for overlayfs; without layers they are
// the disk's root, which the agent mounts as the container's.
func upperImage(ctx context.Context, src, out string, sizeMiB int64, layered bool) error {
	opts := image.Options{Size: sizeMiB << 20, Label: "upper"}
	if !layered && src != "" {
		return image.BuildFromDir(ctx, src, out, opts)
	}
	stage, err := os.MkdirTemp(filepath.Dir(out), ".upper-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	root := stage
	if layered {
		root = filepath.Join(stage, "upper")
		if err := os.Mkdir(root, 0o755); err != nil {
			return err
		}
		if err := os.Mkdir(filepath.Join(stage, "work"), 0o700); err != nil {
			return err
		}
	}
	if src != "" {
		empty, err := isEmptyDir(src)
		if err != nil {
			return err
		}
		if !empty {
			// Rare (a fresh snapshot's upperdir is empty): copy-ups
			// containerd made, e.g. volume mount points from the image.
			if out, err := exec.CommandContext(ctx, "cp", "-a", "--", src+"/.", root).CombinedOutput(); err != nil {
				return fmt.Errorf("copying %s: %w: %s", src, err, bytes.TrimSpace(out))
			}
		}
	}
	return image.BuildFromDir(ctx, stage, out, opts)
}

func isEmptyDir(dir string) (bool, error) {
	d, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}
