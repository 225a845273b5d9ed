package image

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// specials holds what a build must not make real on the host while it
// stages a root filesystem as root: device nodes, FIFOs, set-user-ID and
// set-group-ID bits on files, and the root directory's own metadata.
// Staging leaves plain placeholders (empty 0600 files, files without
// their set-id bits, a 0700 root); after mkfs.ext4 has copied the tree,
// applySpecials writes the real type, mode and device number into the
// image with debugfs, so they only ever exist inside the image.
//
// Placeholders are keyed by inode number on the staging filesystem, so
// hard links and renames through later layers keep their record; a
// record whose inode was freed and reused by something else is dropped
// (regular files forget their inode when created) or skipped (wrong type).
type specials struct {
	byIno map[uint64]uint32 // staging inode → real st_mode
	rdev  map[uint64]uint64 // staging inode → device number, for nodes
	root  rootMeta
}

// rootMeta is the image root's metadata, from a layer's "./" entry.
type rootMeta struct {
	mode     uint32 // permission bits
	uid, gid int
	owners   bool // uid and gid are set
}

func newSpecials() *specials {
	return &specials{
		byIno: map[uint64]uint32{},
		rdev:  map[uint64]uint64{},
		root:  rootMeta{mode: 0o755},
	}
}

// record notes that the regular file on ino is a placeholder for mode.
func (s *specials) record(ino uint64, mode uint32, rdev uint64) {
	s.byIno[ino] = mode
	if rdev != 0 {
		s.rdev[ino] = rdev
	} else {
		delete(s.rdev, ino)
	}
}

// forget drops a record whose inode now holds a new file.
func (s *specials) forget(ino uint64) {
	delete(s.byIno, ino)
	delete(s.rdev, ino)
}

// debugfsTool is e2fsprogs' filesystem debugger, which edits an unmounted
// image in place.
const debugfsTool = "debugfs"

// script turns the records into debugfs requests for the tree staged at
// dir.
func (s *specials) script(dir string) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "sif <%d> mode 0%o\n", rootInode, unix.S_IFDIR|s.root.mode&0o7777)
	if s.root.owners {
		fmt.Fprintf(&b, "sif <%d> uid %d\nsif <%d> gid %d\n", rootInode, s.root.uid, rootInode, s.root.gid)
	}
	if len(s.byIno) == 0 {
		return b.Bytes(), nil
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		mode, ok := s.byIno[st.Ino]
		if !ok {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := "/" + filepath.ToSlash(rel)
		q, err := debugfsQuote(name)
		if err != nil {
			return err
		}
		if mode&unix.S_IFMT == unix.S_IFREG {
			fmt.Fprintf(&b, "sif %s mode 0%o\n", q, mode)
			return nil
		}
		// A node replaces its placeholder: debugfs's mknod makes a new
		// inode in the current directory, which then gets the mode,
		// owner and time the placeholder carried.
		pq, _ := debugfsQuote(path.Dir(name))
		bq, _ := debugfsQuote(path.Base(name))
		fmt.Fprintf(&b, "rm %s\ncd %s\n", q, pq)
		switch mode & unix.S_IFMT {
		case unix.S_IFIFO:
			fmt.Fprintf(&b, "mknod %s p\n", bq)
		case unix.S_IFCHR, unix.S_IFBLK:
			kind := "c"
			if mode&unix.S_IFMT == unix.S_IFBLK {
				kind = "b"
			}
			// debugfs's mknod takes numbers below 65536 only, so the
			// number is written into the inode the way Linux encodes it
			// (old_encode_dev / new_encode_dev in include/linux/kdev_t.h).
			dev := s.rdev[st.Ino]
			major, minor := unix.Major(dev), unix.Minor(dev)
			var oldDev, newDev uint32
			if major < 256 && minor < 256 {
				oldDev = major<<8 | minor
			} else {
				newDev = minor&0xff | major<<8 | (minor&^0xff)<<12
			}
			fmt.Fprintf(&b, "mknod %s %s 0 0\nsif %s block[0] %d\nsif %s block[1] %d\n", bq, kind, q, oldDev, q, newDev)
		default:
			return fmt.Errorf("%s: no way to make mode 0%o", name, mode)
		}
		fmt.Fprintf(&b, "cd <%d>\nsif %s mode 0%o\nsif %s uid %d\nsif %s gid %d\nsif %s mtime @%d\n",
			rootInode, q, mode, q, st.Uid, q, st.Gid, q, st.Mtim.Sec)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing special files: %w", err)
	}
	return b.Bytes(), nil
}

// rootInode is ext4's root directory inode (EXT2_ROOT_INO).
const rootInode = 2

// debugfsQuote quotes an absolute path for a debugfs request. debugfs
// reads one request a line and splits words at blanks outside double
// quotes, so a name with a quote, a backslash or a control character
// could end the request early and start another: such names are
// refused rather than escaped.
func debugfsQuote(name string) (string, error) {
	for _, c := range []byte(name) {
		if c < 0x20 || c == 0x7f || c == '"' || c == '\\' {
			return "", fmt.Errorf("special file %q: its name has characters debugfs cannot take", name)
		}
	}
	return `"` + name + `"`, nil
}

// applySpecials writes the records into the image img made from dir.
func applySpecials(ctx context.Context, s *specials, dir, img string) error {
	script, err := s.script(dir)
	if err != nil {
		return err
	}
	tool, err := findTool(debugfsTool, mkfsPackage, "/usr/sbin", "/sbin")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(img), ".debugfs-*")
	if err != nil {
		return fmt.Errorf("writing debugfs requests: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(script)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing debugfs requests: %w", err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-w", "-f", f.Name(), img)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debugfs: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	// debugfs exits 0 even when a request fails; failures go to stderr
	// after its version banner.
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if line != "" && !strings.HasPrefix(line, "debugfs ") {
			return fmt.Errorf("debugfs: %s", strings.TrimSpace(stderr.String()))
		}
	}
	return nil
}
