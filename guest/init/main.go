// Command init is PID 1 of the default vmm guest. It mounts the kernel
// filesystems, prints a ready line on the console, runs a shell (or the
// program named by vmm.run= on the kernel command line) as the console's
// session leader, reaps orphans meanwhile, and powers the machine off when
// that program exits, so a guest's lifetime is its workload's lifetime.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	hostname  = "vmm-guest"
	agentPath = "/bin/vmm-agent"
)

// shellArgv is started when vmm.run is absent.
func shellArgv() []string { return []string{"/bin/sh"} }

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "vmm-guest init: must run as PID 1 (it mounts filesystems and powers the machine off)")
		os.Exit(1)
	}
	holdSignals()

	// The kernel opened our stdio on /dev/console from the archive; it may
	// be missing if a different archive is used, so keep stderr until the
	// console reopens after /dev is mounted.
	mountAll(os.Stderr)
	console := openConsole()

	if err := unix.Sethostname([]byte(hostname)); err != nil {
		fmt.Fprintf(console, "vmm-guest: set hostname: %v\n", err)
	}

	env := childEnv(os.Getenv("TERM"), os.LookupEnv)
	startAgent(console, env)

	argv, isShell := programToRun(console)
	fmt.Fprint(console, readyLine(uptime()))

	code := run(console, argv, env)
	if isShell {
		fmt.Fprintln(console, "vmm-guest: shell exited")
	} else {
		fmt.Fprintf(console, "vmm-guest: exit status %d\n", code)
	}
	powerOff(console)
}

// holdSignals keeps the Go runtime from dying of SIGTERM, SIGINT and
// friends: as PID 1 that would panic the kernel. Catching them, rather than
// ignoring them, keeps children's dispositions at their defaults.
func holdSignals() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPWR)
	go func() {
		for range signals {
		}
	}()
}

// openConsole returns /dev/console, or stderr if it cannot be opened.
func openConsole() *os.File {
	console, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmm-guest: open /dev/console: %v\n", err)
		return os.Stderr
	}
	return console
}

func uptime() string {
	contents, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "unknown"
	}
	seconds, err := formatUptime(string(contents))
	if err != nil {
		return "unknown"
	}
	return seconds
}

// programToRun picks vmm.run from the kernel command line, falling back to
// the shell when it is absent or unreadable.
func programToRun(console *os.File) (argv []string, isShell bool) {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fmt.Fprintf(console, "vmm-guest: read kernel command line: %v\n", err)
		return shellArgv(), true
	}
	argv, err = programFromCmdline(parseCmdline(string(cmdline)))
	if err != nil {
		fmt.Fprintf(console, "vmm-guest: %v; starting the shell\n", err)
		return shellArgv(), true
	}
	if argv == nil {
		return shellArgv(), true
	}
	fmt.Fprintf(console, "vmm-guest: running %s\n", strings.Join(argv, " "))
	return argv, false
}

// run starts argv on the console and returns its exit code once it exits,
// reaping other children meanwhile.
func run(console *os.File, argv, env []string) int {
	process, err := startOnConsole(argv, env, console)
	if err != nil {
		fmt.Fprintf(console, "vmm-guest: start %s: %v\n", argv[0], err)
		return exitStatusNotFound
	}
	status, err := waitReaping(process.Pid)
	process.Release()
	if err != nil {
		fmt.Fprintf(console, "vmm-guest: %v\n", err)
		return exitStatusNotFound
	}
	return exitCode(status)
}

// startAgent starts the guest agent if the image has one. It is optional:
// the default image does not ship it yet.
func startAgent(console *os.File, env []string) {
	if checkExecutable(agentPath) != nil {
		return
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		fmt.Fprintf(console, "vmm-guest: start %s: %v\n", agentPath, err)
		return
	}
	defer devNull.Close()
	agent, err := startBackground(agentPath, env, devNull, console)
	if err != nil {
		fmt.Fprintf(console, "vmm-guest: start %s: %v\n", agentPath, err)
		return
	}
	fmt.Fprintf(console, "vmm-guest: started %s (pid %d)\n", agentPath, agent.Pid)
	agent.Release()
}
