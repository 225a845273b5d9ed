package containerd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/fifo"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	agent "github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/testimage"
	"github.com/govmm/vmm/internal/testenv"
)

// hostVM stands in for a VM without KVM: the real vmm-agent runs on the
// host (as root, in its own namespaces and cgroups, as in its own
// tests), and each of the VM's disks is a loop device. Everything from
// the Task API down to the agent's overlay mount is the real code; only
// vmm and the virtio-blk disks are replaced.
type hostVM struct {
	t     *testing.T
	agent *exec.Cmd
	done  chan struct{}
	ctl   *recordingControl

	mu       sync.Mutex
	loops    []string // the drives' loop devices, in drive order
	readOnly []bool
}

func (h *hostVM) Done() <-chan struct{} { return h.done }
func (h *hostVM) Err() error            { return nil }
func (h *hostVM) Stop(time.Duration) {
	select {
	case <-h.done:
		return
	default:
	}
	_ = h.agent.Process.Signal(syscall.SIGTERM) // the agent destroys its containers
	_ = h.agent.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range h.loops {
		if out, err := exec.Command("losetup", "-d", l).CombinedOutput(); err != nil {
			h.t.Errorf("losetup -d %s: %v %s", l, err, out)
		}
	}
	close(h.done)
}

// attachLoop attaches path to a new loop device.
func attachLoop(path string, readOnly bool) (string, error) {
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.Command("losetup", append(args, path)...).Output()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %v", path, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// device is the guest's name of drive i: its loop device.
func (h *hostVM) device(i int) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.loops[i]
}

// hostControl is a hostVM's REST API: PATCH /drives/{id} swaps the
// drive's image, as vmm's hot swap does. A loop device's backing file
// can only be changed for one of the same size, so the new image gets a
// new loop device, which becomes the drive's name in the "guest".
type hostControl struct {
	*recordingControl
	h *hostVM
}

func (c hostControl) PatchDrivePath(_ context.Context, id, path string) error {
	var i int
	if _, err := fmt.Sscanf(id, "disk%d", &i); err != nil {
		return fmt.Errorf("drive id %q: %w", id, err)
	}
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	if i < 0 || i >= len(c.h.loops) {
		return fmt.Errorf("no drive %s", id)
	}
	loop, err := attachLoop(path, c.h.readOnly[i])
	if err != nil {
		return err
	}
	if out, err := exec.Command("losetup", "-d", c.h.loops[i]).CombinedOutput(); err != nil {
		c.h.t.Errorf("losetup -d %s: %v %s", c.h.loops[i], err, out)
	}
	c.h.loops[i] = loop
	return c.record("patch " + id + " " + filepath.Base(path))
}

// recordingControl records PATCH /vm and PATCH /drives calls.
type recordingControl struct {
	mu    sync.Mutex
	calls []string
}

func (r *recordingControl) Pause(context.Context) error  { return r.record("pause") }
func (r *recordingControl) Resume(context.Context) error { return r.record("resume") }
func (r *recordingControl) record(s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
	return nil
}

// recordingPublisher records events in order.
type recordingPublisher struct {
	mu     sync.Mutex
	topics []string
	exits  []*eventstypes.TaskExit
}

func (p *recordingPublisher) Publish(topic string, event any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.topics = append(p.topics, topic)
	if e, ok := event.(*eventstypes.TaskExit); ok {
		p.exits = append(p.exits, e)
	}
}

func (p *recordingPublisher) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.topics...)
}

var (
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
)

// buildAgent builds vmm-agent once per test binary.
func buildAgent(t *testing.T) string {
	t.Helper()
	agentBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmm-agent-bin-")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBin = filepath.Join(dir, "vmm-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "./guest/agent")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			agentBinErr = fmt.Errorf("building the agent: %v\n%s", err, out)
		}
	})
	if agentBinErr != nil {
		t.Fatal(agentBinErr)
	}
	return agentBin
}

// hostBoot returns a boot function that starts a hostVM.
func hostBoot(t *testing.T, ctl *recordingControl) func(context.Context, machineSpec) (*machine, error) {
	bin := buildAgent(t)
	return func(ctx context.Context, spec machineSpec) (*machine, error) {
		if err := os.MkdirAll(spec.dir, 0o700); err != nil {
			return nil, err
		}
		h := &hostVM{t: t, done: make(chan struct{}), ctl: ctl}
		for _, d := range spec.drives() {
			loop, err := attachLoop(d.path, d.readOnly)
			if err != nil {
				for _, l := range h.loops {
					_ = exec.Command("losetup", "-d", l).Run()
				}
				return nil, err
			}
			h.loops = append(h.loops, loop)
			h.readOnly = append(h.readOnly, d.readOnly)
		}
		sock := filepath.Join(spec.dir, "agent.sock")
		h.agent = exec.Command(bin, "--listen", "unix:"+sock, "--cgroup-parent", fmt.Sprintf("vmm-shim-test-%d", os.Getpid()), "--run-dir", filepath.Join(spec.dir, "agent"))
		h.agent.Stderr = testWriter{t}
		if err := h.agent.Start(); err != nil {
			return nil, err
		}
		var nc net.Conn
		var err error
		for range 200 {
			if nc, err = net.Dial("unix", sock); err == nil {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		if err != nil {
			h.Stop(0)
			return nil, err
		}
		ac, _, err := agent.New(ctx, nc)
		if err != nil {
			h.Stop(0)
			return nil, err
		}
		return &machine{vm: h, ctl: hostControl{ctl, h}, agent: ac, deviceOf: h.device, slots: newDriveSlots(spec.disks, spec.spares)}, nil
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// svcRig is a Service on a hostVM with containerd's side played by the
// test: bundles, overlay mounts of a busybox layer, and stdio fifos.
type svcRig struct {
	t     *testing.T
	svc   *Service
	pub   *recordingPublisher
	ctl   *recordingControl
	dir   string
	layer string // the busybox "committed snapshot"
	cfg   *Config
}

func newSvcRig(t *testing.T) *svcRig {
	t.Helper()
	testenv.RequireRoot(t, "loop devices, mounts, namespaces, cgroups")
	testenv.RequireCommand(t, "losetup", "mount")
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	busybox, err := testimage.FindBusybox()
	if err != nil {
		testenv.Skipf(t, "%v", err)
	}
	dir, err := os.MkdirTemp("/tmp", "vmmsvc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	layer := filepath.Join(dir, "snapshots", "1", "fs")
	if err := os.MkdirAll(layer, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := testimage.Populate(layer, busybox); err != nil {
		t.Fatal(err)
	}
	// Stand-ins, so checkGuest passes: the hostVM never reads them.
	cfg := &Config{VMM: busybox, Kernel: busybox, Initrd: busybox, MemMiB: 256, CPUs: 1, UpperSizeMiB: 64,
		BootTimeout: Duration(time.Minute), RootDir: filepath.Join(dir, "root"), RunDir: filepath.Join(dir, "run")}
	r := &svcRig{t: t, pub: &recordingPublisher{}, ctl: &recordingControl{}, dir: dir, layer: layer, cfg: cfg}
	r.svc = NewService(ServiceConfig{Config: cfg, Namespace: "test", SandboxID: "sb", Dir: filepath.Join(cfg.RunDir, "sb"), Publisher: r.pub, Logf: t.Logf})
	r.svc.boot = hostBoot(t, r.ctl)
	t.Cleanup(r.svc.cleanup)
	return r
}

// stdio is one process's fifos, read as containerd's cio reads them.
type stdio struct {
	stdin, stdout, stderr string
	in                    io.WriteCloser
	out, errOut           chan string
}

func (r *svcRig) fifos(name string, withStdin, terminal bool) *stdio {
	r.t.Helper()
	d := filepath.Join(r.dir, "fifo", name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		r.t.Fatal(err)
	}
	s := &stdio{stdout: filepath.Join(d, "stdout"), out: make(chan string, 1)}
	ctx := context.Background()
	read := func(path string, ch chan string) {
		f, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			r.t.Fatal(err)
		}
		go func() {
			b, _ := io.ReadAll(f)
			f.Close()
			ch <- string(b)
		}()
	}
	read(s.stdout, s.out)
	if !terminal {
		s.stderr = filepath.Join(d, "stderr")
		s.errOut = make(chan string, 1)
		read(s.stderr, s.errOut)
	}
	if withStdin {
		s.stdin = filepath.Join(d, "stdin")
		w, err := fifo.OpenFifo(ctx, s.stdin, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			r.t.Fatal(err)
		}
		s.in = w
	}
	return s
}

func (s *stdio) output(t *testing.T) (string, string) {
	t.Helper()
	get := func(ch chan string) string {
		if ch == nil {
			return ""
		}
		select {
		case v := <-ch:
			return v
		case <-time.After(30 * time.Second):
			t.Fatal("output did not end")
			return ""
		}
	}
	return get(s.out), get(s.errOut)
}

// create makes a bundle and a task running args on the busybox layer.
func (r *svcRig) create(id string, args []string, io *stdio, terminal bool) {
	r.t.Helper()
	bundle := filepath.Join(r.dir, "bundles", id)
	upper, work := filepath.Join(r.dir, "snapshots", id, "fs"), filepath.Join(r.dir, "snapshots", id, "work")
	for _, d := range []string{bundle, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			r.t.Fatal(err)
		}
	}
	writeSpec(r.t, bundle, &specs.Spec{Version: specs.Version, Hostname: id, Process: &specs.Process{
		Args: args, Env: []string{"PATH=/bin"}, Cwd: "/", Terminal: terminal,
	}})
	_, err := r.svc.Create(ctxTest(r.t), &taskAPI.CreateTaskRequest{
		ID: id, Bundle: bundle, Terminal: terminal,
		Rootfs: []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{
			"index=off", "workdir=" + work, "upperdir=" + upper, "lowerdir=" + r.layer,
		}}},
		Stdin: io.stdin, Stdout: io.stdout, Stderr: io.stderr,
	})
	if err != nil {
		r.t.Fatalf("Create %s: %v", id, err)
	}
}

func ctxTest(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (r *svcRig) wait(id, execID string) uint32 {
	r.t.Helper()
	resp, err := r.svc.Wait(ctxTest(r.t), &taskAPI.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		r.t.Fatalf("Wait %s %s: %v", id, execID, err)
	}
	return resp.ExitStatus
}

// TestServiceRunsTasks drives the Task API as containerd does for `ctr
// run`, `ctr task exec`, `ctr task kill`, pause/resume and stdin with
// CloseIO, on one sandbox, and checks the outputs, exit statuses,
// states, events and that Delete and Shutdown leave nothing behind.
func TestServiceRunsTasks(t *testing.T) {
	r := newSvcRig(t)
	ctx := ctxTest(t)

	// The sandbox's task: a long-running init, with stdin.
	io0 := r.fifos("main", true, false)
	r.create("main", []string{"sh", "-c", "echo started; tr a-z A-Z; echo done >&2; exit 7"}, io0, false)
	if st, err := r.svc.State(ctx, &taskAPI.StateRequest{ID: "main"}); err != nil || st.Status != task.Status_CREATED {
		t.Fatalf("State after Create: %v %v", st, err)
	}
	if _, err := r.svc.Start(ctx, &taskAPI.StartRequest{ID: "main"}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if st, err := r.svc.State(ctx, &taskAPI.StateRequest{ID: "main"}); err != nil || st.Status != task.Status_RUNNING || st.Pid == 0 {
		t.Fatalf("State after Start: %v %v", st, err)
	}
	conn, _ := r.svc.Connect(ctx, &taskAPI.ConnectRequest{ID: "main"})
	if conn.ShimPid != uint32(os.Getpid()) || conn.TaskPid == 0 {
		t.Errorf("Connect = %v", conn)
	}

	// An exec while it runs.
	ioE := r.fifos("exec1", false, false)
	procSpec, _ := json.Marshal(specs.Process{Args: []string{"sh", "-c", "echo exec in $(hostname); cat /proc/1/comm"}, Cwd: "/"})
	if _, err := r.svc.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "main", ExecID: "exec1", Stdout: ioE.stdout, Stderr: ioE.stderr,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: procSpec}}); err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if _, err := r.svc.Start(ctx, &taskAPI.StartRequest{ID: "main", ExecID: "exec1"}); err != nil {
		t.Fatalf("Start exec: %v", err)
	}
	if code := r.wait("main", "exec1"); code != 0 {
		t.Errorf("exec exit %d", code)
	}
	if out, _ := ioE.output(t); out != "exec in main\nsh\n" {
		t.Errorf("exec stdout %q", out)
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "main", ExecID: "exec1"}); err != nil {
		t.Errorf("Delete exec: %v", err)
	}

	// Pause and resume the VM.
	if _, err := r.svc.Pause(ctx, &taskAPI.PauseRequest{ID: "main"}); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if st, _ := r.svc.State(ctx, &taskAPI.StateRequest{ID: "main"}); st.Status != task.Status_PAUSED {
		t.Errorf("State while paused: %v", st.Status)
	}
	if _, err := r.svc.Pause(ctx, &taskAPI.PauseRequest{ID: "main"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second Pause: %v", err)
	}
	if _, err := r.svc.Resume(ctx, &taskAPI.ResumeRequest{ID: "main"}); err != nil {
		t.Fatalf("Resume: %v", err)
	}

	// Stdin, then CloseIO: tr must see all of it, then EOF.
	if _, err := io0.in.Write([]byte("hello vmm\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.CloseIO(ctx, &taskAPI.CloseIORequest{ID: "main", Stdin: true}); err != nil {
		t.Fatalf("CloseIO: %v", err)
	}
	if code := r.wait("main", ""); code != 7 {
		t.Errorf("exit status %d, want 7", code)
	}
	out, errOut := io0.output(t)
	if out != "started\nHELLO VMM\n" || errOut != "done\n" {
		t.Errorf("stdout %q stderr %q", out, errOut)
	}
	if _, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: "main", Signal: 9}); status.Code(err) != codes.NotFound {
		t.Errorf("Kill after exit: %v, want NotFound", err)
	}
	if _, err := r.svc.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: "main"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.svc.Done():
		t.Fatal("Shutdown with a task left ended the shim")
	default:
	}
	del, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "main"})
	if err != nil || del.ExitStatus != 7 {
		t.Fatalf("Delete: %v %v", del, err)
	}
	if _, err := os.Stat(taskDirOf(r.cfg, "test", "main")); !os.IsNotExist(err) {
		t.Errorf("task directory after Delete: %v", err)
	}
	if _, err := os.Stat(r.svc.cfg.Dir); !os.IsNotExist(err) {
		t.Errorf("VM directory after the last Delete: %v", err)
	}
	if _, err := r.svc.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: "main"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.svc.Done():
	default:
		t.Error("Shutdown without tasks did not end the shim")
	}
	want := []string{TopicTaskCreate, TopicTaskStart, TopicTaskExecAdded, TopicTaskExecStarted, TopicTaskExit, TopicTaskPaused, TopicTaskResumed, TopicTaskExit, TopicTaskDelete}
	if got := r.pub.seen(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events %v, want %v", got, want)
	}
	if calls := strings.Join(r.ctl.calls, " "); calls != "pause resume" {
		t.Errorf("PATCH /vm calls: %s", calls)
	}
	if len(r.pub.exits) == 2 && (r.pub.exits[0].ID != "exec1" || r.pub.exits[1].ID != "main" || r.pub.exits[1].ExitStatus != 7) {
		t.Errorf("exit events %v", r.pub.exits)
	}
	if m := mountsUnder(r.dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// TestServiceKillAndTerminal: SIGTERM to a shell that traps it, SIGKILL
// to a sleep (exit 137), and a terminal task whose output comes on
// stdout alone, resized before and after Start.
func TestServiceKillAndTerminal(t *testing.T) {
	r := newSvcRig(t)
	ctx := ctxTest(t)
	io0 := r.fifos("k", false, true)
	r.create("k", []string{"sh", "-c", "trap 'stty size; echo term; exit 3' TERM; stty size; sleep 100 & wait"}, io0, true)
	if _, err := r.svc.ResizePty(ctx, &taskAPI.ResizePtyRequest{ID: "k", Width: 100, Height: 40}); err != nil {
		t.Fatalf("ResizePty before Start: %v", err)
	}
	if _, err := r.svc.Start(ctx, &taskAPI.StartRequest{ID: "k"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // let the shell print its size and set its trap
	if _, err := r.svc.ResizePty(ctx, &taskAPI.ResizePtyRequest{ID: "k", Width: 120, Height: 50}); err != nil {
		t.Errorf("ResizePty: %v", err)
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "k"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Delete while running: %v", err)
	}
	if _, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: "k", Signal: uint32(syscall.SIGTERM)}); err != nil {
		t.Fatalf("Kill TERM: %v", err)
	}
	if code := r.wait("k", ""); code != 3 {
		t.Errorf("exit after SIGTERM %d, want 3", code)
	}
	out, _ := io0.output(t)
	if want := "40 100\r\n50 120\r\nterm\r\n"; out != want {
		t.Errorf("terminal output %q, want %q: the size before and after the resize, then the trap's line", out, want)
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "k"}); err != nil {
		t.Fatal(err)
	}

	io1 := r.fifos("s", false, false)
	r.create("s", []string{"sleep", "100"}, io1, false)
	if _, err := r.svc.Start(ctx, &taskAPI.StartRequest{ID: "s"}); err != nil {
		t.Fatal(err)
	}
	// Pids, Update and Stats read and change the task's cgroup in the guest.
	pids, err := r.svc.Pids(ctx, &taskAPI.PidsRequest{ID: "s"})
	if err != nil || len(pids.Processes) != 1 || pids.Processes[0].Pid == 0 {
		t.Errorf("Pids: %v %v, want the sleep", pids, err)
	}
	limit, _ := json.Marshal(specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(48 << 20))}})
	if _, err := r.svc.Update(ctx, &taskAPI.UpdateTaskRequest{ID: "s", Resources: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: limit}}); err != nil {
		t.Errorf("Update: %v", err)
	}
	stats, err := r.svc.Stats(ctx, &taskAPI.StatsRequest{ID: "s"})
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	v, err := typeurl.UnmarshalAny(stats.Stats)
	if err != nil {
		t.Fatalf("Stats answer: %v", err)
	}
	m, ok := v.(*cgroupstats.Metrics)
	if !ok || m.Pids.Current != 1 || m.Memory.UsageLimit != 48<<20 || m.Memory.Usage == 0 {
		t.Errorf("Stats = %v (%T), want 1 pid and the 48 MiB limit", v, v)
	}
	if stats.Stats.TypeUrl != "io.containerd.cgroups.v2.Metrics" {
		t.Errorf("Stats type %q, which ctr task metrics would not decode", stats.Stats.TypeUrl)
	}

	if _, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: "s", Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
		t.Fatalf("Kill KILL: %v", err)
	}
	if code := r.wait("s", ""); code != 137 {
		t.Errorf("exit after SIGKILL %d, want 137", code)
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.Checkpoint(ctx, &taskAPI.CheckpointTaskRequest{ID: "s"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Checkpoint: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestServiceKillDuringStart: a Kill that arrives while Start waits for
// the agent acts on the started process (runc's shim serialises them
// too), instead of ending a process Start then runs, which recorded its
// exit twice.
func TestServiceKillDuringStart(t *testing.T) {
	r := newSvcRig(t)
	ctx := ctxTest(t)
	io0 := r.fifos("ks", false, false)
	r.create("ks", []string{"sleep", "100"}, io0, false)
	agentProc := r.svc.vm.vm.(*hostVM).agent.Process
	// A stopped agent holds Start in its call.
	if err := agentProc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	started, killed := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := r.svc.Start(ctx, &taskAPI.StartRequest{ID: "ks"})
		started <- err
	}()
	time.Sleep(300 * time.Millisecond)
	go func() {
		_, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: "ks", Signal: uint32(syscall.SIGKILL)})
		killed <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := agentProc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := <-started; err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := <-killed; err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if code := r.wait("ks", ""); code != 137 {
		t.Errorf("exit %d, want 137 (the started sleep, killed)", code)
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "ks"}); err != nil {
		t.Fatal(err)
	}
	r.pub.mu.Lock()
	defer r.pub.mu.Unlock()
	if len(r.pub.exits) != 1 || r.pub.exits[0].Pid == 0 {
		t.Errorf("exit events %v, want one, of the started process", r.pub.exits)
	}
}

// TestServiceKillSemantics: Kill answers as runc's shim does, which
// containerd and CRI rely on: an exec not started is FailedPrecondition
// and All leaves it alone, a finished process is NotFound with or
// without All.
func TestServiceKillSemantics(t *testing.T) {
	r := newSvcRig(t)
	ctx := ctxTest(t)
	io0 := r.fifos("kx", false, false)
	r.create("kx", []string{"sleep", "100"}, io0, false)
	if _, err := r.svc.Start(ctx, &taskAPI.StartRequest{ID: "kx"}); err != nil {
		t.Fatal(err)
	}
	procSpec, _ := json.Marshal(specs.Process{Args: []string{"true"}, Cwd: "/"})
	if _, err := r.svc.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "kx", ExecID: "e1",
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: procSpec}}); err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if _, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: "kx", ExecID: "e1", Signal: uint32(syscall.SIGKILL)}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Kill of an exec not started: %v, want FailedPrecondition", err)
	}
	if _, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: "kx", Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
		t.Fatalf("Kill All: %v", err)
	}
	if code := r.wait("kx", ""); code != 137 {
		t.Errorf("exit %d, want 137", code)
	}
	if st, err := r.svc.State(ctx, &taskAPI.StateRequest{ID: "kx", ExecID: "e1"}); err != nil || st.Status != task.Status_CREATED {
		t.Errorf("the exec not started after Kill All: %v %v, want created", st, err)
	}
	for _, all := range []bool{false, true} {
		if _, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: "kx", Signal: uint32(syscall.SIGKILL), All: all}); status.Code(err) != codes.NotFound {
			t.Errorf("Kill (All %v) after the exit: %v, want NotFound", all, err)
		}
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "kx", ExecID: "e1"}); err != nil {
		t.Errorf("Delete exec: %v", err)
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "kx"}); err != nil {
		t.Fatal(err)
	}
	r.pub.mu.Lock()
	defer r.pub.mu.Unlock()
	if len(r.pub.exits) != 1 || r.pub.exits[0].ID != "kx" {
		t.Errorf("exit events %v, want only the init's", r.pub.exits)
	}
}

// TestServiceDeleteUnstarted: deleting a task that never started (ctr
// run whose Start failed, CRI removing a created container) ends the
// Waits containerd already made on it and on its execs, instead of
// leaving them blocked for good.
func TestServiceDeleteUnstarted(t *testing.T) {
	r := newSvcRig(t)
	ctx := ctxTest(t)
	io0 := r.fifos("du", false, false)
	r.create("du", []string{"true"}, io0, false)
	waited := make(chan *taskAPI.WaitResponse, 1)
	go func() {
		resp, _ := r.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "du"})
		waited <- resp
	}()
	time.Sleep(100 * time.Millisecond) // let Wait block
	del, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "du"})
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	select {
	case resp := <-waited:
		if resp == nil || resp.ExitStatus != del.ExitStatus || resp.ExitStatus != 128+uint32(syscall.SIGKILL) || !resp.ExitedAt.AsTime().Equal(del.ExitedAt.AsTime()) {
			t.Errorf("Wait = %v, Delete = %v: want the same exit, 137", resp, del)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait still blocked after Delete of the task that never started")
	}
}
