package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
)

// apiDir returns a short private directory for API sockets (t.TempDir
// embeds the test name and can overflow sun_path's 108 bytes).
func apiDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmmapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func apiClient(t *testing.T, sock string) *client.Client {
	t.Helper()
	c := client.New(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func expectState(t *testing.T, c *client.Client, want string) {
	t.Helper()
	info, err := c.InstanceInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State != want {
		t.Fatalf("state %q, want %q", info.State, want)
	}
}

func requireGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket %s still there after exit (%v)", path, err)
	}
}

// TestAPIBootPauseResume boots the test guest entirely through the API,
// pauses and resumes it, talks to it over the console, and checks that
// the process exits with the guest's status and removes its socket.
func TestAPIBootPauseResume(t *testing.T) {
	requireKVM(t)
	ctx := context.Background()
	sock := filepath.Join(apiDir(t), "api.sock")
	v := Start(t, "--api-sock", sock, "--debug-exit", "--id", "it-vm")
	c := apiClient(t, sock)

	info, err := c.InstanceInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != api.StateNotStarted || info.ID != "it-vm" || info.AppName == "" || info.VMMVersion == "" {
		t.Fatalf("instance info before start: %+v", info)
	}
	if err := c.PutBootSource(ctx, filepath.Join(shared.testGuest, "testguest.elf"), "", "echo=1 exit=9"); err != nil {
		t.Fatal(err)
	}
	if err := c.PutMachineConfig(ctx, 2, 128); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, c, api.StateRunning)
	if err := c.Start(ctx); !client.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("second InstanceStart: %v, want a 400", err)
	}
	m, off := v.WaitFor(regexp.MustCompile(`testguest: cpus=(\d+)`), 0, testGuestTimeout)
	if m[1] != "2" {
		t.Errorf("guest sees %s CPUs, want 2 from PUT /machine-config", m[1])
	}
	_, off = v.WaitFor(regexp.MustCompile(`testguest: ready>`), off, testGuestTimeout)

	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, c, api.StatePaused)
	// Input typed while paused waits for the resume.
	v.Type("hello api\r")
	time.Sleep(300 * time.Millisecond)
	if strings.Contains(v.Output()[off:], "echo") {
		t.Fatal("guest echoed while paused")
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	v.WaitFor(regexp.MustCompile(`testguest: echo hello api\r?\n`), off, testGuestTimeout)
	if code := v.Wait(testGuestTimeout); code != 9 {
		t.Errorf("vmm exit status %d, want the guest's 9", code)
	}
	requireGone(t, sock)
}

// TestAPIStartFailureIsReported checks that a config the machine builder
// refuses (here a "kernel" that is not one) is a 400 naming the problem,
// and the instance stays Not started; SIGTERM then ends the process and
// removes the socket.
func TestAPIStartFailureIsReported(t *testing.T) {
	requireKVM(t)
	ctx := context.Background()
	dir := apiDir(t)
	sock := filepath.Join(dir, "api.sock")
	bogus := filepath.Join(dir, "bogus")
	if err := os.WriteFile(bogus, []byte(strings.Repeat("not a kernel ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	v := Start(t, "--api-sock", sock)
	c := apiClient(t, sock)
	if err := c.PutBootSource(ctx, bogus, "", ""); err != nil {
		t.Fatal(err)
	}
	err := c.Start(ctx)
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || !strings.Contains(apiErr.Message, "kernel") {
		t.Fatalf("InstanceStart with a bad kernel: %v, want a 400 about the kernel", err)
	}
	expectState(t, c, api.StateNotStarted)
	v.Signal(syscall.SIGTERM)
	if code := v.Wait(time.Minute); code != 130 {
		t.Errorf("exit status after SIGTERM %d, want 130", code)
	}
	requireGone(t, sock)
}

// TestAPISigtermStopsRunningVM checks SIGTERM stops a running guest and
// removes the socket.
func TestAPISigtermStopsRunningVM(t *testing.T) {
	requireKVM(t)
	ctx := context.Background()
	sock := filepath.Join(apiDir(t), "api.sock")
	v := Start(t, "--api-sock", sock, "--debug-exit")
	c := apiClient(t, sock)
	if err := c.PutBootSource(ctx, filepath.Join(shared.testGuest, "testguest.elf"), "", "echo=1 exit=9"); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v.WaitFor(regexp.MustCompile(`testguest: ready>`), 0, testGuestTimeout)
	// The guest polls with interrupts off, so this only checks the action
	// reaches a real machine's keyboard controller and answers 204.
	if err := c.Action(ctx, api.ActionSendCtrlAltDel); err != nil {
		t.Fatal(err)
	}
	v.Signal(syscall.SIGTERM)
	if code := v.Wait(time.Minute); code != 130 {
		t.Errorf("exit status after SIGTERM %d, want 130", code)
	}
	requireGone(t, sock)
}

// TestConfigFileBoot boots from a Firecracker-style config file alone,
// and with the API served alongside.
func TestConfigFileBoot(t *testing.T) {
	requireKVM(t)
	dir := apiDir(t)
	metrics := filepath.Join(dir, "metrics.json")
	config := filepath.Join(dir, "vm.json")
	writeConfig := func(bootArgs string, vcpus int) {
		t.Helper()
		js := fmt.Sprintf(`{
  "boot-source": {"kernel_image_path": %q, "boot_args": %q},
  "machine-config": {"vcpu_count": %d, "mem_size_mib": 64, "smt": false},
  "drives": [],
  "metrics": {"metrics_path": %q}
}`, filepath.Join(shared.testGuest, "testguest.bzimage"), bootArgs, vcpus, metrics)
		if err := os.WriteFile(config, []byte(js), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("file only", func(t *testing.T) {
		writeConfig("exit=5", 3)
		code, out, stderr := runVMM(t, testGuestTimeout, "--config-file", config, "--debug-exit")
		if code != 5 {
			t.Fatalf("exit status %d, want 5\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
		}
		if !strings.Contains(out, "testguest: cpus=3") || !strings.Contains(out, "testguest: boot=linux64") {
			t.Errorf("guest did not get the file's machine:\n%s", out)
		}
		data, err := os.ReadFile(metrics)
		if err != nil || !strings.Contains(string(data), `"exits":{`) {
			t.Errorf("metrics file %q (%v): want a final line with exit counters", data, err)
		}
	})
	t.Run("file and API", func(t *testing.T) {
		writeConfig("echo=1 exit=6", 1)
		sock := filepath.Join(dir, "api.sock")
		v := Start(t, "--config-file", config, "--api-sock", sock, "--debug-exit")
		c := apiClient(t, sock)
		// Kata polls GET / until Running.
		expectState(t, c, api.StateRunning)
		cfg, err := c.VMConfig(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if cfg.BootSource == nil || deref(cfg.BootSource.BootArgs) != "echo=1 exit=6" || *cfg.MachineConfig.VCPUCount != 1 {
			t.Errorf("/vm/config does not reflect the file: %+v", cfg)
		}
		_, off := v.WaitFor(regexp.MustCompile(`testguest: ready>`), 0, testGuestTimeout)
		v.Type("both\r")
		v.WaitFor(regexp.MustCompile(`testguest: echo both`), off, testGuestTimeout)
		if code := v.Wait(testGuestTimeout); code != 6 {
			t.Errorf("exit status %d, want 6", code)
		}
		requireGone(t, sock)
	})
	t.Run("bad file", func(t *testing.T) {
		if err := os.WriteFile(config, []byte(`{"machine-config":{"vcpu_count":1,"mem_size_mib":64,"ht_enabled":true}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := runVMM(t, time.Minute, "--config-file", config)
		if code != 2 || !strings.Contains(stderr, `unknown field "ht_enabled"`) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("exit %d, stderr %q: want status 2 and one line naming the field", code, stderr)
		}
	})
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// syncBuffer collects a process's output from another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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

func waitForOutput(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(testGuestTimeout)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in console output:\n%s", want, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFirecrackerGoSDK boots the test guest with the unmodified Firecracker
// Go SDK (v1.0.0) pointed at our binary: its wire protocol (exact 204s,
// GET / fields, logger and metrics setup, pause/resume, Ctrl+Alt+Del)
// must be what it expects.
func TestFirecrackerGoSDK(t *testing.T) {
	requireKVM(t)
	dir := apiDir(t)
	sock := filepath.Join(dir, "fc.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*testGuestTimeout)
	defer cancel()

	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdinW.Close()
	var out, stderr syncBuffer
	cmd := firecracker.VMCommandBuilder{}.
		WithBin(shared.vmm).
		WithSocketPath(sock).
		AddArgs("--id", "sdk-vm", "--no-seccomp", "--debug-exit").
		WithStdin(stdinR).WithStdout(&out).WithStderr(&stderr).
		Build(ctx)
	cfg := firecracker.Config{
		SocketPath:      sock,
		VMID:            "sdk-vm",
		KernelImagePath: filepath.Join(shared.testGuest, "testguest.elf"),
		KernelArgs:      "echo=1 exit=7",
		LogPath:         filepath.Join(dir, "vmm.log"),
		LogLevel:        "Debug",
		MetricsPath:     filepath.Join(dir, "metrics"),
		MachineCfg: models.MachineConfiguration{
			VcpuCount:  firecracker.Int64(2),
			MemSizeMib: firecracker.Int64(64),
			Smt:        firecracker.Bool(false),
		},
	}
	m, err := firecracker.NewMachine(ctx, cfg, firecracker.WithProcessRunner(cmd))
	if err != nil {
		t.Fatal(err)
	}
	// No jailer, netns, CNI or log FIFOs: just the API calls.
	m.Handlers.FcInit = firecracker.HandlerList{}.Append(
		firecracker.StartVMMHandler,
		firecracker.BootstrapLoggingHandler,
		firecracker.CreateMachineHandler,
		firecracker.CreateBootSourceHandler,
		firecracker.AttachDrivesHandler,
		firecracker.CreateNetworkInterfacesHandler,
		firecracker.AddVsocksHandler,
	)
	t.Cleanup(func() {
		m.StopVMM()
		if t.Failed() {
			t.Logf("console:\n%s\nstderr:\n%s", out.String(), stderr.String())
		}
	})
	if err := m.Start(ctx); err != nil {
		t.Fatalf("SDK Start: %v", err)
	}
	info, err := m.DescribeInstanceInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if firecracker.StringValue(info.State) != api.StateRunning || firecracker.StringValue(info.ID) != "sdk-vm" ||
		firecracker.StringValue(info.AppName) == "" || firecracker.StringValue(info.VmmVersion) == "" {
		t.Fatalf("instance info %+v", info)
	}
	waitForOutput(t, &out, "testguest: cpus=2")
	waitForOutput(t, &out, "testguest: ready>")
	if err := m.PauseVM(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := m.DescribeInstanceInfo(ctx); err != nil || firecracker.StringValue(info.State) != api.StatePaused {
		t.Fatalf("after PauseVM: %v %v", info, err)
	}
	if err := m.ResumeVM(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Shutdown(ctx); err != nil { // SendCtrlAltDel; the test guest ignores it
		t.Fatal(err)
	}
	if _, err := stdinW.WriteString("sdk\r"); err != nil {
		t.Fatal(err)
	}
	waitForOutput(t, &out, "testguest: echo sdk")
	err = m.Wait(ctx)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 7 {
			t.Fatalf("SDK Wait: %v, want exit status 7", err)
		}
	}
	if log, err := os.ReadFile(cfg.LogPath); err != nil || !strings.Contains(string(log), "microVM started") {
		t.Errorf("log file from PUT /logger: %q %v", log, err)
	}
	requireGone(t, sock)
}

// TestFirecrackerGoSDKVsockAccepted checks the SDK's PUT /vsock, which
// still carries the deprecated vsock_id, is accepted. Until the vsock
// device exists InstanceStart then fails with a 400 saying so; once it
// exists the boot succeeds. Either way PUT /vsock itself must not fail.
func TestFirecrackerGoSDKVsockAccepted(t *testing.T) {
	requireKVM(t)
	dir := apiDir(t)
	sock := filepath.Join(dir, "fc.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := firecracker.VMCommandBuilder{}.WithBin(shared.vmm).WithSocketPath(sock).AddArgs("--debug-exit").Build(ctx)
	cfg := firecracker.Config{
		SocketPath:      sock,
		KernelImagePath: filepath.Join(shared.testGuest, "testguest.elf"),
		KernelArgs:      "exit=4",
		MachineCfg:      models.MachineConfiguration{VcpuCount: firecracker.Int64(1), MemSizeMib: firecracker.Int64(64)},
		VsockDevices:    []firecracker.VsockDevice{{ID: "root", Path: filepath.Join(dir, "v.sock"), CID: 3}},
	}
	m, err := firecracker.NewMachine(ctx, cfg, firecracker.WithProcessRunner(cmd))
	if err != nil {
		t.Fatal(err)
	}
	m.Handlers.FcInit = firecracker.HandlerList{}.Append(
		firecracker.StartVMMHandler, firecracker.CreateMachineHandler, firecracker.CreateBootSourceHandler, firecracker.AddVsocksHandler)
	defer m.StopVMM()
	err = m.Start(ctx)
	switch {
	case err == nil:
		if err := m.Wait(ctx); cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 4 {
			t.Fatalf("SDK Wait after a vsock boot: %v, want exit status 4", err)
		}
	case strings.Contains(err.Error(), "/vsock"):
		t.Fatalf("PUT /vsock failed: %v", err)
	case !strings.Contains(err.Error(), "not supported yet"):
		t.Fatalf("SDK Start with vsock: %v, want success or InstanceStart's 400 about the unsupported device", err)
	}
}
