package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/govmm/vmm/guest/agent/protocol"
	"golang.org/x/sys/unix"
)

// initHelperArg is the hidden first argument that makes the agent binary
// act as a container's init helper: the agent re-executes itself with it
// inside fresh namespaces, the helper builds the container's filesystem
// view, and then execs the container's init process in its own place.
const initHelperArg = "__vmm-agent-container-init"

// Descriptors the helper inherits after stdio.
const (
	helperConfigFd = 3 // JSON initConfig, written by the agent
	helperStatusFd = 4 // the helper writes an error here; EOF on exec means success
)

// initConfig is what the agent tells the helper.
type initConfig struct {
	Rootfs protocol.Rootfs `json:"rootfs"`
	// MountPoint is an empty directory to mount a block device rootfs on.
	MountPoint string `json:"mount_point"`
	// OverlayDir is where an overlay rootfs keeps its layers (see
	// mountOverlayRootfs); the helper creates it.
	OverlayDir string           `json:"overlay_dir"`
	Hostname   string           `json:"hostname"`
	Process    protocol.Process `json:"process"`
}

// runInitHelper is main for the helper; it only returns on failure.
func runInitHelper() int {
	status := os.NewFile(helperStatusFd, "status")
	// Close the status pipe on exec, which is how the agent learns the
	// container process is running.
	unix.CloseOnExec(helperStatusFd)
	fail := func(err error) int {
		fmt.Fprint(status, err.Error())
		return 1
	}
	data, err := io.ReadAll(io.LimitReader(os.NewFile(helperConfigFd, "config"), protocol.MaxPayload))
	if err != nil {
		return fail(fmt.Errorf("reading container config: %w", err))
	}
	var cfg initConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fail(fmt.Errorf("decoding container config: %w", err))
	}
	return fail(setupAndExec(&cfg))
}

// setupAndExec runs as PID 1 of the container's new PID namespace, in a
// new mount, UTS and IPC namespace, before any container code runs.
func setupAndExec(cfg *initConfig) error {
	// Keep every mount below from propagating back to the agent's
	// namespace: the container's mounts vanish with its last process.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if err := leaveInitialRootfs(cfg.MountPoint); err != nil {
		return err
	}
	root, err := mountRootfs(cfg)
	if err != nil {
		return err
	}
	if err := mountKernelFilesystems(root, cfg.Process.Terminal); err != nil {
		return err
	}
	if cfg.Rootfs.ReadOnly {
		if err := unix.Mount("", root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remounting rootfs read-only: %w", err)
		}
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("setting hostname: %w", err)
		}
	}
	if err := pivotRoot(root); err != nil {
		return err
	}
	return execProcess(&cfg.Process)
}

func mountRootfs(cfg *initConfig) (string, error) {
	rootfs := cfg.Rootfs
	if rootfs.Overlay {
		return mountOverlayRootfs(cfg)
	}
	if rootfs.Type == "bind" {
		// pivot_root needs the new root to be a mount point.
		if err := unix.Mount(rootfs.Source, rootfs.Source, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return "", fmt.Errorf("bind-mounting rootfs %s: %w", rootfs.Source, err)
		}
		return rootfs.Source, nil
	}
	if len(rootfs.Layers) > 0 {
		return mountLayeredRootfs(cfg)
	}
	var flags uintptr = unix.MS_NODEV
	if rootfs.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(rootfs.Source, cfg.MountPoint, rootfs.Type, flags, ""); err != nil {
		return "", fmt.Errorf("mounting %s (%s) as rootfs: %w%s", rootfs.Source, rootfs.Type, err, readOnlyMountHint(err, rootfs.ReadOnly))
	}
	return cfg.MountPoint, nil
}

// mountLayeredRootfs mounts each layer read-only and the writable disk
// beside the mount point, and overlayfs of them on it. They all live in
// the helper's private mount namespace and go with the container.
func mountLayeredRootfs(cfg *initConfig) (string, error) {
	rootfs := cfg.Rootfs
	base := filepath.Dir(cfg.MountPoint)
	lowers := make([]string, 0, len(rootfs.Layers))
	for i, dev := range rootfs.Layers {
		dir := filepath.Join(base, fmt.Sprintf("layer%d", i))
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("creating layer mount point: %w", err)
		}
		if err := unix.Mount(dev, dir, rootfs.Type, unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
			return "", fmt.Errorf("mounting layer %s (%s): %w", dev, rootfs.Type, err)
		}
		lowers = append(lowers, dir)
	}
	disk := filepath.Join(base, "upperdisk")
	if err := os.Mkdir(disk, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("creating upper mount point: %w", err)
	}
	var flags uintptr = unix.MS_NODEV
	if rootfs.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(rootfs.Source, disk, rootfs.Type, flags, ""); err != nil {
		return "", fmt.Errorf("mounting the writable disk %s (%s): %w", rootfs.Source, rootfs.Type, err)
	}
	data := "lowerdir=" + strings.Join(lowers, ":")
	if !rootfs.ReadOnly {
		upper, work := filepath.Join(disk, "upper"), filepath.Join(disk, "work")
		for _, d := range []string{upper, work} {
			if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return "", fmt.Errorf("creating %s on the writable disk: %w", filepath.Base(d), err)
			}
		}
		data += ",upperdir=" + upper + ",workdir=" + work
	} else {
		// Read-only: the disk's upper/ is the top layer, and overlayfs
		// without an upperdir is read-only.
		data = "lowerdir=" + filepath.Join(disk, "upper") + ":" + strings.Join(lowers, ":")
	}
	if err := unix.Mount("overlay", cfg.MountPoint, "overlay", flags, data); err != nil {
		return "", fmt.Errorf("mounting overlayfs of %d layers as rootfs: %w", len(lowers), err)
	}
	return cfg.MountPoint, nil
}

// mountTarget returns root/name, creating it as a directory if missing
// and refusing anything else: a symlink in the image must not redirect a
// mount outside the rootfs.
func mountTarget(root, name string, dir bool) (string, error) {
	target := filepath.Join(root, name)
	info, err := os.Lstat(target)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if dir {
			err = os.Mkdir(target, 0o755)
		} else {
			err = os.WriteFile(target, nil, 0o600)
		}
		if err != nil {
			return "", fmt.Errorf("creating mount point /%s: %w", name, err)
		}
		return target, nil
	case err != nil:
		return "", fmt.Errorf("mount point /%s: %w", name, err)
	case dir && !info.IsDir(), !dir && !info.Mode().IsRegular():
		return "", fmt.Errorf("mount point /%s in the rootfs is a %s", name, info.Mode().Type())
	}
	return target, nil
}

type mountSpec struct {
	name, source, fstype string
	flags                uintptr
	data                 string
}

func mountKernelFilesystems(root string, terminal bool) error {
	const hardened = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	first := []mountSpec{
		// proc mounted from inside the new PID namespace shows only
		// the container's processes.
		{"proc", "proc", "proc", hardened, ""},
		{"sys", "sysfs", "sysfs", hardened | unix.MS_RDONLY, ""},
		{"dev", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_STRICTATIME, "mode=755,size=65536k"},
	}
	for _, m := range first {
		if err := mountOne(root, m); err != nil {
			return err
		}
	}
	if err := populateDev(filepath.Join(root, "dev")); err != nil {
		return err
	}
	second := []mountSpec{
		// A private devpts instance: the container sees only its own
		// terminals in /dev/pts.
		{"dev/pts", "devpts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
		{"dev/shm", "shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777,size=65536k"},
	}
	for _, m := range second {
		if err := mountOne(root, m); err != nil {
			return err
		}
	}
	if terminal {
		// The terminal comes from the agent's devpts; /dev/console
		// shows it inside, as on a real machine's console.
		target, err := mountTarget(root, "dev/console", false)
		if err != nil {
			return err
		}
		// Bind the terminal by its path: the descriptor itself points
		// into the agent's mount namespace, which mount(2) refuses as a
		// source, while the path resolves in this namespace's copy.
		slave, err := os.Readlink("/proc/self/fd/0")
		if err != nil {
			return fmt.Errorf("finding the terminal: %w", err)
		}
		if err := unix.Mount(slave, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting the terminal %s on /dev/console: %w", slave, err)
		}
	}
	return nil
}

func mountOne(root string, m mountSpec) error {
	target, err := mountTarget(root, m.name, true)
	if err != nil {
		return err
	}
	if err := unix.Mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mounting %s on /%s: %w", m.fstype, m.name, err)
	}
	return nil
}

// populateDev creates the device nodes and links every program expects.
func populateDev(dev string) error {
	defer unix.Umask(unix.Umask(0))
	nodes := []struct {
		name         string
		major, minor uint32
	}{
		{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
		{"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
	}
	for _, n := range nodes {
		if err := unix.Mknod(filepath.Join(dev, n.name), unix.S_IFCHR|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("creating /dev/%s: %w", n.name, err)
		}
	}
	links := [][2]string{
		{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"},
		{"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
	}
	for _, l := range links {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return fmt.Errorf("creating /dev/%s: %w", l[1], err)
		}
	}
	return nil
}

// leaveInitialRootfs puts the helper's root on a mount that has a parent.
// The agent runs from the initramfs, whose root is the kernel's initial
// rootfs, and pivot_root(2) refuses to move that one (EINVAL). A recursive
// bind of / moved on top of / and entered with chroot gives the same tree
// as a mount pivot_root can work with. scratch is an empty directory that
// briefly holds the bind mount.
func leaveInitialRootfs(scratch string) error {
	if err := unix.Mount("/", scratch, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting / for pivot_root: %w", err)
	}
	if err := unix.Chdir(scratch); err != nil {
		return fmt.Errorf("entering the bind of /: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the bind of / onto /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the bind of /: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// pivotRoot makes root the root of the mount namespace and detaches the
// old root, so nothing of the agent's filesystem stays reachable.
func pivotRoot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("entering rootfs: %w", err)
	}
	// Pivoting onto "." stacks the old root on top of the new one, so it
	// can be detached without a directory to park it in.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// execProcess drops to the process's credentials and replaces the helper
// with the container's program.
func execProcess(p *protocol.Process) error {
	env := withDefaults(p.Env)
	gids := make([]int, len(p.AdditionalGIDs))
	for i, g := range p.AdditionalGIDs {
		gids[i] = int(g)
	}
	// The syscall package's set*id apply to every thread of the helper.
	if err := syscall.Setgroups(gids); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(int(p.GID)); err != nil {
		return fmt.Errorf("setgid %d: %w", p.GID, err)
	}
	if err := syscall.Setuid(int(p.UID)); err != nil {
		return fmt.Errorf("setuid %d: %w", p.UID, err)
	}
	cwd := p.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if err := unix.Chdir(cwd); err != nil {
		return fmt.Errorf("chdir %s: %w", cwd, err)
	}
	path, err := lookPath(p.Args[0], env)
	if err != nil {
		return err
	}
	if err := syscall.Exec(path, p.Args, env); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

// defaultPath is PATH for processes whose environment sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// withDefaults completes a process's environment: PATH when it sets none,
// and the agent's own runtime variables it does not set (see runtimeEnv).
func withDefaults(env []string) []string {
	out := append([]string(nil), env...)
	if !hasVar(env, "PATH") {
		out = append(out, "PATH="+defaultPath)
	}
	for _, kv := range runtimeEnv() {
		name, _, _ := strings.Cut(kv, "=")
		if !hasVar(env, name) {
			out = append(out, kv)
		}
	}
	return out
}

func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// runtimeEnv is the part of the agent's environment that its helpers and
// container processes inherit: GODEBUG and GLIBC_TUNABLES, which the VMM
// sets on the kernel command line where programs need them to run
// correctly (on kvm-pvm hosts they keep Go and glibc off AVX, whose state
// the guest kernel cannot save).
func runtimeEnv() []string {
	env := []string{}
	for _, name := range []string{"GODEBUG", "GLIBC_TUNABLES"} {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	return env
}

// lookPath finds name in env's PATH, relative to the calling thread's root
// (the container's, by the time it is called).
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if err := checkExecutable(name); err != nil {
			return "", err
		}
		return name, nil
	}
	path := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, name)
		if checkExecutable(candidate) == nil {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("%s: executable file not found in %s", name, path)
}

func checkExecutable(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s: not an executable file", path)
	}
	return nil
}
