package containerd

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// layerImages lists the layer cache's images with their inode numbers.
func (r *rig) layerImages(t *testing.T) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	matches, _ := filepath.Glob(filepath.Join(r.rootDir, "layers", "*"+layerImageExt))
	for _, m := range matches {
		var st syscall.Stat_t
		if err := syscall.Stat(m, &st); err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(m)] = st.Ino
	}
	return out
}

// TestCtrRunVMFailsToBoot runs `ctr run` with the vmm runtime and a
// guest kernel no VM can boot (and on this host no KVM at all): containerd
// must find the shim on its PATH and reach Create, which must fail with
// the VMM's reason and leave nothing behind. The layer image Create made
// stays cached: a second run makes no new one.
func TestCtrRunVMFailsToBoot(t *testing.T) {
	r := containerdRig(t)
	bad := filepath.Join(r.dir, "not-a-kernel")
	if err := os.WriteFile(bad, []byte("this is not a kernel image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.writeShimConfig(func(c *Config) { c.Kernel = bad }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.writeShimConfig(nil) })

	var first map[string]uint64
	for i, id := range []string{"boot-fails-1", "boot-fails-2"} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		stdout, stderr, err := r.ctr(ctx, nil, "run", "--rm", "--runtime", RuntimeName, testImage, id, "echo", "hi")
		cancel()
		if err == nil {
			t.Fatalf("ctr run with a bad kernel succeeded: %q", stdout)
		}
		t.Logf("ctr run %s: %s", id, stderr)
		if !strings.Contains(stderr, "booting the VM for task "+id) {
			t.Errorf("ctr run: %v; stderr %q does not say the VM failed to boot\ncontainerd log:\n%s", err, stderr, r.containerdLog())
		}
		_, _ = r.ctrOutput("containers", "rm", id)
		r.checkClean(t, id)
		imgs := r.layerImages(t)
		if len(imgs) != 1 {
			t.Fatalf("run %d: layer cache holds %v, want the busybox layer's one image", i+1, imgs)
		}
		if i == 0 {
			first = imgs
		} else if !mapsEqual(first, imgs) {
			t.Errorf("second start remade the layer image: %v, then %v", first, imgs)
		}
	}
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestCtrRunMissingKernel: a shim config naming a kernel that is not
// there fails Create with that reason, before any VM or disk is made.
func TestCtrRunMissingKernel(t *testing.T) {
	r := containerdRig(t)
	missing := filepath.Join(r.dir, "no-such-vmlinux")
	if err := r.writeShimConfig(func(c *Config) { c.Kernel = missing }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.writeShimConfig(nil) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const id = "no-kernel"
	_, stderr, err := r.ctr(ctx, nil, "run", "--rm", "--runtime", RuntimeName, testImage, id, "true")
	if err == nil || !strings.Contains(stderr, "guest kernel") || !strings.Contains(stderr, missing) {
		t.Errorf("ctr run with a missing kernel: %v, stderr %q", err, stderr)
	}
	_, _ = r.ctrOutput("containers", "rm", id)
	r.checkClean(t, id)
}

// TestDeleteAfterShimKilled starts a shim the way containerd does, kills
// it with SIGKILL, and runs `delete` as containerd does for a shim that
// died: it must answer a DeleteResponse (exit 137) and remove the
// sandbox's socket and run directory.
func TestDeleteAfterShimKilled(t *testing.T) {
	r := containerdRig(t)
	bundle := t.TempDir()
	spec := specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	const id, address = "killed", "/run/vmm-test-containerd.sock"
	shim := filepath.Join(r.bin, "containerd-shim-vmm-v2")
	run := func(action string) ([]byte, error) {
		cmd := exec.Command(shim, "-namespace", testNamespace, "-address", address, "-publish-binary", "/bin/false", "-id", id, "-bundle", bundle, action)
		cmd.Dir = bundle
		cmd.Env = append(os.Environ(), ConfigEnv+"="+r.configPath)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Logf("%s stderr: %s", action, stderr.String())
		}
		return out, err
	}
	out, err := run("start")
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	addr := string(out)
	sock, ok := strings.CutPrefix(addr, "unix://")
	if !ok || !strings.HasPrefix(sock, r.runDir+"/") {
		t.Fatalf("start printed %q, want a unix:// socket in %s", addr, r.runDir)
	}
	if recorded, err := os.ReadFile(filepath.Join(bundle, "address")); err != nil || string(recorded) != addr {
		t.Errorf("bundle/address = %q, %v; want %q", recorded, err, addr)
	}
	// A second start for the same sandbox finds the running shim.
	if again, err := run("start"); err != nil || string(again) != addr {
		t.Errorf("second start: %q, %v; want the same address", again, err)
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := taskAPI.NewTaskClient(client).Connect(ctx, &taskAPI.ConnectRequest{ID: id})
	if err != nil || resp.ShimPid == 0 {
		t.Fatalf("Connect: %v %v", resp, err)
	}
	if err := syscall.Kill(int(resp.ShimPid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && syscall.Kill(int(resp.ShimPid), 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond) // init reaps the daemon
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the killed shim's socket should still be there for delete to remove: %v", err)
	}
	out, err = run("delete")
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	var dr taskAPI.DeleteResponse
	if err := proto.Unmarshal(out, &dr); err != nil || dr.ExitStatus != 128+uint32(syscall.SIGKILL) || dr.ExitedAt == nil {
		t.Errorf("delete answered %v (%v), want exit status 137 with a time", &dr, err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket after delete: %v", err)
	}
	if entries, _ := os.ReadDir(r.runDir); len(entries) > 0 {
		t.Errorf("run dir after delete: %v", entries)
	}
}
