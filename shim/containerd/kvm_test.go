package containerd

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/testenv"
)

// The acceptance tests: real VMs under the shared containerd. They need
// KVM and the default guest (`make guest`), whose initramfs carries this
// tree's agent.

// kvmRig is containerdRig for tests that boot VMs.
func kvmRig(t *testing.T) *rig {
	t.Helper()
	testenv.RequireKVM(t)
	r := containerdRig(t)
	guest := filepath.Join(repoRoot(), "build", "guest")
	if d := os.Getenv("VMM_GUEST_DIR"); d != "" {
		guest = d
	}
	if _, err := os.Stat(filepath.Join(guest, "vmlinux")); err != nil {
		testenv.Skipf(t, "no default guest in %s (make guest): %v", guest, err)
	}
	return r
}

// ctrRun runs `ctr run --rm` with the vmm runtime and returns its
// stdout and exit status.
func (r *rig) ctrRun(t *testing.T, id string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stdout, stderr, err := r.ctr(ctx, nil, append([]string{"run", "--rm", "--runtime", RuntimeName, testImage, id}, args...)...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout, 0
	case errors.As(err, &ee):
		if stderr != "" {
			t.Logf("ctr run %s stderr: %s", id, stderr)
		}
		return stdout, ee.ExitCode()
	default:
		t.Fatalf("ctr run %s: %v", id, err)
		return "", -1
	}
}

func (r *rig) mustCtr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := r.ctrOutput(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestCtrRunEchoHi(t *testing.T) {
	r := kvmRig(t)
	out, code := r.ctrRun(t, "echo-hi", "echo", "hi")
	if out != "hi\n" || code != 0 {
		t.Errorf("ctr run echo hi: %q, status %d", out, code)
	}
	r.checkClean(t, "echo-hi")
	if out, code := r.ctrRun(t, "exit-7", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("sh -c 'exit 7': status %d (%q)", code, out)
	}
	r.checkClean(t, "exit-7")
}

// taskStatus is the STATUS column of `ctr task ls` for id.
func (r *rig) taskStatus(t *testing.T, id string) string {
	t.Helper()
	for _, line := range strings.Split(r.mustCtr(t, "task", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

func (r *rig) waitStatus(t *testing.T, id, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for r.taskStatus(t, id) != want {
		if time.Now().After(deadline) {
			t.Fatalf("task %s is %q, want %s", id, r.taskStatus(t, id), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCtrTaskLifecycle: a detached task, `ctr task exec` into it, pause
// and resume, metrics, then SIGTERM to a shell that traps it; and
// SIGKILL to one that does not.
func TestCtrTaskLifecycle(t *testing.T) {
	r := kvmRig(t)
	const id = "lifecycle"
	r.mustCtr(t, "run", "-d", "--runtime", RuntimeName, testImage, id, "sh", "-c", "trap 'exit 3' TERM; sleep 1000 & wait")
	r.waitStatus(t, id, "RUNNING")
	if out := r.mustCtr(t, "task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo exec in $(hostname)"); out != "exec in "+id+"\n" {
		t.Errorf("ctr task exec: %q", out)
	}
	r.mustCtr(t, "task", "pause", id)
	r.waitStatus(t, id, "PAUSED")
	r.mustCtr(t, "task", "resume", id)
	r.waitStatus(t, id, "RUNNING")
	if out := r.mustCtr(t, "task", "metrics", id); !strings.Contains(out, "memory.usage") || !strings.Contains(out, "pids.current") {
		t.Errorf("ctr task metrics: %q", out)
	}
	if out := r.mustCtr(t, "task", "ps", id); !strings.Contains(out, "PID") || len(strings.Split(strings.TrimSpace(out), "\n")) < 3 {
		t.Errorf("ctr task ps: %q, want the shell and its sleep", out)
	}
	r.mustCtr(t, "task", "kill", "-s", "SIGTERM", id)
	r.waitStatus(t, id, "STOPPED")
	r.mustCtr(t, "task", "delete", id)
	r.mustCtr(t, "containers", "rm", id)
	r.checkClean(t, id)

	const id2 = "killed"
	r.mustCtr(t, "run", "-d", "--runtime", RuntimeName, testImage, id2, "sleep", "1000")
	r.waitStatus(t, id2, "RUNNING")
	r.mustCtr(t, "task", "kill", "-s", "SIGKILL", id2)
	r.waitStatus(t, id2, "STOPPED")
	r.mustCtr(t, "task", "delete", id2)
	r.mustCtr(t, "containers", "rm", id2)
	r.checkClean(t, id2)
}

// TestCtrRunCycles: 20 runs leave nothing behind, and the layer image is
// made once for all of them.
func TestCtrRunCycles(t *testing.T) {
	r := kvmRig(t)
	var first map[string]uint64
	for i := range 20 {
		id := "cycle-" + itoa(i)
		if out, code := r.ctrRun(t, id, "true"); code != 0 {
			t.Fatalf("run %d: status %d %q", i, code, out)
		}
		r.checkClean(t, id)
		imgs := r.layerImages(t)
		if first == nil {
			first = imgs
		} else if !mapsEqual(first, imgs) {
			t.Fatalf("run %d made a new layer image: %v, then %v", i, first, imgs)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestCtrRunPodNetwork runs a task in a pod network namespace as CNI
// leaves it (`ctr run --with-ns network:PATH`, as the CRI plugin's
// sandbox spec has it): the guest has the pod's address and reaches the
// veth's peer, and nothing of the network is left after the task.
func TestCtrRunPodNetwork(t *testing.T) {
	r := kvmRig(t)
	ns := newPodNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stdout, stderr, err := r.ctr(ctx, nil, "run", "--rm", "--runtime", RuntimeName, "--with-ns", "network:"+ns.path,
		testImage, "pod-net", "sh", "-c", "ip addr; ping -c 1 -W 5 "+peerIP)
	if err != nil {
		t.Fatalf("ctr run: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	if !strings.Contains(stdout, strings.Split(podCIDR, "/")[0]) || !strings.Contains(stdout, "1 packets received") {
		t.Errorf("the guest has no pod address or no reply from %s:\n%s", peerIP, stdout)
	}
	r.checkClean(t, "pod-net")
	if left := podLeftovers(t, ns); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
