package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/guest/testimage"
	"github.com/govmm/vmm/image"
	"github.com/govmm/vmm/internal/testenv"
)

// TestMain lets the test binary double as the init helper: the agent
// re-executes /proc/self/exe, which in a test is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == initHelperArg {
		os.Exit(runInitHelper())
	}
	// TestAgentSubprocess runs this binary as the agent itself.
	if os.Getenv(runAgentEnv) == "1" {
		os.Exit(agentMain(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// harness is one in-process agent on a Unix socket with a client.
type harness struct {
	t       *testing.T
	agent   *agent
	socket  string
	client  *client.Client
	busybox string
	cgroups *cgroupManager
}

func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "namespaces, mounts, cgroups")
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessAt(t, "/sys/fs/cgroup")
}

// newHarnessAt starts an agent whose cgroups live under cgroupRoot.
func newHarnessAt(t *testing.T, cgroupRoot string) *harness {
	t.Helper()
	requireRoot(t)
	busybox, err := testimage.FindBusybox()
	if err != nil {
		testenv.Skipf(t, "%v (package busybox-static; `make deps` installs it)", err)
	}
	cgroups, err := newCgroupManager(cgroupRoot, fmt.Sprintf("vmm-agent-test-%d-%s", os.Getpid(), sanitize(t.Name())))
	if err != nil {
		t.Fatalf("cgroups: %v", err)
	}
	h := &harness{t: t, busybox: busybox, cgroups: cgroups}
	h.agent = newAgent("/proc/self/exe", t.TempDir(), cgroups, t.Logf)
	h.socket = filepath.Join(t.TempDir(), "agent.sock")
	l, err := listenOn("unix:" + h.socket)
	if err != nil {
		t.Fatal(err)
	}
	go h.agent.serve(l)
	t.Cleanup(func() {
		l.Close()
		h.agent.shutdown()
		h.checkClean()
	})
	h.client = h.dial()
	return h
}

func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, name)
}

func (h *harness) dial() *client.Client {
	h.t.Helper()
	nc, err := net.Dial("unix", h.socket)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, hello, err := client.New(ctx, nc)
	if err != nil {
		h.t.Fatal(err)
	}
	if hello.Version != protocol.Version {
		h.t.Fatalf("hello version %d", hello.Version)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// checkClean verifies the agent left no cgroup and no mount behind.
func (h *harness) checkClean() {
	t := h.t
	dirs := []string{filepath.Join(h.cgroups.root, h.cgroups.parent)}
	if !h.cgroups.v2 {
		dirs = nil
		for _, c := range v1Controllers {
			dirs = append(dirs, filepath.Join(h.cgroups.root, c, h.cgroups.parent))
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left behind", d)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), h.agent.runDir) {
		t.Errorf("mounts under %s left behind:\n%s", h.agent.runDir, mounts)
	}
}

// rootfs makes a fresh busybox rootfs directory.
func (h *harness) rootfs() string {
	h.t.Helper()
	dir := h.t.TempDir()
	if err := testimage.Populate(dir, h.busybox); err != nil {
		h.t.Fatal(err)
	}
	return dir
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// create makes a container on a fresh rootfs.
func (h *harness) create(id string, mutate func(*protocol.CreateContainerRequest)) {
	h.t.Helper()
	req := protocol.CreateContainerRequest{
		ID:       id,
		Rootfs:   protocol.Rootfs{Source: h.rootfs(), Type: "bind"},
		Hostname: id,
	}
	if mutate != nil {
		mutate(&req)
	}
	if _, err := h.client.CreateContainer(ctxT(h.t), req); err != nil {
		h.t.Fatalf("CreateContainer %s: %v", id, err)
	}
}

// syncBuffer is a bytes.Buffer safe to write from the client's copier
// while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type result struct {
	status         protocol.ExitStatus
	stdout, stderr string
}

// run starts args as the init of a new container and waits for it.
func (h *harness) run(id string, args []string, stdin string, mutate func(*protocol.CreateContainerRequest)) result {
	h.t.Helper()
	h.create(id, mutate)
	var stdout, stderr syncBuffer
	stdio := client.Stdio{Stdout: &stdout, Stderr: &stderr}
	if stdin != "" {
		stdio.Stdin = strings.NewReader(stdin)
	}
	p, err := h.client.StartProcess(ctxT(h.t), id, protocol.Process{Args: args}, stdio)
	if err != nil {
		h.t.Fatalf("StartProcess %v: %v", args, err)
	}
	status, err := p.Wait(ctxT(h.t))
	if err != nil {
		h.t.Fatalf("Wait %v: %v", args, err)
	}
	if err := h.client.DestroyContainer(ctxT(h.t), id); err != nil {
		h.t.Errorf("DestroyContainer %s: %v", id, err)
	}
	return result{status, stdout.String(), stderr.String()}
}

func TestEchoHello(t *testing.T) {
	h := newHarness(t)
	r := h.run("echo", []string{"echo", "hello"}, "", nil)
	if r.status != (protocol.ExitStatus{}) || r.stdout != "hello\n" || r.stderr != "" {
		t.Errorf("echo hello: %+v", r)
	}
}

func TestExitCodeAndStderr(t *testing.T) {
	h := newHarness(t)
	r := h.run("exit3", []string{"sh", "-c", "echo oops >&2; exit 3"}, "", nil)
	if r.status.Code != 3 || r.status.Signal != 0 || r.stderr != "oops\n" || r.stdout != "" {
		t.Errorf("exit 3: %+v", r)
	}
}

func TestStdinRoundTrip(t *testing.T) {
	h := newHarness(t)
	r := h.run("cat", []string{"cat"}, "piped in\nand out\n", nil)
	if r.status.Code != 0 || r.stdout != "piped in\nand out\n" {
		t.Errorf("cat: %+v", r)
	}
}

// TestLargeStream pushes more than the flow-control window both ways.
func TestLargeStream(t *testing.T) {
	h := newHarness(t)
	data := make([]byte, 3<<20)
	rand.Read(data)
	h.create("big", nil)
	var out syncBuffer
	p, err := h.client.StartProcess(ctxT(t), "big", protocol.Process{Args: []string{"cat"}},
		client.Stdio{Stdin: bytes.NewReader(data), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	status, err := p.Wait(ctxT(t))
	if err != nil || status.Code != 0 {
		t.Fatalf("cat: %+v %v", status, err)
	}
	if !bytes.Equal([]byte(out.String()), data) {
		t.Errorf("cat returned %d bytes, differing from the %d sent", len(out.String()), len(data))
	}
}

func TestSignalAndExec(t *testing.T) {
	h := newHarness(t)
	h.create("sig", nil)
	ctx := ctxT(t)
	init, err := h.client.StartProcess(ctx, "sig", protocol.Process{Args: []string{"sleep", "100"}}, client.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	// An exec'd process dies of SIGTERM like any other.
	sleeper, err := h.client.ExecProcess(ctx, "sig", "sleeper", protocol.Process{Args: []string{"sleep", "100"}}, client.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sleeper.Signal(ctx, syscall.SIGTERM); err != nil {
		st, _ := sleeper.Wait(ctx)
		t.Fatalf("%v (status %+v)", err, st)
	}
	status, err := sleeper.Wait(ctx)
	if err != nil || status.Signal != int(syscall.SIGTERM) || status.Code != 128+15 {
		t.Errorf("exec'd sleep after SIGTERM: %+v %v", status, err)
	}
	// The container's PID 1 ignores signals it has no handler for
	// (Linux's rule for namespace init), except SIGKILL.
	if err := init.Signal(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	status, err = init.Wait(ctx)
	if err != nil || status.Signal != int(syscall.SIGKILL) || status.OOMKilled {
		t.Errorf("init after SIGKILL: %+v %v", status, err)
	}
	if err := init.Signal(ctx, syscall.SIGTERM); !protocol.IsCode(err, protocol.CodeFailedPrecondition) {
		t.Errorf("signal after exit: %v", err)
	}
	if err := h.client.DestroyContainer(ctx, "sig"); err != nil {
		t.Error(err)
	}
}

func TestSigtermInitWithHandler(t *testing.T) {
	h := newHarness(t)
	h.create("term", nil)
	ctx := ctxT(t)
	var out syncBuffer
	p, err := h.client.StartProcess(ctx, "term", protocol.Process{Args: []string{"sh", "-c", "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.1; done"}}, client.Stdio{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "ready") })
	if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	status, err := p.Wait(ctx)
	if err != nil || status.Code != 7 || !strings.Contains(out.String(), "got TERM") {
		t.Errorf("init with a TERM trap: %+v %v %q", status, err, out.String())
	}
	h.client.DestroyContainer(ctx, "term")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPIDNamespaceAndHostname(t *testing.T) {
	h := newHarness(t)
	host, _ := os.Hostname()
	r := h.run("box1", []string{"sh", "-c", "echo $$; cat /proc/1/comm; ls -d /proc/[0-9]* | wc -l; hostname; cat /proc/self/mountinfo | wc -l"}, "", nil)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.status.Code != 0 || len(lines) != 5 {
		t.Fatalf("%+v", r)
	}
	if lines[0] != "1" || lines[1] != "sh" {
		t.Errorf("the container's init is not PID 1 sh: %q", lines[:2])
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(lines[2])); n < 1 || n > 4 {
		t.Errorf("container sees %s processes", lines[2])
	}
	if lines[3] != "box1" {
		t.Errorf("hostname %q", lines[3])
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(lines[4])); n > 10 {
		t.Errorf("container sees %d mounts (the agent's leaked in?)", n)
	}
	if now, _ := os.Hostname(); now != host {
		t.Errorf("the agent's hostname changed from %q to %q", host, now)
	}
}

func TestExecSeesContainer(t *testing.T) {
	h := newHarness(t)
	h.create("ps", nil)
	ctx := ctxT(t)
	init, err := h.client.StartProcess(ctx, "ps", protocol.Process{Args: []string{"sleep", "100"}}, client.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	p, err := h.client.ExecProcess(ctx, "ps", "ps", protocol.Process{
		Args: []string{"sh", "-c", "ps -o pid,comm; echo $FOO; pwd; id -u; id -g; hostname"},
		Env:  []string{"FOO=bar"},
		Cwd:  "/tmp",
		UID:  65534,
		GID:  65534,
	}, client.Stdio{Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatal(err)
	}
	status, err := p.Wait(ctx)
	if err != nil || status.Code != 0 {
		t.Fatalf("exec: %+v %v %s", status, err, errOut.String())
	}
	got := out.String()
	for _, want := range []string{"1 sleep", "bar\n/tmp\n65534\n65534\nps\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("exec output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n"); n > 12 {
		t.Errorf("ps shows too many processes:\n%s", got)
	}
	if err := init.Signal(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	init.Wait(ctx)
	// The container has stopped: no more execs.
	_, err = h.client.ExecProcess(ctx, "ps", "late", protocol.Process{Args: []string{"true"}}, client.Stdio{})
	if !protocol.IsCode(err, protocol.CodeFailedPrecondition) {
		t.Errorf("exec into a stopped container: %v", err)
	}
	if err := h.client.DestroyContainer(ctx, "ps"); err != nil {
		t.Error(err)
	}
}

func TestMemoryLimitOOM(t *testing.T) {
	h := newHarness(t)
	// A string that doubles until the cgroup's 32 MiB run out.
	r := h.run("hog", []string{"sh", "-c", "a=0123456789; while :; do a=$a$a; done"}, "", func(req *protocol.CreateContainerRequest) {
		req.Resources.MemoryMaxBytes = 32 << 20
	})
	if r.status.Signal != int(syscall.SIGKILL) || !r.status.OOMKilled {
		t.Errorf("memory hog: %+v", r)
	}
	// The agent is fine and serves the next container.
	if err := h.client.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if r := h.run("after", []string{"echo", "alive"}, "", nil); r.stdout != "alive\n" {
		t.Errorf("after the OOM kill: %+v", r)
	}
}

func TestCgroupLimitsApplied(t *testing.T) {
	h := newHarness(t)
	h.create("limits", func(req *protocol.CreateContainerRequest) {
		req.Resources = protocol.Resources{MemoryMaxBytes: 48 << 20, CPUQuotaMicros: 50000, CPUPeriodMicros: 100000}
	})
	ctx := ctxT(t)
	p, err := h.client.StartProcess(ctx, "limits", protocol.Process{Args: []string{"sleep", "100"}}, client.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	h.agent.mu.Lock()
	cg := h.agent.containers["limits"].cg
	h.agent.mu.Unlock()
	read := func(name string) string {
		for _, dir := range cg.dirs {
			if data, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
				return strings.TrimSpace(string(data))
			}
		}
		return ""
	}
	procs := read("cgroup.procs")
	if procs != strconv.Itoa(p.PID) {
		t.Errorf("cgroup.procs = %q, want the init's pid %d", procs, p.PID)
	}
	if cg.v2 {
		if got := read("memory.max"); got != strconv.Itoa(48<<20) {
			t.Errorf("memory.max = %q", got)
		}
		if got := read("cpu.max"); got != "50000 100000" {
			t.Errorf("cpu.max = %q", got)
		}
	} else {
		if got := read("memory.limit_in_bytes"); got != strconv.Itoa(48<<20) {
			t.Errorf("memory.limit_in_bytes = %q", got)
		}
		if got := read("cpu.cfs_quota_us"); got != "50000" {
			t.Errorf("cpu.cfs_quota_us = %q", got)
		}
	}
	if err := h.client.DestroyContainer(ctx, "limits"); err != nil {
		t.Fatal(err)
	}
	for _, dir := range cg.dirs {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("cgroup %s survived DestroyContainer", dir)
		}
	}
	if status, err := p.Wait(ctx); !protocol.IsCode(err, protocol.CodeNotFound) {
		t.Errorf("wait after destroy: %+v %v", status, err)
	}
}

func TestParallelContainers(t *testing.T) {
	h := newHarness(t)
	var wg sync.WaitGroup
	results := make([]result, 4)
	for i := range results {
		// Each needs its own rootfs: h.run is not safe to call from
		// goroutines (t.Fatal), so prepare synchronously.
		id := fmt.Sprintf("par%d", i)
		h.create(id, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out syncBuffer
			ctx := ctxT(t)
			p, err := h.client.StartProcess(ctx, id, protocol.Process{Args: []string{"sh", "-c",
				"echo $(hostname) > /tmp/mine; sleep 0.3; cat /tmp/mine; ls -d /proc/[0-9]* | wc -l"}}, client.Stdio{Stdout: &out})
			if err != nil {
				t.Error(err)
				return
			}
			status, err := p.Wait(ctx)
			if err != nil {
				t.Error(err)
			}
			results[i] = result{status: status, stdout: out.String()}
		}()
	}
	wg.Wait()
	for i, r := range results {
		fields := strings.Fields(r.stdout)
		if r.status.Code != 0 || len(fields) != 2 || fields[0] != fmt.Sprintf("par%d", i) {
			t.Errorf("container %d: %+v", i, r)
		}
		if n, _ := strconv.Atoi(fields[len(fields)-1]); n > 4 {
			t.Errorf("container %d sees %d processes", i, n)
		}
		if err := h.client.DestroyContainer(ctxT(t), fmt.Sprintf("par%d", i)); err != nil {
			t.Error(err)
		}
	}
}

func TestTerminal(t *testing.T) {
	h := newHarness(t)
	h.create("tty", nil)
	ctx := ctxT(t)
	stdinR, stdinW := io.Pipe()
	var out syncBuffer
	p, err := h.client.StartProcess(ctx, "tty", protocol.Process{
		Args:     []string{"sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty; stty size; read line; stty size; echo got $line; ls -l /dev/console | wc -l"},
		Terminal: true, Rows: 24, Cols: 80,
	}, client.Stdio{Stdin: stdinR, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "24 80") })
	if err := p.Resize(ctx, 50, 132); err != nil {
		t.Fatal(err)
	}
	stdinW.Write([]byte("typed\n"))
	status, err := p.Wait(ctx)
	stdinW.Close()
	if err != nil || status.Code != 0 {
		t.Fatalf("tty: %+v %v %q", status, err, out.String())
	}
	got := out.String()
	for _, want := range []string{"is-a-tty\r\n", "24 80\r\n", "50 132\r\n", "got typed\r\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("tty output lacks %q: %q", want, got)
		}
	}
	if err := p.Resize(ctx, 1, 1); !protocol.IsCode(err, protocol.CodeFailedPrecondition) {
		t.Errorf("resize after exit: %v", err)
	}
	h.client.DestroyContainer(ctx, "tty")
}

func TestCloseStdin(t *testing.T) {
	h := newHarness(t)
	h.create("eof", nil)
	ctx := ctxT(t)
	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()
	var out syncBuffer
	p, err := h.client.StartProcess(ctx, "eof", protocol.Process{Args: []string{"wc", "-c"}}, client.Stdio{Stdin: stdinR, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	stdinW.Write([]byte("12345"))
	// The client's copier may still hold the bytes; wait until the
	// agent has them queued before closing.
	time.Sleep(200 * time.Millisecond)
	if err := p.CloseStdin(ctx); err != nil {
		t.Fatal(err)
	}
	status, err := p.Wait(ctx)
	if err != nil || status.Code != 0 || strings.TrimSpace(out.String()) != "5" {
		t.Errorf("wc -c after CloseStdin: %+v %v %q", status, err, out.String())
	}
	h.client.DestroyContainer(ctx, "eof")
}

func TestBadRequests(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	rootfs := h.rootfs()
	good := protocol.CreateContainerRequest{ID: "ok", Rootfs: protocol.Rootfs{Source: rootfs, Type: "bind"}}
	cases := []struct {
		name   string
		method string
		params any
		code   string
	}{
		{"unknown method", "Frobnicate", nil, protocol.CodeUnimplemented},
		{"params of the wrong type", protocol.MethodCreateContainer, []int{1, 2}, protocol.CodeInvalidArgument},
		{"path in id", protocol.MethodCreateContainer, protocol.CreateContainerRequest{ID: "../../etc", Rootfs: good.Rootfs}, protocol.CodeInvalidArgument},
		{"empty id", protocol.MethodCreateContainer, protocol.CreateContainerRequest{Rootfs: good.Rootfs}, protocol.CodeInvalidArgument},
		{"relative rootfs", protocol.MethodCreateContainer, protocol.CreateContainerRequest{ID: "x", Rootfs: protocol.Rootfs{Source: "rootfs", Type: "bind"}}, protocol.CodeInvalidArgument},
		{"rootfs not a block device", protocol.MethodCreateContainer, protocol.CreateContainerRequest{ID: "x", Rootfs: protocol.Rootfs{Source: "/etc/passwd", Type: "ext4"}}, protocol.CodeInvalidArgument},
		{"readonly overlay", protocol.MethodCreateContainer, protocol.CreateContainerRequest{ID: "x", Rootfs: protocol.Rootfs{Source: rootfs, Type: "bind", ReadOnly: true, Overlay: true}}, protocol.CodeInvalidArgument},
		{"overlay of a path with a colon", protocol.MethodCreateContainer, protocol.CreateContainerRequest{ID: "x", Rootfs: protocol.Rootfs{Source: colonDir(t), Type: "bind", Overlay: true}}, protocol.CodeInvalidArgument},
		{"bad fs type", protocol.MethodCreateContainer, protocol.CreateContainerRequest{ID: "x", Rootfs: protocol.Rootfs{Source: rootfs, Type: "nfs"}}, protocol.CodeInvalidArgument},
		{"negative memory", protocol.MethodCreateContainer, protocol.CreateContainerRequest{ID: "x", Rootfs: good.Rootfs, Resources: protocol.Resources{MemoryMaxBytes: -1}}, protocol.CodeInvalidArgument},
		{"start unknown container", protocol.MethodStartProcess, protocol.StartProcessRequest{ContainerID: "nope", Process: protocol.Process{Args: []string{"true"}}}, protocol.CodeNotFound},
		{"wait unknown", protocol.MethodWait, protocol.ProcessRef{ContainerID: "nope", ExecID: "init"}, protocol.CodeNotFound},
		{"destroy unknown", protocol.MethodDestroyContainer, protocol.DestroyContainerRequest{ID: "nope"}, protocol.CodeNotFound},
		{"signal out of range", protocol.MethodSignal, protocol.SignalRequest{ProcessRef: protocol.ProcessRef{ContainerID: "ok", ExecID: "init"}, Signal: 99}, protocol.CodeInvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := h.client.Call(ctx, tc.method, tc.params, nil)
			if !protocol.IsCode(err, tc.code) {
				t.Errorf("%s: got %v, want code %s", tc.method, err, tc.code)
			}
		})
	}

	if _, err := h.client.CreateContainer(ctx, good); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.CreateContainer(ctx, good); !protocol.IsCode(err, protocol.CodeAlreadyExists) {
		t.Errorf("duplicate create: %v", err)
	}
	procCases := []struct {
		name string
		p    protocol.Process
		code string
	}{
		{"no args", protocol.Process{}, protocol.CodeInvalidArgument},
		{"NUL in args", protocol.Process{Args: []string{"echo", "a\x00b"}}, protocol.CodeInvalidArgument},
		{"bad env", protocol.Process{Args: []string{"true"}, Env: []string{"NOEQUALS"}}, protocol.CodeInvalidArgument},
		{"relative cwd", protocol.Process{Args: []string{"true"}, Cwd: "tmp"}, protocol.CodeInvalidArgument},
		{"tty with stderr", protocol.Process{Args: []string{"true"}, Terminal: true, StderrStream: 9}, protocol.CodeInvalidArgument},
		{"same stream twice", protocol.Process{Args: []string{"true"}, StdoutStream: 7, StderrStream: 7}, protocol.CodeInvalidArgument},
		{"missing program", protocol.Process{Args: []string{"/no/such/program"}}, protocol.CodeInternal},
	}
	for _, tc := range procCases {
		t.Run(tc.name, func(t *testing.T) {
			err := h.client.Call(ctx, protocol.MethodStartProcess, protocol.StartProcessRequest{ContainerID: "ok", Process: tc.p}, nil)
			if !protocol.IsCode(err, tc.code) {
				t.Errorf("StartProcess: got %v, want code %s", err, tc.code)
			}
		})
	}
	err := h.client.Call(ctx, protocol.MethodExecProcess, protocol.ExecProcessRequest{ContainerID: "ok", ExecID: "e", Process: protocol.Process{Args: []string{"true"}}}, nil)
	if !protocol.IsCode(err, protocol.CodeFailedPrecondition) {
		t.Errorf("exec before start: %v", err)
	}
	// A failed start leaves the container startable.
	r := h.runIn("ok", []string{"echo", "still", "works"})
	if r.stdout != "still works\n" {
		t.Errorf("after bad requests: %+v", r)
	}
	h.client.DestroyContainer(ctx, "ok")

	// Raw garbage on the wire: a request frame that is not JSON gets an
	// error response; a connection without Hello gets refused calls; an
	// oversized frame ends only that connection.
	nc, err := net.Dial("unix", h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	raw := protocol.NewConn(nc, nil)
	if err := raw.Call(ctx, protocol.MethodPing, nil, nil); !protocol.IsCode(err, protocol.CodeFailedPrecondition) {
		t.Errorf("ping before hello: %v", err)
	}
	if err := raw.Call(ctx, protocol.MethodHello, protocol.HelloRequest{Version: 99}, nil); !protocol.IsCode(err, protocol.CodeVersion) {
		t.Errorf("hello with version 99: %v", err)
	}
	raw.Close()

	nc2, err := net.Dial("unix", h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	nc2.Write([]byte{0, 0, 0, 5, protocol.FrameRequest, 0, 0, 0, 1, '{', '{', '{', '{', '{'})
	reply := make([]byte, 512)
	nc2.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := nc2.Read(reply)
	if err != nil || !bytes.Contains(reply[:n], []byte(protocol.CodeInvalidArgument)) {
		t.Errorf("garbage request: reply %q, %v", reply[:n], err)
	}
	nc2.Write([]byte{0xff, 0xff, 0xff, 0xff, protocol.FrameRequest, 0, 0, 0, 2})
	if _, err := nc2.Read(reply); err == nil {
		t.Errorf("oversized frame: connection still open")
	}

	if err := h.client.Ping(ctx); err != nil {
		t.Fatalf("agent stopped serving: %v", err)
	}
	if err := h.dial().Ping(ctx); err != nil {
		t.Fatalf("agent refuses new connections: %v", err)
	}
}

// runIn starts args as the init of an existing container and waits.
func (h *harness) runIn(id string, args []string) result {
	h.t.Helper()
	var stdout, stderr syncBuffer
	p, err := h.client.StartProcess(ctxT(h.t), id, protocol.Process{Args: args}, client.Stdio{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		h.t.Fatalf("StartProcess %v: %v", args, err)
	}
	status, err := p.Wait(ctxT(h.t))
	if err != nil {
		h.t.Fatal(err)
	}
	return result{status, stdout.String(), stderr.String()}
}

func TestVersionAndPing(t *testing.T) {
	h := newHarness(t)
	v, err := h.client.Version(ctxT(t))
	if err != nil || v.ProtocolVersion != protocol.Version || v.Agent == "" {
		t.Errorf("Version: %+v %v", v, err)
	}
	if err := h.client.Ping(ctxT(t)); err != nil {
		t.Error(err)
	}
}

// TestReconnect checks a container outlives the connection that made it.
func TestReconnect(t *testing.T) {
	h := newHarness(t)
	h.create("keep", nil)
	ctx := ctxT(t)
	if _, err := h.client.StartProcess(ctx, "keep", protocol.Process{Args: []string{"sleep", "100"}}, client.Stdio{}); err != nil {
		t.Fatal(err)
	}
	h.client.Close()
	c2 := h.dial()
	var out syncBuffer
	p, err := c2.ExecProcess(ctx, "keep", "e", protocol.Process{Args: []string{"echo", "again"}}, client.Stdio{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if status, err := p.Wait(ctx); err != nil || status.Code != 0 || out.String() != "again\n" {
		t.Errorf("exec over a second connection: %+v %v %q", status, err, out.String())
	}
	if err := c2.DestroyContainer(ctx, "keep"); err != nil {
		t.Error(err)
	}
}

// TestBlockDeviceRootfs runs a container on an ext4 image attached as a
// loop device, as the guest gets one as /dev/vda.
func TestBlockDeviceRootfs(t *testing.T) {
	h := newHarness(t)
	testenv.RequireCommand(t, "losetup", "mount")
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := image.BuildFromDir(ctxT(t), h.rootfs(), img, image.Options{}); err != nil {
		testenv.Skipf(t, "cannot build an ext4 image: %v", err)
	}
	dev := loopDevice(t, img, false)
	r := h.run("blk", []string{"sh", "-c", "grep ' / ' /proc/mounts; echo ok > /written; cat /written"}, "", func(req *protocol.CreateContainerRequest) {
		req.Rootfs = protocol.Rootfs{Source: dev, Type: "ext4"}
	})
	if r.status.Code != 0 || !strings.Contains(r.stdout, "ext4") || !strings.HasSuffix(r.stdout, "ok\n") {
		t.Errorf("container on %s: %+v", dev, r)
	}
	// The mount went away with the container: the image is not busy
	// and holds what the container wrote.
	if out, err := exec.Command("debugfs", "-R", "cat /written", img).Output(); err != nil || string(out) != "ok\n" {
		t.Errorf("image after the container: %q %v", out, err)
	}

	r = h.run("blk-ro", []string{"sh", "-c", "echo no > /nope"}, "", func(req *protocol.CreateContainerRequest) {
		req.Rootfs = protocol.Rootfs{Source: dev, Type: "ext4", ReadOnly: true}
	})
	if r.status.Code == 0 || !strings.Contains(r.stderr, "Read-only") {
		t.Errorf("write to a read-only rootfs: %+v", r)
	}
}

const runAgentEnv = "VMM_AGENT_TEST_RUN_AGENT"

// TestAgentSubprocess runs the agent as its own process, as the guest
// does, through its command line, and stops it with SIGTERM.
func TestAgentSubprocess(t *testing.T) {
	requireRoot(t)
	busybox, err := testimage.FindBusybox()
	if err != nil {
		testenv.Skipf(t, "%v (package busybox-static; `make deps` installs it)", err)
	}
	dir := t.TempDir()
	socket := filepath.Join(dir, "agent.sock")
	parent := fmt.Sprintf("vmm-agent-subprocess-%d", os.Getpid())
	var stderr syncBuffer
	cmd := exec.Command("/proc/self/exe", "--listen", "unix:"+socket, "--cgroup-parent", parent, "--run-dir", filepath.Join(dir, "run"))
	cmd.Env = append(os.Environ(), runAgentEnv+"=1")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Dial until it connects: the socket file appears at bind(2), before
	// the agent's listen(2), and a connect in between is refused.
	var nc net.Conn
	waitFor(t, func() bool { nc, err = net.Dial("unix", socket); return err == nil })
	ctx := ctxT(t)
	c, _, err := client.New(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rootfs := t.TempDir()
	if err := testimage.Populate(rootfs, busybox); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateContainer(ctx, protocol.CreateContainerRequest{ID: "sub", Rootfs: protocol.Rootfs{Source: rootfs, Type: "bind"}}); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	p, err := c.StartProcess(ctx, "sub", protocol.Process{Args: []string{"echo", "hello"}}, client.Stdio{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if status, err := p.Wait(ctx); err != nil || status.Code != 0 || out.String() != "hello\n" {
		t.Errorf("echo hello: %+v %v %q", status, err, out.String())
	}
	// A running container is cleaned up when the agent is stopped.
	if _, err := c.ExecProcess(ctx, "sub", "x", protocol.Process{Args: []string{"true"}}, client.Stdio{}); !protocol.IsCode(err, protocol.CodeFailedPrecondition) {
		t.Errorf("exec into an exited container: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("agent exit: %v\n%s", err, stderr.String())
	}
	for _, c := range v1Controllers {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, parent)); err == nil {
			t.Errorf("cgroup %s/%s left behind", c, parent)
		}
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", parent)); err == nil {
		t.Errorf("cgroup %s left behind", parent)
	}
	if !strings.Contains(stderr.String(), "listening on unix:") {
		t.Errorf("agent log: %s", stderr.String())
	}
}

// TestCgroupV2 runs on a cgroup v2 hierarchy: the host's own when it is
// v2, or the unified one of a hybrid host (whose controllers are on v1,
// so only grouping, CLONE_INTO_CGROUP and cgroup.kill are exercised).
func TestCgroupV2(t *testing.T) {
	requireRoot(t)
	root := "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
		root = "/sys/fs/cgroup/unified"
		if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err != nil {
			testenv.Skip(t, "no cgroup v2 hierarchy on this host")
		}
	}
	h := newHarnessAt(t, root)
	if !h.cgroups.v2 {
		t.Fatalf("%s not detected as cgroup v2", root)
	}
	controllers, _ := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	hasMemory := strings.Contains(string(controllers), "memory")
	h.create("v2", func(req *protocol.CreateContainerRequest) {
		if hasMemory {
			req.Resources.MemoryMaxBytes = 64 << 20
		}
	})
	ctx := ctxT(t)
	init, err := h.client.StartProcess(ctx, "v2", protocol.Process{Args: []string{"sleep", "100"}}, client.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := h.client.ExecProcess(ctx, "v2", "e", protocol.Process{Args: []string{"sleep", "100"}}, client.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	h.agent.mu.Lock()
	cg := h.agent.containers["v2"].cg
	h.agent.mu.Unlock()
	procs, _ := os.ReadFile(filepath.Join(cg.path(), "cgroup.procs"))
	for _, pid := range []int{init.PID, e.PID} {
		if !strings.Contains(string(procs), strconv.Itoa(pid)) {
			t.Errorf("pid %d not started in %s (cgroup.procs %q)", pid, cg.path(), procs)
		}
	}
	if hasMemory {
		if got, _ := os.ReadFile(filepath.Join(cg.path(), "memory.max")); strings.TrimSpace(string(got)) != strconv.Itoa(64<<20) {
			t.Errorf("memory.max = %q", got)
		}
	}
	// cgroup.kill takes both down.
	if err := h.client.DestroyContainer(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg.path()); err == nil {
		t.Errorf("%s survived DestroyContainer", cg.path())
	}
	if !hasMemory {
		_, err := h.client.CreateContainer(ctx, protocol.CreateContainerRequest{
			ID: "nomem", Rootfs: protocol.Rootfs{Source: h.rootfs(), Type: "bind"},
			Resources: protocol.Resources{MemoryMaxBytes: 64 << 20},
		})
		if !protocol.IsCode(err, protocol.CodeInternal) || !strings.Contains(err.Error(), "memory is not available") {
			t.Errorf("memory limit without the controller: %v", err)
		}
	}
}
