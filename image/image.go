// Package image builds ext4 root filesystem images for vmm's containers:
// from a directory, or from an OCI image (layout directory or tar) or a
// `docker save` tarball, whose layers are applied in order with their
// whiteouts. The guest attaches the result as a virtio-blk disk and the
// guest agent mounts it as a container's rootfs.
//
// The filesystem is made by e2fsprogs' mkfs.ext4 -d, which copies a
// directory tree into the new filesystem without mounting anything.
package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// MinSize is the smallest image BuildFromDir makes on its own.
const MinSize = 64 << 20

// Options control the filesystem.
type Options struct {
	// Size of the image in bytes; 0 picks the content plus headroom,
	// at least MinSize.
	Size int64
	// Label is the filesystem label (default "rootfs").
	Label string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
	// MaxUnpacked caps the bytes BuildFromOCI unpacks: file sizes,
	// holes included, summed over all layers, and each layer's
	// decompressed stream. 0 means DefaultMaxUnpacked.
	MaxUnpacked int64
	// MaxEntries caps the tar entries of all layers; 0 means
	// DefaultMaxEntries.
	MaxEntries int64

	// staged, when set, is called with the staging directory after
	// the layers are applied and before mkfs (tests inspect it).
	staged func(dir string) error
}

func (o *Options) defaults() {
	if o.Label == "" {
		o.Label = "rootfs"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// BuildFromDir writes an ext4 image of dir's contents to out, replacing
// out. Ownership and modes are copied as they are on disk.
func BuildFromDir(ctx context.Context, dir, out string, opts Options) error {
	opts.defaults()
	return buildFromDir(ctx, dir, out, opts, nil)
}

// buildFromDir is BuildFromDir with a last step, fix, run on the new
// image before it takes out's name.
func buildFromDir(ctx context.Context, dir, out string, opts Options, fix func(img string) error) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("image source: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("image source %s is not a directory", dir)
	}
	usage, err := measure(dir)
	if err != nil {
		return err
	}
	size := opts.Size
	if size == 0 {
		size = usage.imageSize()
	}
	if len(opts.Label) > 16 {
		return fmt.Errorf("label %q is longer than ext4's 16 bytes", opts.Label)
	}
	mkfs, err := findTool(mkfsTool, mkfsPackage, "/usr/sbin", "/sbin")
	if err != nil {
		return err
	}
	opts.Logf("making %s: %d MiB, %d inodes for %d files (%d MiB of data)", out, size>>20, usage.inodes(), usage.entries, usage.bytes>>20)
	return makeFilesystem(ctx, mkfs, dir, out, size, usage.inodes(), opts.Label, fix)
}

// BuildFromOCI unpacks the image at src (see Unpack) into a private
// temporary directory and builds an ext4 image of it at out. Building as
// root is safe for the host: the staging tree sits in a 0700 directory
// of its own, and device nodes, FIFOs, set-id bits and the root
// directory's metadata are written into the image with debugfs, never
// made on the host. Unpacking stops at opts.MaxUnpacked and
// opts.MaxEntries with an error wrapping ErrTooLarge.
func BuildFromOCI(ctx context.Context, src, out string, opts Options) error {
	opts.defaults()
	priv, err := os.MkdirTemp("", "vmm-image-")
	if err != nil {
		return fmt.Errorf("creating temporary directory: %w", err)
	}
	defer os.RemoveAll(priv)
	// MkdirTemp makes priv 0700 whatever the umask; the root inside it
	// is 0700 too, so nothing staged is reachable by another user.
	tmp := filepath.Join(priv, "rootfs")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("creating staging directory: %w", err)
	}
	opts.Logf("unpacking %s", src)
	special := newSpecials()
	if err := unpack(ctx, src, tmp, special, opts.MaxUnpacked, opts.MaxEntries); err != nil {
		return err
	}
	if opts.staged != nil {
		if err := opts.staged(tmp); err != nil {
			return err
		}
	}
	return buildFromDir(ctx, tmp, out, opts, func(img string) error {
		return applySpecials(ctx, special, tmp, img)
	})
}

// usage is what a tree needs on ext4.
type usage struct {
	entries int64 // files, directories, links...
	bytes   int64 // data blocks, rounded up to 4 KiB per file
}

func measure(dir string) (usage, error) {
	var u usage
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		u.entries++
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode().IsRegular():
			u.bytes += (info.Size() + 4095) &^ 4095
		case info.IsDir():
			u.bytes += 4096
		case info.Mode()&fs.ModeSymlink != 0 && info.Size() >= 60:
			// Short targets live in the inode; longer ones take a block.
			u.bytes += 4096
		}
		return nil
	})
	if err != nil {
		return u, fmt.Errorf("measuring %s: %w", dir, err)
	}
	return u, nil
}

// inodes leaves room for the container to create files of its own.
func (u usage) inodes() int64 {
	return max(u.entries*2, 16384)
}

// imageSize is the content plus a quarter for the container to write,
// inode tables (256 bytes each), the journal and other metadata.
func (u usage) imageSize() int64 {
	data := u.bytes + u.bytes/4 + u.inodes()*256
	size := data + journalSize(data) + 16<<20
	size = max(size, MinSize)
	return (size + 1<<20 - 1) &^ (1<<20 - 1)
}

// journalSize follows mkfs.ext4's default journal size for a filesystem
// of about that size.
func journalSize(size int64) int64 {
	switch {
	case size < 128<<20:
		return 4 << 20
	case size < 1<<30:
		return 16 << 20
	case size < 2<<30:
		return 32 << 20
	}
	return 64 << 20
}

// mkfsTool is the program that makes the filesystem and mkfsPackage the
// Debian package that installs it (the library never installs anything:
// scripts/deps.sh does for the project's own builds and tests).
const (
	mkfsTool    = "mkfs.ext4"
	mkfsPackage = "e2fsprogs"
)

// findTool returns the path of the program name, looked up on PATH and then
// in dirs (a non-root PATH often lacks the sbin directories). The error
// names the program and pkg, the package that provides it, and wraps
// exec.ErrNotFound.
func findTool(name, pkg string, dirs ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range dirs {
		if p, err := exec.LookPath(filepath.Join(d, name)); err == nil {
			return p, nil
		}
	}
	where := "on PATH"
	if len(dirs) > 0 {
		where += " and in " + strings.Join(dirs, ", ")
	}
	return "", fmt.Errorf("%s is not installed (looked %s): install the %s package: %w", name, where, pkg, exec.ErrNotFound)
}
func makeFilesystem(ctx context.Context, mkfs, dir, out string, size, inodes int64, label string, fix func(img string) error) error {
	if size < 1<<20 {
		return fmt.Errorf("image size %d bytes is too small", size)
	}
	// Write to a temporary name so a failure never leaves a half-made
	// image where a good one is expected.
	tmp := out + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("creating image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("sizing image: %w", err)
	}
	f.Close()
	// 4 KiB blocks and 256-byte inodes whatever the size: mkfs's "small"
	// profile would pick 1 KiB blocks and inodes without room for
	// timestamps past 2038.
	cmd := exec.CommandContext(ctx, mkfs, "-F", "-q", "-t", "ext4", "-b", "4096", "-I", "256", "-N", fmt.Sprint(inodes), "-L", label, "-d", dir, tmp)
	if output, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		msg := strings.TrimSpace(string(output))
		if strings.Contains(msg, "Could not allocate block") || strings.Contains(msg, "No space left") {
			msg += " (the image is too small for the content: raise the size)"
		}
		return fmt.Errorf("%s: %w: %s", filepath.Base(mkfs), err, msg)
	}
	if fix != nil {
		if err := fix(tmp); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("renaming image: %w", err)
	}
	return nil
}
