package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/api/types"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// rootfsSource is what a container's root filesystem is made of, read
// from the mounts containerd passes in Create.
type rootfsSource struct {
	// lowers are committed snapshot directories, the topmost first.
	lowers []string
	// upper is the directory whose contents start the writable disk
	// ("" for none).
	upper    string
	readOnly bool
}

// maxLowers bounds a container's layers: each is a disk, and a VM has 26.
const maxLowers = protocol.MaxLayers - 2

// ErrUnsupportedRootfs is wrapped by errors for mounts the shim cannot
// turn into disks.
var ErrUnsupportedRootfs = errors.New("unsupported rootfs")

// parseRootfs reads containerd's mounts. The overlayfs snapshotter's
// overlay mount gives the layers and the upper directory; a bind (the
// first layer of a fresh snapshot, or the native snapshotter) is copied
// into the writable disk; no mount at all means the client prepared
// bundle/rootfs itself.
func parseRootfs(mounts []*types.Mount, bundle string) (rootfsSource, error) {
	switch {
	case len(mounts) == 0:
		return rootfsSource{upper: filepath.Join(bundle, "rootfs")}, nil
	case len(mounts) > 1:
		return rootfsSource{}, fmt.Errorf("%w: %d mounts; the vmm runtime takes one (containerd's overlayfs or native snapshotter)", ErrUnsupportedRootfs, len(mounts))
	}
	m := mounts[0]
	var src rootfsSource
	switch m.Type {
	case "overlay":
		for _, o := range m.Options {
			k, v, _ := strings.Cut(o, "=")
			switch k {
			case "lowerdir":
				// overlayfs's separator; containerd never escapes one.
				src.lowers = strings.Split(v, ":")
			case "upperdir":
				src.upper = v
			case "ro":
				src.readOnly = true
			}
		}
		if len(src.lowers) == 0 {
			return rootfsSource{}, fmt.Errorf("%w: overlay mount without lowerdir", ErrUnsupportedRootfs)
		}
		if src.upper == "" {
			src.readOnly = true // a view: layers only
		}
	case "bind", "rbind":
		src.upper = m.Source
		for _, o := range m.Options {
			if o == "ro" {
				src.readOnly = true
			}
		}
	default:
		return rootfsSource{}, fmt.Errorf("%w: mount type %q; the vmm runtime serves containerd's overlayfs and native snapshotters", ErrUnsupportedRootfs, m.Type)
	}
	if len(src.lowers) > maxLowers {
		return rootfsSource{}, fmt.Errorf("%w: %d layers; a VM has disks for at most %d", ErrUnsupportedRootfs, len(src.lowers), maxLowers)
	}
	for _, d := range append(append([]string(nil), src.lowers...), src.upper) {
		if d != "" && !filepath.IsAbs(d) {
			return rootfsSource{}, fmt.Errorf("%w: relative path %q", ErrUnsupportedRootfs, d)
		}
	}
	return src, nil
}

// rootfsDisks are a container's disks: its layers' cached images
// (read-only, shared) and its own writable disk in taskDir.
type rootfsDisks struct {
	layers   []string
	upper    string
	readOnly bool
}

// prepareRootfs makes the disks for src: layer images from the cache
// and the container's writable disk.
func prepareRootfs(ctx context.Context, src rootfsSource, cache *layerCache, taskDir string, upperMiB int64) (*rootfsDisks, error) {
	d := &rootfsDisks{readOnly: src.readOnly}
	for _, l := range src.lowers {
		img, _, err := cache.Image(ctx, l)
		if err != nil {
			return nil, err
		}
		d.layers = append(d.layers, img)
	}
	if err := os.MkdirAll(taskDir, 0o700); err != nil {
		return nil, err
	}
	d.upper = filepath.Join(taskDir, "upper.ext4")
	if err := upperImage(ctx, src.upper, d.upper, upperMiB, len(d.layers) > 0); err != nil {
		return nil, fmt.Errorf("making the container's writable disk: %w", err)
	}
	return d, nil
}

// disks lists the VM drives, layers first, in attach order.
func (d *rootfsDisks) disks() []disk {
	out := make([]disk, 0, len(d.layers)+1)
	for _, l := range d.layers {
		out = append(out, disk{path: l, readOnly: true})
	}
	return append(out, disk{path: d.upper, readOnly: d.readOnly})
}

// agentRootfs is the agent's description of the container's root, given
// the guest's names for its disks in the order disks lists them.
func (d *rootfsDisks) agentRootfs(devs []string) protocol.Rootfs {
	r := protocol.Rootfs{Type: "ext4", ReadOnly: d.readOnly}
	if len(devs) == 0 {
		return r
	}
	r.Layers = append(r.Layers, devs[:len(devs)-1]...)
	r.Source = devs[len(devs)-1]
	return r
}

// taskDirOf is where a task's writable disk lives.
func taskDirOf(cfg *Config, namespace, id string) string {
	return filepath.Join(cfg.RootDir, "tasks", namespace, id)
}

// removeTaskFiles removes a task's writable disk and directory.
func removeTaskFiles(cfg *Config, namespace, id string) error {
	if err := os.RemoveAll(taskDirOf(cfg, namespace, id)); err != nil {
		return fmt.Errorf("removing the task's files: %w", err)
	}
	return nil
}
