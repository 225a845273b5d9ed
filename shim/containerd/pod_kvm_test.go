package containerd

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// vmmProcesses counts the running VMMs whose API socket is in the rig's
// run directory.
func (r *rig) vmmProcesses() int {
	n := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte("--api-sock\x00"+r.runDir+"/")) {
			n++
		}
	}
	return n
}

// TestCtrPodTwoContainers: two containers with CRI's annotations, as the
// CRI plugin creates a pod's, run in one VM: the second's disks are
// swapped into the spare drives its pod's VM booted with. Each sees its
// own root filesystem, and deleting both leaves nothing behind.
func TestCtrPodTwoContainers(t *testing.T) {
	r := kvmRig(t)
	const pod, app = "pod-sandbox", "pod-app"
	r.mustCtr(t, "run", "-d", "--runtime", RuntimeName,
		"--annotation", annotationContainerType+"="+containerTypeSandbox, "--annotation", annotationSandboxID+"="+pod,
		testImage, pod, "sh", "-c", "echo sandbox > /mine; exec sleep 1000")
	r.waitStatus(t, pod, "RUNNING")
	r.mustCtr(t, "run", "-d", "--runtime", RuntimeName,
		"--annotation", annotationContainerType+"=container", "--annotation", annotationSandboxID+"="+pod,
		testImage, app, "sh", "-c", "echo app > /mine; exec sleep 1000")
	r.waitStatus(t, app, "RUNNING")
	if n := r.vmmProcesses(); n != 1 {
		t.Errorf("%d VMMs for one pod, want 1", n)
	}
	const look = "i=0; while ! test -e /mine && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; cat /mine; hostname"
	for _, id := range []string{pod, app} {
		want := "sandbox\n" + pod + "\n"
		if id == app {
			want = "app\n" + app + "\n"
		}
		if out := r.mustCtr(t, "task", "exec", "--exec-id", "look", id, "sh", "-c", look); out != want {
			t.Errorf("exec in %s: %q, want %q", id, out, want)
		}
	}
	for _, id := range []string{app, pod} {
		r.mustCtr(t, "task", "kill", "-s", "SIGKILL", id)
		r.waitStatus(t, id, "STOPPED")
		r.mustCtr(t, "task", "delete", id)
		r.mustCtr(t, "containers", "rm", id)
	}
	r.checkClean(t, pod)
	r.checkClean(t, app)
	if n := r.vmmProcesses(); n != 0 {
		t.Errorf("%d VMMs left", n)
	}
}
