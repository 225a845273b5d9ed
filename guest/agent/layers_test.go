package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/image"
	"github.com/govmm/vmm/internal/testenv"
)

// loopDevice attaches img to a loop device for the test, as the guest
// gets each disk as /dev/vdX.
func loopDevice(t *testing.T, img string, readOnly bool) string {
	t.Helper()
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.Command("losetup", append(args, img)...).Output()
	if err != nil {
		testenv.Skipf(t, "no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	return dev
}

// TestOverlayRootfs stacks two read-only layer disks and a writable disk
// the way the containerd shim attaches them: the container sees the
// union, a whiteout in the top layer hides a file of the bottom one, and
// its writes land on the writable disk's upper/, never on a layer.
func TestOverlayRootfs(t *testing.T) {
	h := newHarness(t)
	testenv.RequireCommand(t, "losetup", "mount")
	testenv.RequireCommand(t, "debugfs", "e2fsprogs")
	dir := t.TempDir()

	bottom := h.rootfs()
	if err := os.WriteFile(filepath.Join(bottom, "etc", "gone"), []byte("bottom\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top")
	if err := os.MkdirAll(filepath.Join(top, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(top, "etc", "motd"), []byte("from the top layer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An overlayfs whiteout: a 0/0 character device.
	if err := exec.Command("mknod", filepath.Join(top, "etc", "gone"), "c", "0", "0").Run(); err != nil {
		t.Fatalf("mknod whiteout: %v", err)
	}
	upperSrc := filepath.Join(dir, "upperdisk")
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(upperSrc, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	imgs := map[string]string{}
	for name, src := range map[string]string{"bottom": bottom, "top": top, "upper": upperSrc} {
		imgs[name] = filepath.Join(dir, name+".ext4")
		if err := image.BuildFromDir(ctxT(t), src, imgs[name], image.Options{}); err != nil {
			testenv.Skipf(t, "cannot build an ext4 image: %v", err)
		}
	}
	layers := []string{loopDevice(t, imgs["top"], true), loopDevice(t, imgs["bottom"], true)}
	upper := loopDevice(t, imgs["upper"], false)

	r := h.run("overlay", []string{"sh", "-c", "cat /etc/motd; test -e /etc/gone || echo whiteout; echo written > /etc/new; cat /etc/new; grep ' / ' /proc/mounts"}, "", func(req *protocol.CreateContainerRequest) {
		req.Rootfs = protocol.Rootfs{Source: upper, Type: "ext4", Layers: layers}
	})
	want := "from the top layer\nwhiteout\nwritten\noverlay / overlay"
	if r.status.Code != 0 || !strings.HasPrefix(r.stdout, want) {
		t.Fatalf("container on overlay: %+v, want stdout starting %q", r, want)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /upper/etc/new", imgs["upper"]).Output(); err != nil || string(out) != "written\n" {
		t.Errorf("writable disk after the container: %q %v", out, err)
	}
	for _, name := range []string{"top", "bottom"} {
		if out, _ := exec.Command("debugfs", "-R", "stat /etc/new", imgs[name]).CombinedOutput(); !strings.Contains(string(out), "not found") {
			t.Errorf("the container's write reached the %s layer: %s", name, out)
		}
	}
}

// TestOverlayRootfsRejected checks the layer list is validated before
// anything is mounted.
func TestOverlayRootfsRejected(t *testing.T) {
	h := newHarness(t)
	testenv.RequireCommand(t, "losetup", "mount")
	// Any block device passes the Source check; only the layers are wrong.
	out, err := exec.Command("losetup", "--find").Output()
	if err != nil {
		testenv.Skipf(t, "no loop device: %v", err)
	}
	blk := strings.TrimSpace(string(out))
	for name, c := range map[string]struct {
		rootfs protocol.Rootfs
		want   string
	}{
		"bind":       {protocol.Rootfs{Source: h.rootfs(), Type: "bind", Layers: []string{blk}}, "not a bind"},
		"colon":      {protocol.Rootfs{Source: blk, Type: "ext4", Layers: []string{"/dev/a:b"}}, "without ':'"},
		"not device": {protocol.Rootfs{Source: blk, Type: "ext4", Layers: []string{"/etc"}}, "not a block device"},
		"too many":   {protocol.Rootfs{Source: blk, Type: "ext4", Layers: make([]string, protocol.MaxLayers+1)}, "at most"},
	} {
		_, err := h.client.CreateContainer(ctxT(t), protocol.CreateContainerRequest{ID: "bad", Rootfs: c.rootfs})
		if !protocol.IsCode(err, protocol.CodeInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CreateContainer = %v, want invalid_argument saying %q", name, err, c.want)
		}
	}
}
