package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/govmm/vmm/guest/agent/protocol"
	"golang.org/x/sys/unix"
)

// container is one container: its settings, cgroup and processes.
type container struct {
	id     string
	spec   protocol.CreateContainerRequest
	cg     *cgroup
	runDir string // agent-side scratch: the rootfs mount point lives here

	mu        sync.Mutex
	init      *process
	initPidfd int                 // pidfd of init, for joining its namespaces; -1 before start
	procs     map[string]*process // by exec id, including InitExecID
	destroyed bool
}

// startInit starts the container's init process: the agent binary
// re-executed as the init helper in new namespaces, which sets up the
// filesystem and execs spec.
func (a *agent) startInit(conn *protocol.Conn, c *container, spec protocol.Process) (*process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return nil, protocol.Errorf(protocol.CodeNotFound, "container %s is being destroyed", c.id)
	}
	if c.init != nil {
		return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "container %s was already started", c.id)
	}

	cfg := initConfig{
		Rootfs:     c.spec.Rootfs,
		MountPoint: filepath.Join(c.runDir, "rootfs"),
		OverlayDir: filepath.Join(c.runDir, "overlay"),
		Hostname:   c.spec.Hostname,
		Process:    spec,
	}
	config, err := json.Marshal(cfg)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "encoding helper config: %v", err)
	}

	sio, err := prepareStdio(conn, &spec, protocol.InitExecID)
	if err != nil {
		return nil, err
	}
	p := sio.proc
	started := false
	defer func() {
		if !started {
			sio.abort()
		}
	}()

	configR, configW, err := os.Pipe()
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	defer configR.Close()
	defer configW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	defer statusR.Close()
	defer statusW.Close()

	cmd := exec.Command(a.selfExe, initHelperArg)
	cmd.Args[0] = "vmm-agent-init"
	cmd.Env = runtimeEnv()
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = sio.child[0], sio.child[1], sio.child[2]
	cmd.ExtraFiles = []*os.File{configR, statusW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
		Setsid:     true,
		Setctty:    spec.Terminal,
		Ctty:       0,
		// A container must not outlive the agent that can stop it.
		Pdeathsig: unix.SIGKILL,
	}
	cgFile, err := c.cg.openDir()
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	if cgFile != nil {
		defer cgFile.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgFile.Fd())
	}
	var startErr error
	a.spawner.run(func() { startErr = cmd.Start() })
	if startErr != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "starting container init: %v", startErr)
	}
	p.cmd = cmd
	// Nothing has reaped the child yet, so its pid is still ours: the
	// pidfd keeps naming this process even after the pid is reused.
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, protocol.Errorf(protocol.CodeInternal, "pidfd_open: %v", err)
	}
	kill := func() {
		unix.Close(pidfd)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	configR.Close()
	statusW.Close()
	if cgFile == nil {
		// v1: the helper waits for its config before doing anything, so
		// joining the cgroup now still precedes the container's code.
		if err := c.cg.addProcess(cmd.Process.Pid); err != nil {
			kill()
			return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
		}
	}
	if _, err := configW.Write(config); err != nil {
		kill()
		return nil, protocol.Errorf(protocol.CodeInternal, "sending helper config: %v", err)
	}
	configW.Close()
	msg, _ := ioReadAllLimited(statusR, 64<<10)
	if len(msg) > 0 {
		kill()
		return nil, protocol.Errorf(protocol.CodeInternal, "container init: %s", msg)
	}
	started = true
	sio.started()
	c.init = p
	c.initPidfd = pidfd
	c.procs[protocol.InitExecID] = p
	before := c.cg.oomKills()
	go p.wait(before, c.cg.oomKills, nil)
	return p, nil
}

// execIn starts another process in c's namespaces and cgroup.
func (a *agent) execIn(conn *protocol.Conn, c *container, execID string, spec protocol.Process) (*process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.destroyed:
		return nil, protocol.Errorf(protocol.CodeNotFound, "container %s is being destroyed", c.id)
	case c.init == nil:
		return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "container %s has not been started", c.id)
	case c.init.exited():
		return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "container %s has stopped", c.id)
	}
	if old, ok := c.procs[execID]; ok && !old.exited() {
		return nil, protocol.Errorf(protocol.CodeAlreadyExists, "exec id %q is running in container %s", execID, c.id)
	}

	sio, err := prepareStdio(conn, &spec, execID)
	if err != nil {
		return nil, err
	}
	p := sio.proc
	cgFile, err := c.cg.openDir()
	if err != nil {
		sio.abort()
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	if cgFile != nil {
		defer cgFile.Close()
	}
	cmd, err := startInNamespaces(c.initPidfd, spec, sio.child, cgFile)
	if err != nil {
		sio.abort()
		return nil, err
	}
	p.cmd = cmd
	if cgFile == nil {
		// v1 cannot start a child inside a cgroup; this leaves a short
		// window in which the process runs outside the limits.
		if err := c.cg.addProcess(cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			sio.abort()
			return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
		}
	}
	sio.started()
	c.procs[execID] = p
	go p.wait(c.cg.oomKills(), c.cg.oomKills, nil)
	return p, nil
}

// startInNamespaces forks spec into the namespaces of the process pidfd
// names.
//
// Go cannot run code between fork and exec, and a multithreaded process
// may not join a mount namespace, so this happens on a dedicated OS thread:
// it unshares its filesystem context (making it a "single" thread for
// setns), joins the container's namespaces, and forks from there; the
// child inherits that thread's namespaces and root. The thread is never
// unlocked, so the Go runtime retires it when the goroutine ends rather
// than reusing a thread that lives in a container.
func startInNamespaces(pidfd int, spec protocol.Process, stdio [3]*os.File, cgFile *os.File) (*exec.Cmd, error) {
	type result struct {
		cmd *exec.Cmd
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		cmd, err := forkInNamespaces(pidfd, spec, stdio, cgFile)
		done <- result{cmd, err}
	}()
	r := <-done
	return r.cmd, r.err
}

func forkInNamespaces(pidfd int, spec protocol.Process, stdio [3]*os.File, cgFile *os.File) (*exec.Cmd, error) {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "unshare CLONE_FS: %v", err)
	}
	// One setns on a pidfd joins all four at once (and fails if the
	// init has exited). The PID namespace applies to children only.
	const namespaces = unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWPID | unix.CLONE_NEWNS
	if err := unix.Setns(pidfd, namespaces); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "the container has stopped")
		}
		return nil, protocol.Errorf(protocol.CodeInternal, "joining the container's namespaces: %v", err)
	}
	// Joining a mount namespace leaves this thread at its root: the
	// container's, after the init helper's pivot_root.
	env := withDefaults(spec.Env)
	path, err := lookPath(spec.Args[0], env)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInvalidArgument, "%v", err)
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/"
	}
	gids := make([]uint32, len(spec.AdditionalGIDs))
	copy(gids, spec.AdditionalGIDs)
	cmd := &exec.Cmd{
		Path:   path,
		Args:   spec.Args,
		Env:    env,
		Dir:    cwd,
		Stdin:  stdio[0],
		Stdout: stdio[1],
		Stderr: stdio[2],
		SysProcAttr: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: gids},
			Setsid:     true,
			Setctty:    spec.Terminal,
			Ctty:       0,
		},
	}
	if cgFile != nil {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cgFile.Fd())
	}
	if err := cmd.Start(); err != nil {
		return nil, protocol.Errorf(protocol.CodeInvalidArgument, "starting %s: %v", spec.Args[0], err)
	}
	return cmd, nil
}

// destroy kills everything in the container, waits for it, and removes
// its cgroup and scratch directory. The container's mounts live only in
// its own mount namespace and disappear with its last process.
func (c *container) destroy() error {
	c.mu.Lock()
	c.destroyed = true
	procs := make([]*process, 0, len(c.procs))
	for _, p := range c.procs {
		procs = append(procs, p)
	}
	c.mu.Unlock()

	if !c.cg.killAll() {
		// Killing PID 1 of a PID namespace kills every process in it.
		for _, p := range procs {
			if !p.exited() {
				_ = p.cmd.Process.Kill()
			}
		}
	}
	var errs []error
	timeout := time.After(10 * time.Second)
	for _, p := range procs {
		select {
		case <-p.done:
		case <-timeout:
			errs = append(errs, fmt.Errorf("process %s of container %s did not exit", p.execID, c.id))
		}
	}
	c.mu.Lock()
	if c.initPidfd >= 0 {
		unix.Close(c.initPidfd)
		c.initPidfd = -1
	}
	c.mu.Unlock()
	if err := c.cg.remove(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.runDir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", c.runDir, err))
	}
	return errors.Join(errs...)
}

func ioReadAllLimited(r io.Reader, limit int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, limit))
}
