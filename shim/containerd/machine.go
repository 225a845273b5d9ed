package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
	agent "github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/shim"
	"github.com/govmm/vmm/vmm"
)

// Launcher starts a VMM process serving its API on a socket;
// shim.ExecLauncher is the real one.
type Launcher interface {
	Launch(ctx context.Context, spec shim.LaunchSpec) (shim.VMM, error)
}

// ExecLauncher runs the vmm binary with --api-sock.
type ExecLauncher = shim.ExecLauncher

// Files in a sandbox's run directory.
const (
	apiSockName   = "api.sock"
	vsockName     = "vsock.sock"
	consoleName   = "console.log"
	consoleLogMax = 1 << 20
	// stopGrace is how long the VMM gets between SIGTERM and SIGKILL.
	stopGrace = 5 * time.Second
)

// disk is one virtio-blk drive of the VM.
type disk struct {
	path     string
	readOnly bool
}

// guestDevice is the name the guest gives the i-th drive: vda, vdb, ... in
// PCI slot order, which is the order the drives were configured in.
func guestDevice(i int) string { return "/dev/vd" + string(rune('a'+i)) }

// machine is a sandbox's VM: a vmm process configured and started
// through its REST API, and a connection to the guest agent.
type machine struct {
	vm      shim.VMM
	ctl     vmControl
	agent   *agent.Client
	console *cappedFile // nil when not logging
	// deviceOf names the i-th drive in the guest (guestDevice).
	deviceOf func(i int) string
	// attachMu serialises the claims and releases of slots with their
	// swaps: a container sharing a slot must find its image in place.
	attachMu sync.Mutex
	slots    *driveSlots
	// net is the pod's network on the host, nil without one; stop
	// tears it down.
	net  *podNetwork
	logf func(format string, args ...any)
}

// vmControl is the part of the REST API a running VM needs;
// *client.Client implements it.
type vmControl interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// PatchDrivePath swaps a drive's image (PATCH /drives/{id}).
	PatchDrivePath(ctx context.Context, id, path string) error
}

// machineSpec is what bootMachine needs.
type machineSpec struct {
	dir                     string // the sandbox's run directory (sockets, console log)
	kernel, initrd, cmdline string
	memMiB, cpus            int64
	disks                   []disk
	// spares are a pod's placeholder drives after disks (makeSpares).
	spares      []disk
	bootTimeout time.Duration
	// netns is the pod's network namespace path (podNetNS); empty for
	// a VM without a NIC.
	netns string
	logf  func(format string, args ...any) // nil: discard
}

// drives are all the VM's drives in attach order.
func (s machineSpec) drives() []disk { return append(slices.Clip(s.disks), s.spares...) }

// bootMachine starts a VM with spec's disks and connects to its agent.
// On failure nothing it started is left running and the error carries
// the console's last lines.
func bootMachine(ctx context.Context, l Launcher, spec machineSpec) (_ *machine, err error) {
	drives := spec.drives()
	if err := vmm.CheckDrives(len(drives)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.dir, 0o700); err != nil {
		return nil, err
	}
	console, err := createCappedFile(filepath.Join(spec.dir, consoleName), consoleLogMax)
	if err != nil {
		return nil, err
	}
	apiSock, vsockPath := filepath.Join(spec.dir, apiSockName), filepath.Join(spec.dir, vsockName)
	var pn *podNetwork
	if spec.netns != "" {
		if pn, err = setupPodNetwork(spec.netns); err != nil {
			console.Close()
			return nil, fmt.Errorf("the pod's network: %w", err)
		}
		l = netnsLauncher{Launcher: l, netns: spec.netns}
	}
	vm, err := l.Launch(ctx, shim.LaunchSpec{APISock: apiSock, Console: console})
	if err != nil {
		console.Close()
		if pn != nil {
			err = errors.Join(err, teardownPodNetwork(pn.netns))
		}
		return nil, err
	}
	c := client.New(apiSock)
	m := &machine{vm: vm, ctl: c, console: console, deviceOf: guestDevice, slots: newDriveSlots(spec.disks, spec.spares), net: pn, logf: spec.logf}
	defer func() {
		if err != nil {
			m.stop()
			err = fmt.Errorf("%w%s", err, m.consoleTail(spec.dir))
		}
	}()

	bctx, cancel := context.WithTimeout(ctx, spec.bootTimeout)
	defer cancel()
	// Stop waiting as soon as the VMM dies.
	go func() {
		select {
		case <-vm.Done():
			cancel()
		case <-bctx.Done():
		}
	}()
	fail := func(what string, err error) error {
		select {
		case <-vm.Done():
			return fmt.Errorf("%s: the VMM exited (%v)", what, vm.Err())
		default:
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := c.WaitReady(bctx); err != nil {
		return nil, fail("waiting for the VMM's API socket", err)
	}
	if err := c.PutBootSource(bctx, spec.kernel, spec.initrd, spec.cmdline); err != nil {
		return nil, fail("configuring the boot source", err)
	}
	if err := c.PutMachineConfig(bctx, spec.cpus, spec.memMiB); err != nil {
		return nil, fail("configuring the machine", err)
	}
	for i, d := range drives {
		id, path, root, ro := driveID(i), d.path, false, d.readOnly
		if err := c.PutDrive(bctx, api.Drive{DriveID: &id, PathOnHost: &path, IsRootDevice: &root, IsReadOnly: &ro}); err != nil {
			return nil, fail("attaching "+path, err)
		}
	}
	if err := c.PutVsock(bctx, shim.GuestCID, vsockPath); err != nil {
		return nil, fail("configuring vsock", err)
	}
	if pn != nil {
		id, tap, mac := pn.apiInterface()
		if err := c.PutNetworkInterface(bctx, api.NetworkInterface{IfaceID: &id, HostDevName: &tap, GuestMAC: &mac}); err != nil {
			return nil, fail("attaching the pod's network", err)
		}
	}
	if err := c.Start(bctx); err != nil {
		return nil, fail("starting the VM", err)
	}
	ac, err := shim.DialAgent(bctx, vsockPath)
	if err != nil {
		return nil, fail("reaching the guest agent", err)
	}
	m.agent = ac
	if pn != nil {
		// Before any container runs, so none starts without its
		// network.
		if err := ac.ConfigureNetwork(bctx, pn.guest); err != nil {
			return nil, fail("configuring the guest's network", err)
		}
	}
	return m, nil
}

// consoleTail is the end of the console log, for errors.
func (m *machine) consoleTail(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, consoleName))
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return ""
	}
	const tail = 2048
	if len(data) > tail {
		data = data[len(data)-tail:]
	}
	return "; VMM output: " + strings.TrimSpace(string(bytes.ReplaceAll(data, []byte("\r"), nil)))
}

func (m *machine) pause(ctx context.Context) error  { return m.ctl.Pause(ctx) }
func (m *machine) resume(ctx context.Context) error { return m.ctl.Resume(ctx) }

// stop ends the VM and closes the agent connection; it may be called
// more than once.
func (m *machine) stop() {
	if m.agent != nil {
		_ = m.agent.Close()
	}
	m.vm.Stop(stopGrace)
	if m.console != nil {
		m.console.Close()
	}
	// After the VMM: it held the tap.
	if m.net != nil {
		if err := teardownPodNetwork(m.net.netns); err != nil && m.logf != nil {
			m.logf("%v", err)
		}
		m.net = nil
	}
}

// cappedFile is a log file that stops growing at max bytes, so a guest
// flooding its console cannot fill the disk.
type cappedFile struct {
	mu      sync.Mutex
	f       *os.File
	written int64
	max     int64
}

func createCappedFile(path string, max int64) (*cappedFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	return &cappedFile{f: f, max: max}, nil
}

func (c *cappedFile) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return len(p), nil
	}
	if room := c.max - c.written; room > 0 {
		n, err := c.f.Write(p[:min(int64(len(p)), room)])
		c.written += int64(n)
		if err != nil {
			return n, err
		}
	}
	return len(p), nil // the rest is dropped, not an error for the VMM
}

func (c *cappedFile) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f = nil
	return err
}

var _ io.WriteCloser = (*cappedFile)(nil)

// maxProcEntries bounds the walk of /proc when looking for a VMM.
const maxProcEntries = 1 << 20

// killRecordedVMM kills a VMM still serving dir's API socket: after its
// shim was killed, the VMM normally died with it (parent-death signal),
// but one that survived must not keep the sandbox's files busy. The
// process is recognised by its command line, which names the socket.
func killRecordedVMM(dir string) error {
	want := []byte("--api-sock\x00" + filepath.Join(dir, apiSockName) + "\x00")
	d, err := os.Open("/proc")
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(maxProcEntries)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	for _, name := range names {
		pid := 0
		if _, err := fmt.Sscanf(name, "%d", &pid); err != nil || pid <= 0 {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", name, "cmdline"))
		if err != nil || !bytes.Contains(cmdline, want) {
			continue
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("killing VMM %d: %w", pid, err)
		}
	}
	return nil
}
