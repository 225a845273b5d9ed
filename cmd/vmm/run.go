package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/govmm/vmm/shim"
	"github.com/govmm/vmm/shim/snapcache"
	"github.com/govmm/vmm/vmm"
)

const runUsage = `usage: vmm run --image FILE [flags] [--] CMD [ARG...]

Boots a microVM with the default guest, runs CMD in a container whose root
filesystem is the ext4 image FILE (see vmm image build), connects it to this
terminal, and exits with CMD's exit status (128+N if signal N killed it).
FILE is attached read-only and never changes: CMD may write anywhere, but
its writes live in the guest's memory and are gone when it exits (use
--image-rw to write into FILE instead).
The first run for a guest (kernel, initramfs, --cmdline, --mem, --cpus)
saves a snapshot of it, booted, in $VMM_CACHE/snapshots (default
~/.cache/vmm); later runs restore a clone of it in a fraction of a boot,
with fresh entropy and the current time (--no-snapshot boots; runs with
--net or --image-rw always do).
125 means vmm run itself failed; 2, a bad flag. SIGINT and SIGTERM go to
CMD, which is PID 1 of its container and ignores them without a handler;
10 seconds later it gets SIGKILL, as with docker stop. If CMD has still not
ended 10 seconds after that (a frozen guest), or at a third SIGINT or
SIGTERM, vmm run stops the VM and exits 125.

flags:
`

// binaryIdentity names this build of vmm for the snapshot key: a
// rebuilt binary may save device state differently, so its runs must not
// restore an older build's snapshots.
func binaryIdentity(exe string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(exe, &st); err != nil {
		return exe
	}
	return fmt.Sprintf("%d:%d:%d:%d.%09d", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
}

// exitRunFailed is the status when vmm run itself fails (as docker run's
// 125), so it is not mistaken for the command's own status.
const exitRunFailed = 125

// runOptions is what the run flags produce.
type runOptions struct {
	shim       shim.Options
	debug      bool
	noSnapshot bool
}

// envFlag is the repeatable -e KEY=VALUE option.
type envFlag struct{ env *[]string }

func (f envFlag) String() string {
	if f.env == nil {
		return ""
	}
	return strings.Join(*f.env, " ")
}

// Set takes KEY=VALUE, or a bare KEY whose value comes from vmm's own
// environment (as docker run -e does).
func (f envFlag) Set(v string) error {
	k, _, hasVal := strings.Cut(v, "=")
	if k == "" {
		return fmt.Errorf("env %q: want KEY=VALUE", v)
	}
	if !hasVal {
		val, ok := os.LookupEnv(k)
		if !ok {
			return nil // unset on the host: unset in the container
		}
		v = k + "=" + val
	}
	*f.env = append(*f.env, v)
	return nil
}

// nicFlag is vmm run's repeatable --net: netFlag's syntax, giving the
// shim's NICs. vmm run configures its VMM through Firecracker's API, which
// has no queue count, so only one queue pair can be asked for.
type nicFlag struct {
	nets *[]vmm.NetConfig // as netFlag parsed them, for its checks
	nics *[]shim.NIC
}

func (f nicFlag) String() string { return netFlag{f.nets}.String() }

// Set parses one --net value.
func (f nicFlag) Set(v string) error {
	if err := (netFlag{f.nets}).Set(v); err != nil {
		return err
	}
	last := len(*f.nets) - 1
	n := (*f.nets)[last]
	if n.Queues > 1 {
		*f.nets = (*f.nets)[:last]
		return fmt.Errorf("queues=%d is not supported by vmm run (one queue pair: its VMM is configured through Firecracker's API, which has no queue count)", n.Queues)
	}
	*f.nics = append(*f.nics, shim.NIC{ID: n.ID, Tap: n.Tap, MAC: n.MAC})
	return nil
}

func parseRunFlags(args []string, stderr io.Writer) (*runOptions, error) {
	fs := flag.NewFlagSet("vmm run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		o    runOptions
		mem  = fs.String("mem", "256M", "guest memory size (e.g. 256M, 1G)")
		help = fs.Bool("help", false, "print this help")
		nets []vmm.NetConfig
	)
	s := &o.shim
	fs.StringVar(&s.Image, "image", "", "the container's root filesystem: an ext4 image (required)")
	fs.BoolVar(&s.ImageWritable, "image-rw", false, "attach the image read-write: CMD's writes go into it (only for an image you would let CMD rewrite)")
	fs.StringVar(&s.Kernel, "kernel", "", "guest kernel (default: the built default guest)")
	fs.StringVar(&s.Initrd, "initrd", "", "guest initramfs with vmm-agent (default: the built default guest's)")
	fs.StringVar(&s.Cmdline, "cmdline", vmm.DefaultCmdline, "guest kernel command line")
	fs.IntVar(&s.CPUs, "cpus", 1, "number of vCPUs")
	fs.Var(nicFlag{&nets, &s.Nets}, "net", "virtio-net interface on a tap: tap=NAME[,mac=MAC][,id=NAME] (repeatable)")
	fs.Var(envFlag{&s.Env}, "e", "set an environment variable: KEY=VALUE (repeatable)")
	fs.StringVar(&s.Cwd, "w", "", "working directory of the command in the container")
	fs.BoolVar(&s.TTY, "t", false, "give the command a pseudo-terminal")
	fs.StringVar(&s.Hostname, "hostname", shim.DefaultHostname, "the container's hostname")
	fs.DurationVar(&s.BootTimeout, "boot-timeout", shim.DefaultBootTimeout, "how long to wait for the guest to boot and its agent to answer")
	fs.BoolVar(&o.noSnapshot, "no-snapshot", false, "boot the guest instead of restoring the warm snapshot in $VMM_CACHE/snapshots (and save none)")
	fs.BoolVar(&o.debug, "debug", false, "show the guest console and VMM diagnostics on stderr (default: kept in a log, shown if the VM fails)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			*help = true
		} else {
			return nil, err
		}
	}
	if *help {
		fs.SetOutput(stderr)
		fmt.Fprint(stderr, runUsage)
		fs.PrintDefaults()
		return nil, flag.ErrHelp
	}
	s.Args = fs.Args()
	if len(s.Args) == 0 {
		return nil, errors.New("no command given (usage: vmm run --image FILE [flags] [--] CMD [ARG...])")
	}
	if s.Image == "" {
		return nil, errors.New("--image is required")
	}
	size, err := parseSize(*mem)
	if err != nil {
		return nil, fmt.Errorf("invalid --mem: %w", err)
	}
	s.MemMiB = int64(size >> 20)
	if s.BootTimeout <= 0 {
		return nil, fmt.Errorf("invalid --boot-timeout %v: must be positive", s.BootTimeout)
	}
	if s.Kernel == "" {
		s.Kernel, s.Initrd = defaultGuest(s.Initrd)
		if s.Kernel == "" {
			return nil, errors.New("no --kernel given and no default guest built (run `make guest`)")
		}
	}
	// Checked here, before a VM starts, so mistakes get the usage status.
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &o, nil
}

// runMain implements `vmm run ...`; args exclude "run". It returns CMD's
// exit status, exitRunFailed when the run failed, or exitUsage for bad
// flags.
func runMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseRunFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmm run: %v\n", oneLine(err))
		return exitUsage
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "vmm run: finding the vmm binary: %v\n", err)
		return exitRunFailed
	}
	launcher := shim.ExecLauncher{Path: exe}
	if o.debug {
		launcher.Args = []string{"--log-level", "info"}
		o.shim.Console = stderr
	}
	o.shim.Launcher = launcher
	o.shim.Verbose = o.debug
	if !o.noSnapshot {
		dir, err := snapcache.DefaultDir()
		if err != nil {
			fmt.Fprintf(stderr, "vmm run: %v; booting without a snapshot\n", err)
		} else {
			o.shim.Snapshots = &snapcache.Cache{Dir: dir}
			o.shim.SnapshotSalt = binaryIdentity(exe)
		}
	}
	o.shim.Stdin, o.shim.Stdout, o.shim.Stderr = stdin, stdout, stderr

	// Signals go to the command; SIGWINCH resizes its terminal.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	o.shim.Signals = sigs

	start := time.Now()
	code, err := shim.Run(context.Background(), o.shim)
	if err != nil {
		var se *shim.SignalError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "vmm run: %v after %v\n", err, time.Since(start).Round(time.Second))
			return code
		}
		fmt.Fprintf(stderr, "vmm run: %v\n", err)
		return exitRunFailed
	}
	return code
}
