package containerd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// createInPod creates a CRI container (the pod's sandbox container when
// sandbox is set) on the layers lowers, topmost first.
func (r *svcRig) createInPod(id string, sandbox bool, lowers []string, args []string) error {
	r.t.Helper()
	bundle := filepath.Join(r.dir, "bundles", id)
	upper, work := filepath.Join(r.dir, "snapshots", id, "fs"), filepath.Join(r.dir, "snapshots", id, "work")
	for _, d := range []string{bundle, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			r.t.Fatal(err)
		}
	}
	ctype := "container"
	if sandbox {
		ctype = containerTypeSandbox
	}
	writeSpec(r.t, bundle, &specs.Spec{Version: specs.Version, Hostname: id,
		Annotations: map[string]string{annotationContainerType: ctype, annotationSandboxID: "sb"},
		Process:     &specs.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/"},
	})
	io := r.fifos(id, false, false)
	_, err := r.svc.Create(ctxTest(r.t), &taskAPI.CreateTaskRequest{
		ID: id, Bundle: bundle,
		Rootfs: []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{
			"index=off", "workdir=" + work, "upperdir=" + upper, "lowerdir=" + strings.Join(lowers, ":"),
		}}},
		Stdout: io.stdout, Stderr: io.stderr,
	})
	return err
}

// exec runs a shell command in a running task and returns its stdout.
func (r *svcRig) exec(id, execID, script string) string {
	r.t.Helper()
	ctx := ctxTest(r.t)
	io := r.fifos(id+"-"+execID, false, false)
	spec, _ := json.Marshal(specs.Process{Args: []string{"sh", "-c", script}, Cwd: "/", Env: []string{"PATH=/bin"}})
	if _, err := r.svc.Exec(ctx, &taskAPI.ExecProcessRequest{ID: id, ExecID: execID, Stdout: io.stdout, Stderr: io.stderr,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}); err != nil {
		r.t.Fatalf("Exec in %s: %v", id, err)
	}
	if _, err := r.svc.Start(ctx, &taskAPI.StartRequest{ID: id, ExecID: execID}); err != nil {
		r.t.Fatalf("Start exec in %s: %v", id, err)
	}
	if code := r.wait(id, execID); code != 0 {
		r.t.Errorf("exec in %s exited %d", id, code)
	}
	out, errOut := io.output(r.t)
	if errOut != "" {
		r.t.Logf("exec in %s: stderr %q", id, errOut)
	}
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: id, ExecID: execID}); err != nil {
		r.t.Errorf("Delete exec: %v", err)
	}
	return out
}

func (r *svcRig) start(id string) {
	r.t.Helper()
	if _, err := r.svc.Start(ctxTest(r.t), &taskAPI.StartRequest{ID: id}); err != nil {
		r.t.Fatalf("Start %s: %v", id, err)
	}
}

func (r *svcRig) kill(id string) {
	r.t.Helper()
	ctx := ctxTest(r.t)
	if _, err := r.svc.Kill(ctx, &taskAPI.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL)}); err != nil {
		r.t.Fatalf("Kill %s: %v", id, err)
	}
	r.wait(id, "")
	if _, err := r.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
		r.t.Fatalf("Delete %s: %v", id, err)
	}
}

func (r *svcRig) patches() []string {
	r.ctl.mu.Lock()
	defer r.ctl.mu.Unlock()
	var out []string
	for _, c := range r.ctl.calls {
		if strings.HasPrefix(c, "patch ") {
			out = append(out, c)
		}
	}
	return out
}

// TestPodContainersShareVM: a pod's later containers join its VM
// through the spare drives it booted with. Each sees its own root
// filesystem and not the others' writes; a deleted container's slots go
// back to their placeholders and serve the next one; with none free,
// Create is ResourceExhausted and takes nothing.
func TestPodContainersShareVM(t *testing.T) {
	r := newSvcRig(t)
	// Drives: 0 busybox layer and 1 writable disk of the pause
	// container, 2 a read-only spare, 3 and 4 writable spares.
	r.cfg.SpareDrives, r.cfg.SpareWritableDrives = ptr(3), ptr(2)
	extra := filepath.Join(r.dir, "snapshots", "extra", "fs")
	if err := os.MkdirAll(filepath.Join(extra, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(extra, "etc", "extra-layer"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The writable disk's file must exist before the init writes it.
	const waitMine = "i=0; while ! test -e /mine && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; "
	const look = "cat /mine 2>/dev/null || echo clean; test -e /etc/extra-layer && echo extra; hostname"

	if err := r.createInPod("pause", true, []string{r.layer}, []string{"sleep", "600"}); err != nil {
		t.Fatalf("Create pause: %v", err)
	}
	r.start("pause")
	if err := r.createInPod("a", false, []string{extra, r.layer}, []string{"sh", "-c", "echo a > /mine; exec sleep 600"}); err != nil {
		t.Fatalf("Create a: %v", err)
	}
	if err := r.createInPod("b", false, []string{r.layer}, []string{"sh", "-c", "echo b > /mine; exec sleep 600"}); err != nil {
		t.Fatalf("Create b: %v", err)
	}
	r.start("a")
	r.start("b")
	if out := r.exec("a", "e1", waitMine+look); out != "a\nextra\na\n" {
		t.Errorf("in a: %q", out)
	}
	if out := r.exec("b", "e1", waitMine+look); out != "b\nb\n" {
		t.Errorf("in b: %q", out)
	}
	if out := r.exec("pause", "e1", look); out != "clean\npause\n" {
		t.Errorf("in pause: %q", out)
	}
	booted := r.patches()
	if len(booted) != 3 || !strings.HasPrefix(booted[0], "patch disk2 ") || booted[1] != "patch disk3 upper.ext4" || booted[2] != "patch disk4 upper.ext4" {
		t.Errorf("PATCH /drives while joining: %v", booted)
	}

	// No writable slot left: nothing is taken, and nothing is left of c.
	err := r.createInPod("c", false, []string{extra, r.layer}, []string{"sleep", "600"})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "spare_drives") {
		t.Fatalf("Create with no free slot: %v, want ResourceExhausted", err)
	}
	if _, err := os.Stat(taskDirOf(r.cfg, "test", "c")); !os.IsNotExist(err) {
		t.Errorf("c's directory after a failed Create: %v", err)
	}
	if got := r.patches(); len(got) != len(booted) {
		t.Errorf("a failed Create swapped drives: %v", got[len(booted):])
	}

	// a's slots go back to their placeholders and serve c.
	r.kill("a")
	freed := r.patches()[len(booted):]
	if !slices.Equal(freed, []string{"patch disk2 " + filepath.Base(spareImagePath(r)), "patch disk3 spare0.img"}) {
		t.Errorf("PATCH /drives after deleting a: %v", freed)
	}
	if err := r.createInPod("c", false, []string{extra, r.layer}, []string{"sleep", "600"}); err != nil {
		t.Fatalf("Create c in a's slots: %v", err)
	}
	r.start("c")
	if out := r.exec("c", "e1", look); out != "clean\nextra\nc\n" {
		t.Errorf("in c (a's slots): %q", out)
	}
	if out := r.exec("b", "e2", look); out != "b\nb\n" {
		t.Errorf("in b after a went: %q", out)
	}
	reused := r.patches()[len(booted)+len(freed):]
	if len(reused) != 2 || !strings.HasPrefix(reused[0], "patch disk2 ") || reused[1] != "patch disk3 upper.ext4" {
		t.Errorf("PATCH /drives for c: %v", reused)
	}

	for _, id := range []string{"b", "c", "pause"} {
		r.kill(id)
	}
	if _, err := os.Stat(r.svc.cfg.Dir); !os.IsNotExist(err) {
		t.Errorf("VM directory after the last Delete: %v", err)
	}
	if m := mountsUnder(r.dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// spareImagePath is the shared read-only placeholder the rig's pods use.
func spareImagePath(r *svcRig) string {
	return filepath.Join(r.cfg.RootDir, "placeholder.img")
}
