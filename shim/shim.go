// Package shim runs one command in a container inside a fresh microVM: it
// starts a child VMM process, configures and boots it through the REST
// API, waits for the guest agent on hybrid vsock, runs the command with
// the caller's standard streams, and tears everything down again. It is
// the engine of `vmm run` and of any other front end that wants
// docker-run-like behaviour.
package shim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/govmm/vmm/api"
	agent "github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/shim/snapcache"
	"github.com/govmm/vmm/vmm"
)

// Defaults for Options fields left zero.
const (
	DefaultBootTimeout = 10 * time.Minute
	DefaultStopGrace   = 5 * time.Second
	DefaultHostname    = "vmm"

	// AgentPort is the guest vsock port vmm-agent listens on.
	AgentPort = 1024
	// GuestCID is the vsock context id given to the guest.
	GuestCID = 3
	// RootfsDevice is where the guest sees the image: the first (and
	// only) virtio-blk disk.
	RootfsDevice = "/dev/vda"
)

// Options describe one run.
type Options struct {
	// Image is the container's root filesystem (an ext4 image file). It
	// is attached read-only and never changes: the container writes to an
	// overlay whose upper layer is a tmpfs in the guest, so its writes
	// take guest memory and are gone when the run ends. Read-only
	// attachments share the image's lock, so runs on one image can
	// overlap.
	Image string
	// ImageWritable attaches Image read-write and mounts it directly as
	// the container's root instead: the container's writes go into the
	// image (to prepare an image, say). The image is then locked to this
	// run, and a container can change it in any way, so never set it for
	// an image another user or run trusts.
	ImageWritable bool
	// Kernel, Initrd and Cmdline boot the guest; the guest's initramfs
	// must start vmm-agent.
	Kernel, Initrd, Cmdline string
	MemMiB                  int64 // guest memory
	CPUs                    int
	Nets                    []NIC

	Args     []string // the command and its arguments
	Env      []string // KEY=VALUE
	Cwd      string   // working directory in the container ("" is /)
	TTY      bool     // give the command a pseudo-terminal
	Hostname string   // the container's hostname (default "vmm")

	// BootTimeout bounds the wait for the guest agent after InstanceStart.
	BootTimeout time.Duration
	// StopGrace is how long the VMM gets between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// KillGrace is how long the command gets to end after a forwarded
	// SIGTERM or SIGINT before it is sent SIGKILL (default
	// DefaultKillGrace), as `docker stop` does: the command is PID 1 of
	// its PID namespace, and the kernel drops signals a PID 1 has no
	// handler for, so `sleep` would otherwise ignore them.
	KillGrace time.Duration
	// HardStopGrace is how long the command gets to end after that
	// SIGKILL before the shim gives up on it, stops the VM and fails the
	// run with ErrVMStopped (default DefaultHardStopGrace): a frozen guest
	// or a wedged agent never reports the end. A third SIGTERM or SIGINT
	// does the same at once.
	HardStopGrace time.Duration

	Stdin          io.Reader // nil is /dev/null
	Stdout, Stderr io.Writer // Stderr also gets the shim's warnings
	// Signals are forwarded to the command (SIGWINCH resizes its
	// terminal instead). A signal before the command runs aborts the
	// run with status 128+signal.
	Signals <-chan os.Signal
	// Console receives the guest's serial console and the VMM's own
	// diagnostics; nil keeps them in a log file in the run's directory,
	// whose tail is reported if the VMM dies.
	Console io.Writer

	// Launcher starts the VMM; required (ExecLauncher for the real one).
	Launcher Launcher
	// TempDir is where the run's directory is made ("" is os.TempDir).
	// Unix socket paths are limited to 107 bytes, so keep it short.
	TempDir string

	// Snapshots, when set, makes runs warm: the first run for a guest
	// (kernel, initramfs, command line, memory, vCPUs, VMM) boots it with
	// a placeholder disk, saves a snapshot of it once the agent answers,
	// and swaps the image in; later runs restore a clone of that snapshot
	// instead of booting (warm.go). nil boots every run. Runs with Nets
	// or ImageWritable always boot.
	Snapshots *snapcache.Cache
	// SnapshotSalt goes into the snapshot key besides the guest's inputs:
	// the VMM binary's identity, say, so that a rebuilt VMM never
	// restores what another build saved.
	SnapshotSalt string
	// Verbose writes notes on how the VM came up (booted, restored from
	// which snapshot, in how long) to Stderr.
	Verbose bool
}

// NIC is one network interface of the VM on a host tap device. The shim
// configures its VMM through the REST API, so a NIC carries what
// Firecracker's PUT /network-interfaces body carries, and no more.
type NIC struct {
	ID  string // iface_id; eth0, eth1, ... in order when empty
	Tap string // host_dev_name; the VMM creates it for the run if missing
	MAC string // guest_mac; the VMM picks a stable one when empty
	// RxRateLimiter and TxRateLimiter are passed on as they are (nil:
	// none).
	RxRateLimiter, TxRateLimiter *api.RateLimiter
}

// DefaultKillGrace is KillGrace when unset.
const DefaultKillGrace = 10 * time.Second

// DefaultHardStopGrace is HardStopGrace when unset.
const DefaultHardStopGrace = 10 * time.Second

// stopSignals is how many SIGTERMs and SIGINTs the user sends before the
// shim stops the VM without waiting for the command.
const stopSignals = 3

// ErrVMStopped is wrapped by Run's error when the shim stopped the VM
// because the command did not end after SIGKILL (or the user insisted).
var ErrVMStopped = errors.New("stopped the VM")

// vmStoppedError says why the shim stopped the VM; it is one line.
type vmStoppedError struct{ reason string }

func (e *vmStoppedError) Error() string { return e.reason + "; " + ErrVMStopped.Error() }
func (e *vmStoppedError) Unwrap() error { return ErrVMStopped }

// Validate reports the first problem with o, phrased for a user; the
// files it names must exist. It does not check Launcher.
func (o *Options) Validate() error {
	switch {
	case len(o.Args) == 0:
		return errors.New("no command given")
	case o.Image == "":
		return errors.New("no --image given")
	case o.Kernel == "":
		return errors.New("no kernel given (use --kernel, or run `make guest` to build the default guest)")
	case o.BootTimeout < 0:
		return fmt.Errorf("boot timeout %v is negative", o.BootTimeout)
	}
	if err := vmm.CheckMemMiB(o.MemMiB); err != nil {
		return err
	}
	if err := vmm.CheckCPUs(int64(o.CPUs)); err != nil {
		return err
	}
	for _, e := range o.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("environment entry %q: want KEY=VALUE", e)
		}
	}
	if o.Cwd != "" && !strings.HasPrefix(o.Cwd, "/") {
		return fmt.Errorf("working directory %q: must be absolute", o.Cwd)
	}
	for _, f := range []struct{ what, path string }{{"image", o.Image}, {"kernel", o.Kernel}, {"initrd", o.Initrd}} {
		if f.path == "" {
			continue
		}
		st, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("%s: %w", f.what, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s: %s is not a regular file", f.what, f.path)
		}
	}
	return nil
}

// SignalError is returned when a signal ended the run before the command
// started.
type SignalError struct{ Signal syscall.Signal }

func (e *SignalError) Error() string { return "interrupted by " + e.Signal.String() }

// Run boots a VM, runs o.Args in a container on o.Image, and returns the
// command's exit status (128+signal if a signal killed it). err is set
// when the run itself failed; exitCode is then 128+signal for a run
// interrupted before the command started and -1 otherwise, including
// an error wrapping ErrVMStopped when the shim stopped the VM under a
// command that would not end. Everything Run made (VMM process, sockets,
// temporary files, taps) is gone when it returns.
func Run(ctx context.Context, o Options) (exitCode int, err error) {
	if o.BootTimeout == 0 {
		o.BootTimeout = DefaultBootTimeout
	}
	if o.StopGrace == 0 {
		o.StopGrace = DefaultStopGrace
	}
	if o.Hostname == "" {
		o.Hostname = DefaultHostname
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	if err := o.Validate(); err != nil {
		return -1, err
	}
	if o.Launcher == nil {
		return -1, errors.New("shim: Options.Launcher is nil")
	}
	r := &runner{o: o}
	defer r.cleanup()
	code, err := r.run(ctx)
	var se *SignalError
	if errors.As(err, &se) {
		code = 128 + int(se.Signal)
	}
	return code, err
}

// runner holds what one Run made, for cleanup.
type runner struct {
	o        Options
	dir      string
	console  io.Writer
	logPath  string
	logFile  *consoleLog
	vm       VMM
	vmCancel context.CancelFunc // stops watching vm (launch)
	api      API                // vm's
	vsock    string             // vm's hybrid vsock socket
	attempts int                // VMMs launched
	newTaps  []string
	agent    *agent.Client
	ctrID    string
	restores []func()
}

// run does Run's work, recording in r what cleanup must undo.
func (r *runner) run(ctx context.Context) (int, error) {
	o := &r.o
	dir, err := os.MkdirTemp(o.TempDir, "vmm-run-")
	if err != nil {
		return -1, fmt.Errorf("making the run directory: %w", err)
	}
	r.dir = dir

	r.console = o.Console
	if r.console == nil {
		r.logPath = filepath.Join(dir, "console.log")
		// Not the file itself: the VMM would write it directly, past any cap.
		l, err := createConsoleLog(r.logPath, consoleLogMax)
		if err != nil {
			return -1, fmt.Errorf("creating the console log: %w", err)
		}
		r.logFile, r.console = l, l
	}

	var taps []string
	for _, n := range o.Nets {
		taps = append(taps, n.Tap)
	}
	r.newTaps = missingTaps(taps)

	// Boot: everything up to the agent's answer is bounded by the boot
	// timeout and abandoned if the VMM dies or a signal arrives.
	bootCtx, cancelBoot := context.WithTimeout(ctx, o.BootTimeout)
	defer cancelBoot()
	var interrupted syscall.Signal
	stopWatch := r.watchBoot(bootCtx, cancelBoot, &interrupted)
	err = r.start(bootCtx)
	stopWatch()
	if err != nil {
		if r.vm != nil {
			select {
			case <-r.vm.Done():
				return -1, r.vmmDied("while booting")
			default:
			}
		}
		if interrupted != 0 {
			return -1, &SignalError{Signal: interrupted}
		}
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return -1, fmt.Errorf("%w (the guest did not answer within --boot-timeout %v)%s", err, o.BootTimeout, r.consoleHint())
		}
		return -1, err
	}
	return r.runCommand(ctx)
}

// watchBoot cancels the boot when a signal arrives, recording it (launch
// watches each VMM for its exit). The returned function stops watching and must be
// called before *sig is read.
func (r *runner) watchBoot(ctx context.Context, cancel context.CancelFunc, sig *syscall.Signal) (stop func()) {
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-quit:
				return
			case <-ctx.Done():
				return
			case s, ok := <-r.o.Signals:
				if !ok {
					r.o.Signals = nil
					continue
				}
				if s == syscall.SIGWINCH {
					continue
				}
				if ss, ok := s.(syscall.Signal); ok {
					*sig = ss
				} else {
					*sig = syscall.SIGINT
				}
				cancel()
				return
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// launch starts a VMM for the next attempt at bringing up the VM (a run
// makes more than one when a restore fails), with its own sockets in the
// run's directory. The context returned ends when that VMM exits, so that
// nothing waits on a dead VM.
func (r *runner) launch(ctx context.Context) (context.Context, error) {
	r.attempts++
	name := func(base string) string {
		if r.attempts == 1 {
			return filepath.Join(r.dir, base+".sock")
		}
		return filepath.Join(r.dir, fmt.Sprintf("%s-%d.sock", base, r.attempts))
	}
	apiSock := name("api")
	vm, err := r.o.Launcher.Launch(ctx, LaunchSpec{APISock: apiSock, Console: r.console})
	if err != nil {
		return nil, err
	}
	r.vm, r.api, r.vsock = vm, r.o.Launcher.Client(apiSock), name("vsock")
	vctx, cancel := context.WithCancel(ctx)
	r.vmCancel = cancel
	go func() {
		select {
		case <-vm.Done():
			cancel()
		case <-vctx.Done():
		}
	}()
	return vctx, nil
}

// dropVM gives up on the VM of a failed attempt.
func (r *runner) dropVM() {
	if r.agent != nil {
		_ = r.agent.Close()
		r.agent = nil
	}
	if r.vm != nil {
		r.vm.Stop(r.o.StopGrace)
		r.vm = nil
	}
	if r.vmCancel != nil {
		r.vmCancel()
		r.vmCancel = nil
	}
}

// start brings the VM up with the image attached and the agent
// connected: restored from a warm snapshot, or booted.
func (r *runner) start(ctx context.Context) error {
	if r.warm() {
		return r.warmStart(ctx)
	}
	return r.coldBoot(ctx)
}

// coldBoot boots a VM on the image.
func (r *runner) coldBoot(ctx context.Context) error {
	vctx, err := r.launch(ctx)
	if err != nil {
		return err
	}
	return r.boot(vctx, r.o.Image, !r.o.ImageWritable)
}

// rootfsDriveID is the image's drive.
const rootfsDriveID = "rootfs"

// boot configures the VM through the API with image as its disk, starts
// it, and connects to the agent.
func (r *runner) boot(ctx context.Context, image string, readOnly bool) error {
	o := &r.o
	c, vsockPath := r.api, r.vsock
	if err := c.WaitReady(ctx); err != nil {
		return fmt.Errorf("waiting for the VMM's API socket: %w", err)
	}
	if err := c.PutBootSource(ctx, o.Kernel, o.Initrd, o.Cmdline); err != nil {
		return fmt.Errorf("configuring the boot source: %w", err)
	}
	if err := c.PutMachineConfig(ctx, int64(o.CPUs), o.MemMiB); err != nil {
		return fmt.Errorf("configuring the machine: %w", err)
	}
	// Not the root device: the guest boots from its initramfs, and the
	// agent mounts the disk as the container's root. Read-only unless
	// asked: the guest, hence the container, can then not change the
	// user's image however it tries (virtio-blk fails its writes, and the
	// VMM holds the file O_RDONLY).
	id, path, root, ro := rootfsDriveID, image, false, readOnly
	if err := c.PutDrive(ctx, api.Drive{DriveID: &id, PathOnHost: &path, IsRootDevice: &root, IsReadOnly: &ro}); err != nil {
		return fmt.Errorf("attaching the image: %w", err)
	}
	for i, n := range o.Nets {
		ifID, tap := n.ID, n.Tap
		if ifID == "" {
			ifID = fmt.Sprintf("eth%d", i)
		}
		ni := api.NetworkInterface{IfaceID: &ifID, HostDevName: &tap, RxRateLimiter: n.RxRateLimiter, TxRateLimiter: n.TxRateLimiter}
		if n.MAC != "" {
			mac := n.MAC
			ni.GuestMAC = &mac
		}
		if err := c.PutNetworkInterface(ctx, ni); err != nil {
			return fmt.Errorf("configuring network interface on tap %s: %w", tap, err)
		}
	}
	if err := c.PutVsock(ctx, GuestCID, vsockPath); err != nil {
		return fmt.Errorf("configuring vsock: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return fmt.Errorf("starting the VM: %w", err)
	}
	ac, err := DialAgent(ctx, vsockPath)
	if err != nil {
		return err
	}
	r.agent = ac
	return nil
}

// agentAttempt bounds one try at reaching the agent: a guest that is up
// answers in well under this even under instruction emulation, and one
// that is still booting refuses the CONNECT at once.
const agentAttempt = 30 * time.Second

// DialAgent connects to the agent behind the hybrid vsock socket at
// vsockPath, retrying until ctx ends: the guest kernel and init take from
// a second to minutes to get there.
func DialAgent(ctx context.Context, vsockPath string) (*agent.Client, error) {
	delay := 50 * time.Millisecond
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, agentAttempt)
		nc, err := agent.DialHybridVsock(actx, vsockPath, AgentPort)
		if err == nil {
			var c *agent.Client
			c, _, err = agent.New(actx, nc)
			if err == nil {
				cancel()
				return c, nil
			}
		}
		cancel()
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the guest agent: %w (last attempt: %v)", ctx.Err(), last)
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}

// runCommand creates the container, runs the command with the caller's
// stdio and signals, and returns its exit status.
func (r *runner) runCommand(ctx context.Context) (int, error) {
	o := &r.o
	r.ctrID = "run-" + randomID()
	_, err := r.agent.CreateContainer(ctx, protocol.CreateContainerRequest{
		ID:       r.ctrID,
		Rootfs:   protocol.Rootfs{Source: RootfsDevice, Type: "ext4", Overlay: !o.ImageWritable},
		Hostname: o.Hostname,
	})
	if err != nil {
		r.ctrID = ""
		return -1, r.explain(fmt.Errorf("creating the container: %w", err))
	}

	spec := protocol.Process{Args: o.Args, Env: o.Env, Cwd: o.Cwd, Terminal: o.TTY}
	stdin := o.Stdin
	termFd := -1
	if f, ok := o.Stdin.(*os.File); ok && o.TTY && term.IsTerminal(int(f.Fd())) {
		termFd = int(f.Fd())
		if cols, rows, err := term.GetSize(termFd); err == nil {
			spec.Rows, spec.Cols = uint16(rows), uint16(cols)
		}
		state, err := term.MakeRaw(termFd)
		if err != nil {
			return -1, fmt.Errorf("terminal: %w", err)
		}
		r.restores = append(r.restores, func() { _ = term.Restore(termFd, state) })
	}
	p, err := r.agent.StartProcess(ctx, r.ctrID, spec, agent.Stdio{Stdin: stdin, Stdout: o.Stdout, Stderr: o.Stderr})
	if err != nil {
		return -1, r.explain(fmt.Errorf("starting %s: %w", o.Args[0], err))
	}

	type result struct {
		status protocol.ExitStatus
		err    error
	}
	waited := make(chan result, 1)
	go func() {
		st, err := p.Wait(ctx)
		waited <- result{st, err}
	}()
	grace := o.KillGrace
	if grace <= 0 {
		grace = DefaultKillGrace
	}
	hardGrace := o.HardStopGrace
	if hardGrace <= 0 {
		hardGrace = DefaultHardStopGrace
	}
	fwd := newForwarder(ctx, p, o.Stderr)
	defer fwd.close()
	// stop gives up on the command: the same end as a guest that died,
	// but the shim's doing, so without the console tail.
	stop := func(reason string) (int, error) {
		fwd.close()
		r.vm.Stop(o.StopGrace)
		return -1, &vmStoppedError{reason: reason}
	}
	var (
		killTimer <-chan time.Time // armed by the first SIGTERM or SIGINT
		stopTimer <-chan time.Time // armed by the SIGKILL
		stops     int              // SIGTERMs and SIGINTs so far
	)
	for {
		select {
		case res := <-waited:
			if res.err != nil {
				return -1, r.explain(fmt.Errorf("waiting for %s: %w", o.Args[0], res.err))
			}
			return res.status.Code, nil
		case <-killTimer:
			killTimer = nil
			fmt.Fprintf(o.Stderr, "vmm run: %s still running %v after the signal; sending SIGKILL\r\n", o.Args[0], grace)
			fwd.signal(syscall.SIGKILL)
			stopTimer = time.After(hardGrace)
		case <-stopTimer:
			return stop(fmt.Sprintf("%s did not end %v after SIGKILL", o.Args[0], hardGrace))
		case s, ok := <-o.Signals:
			if !ok {
				o.Signals = nil
				continue
			}
			sig, isSys := s.(syscall.Signal)
			if !isSys {
				continue
			}
			if sig == syscall.SIGWINCH {
				if termFd >= 0 {
					if cols, rows, err := term.GetSize(termFd); err == nil {
						fwd.resize(uint16(rows), uint16(cols))
					}
				}
				continue
			}
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				if stops++; stops >= stopSignals {
					return stop(fmt.Sprintf("%s had not ended after %d SIGINTs or SIGTERMs", o.Args[0], stops))
				}
				if killTimer == nil && stopTimer == nil {
					killTimer = time.After(grace)
				}
			}
			fwd.signal(sig)
		case <-r.vm.Done():
			return -1, r.vmmDied("while " + o.Args[0] + " was running")
		case <-r.agent.Done():
			return -1, r.explain(fmt.Errorf("lost the connection to the guest agent while %s was running", o.Args[0]))
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
}

// agentCallTimeout bounds one signal or resize: the agent answers
// quickly, and a wedged guest must not hold up the next one.
const agentCallTimeout = 10 * time.Second

// forwarder passes signals and terminal sizes to the command, in order,
// from a goroutine of its own, so that runCommand's loop never waits for
// the agent: a guest that does not answer must not delay the SIGKILL, the
// hard stop, or the count of the user's signals.
type forwarder struct {
	p      *agent.Process
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}

	mu         sync.Mutex
	sigs       []syscall.Signal
	resized    bool // rows and cols are to be sent
	rows, cols uint16

	outMu  sync.Mutex
	stderr io.Writer
	quiet  bool // set by close: nothing more goes to stderr
}

func newForwarder(ctx context.Context, p *agent.Process, stderr io.Writer) *forwarder {
	f := &forwarder{p: p, stderr: stderr, wake: make(chan struct{}, 1)}
	f.ctx, f.cancel = context.WithCancel(ctx)
	go f.loop()
	return f
}

func (f *forwarder) signal(sig syscall.Signal) {
	f.mu.Lock()
	f.sigs = append(f.sigs, sig)
	f.mu.Unlock()
	f.poke()
}

// resize sends the terminal's size; only the latest one pending counts.
func (f *forwarder) resize(rows, cols uint16) {
	f.mu.Lock()
	f.resized, f.rows, f.cols = true, rows, cols
	f.mu.Unlock()
	f.poke()
}

func (f *forwarder) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// close abandons what is pending and silences the forwarder; it may be
// called more than once. A call to the agent under way ends when the
// connection does.
func (f *forwarder) close() {
	f.cancel()
	f.outMu.Lock()
	f.quiet = true
	f.outMu.Unlock()
}

func (f *forwarder) loop() {
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-f.wake:
		}
		for f.ctx.Err() == nil {
			f.mu.Lock()
			var (
				sig    syscall.Signal
				resize bool
				rows   = f.rows
				cols   = f.cols
			)
			switch {
			case len(f.sigs) > 0:
				sig, f.sigs = f.sigs[0], f.sigs[1:]
			case f.resized:
				resize, f.resized = true, false
			}
			f.mu.Unlock()
			if sig == 0 && !resize {
				break
			}
			ctx, cancel := context.WithTimeout(f.ctx, agentCallTimeout)
			if resize {
				_ = f.p.Resize(ctx, rows, cols)
			} else if err := f.p.Signal(ctx, sig); err != nil {
				what := "forwarding " + sig.String()
				if sig == syscall.SIGKILL {
					what = "sending SIGKILL" // the shim's own, not the user's
				}
				f.warn("vmm run: %s: %v\r\n", what, err)
			}
			cancel()
		}
	}
}

// warn writes to stderr unless the forwarder is closed (runCommand has
// returned, or is stopping the VM).
func (f *forwarder) warn(format string, args ...any) {
	f.outMu.Lock()
	defer f.outMu.Unlock()
	if !f.quiet && f.ctx.Err() == nil {
		fmt.Fprintf(f.stderr, format, args...)
	}
}

// explain adds the VMM's fate to err if it has died meanwhile, which is
// the usual reason for a lost agent.
func (r *runner) explain(err error) error {
	select {
	case <-r.vm.Done():
		return fmt.Errorf("%w: %w", err, r.vmmDied(""))
	case <-time.After(100 * time.Millisecond):
		return err
	}
}

// vmmDied describes a VMM that exited on its own, with its console tail.
func (r *runner) vmmDied(when string) error {
	if when != "" {
		when = " " + when
	}
	return fmt.Errorf("the VMM exited%s (%v)%s", when, r.vm.Err(), r.consoleHint())
}

// consoleHint is the tail of the console log, or a pointer to where the
// console went.
func (r *runner) consoleHint() string {
	if r.logPath == "" {
		return "; the console output is above"
	}
	tail := logTail(r.logPath, 20)
	if tail == "" {
		return "; the console log is empty"
	}
	return "; last console lines:\n" + tail
}

// cleanup undoes everything run made, in reverse order. Each step is
// bounded so a dead guest cannot hang it.
func (r *runner) cleanup() {
	for i := len(r.restores) - 1; i >= 0; i-- {
		r.restores[i]()
	}
	if r.agent != nil {
		if r.ctrID != "" {
			select {
			case <-r.vm.Done():
			default:
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_ = r.agent.DestroyContainer(ctx, r.ctrID)
				cancel()
			}
		}
		_ = r.agent.Close()
	}
	if r.vm != nil {
		r.vm.Stop(r.o.StopGrace)
	}
	if r.vmCancel != nil {
		r.vmCancel()
	}
	for _, tap := range r.newTaps {
		if err := deleteTap(tap); err != nil {
			fmt.Fprintf(r.o.Stderr, "vmm run: %v\n", err)
		}
	}
	if r.logFile != nil {
		_ = r.logFile.Close()
	}
	if r.dir != "" {
		if err := os.RemoveAll(r.dir); err != nil {
			fmt.Fprintf(r.o.Stderr, "vmm run: removing %s: %v\n", r.dir, err)
		}
	}
}

// randomID names a container uniquely enough within one VM and one run.
func randomID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
