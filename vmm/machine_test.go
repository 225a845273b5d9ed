package vmm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/internal/testenv"
	"github.com/govmm/vmm/kvm"
)

// buildTestGuest builds the freestanding test guest into a temp dir.
func buildTestGuest(t *testing.T) string {
	t.Helper()
	if !kvm.Available() {
		testenv.Skip(t, "/dev/kvm is absent on this host; VM tests did not run")
	}
	dir := t.TempDir()
	out, err := exec.Command("bash", "../guest/testguest/build.sh", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("building test guest: %v\n%s", err, out)
	}
	return dir
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitOutput(t *testing.T, out *syncBuf, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in console output:\n%s", want, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPauseResume runs the test guest in-process, pauses it while it waits
// for console input, and checks that input queued during the pause is only
// consumed after Resume.
func TestPauseResume(t *testing.T) {
	dir := buildTestGuest(t)
	out := &syncBuf{}
	inR, inW := io.Pipe()
	defer inW.Close()
	m, err := New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 2,
		Cmdline: "echo=1 exit=5", DebugExit: true, ConsoleOut: out, ConsoleIn: inR,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pause(); err != ErrNotRunning {
		t.Fatalf("Pause before Run = %v, want ErrNotRunning", err)
	}
	done := make(chan Exit, 1)
	go func() { done <- m.Run(context.Background()) }()
	waitOutput(t, out, "testguest: ready>")
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if !m.Paused() {
		t.Fatal("Paused() = false after Pause")
	}
	go io.WriteString(inW, "paused\r")
	time.Sleep(200 * time.Millisecond)
	if strings.Contains(out.String(), "echo paused") {
		t.Fatal("guest ran while paused")
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "testguest: echo paused")
	select {
	case e := <-done:
		if e.Kind != ExitDebugPort || e.Status != 5 {
			t.Fatalf("exit %+v, want debug exit 5", e)
		}
	case <-time.After(time.Minute):
		t.Fatal("machine did not exit")
	}
}

// TestStopFromHost cancels Run while the guest waits for input: every vCPU
// thread must be joined and Close must release everything. OnFirstRun
// fired once, for vCPU 0 only.
func TestStopFromHost(t *testing.T) {
	dir := buildTestGuest(t)
	out := &syncBuf{}
	var firstRuns atomic.Int32
	m, err := New(Config{
		Kernel: filepath.Join(dir, "testguest.bzimage"), MemSize: 64 << 20, CPUs: 2,
		Cmdline: "echo=1", DebugExit: true, ConsoleOut: out,
		OnFirstRun: func() { firstRuns.Add(1) },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Exit, 1)
	go func() { done <- m.Run(ctx) }()
	waitOutput(t, out, "testguest: ready>")
	cancel()
	select {
	case e := <-done:
		if e.Kind != ExitStopped || e.ExitCode() != 130 {
			t.Fatalf("exit %+v", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if n := firstRuns.Load(); n != 1 {
		t.Errorf("OnFirstRun called %d times, want once", n)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadKernel(t *testing.T) {
	if !kvm.Available() {
		testenv.Skip(t, "/dev/kvm is absent on this host")
	}
	f := filepath.Join(t.TempDir(), "k")
	os.WriteFile(f, bytes.Repeat([]byte{0x90}, 8192), 0o644)
	_, err := New(Config{Kernel: f, MemSize: 64 << 20, CPUs: 1}, nil)
	if err == nil || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("New with a garbage kernel: %v", err)
	}
}

func TestNameThread(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	comm := func() string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", unix.Gettid()))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	before := comm()
	old := nameThread("vcpu7-and-a-very-long-name")
	if old != before {
		t.Errorf("nameThread returned %q, want the previous name %q", old, before)
	}
	if got := comm(); got != "vcpu7-and-a-ver" {
		t.Errorf("thread name %q, want the first 15 bytes", got)
	}
	nameThread(old)
	if got := comm(); got != before {
		t.Errorf("name not restored: %q, want %q", got, before)
	}
}
