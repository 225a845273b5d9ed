// Package integration boots real VMs under KVM through the vmm binary: the
// freestanding test guest (seconds) and the default Linux guest (minutes on
// hosts without VT-x). Every test here shares this harness.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/testenv"
)

// Shared artefacts, built once per test binary by TestMain.
type artefacts struct {
	root      string // repository root
	vmm       string // the vmm binary under test
	testGuest string // directory with testguest.elf and testguest.bzimage
	guestDir  string // the default Linux guest (build/guest)
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("go.mod not found above " + wd)
}

var shared artefacts // set once in TestMain before any test runs, read-only afterwards

func TestMain(m *testing.M) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		fmt.Fprintln(os.Stderr, "##########################################################")
		fmt.Fprintln(os.Stderr, "## SKIPPING ALL VM TESTS: /dev/kvm is absent on this host ##")
		fmt.Fprintln(os.Stderr, "##########################################################")
		os.Exit(m.Run())
	}
	a, err := build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: building artefacts:", err)
		os.Exit(1)
	}
	shared = a
	// One warm-snapshot cache for every `vmm run` of this test binary: the
	// first run of the default guest boots and saves it, the others
	// (run tests in parallel) wait for it and restore. Private, so a test
	// never restores a snapshot from another build of vmm or another run.
	cache, err := os.MkdirTemp("", "vmm-it-cache-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	os.Setenv("VMM_CACHE", cache)
	code := m.Run()
	os.RemoveAll(cache)
	os.RemoveAll(filepath.Dir(a.vmm))
	os.Exit(code)
}

func build() (artefacts, error) {
	root, err := repoRoot()
	if err != nil {
		return artefacts{}, err
	}
	tmp, err := os.MkdirTemp("", "vmm-integration-")
	if err != nil {
		return artefacts{}, err
	}
	a := artefacts{root: root, vmm: filepath.Join(tmp, "vmm"), testGuest: filepath.Join(tmp, "testguest"), guestDir: filepath.Join(root, "build", "guest")}
	if d := os.Getenv("VMM_GUEST_DIR"); d != "" {
		a.guestDir = d
	}
	cmd := exec.Command("go", "build", "-o", a.vmm, "./cmd/vmm")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return a, fmt.Errorf("go build ./cmd/vmm: %v\n%s", err, out)
	}
	cmd = exec.Command("bash", filepath.Join(root, "guest", "testguest", "build.sh"), a.testGuest)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return a, fmt.Errorf("building the test guest: %v\n%s", err, out)
	}
	return a, nil
}

func requireKVM(t *testing.T) {
	t.Helper()
	if shared.vmm == "" {
		testenv.Skip(t, "/dev/kvm is absent on this host; this VM test did not run")
	}
}

// VM is one running vmm process with its serial console captured.
type VM struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	mu     sync.Mutex
	cond   *sync.Cond
	out    bytes.Buffer // console output so far
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

// Start runs vmm with args. The process is killed when the test ends.
func Start(t *testing.T, args ...string) *VM {
	t.Helper()
	return startVM(t, nil, args)
}

// StartInNS runs vmm with args inside the test's network namespace, where
// its taps live. `ip netns exec` execs vmm in place, so the PID is vmm's.
func StartInNS(t *testing.T, ns *netNS, args ...string) *VM {
	t.Helper()
	return startVM(t, []string{"ip", "netns", "exec", ns.name}, args)
}

func startVM(t *testing.T, prefix, args []string) *VM {
	t.Helper()
	requireKVM(t)
	v := &VM{t: t, done: make(chan struct{})}
	v.cond = sync.NewCond(&v.mu)
	argv := append(append(append([]string(nil), prefix...), shared.vmm), args...)
	v.cmd = exec.Command(argv[0], argv[1:]...)
	v.cmd.Dir = shared.root
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	v.cmd.Stderr = &lockedWriter{mu: &v.mu, w: &v.stderr}
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("started vmm %s (pid %d)", strings.Join(args, " "), v.cmd.Process.Pid)
	go func() {
		r := bufio.NewReader(stdout)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			v.mu.Lock()
			v.out.Write(buf[:n])
			v.cond.Broadcast()
			v.mu.Unlock()
			if err != nil {
				break
			}
		}
		err := v.cmd.Wait()
		v.mu.Lock()
		v.err = err
		v.mu.Unlock()
		close(v.done)
		v.mu.Lock()
		v.cond.Broadcast()
		v.mu.Unlock()
	}()
	t.Cleanup(func() {
		select {
		case <-v.done:
		default:
			v.cmd.Process.Kill()
			<-v.done
		}
		if t.Failed() {
			t.Logf("console output:\n%s\nstderr:\n%s", v.Output(), v.Stderr())
		}
	})
	return v
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Output returns the console output so far.
func (v *VM) Output() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.out.String()
}

// Stderr returns vmm's own diagnostics so far.
func (v *VM) Stderr() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stderr.String()
}

// WaitFor waits until the console output from offset on matches re and
// returns the submatches and the offset just past the match.
func (v *VM) WaitFor(re *regexp.Regexp, from int, timeout time.Duration) ([]string, int) {
	v.t.Helper()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		v.mu.Lock()
		v.cond.Broadcast()
		v.mu.Unlock()
	})
	defer timer.Stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	for {
		s := v.out.String()
		if from > len(s) {
			from = len(s)
		}
		if loc := re.FindStringSubmatchIndex(s[from:]); loc != nil {
			var subs []string
			for i := 0; i+1 < len(loc); i += 2 {
				if loc[i] < 0 {
					subs = append(subs, "")
					continue
				}
				subs = append(subs, s[from+loc[i]:from+loc[i+1]])
			}
			return subs, from + loc[1]
		}
		select {
		case <-v.done:
			v.t.Fatalf("vmm exited (%v) before console matched %q", v.err, re)
		default:
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("timed out after %v waiting for console to match %q", timeout, re)
		}
		v.cond.Wait()
	}
}

// Type sends keystrokes to the guest's serial console.
func (v *VM) Type(s string) {
	v.t.Helper()
	if _, err := io.WriteString(v.stdin, s); err != nil {
		v.t.Fatalf("writing to console: %v", err)
	}
}

// Wait waits for vmm to exit and returns its exit status.
func (v *VM) Wait(timeout time.Duration) int {
	v.t.Helper()
	select {
	case <-v.done:
	case <-time.After(timeout):
		v.t.Fatalf("vmm still running after %v", timeout)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(v.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if v.err != nil {
		v.t.Fatalf("vmm: %v", v.err)
	}
	return 0
}

// Signal sends sig to the vmm process.
func (v *VM) Signal(sig os.Signal) {
	v.t.Helper()
	if err := v.cmd.Process.Signal(sig); err != nil {
		v.t.Fatal(err)
	}
}

// runVMM runs vmm to completion with a timeout and returns its exit status,
// stdout and stderr.
func runVMM(t *testing.T, timeout time.Duration, args ...string) (int, string, string) {
	t.Helper()
	return runCommand(t, nil, timeout, args)
}

// runCommand runs vmm, behind prefix (e.g. `ip netns exec NS`), to
// completion with a timeout and returns its exit status, stdout and stderr.
func runCommand(t *testing.T, prefix []string, timeout time.Duration, args []string) (int, string, string) {
	t.Helper()
	requireKVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append(append(append([]string(nil), prefix...), shared.vmm), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = shared.root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("vmm %v timed out after %v\nstdout:\n%s\nstderr:\n%s", args, timeout, stdout.String(), stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}
