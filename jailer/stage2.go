package jailer

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// stage2 runs in the child stage 1 started in a new mount (and perhaps
// pid) namespace, as root: it pivots into the jail, makes the device
// nodes, joins the netns, drops privileges and execs the VMM. It returns
// only on failure.
func stage2(planJSON string) error {
	var p plan
	if err := json.Unmarshal([]byte(planJSON), &p); err != nil {
		return fmt.Errorf("stage 2 plan: %w", err)
	}
	// setns(CLONE_NEWNET) changes only the calling thread, and execve
	// keeps the calling thread's namespaces: both happen on this thread.
	runtime.LockOSThread()
	// The device nodes' modes are exactly what we ask.
	syscall.Umask(0)
	var netns *os.File
	if p.NetNS != "" {
		// Opened before pivot_root hides the host's paths.
		f, err := os.Open(p.NetNS)
		if err != nil {
			return fmt.Errorf("netns: %w", err)
		}
		netns = f
	}
	if err := pivot(p.Root); err != nil {
		return err
	}
	if err := makeDevices(p.UID, p.GID); err != nil {
		return err
	}
	if netns != nil {
		if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("joining netns %s: %w", p.NetNS, err)
		}
		netns.Close()
	}
	// Go's own fds are close-on-exec already; this catches any other.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("marking fds close-on-exec: %w", err)
	}
	// gid before uid: after setresuid we could no longer change groups.
	// Go applies these to every thread of the process.
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(int(p.GID), int(p.GID), int(p.GID)); err != nil {
		return fmt.Errorf("setresgid %d: %w", p.GID, err)
	}
	if err := syscall.Setresuid(int(p.UID), int(p.UID), int(p.UID)); err != nil {
		return fmt.Errorf("setresuid %d: %w", p.UID, err)
	}
	if err := syscall.Exec(p.Argv[0], p.Argv, []string{}); err != nil {
		return fmt.Errorf("exec %s: %w", p.Argv[0], err)
	}
	return nil
}

// pivot makes root the root of this mount namespace and detaches the old
// one, so that nothing of the host's file system stays reachable.
func pivot(root string) error {
	// Private first, so that none of what follows propagates to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	// pivot_root needs the new root to be a mount point.
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting the jail: %w", err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	// pivot_root(".", ".") stacks the old root on the new one (see
	// pivot_root(2)); unmounting "." then detaches it without needing a
	// directory for it in the jail.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	return nil
}

// makeDevices creates the jail's only device nodes, owned by the VMM's uid
// and gid, mode 0600.
func makeDevices(uid, gid uint32) error {
	for _, dir := range []string{"/dev", "/dev/net"} {
		if err := os.Mkdir(dir, devDirMode); err != nil && !os.IsExist(err) {
			return fmt.Errorf("jail: %w", err)
		}
	}
	for _, d := range devices {
		if err := os.Remove(d.path); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("jail: %w", err)
		}
		if err := unix.Mknod(d.path, unix.S_IFCHR|devMode, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", d.path, err)
		}
		if err := os.Chown(d.path, int(uid), int(gid)); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
	}
	return nil
}
