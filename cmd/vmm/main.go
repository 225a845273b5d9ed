// Command vmm boots a Linux kernel in a KVM virtual machine with a serial
// console:
//
//	vmm --kernel bzImage --initrd initrd --mem 128M
//
// With no --kernel it boots the project's default guest (build/guest, made
// by `make guest`). On a terminal, Ctrl-A x ends the VM; Ctrl-A Ctrl-A sends
// a literal Ctrl-A.
//
// Like Firecracker, it can instead be driven through a REST API on a Unix
// socket, or boot from a JSON config file, or both:
//
//	vmm --api-sock /tmp/vmm.sock             # configure and start over the API
//	vmm --config-file vm.json                # boot at once from the file
//	vmm --config-file vm.json --api-sock S   # boot from the file, serve the API
//
// Command-line flags given explicitly (--kernel, --mem, ...) are the
// starting configuration that the file and the API override. The process
// exits when the machine ends, with the machine's exit status.
//
// Its subcommands (`vmm --help` lists them, from commands): `vmm run` runs
// a command in a container in a microVM of its own, on an ext4 image that
// `vmm image build` makes; `vmm snapshot rebase` merges a Diff snapshot's
// memory file onto its base; `vmm jailer` starts a VMM in a cage, with
// Firecracker's jailer command line, which vmm also runs when started as
// `jailer` (a link named jailer to vmm).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/jailer"
	"github.com/govmm/vmm/seccomp"
	"github.com/govmm/vmm/vmm"
)

// shutdownTimeout bounds waiting for API requests in flight at exit.
const shutdownTimeout = 2 * time.Second

// exitUsage is the status for bad flags, as flag.ExitOnError uses.
const exitUsage = 2

// jailerName is the name under which vmm is the jailer, as launchers of
// Firecracker (its Go SDK, Kata) start a binary called jailer.
const jailerName = "jailer"

func main() {
	if filepath.Base(os.Args[0]) == jailerName {
		// No reexec prefix: stage 2 is started with this same argv[0], so
		// it lands here again.
		os.Exit(jailer.Main(os.Args[1:], os.Stderr, nil))
	}
	os.Exit(dispatch(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// command is a subcommand: `vmm NAME ...`.
type command struct {
	name     string // the first argument, which selects it
	synopsis string // how `vmm --help` names it (after "vmm ")
	summary  string // what it does, in one line of `vmm --help`
	// main runs it with the arguments after name and returns the exit
	// status.
	main func(args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

// commands are the subcommands, in the order `vmm --help` lists them.
func commands() []command {
	return []command{
		{"run", "run", "run a command in a container on an ext4 image, in a microVM of its own", runMain},
		{"image", "image build", "build an ext4 container image from a directory, an OCI image or a tarball",
			func(args []string, _ io.Reader, stdout, stderr io.Writer) int { return imageMain(args, stdout, stderr) }},
		{"snapshot", "snapshot rebase", "merge a Diff snapshot's memory file onto the memory file of the snapshot before it",
			func(args []string, _ io.Reader, _, stderr io.Writer) int { return snapshotMain(args, stderr) }},
		// The jailer's stage 2 re-executes `vmm jailer`, so this row is
		// also how that child finds its way back into package jailer.
		{"jailer", "jailer", "run a VMM binary in a chroot, namespaces and cgroup as an unprivileged uid (Firecracker's jailer command line)",
			func(args []string, _ io.Reader, _, stderr io.Writer) int {
				return jailer.Main(args, stderr, []string{"jailer"})
			}},
	}
}

// dispatch runs the subcommand args name, or without one boots a VM from
// the flags, and returns the exit status.
func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		for _, c := range commands() {
			if args[0] == c.name {
				return c.main(args[1:], stdin, stdout, stderr)
			}
		}
	}
	return run(args, stdin, stdout, stderr)
}

// printUsage writes `vmm --help` up to the flags: the subcommands, one line
// each, then what vmm does without one.
func printUsage(w io.Writer) {
	cmds := commands()
	width := 0
	for _, c := range cmds {
		width = max(width, len(c.synopsis))
	}
	fmt.Fprintln(w, "usage: vmm COMMAND [ARG...]\n       vmm [flags]\n\ncommands (`vmm COMMAND --help` for each one's flags):")
	for _, c := range cmds {
		fmt.Fprintf(w, "  vmm %-*s  %s\n", width, c.synopsis, c.summary)
	}
	fmt.Fprintln(w, "\nWithout a command, vmm boots a Linux kernel in a KVM virtual machine on a\nserial console. On a terminal, Ctrl-A x ends the VM.\n\nflags:")
}

type options struct {
	cfg      vmm.Config
	logLevel slog.Level

	apiSock    string // serve the API here
	configFile string // boot from this Firecracker config file
	id         string // instance id reported by the API
	seccomp    bool   // install the seccomp filter before serving or booting

	// restore, memFile and resume: start from a snapshot (PUT
	// /snapshot/load) instead of booting.
	restore, memFile string
	resume           bool
}

// apiMode reports whether the VM is configured by the API or a config file
// rather than by flags alone.
func (o *options) apiMode() bool { return o.apiSock != "" || o.configFile != "" || o.restore != "" }

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("vmm", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		o        options
		mem      = fs.String("mem", "128M", "guest memory size (e.g. 128M, 1G, 512MiB)")
		logLevel = fs.String("log-level", "warn", "log level: debug, info, warn or error")
		help     = fs.Bool("help", false, "print this help")
	)
	fs.StringVar(&o.cfg.Kernel, "kernel", "", "kernel image: bzImage or ELF vmlinux with a PVH note (default: the built default guest)")
	fs.StringVar(&o.cfg.Initrd, "initrd", "", "initial ramdisk (default: none with --kernel; without --kernel, the built default guest's initramfs)")
	fs.StringVar(&o.cfg.Cmdline, "cmdline", vmm.DefaultCmdline, "kernel command line")
	fs.IntVar(&o.cfg.CPUs, "cpus", 1, "number of vCPUs")
	fs.StringVar(&o.cfg.SystemMap, "system-map", "", "System.map for symbolizing guest addresses (default: beside the kernel)")
	fs.BoolVar(&o.cfg.DebugExit, "debug-exit", false, "map the test exit device at port 0xf4 (guest-chosen exit status)")
	fs.DurationVar(&o.cfg.SampleRIP, "sample-rip", 0, "sample vCPU instruction pointers at this interval and log the hottest guest symbols every 10 s (at --log-level info or debug)")
	fs.Var(diskFlag{&o.cfg.Drives}, "disk", "virtio-blk disk: path=FILE[,ro][,id=NAME][,root][,direct][,io_engine=sync|async] (repeatable); direct (or direct=on) opens the image with O_DIRECT, bypassing the host page cache; io_engine=async submits requests through io_uring (the default where the host allows it), io_engine=sync through a pool of threads")
	fs.Var(netFlag{&o.cfg.Nets}, "net", "virtio-net interface on a tap: tap=NAME[,mac=MAC][,id=NAME][,queues=N] (repeatable)")
	fs.Var(entropyFlag{&o.cfg.Entropy}, "entropy", "virtio-rng device: the guest reads random bytes from the host's getrandom (Linux: /dev/hwrng)")
	fs.Var(vsockFlag{&o.cfg.Vsock}, "vsock", "virtio-vsock device with a Firecracker-style hybrid Unix socket: cid=N,uds=PATH")
	fs.StringVar(&o.apiSock, "api-sock", "", "serve the Firecracker-compatible API on this Unix socket (the VM starts on InstanceStart)")
	fs.StringVar(&o.configFile, "config-file", "", "boot from this Firecracker-style JSON config file")
	fs.StringVar(&o.id, "id", api.DefaultID, "instance id reported by the API")
	fs.StringVar(&o.restore, "restore", "", "start from this snapshot state file (made by PUT /snapshot/create) instead of booting; needs --mem-file")
	fs.StringVar(&o.memFile, "mem-file", "", "the guest memory file of the --restore snapshot")
	fs.BoolVar(&o.cfg.TrackDirtyPages, "track-dirty-pages", false, "record the guest pages written since the last snapshot, so PUT /snapshot/create can take a Diff snapshot (Firecracker's track_dirty_pages; with --restore, from the restore on)")
	fs.BoolVar(&o.resume, "resume", false, "with --restore: run the restored guest at once (otherwise it stays paused until PATCH /vm Resumed)")
	fs.BoolVar(&o.seccomp, "seccomp", false, "install the seccomp system-call allow-list (package seccomp) before the API serves or the guest runs; any other system call kills vmm. Opt-in until proven on a KVM host, when it becomes the default and --no-seccomp turns it off")
	fs.Bool("no-seccomp", false, "accepted for compatibility with Firecracker's launchers; the filter is off unless --seccomp is given")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			*help = true
		} else {
			return nil, err
		}
	}
	if *help {
		fs.SetOutput(stderr)
		printUsage(stderr)
		fs.PrintDefaults()
		return nil, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := checkRestoreFlags(fs, &o); err != nil {
		return nil, err
	}
	size, err := parseSize(*mem)
	if err != nil {
		return nil, fmt.Errorf("invalid --mem: %w", err)
	}
	if err := vmm.CheckMemSize(size); err != nil {
		return nil, fmt.Errorf("invalid --mem: %w", err)
	}
	o.cfg.MemSize = size
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", *logLevel)
	}
	if vmm.CheckCPUs(int64(o.cfg.CPUs)) != nil {
		return nil, fmt.Errorf("invalid --cpus %d: must be 1-%d", o.cfg.CPUs, vmm.MaxCPUs)
	}
	if o.cfg.Kernel == "" && !o.apiMode() {
		o.cfg.Kernel, o.cfg.Initrd = defaultGuest(o.cfg.Initrd)
		if o.cfg.Kernel == "" {
			return nil, fmt.Errorf("no --kernel given and no default guest built (run `make guest`)")
		}
	}
	for _, p := range []struct{ flag, path string }{{"--kernel", o.cfg.Kernel}, {"--initrd", o.cfg.Initrd}, {"--system-map", o.cfg.SystemMap}} {
		if p.path == "" {
			continue
		}
		if st, err := os.Stat(p.path); err != nil {
			return nil, fmt.Errorf("invalid %s: %w", p.flag, err)
		} else if st.IsDir() {
			return nil, fmt.Errorf("invalid %s: %s is a directory", p.flag, p.path)
		}
	}
	return &o, nil
}

// checkRestoreFlags refuses --restore combined with flags it can't honour:
// the snapshot is the guest (its kernel, memory, CPUs and devices), and a
// config file would configure another.
func checkRestoreFlags(fs *flag.FlagSet, o *options) error {
	if o.restore == "" {
		if o.memFile != "" || o.resume {
			return errors.New("--mem-file and --resume go with --restore")
		}
		return nil
	}
	if o.memFile == "" {
		return errors.New("--restore needs --mem-file, the snapshot's guest memory")
	}
	if !o.resume && o.apiSock == "" {
		return errors.New("--restore without --resume leaves the guest paused: add --resume, or --api-sock to resume it with PATCH /vm")
	}
	var clash []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "kernel", "initrd", "cmdline", "cpus", "mem", "disk", "net", "vsock", "entropy", "config-file":
			clash = append(clash, "--"+f.Name)
		}
	})
	if len(clash) > 0 {
		return fmt.Errorf("--restore starts the guest a snapshot saved; %s can't change it", strings.Join(clash, ", "))
	}
	return nil
}

// loadParams is --restore as PUT /snapshot/load's body.
func (o *options) loadParams() api.SnapshotLoadParams {
	backend := api.MemBackendFile
	return api.SnapshotLoadParams{
		SnapshotPath:    &o.restore,
		MemBackend:      &api.MemoryBackend{BackendType: &backend, BackendPath: &o.memFile},
		ResumeVM:        &o.resume,
		TrackDirtyPages: &o.cfg.TrackDirtyPages,
	}
}

// defaultGuest finds the default guest built by `make guest`: in
// $VMM_GUEST_DIR, else build/guest beside the binary's bin/ folder, else
// build/guest under the working directory.
func defaultGuest(initrd string) (kernel, initrdOut string) {
	var dirs []string
	if d := os.Getenv("VMM_GUEST_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(filepath.Dir(exe)), "build", "guest"))
	}
	dirs = append(dirs, filepath.Join("build", "guest"))
	for _, d := range dirs {
		k := filepath.Join(d, "vmlinux")
		if _, err := os.Stat(k); err != nil {
			continue
		}
		if initrd == "" {
			for _, name := range []string{"initramfs.cpio", "initramfs.cpio.gz"} {
				if _, err := os.Stat(filepath.Join(d, name)); err == nil {
					initrd = filepath.Join(d, name)
					break
				}
			}
		}
		return k, initrd
	}
	return "", initrd
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmm: %v\n", oneLine(err))
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer cancel()

	o.cfg.ConsoleOut = stdout
	o.cfg.OnFirstRun = launchProbe(os.LookupEnv, stderr)
	var quitByEscape bool
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		state, err := term.MakeRaw(int(f.Fd()))
		if err != nil {
			fmt.Fprintf(stderr, "vmm: console: %v\n", err)
			return 1
		}
		defer term.Restore(int(f.Fd()), state)
		// Raw mode turns off output post-processing; the guest sends \r\n.
		o.cfg.ConsoleIn = newEscapeReader(f, func() { quitByEscape = true; cancel() })
	} else if stdin != nil {
		o.cfg.ConsoleIn = stdin
	}

	ctl := api.NewController(api.Options{ID: o.id, Version: vmm.Version, Base: o.cfg, Log: log.Handler()})
	defer func() {
		if err := ctl.Close(); err != nil {
			log.Warn("closing logs and metrics", "err", err)
		}
	}()
	log = ctl.Logger() // from here on, PUT /logger decides where logs go
	if o.configFile != "" {
		if err := api.LoadConfigFile(ctl, o.configFile); err != nil {
			fmt.Fprintf(stderr, "vmm: %v\n", oneLine(err))
			return exitUsage
		}
	}
	serveErr := make(chan error, 1)
	var srv *api.Server
	if o.apiSock != "" {
		srv = api.NewServer(ctl)
		if err := srv.Listen(o.apiSock); err != nil {
			fmt.Fprintf(stderr, "vmm: %v\n", oneLine(err))
			return 1
		}
	}
	// The filter goes on once the flags are read, the console is set up
	// and the API socket is bound, and before any request is served or
	// guest code runs: from here on, what a compromised device model or
	// API handler can ask of the kernel is the allow-list.
	if o.seccomp {
		if err := seccomp.Install(); err != nil {
			fmt.Fprintf(stderr, "vmm: %v\n", oneLine(err))
			return 1
		}
		log.Info("seccomp filter installed", "mode", "allow-list, kill process")
	} else {
		log.Debug("seccomp filter off (--seccomp enables it)")
	}
	if srv != nil {
		go func() { serveErr <- srv.Serve() }()
		defer func() {
			sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer scancel()
			if err := srv.Shutdown(sctx); err != nil {
				log.Warn("shutting down the API server", "err", err)
			}
		}()
	}
	if o.restore != "" {
		if err := ctl.LoadSnapshot(o.loadParams()); err != nil {
			fmt.Fprintf(stderr, "vmm: %v\n", oneLine(err))
			return 1
		}
	} else if o.apiSock == "" || o.configFile != "" {
		start := time.Now()
		if err := ctl.Start(); err != nil {
			cause := err
			var se *api.StartError
			if errors.As(err, &se) {
				cause = se.Err
			}
			if !o.apiMode() {
				err = cause // the flags-only message stays what it always was
			}
			fmt.Fprintf(stderr, "vmm: %v\n", oneLine(err))
			if isBadInput(cause) {
				return exitUsage
			}
			return 1
		}
		log.Debug("machine started", "setup", time.Since(start))
	}

	select {
	case <-ctl.Done():
	case <-ctx.Done():
		ctl.Stop()
	case err := <-serveErr:
		log.Error("API server failed", "err", err)
		ctl.Stop()
	}
	if !ctl.Started() {
		// Stopped before InstanceStart: nothing ran.
		return vmm.Exit{Kind: vmm.ExitStopped}.ExitCode()
	}
	<-ctl.Done()
	exit := ctl.Exit()
	switch {
	case exit.Kind == vmm.ExitFailed:
		fmt.Fprintf(stderr, "\r\nvmm: VM failed: %v\n", exit.Err)
	case quitByEscape:
		fmt.Fprint(stderr, "\r\nvmm: VM ended from the console (Ctrl-A x)\n")
	}
	return exit.ExitCode()
}

// isBadInput reports errors caused by what the user passed (an image that
// isn't a kernel, a size the layout can't hold), which get the usage status.
func isBadInput(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "kernel ") || strings.HasPrefix(s, "initrd ") || strings.HasPrefix(s, "read kernel") || strings.HasPrefix(s, "read initrd") || errors.Is(err, os.ErrNotExist)
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
