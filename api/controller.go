package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/govmm/vmm/vmm"
)

// Machine is what the controller needs from a built VM; *vmm.Machine
// implements it, and tests substitute fakes.
type Machine interface {
	Run(ctx context.Context) vmm.Exit
	Close() error
	Pause() error
	Resume() error
	Stats() vmm.Stats
	SendCtrlAltDel() error
}

// DriveUpdater is implemented by machines that can swap a drive's backing
// file after boot (PATCH /drives/{id} with path_on_host). *vmm.Machine
// implements it with virtio-blk's hot swap; without it the call is refused.
type DriveUpdater interface {
	UpdateDrive(id, pathOnHost string) error
}

// The machine NewVMMMachine builds swaps drives after boot.
var _ DriveUpdater = (*vmm.Machine)(nil)

// Snapshotter is implemented by machines that can write a snapshot (PUT
// /snapshot/create): the machine's state to statePath and its guest memory
// to memPath. The controller calls it only while the machine is paused
// (PATCH /vm Paused), holding its lock, so no Resume runs meanwhile; the
// machine stays paused afterwards. Without it the call is refused.
type Snapshotter interface {
	Snapshot(statePath, memPath string) error
}

// DiffSnapshotter is implemented by Snapshotters that can also write a
// diff snapshot (snapshot_type Diff): a memory file of the pages written
// since the machine's last snapshot, start or restore. The controller asks
// for one only of a machine started or restored with track_dirty_pages;
// without the interface a Diff is refused.
type DiffSnapshotter interface {
	SnapshotDiff(statePath, memPath string) error
}

// Factory builds a machine from a complete config.
type Factory func(cfg vmm.Config, log *slog.Logger) (Machine, error)

// Restorer builds a machine from a snapshot, for PUT /snapshot/load.
//
// The machine it returns is built and paused: Run starts its vCPU threads
// but keeps them out of the guest until Resume, which the controller may
// call before Run (for resume_vm) or at any time after; Pause on it before
// any Resume succeeds and changes nothing. Close must release it whether or
// not Run was ever called.
//
// cfg is the configuration the snapshot carried, with the request's
// overrides applied (the tap each NetOverride names, the vsock's
// VsockUDSPath): GET /vm/config and GET /machine-config report it (CPUs,
// MemSize, Drives, Nets, Vsock, Entropy, and Kernel, Initrd and Cmdline if
// the snapshot records them). As in Firecracker, an override naming an
// interface the snapshot does not have, or a vsock override for a snapshot
// without vsock, is an error.
//
// On error nothing may be left open or running: the instance stays "Not
// started" and accepts another load.
type Restorer func(req RestoreRequest, log *slog.Logger) (m Machine, cfg vmm.Config, err error)

// RestoreRequest is a validated PUT /snapshot/load, deprecated forms
// resolved, for a Restorer.
type RestoreRequest struct {
	// Base carries the host-side settings a snapshot cannot: ConsoleOut,
	// ConsoleIn, DebugExit, SampleRIP, HostQuirks, OnFirstRun, SystemMap
	// (Options.Base). The guest's shape and devices (Kernel, Initrd,
	// Cmdline, CPUs, MemSize, Drives, Nets, Vsock, Entropy) are zero: they
	// come from the snapshot.
	Base vmm.Config
	// SnapshotPath is the machine state file (snapshot_path).
	SnapshotPath string
	// MemFilePath is the guest memory file (mem_backend.backend_path of a
	// File backend, or the deprecated mem_file_path).
	MemFilePath string
	// NetOverrides give interfaces a new tap, in request order; each
	// IfaceID appears at most once.
	NetOverrides []NetOverride
	// VsockUDSPath, when not empty, replaces the vsock device's uds_path.
	VsockUDSPath string
	// DriveOverrides give drives another backing file, in request order;
	// each DriveID appears at most once.
	DriveOverrides []DriveOverrideRequest
	// TrackDirtyPages records the pages written from the restore on, for
	// diff snapshots (track_dirty_pages, or the deprecated
	// enable_diff_snapshots); cfg reports it.
	TrackDirtyPages bool
}

// DriveOverrideRequest is one of PUT /snapshot/load's drive_overrides:
// the drive DriveID is opened from Path instead of the snapshot's file.
type DriveOverrideRequest struct {
	DriveID string
	Path    string
}

// NetOverride is one of PUT /snapshot/load's network_overrides: the
// interface IfaceID gets the tap Tap instead of the snapshot's.
type NetOverride struct {
	IfaceID string
	Tap     string
}

// NewVMMMachine is the Factory for real KVM machines.
func NewVMMMachine(cfg vmm.Config, log *slog.Logger) (Machine, error) {
	m, err := vmm.New(cfg, log)
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	return m, nil
}

// The machines NewVMMMachine and RestoreVMMMachine build write snapshots,
// diff ones too.
var (
	_ Snapshotter     = (*vmm.Machine)(nil)
	_ DiffSnapshotter = (*vmm.Machine)(nil)
)

// RestoreVMMMachine is the Restorer for real KVM machines (vmm.Restore).
func RestoreVMMMachine(req RestoreRequest, log *slog.Logger) (Machine, vmm.Config, error) {
	rc := vmm.RestoreConfig{StatePath: req.SnapshotPath, MemPath: req.MemFilePath, VsockUDS: req.VsockUDSPath, TrackDirtyPages: req.TrackDirtyPages, Host: req.Base}
	if len(req.NetOverrides) > 0 {
		rc.NetTaps = map[string]string{}
		for _, o := range req.NetOverrides {
			rc.NetTaps[o.IfaceID] = o.Tap
		}
	}
	if len(req.DriveOverrides) > 0 {
		rc.DrivePaths = map[string]string{}
		for _, o := range req.DriveOverrides {
			rc.DrivePaths[o.DriveID] = o.Path
		}
	}
	m, err := vmm.Restore(rc, log)
	if err != nil {
		return nil, vmm.Config{}, err
	}
	return m, m.Config(), nil
}

// Options configure a Controller.
type Options struct {
	// ID is the instance id reported by GET / (Firecracker's --id).
	ID string
	// Version is reported by GET / and GET /version.
	Version string
	// Base is the starting configuration: everything the API cannot set
	// (console wiring, the test exit device, diagnostics) plus defaults from
	// the command line that the config file and the API may override.
	Base vmm.Config
	// Factory builds the machine on InstanceStart; NewVMMMachine when nil.
	Factory Factory
	// Restore builds the machine on PUT /snapshot/load;
	// RestoreVMMMachine when nil.
	Restore Restorer
	// Log receives logs until PUT /logger redirects them; discarded if nil.
	Log slog.Handler
	// MetricsInterval is the period of automatic metrics flushes once a
	// metrics path is set; 60 s (as Firecracker) when zero.
	MetricsInterval time.Duration
}

// Defaults for Options.
const (
	DefaultID              = "anonymous-instance"
	AppName                = "vmm"
	defaultMetricsInterval = 60 * time.Second
)

type phase int

const (
	notStarted phase = iota
	running
	exited
)

// Controller owns one VM's configuration and lifecycle. The command line,
// the config file and the HTTP API all go through it, so there is one path
// from configuration to a running VM. Every configuration change and state
// transition holds mu; vCPU threads never take it.
type Controller struct {
	opts Options
	logs *switchHandler
	log  *slog.Logger

	mu      sync.Mutex
	cfg     vmm.Config // kernel, command line, shape; devices live below
	drives  []Drive    // normalized, in insertion order
	nets    []NetworkInterface
	vsock   *Vsock
	logger  *Logger
	phase   phase
	paused  bool
	halting bool // Stop was called: no InstanceStart from now on
	machine Machine
	cancel  context.CancelFunc
	exit    vmm.Exit
	done    chan struct{}
	metrics *metricsSink
	files   []*nbFile // log and metrics files, closed by Close
	logFile *nbFile   // the current PUT /logger file (also in files)
	stopped chan struct{}

	// configured names the first boot-specific resource set (anything but
	// the logger and metrics), which rules out loading a snapshot.
	configured string
	latency    LatencyMetrics // of the latest snapshot create and load

	reqMu    sync.Mutex
	requests map[string]uint64 // "route status" -> count (APIMetrics)
}

// NewController returns a controller for a machine not yet started.
func NewController(opts Options) *Controller {
	if opts.ID == "" {
		opts.ID = DefaultID
	}
	if opts.Factory == nil {
		opts.Factory = NewVMMMachine
	}
	if opts.Restore == nil {
		opts.Restore = RestoreVMMMachine
	}
	if opts.MetricsInterval <= 0 {
		opts.MetricsInterval = defaultMetricsInterval
	}
	base := opts.Log
	if base == nil {
		base = slog.DiscardHandler
	}
	c := &Controller{
		opts:     opts,
		logs:     newSwitchHandler(base),
		cfg:      opts.Base,
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
		requests: map[string]uint64{},
	}
	c.log = slog.New(c.logs)
	c.adoptDevices(opts.Base)
	switch b := opts.Base; {
	case b.Kernel != "":
		c.configured = "the kernel (command line)"
	case len(b.Drives) > 0 || len(b.Nets) > 0 || b.Vsock != nil || b.Entropy != nil:
		c.configured = "devices (command line)"
	}
	return c
}

// adoptDevices makes cfg's devices the controller's, in the API's form,
// and leaves them out of c.cfg (vmmConfigLocked puts them back).
func (c *Controller) adoptDevices(cfg vmm.Config) {
	c.cfg.Drives, c.cfg.Nets, c.cfg.Vsock = nil, nil, nil
	c.drives, c.nets, c.vsock = nil, nil, nil
	for _, d := range cfg.Drives {
		c.drives = append(c.drives, Drive{DriveID: ptr(d.ID), PathOnHost: ptr(d.Path), IsRootDevice: ptr(d.Root),
			IsReadOnly: ptr(d.ReadOnly), PartUUID: nonEmpty(d.PartUUID), CacheType: ptr("Unsafe"), IOEngine: apiIOEngine(d.IOEngine), Direct: d.Direct})
	}
	for _, n := range cfg.Nets {
		c.nets = append(c.nets, NetworkInterface{IfaceID: ptr(n.ID), HostDevName: ptr(n.Tap), GuestMAC: nonEmpty(n.MAC), Queues: n.Queues})
	}
	if v := cfg.Vsock; v != nil {
		c.vsock = &Vsock{GuestCID: ptr(int64(v.GuestCID)), UDSPath: ptr(v.UDSPath), VsockID: nonEmpty(v.ID)}
	}
}

// noteConfiguredLocked records that what, a boot-specific resource, was
// set: from now on a snapshot can't be loaded, as in Firecracker.
func (c *Controller) noteConfiguredLocked(what string) {
	if c.configured == "" {
		c.configured = what
	}
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Logger returns the logger whose destination PUT /logger controls.
func (c *Controller) Logger() *slog.Logger { return c.log }

// Done is closed once a started machine has ended and been released.
func (c *Controller) Done() <-chan struct{} { return c.done }

// Exit reports how the machine ended; valid after Done is closed.
func (c *Controller) Exit() vmm.Exit {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exit
}

// Started reports whether InstanceStart succeeded.
func (c *Controller) Started() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.phase != notStarted
}

// Stop asks a running machine to stop (Done closes once it has) and makes
// any later InstanceStart fail, so a caller that saw Started() == false
// after Stop knows no machine will run.
func (c *Controller) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.halting = true
	if c.cancel != nil {
		c.cancel()
	}
}

// Close stops periodic metrics and closes log and metrics files. Call it
// after Done, or before exiting without a start.
func (c *Controller) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.stopped:
	default:
		close(c.stopped)
	}
	c.logs.set(c.opts.Log)
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	c.files = nil
	c.metrics = nil
	return errors.Join(errs...)
}

func (c *Controller) stateLocked() string {
	switch {
	case c.phase == notStarted:
		return StateNotStarted
	case c.phase == exited:
		return StateExited
	case c.paused:
		return StatePaused
	}
	return StateRunning
}

// InstanceInfo is GET /.
func (c *Controller) InstanceInfo() InstanceInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return InstanceInfo{AppName: AppName, ID: c.opts.ID, State: c.stateLocked(), VMMVersion: c.opts.Version}
}

// Version is GET /version.
func (c *Controller) Version() Version { return Version{FirecrackerVersion: c.opts.Version} }

// MachineConfig is GET /machine-config.
func (c *Controller) MachineConfig() MachineConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.machineConfigLocked()
}

func (c *Controller) machineConfigLocked() MachineConfig {
	return MachineConfig{
		VCPUCount:       ptr(int64(c.cfg.CPUs)),
		MemSizeMiB:      ptr(int64(c.cfg.MemSize >> 20)),
		SMT:             ptr(false),
		TrackDirtyPages: ptr(c.cfg.TrackDirtyPages),
		HugePages:       ptr("None"),
	}
}

// preBoot takes the lock for a configuration change allowed only before
// start; the caller must unlock.
func (c *Controller) preBoot() error {
	c.mu.Lock()
	if c.phase != notStarted {
		c.mu.Unlock()
		return errPostBoot
	}
	return nil
}

// SetMachineConfig is PUT (partial=false) or PATCH (partial=true)
// /machine-config.
func (c *Controller) SetMachineConfig(mc MachineConfig, partial bool) error {
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	shape, err := applyMachineConfig(c.cfg, mc, partial)
	if err != nil {
		return err
	}
	c.cfg.CPUs, c.cfg.MemSize, c.cfg.TrackDirtyPages = shape.cpus, shape.mem, shape.trackDirtyPages
	c.noteConfiguredLocked("machine-config")
	return nil
}

// SetBootSource is PUT /boot-source.
func (c *Controller) SetBootSource(bs BootSource) error {
	if err := checkBootSource(bs); err != nil {
		return err
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	c.cfg.Kernel = *bs.KernelImagePath
	c.cfg.Initrd = deref(bs.InitrdPath, "")
	c.cfg.Cmdline = deref(bs.BootArgs, "")
	// The symbol table belongs to the old kernel; look beside the new one.
	if c.cfg.SystemMap == c.opts.Base.SystemMap && c.cfg.Kernel != c.opts.Base.Kernel {
		c.cfg.SystemMap = ""
	}
	c.noteConfiguredLocked("boot-source")
	return nil
}

// PutDrive is PUT /drives/{id}; pathID is "" from the config file.
func (c *Controller) PutDrive(pathID string, d Drive) error {
	d, err := normalizeDrive(d, pathID)
	if err != nil {
		return err
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.drives, func(x Drive) bool { return *x.DriveID == *d.DriveID })
	if *d.IsRootDevice {
		for j, x := range c.drives {
			if j != i && *x.IsRootDevice {
				return fmt.Errorf("drive %q: a root block device already exists (%q)", *d.DriveID, *x.DriveID)
			}
		}
	}
	switch {
	case i >= 0:
		c.drives[i] = d
	case *d.IsRootDevice:
		// The root device goes first, as in Firecracker, so the guest
		// sees it as its first disk (vda).
		c.drives = slices.Insert(c.drives, 0, d)
	default:
		c.drives = append(c.drives, d)
	}
	c.noteConfiguredLocked("drives")
	return nil
}

// PatchDrive is PATCH /drives/{id}: after boot, swap the backing file.
func (c *Controller) PatchDrive(pathID string, d PartialDrive) error {
	id, err := checkID("drive_id", d.DriveID, pathID)
	if err != nil {
		return err
	}
	if err := checkRateLimiter("rate_limiter", d.RateLimiter); err != nil {
		return err
	}
	if d.PathOnHost != nil {
		if err := checkReadableFile("path_on_host", *d.PathOnHost, true); err != nil {
			return err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.runningLocked(); err != nil {
		return err
	}
	i := slices.IndexFunc(c.drives, func(x Drive) bool { return *x.DriveID == id })
	if i < 0 {
		return fmt.Errorf("no drive with drive_id %q", id)
	}
	if d.PathOnHost == nil {
		return nil
	}
	u, ok := c.machine.(DriveUpdater)
	if !ok {
		return fmt.Errorf("drive %q: changing path_on_host after boot is not supported by this machine (no virtio-blk hot swap)", id)
	}
	if err := u.UpdateDrive(id, *d.PathOnHost); err != nil {
		return fmt.Errorf("drive %q: %w", id, err)
	}
	c.drives[i].PathOnHost = d.PathOnHost
	return nil
}

// PutNetworkInterface is PUT /network-interfaces/{id}.
func (c *Controller) PutNetworkInterface(pathID string, n NetworkInterface) error {
	n, err := normalizeNet(n, pathID)
	if err != nil {
		return err
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.nets, func(x NetworkInterface) bool { return *x.IfaceID == *n.IfaceID })
	for j, x := range c.nets {
		if j == i {
			continue
		}
		if *x.HostDevName == *n.HostDevName {
			return fmt.Errorf("host_dev_name %q is already used by interface %q", *n.HostDevName, *x.IfaceID)
		}
		if n.GuestMAC != nil && x.GuestMAC != nil && *x.GuestMAC == *n.GuestMAC {
			return fmt.Errorf("guest_mac %s is already used by interface %q", *n.GuestMAC, *x.IfaceID)
		}
	}
	if i >= 0 {
		c.nets[i] = n
	} else {
		c.nets = append(c.nets, n)
	}
	c.noteConfiguredLocked("network-interfaces")
	return nil
}

// PatchNetworkInterface is PATCH /network-interfaces/{id}: after boot,
// update rate limiters (only "no limit" is supported).
func (c *Controller) PatchNetworkInterface(pathID string, n PartialNetworkInterface) error {
	id, err := checkID("iface_id", n.IfaceID, pathID)
	if err != nil {
		return err
	}
	if err := checkRateLimiter("rx_rate_limiter", n.RxRateLimiter); err != nil {
		return err
	}
	if err := checkRateLimiter("tx_rate_limiter", n.TxRateLimiter); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.runningLocked(); err != nil {
		return err
	}
	if !slices.ContainsFunc(c.nets, func(x NetworkInterface) bool { return *x.IfaceID == id }) {
		return fmt.Errorf("no network interface with iface_id %q", id)
	}
	return nil
}

// SetVsock is PUT /vsock.
func (c *Controller) SetVsock(v Vsock) error {
	if err := checkVsock(v); err != nil {
		return err
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	c.vsock = &v
	c.noteConfiguredLocked("vsock")
	return nil
}

// runningLocked reports why the machine can't take a post-boot request.
func (c *Controller) runningLocked() error {
	switch c.phase {
	case notStarted:
		return errPreBoot
	case exited:
		return errors.New("the microVM has already exited")
	}
	return nil
}

// vmmConfigLocked assembles the machine's config.
func (c *Controller) vmmConfigLocked() vmm.Config {
	cfg := c.cfg
	cfg.Drives, cfg.Nets, cfg.Vsock = nil, nil, nil
	for _, d := range c.drives {
		cfg.Drives = append(cfg.Drives, vmm.DriveConfig{ID: *d.DriveID, Path: *d.PathOnHost,
			ReadOnly: *d.IsReadOnly, Root: *d.IsRootDevice, PartUUID: deref(d.PartUUID, ""), Direct: d.Direct, IOEngine: driveEngine(d.IOEngine)})
	}
	for _, n := range c.nets {
		cfg.Nets = append(cfg.Nets, vmm.NetConfig{ID: *n.IfaceID, Tap: *n.HostDevName, MAC: deref(n.GuestMAC, ""), Queues: n.Queues})
	}
	if v := c.vsock; v != nil {
		cfg.Vsock = &vmm.VsockConfig{ID: deref(v.VsockID, ""), GuestCID: uint32(*v.GuestCID), UDSPath: *v.UDSPath}
	}
	return cfg
}

// StartError is a failure to build the machine on InstanceStart.
type StartError struct{ Err error }

func (e *StartError) Error() string { return "cannot start the microVM: " + e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// Start is the InstanceStart action: build the machine and run it. On
// failure the instance stays "Not started" and may be reconfigured.
func (c *Controller) Start() error {
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.halting {
		return errors.New("the VMM is shutting down")
	}
	if c.cfg.Kernel == "" {
		return &StartError{errors.New("no boot source configured (PUT /boot-source, or 'boot-source' in the config file)")}
	}
	m, err := c.opts.Factory(c.vmmConfigLocked(), c.log)
	if err != nil {
		return &StartError{err}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.machine, c.cancel, c.phase = m, cancel, running
	c.log.Info("microVM started", "id", c.opts.ID, "vcpus", c.cfg.CPUs, "mem_mib", c.cfg.MemSize>>20)
	go c.run(ctx, m)
	return nil
}

// run owns the machine from start to release. It takes mu around Close so
// no API call is using the machine while it is torn down.
func (c *Controller) run(ctx context.Context, m Machine) {
	exit := m.Run(ctx)
	c.mu.Lock()
	c.phase, c.paused, c.exit = exited, false, exit
	c.cancel()
	if err := m.Close(); err != nil {
		c.log.Warn("closing machine", "err", err)
	}
	if c.metrics != nil {
		// A last line with the final counters, as Firecracker does at exit.
		c.flushMetricsLocked()
	}
	c.mu.Unlock()
	close(c.done)
}

// SetVMState is PATCH /vm.
func (c *Controller) SetVMState(v VM) error {
	if v.State == nil {
		return missing("state")
	}
	if *v.State != VMPaused && *v.State != VMResumed {
		return fmt.Errorf("state %q is not one of Paused, Resumed", *v.State)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.runningLocked(); err != nil {
		return err
	}
	if *v.State == VMPaused {
		if err := c.machine.Pause(); err != nil {
			return fmt.Errorf("pause: %w", err)
		}
		c.paused = true
		return nil
	}
	if err := c.machine.Resume(); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	c.paused = false
	return nil
}

// Act is PUT /actions.
func (c *Controller) Act(a Action) error {
	if a.ActionType == nil {
		return missing("action_type")
	}
	switch *a.ActionType {
	case ActionInstanceStart:
		return c.Start()
	case ActionSendCtrlAltDel:
		c.mu.Lock()
		defer c.mu.Unlock()
		if err := c.runningLocked(); err != nil {
			return err
		}
		return c.machine.SendCtrlAltDel()
	case ActionFlushMetrics:
		c.mu.Lock()
		defer c.mu.Unlock()
		if err := c.runningLocked(); err != nil {
			return err
		}
		if c.metrics == nil {
			return errors.New("metrics are not configured (PUT /metrics first)")
		}
		return c.flushMetricsLocked()
	}
	return fmt.Errorf("action_type %q is not one of InstanceStart, SendCtrlAltDel, FlushMetrics", *a.ActionType)
}

// FullConfig is GET /vm/config.
func (c *Controller) FullConfig() FullConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	fc := FullConfig{Drives: slices.Clone(c.drives), NetworkInterfaces: slices.Clone(c.nets), Vsock: c.vsock, Entropy: c.entropyLocked(), Logger: c.logger}
	if fc.Drives == nil {
		fc.Drives = []Drive{}
	}
	if fc.NetworkInterfaces == nil {
		fc.NetworkInterfaces = []NetworkInterface{}
	}
	if c.cfg.Kernel != "" {
		fc.BootSource = &BootSource{KernelImagePath: ptr(c.cfg.Kernel), InitrdPath: nonEmpty(c.cfg.Initrd), BootArgs: nonEmpty(c.cfg.Cmdline)}
	}
	mc := c.machineConfigLocked()
	fc.MachineConfig = &mc
	if c.metrics != nil {
		m := c.metrics.cfg
		fc.Metrics = &m
	}
	return fc
}

// Load applies a Firecracker config file's sections in dependency order,
// each through the same checks as its API call.
func (c *Controller) Load(fc FullConfig) error {
	u := fc.Unsupported
	for _, s := range []struct {
		name string
		v    any
	}{{"balloon", u.Balloon}, {"cpu-config", u.CPUConfig}, {"mmds-config", u.MMDSConfig},
		{"pmem", u.Pmem}, {"serial", u.Serial}, {"memory-hotplug", u.MemoryHotplug}} {
		if s.v != nil {
			return fmt.Errorf("%s: not supported by this VMM", s.name)
		}
	}
	if fc.Logger != nil {
		if err := c.SetLogger(*fc.Logger); err != nil {
			return fmt.Errorf("logger: %w", err)
		}
	}
	if fc.Metrics != nil {
		if err := c.SetMetrics(*fc.Metrics); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	if fc.MachineConfig != nil {
		if err := c.SetMachineConfig(*fc.MachineConfig, false); err != nil {
			return fmt.Errorf("machine-config: %w", err)
		}
	}
	if fc.BootSource != nil {
		if err := c.SetBootSource(*fc.BootSource); err != nil {
			return fmt.Errorf("boot-source: %w", err)
		}
	}
	for i, d := range fc.Drives {
		if err := c.PutDrive("", d); err != nil {
			return fmt.Errorf("drives[%d]: %w", i, err)
		}
	}
	for i, n := range fc.NetworkInterfaces {
		if err := c.PutNetworkInterface("", n); err != nil {
			return fmt.Errorf("network-interfaces[%d]: %w", i, err)
		}
	}
	if fc.Vsock != nil {
		if err := c.SetVsock(*fc.Vsock); err != nil {
			return fmt.Errorf("vsock: %w", err)
		}
	}
	if fc.Entropy != nil {
		if err := c.SetEntropy(*fc.Entropy); err != nil {
			return fmt.Errorf("entropy: %w", err)
		}
	}
	return nil
}

// countRequest records one API request for the metrics.
func (c *Controller) countRequest(key string) {
	c.reqMu.Lock()
	c.requests[key]++
	c.reqMu.Unlock()
}

func (c *Controller) requestCounts() map[string]uint64 {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	return maps.Clone(c.requests)
}

// driveEngine is the vmm engine of a drive's validated io_engine.
func driveEngine(e *string) string {
	if e == nil {
		return ""
	}
	v, _ := ioEngine(*e) // checked by normalizeDrive
	return v
}
