package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/image"
	"github.com/govmm/vmm/internal/testenv"
)

func TestOverlayOptions(t *testing.T) {
	cases := []struct {
		lower, upper, work string
		want               string // "" for an error
	}{
		{"/run/a/lower", "/run/a/upper", "/run/a/work", "lowerdir=/run/a/lower,upperdir=/run/a/upper,workdir=/run/a/work"},
		{"/srv/root dir", "/u", "/w", "lowerdir=/srv/root dir,upperdir=/u,workdir=/w"},
		{"/srv/a,upperdir=/etc", "/u", "/w", ""},
		{"/srv/a:/etc", "/u", "/w", ""},
		{`/srv/a\`, "/u", "/w", ""},
		{"/l", "/u,x", "/w", ""},
		{"/l", "/u", "/w:x", ""},
		{"lower", "/u", "/w", ""},
		{"/l", "", "/w", ""},
	}
	for _, c := range cases {
		got, err := overlayOptions(c.lower, c.upper, c.work)
		if c.want == "" {
			if err == nil {
				t.Errorf("overlayOptions(%q, %q, %q) = %q, want an error", c.lower, c.upper, c.work, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("overlayOptions(%q, %q, %q) = %q, %v; want %q", c.lower, c.upper, c.work, got, err, c.want)
		}
	}
}

func TestReadOnlyMountHint(t *testing.T) {
	cases := []struct {
		err      error
		readOnly bool
		want     string // a substring; "" for no hint
	}{
		{syscall.EROFS, true, "journal needs recovery"},
		{syscall.EACCES, true, ""},
		{syscall.EACCES, false, "readonly or an overlay"},
		{syscall.EROFS, false, "readonly or an overlay"},
		{syscall.EINVAL, false, ""},
		{os.ErrNotExist, false, ""},
	}
	for _, c := range cases {
		got := readOnlyMountHint(c.err, c.readOnly)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("readOnlyMountHint(%v, %v) = %q, want %q", c.err, c.readOnly, got, c.want)
		}
	}
}

// colonDir is an existing directory whose path overlayfs can't take.
func colonDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "a:b")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeScript changes the root in every way a container can: a new file,
// an appended one, a removed file, a removed directory, a new directory.
const writeScript = `set -e
echo ok > /written
echo more >> /etc/hostname
rm /etc/hosts
rmdir /root
mkdir /newdir
stat -c 'mode=%a' /
cat /written`

// lookScript prints what writeScript changed, as a fresh container sees it.
const lookScript = `cat /etc/hostname; ls -d /root /etc/hosts; ls /written /newdir 2>&1 || true`

// fileState is what must not change about an image file.
type fileState struct {
	sha256  string
	size    int64
	modTime time.Time
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileState{fmt.Sprintf("%x", sha256.Sum256(data)), st.Size(), st.ModTime()}
}

// checkFresh checks that a new container on the same source does not see
// what an earlier one wrote.
func checkFresh(t *testing.T, r result) {
	t.Helper()
	if r.status.Code != 0 || !strings.HasPrefix(r.stdout, "container\n/etc/hosts\n/root\n") ||
		!strings.Contains(r.stdout, "/written: No such file") || !strings.Contains(r.stdout, "/newdir: No such file") {
		t.Errorf("a second container sees the first one's writes: %+v", r)
	}
}

// TestOverlayRootfsBlockDevice runs containers with an overlay rootfs on
// an ext4 image, as `vmm run` does on its read-only /dev/vda: on a
// read-only loop device (what the guest gets) and on a writable one (the
// agent itself must not write to the source either). The container
// writes wherever it likes, the next container sees none of it, and the
// image file keeps its bytes and modification time.
func TestOverlayRootfsBlockDevice(t *testing.T) {
	for _, disk := range []struct {
		name     string
		readOnly bool
	}{
		{"read-only disk", true},
		{"writable disk", false},
	} {
		t.Run(disk.name, func(t *testing.T) {
			h := newHarness(t)
			testenv.RequireCommand(t, "losetup", "mount")
			img := filepath.Join(t.TempDir(), "rootfs.ext4")
			if err := image.BuildFromDir(ctxT(t), h.rootfs(), img, image.Options{}); err != nil {
				testenv.Skipf(t, "cannot build an ext4 image: %v", err)
			}
			before := stateOf(t, img)
			dev := loopDevice(t, img, disk.readOnly)
			overlay := func(req *protocol.CreateContainerRequest) {
				req.Rootfs = protocol.Rootfs{Source: dev, Type: "ext4", Overlay: true}
			}
			// The root's mode as the image has it, seen through a plain
			// read-only mount.
			ro := h.run("mode", []string{"stat", "-c", "mode=%a", "/"}, "", func(req *protocol.CreateContainerRequest) {
				req.Rootfs = protocol.Rootfs{Source: dev, Type: "ext4", ReadOnly: true}
			})
			if ro.status.Code != 0 || !strings.HasPrefix(ro.stdout, "mode=") {
				t.Fatalf("read-only container: %+v", ro)
			}
			r := h.run("writer", []string{"sh", "-c", writeScript}, "", overlay)
			if r.status.Code != 0 || r.stdout != ro.stdout+"ok\n" {
				t.Errorf("writing container on an overlay of %s: %+v; want the image's root mode %q, then ok", dev, r, ro.stdout)
			}
			checkFresh(t, h.run("reader", []string{"sh", "-c", lookScript}, "", overlay))
			if after := stateOf(t, img); after != before {
				t.Errorf("the image changed: %+v before, %+v after", before, after)
			}
		})
	}
}

// TestRootfsReadOnlyDisk: mounting a read-only disk read-write fails with
// a hint at the way out.
func TestRootfsReadOnlyDisk(t *testing.T) {
	h := newHarness(t)
	testenv.RequireCommand(t, "losetup", "mount")
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := image.BuildFromDir(ctxT(t), h.rootfs(), img, image.Options{}); err != nil {
		testenv.Skipf(t, "cannot build an ext4 image: %v", err)
	}
	dev := loopDevice(t, img, true)
	h.create("rw", func(req *protocol.CreateContainerRequest) {
		req.Rootfs = protocol.Rootfs{Source: dev, Type: "ext4"}
	})
	_, err := h.client.StartProcess(ctxT(t), "rw", protocol.Process{Args: []string{"true"}}, client.Stdio{})
	if err == nil || !strings.Contains(err.Error(), "readonly or an overlay") {
		t.Errorf("starting a container on a read-only disk mounted read-write: %v, want the hint", err)
	}
	if err := h.client.DestroyContainer(ctxT(t), "rw"); err != nil {
		t.Error(err)
	}
}

// TestOverlayRootfsBind is the overlay over a directory: the directory is
// left as it was, and the root keeps its mode.
func TestOverlayRootfsBind(t *testing.T) {
	h := newHarness(t)
	src := h.rootfs()
	if err := os.Chmod(src, 0o751); err != nil {
		t.Fatal(err)
	}
	list := func() string {
		var names []string
		err := filepath.Walk(src, func(path string, info os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			names = append(names, path+" "+info.Mode().String()+" "+info.ModTime().String())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		hostname, err := os.ReadFile(filepath.Join(src, "etc", "hostname"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(names, "\n") + "\n" + string(hostname)
	}
	before := list()
	overlay := func(req *protocol.CreateContainerRequest) {
		req.Rootfs = protocol.Rootfs{Source: src, Type: "bind", Overlay: true}
	}
	r := h.run("writer", []string{"sh", "-c", writeScript}, "", overlay)
	if r.status.Code != 0 || r.stdout != "mode=751\nok\n" {
		t.Errorf("writing container: %+v, want mode=751 and ok", r)
	}
	checkFresh(t, h.run("reader", []string{"sh", "-c", lookScript}, "", overlay))
	if after := list(); after != before {
		t.Errorf("the source directory changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
