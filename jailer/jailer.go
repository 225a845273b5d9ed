package jailer

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Stage2Arg, as the first argument to Main, selects stage 2; the argument
// after it is the JSON plan. It is internal: stage 1 passes it.
const Stage2Arg = "--internal-stage2"

// Exit statuses of Main.
const (
	exitFailure = 1
	exitUsage   = 2 // bad flags, as flag.ExitOnError uses
)

// File modes in the jail.
const (
	dirMode  = 0o700
	execMode = 0o755
	devMode  = 0o600
	// devDirMode lets the VMM's uid reach /dev/kvm and /dev/net/tun.
	devDirMode = 0o755
)

// selfExe re-executes this binary for stage 2.
const selfExe = "/proc/self/exe"

// device is a character device node created in the jail.
type device struct {
	path         string
	major, minor uint32
}

// devices are the only device nodes a jail has.
var devices = [...]device{
	{"/dev/kvm", 10, 232},
	{"/dev/net/tun", 10, 200},
	{"/dev/urandom", 1, 9},
}

// plan is what stage 1 hands stage 2.
type plan struct {
	Root     string   // the jail root on the host
	UID, GID uint32   // to drop to
	NetNS    string   // to join, or ""
	Argv     []string // the VMM's argv; Argv[0] is its path in the jail
}

// Main runs the jailer with args (after `jailer`) and returns the exit
// status; it returns only on failure, with --daemonize, or when the VMM
// ends. reexec is the argument prefix that makes this binary call Main
// again (e.g. {"jailer"} for vmm), used to start stage 2.
func Main(args []string, stderr io.Writer, reexec []string) int {
	if len(args) > 0 && args[0] == Stage2Arg {
		if len(args) != 2 {
			fmt.Fprintln(stderr, "jailer: stage 2: want one plan argument")
			return exitFailure
		}
		err := stage2(args[1])
		fmt.Fprintf(stderr, "jailer: %v\n", err)
		return exitFailure
	}
	c, err := Parse(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			PrintUsage(stderr)
			return 0
		}
		fmt.Fprintf(stderr, "jailer: %v\n", err)
		return exitUsage
	}
	status, err := Run(c, reexec)
	if err != nil {
		fmt.Fprintf(stderr, "jailer: %v\n", err)
		return exitFailure
	}
	return status
}

// Run is stage 1: it prepares the jail for c and starts stage 2 in new
// namespaces, then waits for the VMM and returns its exit status (or 0 at
// once with --daemonize).
func Run(c *Config, reexec []string) (int, error) {
	// Every fd above 2 we inherited is marked close-on-exec, so that none
	// reaches stage 2 or the VMM (os/exec passes only 0-2 on purpose, but
	// fork keeps every fd without FD_CLOEXEC).
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return 0, fmt.Errorf("marking inherited fds close-on-exec: %w", err)
	}
	os.Clearenv()
	root := c.Root()
	if err := makeJail(c, root); err != nil {
		return 0, err
	}
	if err := setLimits(c); err != nil {
		return 0, err
	}
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	if c.NewPIDNS {
		attr.Cloneflags |= syscall.CLONE_NEWPID
	}
	if c.UseCgroup() {
		cg, err := makeCgroup(c)
		if err != nil {
			return 0, err
		}
		defer cg.Close()
		attr.UseCgroupFD, attr.CgroupFD = true, int(cg.Fd())
	}
	argv := append([]string{"/" + c.ExecName(), "--id", c.ID}, c.Args...)
	p, err := json.Marshal(plan{Root: root, UID: c.UID, GID: c.GID, NetNS: c.NetNS, Argv: argv})
	if err != nil {
		return 0, fmt.Errorf("stage 2 plan: %w", err)
	}
	cmd := &exec.Cmd{
		Path: selfExe,
		Args: append(append([]string{os.Args[0]}, reexec...), Stage2Arg, string(p)),
		// Not nil: a nil Env would inherit ours.
		Env:         []string{},
		SysProcAttr: attr,
	}
	if c.Daemonize {
		attr.Setsid = true
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			return 0, fmt.Errorf("daemonize: %w", err)
		}
		defer null.Close()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = null, null, null
	} else {
		// The VMM dies with the jailer rather than run on unsupervised.
		attr.Pdeathsig = syscall.SIGKILL
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting stage 2: %w", err)
	}
	if c.NewPIDNS {
		// As Firecracker does: the VMM's host pid, for whoever must signal
		// it from outside its pid namespace.
		pidFile := filepath.Join(root, c.ExecName()+".pid")
		if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return 0, fmt.Errorf("pid file: %w", err)
		}
	}
	if c.Daemonize {
		return 0, cmd.Process.Release()
	}
	return wait(cmd)
}

// wait forwards termination signals to the VMM and returns its status.
func wait(cmd *exec.Cmd) (int, error) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return 128 + int(ws.Signal()), nil
				}
				return ee.ExitCode(), nil
			}
			if err != nil {
				return 0, fmt.Errorf("waiting for the VMM: %w", err)
			}
			return 0, nil
		}
	}
}

// makeJail builds root (0700 directories as needed, the root itself owned
// by the VMM's uid and gid so that it can create its sockets there) and
// copies the exec file in, owned by root and not writable by the VMM.
func makeJail(c *Config, root string) error {
	if st, err := os.Lstat(root); err == nil && !st.IsDir() {
		return fmt.Errorf("jail %s: %w", root, errNotDir)
	}
	if err := os.MkdirAll(root, dirMode); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := os.Chown(root, int(c.UID), int(c.GID)); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	src, err := os.Open(c.ExecFile)
	if err != nil {
		return fmt.Errorf("exec file: %w", err)
	}
	defer src.Close()
	if st, err := src.Stat(); err != nil {
		return fmt.Errorf("exec file: %w", err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("exec file %s: not a regular file", c.ExecFile)
	}
	dst := filepath.Join(root, c.ExecName())
	// A file left from an earlier run (perhaps replaced by the VMM's uid
	// through the root it owns) is removed, never written through.
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("exec file: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, execMode)
	if err != nil {
		return fmt.Errorf("exec file: %w", err)
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		return fmt.Errorf("copying exec file: %w", err)
	}
	if err := out.Chmod(execMode); err != nil { // past the umask
		out.Close()
		return fmt.Errorf("exec file: %w", err)
	}
	if err := out.Chown(0, 0); err != nil {
		out.Close()
		return fmt.Errorf("exec file: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("exec file: %w", err)
	}
	return nil
}

// setLimits sets the rlimits stage 2 and the VMM inherit. Through
// syscall.Setrlimit so that os/exec doesn't restore Go's original
// RLIMIT_NOFILE in the child.
func setLimits(c *Config) error {
	nofile := syscall.Rlimit{Cur: c.NoFile, Max: c.NoFile}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nofile); err != nil {
		return fmt.Errorf("rlimit no-file=%d: %w", c.NoFile, err)
	}
	if c.Fsize != nil {
		fsize := syscall.Rlimit{Cur: *c.Fsize, Max: *c.Fsize}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &fsize); err != nil {
			return fmt.Errorf("rlimit fsize=%d: %w", *c.Fsize, err)
		}
	}
	return nil
}
