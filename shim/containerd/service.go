package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agent "github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
)

// ServiceConfig configures a Service: one shim, one sandbox, one VM.
type ServiceConfig struct {
	Config    *Config
	Namespace string
	SandboxID string
	// Dir is the sandbox's run directory (the VM's sockets and console).
	Dir       string
	Publisher Publisher
	Logf      func(format string, args ...any)
	Launcher  Launcher
}

// Service implements containerd's Task API v2 for the containers of one
// sandbox, all in one VM: the VM boots with the sandbox's first
// container and stops when the shim shuts down.
type Service struct {
	cfg ServiceConfig
	// boot starts the VM (bootMachine with cfg.Launcher; tests swap in
	// a machine without KVM).
	boot func(ctx context.Context, spec machineSpec) (*machine, error)

	mu         sync.Mutex
	containers map[string]*container
	// creating holds the ids of Creates under way: s.mu is not held
	// across a VM boot (up to BootTimeout), which would stall every
	// other RPC, containerd's Connect on a restart included.
	creating map[string]bool
	vm       *machine
	paused   bool
	// closed is set by cleanup: no Create may add a VM after it.
	closed bool
	// life ends when the shim cleans up; a Create's boot stops with it.
	life    context.Context
	endLife context.CancelFunc
	creates sync.WaitGroup

	done     chan struct{}
	doneOnce sync.Once
}

// container is one task: its init process and execs.
type container struct {
	id, bundle string
	rootfs     *rootfsDisks
	// slots are the VM drives a container that joined the VM took
	// (none for the one the VM booted with).
	slots []int
	init  *process
	execs map[string]*process
}

// NewService returns a Service; nothing starts until Create.
func NewService(cfg ServiceConfig) *Service {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	s := &Service{cfg: cfg, containers: make(map[string]*container), creating: make(map[string]bool), done: make(chan struct{})}
	s.life, s.endLife = context.WithCancel(context.Background())
	s.boot = func(ctx context.Context, spec machineSpec) (*machine, error) {
		return bootMachine(ctx, cfg.Launcher, spec)
	}
	return s
}

// Done is closed when Shutdown asks the shim to exit.
func (s *Service) Done() <-chan struct{} { return s.done }

var _ taskAPI.TaskService = (*Service)(nil)

func errNotFound(format string, args ...any) error {
	return status.Errorf(codes.NotFound, format, args...)
}

func errPrecondition(format string, args ...any) error {
	return status.Errorf(codes.FailedPrecondition, format, args...)
}

// lookup finds a task's process (the init process for an empty execID).
func (s *Service) lookup(id, execID string) (*container, *process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, nil, errNotFound("task %s not found", id)
	}
	if execID == "" {
		return c, c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, errNotFound("exec %s of task %s not found", execID, id)
	}
	return c, p, nil
}

// Create prepares the task's disks, boots the sandbox's VM with them if
// this is its first task, and creates the container in the guest.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, err error) {
	if err := validID(r.ID); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, status.Error(codes.Unimplemented, "the vmm runtime cannot restore checkpoints")
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if spec.Process == nil || len(spec.Process.Args) == 0 {
		return nil, status.Error(codes.InvalidArgument, "the OCI spec has no process to run")
	}
	src, err := parseRootfs(r.Rootfs, r.Bundle)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	netns, err := podNetNS(spec)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.cfg.Config.checkGuest(); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}

	// The id is reserved while the disks are made and the VM boots,
	// without s.mu: other RPCs go on meanwhile.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errPrecondition("the shim is shutting down")
	}
	if _, ok := s.containers[r.ID]; ok || s.creating[r.ID] {
		s.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "task %s already exists", r.ID)
	}
	if s.vm == nil && len(s.creating) > 0 {
		s.mu.Unlock()
		return nil, status.Errorf(codes.Unavailable, "task %s: sandbox %s's VM is still booting", r.ID, s.cfg.SandboxID)
	}
	// The sandbox's first task boots the VM; a later one (a pod's
	// container) joins it, its disks swapped into spare drives.
	joined := s.vm
	s.creating[r.ID] = true
	s.creates.Add(1)
	s.mu.Unlock()
	// Registered first, so it runs last: the id stays reserved until a
	// failed Create has removed its files.
	defer func() {
		s.mu.Lock()
		delete(s.creating, r.ID)
		s.mu.Unlock()
		s.creates.Done()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.life, cancel)()

	taskDir := taskDirOf(s.cfg.Config, s.cfg.Namespace, r.ID)
	defer func() {
		if err != nil {
			if rerr := removeTaskFiles(s.cfg.Config, s.cfg.Namespace, r.ID); rerr != nil {
				s.cfg.Logf("%v", rerr)
			}
		}
	}()
	cache, err := newLayerCache(filepath.Join(s.cfg.Config.RootDir, "layers"))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if n, err := cache.Prune(ctx); err != nil || n > 0 {
		s.cfg.Logf("layer cache: pruned %d images of removed snapshots (%v)", n, err)
	}
	disks, err := prepareRootfs(ctx, src, cache, taskDir, s.cfg.Config.UpperSizeMiB)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	vm, devs, slots := joined, []string(nil), []int(nil)
	if joined == nil {
		if vm, err = s.bootFor(ctx, r.ID, spec, disks, netns); err != nil {
			return nil, err
		}
		devs = vm.deviceNames(len(disks.disks()))
		defer func() {
			if err != nil {
				vm.stop()
				os.RemoveAll(s.cfg.Dir)
			}
		}()
	} else {
		devs, slots, err = vm.attach(ctx, disks.disks())
		if errors.Is(err, errNoSlots) {
			return nil, status.Errorf(codes.ResourceExhausted, "task %s: sandbox %s's VM: %v (spare_drives and spare_writable_drives in the shim config set how many its VM boots with)", r.ID, s.cfg.SandboxID, err)
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "attaching task %s's disks to sandbox %s's VM: %v", r.ID, s.cfg.SandboxID, err)
		}
		defer func() {
			if err != nil {
				s.leaveVM(context.WithoutCancel(ctx), vm, slots)
			}
		}()
	}

	req := protocol.CreateContainerRequest{
		ID:        r.ID,
		Rootfs:    disks.agentRootfs(devs),
		Hostname:  spec.Hostname,
		Resources: agentResources(spec),
	}
	if _, err := vm.agent.CreateContainer(ctx, req); err != nil {
		return nil, status.Errorf(codes.Internal, "creating the container in the VM: %v", err)
	}
	p := newProcess(r.ID, "", processSpec(spec.Process, r.Terminal), r.Stdin, r.Stdout, r.Stderr)
	if err := p.openIO(ctx); err != nil {
		_ = vm.agent.DestroyContainer(ctx, r.ID)
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		p.closeIO()
		_ = vm.agent.DestroyContainer(ctx, r.ID)
		return nil, errPrecondition("the shim is shutting down")
	}
	if joined != nil && s.vm != joined {
		s.mu.Unlock()
		p.closeIO()
		return nil, status.Errorf(codes.Unavailable, "task %s: sandbox %s's VM stopped meanwhile", r.ID, s.cfg.SandboxID)
	}
	s.vm = vm
	s.containers[r.ID] = &container{id: r.ID, bundle: r.Bundle, rootfs: disks, slots: slots, init: p, execs: map[string]*process{}}
	s.mu.Unlock()
	s.cfg.Publisher.Publish(TopicTaskCreate, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs,
		IO:         &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint: r.Checkpoint,
	})
	return &taskAPI.CreateTaskResponse{}, nil
}

// vmSize is the VM's memory and CPUs: the sandbox's limits when it has
// them (memory limit plus the guest's own share, CPU quota rounded up),
// else the config's defaults.
func vmSize(spec *specs.Spec, cfg *Config) (memMiB, cpus int64) {
	memMiB, cpus = cfg.MemMiB, cfg.CPUs
	if spec.Linux == nil || spec.Linux.Resources == nil {
		return memMiB, cpus
	}
	res := spec.Linux.Resources
	if m := res.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		memMiB = max(memMiB, *m.Limit>>20+guestOverheadMiB)
	}
	if c := res.CPU; c != nil && c.Quota != nil && c.Period != nil && *c.Quota > 0 && *c.Period > 0 {
		cpus = max(cpus, (*c.Quota+int64(*c.Period)-1)/int64(*c.Period))
	}
	return min(memMiB, maxVMMemMiB), min(cpus, maxVMCPUs)
}

// Sizing bounds: the guest kernel and agent need room beside a
// container's memory limit, and a pod's request must not exceed what
// vmm allows.
const (
	guestOverheadMiB = 64
	maxVMMemMiB      = 64 << 10
	maxVMCPUs        = 64
)

// agentResources carries the container's cgroup limits into the guest.
func agentResources(spec *specs.Spec) protocol.Resources {
	var r protocol.Resources
	if spec.Linux == nil || spec.Linux.Resources == nil {
		return r
	}
	res := spec.Linux.Resources
	if m := res.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		r.MemoryMaxBytes = *m.Limit
	}
	if c := res.CPU; c != nil && c.Quota != nil && *c.Quota > 0 {
		r.CPUQuotaMicros = *c.Quota
		if c.Period != nil {
			r.CPUPeriodMicros = int64(*c.Period)
		}
	}
	return r
}

// processSpec maps an OCI process onto the agent's.
func processSpec(p *specs.Process, terminal bool) protocol.Process {
	out := protocol.Process{
		Args:     p.Args,
		Env:      p.Env,
		Cwd:      p.Cwd,
		UID:      p.User.UID,
		GID:      p.User.GID,
		Terminal: terminal || p.Terminal,
	}
	out.AdditionalGIDs = append(out.AdditionalGIDs, p.User.AdditionalGids...)
	if p.ConsoleSize != nil {
		out.Rows, out.Cols = uint16(p.ConsoleSize.Height), uint16(p.ConsoleSize.Width)
	}
	return out
}

// Start starts the task's init process or an exec.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.lifecycle.Lock()
	defer p.lifecycle.Unlock()
	p.mu.Lock()
	st, spec := p.status, p.spec
	p.mu.Unlock()
	if st != task.Status_CREATED {
		return nil, errPrecondition("process %s is %s, not created", describe(r.ID, r.ExecID), st)
	}
	s.mu.Lock()
	vm := s.vm
	s.mu.Unlock()
	if vm == nil {
		return nil, errPrecondition("%s has no running VM", describe(r.ID, r.ExecID))
	}

	var ap *agent.Process
	if r.ExecID == "" {
		ap, err = vm.agent.StartProcess(ctx, r.ID, spec, p.stdio())
	} else {
		ap, err = vm.agent.ExecProcess(ctx, r.ID, r.ExecID, spec, p.stdio())
	}
	if err != nil {
		return nil, status.Errorf(codes.Unknown, "starting %s: %v", describe(r.ID, r.ExecID), err)
	}
	p.mu.Lock()
	p.ap = ap
	p.pid = uint32(ap.PID)
	p.status = task.Status_RUNNING
	pid := p.pid
	p.mu.Unlock()
	if r.ExecID == "" {
		s.cfg.Publisher.Publish(TopicTaskStart, &eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
	} else {
		s.cfg.Publisher.Publish(TopicTaskExecStarted, &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	}
	go s.reap(p, ap)
	return &taskAPI.StartResponse{Pid: pid}, nil
}

// reap waits for p to exit in the guest (or the VM to die), records the
// exit and publishes it.
func (s *Service) reap(p *process, ap *agent.Process) {
	st, err := ap.Wait(context.Background())
	code := uint32(st.Code)
	if err != nil {
		s.cfg.Logf("waiting for %s: %v", describe(p.containerID, p.execID), err)
		code = 128 + uint32(syscall.SIGKILL)
	}
	if p.stdin != nil {
		p.stdin.abort()
	}
	for _, c := range []interface{ Close() error }{p.stdout, p.stderr} {
		if c != nil {
			c.Close()
		}
	}
	now := time.Now()
	if !p.setExited(code, now) {
		return
	}
	if st.OOMKilled {
		s.cfg.Publisher.Publish(TopicTaskOOM, &eventstypes.TaskOOM{ContainerID: p.containerID})
	}
	s.cfg.Publisher.Publish(TopicTaskExit, &eventstypes.TaskExit{
		ContainerID: p.containerID, ID: execOrContainer(p), Pid: p.pid, ExitStatus: code, ExitedAt: timestamppb.New(now),
	})
}

// execOrContainer is the id TaskExit carries: the exec's, or the
// container's for its init process.
func execOrContainer(p *process) string {
	if p.execID == "" {
		return p.containerID
	}
	return p.execID
}

func describe(id, execID string) string {
	if execID == "" {
		return "task " + id
	}
	return "exec " + execID + " of task " + id
}

// State reports a process's status.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st, pid, code, at := p.state()
	s.mu.Lock()
	if s.paused && st == task.Status_RUNNING {
		st = task.Status_PAUSED
	}
	s.mu.Unlock()
	resp := &taskAPI.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: pid, Status: st,
		Stdin: p.stdinPath, Stdout: p.stdoutPath, Stderr: p.stderrPath, Terminal: p.spec.Terminal,
		ExitStatus: code,
	}
	if !at.IsZero() {
		resp.ExitedAt = timestamppb.New(at)
	}
	return resp, nil
}

// Wait blocks until the process exits.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	_, _, code, at := p.state()
	return &taskAPI.WaitResponse{ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// Kill signals a process, or with All every process of the task.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sig := syscall.Signal(r.Signal)
	if sig <= 0 || sig > maxSignal {
		return nil, status.Errorf(codes.InvalidArgument, "signal %d out of range", r.Signal)
	}
	targets := []*process{p}
	if r.All && r.ExecID == "" {
		s.mu.Lock()
		for _, e := range c.execs {
			targets = append(targets, e)
		}
		s.mu.Unlock()
	}
	for i, t := range targets {
		if err := s.killOne(ctx, t, sig, i == 0); err != nil {
			return nil, err
		}
	}
	return &emptypb.Empty{}, nil
}

// killOne signals one process. For the process a Kill named, as with
// runc's shim, a finished one is NotFound and an exec not started yet
// FailedPrecondition; the execs All adds are signalled only if running
// (runc kill --all reaches the processes that exist).
func (s *Service) killOne(ctx context.Context, t *process, sig syscall.Signal, named bool) error {
	t.lifecycle.Lock()
	defer t.lifecycle.Unlock()
	t.mu.Lock()
	st, ap := t.status, t.ap
	t.mu.Unlock()
	switch {
	case !named && st != task.Status_RUNNING:
		// Not started or already finished: nothing to signal.
	case st == task.Status_CREATED && t.execID != "":
		return errPrecondition("%s: process not created", describe(t.containerID, t.execID))
	case st == task.Status_CREATED:
		// Never started: it ends here, as runc's created container
		// does when killed.
		code, now := 128+uint32(sig), time.Now()
		if t.setExited(code, now) {
			s.cfg.Publisher.Publish(TopicTaskExit, &eventstypes.TaskExit{
				ContainerID: t.containerID, ID: execOrContainer(t), ExitStatus: code, ExitedAt: timestamppb.New(now),
			})
		}
		t.closeIO()
	case st == task.Status_STOPPED:
		return errNotFound("%s: process already finished", describe(t.containerID, t.execID))
	default:
		if err := ap.Signal(ctx, sig); err != nil && !protocol.IsCode(err, protocol.CodeNotFound) {
			return status.Errorf(codes.Unknown, "signalling %s: %v", describe(t.containerID, t.execID), err)
		}
	}
	return nil
}

// maxSignal is the highest Linux signal number (SIGRTMAX).
const maxSignal = 64

// Delete removes a stopped (or never started) process; for the init
// process, the whole task with its container in the guest and its disk.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.lifecycle.Lock()
	defer p.lifecycle.Unlock()
	st, pid, code, at := p.state()
	if st != task.Status_STOPPED && st != task.Status_CREATED {
		return nil, errPrecondition("%s is still running", describe(r.ID, r.ExecID))
	}
	if st == task.Status_CREATED {
		// Never started: its waiters learn it is gone, with the status
		// of runc's created container, which runc delete kills.
		at, code = time.Now(), unstartedExit
		p.setExited(code, at)
	}
	p.closeIO()
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.ExecID != "" {
		delete(c.execs, r.ExecID)
		return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
	}
	for _, e := range c.execs {
		e.setExited(unstartedExit, at) // a no-op for those that ran
		e.closeIO()
	}
	if s.vm != nil {
		if err := s.vm.agent.DestroyContainer(ctx, r.ID); err != nil && !protocol.IsCode(err, protocol.CodeNotFound) {
			s.cfg.Logf("destroying container %s in the VM: %v", r.ID, err)
		}
	}
	delete(s.containers, r.ID)
	if len(s.containers) == 0 && len(s.creating) == 0 {
		// The VM held the task's disks open; it is stopped before they
		// are removed.
		s.stopVM()
	} else if s.vm != nil {
		// The container is gone from the guest, so its slots are free
		// for the pod's next one.
		if err := s.vm.detach(ctx, c.slots); err != nil {
			s.cfg.Logf("task %s: %v", r.ID, err)
		}
	}
	if err := removeTaskFiles(s.cfg.Config, s.cfg.Namespace, r.ID); err != nil {
		s.cfg.Logf("%v", err)
	}
	s.cfg.Publisher.Publish(TopicTaskDelete, &eventstypes.TaskDelete{
		ContainerID: r.ID, Pid: pid, ExitStatus: code, ExitedAt: timestamppb.New(at),
	})
	return &taskAPI.DeleteResponse{Pid: pid, ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// unstartedExit is the exit status of a process deleted before it ran:
// killed (128+SIGKILL).
const unstartedExit = 128 + uint32(syscall.SIGKILL)

// stopVM stops the VM and removes its run directory; s.mu is held.
func (s *Service) stopVM() {
	if s.vm == nil {
		return
	}
	s.vm.stop()
	s.vm = nil
	if err := os.RemoveAll(s.cfg.Dir); err != nil {
		s.cfg.Logf("removing %s: %v", s.cfg.Dir, err)
	}
}

// Exec adds a process to a running task; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	if err := validID(r.ExecID); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	c, initp, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, err
	}
	if st, _, _, _ := initp.state(); st != task.Status_RUNNING {
		return nil, errPrecondition("task %s is %s, not running", r.ID, st)
	}
	if r.Spec == nil {
		return nil, status.Error(codes.InvalidArgument, "exec without a process spec")
	}
	var ps specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &ps); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "exec process spec: %v", err)
	}
	if len(ps.Args) == 0 {
		return nil, status.Error(codes.InvalidArgument, "exec process spec has no args")
	}
	p := newProcess(r.ID, r.ExecID, processSpec(&ps, r.Terminal), r.Stdin, r.Stdout, r.Stderr)
	s.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		s.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "exec %s of task %s already exists", r.ExecID, r.ID)
	}
	c.execs[r.ExecID] = p
	s.mu.Unlock()
	if err := p.openIO(ctx); err != nil {
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.cfg.Publisher.Publish(TopicTaskExecAdded, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// ResizePty sets the size of a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Width > maxTermSize || r.Height > maxTermSize {
		return nil, status.Errorf(codes.InvalidArgument, "terminal size %dx%d out of range", r.Width, r.Height)
	}
	if !p.spec.Terminal {
		return nil, errPrecondition("%s has no terminal", describe(r.ID, r.ExecID))
	}
	p.lifecycle.Lock()
	p.mu.Lock()
	ap := p.ap
	if ap == nil {
		// Before Start: the size goes with the process.
		p.spec.Rows, p.spec.Cols = uint16(r.Height), uint16(r.Width)
	}
	p.mu.Unlock()
	p.lifecycle.Unlock()
	if ap == nil {
		return &emptypb.Empty{}, nil
	}
	if err := ap.Resize(ctx, uint16(r.Height), uint16(r.Width)); err != nil {
		return nil, status.Errorf(codes.Unknown, "resizing the terminal: %v", err)
	}
	return &emptypb.Empty{}, nil
}

// maxTermSize is the largest terminal dimension (a winsize field is 16 bits).
const maxTermSize = 1<<16 - 1

// CloseIO ends a process's stdin once what containerd wrote has reached it.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin && p.stdin != nil {
		p.stdin.closeInput()
	}
	return &emptypb.Empty{}, nil
}

// Pids lists the processes in the task's cgroup in the guest (their
// pids in the guest).
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	st, err := s.containerStats(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	resp := &taskAPI.PidsResponse{}
	for _, pid := range st.PIDs {
		resp.Processes = append(resp.Processes, &task.ProcessInfo{Pid: uint32(pid)})
	}
	return resp, nil
}

// containerStats asks the agent for the task's cgroup numbers.
func (s *Service) containerStats(ctx context.Context, id string) (protocol.ContainerStats, error) {
	if _, _, err := s.lookup(id, ""); err != nil {
		return protocol.ContainerStats{}, err
	}
	s.mu.Lock()
	vm := s.vm
	s.mu.Unlock()
	if vm == nil {
		return protocol.ContainerStats{}, errPrecondition("task %s has no running VM", id)
	}
	st, err := vm.agent.ContainerStats(ctx, id)
	if err != nil {
		return st, status.Errorf(codes.Unknown, "reading task %s's cgroup in the VM: %v", id, err)
	}
	return st, nil
}

// Pause freezes the whole VM (PATCH /vm), so every task of the sandbox.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, true)
}

// Resume thaws the VM.
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.ID, false)
}

func (s *Service) setPaused(ctx context.Context, id string, pause bool) (*emptypb.Empty, error) {
	if _, _, err := s.lookup(id, ""); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vm == nil {
		return nil, errPrecondition("task %s has no running VM", id)
	}
	if s.paused == pause {
		if pause {
			return nil, errPrecondition("task %s is already paused", id)
		}
		return nil, errPrecondition("task %s is not paused", id)
	}
	var err error
	if pause {
		err = s.vm.pause(ctx)
	} else {
		err = s.vm.resume(ctx)
	}
	if err != nil {
		return nil, status.Errorf(codes.Unknown, "PATCH /vm: %v", err)
	}
	s.paused = pause
	if pause {
		s.cfg.Publisher.Publish(TopicTaskPaused, &eventstypes.TaskPaused{ContainerID: id})
	} else {
		s.cfg.Publisher.Publish(TopicTaskResumed, &eventstypes.TaskResumed{ContainerID: id})
	}
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, status.Error(codes.Unimplemented, "the vmm runtime cannot checkpoint tasks")
}

// Update applies new resources (an OCI LinuxResources) to the task's
// cgroup in the guest. The VM's own size stays as it booted.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	if r.Resources == nil {
		return nil, status.Error(codes.InvalidArgument, "update without resources")
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.GetValue(), &res); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "update resources: %v", err)
	}
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, err
	}
	s.mu.Lock()
	vm := s.vm
	s.mu.Unlock()
	if vm == nil {
		return nil, errPrecondition("task %s has no running VM", r.ID)
	}
	spec := &specs.Spec{Linux: &specs.Linux{Resources: &res}}
	if err := vm.agent.UpdateContainer(ctx, r.ID, agentResources(spec)); err != nil {
		if protocol.IsCode(err, protocol.CodeInvalidArgument) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, status.Errorf(codes.Unknown, "updating task %s: %v", r.ID, err)
	}
	return &emptypb.Empty{}, nil
}

// Stats reports the task's cgroup numbers from the guest as containerd's
// cgroup v2 Metrics (what `ctr task metrics` prints).
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	st, err := s.containerStats(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	a, err := typeurl.MarshalAnyToProto(cgroupMetrics(st))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

// cgroupMetrics maps the agent's numbers onto cgroup v2 Metrics.
func cgroupMetrics(st protocol.ContainerStats) *cgroupstats.Metrics {
	m := st.MemoryStat
	c := st.CPUStat
	return &cgroupstats.Metrics{
		Pids: &cgroupstats.PidsStat{Current: st.PidsCurrent},
		CPU: &cgroupstats.CPUStat{
			UsageUsec: c["usage_usec"], UserUsec: c["user_usec"], SystemUsec: c["system_usec"],
			NrPeriods: c["nr_periods"], NrThrottled: c["nr_throttled"], ThrottledUsec: c["throttled_usec"],
		},
		Memory: &cgroupstats.MemoryStat{
			Usage: st.MemoryUsageBytes, UsageLimit: st.MemoryLimitBytes,
			Anon: m["anon"], File: m["file"], KernelStack: m["kernel_stack"], Slab: m["slab"], Sock: m["sock"],
			Shmem: m["shmem"], FileMapped: m["file_mapped"], FileDirty: m["file_dirty"], FileWriteback: m["file_writeback"],
			InactiveAnon: m["inactive_anon"], ActiveAnon: m["active_anon"], InactiveFile: m["inactive_file"],
			ActiveFile: m["active_file"], Unevictable: m["unevictable"], Pgfault: m["pgfault"], Pgmajfault: m["pgmajfault"],
		},
	}
}

// Connect reports the shim's and the task's pids.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: Version}
	if _, p, err := s.lookup(r.ID, ""); err == nil {
		_, resp.TaskPid, _, _ = p.state()
	}
	return resp, nil
}

// Shutdown ends the shim once it has no task left. Now does not
// override that, as in runc's shim: ending the shim would take the VM
// and every task still in it along, behind containerd's back.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers) + len(s.creating)
	s.mu.Unlock()
	if n > 0 {
		return &emptypb.Empty{}, nil
	}
	s.doneOnce.Do(func() { close(s.done) })
	return &emptypb.Empty{}, nil
}

// cleanup stops the VM and removes every task's files; the shim calls it
// on its way out.
func (s *Service) cleanup() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	// A Create under way stops its boot and removes what it made.
	s.endLife()
	s.creates.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopVM() // first: it holds the disks open
	for id, c := range s.containers {
		c.init.closeIO()
		for _, e := range c.execs {
			e.closeIO()
		}
		if err := removeTaskFiles(s.cfg.Config, s.cfg.Namespace, id); err != nil {
			s.cfg.Logf("%v", err)
		}
	}
	if err := os.RemoveAll(s.cfg.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.cfg.Logf("%v", fmt.Errorf("removing %s: %w", s.cfg.Dir, err))
	}
}
