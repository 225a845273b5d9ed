package image

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// tree writes into a directory without ever leaving it. Every path is
// resolved with openat2(RESOLVE_IN_ROOT), which treats the directory as
// "/" for absolute symlinks and "..", just as the container will see it,
// and the last component is always created or replaced with *at calls
// that do not follow it. So a hostile layer can at most rearrange its own
// image, never write outside it.
type tree struct {
	root *os.File // O_PATH descriptor of the directory
	path string   // its path, to map descriptors back to paths in the tree
}

func openTree(dir string) (*tree, error) {
	f, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("resolving %s: %w", dir, err)
	}
	abs, err := filepath.Abs(real)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &tree{root: f, path: abs}, nil
}

func (t *tree) Close() error { return t.root.Close() }

func (t *tree) rootFd() int { return int(t.root.Fd()) }

// cleanName turns a tar entry name into a relative path inside the tree,
// or fails if it climbs out with "..".
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("entry name %q contains a NUL byte", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("entry %q: path traversal (..) is not allowed", name)
		}
	}
	rel := path.Clean("/" + name)[1:]
	if rel == "" {
		rel = "."
	}
	return rel, nil
}

// resolve opens rel (which must exist) as an O_PATH descriptor, following
// symlinks inside the tree only.
func (t *tree) resolve(rel string, flags uint64) (int, error) {
	how := &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC | flags,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(t.rootFd(), rel, how)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		return fd, err
	}
}

// dir opens directory rel, creating it and its parents (mode 0755) when
// missing. A dangling symlink on the way is followed the way the
// container would follow it, and the directory it names is created.
func (t *tree) dir(rel string) (int, error) {
	return t.dirDepth(rel, 0)
}

// maxSymlinks bounds the dangling symlinks dir follows, like the
// kernel's 40.
const maxSymlinks = 40

func (t *tree) dirDepth(rel string, depth int) (int, error) {
	fd, err := t.resolve(rel, unix.O_DIRECTORY)
	if err == nil || !errors.Is(err, unix.ENOENT) || rel == "." {
		if err != nil {
			return -1, fmt.Errorf("opening directory /%s: %w", rel, err)
		}
		return fd, nil
	}
	if depth > maxSymlinks {
		return -1, fmt.Errorf("opening directory /%s: too many levels of symbolic links", rel)
	}
	parent, err := t.dirDepth(path.Dir(rel), depth)
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	base := path.Base(rel)
	err = unix.Mkdirat(parent, base, 0o755)
	if errors.Is(err, unix.EEXIST) {
		if st, serr := lstatAt(parent, base); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			target, err := t.danglingTarget(parent, base)
			if err != nil {
				return -1, fmt.Errorf("following /%s: %w", rel, err)
			}
			return t.dirDepth(target, depth+1)
		}
	} else if err != nil {
		return -1, fmt.Errorf("creating directory /%s: %w", rel, err)
	}
	fd, err = t.resolve(rel, unix.O_DIRECTORY)
	if err != nil {
		return -1, fmt.Errorf("opening directory /%s: %w", rel, err)
	}
	return fd, nil
}

// danglingTarget turns symlink base in directory parent into the path in
// the tree it points to, clamping ".." at the tree's root as the kernel
// does at a process's root.
func (t *tree) danglingTarget(parent int, base string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(parent, base, buf)
	if err != nil {
		return "", err
	}
	target := string(buf[:n])
	if !path.IsAbs(target) {
		// Where parent really is: it was reached through symlinks, so
		// its name in the tree may differ from the entry's.
		real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", parent))
		if err != nil {
			return "", err
		}
		inTree, ok := strings.CutPrefix(real, t.path)
		if !ok || (inTree != "" && !strings.HasPrefix(inTree, "/")) {
			return "", fmt.Errorf("directory %s is outside the tree", real)
		}
		target = inTree + "/" + target
	}
	rel := path.Clean("/" + target)[1:]
	if rel == "" {
		rel = "."
	}
	return rel, nil
}

// existingDir opens directory rel if it exists: (-1, nil) if it does not.
func (t *tree) existingDir(rel string) (int, error) {
	fd, err := t.resolve(rel, unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("opening directory /%s: %w", rel, err)
	}
	return fd, nil
}

// open opens rel for reading (following symlinks inside the tree).
func (t *tree) open(rel string) (*os.File, error) {
	how := &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(t.rootFd(), rel, how)
	if err != nil {
		return nil, fmt.Errorf("opening /%s: %w", rel, err)
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// removeAt removes name in dirfd, recursively if it is a directory. A
// missing name is not an error.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	if err := removeChildren(dirfd, name); err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing directory %s: %w", name, err)
	}
	return nil
}

// removeChildren empties directory name in dirfd without following a
// symlink in its place.
func removeChildren(dirfd int, name string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening directory %s: %w", name, err)
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	for {
		names, err := d.Readdirnames(256)
		for _, child := range names {
			if err := removeAt(fd, child); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("listing %s: %w", name, err)
		}
		// Entries were removed while reading: start over so none is
		// skipped.
		if _, err := d.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("rewinding %s: %w", name, err)
		}
	}
}

// lstatAt stats name in dirfd without following it.
func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}
