package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// overlayUnsafeChars are what overlayfs's option string gives a meaning
// to inside a path: ',' ends an option, ':' separates lower layers and
// '\' escapes either (Documentation/filesystems/overlayfs.rst). The
// agent refuses such paths rather than escaping them.
const overlayUnsafeChars = ",:\\"

// checkOverlayPath reports why path cannot be named in overlay options.
func checkOverlayPath(path string) error {
	if strings.ContainsAny(path, overlayUnsafeChars) {
		return fmt.Errorf("path %q: overlay layers cannot contain any of %q", path, overlayUnsafeChars)
	}
	return nil
}

// overlayOptions is the mount data for an overlay of one lower layer.
func overlayOptions(lower, upper, work string) (string, error) {
	for _, p := range []string{lower, upper, work} {
		if !filepath.IsAbs(p) {
			return "", fmt.Errorf("overlay layer %q is not an absolute path", p)
		}
		if err := checkOverlayPath(p); err != nil {
			return "", err
		}
	}
	return "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work, nil
}

// overlayLayout names what mountOverlayRootfs makes under its directory:
// a tmpfs holding the writable layer (upper) and overlayfs's scratch
// (work, which must be on the same filesystem), and the mount point of a
// block device lower layer.
type overlayLayout struct{ dir, lower, upper, work string }

func newOverlayLayout(dir string) overlayLayout {
	return overlayLayout{
		dir:   dir,
		lower: filepath.Join(dir, "lower"),
		upper: filepath.Join(dir, "upper"),
		work:  filepath.Join(dir, "work"),
	}
}

// overlayTmpfsMode keeps the writable layer to root: only overlayfs,
// acting with the helper's credentials, goes in there.
const overlayTmpfsMode = "mode=0700"

// mountOverlayRootfs mounts cfg.Rootfs.Source read-only as the lower layer
// and an overlay with a fresh tmpfs upper layer on cfg.MountPoint, which
// it returns. Everything lives in the helper's private mount namespace,
// so it all goes away with the container's last process.
func mountOverlayRootfs(cfg *initConfig) (string, error) {
	rootfs := cfg.Rootfs
	l := newOverlayLayout(cfg.OverlayDir)
	if err := os.Mkdir(l.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("creating the overlay directory: %w", err)
	}
	if err := unix.Mount("tmpfs", l.dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, overlayTmpfsMode); err != nil {
		return "", fmt.Errorf("mounting the overlay's tmpfs: %w", err)
	}
	for _, d := range []string{l.lower, l.upper, l.work} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return "", fmt.Errorf("creating %s: %w", d, err)
		}
	}
	lower := rootfs.Source
	if rootfs.Type != "bind" {
		if err := unix.Mount(rootfs.Source, l.lower, rootfs.Type, unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
			return "", fmt.Errorf("mounting %s (%s) read-only as the overlay's lower layer: %w%s", rootfs.Source, rootfs.Type, err, readOnlyMountHint(err, true))
		}
		lower = l.lower
	}
	// The overlay's root directory takes the upper layer's owner and
	// mode: give it the image's, or a 0700 / would lock out every user
	// but root.
	var st unix.Stat_t
	if err := unix.Stat(lower, &st); err != nil {
		return "", fmt.Errorf("reading the rootfs's root directory: %w", err)
	}
	if err := unix.Chown(l.upper, int(st.Uid), int(st.Gid)); err != nil {
		return "", fmt.Errorf("setting the overlay root's owner: %w", err)
	}
	if err := unix.Chmod(l.upper, st.Mode&0o7777); err != nil {
		return "", fmt.Errorf("setting the overlay root's mode: %w", err)
	}
	opts, err := overlayOptions(lower, l.upper, l.work)
	if err != nil {
		return "", err
	}
	if err := unix.Mount("overlay", cfg.MountPoint, "overlay", unix.MS_NODEV, opts); err != nil {
		return "", fmt.Errorf("mounting the overlay rootfs (%s): %w", opts, err)
	}
	return cfg.MountPoint, nil
}

// readOnlyMountHint explains the usual cause of a failed mount of a
// read-only disk: mounting it read-write (EACCES from the block layer, or
// EROFS), or, when the mount was read-only already, an ext4 journal that
// needs replaying, which a read-only disk cannot take.
func readOnlyMountHint(err error, readOnlyMount bool) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return ""
	}
	switch {
	case readOnlyMount && errno == unix.EROFS:
		return " (its journal needs recovery, which a read-only disk cannot take: check the image with e2fsck -fy)"
	case !readOnlyMount && (errno == unix.EROFS || errno == unix.EACCES):
		return " (if the disk is read-only, ask for a readonly or an overlay rootfs)"
	}
	return ""
}
