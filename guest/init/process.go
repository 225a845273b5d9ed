package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// guestPath is PATH for everything init starts. /sbin and /usr/* are
// symlinks to /bin in our archive but may be real directories in others.
const guestPath = "/bin:/sbin:/usr/bin:/usr/sbin"

// exitStatusNotFound is what shells report for a command they cannot run.
const exitStatusNotFound = 127

// childEnv is the environment of the shell, vmm.run program and agent.
// TERM is passed through because the kernel sets it for init; so are the
// runtimeVars (also from the kernel command line).
func childEnv(term string, lookup func(string) (string, bool)) []string {
	if term == "" {
		term = "linux"
	}
	env := []string{
		"PATH=" + guestPath,
		"HOME=/root",
		"USER=root",
		"SHELL=/bin/sh",
		"TERM=" + term,
	}
	for _, name := range runtimeVars() {
		if v, ok := lookup(name); ok {
			env = append(env, name+"="+v)
		}
	}
	return env
}

// runtimeVars tune the language runtimes of guest programs: every program
// of the default guest is a Go program, and containers' are often glibc
// ones. On kvm-pvm hosts the VMM sets them to keep programs off AVX state
// the guest kernel cannot preserve.
func runtimeVars() []string { return []string{"GODEBUG", "GLIBC_TUNABLES"} }

// findProgram resolves name like a shell would: names containing a slash
// are taken as paths, others are searched for in pathList.
func findProgram(name, pathList string) (string, error) {
	if strings.Contains(name, "/") {
		if err := checkExecutable(name); err != nil {
			return "", err
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(pathList) {
		candidate := filepath.Join(dir, name)
		if checkExecutable(candidate) == nil {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("%s: not found in %s", name, pathList)
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

// startOnConsole starts argv as the leader of a new session whose
// controlling terminal is the console, so job control and Ctrl-C work in
// the shell. The kernel never makes /dev/console a controlling tty by
// itself, hence the explicit TIOCSCTTY (Setctty) on the child's stdin.
func startOnConsole(argv, env []string, console *os.File) (*os.Process, error) {
	path, err := findProgram(argv[0], guestPath)
	if err != nil {
		return nil, err
	}
	return os.StartProcess(path, argv, &os.ProcAttr{
		Dir:   "/root",
		Env:   env,
		Files: []*os.File{console, console, console},
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0},
	})
}

// startBackground starts a daemon in its own session with no terminal, so
// the shell's job control and hangups never reach it.
func startBackground(path string, env []string, stdin, output *os.File) (*os.Process, error) {
	return os.StartProcess(path, []string{path}, &os.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: []*os.File{stdin, output, output},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
}

// waitReaping waits for pid while reaping every other child, as PID 1
// inherits all orphans. It waits with wait4(-1) itself rather than through
// os.Process.Wait: a second waiter could take the status it is after.
func waitReaping(pid int) (unix.WaitStatus, error) {
	for {
		var status unix.WaitStatus
		reaped, err := unix.Wait4(-1, &status, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, fmt.Errorf("waiting for pid %d: %w", pid, err)
		case reaped == pid:
			return status, nil
		}
	}
}

// reapForever collects orphans after the main program is gone, for the
// unlikely case that power-off fails and init has to stay up.
func reapForever() {
	for {
		var status unix.WaitStatus
		if _, err := unix.Wait4(-1, &status, 0, nil); err != nil && !errors.Is(err, unix.EINTR) {
			// No children now; new orphans will arrive later.
			unix.Nanosleep(&unix.Timespec{Sec: 1}, nil)
		}
	}
}

// exitCode maps a wait status to the number a shell would report:
// the exit status, or 128 plus the signal that killed the process.
func exitCode(status unix.WaitStatus) int {
	if status.Signaled() {
		return 128 + int(status.Signal())
	}
	return status.ExitStatus()
}
