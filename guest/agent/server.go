package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/govmm/vmm/guest/agent/protocol"
	"golang.org/x/sys/unix"
)

// agentName goes into Hello and Version answers.
const agentName = "vmm-agent/1"

// agent is the state shared by every connection: containers outlive the
// connection that created them, so a shim can reconnect.
type agent struct {
	selfExe string // the binary re-executed as the init helper
	runDir  string
	cgroups *cgroupManager
	logf    func(format string, args ...any)
	spawner *spawner
	methods map[string]method // read-only after newAgent
	kernel  kernelOps         // read-only after newAgent (tests replace it before serving)

	mu         sync.Mutex
	containers map[string]*container
}

func newAgent(selfExe, runDir string, cgroups *cgroupManager, logf func(string, ...any)) *agent {
	return &agent{
		selfExe:    selfExe,
		runDir:     runDir,
		cgroups:    cgroups,
		logf:       logf,
		spawner:    newSpawner(),
		methods:    methods(),
		kernel:     realKernelOps(),
		containers: make(map[string]*container),
	}
}

// serve accepts connections until l fails.
func (a *agent) serve(l net.Listener) error {
	for {
		nc, err := l.Accept()
		if err != nil {
			return err
		}
		a.serveConn(nc)
	}
}

// serveConn starts serving one connection; it returns at once.
func (a *agent) serveConn(nc net.Conn) *protocol.Conn {
	s := &session{a: a}
	return protocol.NewConn(nc, s.handle)
}

// shutdown destroys every container (used when the agent stops).
func (a *agent) shutdown() {
	a.mu.Lock()
	all := make([]*container, 0, len(a.containers))
	for _, c := range a.containers {
		if c != nil { // nil: still being created
			all = append(all, c)
		}
	}
	a.containers = map[string]*container{}
	a.mu.Unlock()
	for _, c := range all {
		if err := c.destroy(); err != nil {
			a.logf("destroying container %s: %v", c.id, err)
		}
	}
	if a.cgroups != nil {
		a.cgroups.cleanup()
	}
	a.spawner.stop()
}

// session is one connection's state.
type session struct {
	a     *agent
	hello atomic.Bool
}

// method serves one protocol method on a session, params still encoded.
type method func(s *session, ctx context.Context, conn *protocol.Conn, params json.RawMessage) (any, error)

// methods is the agent's method table: one line per protocol method.
func methods() map[string]method {
	return map[string]method{
		protocol.MethodHello:            typed((*session).handshake),
		protocol.MethodPing:             typed((*session).ping),
		protocol.MethodVersion:          typed((*session).version),
		protocol.MethodCreateContainer:  typed((*session).createContainer),
		protocol.MethodStartProcess:     typed((*session).startProcess),
		protocol.MethodExecProcess:      typed((*session).execProcess),
		protocol.MethodSignal:           typed((*session).signal),
		protocol.MethodWait:             typed((*session).wait),
		protocol.MethodCloseStdin:       typed((*session).closeStdin),
		protocol.MethodResizeTTY:        typed((*session).resizeTTY),
		protocol.MethodDestroyContainer: typed((*session).destroyContainer),
		protocol.MethodUpdateContainer:  typed((*session).updateContainer),
		protocol.MethodContainerStats:   typed((*session).containerStats),
		protocol.MethodRefresh:          typed((*session).refresh),
		protocol.MethodSyncBlockDevice:  typed((*session).syncBlockDevice),
		protocol.MethodConfigureNetwork: typed((*session).configureNetwork),
	}
}

// typed makes a method of a handler that takes its params decoded as a Req.
func typed[Req any](h func(*session, context.Context, *protocol.Conn, Req) (any, error)) method {
	return func(s *session, ctx context.Context, conn *protocol.Conn, params json.RawMessage) (any, error) {
		req, err := decodeParams[Req](params)
		if err != nil {
			return nil, err
		}
		return h(s, ctx, conn, req)
	}
}

// decodeParams decodes a request's params as a T; absent params are {}.
// Unknown fields are ignored: newer clients may send optional fields an
// older agent does not know (protocol/README.md, "Version handshake").
func decodeParams[T any](params json.RawMessage) (T, error) {
	var v T
	if len(params) == 0 {
		params = json.RawMessage("{}")
	}
	if err := json.Unmarshal(params, &v); err != nil {
		return v, protocol.Errorf(protocol.CodeInvalidArgument, "malformed params: %v", err)
	}
	return v, nil
}

// noParams is the params of a method that takes none: whatever the caller
// sends is ignored.
type noParams struct{}

func (*noParams) UnmarshalJSON([]byte) error { return nil }

func (s *session) handle(ctx context.Context, conn *protocol.Conn, name string, params json.RawMessage) (any, error) {
	if name != protocol.MethodHello && !s.hello.Load() {
		return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "the connection must start with %s", protocol.MethodHello)
	}
	m, ok := s.a.methods[name]
	if !ok {
		return nil, protocol.Errorf(protocol.CodeUnimplemented, "unknown method %q", name)
	}
	return m(s, ctx, conn, params)
}

func (s *session) handshake(_ context.Context, _ *protocol.Conn, req protocol.HelloRequest) (any, error) {
	if req.Version != protocol.Version {
		return nil, protocol.Errorf(protocol.CodeVersion, "client speaks version %d, agent %d", req.Version, protocol.Version)
	}
	s.hello.Store(true)
	return protocol.HelloResponse{Version: protocol.Version, Agent: agentName}, nil
}

func (s *session) ping(context.Context, *protocol.Conn, noParams) (any, error) {
	return protocol.Empty{}, nil
}

func (s *session) version(context.Context, *protocol.Conn, noParams) (any, error) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return protocol.VersionResponse{ProtocolVersion: protocol.Version, Agent: agentName, Kernel: unix.ByteSliceToString(uts.Release[:])}, nil
}

func (s *session) createContainer(_ context.Context, _ *protocol.Conn, req protocol.CreateContainerRequest) (any, error) {
	return s.a.createContainer(req)
}

func (s *session) startProcess(_ context.Context, conn *protocol.Conn, req protocol.StartProcessRequest) (any, error) {
	c, err := s.a.lookup(req.ContainerID)
	if err != nil {
		return nil, err
	}
	if err := validateProcess(&req.Process); err != nil {
		return nil, err
	}
	p, err := s.a.startInit(conn, c, req.Process)
	if err != nil {
		return nil, err
	}
	return protocol.ProcessResponse{PID: p.cmd.Process.Pid}, nil
}

func (s *session) execProcess(_ context.Context, conn *protocol.Conn, req protocol.ExecProcessRequest) (any, error) {
	if req.ExecID == protocol.InitExecID || validateID(req.ExecID) != nil {
		return nil, protocol.Errorf(protocol.CodeInvalidArgument, "bad exec id %q", req.ExecID)
	}
	c, err := s.a.lookup(req.ContainerID)
	if err != nil {
		return nil, err
	}
	if err := validateProcess(&req.Process); err != nil {
		return nil, err
	}
	p, err := s.a.execIn(conn, c, req.ExecID, req.Process)
	if err != nil {
		return nil, err
	}
	return protocol.ProcessResponse{PID: p.cmd.Process.Pid}, nil
}

func (s *session) signal(_ context.Context, _ *protocol.Conn, req protocol.SignalRequest) (any, error) {
	if req.Signal < 1 || req.Signal > 64 {
		return nil, protocol.Errorf(protocol.CodeInvalidArgument, "bad signal %d", req.Signal)
	}
	p, err := s.a.lookupProcess(req.ProcessRef)
	if err != nil {
		return nil, err
	}
	return nil, p.signal(syscall.Signal(req.Signal))
}

func (s *session) wait(ctx context.Context, _ *protocol.Conn, req protocol.ProcessRef) (any, error) {
	p, err := s.a.lookupProcess(req)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
		return p.status, nil
	case <-ctx.Done():
		return nil, protocol.Errorf(protocol.CodeUnavailable, "connection closed")
	}
}

func (s *session) closeStdin(_ context.Context, _ *protocol.Conn, req protocol.ProcessRef) (any, error) {
	p, err := s.a.lookupProcess(req)
	if err != nil {
		return nil, err
	}
	return nil, p.closeStdin()
}

func (s *session) resizeTTY(_ context.Context, _ *protocol.Conn, req protocol.ResizeTTYRequest) (any, error) {
	p, err := s.a.lookupProcess(req.ProcessRef)
	if err != nil {
		return nil, err
	}
	return nil, p.resize(req.Rows, req.Cols)
}

func (s *session) destroyContainer(_ context.Context, _ *protocol.Conn, req protocol.DestroyContainerRequest) (any, error) {
	return nil, s.a.destroyContainer(req.ID)
}

func (s *session) updateContainer(_ context.Context, _ *protocol.Conn, req protocol.UpdateContainerRequest) (any, error) {
	if err := validateResources(req.Resources); err != nil {
		return nil, err
	}
	c, err := s.a.lookup(req.ID)
	if err != nil {
		return nil, err
	}
	if err := c.cg.apply(req.Resources); err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	return nil, nil
}

func (s *session) containerStats(_ context.Context, _ *protocol.Conn, req protocol.ContainerStatsRequest) (any, error) {
	c, err := s.a.lookup(req.ID)
	if err != nil {
		return nil, err
	}
	st, err := c.cg.stats()
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	return st, nil
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// validateID accepts ids that are safe as a single path element (they
// name cgroup and scratch directories).
func validateID(id string) error {
	if !idPattern.MatchString(id) {
		return protocol.Errorf(protocol.CodeInvalidArgument, "bad id %q: want 1-64 of [A-Za-z0-9_.-], not starting with . _ or -", id)
	}
	return nil
}

func hasNUL(s string) bool { return strings.IndexByte(s, 0) >= 0 }

func validateProcess(p *protocol.Process) error {
	bad := func(format string, args ...any) error {
		return protocol.Errorf(protocol.CodeInvalidArgument, format, args...)
	}
	if len(p.Args) == 0 || p.Args[0] == "" {
		return bad("process has no args")
	}
	for _, s := range p.Args {
		if hasNUL(s) {
			return bad("args contain a NUL byte")
		}
	}
	for _, kv := range p.Env {
		if hasNUL(kv) || !strings.Contains(kv, "=") || strings.HasPrefix(kv, "=") {
			return bad("bad environment entry %q", kv)
		}
	}
	if p.Cwd != "" && (!filepath.IsAbs(p.Cwd) || hasNUL(p.Cwd)) {
		return bad("cwd %q is not an absolute path", p.Cwd)
	}
	if len(p.AdditionalGIDs) > 64 {
		return bad("too many additional gids")
	}
	if p.Terminal && p.StderrStream != 0 {
		return bad("a terminal has no separate stderr: stderr_stream must be 0")
	}
	ids := map[uint32]bool{}
	for _, id := range []uint32{p.StdinStream, p.StdoutStream, p.StderrStream} {
		if id != 0 && ids[id] {
			return bad("stream %d is used twice", id)
		}
		ids[id] = true
	}
	return nil
}

func validateCreate(req *protocol.CreateContainerRequest) error {
	bad := func(format string, args ...any) error {
		return protocol.Errorf(protocol.CodeInvalidArgument, format, args...)
	}
	if err := validateID(req.ID); err != nil {
		return err
	}
	r := req.Rootfs
	if !filepath.IsAbs(r.Source) || hasNUL(r.Source) {
		return bad("rootfs source %q is not an absolute path", r.Source)
	}
	switch r.Type {
	case "bind":
		info, err := os.Stat(r.Source)
		if err != nil || !info.IsDir() {
			return bad("rootfs directory %s: not a directory", r.Source)
		}
	case "ext4", "ext2", "ext3", "xfs", "btrfs", "erofs", "squashfs":
		info, err := os.Stat(r.Source)
		if err != nil || info.Mode().Type() != os.ModeDevice {
			return bad("rootfs %s: not a block device", r.Source)
		}
	default:
		return bad("unsupported rootfs type %q", r.Type)
	}
	if len(r.Layers) > protocol.MaxLayers {
		return bad("%d rootfs layers: at most %d", len(r.Layers), protocol.MaxLayers)
	}
	for _, l := range r.Layers {
		if r.Type == "bind" {
			return bad("rootfs layers need a block device rootfs, not a bind")
		}
		// The paths go into overlayfs's option string.
		if !filepath.IsAbs(l) || hasNUL(l) || strings.ContainsAny(l, ":,") {
			return bad("rootfs layer %q is not an absolute path without ':' or ','", l)
		}
		info, err := os.Stat(l)
		if err != nil || info.Mode().Type() != os.ModeDevice {
			return bad("rootfs layer %s: not a block device", l)
		}
	}
	if r.Overlay && len(r.Layers) > 0 {
		return bad("rootfs %s: overlay (a tmpfs upper layer) and layers (a writable disk over read-only ones) exclude each other", r.Source)
	}
	if r.Overlay {
		if r.ReadOnly {
			return bad("rootfs %s: readonly and overlay exclude each other (overlay is for a writable root on a source that must not change)", r.Source)
		}
		if err := checkOverlayPath(r.Source); err != nil {
			return bad("rootfs: %v", err)
		}
	}
	if len(req.Hostname) > 64 || hasNUL(req.Hostname) {
		return bad("bad hostname %q", req.Hostname)
	}
	return validateResources(req.Resources)
}

func validateResources(res protocol.Resources) error {
	bad := func(format string, args ...any) error {
		return protocol.Errorf(protocol.CodeInvalidArgument, format, args...)
	}
	if res.MemoryMaxBytes < 0 || (res.MemoryMaxBytes > 0 && res.MemoryMaxBytes < 1<<20) {
		return bad("memory limit %d: want 0 (none) or at least 1 MiB", res.MemoryMaxBytes)
	}
	if res.CPUQuotaMicros < 0 || (res.CPUQuotaMicros > 0 && res.CPUQuotaMicros < 1000) {
		return bad("cpu quota %dus: want 0 (none) or at least 1000us", res.CPUQuotaMicros)
	}
	if res.CPUPeriodMicros != 0 && (res.CPUPeriodMicros < 1000 || res.CPUPeriodMicros > 1000000) {
		return bad("cpu period %dus: want 1000-1000000us", res.CPUPeriodMicros)
	}
	return nil
}

func (a *agent) createContainer(req protocol.CreateContainerRequest) (any, error) {
	if err := validateCreate(&req); err != nil {
		return nil, err
	}
	if a.cgroups == nil {
		return nil, protocol.Errorf(protocol.CodeFailedPrecondition, "the agent has no cgroup hierarchy")
	}
	a.mu.Lock()
	if _, ok := a.containers[req.ID]; ok {
		a.mu.Unlock()
		return nil, protocol.Errorf(protocol.CodeAlreadyExists, "container %s exists", req.ID)
	}
	// Reserve the id while the slow part runs outside the lock.
	a.containers[req.ID] = nil
	a.mu.Unlock()
	c, err := a.newContainer(req)
	a.mu.Lock()
	if err != nil {
		delete(a.containers, req.ID)
	} else {
		a.containers[req.ID] = c
	}
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return protocol.CreateContainerResponse{Cgroup: c.cg.path()}, nil
}

func (a *agent) newContainer(req protocol.CreateContainerRequest) (*container, error) {
	runDir := filepath.Join(a.runDir, req.ID)
	if err := os.MkdirAll(filepath.Join(runDir, "rootfs"), 0o700); err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "creating %s: %v", runDir, err)
	}
	cg, err := a.cgroups.create(req.ID, req.Resources)
	if err != nil {
		os.RemoveAll(runDir)
		return nil, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	return &container{id: req.ID, spec: req, cg: cg, runDir: runDir, procs: map[string]*process{}, initPidfd: -1}, nil
}

func (a *agent) lookup(id string) (*container, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.containers[id]
	if c == nil {
		return nil, protocol.Errorf(protocol.CodeNotFound, "no container %q", id)
	}
	return c, nil
}

func (a *agent) lookupProcess(ref protocol.ProcessRef) (*process, error) {
	c, err := a.lookup(ref.ContainerID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[ref.ExecID]
	if p == nil {
		return nil, protocol.Errorf(protocol.CodeNotFound, "no process %q in container %s", ref.ExecID, ref.ContainerID)
	}
	return p, nil
}

func (a *agent) destroyContainer(id string) error {
	a.mu.Lock()
	c := a.containers[id]
	if c == nil {
		a.mu.Unlock()
		return protocol.Errorf(protocol.CodeNotFound, "no container %q", id)
	}
	delete(a.containers, id)
	a.mu.Unlock()
	if err := c.destroy(); err != nil {
		return protocol.Errorf(protocol.CodeInternal, "destroying %s: %v", id, err)
	}
	return nil
}

// describe is a one-line summary for the log.
func (a *agent) describe() string {
	cg := "none"
	if a.cgroups != nil {
		cg = fmt.Sprintf("%s %s/%s", a.cgroups.version(), a.cgroups.root, a.cgroups.parent)
	}
	return fmt.Sprintf("helper %s, state %s, cgroups %s", a.selfExe, a.runDir, cg)
}
