package containerd

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/guest/testimage"
	"github.com/govmm/vmm/internal/testenv"
)

// testNamespace is the containerd namespace the tests use.
const testNamespace = "vmmtest"

// testImage is the busybox image the tests import.
const testImage = "docker.io/library/vmm-busybox:test"

// rig is one private containerd with the shim on its PATH, shared by
// every test of the binary (TestMain stops it).
type rig struct {
	dir        string // everything the rig made
	bin        string // the shim and vmm
	socket     string // containerd's gRPC socket
	configPath string // the shim's config file ($VMM_SHIM_CONFIG)
	rootDir    string // the shim's root_dir
	runDir     string // the shim's run_dir
	cmd        *exec.Cmd
	log        *bytes.Buffer
	logMu      *sync.Mutex
	err        error // why the rig could not start
}

var (
	rigOnce   sync.Once
	sharedRig *rig
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedRig != nil {
		sharedRig.stop()
	}
	if agentBin != "" {
		os.RemoveAll(filepath.Dir(agentBin))
	}
	os.Exit(code)
}

// repoRoot is the module's root, two levels above this package.
func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(filepath.Dir(wd))
}

// containerdRig returns the shared containerd, starting it the first
// time; a host without containerd skips the test.
func containerdRig(t *testing.T) *rig {
	t.Helper()
	testenv.RequireRoot(t, "containerd, mounts")
	testenv.RequireCommand(t, "containerd", "containerd")
	testenv.RequireCommand(t, "ctr", "containerd")
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	if testing.Short() {
		t.Skip("starts containerd and builds binaries")
	}
	rigOnce.Do(func() { sharedRig = startRig() })
	if sharedRig.err != nil {
		t.Fatalf("containerd rig: %v", sharedRig.err)
	}
	return sharedRig
}

func startRig() *rig {
	r := &rig{log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	// A short directory: the shim's sockets live under it.
	dir, err := os.MkdirTemp("/tmp", "vmmctd-")
	if err != nil {
		r.err = err
		return r
	}
	r.dir = dir
	r.bin = filepath.Join(dir, "bin")
	r.socket = filepath.Join(dir, "c.sock")
	r.configPath = filepath.Join(dir, "shim.json")
	r.rootDir = filepath.Join(dir, "shimroot")
	r.runDir = filepath.Join(dir, "r")
	for _, target := range []struct{ out, pkg string }{
		{"containerd-shim-vmm-v2", "./cmd/containerd-shim-vmm-v2"},
		{"vmm", "./cmd/vmm"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(r.bin, target.out), target.pkg)
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			r.err = fmt.Errorf("go build %s: %v\n%s", target.pkg, err, out)
			return r
		}
	}
	if err := r.writeShimConfig(nil); err != nil {
		r.err = err
		return r
	}
	config := filepath.Join(dir, "containerd.toml")
	// Version 2 config, as containerd 1.6 reads it (and 1.7). CRI is
	// off: these tests drive the task API through ctr.
	toml := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[debug]
  level = "debug"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), r.socket)
	if err := os.WriteFile(config, []byte(toml), 0o600); err != nil {
		r.err = err
		return r
	}
	r.cmd = exec.Command("containerd", "--config", config)
	r.cmd.Env = append(os.Environ(), "PATH="+r.bin+":"+os.Getenv("PATH"), ConfigEnv+"="+r.configPath)
	w := &lockedBuffer{mu: r.logMu, b: r.log}
	r.cmd.Stdout, r.cmd.Stderr = w, w
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		r.err = err
		return r
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", r.socket); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			r.err = fmt.Errorf("containerd did not listen on %s within 30s:\n%s", r.socket, r.containerdLog())
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
	tarball := filepath.Join(dir, "busybox-oci.tar")
	if err := writeBusyboxOCI(tarball); err != nil {
		r.err = err
		return r
	}
	if out, err := r.ctrOutput("images", "import", tarball); err != nil {
		r.err = fmt.Errorf("ctr images import: %v\n%s", err, out)
		return r
	}
	return r
}

// writeShimConfig writes the shim's config: the built vmm, the default
// guest if built (else empty stand-ins, enough to reach the VM's start),
// the rig's directories; mutate changes it.
func (r *rig) writeShimConfig(mutate func(*Config)) error {
	guest := filepath.Join(repoRoot(), "build", "guest")
	if d := os.Getenv("VMM_GUEST_DIR"); d != "" {
		guest = d
	}
	kernel, initrd := filepath.Join(guest, "vmlinux"), filepath.Join(guest, "initramfs.cpio")
	if _, err := os.Stat(kernel); err != nil {
		kernel, initrd = filepath.Join(r.dir, "no-guest-vmlinux"), filepath.Join(r.dir, "no-guest-initramfs")
		for _, f := range []string{kernel, initrd} {
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				return err
			}
		}
	}
	cfg := Config{
		VMM: filepath.Join(r.bin, "vmm"), Kernel: kernel, Initrd: initrd,
		MemMiB: 256, CPUs: 1, UpperSizeMiB: 256, BootTimeout: Duration(2 * time.Minute),
		RootDir: r.rootDir, RunDir: r.runDir,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(r.configPath, data, 0o600)
}

func (r *rig) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = r.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = r.cmd.Process.Kill()
			<-done
		}
	}
	if r.dir != "" {
		// containerd's snapshots may still be mounted if a test failed.
		unmountUnder(r.dir)
		os.RemoveAll(r.dir)
	}
}

// unmountUnder detaches every mount below dir.
func unmountUnder(dir string) {
	for _, m := range mountsUnder(dir) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// mountsUnder lists the mount points below dir.
func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func (r *rig) containerdLog() string {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return r.log.String()
}

// ctr runs ctr against the rig's containerd in the test namespace.
func (r *rig) ctr(ctx context.Context, stdin io.Reader, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", r.socket, "--namespace", testNamespace}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &o, &e
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (r *rig) ctrOutput(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o, e, err := r.ctr(ctx, nil, args...)
	return o + e, err
}

// shimProcesses lists the pids of running shims started by this rig's
// containerd (its address is on their command line).
func (r *rig) shimProcesses() []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmdline, []byte("containerd-shim-vmm-v2")) && bytes.Contains(cmdline, []byte(r.socket)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// checkClean fails t if anything of a task is left: a shim or VMM
// process, a socket or VM directory, a task's disk, a mount, or the task
// in containerd.
func (r *rig) checkClean(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(r.shimProcesses()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if pids := r.shimProcesses(); len(pids) > 0 {
		t.Errorf("shim processes left: %v", pids)
	}
	if entries, err := os.ReadDir(r.runDir); err == nil && len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("left in the shim's run dir: %v", names)
	}
	if _, err := os.Stat(taskDirOf(&Config{RootDir: r.rootDir}, testNamespace, id)); err == nil {
		t.Errorf("the task's directory is left")
	}
	for _, m := range mountsUnder(r.dir) {
		t.Errorf("mount left: %s", m)
	}
	if out, err := r.ctrOutput("tasks", "ls", "-q"); err != nil || strings.Contains(out, id) {
		t.Errorf("ctr tasks ls: %q %v", out, err)
	}
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// writeBusyboxOCI writes an OCI image archive of the busybox test root
// filesystem (one layer), named testImage, as `ctr images import` takes.
func writeBusyboxOCI(out string) error {
	busybox, err := testimage.FindBusybox()
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "vmm-busybox-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := testimage.Populate(root, busybox); err != nil {
		return err
	}
	var layer bytes.Buffer
	diffID := sha256.New()
	gz := gzip.NewWriter(&layer)
	if err := tarDir(io.MultiWriter(gz, diffID), root); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	blobs := map[string][]byte{}
	add := func(data []byte) (string, int) {
		sum := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = data
		return d, len(data)
	}
	layerDigest, layerSize := add(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, "Cmd": []string{"sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID.Sum(nil))}},
	})
	configDigest, configSize := add(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": layerSize}},
	})
	manifestDigest, manifestSize := add(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": testImage, "org.opencontainers.image.ref.name": "test"},
		}},
	})
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	files := map[string][]byte{"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`), "index.json": index}
	for d, data := range blobs {
		files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] = data
	}
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/sha256/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		return err
	}
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// tarDir writes dir's tree as a tar stream, owned by root.
func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = rel, 0, 0, "", ""
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
