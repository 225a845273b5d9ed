package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/guest/agent/protocol"
)

// fakeWorld is a fake VMM and guest: the API records the configuration,
// and InstanceStart brings up a fake agent on the vsock socket after
// bootDelay. Its processes understand a few commands: "echo ARGS",
// "cat" (stdin to stdout), "exit N", "sleep" (until signalled),
// "pid1-sleep" (until SIGKILL), "unkillable" (until the VM ends) and
// "stderr TEXT".
type fakeWorld struct {
	t         *testing.T
	bootDelay time.Duration
	noAgent   bool   // the guest never gets its agent up
	dieOnBoot string // the VMM writes this to its console and exits at InstanceStart
	wedged    bool   // the agent takes signals but never answers (a frozen guest)
	loadFail  bool   // PUT /snapshot/load fails, as for a stale snapshot
	patchFail bool   // PATCH /drives fails, as for an image another VM locked
	// resetOnRefresh: the first Refresh finds its connection reset, as
	// when the guest handles the snapshot's vsock transport reset late.
	resetOnRefresh bool

	mu         sync.Mutex
	apiSock    string
	vmm        *fakeVMM
	vsock      string
	drives     []api.Drive
	nets       []api.NetworkInterface
	cid        int64
	kernel     string
	memMiB     int64
	created    []protocol.CreateContainerRequest
	destroyed  []string
	processes  []protocol.Process
	signals    []int
	stopped    bool
	started    chan struct{} // closed when a process starts
	signalled  chan int
	startedOne sync.Once
	calls      []string // warm-run API and agent calls, in order
}

func (w *fakeWorld) call(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, fmt.Sprintf(format, args...))
}

func newFakeWorld(t *testing.T) *fakeWorld {
	return &fakeWorld{t: t, started: make(chan struct{}), signalled: make(chan int, 4)}
}

type fakeVMM struct {
	w       *fakeWorld
	console io.Writer
	done    chan struct{}
	once    sync.Once
	ln      net.Listener
	conns   []*protocol.Conn
	mu      sync.Mutex
}

func (w *fakeWorld) Launch(ctx context.Context, spec LaunchSpec) (VMM, error) {
	w.mu.Lock()
	w.apiSock = spec.APISock
	w.mu.Unlock()
	v := &fakeVMM{w: w, console: spec.Console, done: make(chan struct{})}
	w.mu.Lock()
	w.vmm = v
	w.mu.Unlock()
	return v, nil
}

func (w *fakeWorld) Client(apiSock string) API {
	if apiSock != w.apiSock {
		w.t.Errorf("client for %s, VMM serves %s", apiSock, w.apiSock)
	}
	return &fakeAPI{w: w}
}

func (v *fakeVMM) Done() <-chan struct{} { return v.done }
func (v *fakeVMM) Err() error            { <-v.done; return errors.New("exit status 1") }
func (v *fakeVMM) Stop(time.Duration) {
	v.w.mu.Lock()
	v.w.stopped = true
	v.w.mu.Unlock()
	v.exit()
}

func (v *fakeVMM) exit() {
	v.once.Do(func() {
		v.mu.Lock()
		if v.ln != nil {
			v.ln.Close()
		}
		for _, c := range v.conns {
			c.Close()
		}
		v.mu.Unlock()
		close(v.done)
	})
}

// The fake API is bound to the last launched VMM through the world.
type fakeAPI struct{ w *fakeWorld }

var _ API = (*fakeAPI)(nil)

func (a *fakeAPI) WaitReady(ctx context.Context) error { return nil }
func (a *fakeAPI) PutBootSource(ctx context.Context, kernel, initrd, bootArgs string) error {
	a.w.call("PutBootSource")
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	a.w.kernel = kernel
	return nil
}
func (a *fakeAPI) PutMachineConfig(ctx context.Context, vcpus, memMiB int64) error {
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	a.w.memMiB = memMiB
	return nil
}
func (a *fakeAPI) PutDrive(ctx context.Context, d api.Drive) error {
	a.w.call("PutDrive %s %s ro=%v", *d.DriveID, filepath.Base(*d.PathOnHost), *d.IsReadOnly)
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	a.w.drives = append(a.w.drives, d)
	return nil
}
func (a *fakeAPI) PutNetworkInterface(ctx context.Context, n api.NetworkInterface) error {
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	a.w.nets = append(a.w.nets, n)
	return nil
}
func (a *fakeAPI) PutVsock(ctx context.Context, cid int64, udsPath string) error {
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	a.w.cid, a.w.vsock = cid, udsPath
	return nil
}

func (a *fakeAPI) Pause(ctx context.Context) error  { a.w.call("Pause"); return nil }
func (a *fakeAPI) Resume(ctx context.Context) error { a.w.call("Resume"); return nil }

// CreateSnapshot writes the two files, as a VMM does.
func (a *fakeAPI) CreateSnapshot(ctx context.Context, statePath, memPath string) error {
	a.w.call("CreateSnapshot %s %s", filepath.Base(statePath), filepath.Base(memPath))
	for _, p := range []string{memPath, statePath} {
		if err := os.WriteFile(p, []byte("snapshot"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// LoadSnapshot "restores": the fake agent answers on the override
// socket at once, the guest having booted long ago.
func (a *fakeAPI) LoadSnapshot(ctx context.Context, statePath, memPath, vsockUDS string, resume bool) error {
	a.w.call("LoadSnapshot %s %s resume=%v", filepath.Base(statePath), filepath.Base(memPath), resume)
	if a.w.loadFail {
		return errors.New("cannot load the snapshot: checksum mismatch")
	}
	a.w.mu.Lock()
	a.w.vsock = vsockUDS
	a.w.mu.Unlock()
	a.w.startGuest()
	return nil
}

func (a *fakeAPI) PatchDrivePath(ctx context.Context, id, path string) error {
	a.w.call("PatchDrive %s %s", id, filepath.Base(path))
	if a.w.patchFail {
		return errors.New("the image is locked by another VM")
	}
	return nil
}

// Start "boots": the fake agent listens after bootDelay, or the VMM dies.
func (a *fakeAPI) Start(ctx context.Context) error {
	a.w.call("InstanceStart")
	a.w.startGuest()
	return nil
}

// startGuest plays the guest's boot in the VMM launched last.
func (w *fakeWorld) startGuest() {
	w.mu.Lock()
	vsock := w.vsock
	w.mu.Unlock()
	v := w.lastVMM()
	if w.dieOnBoot != "" {
		fmt.Fprint(v.console, w.dieOnBoot)
		v.exit()
		return
	}
	if w.noAgent {
		return
	}
	go func() {
		select {
		case <-time.After(w.bootDelay):
		case <-v.done:
			return
		}
		ln, err := net.Listen("unix", vsock)
		if err != nil {
			w.t.Errorf("fake vsock: %v", err)
			return
		}
		v.mu.Lock()
		v.ln = ln
		v.mu.Unlock()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go w.serveVsock(v, nc)
		}
	}()
}

func (w *fakeWorld) lastVMM() *fakeVMM {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.vmm
}

func (w *fakeWorld) serveVsock(v *fakeVMM, nc net.Conn) {
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(nc, b); err != nil {
			nc.Close()
			return
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	if string(line) != "CONNECT 1024" {
		w.t.Errorf("CONNECT line %q", line)
		nc.Close()
		return
	}
	io.WriteString(nc, "OK 1073741824\n")
	a := &fakeAgent{w: w, procs: map[string]*fakeProc{}}
	c := protocol.NewConn(nc, a.handle)
	v.mu.Lock()
	v.conns = append(v.conns, c)
	v.mu.Unlock()
}

type fakeAgent struct {
	w     *fakeWorld
	mu    sync.Mutex
	procs map[string]*fakeProc
}

type fakeProc struct {
	done   chan struct{}
	code   int
	signal chan int
}

func (a *fakeAgent) handle(ctx context.Context, c *protocol.Conn, method string, params json.RawMessage) (any, error) {
	w := a.w
	switch method {
	case protocol.MethodHello:
		return protocol.HelloResponse{Version: protocol.Version, Agent: "fake"}, nil
	case protocol.MethodRefresh:
		var req protocol.RefreshRequest
		if err := json.Unmarshal(params, &req); err != nil {
			return nil, err
		}
		if d := time.Since(time.Unix(0, req.RealtimeNanos)); d < 0 || d > time.Minute {
			w.t.Errorf("Refresh with a clock %v off", d)
		}
		w.mu.Lock()
		reset := w.resetOnRefresh
		w.resetOnRefresh = false
		w.mu.Unlock()
		if reset {
			w.call("Refresh reset")
			c.Close()
			return nil, protocol.ErrClosed
		}
		w.call("Refresh %d", len(req.Entropy))
		return protocol.Empty{}, nil
	case protocol.MethodSyncBlockDevice:
		var req protocol.SyncBlockDeviceRequest
		if err := json.Unmarshal(params, &req); err != nil {
			return nil, err
		}
		w.call("SyncBlockDevice %s %d", req.Path, req.SizeBytes)
		return protocol.Empty{}, nil
	case protocol.MethodCreateContainer:
		var req protocol.CreateContainerRequest
		if err := json.Unmarshal(params, &req); err != nil {
			return nil, err
		}
		w.mu.Lock()
		w.created = append(w.created, req)
		w.mu.Unlock()
		return protocol.CreateContainerResponse{Cgroup: "/fake"}, nil
	case protocol.MethodDestroyContainer:
		var req protocol.DestroyContainerRequest
		if err := json.Unmarshal(params, &req); err != nil {
			return nil, err
		}
		w.mu.Lock()
		w.destroyed = append(w.destroyed, req.ID)
		w.mu.Unlock()
		return protocol.Empty{}, nil
	case protocol.MethodStartProcess:
		var req protocol.StartProcessRequest
		if err := json.Unmarshal(params, &req); err != nil {
			return nil, err
		}
		w.mu.Lock()
		w.processes = append(w.processes, req.Process)
		w.mu.Unlock()
		p := &fakeProc{done: make(chan struct{}), signal: make(chan int, 1)}
		a.mu.Lock()
		a.procs[req.ContainerID] = p
		a.mu.Unlock()
		if err := a.start(c, req.Process, p); err != nil {
			return nil, err
		}
		w.startedOne.Do(func() { close(w.started) })
		return protocol.ProcessResponse{PID: 1}, nil
	case protocol.MethodSignal:
		var req protocol.SignalRequest
		if err := json.Unmarshal(params, &req); err != nil {
			return nil, err
		}
		w.mu.Lock()
		w.signals = append(w.signals, req.Signal)
		w.mu.Unlock()
		if w.wedged {
			<-ctx.Done() // the connection's end
			return nil, ctx.Err()
		}
		a.mu.Lock()
		p := a.procs[req.ContainerID]
		a.mu.Unlock()
		if p == nil {
			return nil, protocol.Errorf(protocol.CodeNotFound, "no process")
		}
		select {
		case p.signal <- req.Signal:
		default:
		}
		return protocol.Empty{}, nil
	case protocol.MethodWait:
		var req protocol.ProcessRef
		if err := json.Unmarshal(params, &req); err != nil {
			return nil, err
		}
		a.mu.Lock()
		p := a.procs[req.ContainerID]
		a.mu.Unlock()
		if p == nil {
			return nil, protocol.Errorf(protocol.CodeNotFound, "no process")
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return protocol.ExitStatus{Code: p.code}, nil
	}
	return nil, protocol.Errorf(protocol.CodeUnimplemented, "%s", method)
}

// start runs the fake process in a goroutine; its output streams are
// closed before done, as the agent does before answering Wait.
func (a *fakeAgent) start(c *protocol.Conn, spec protocol.Process, p *fakeProc) error {
	open := func(id uint32) *protocol.Stream {
		if id == 0 {
			return nil
		}
		s, err := c.OpenStream(id)
		if err != nil {
			a.w.t.Errorf("open stream %d: %v", id, err)
			return nil
		}
		return s
	}
	stdin, stdout, stderr := open(spec.StdinStream), open(spec.StdoutStream), open(spec.StderrStream)
	out := func(s *protocol.Stream, text string) {
		if s != nil {
			io.WriteString(s, text)
		}
	}
	go func() {
		defer close(p.done)
		defer func() {
			for _, s := range []*protocol.Stream{stdout, stderr} {
				if s != nil {
					s.CloseWrite()
				}
			}
		}()
		switch spec.Args[0] {
		case "echo":
			out(stdout, strings.Join(spec.Args[1:], " ")+"\n")
		case "stderr":
			out(stderr, strings.Join(spec.Args[1:], " ")+"\n")
		case "cat":
			if stdin != nil && stdout != nil {
				io.Copy(stdout, stdin)
			}
		case "exit":
			p.code, _ = strconv.Atoi(spec.Args[1])
		case "sleep":
			sig := <-p.signal
			p.code = 128 + sig
		case "unkillable":
			// Not even SIGKILL ends it (a process stuck in the kernel,
			// or an agent that lost track of it): only the VM's end.
			for {
				select {
				case <-p.signal:
				case <-c.Done():
					return
				}
			}
		case "pid1-sleep":
			// Like a PID 1 without handlers: only SIGKILL ends it.
			for sig := range p.signal {
				if sig == int(syscall.SIGKILL) {
					p.code = 128 + sig
					break
				}
			}
		}
	}()
	return nil
}

func (w *fakeWorld) options(t *testing.T, args ...string) Options {
	t.Helper()
	dir := t.TempDir()
	image, kernel := filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "vmlinux")
	for _, f := range []string{image, kernel} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	runDir := filepath.Join(dir, "run")
	if err := os.Mkdir(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return Options{
		Image: image, Kernel: kernel, MemMiB: 256, CPUs: 1, Args: args,
		BootTimeout: 20 * time.Second,
		Launcher:    w,
		TempDir:     runDir,
	}
}

// checkCleanedUp checks that the run left nothing behind.
func (w *fakeWorld) checkCleanedUp(t *testing.T, o Options) {
	t.Helper()
	ents, err := os.ReadDir(o.TempDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("run directory left behind: %v", ents)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		t.Error("VMM not stopped")
	}
}

func TestRunEchoAndConfig(t *testing.T) {
	w := newFakeWorld(t)
	w.bootDelay = 300 * time.Millisecond // the first CONNECTs are refused
	o := w.options(t, "echo", "hello")
	o.Env = []string{"A=1"}
	o.Cwd = "/tmp"
	o.Hostname = "box"
	var stdout bytes.Buffer
	o.Stdout = &stdout
	code, err := Run(context.Background(), o)
	if err != nil || code != 0 {
		t.Fatalf("Run = %d, %v", code, err)
	}
	if stdout.String() != "hello\n" {
		t.Errorf("stdout %q", stdout.String())
	}
	w.mu.Lock()
	if w.kernel != o.Kernel || w.memMiB != 256 || w.cid != GuestCID {
		t.Errorf("config kernel %q mem %d cid %d", w.kernel, w.memMiB, w.cid)
	}
	if filepath.Dir(w.vsock) != filepath.Dir(w.apiSock) || filepath.Dir(filepath.Dir(w.vsock)) != o.TempDir {
		t.Errorf("sockets %s and %s not in one run directory under %s", w.vsock, w.apiSock, o.TempDir)
	}
	if len(w.drives) != 1 || *w.drives[0].PathOnHost != o.Image || *w.drives[0].IsRootDevice || !*w.drives[0].IsReadOnly {
		t.Errorf("drives %+v", w.drives)
	}
	if len(w.created) != 1 || !reflect.DeepEqual(w.created[0].Rootfs, protocol.Rootfs{Source: "/dev/vda", Type: "ext4", Overlay: true}) || w.created[0].Hostname != "box" {
		t.Errorf("containers %+v", w.created)
	}
	if len(w.processes) != 1 || w.processes[0].Cwd != "/tmp" || len(w.processes[0].Env) != 1 || w.processes[0].Terminal {
		t.Errorf("processes %+v", w.processes)
	}
	if len(w.destroyed) != 1 || w.destroyed[0] != w.created[0].ID {
		t.Errorf("destroyed %v, created %+v", w.destroyed, w.created)
	}
	w.mu.Unlock()
	w.checkCleanedUp(t, o)
}

func TestRunExitStatusAndStderr(t *testing.T) {
	w := newFakeWorld(t)
	code, err := Run(context.Background(), w.options(t, "exit", "3"))
	if err != nil || code != 3 {
		t.Fatalf("Run = %d, %v; want 3", code, err)
	}
	w = newFakeWorld(t)
	o := w.options(t, "stderr", "oops")
	var stdout, stderr bytes.Buffer
	o.Stdout, o.Stderr = &stdout, &stderr
	if code, err := Run(context.Background(), o); err != nil || code != 0 {
		t.Fatalf("Run = %d, %v", code, err)
	}
	if stdout.Len() != 0 || stderr.String() != "oops\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

func TestRunStdin(t *testing.T) {
	w := newFakeWorld(t)
	o := w.options(t, "cat")
	in := strings.Repeat("line of input\n", 50000) // several windows' worth
	var stdout bytes.Buffer
	o.Stdin, o.Stdout = strings.NewReader(in), &stdout
	if code, err := Run(context.Background(), o); err != nil || code != 0 {
		t.Fatalf("Run = %d, %v", code, err)
	}
	if stdout.String() != in {
		t.Errorf("got %d bytes back, sent %d", stdout.Len(), len(in))
	}
	w.checkCleanedUp(t, o)
}

// TestRunSignals sends the user's signals once the command runs and
// checks how the shim escalates: forwarded signal, SIGKILL after
// KillGrace, and stopping the VM HardStopGrace after the SIGKILL or at
// the third SIGINT/SIGTERM.
func TestRunSignals(t *testing.T) {
	const (
		term = syscall.SIGTERM
		intr = syscall.SIGINT
		kill = syscall.SIGKILL
		long = time.Minute // a grace the test must not wait for
	)
	for _, tc := range []struct {
		name       string
		cmd        string
		wedged     bool // the agent never answers a signal
		sigs       []syscall.Signal
		killGrace  time.Duration
		hardGrace  time.Duration
		wantCode   int // with a nil error; -1 for ErrVMStopped
		wantAgent  []syscall.Signal
		agentLags  bool // the agent may have got only a prefix of wantAgent
		wantStderr string
		wantErr    string
		minTime    time.Duration // from the first signal to Run's return
		maxTime    time.Duration
	}{{
		name: "command ends on SIGTERM", cmd: "sleep", sigs: []syscall.Signal{term},
		killGrace: long, hardGrace: long,
		wantCode: 128 + int(term), wantAgent: []syscall.Signal{term}, maxTime: 5 * time.Second,
	}, {
		name: "command ends on SIGINT", cmd: "sleep", sigs: []syscall.Signal{intr},
		killGrace: long, hardGrace: long,
		wantCode: 128 + int(intr), wantAgent: []syscall.Signal{intr}, maxTime: 5 * time.Second,
	}, {
		name: "ignored SIGTERM, then SIGKILL", cmd: "pid1-sleep", sigs: []syscall.Signal{term},
		killGrace: 50 * time.Millisecond, hardGrace: long,
		wantCode: 128 + int(kill), wantAgent: []syscall.Signal{term, kill}, wantStderr: "sending SIGKILL",
		minTime: 50 * time.Millisecond, maxTime: 5 * time.Second,
	}, {
		name: "two ignored SIGINTs, then one SIGKILL", cmd: "pid1-sleep", sigs: []syscall.Signal{intr, intr},
		killGrace: 200 * time.Millisecond, hardGrace: long,
		wantCode: 128 + int(kill), wantAgent: []syscall.Signal{intr, intr, kill}, wantStderr: "sending SIGKILL",
		minTime: 200 * time.Millisecond, maxTime: 5 * time.Second,
	}, {
		name: "SIGKILL does not end it", cmd: "unkillable", sigs: []syscall.Signal{term},
		killGrace: 50 * time.Millisecond, hardGrace: 300 * time.Millisecond,
		wantCode: -1, wantAgent: []syscall.Signal{term, kill}, wantStderr: "sending SIGKILL",
		wantErr: "unkillable did not end 300ms after SIGKILL; stopped the VM",
		minTime: 350 * time.Millisecond, maxTime: 5 * time.Second,
	}, {
		// A call to the agent gives up only after 10 s, and the SIGKILL
		// waits behind the SIGINT's: the graces must run regardless.
		name: "wedged agent", cmd: "unkillable", wedged: true, sigs: []syscall.Signal{intr},
		killGrace: 50 * time.Millisecond, hardGrace: 300 * time.Millisecond,
		wantCode: -1, wantAgent: []syscall.Signal{intr}, wantStderr: "sending SIGKILL",
		wantErr: "unkillable did not end 300ms after SIGKILL; stopped the VM",
		minTime: 350 * time.Millisecond, maxTime: 5 * time.Second,
	}, {
		name: "third signal stops the VM", cmd: "unkillable", sigs: []syscall.Signal{intr, term, intr},
		killGrace: long, hardGrace: long,
		wantCode: -1, wantAgent: []syscall.Signal{intr, term}, agentLags: true,
		wantErr: "unkillable had not ended after 3 SIGINTs or SIGTERMs; stopped the VM",
		maxTime: 5 * time.Second,
	}, {
		name: "third signal to a wedged agent", cmd: "unkillable", wedged: true, sigs: []syscall.Signal{intr, intr, intr},
		killGrace: long, hardGrace: long,
		wantCode: -1, wantAgent: []syscall.Signal{intr}, agentLags: true,
		wantErr: "unkillable had not ended after 3 SIGINTs or SIGTERMs; stopped the VM",
		maxTime: 5 * time.Second,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			w := newFakeWorld(t)
			w.wedged = tc.wedged
			o := w.options(t, tc.cmd)
			o.KillGrace, o.HardStopGrace = tc.killGrace, tc.hardGrace
			var stderr syncBuffer // the command's stderr stream shares it
			o.Stderr = &stderr
			sigs := make(chan os.Signal, len(tc.sigs))
			o.Signals = sigs
			sent := make(chan time.Time, 1)
			go func() {
				<-w.started
				sent <- time.Now()
				for _, s := range tc.sigs {
					sigs <- s
				}
			}()
			code, err := Run(context.Background(), o)
			took := time.Since(<-sent)
			if tc.wantErr == "" {
				if err != nil || code != tc.wantCode {
					t.Fatalf("Run = %d, %v; want %d", code, err, tc.wantCode)
				}
			} else {
				if code != -1 || !errors.Is(err, ErrVMStopped) {
					t.Fatalf("Run = %d, %v; want -1 and ErrVMStopped", code, err)
				}
				if err.Error() != tc.wantErr {
					t.Errorf("error %q, want %q", err, tc.wantErr)
				}
			}
			if took < tc.minTime || took > tc.maxTime {
				t.Errorf("Run returned %v after the first signal, want %v to %v", took, tc.minTime, tc.maxTime)
			}
			if tc.wantStderr != "" && !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr %q does not say %q", stderr.String(), tc.wantStderr)
			}
			if tc.wantStderr == "" && strings.Contains(stderr.String(), "SIGKILL") {
				t.Errorf("stderr %q mentions SIGKILL", stderr.String())
			}
			// Calls the stop cut short are no failures to report.
			if strings.Contains(stderr.String(), "forwarding") {
				t.Errorf("stderr %q reports a failed forward", stderr.String())
			}
			w.mu.Lock()
			var got []syscall.Signal
			for _, s := range w.signals {
				got = append(got, syscall.Signal(s))
			}
			destroyed := len(w.destroyed)
			w.mu.Unlock()
			// Signals are forwarded in the background: the VM may stop
			// before they get there.
			if !slices.Equal(got, tc.wantAgent) && !(tc.agentLags && len(got) <= len(tc.wantAgent) && slices.Equal(got, tc.wantAgent[:len(got)])) {
				t.Errorf("agent got signals %v, want %v", got, tc.wantAgent)
			}
			// A stopped VM has no agent to destroy the container.
			if want := map[bool]int{true: 0, false: 1}[tc.wantErr != ""]; destroyed != want {
				t.Errorf("%d containers destroyed, want %d", destroyed, want)
			}
			w.checkCleanedUp(t, o)
		})
	}
}

func TestRunSignalDuringBoot(t *testing.T) {
	w := newFakeWorld(t)
	w.noAgent = true
	o := w.options(t, "echo")
	sigs := make(chan os.Signal, 1)
	o.Signals = sigs
	go func() {
		time.Sleep(200 * time.Millisecond)
		sigs <- syscall.SIGINT
	}()
	code, err := Run(context.Background(), o)
	var se *SignalError
	if !errors.As(err, &se) || code != 130 {
		t.Fatalf("Run = %d, %v; want 130 and a SignalError", code, err)
	}
	w.checkCleanedUp(t, o)
}

func TestRunVMMDiesDuringBoot(t *testing.T) {
	w := newFakeWorld(t)
	w.dieOnBoot = "booting\nKernel panic - not syncing: no init\n"
	o := w.options(t, "echo")
	code, err := Run(context.Background(), o)
	if err == nil || code != -1 {
		t.Fatalf("Run = %d, %v; want an error", code, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "VMM exited") || !strings.Contains(msg, "Kernel panic - not syncing") {
		t.Errorf("error %q does not explain the death with the console tail", msg)
	}
	w.checkCleanedUp(t, o)
}

func TestRunVMMDiesWhileRunning(t *testing.T) {
	w := newFakeWorld(t)
	o := w.options(t, "sleep")
	go func() {
		<-w.started
		w.lastVMM().exit()
	}()
	code, err := Run(context.Background(), o)
	if err == nil || code != -1 || !strings.Contains(err.Error(), "VMM exited") {
		t.Fatalf("Run = %d, %v; want the VMM's death", code, err)
	}
	w.checkCleanedUp(t, o)
}

func TestRunBootTimeout(t *testing.T) {
	w := newFakeWorld(t)
	w.noAgent = true
	o := w.options(t, "echo")
	o.BootTimeout = 300 * time.Millisecond
	_, err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "boot-timeout") {
		t.Fatalf("Run error %v; want a boot timeout", err)
	}
	w.checkCleanedUp(t, o)
}

func TestValidate(t *testing.T) {
	w := newFakeWorld(t)
	good := w.options(t, "true")
	if err := good.Validate(); err != nil {
		t.Fatalf("good options: %v", err)
	}
	for name, mod := range map[string]func(*Options){
		"no args":       func(o *Options) { o.Args = nil },
		"no image":      func(o *Options) { o.Image = "" },
		"missing image": func(o *Options) { o.Image = "/nonexistent/rootfs.ext4" },
		"image is dir":  func(o *Options) { o.Image = o.TempDir },
		"no kernel":     func(o *Options) { o.Kernel = "" },
		"small memory":  func(o *Options) { o.MemMiB = 1 },
		"zero cpus":     func(o *Options) { o.CPUs = 0 },
		"bad env":       func(o *Options) { o.Env = []string{"=x"} },
		"env no value":  func(o *Options) { o.Env = []string{"FOO"} },
		"relative cwd":  func(o *Options) { o.Cwd = "tmp" },
		"neg timeout":   func(o *Options) { o.BootTimeout = -time.Second },
	} {
		o := good
		mod(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	o := good
	o.Launcher = nil
	if _, err := Run(context.Background(), o); err == nil {
		t.Error("Run without a launcher: no error")
	}
}

func TestLogTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := range 100 {
		fmt.Fprintf(&b, "line %d\r\n", i)
	}
	os.WriteFile(path, []byte(b.String()), 0o644)
	if got := logTail(path, 3); got != "line 97\nline 98\nline 99" {
		t.Errorf("tail %q", got)
	}
	if got := logTail(filepath.Join(t.TempDir(), "none"), 3); got != "" {
		t.Errorf("tail of a missing file %q", got)
	}
}

func TestExecLauncherStopKillsGroup(t *testing.T) {
	// A "VMM" that ignores SIGTERM and has a child of its own: Stop must
	// fall back to SIGKILL and take the whole group.
	l := ExecLauncher{Path: "/bin/sh", Args: []string{"-c", `trap "" TERM; sleep 60 & echo $!; wait`, "sh"}}
	var out syncBuffer
	v, err := l.Launch(context.Background(), LaunchSpec{APISock: "unused", Console: &out})
	if err != nil {
		t.Fatal(err)
	}
	var child int
	deadline := time.Now().Add(5 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		child, _ = strconv.Atoi(strings.TrimSpace(out.String()))
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatalf("no child pid from the fake VMM: %q", out.String())
	}
	start := time.Now()
	v.Stop(200 * time.Millisecond)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("stopped after %v, before the grace period: SIGTERM was not ignored?", d)
	}
	select {
	case <-v.Done():
	default:
		t.Fatal("Stop returned before the process exited")
	}
	if err := v.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err = %v, want killed", err)
	}
	// The grandchild got the group's SIGKILL; it is init's to reap, so
	// poll until the pid is gone or a zombie.
	for time.Now().Before(deadline) {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil || strings.Contains(string(st), ") Z ") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("the VMM's child %d survived Stop", child)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunTTYAndNet(t *testing.T) {
	w := newFakeWorld(t)
	o := w.options(t, "echo", "hi")
	o.TTY = true
	o.Stdin = strings.NewReader("") // not a terminal: no raw mode to set
	var size, refill int64 = 0, 100 // disabled: size 0 is no limit
	rx := &api.RateLimiter{Ops: &api.TokenBucket{Size: &size, RefillTime: &refill}}
	o.Nets = []NIC{{Tap: "vmmnosuch1", MAC: "02:00:00:00:00:09", RxRateLimiter: rx}}
	var stdout bytes.Buffer
	o.Stdout = &stdout
	if code, err := Run(context.Background(), o); err != nil || code != 0 {
		t.Fatalf("Run = %d, %v", code, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.processes) != 1 || !w.processes[0].Terminal || w.processes[0].StderrStream != 0 {
		t.Errorf("process %+v, want a terminal and no stderr stream", w.processes)
	}
	if len(w.nets) != 1 || *w.nets[0].IfaceID != "eth0" || *w.nets[0].HostDevName != "vmmnosuch1" || *w.nets[0].GuestMAC != "02:00:00:00:00:09" ||
		w.nets[0].RxRateLimiter != rx || w.nets[0].TxRateLimiter != nil {
		t.Errorf("nets %+v", w.nets)
	}
}

func TestRunAgentLost(t *testing.T) {
	w := newFakeWorld(t)
	o := w.options(t, "sleep")
	go func() {
		<-w.started
		v := w.lastVMM()
		v.mu.Lock()
		for _, c := range v.conns {
			c.Close()
		}
		v.mu.Unlock()
	}()
	code, err := Run(context.Background(), o)
	if err == nil || code != -1 {
		t.Fatalf("Run = %d, %v; want an error", code, err)
	}
	w.checkCleanedUp(t, o)
}
