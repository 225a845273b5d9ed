package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Whiteout names (OCI image spec, "Representing Changes"): a file named
// .wh.NAME in a layer deletes NAME from the layers below; .wh..wh..opq
// deletes everything below in its directory.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
)

// decompress wraps r according to its magic bytes: layers are plain or
// gzip'd tar whatever their media type says, and zstd is refused clearly.
func decompress(r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, errors.New("zstd-compressed layers are not supported")
	}
	return br, nil
}

// extractOptions tune applyEntry.
type extractOptions struct {
	whiteouts bool // interpret .wh. entries (image layers, not outer archives)
	owners    bool // apply the entries' uid/gid (needs root)
	// special receives device nodes, FIFOs, set-id bits and the root's
	// metadata, which are never made real on the host; nil drops them
	// (outer archives, Unpack).
	special *specials
	lim     *limits
}

// applyLayer applies one image layer to t. open is called twice: the
// first pass applies the layer's whiteouts to what the lower layers left,
// the second adds its files. Two passes make the result independent of
// where in the archive a whiteout appears relative to the files of the
// same layer.
func applyLayer(t *tree, open func() (io.ReadCloser, error), opts extractOptions) error {
	if err := readTar(open, opts.lim, func(tr *tar.Reader, hdr *tar.Header) error {
		return applyWhiteout(t, hdr)
	}); err != nil {
		return err
	}
	opts.whiteouts = true
	return readTar(open, opts.lim, func(tr *tar.Reader, hdr *tar.Header) error {
		return applyEntry(t, tr, hdr, opts)
	})
}

// readTar calls fn for every entry of the (possibly compressed) tar that
// open returns, reading at most lim's byte cap of decompressed stream.
func readTar(open func() (io.ReadCloser, error), lim *limits, fn func(*tar.Reader, *tar.Header) error) error {
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	dr, err := decompress(rc)
	if err != nil {
		return err
	}
	r := &capReader{r: dr, left: lim.maxBytes, l: lim}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// Read to the very end, so gzip checks its CRC and a
			// digest check on the raw stream sees all of it.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return fmt.Errorf("reading to the end of the archive: %w", err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		if err := fn(tr, hdr); err != nil {
			return err
		}
	}
}

func applyWhiteout(t *tree, hdr *tar.Header) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	base := path.Base(rel)
	if !strings.HasPrefix(base, whiteoutPrefix) {
		return nil
	}
	dirfd, err := t.existingDir(path.Dir(rel))
	if err != nil || dirfd < 0 {
		// Nothing below to hide.
		return err
	}
	defer unix.Close(dirfd)
	switch {
	case base == opaqueWhiteout:
		return removeAllChildren(dirfd, rel)
	case strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix):
		// Other .wh..wh. names are aufs bookkeeping, not deletions.
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("whiteout %q names nothing", hdr.Name)
	}
	if err := removeAt(dirfd, name); err != nil {
		return fmt.Errorf("whiteout %s: %w", hdr.Name, err)
	}
	return nil
}

// removeAllChildren empties an opaque directory.
func removeAllChildren(dirfd int, rel string) error {
	if err := removeChildren(dirfd, "."); err != nil {
		return fmt.Errorf("opaque whiteout %s: %w", rel, err)
	}
	return nil
}

// applyEntry creates one entry in t, replacing what was there.
func applyEntry(t *tree, tr *tar.Reader, hdr *tar.Header, opts extractOptions) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if opts.whiteouts && strings.HasPrefix(path.Base(rel), whiteoutPrefix) {
		return nil // applied in the first pass
	}
	size := int64(0)
	if hdr.Typeflag == tar.TypeReg {
		size = hdr.Size
	}
	if err := opts.lim.entry(hdr.Name, size); err != nil {
		return err
	}
	if rel == "." {
		// The root's own entry: its metadata is the image's choice,
		// but it cannot be replaced, and the staging directory keeps
		// its private 0700 on the host.
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("entry %q would replace the root directory", hdr.Name)
		}
		if opts.special != nil {
			opts.special.root = rootMeta{mode: uint32(hdr.Mode) & 0o7777, uid: hdr.Uid, gid: hdr.Gid, owners: opts.owners}
		}
		return nil
	}
	parent, err := t.dir(path.Dir(rel))
	if err != nil {
		return fmt.Errorf("entry %s: %w", hdr.Name, err)
	}
	defer unix.Close(parent)
	base := path.Base(rel)

	if hdr.Typeflag == tar.TypeDir {
		st, err := lstatAt(parent, base)
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := removeAt(parent, base); err != nil {
				return err
			}
			err = unix.ENOENT
		}
		if err != nil {
			if err := unix.Mkdirat(parent, base, 0o700); err != nil {
				return fmt.Errorf("creating directory /%s: %w", rel, err)
			}
		}
		return setMetadata(parent, base, hdr, opts, uint32(hdr.Mode)&0o7777)
	}

	// Everything else replaces what was there, directories included.
	if err := removeAt(parent, base); err != nil {
		return err
	}
	// Set-id bits never reach the host: the image gets them from
	// opts.special.
	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeReg: // tar.Reader reports the legacy TypeRegA as TypeReg
		f, err := createAt(parent, base, rel)
		if err != nil {
			return err
		}
		err = writeSparse(f, tr)
		if err == nil {
			err = opts.note(f, unix.S_IFREG|mode, 0, mode&setIDBits != 0)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing /%s: %w", rel, err)
		}
		mode &^= setIDBits
	case tar.TypeSymlink:
		if strings.IndexByte(hdr.Linkname, 0) >= 0 || hdr.Linkname == "" {
			return fmt.Errorf("symlink /%s has a bad target %q", rel, hdr.Linkname)
		}
		// The target is stored, never followed while extracting.
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return fmt.Errorf("creating symlink /%s: %w", rel, err)
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link /%s: %w", rel, err)
		}
		tdir, err := t.existingDir(path.Dir(target))
		if err != nil || tdir < 0 {
			return fmt.Errorf("hard link /%s: target %s does not exist", rel, hdr.Linkname)
		}
		err = unix.Linkat(tdir, path.Base(target), parent, base, 0)
		unix.Close(tdir)
		if err != nil {
			return fmt.Errorf("hard link /%s to /%s: %w", rel, target, err)
		}
		// A hard link shares its target's inode and metadata.
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		// A node on the host would be one any process that reaches the
		// staging tree could open: an empty placeholder stands in for
		// it and the image gets the node.
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		if hdr.Devmajor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor < 0 || hdr.Devminor > 0xfffff {
			return fmt.Errorf("device /%s: bad number %d:%d", rel, hdr.Devmajor, hdr.Devminor)
		}
		f, err := createAt(parent, base, rel)
		if err != nil {
			return err
		}
		err = opts.note(f, kind|mode, unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)), true)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("device /%s: %w", rel, err)
		}
		mode = 0o600
	default:
		return fmt.Errorf("entry /%s: unsupported tar entry type %q", rel, hdr.Typeflag)
	}
	if hdr.Typeflag == tar.TypeSymlink {
		return setMetadata(parent, base, hdr, opts, noMode)
	}
	return setMetadata(parent, base, hdr, opts, mode)
}

// setIDBits are the mode bits that make an executable run as its owner
// or group.
const setIDBits = unix.S_ISUID | unix.S_ISGID

// noMode tells setMetadata to leave the mode alone.
const noMode = ^uint32(0)

// createAt creates the regular file base in parent, 0600 and empty.
func createAt(parent int, base, rel string) (*os.File, error) {
	fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating /%s: %w", rel, err)
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// note records the new regular file f as a placeholder for mode when
// special is set, and otherwise makes sure no record names its inode.
func (o extractOptions) note(f *os.File, mode uint32, rdev uint64, special bool) error {
	if o.special == nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if special {
		o.special.record(st.Ino, mode, rdev)
	} else {
		o.special.forget(st.Ino)
	}
	return nil
}

// holeBlock is the run of zeros writeSparse turns into a hole: the
// filesystem block size, below which a hole saves nothing.
const holeBlock = 4096

// writeSparse copies r into the new file f, seeking over zero blocks
// instead of writing them, so a file of holes (a sparse tar entry, or a
// stream of zeros) allocates no disk space on the host; mkfs.ext4 -d
// keeps the holes in the image.
func writeSparse(f *os.File, r io.Reader) error {
	buf := make([]byte, 64<<10)
	zero := make([]byte, holeBlock)
	var off int64
	for {
		// Not io.ReadFull: its io.ErrUnexpectedEOF would hide a
		// truncated archive's.
		n, err := 0, error(nil)
		for n < len(buf) && err == nil {
			var m int
			m, err = r.Read(buf[n:])
			n += m
		}
		for i := 0; i < n; i += holeBlock {
			chunk := buf[i:min(i+holeBlock, n)]
			if !bytes.Equal(chunk, zero[:len(chunk)]) {
				if _, werr := f.WriteAt(chunk, off); werr != nil {
					return werr
				}
			}
			off += int64(len(chunk))
		}
		if errors.Is(err, io.EOF) {
			return f.Truncate(off)
		}
		if err != nil {
			return err
		}
	}
}

// setMetadata applies ownership, then mode (chown clears set-id bits),
// then modification time. Symlinks have no mode of their own on Linux:
// they pass noMode.
func setMetadata(parent int, base string, hdr *tar.Header, opts extractOptions, mode uint32) error {
	if opts.owners {
		if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown %s: %w", hdr.Name, err)
		}
	}
	if mode != noMode {
		// base is known not to be a symlink here, so following is
		// harmless (fchmodat cannot do otherwise).
		if err := unix.Fchmodat(parent, base, mode, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", hdr.Name, err)
		}
	}
	if !hdr.ModTime.IsZero() {
		ts := unix.NsecToTimespec(hdr.ModTime.UnixNano())
		_ = unix.UtimesNanoAt(parent, base, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}
