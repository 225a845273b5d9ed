package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// mountPoint is one filesystem init mounts at boot.
type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// bootMounts are mounted in order; later targets may live inside earlier
// ones (/dev/pts inside /dev, /sys/fs/cgroup inside /sys).
func bootMounts() []mountPoint {
	const hardened = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	return []mountPoint{
		{"proc", "/proc", "proc", hardened, ""},
		{"sysfs", "/sys", "sysfs", hardened, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", hardened, ""},
	}
}

// mountAll mounts what it can. A guest kernel built without one of these
// filesystems should still reach a shell, so failures are reported and
// skipped rather than fatal.
func mountAll(console io.Writer) {
	for _, m := range bootMounts() {
		err := mount(m)
		if err == nil {
			continue
		}
		fmt.Fprintf(console, "vmm-guest: %v\n", err)
		if m.fstype == "devtmpfs" {
			fmt.Fprintf(console, "vmm-guest: creating static device nodes instead\n")
			if err := createDeviceNodes(); err != nil {
				fmt.Fprintf(console, "vmm-guest: %v\n", err)
			}
		}
	}
}

func mount(m mountPoint) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return nil
}

// deviceNode is a character device the userland cannot do without.
type deviceNode struct {
	path         string
	perm         uint32
	major, minor uint32
}

func staticDeviceNodes() []deviceNode {
	return []deviceNode{
		{"/dev/console", 0o600, 5, 1},
		{"/dev/null", 0o666, 1, 3},
		{"/dev/zero", 0o666, 1, 5},
		{"/dev/tty", 0o666, 5, 0},
		{"/dev/ttyS0", 0o660, 4, 64},
		{"/dev/urandom", 0o666, 1, 9},
	}
}

// createDeviceNodes stands in for devtmpfs. Nodes that already exist (the
// archive ships /dev/console and /dev/null) are left alone.
func createDeviceNodes() error {
	// The modes above are meant literally, not filtered by init's umask.
	defer unix.Umask(unix.Umask(0))
	var errs []error
	for _, n := range staticDeviceNodes() {
		dev := int(unix.Mkdev(n.major, n.minor))
		err := unix.Mknod(n.path, unix.S_IFCHR|n.perm, dev)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("mknod %s: %w", n.path, err))
		}
	}
	return errors.Join(errs...)
}
