package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/internal/testenv"
	"github.com/govmm/vmm/vmm"
)

func TestParseRootfs(t *testing.T) {
	for _, c := range []struct {
		name   string
		mounts []*types.Mount
		want   rootfsSource
		err    string
	}{
		{"none", nil, rootfsSource{upper: "/b/rootfs"}, ""},
		{"overlay", []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=/s/3/work", "upperdir=/s/3/fs", "lowerdir=/s/2/fs:/s/1/fs"}}},
			rootfsSource{lowers: []string{"/s/2/fs", "/s/1/fs"}, upper: "/s/3/fs"}, ""},
		{"overlay view", []*types.Mount{{Type: "overlay", Options: []string{"lowerdir=/s/2/fs:/s/1/fs"}}},
			rootfsSource{lowers: []string{"/s/2/fs", "/s/1/fs"}, readOnly: true}, ""},
		{"bind", []*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"rbind", "rw"}}}, rootfsSource{upper: "/s/1/fs"}, ""},
		{"bind ro", []*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"rbind", "ro"}}}, rootfsSource{upper: "/s/1/fs", readOnly: true}, ""},
		{"two mounts", []*types.Mount{{Type: "bind"}, {Type: "bind"}}, rootfsSource{}, "2 mounts"},
		{"devmapper", []*types.Mount{{Type: "ext4", Source: "/dev/mapper/x"}}, rootfsSource{}, `mount type "ext4"`},
		{"no lowerdir", []*types.Mount{{Type: "overlay", Options: []string{"upperdir=/u"}}}, rootfsSource{}, "without lowerdir"},
		{"relative", []*types.Mount{{Type: "overlay", Options: []string{"lowerdir=a:/b"}}}, rootfsSource{}, "relative path"},
		{"too many", []*types.Mount{{Type: "overlay", Options: []string{"lowerdir=" + strings.Repeat("/l:", maxLowers) + "/l"}}}, rootfsSource{}, "layers"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseRootfs(c.mounts, "/b")
			if c.err != "" {
				if !errors.Is(err, ErrUnsupportedRootfs) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want ErrUnsupportedRootfs saying %q", err, c.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("= %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func FuzzParseRootfs(f *testing.F) {
	f.Add("overlay", "overlay", "lowerdir=/a:/b,upperdir=/c,workdir=/d")
	f.Add("bind", "/x", "rbind,ro")
	f.Add("tmpfs", "", "")
	f.Fuzz(func(t *testing.T, typ, source, options string) {
		m := &types.Mount{Type: typ, Source: source, Options: strings.Split(options, ",")}
		src, err := parseRootfs([]*types.Mount{m}, "/bundle")
		if err != nil {
			return
		}
		if len(src.lowers) > maxLowers {
			t.Fatalf("%d lowers accepted", len(src.lowers))
		}
		for _, d := range append(src.lowers, src.upper) {
			if d != "" && !filepath.IsAbs(d) {
				t.Fatalf("relative path %q accepted", d)
			}
		}
	})
}

func TestRootfsDisksOrder(t *testing.T) {
	d := &rootfsDisks{layers: []string{"/c/top.ext4", "/c/bottom.ext4"}, upper: "/t/upper.ext4"}
	want := []disk{{"/c/top.ext4", true}, {"/c/bottom.ext4", true}, {"/t/upper.ext4", false}}
	if got := d.disks(); !reflect.DeepEqual(got, want) {
		t.Errorf("disks = %v, want %v", got, want)
	}
	r := d.agentRootfs([]string{guestDevice(0), guestDevice(1), guestDevice(2)})
	if r.Source != "/dev/vdc" || !reflect.DeepEqual(r.Layers, []string{"/dev/vda", "/dev/vdb"}) || r.Type != "ext4" {
		t.Errorf("agentRootfs = %+v", r)
	}
}

func TestParseConfig(t *testing.T) {
	for _, c := range []struct {
		name, json, err string
	}{
		{"empty", `{}`, ""},
		{"full", `{"vmm":"/usr/bin/vmm","kernel":"/k","initrd":"/i","mem_mib":512,"vcpus":2,"upper_size_mib":100,"boot_timeout":"90s","root_dir":"/r","run_dir":"/run/x"}`, ""},
		{"typo", `{"kernal":"/k"}`, "unknown field"},
		{"relative", `{"kernel":"vmlinux"}`, "absolute"},
		{"memory", `{"mem_mib":1}`, "mem_mib"},
		{"cpus", `{"vcpus":1000}`, "vcpus"},
		{"upper", `{"upper_size_mib":-1}`, "upper_size_mib"},
		{"duration", `{"boot_timeout":"soon"}`, "duration"},
		{"negative duration", `{"boot_timeout":"-1s"}`, "negative"},
		{"trailing", `{} {}`, "trailing"},
		{"spares", `{"spare_drives":12,"spare_writable_drives":4}`, ""},
		{"no spares", `{"spare_drives":0}`, ""},
		{"too many spares", `{"spare_drives":26}`, "spare_drives"},
		{"negative spares", `{"spare_drives":-1}`, "spare_drives"},
		{"writable beyond spares", `{"spare_drives":2,"spare_writable_drives":3}`, "spare_writable_drives"},
		{"writable beyond default", `{"spare_writable_drives":9}`, "spare_writable_drives"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig(strings.NewReader(c.json))
			if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
				t.Errorf("ParseConfig(%s) = %v, want error containing %q", c.json, err, c.err)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(`{"kernel":"/k","mem_mib":512,"boot_timeout":"1m"}`)
	f.Add(`{"vcpus":-3}`)
	f.Add(`{"spare_drives":3,"spare_writable_drives":1}`)
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := ParseConfig(strings.NewReader(s))
		if err != nil {
			return
		}
		if cfg.UpperSizeMiB < 0 || cfg.BootTimeout < 0 || cfg.spareWritableDrives() < 0 || cfg.spareWritableDrives() > cfg.spareDrives() || cfg.spareDrives() >= vmm.MaxDrives {
			t.Fatalf("accepted %+v", cfg)
		}
	})
}

func TestConfigDefaults(t *testing.T) {
	t.Setenv(ConfigEnv, "")
	cfg := &Config{}
	cfg.fill("/opt/vmm/bin/containerd-shim-vmm-v2")
	if cfg.VMM != "/opt/vmm/bin/vmm" || cfg.Kernel != "/opt/vmm/share/vmm/vmlinux" || cfg.Initrd != "/opt/vmm/share/vmm/initramfs.cpio" {
		t.Errorf("installed defaults: %+v", cfg)
	}
	if cfg.MemMiB != DefaultMemMiB || cfg.CPUs != DefaultCPUs || cfg.RunDir != DefaultRunDir {
		t.Errorf("sizes and dirs: %+v", cfg)
	}
	t.Setenv(ConfigEnv, filepath.Join(t.TempDir(), "missing.json"))
	if _, err := LoadConfig("/x/bin/shim"); err == nil {
		t.Error("LoadConfig with a missing $" + ConfigEnv + " file succeeded")
	}
}

func TestVMSize(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	cfg := &Config{MemMiB: 256, CPUs: 1}
	for _, c := range []struct {
		name      string
		res       *specs.LinuxResources
		mem, cpus int64
	}{
		{"none", nil, 256, 1},
		{"small limit", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(64 << 20)}}, 256, 1},
		{"big limit", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 30)}}, 1024 + guestOverheadMiB, 1},
		{"cpu quota", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(250000), Period: u64(100000)}}, 256, 3},
		{"huge", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 50)}, CPU: &specs.LinuxCPU{Quota: i64(1 << 40), Period: u64(1000)}}, maxVMMemMiB, maxVMCPUs},
	} {
		spec := &specs.Spec{Linux: &specs.Linux{Resources: c.res}}
		if mem, cpus := vmSize(spec, cfg); mem != c.mem || cpus != c.cpus {
			t.Errorf("%s: vmSize = %d MiB, %d CPUs; want %d, %d", c.name, mem, cpus, c.mem, c.cpus)
		}
	}
}

func TestValidIDAndKeys(t *testing.T) {
	for _, ok := range []string{"a", "k8s.io", "abc-DEF_123", strings.Repeat("a", maxIDLen)} {
		if err := validID(ok); err != nil {
			t.Errorf("validID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "a\x00", strings.Repeat("a", maxIDLen+1)} {
		if validID(bad) == nil {
			t.Errorf("validID(%q) accepted", bad)
		}
	}
	k := sandboxKey("/run/containerd/containerd.sock", "default", "pod")
	if len(k) != 32 || k == sandboxKey("/run/containerd/containerd.sock", "default", "pod2") || k == sandboxKey("/other.sock", "default", "pod") {
		t.Errorf("sandboxKey not distinct per containerd and sandbox: %s", k)
	}
	if got := stripAction([]string{"-id", "x", "start"}); !reflect.DeepEqual(got, []string{"-id", "x"}) {
		t.Errorf("stripAction = %v", got)
	}
}

func TestSandboxOf(t *testing.T) {
	for _, c := range []struct {
		name        string
		annotations map[string]string
		want        string
		err         bool
	}{
		{"plain", nil, "task", false},
		{"pod sandbox", map[string]string{annotationContainerType: containerTypeSandbox, annotationSandboxID: "task"}, "task", false},
		{"pod container", map[string]string{annotationContainerType: "container", annotationSandboxID: "pod1"}, "pod1", false},
		{"bad sandbox id", map[string]string{annotationContainerType: "container", annotationSandboxID: "../x"}, "", true},
	} {
		bundle := t.TempDir()
		writeSpec(t, bundle, &specs.Spec{Annotations: c.annotations})
		got, _, err := sandboxOf(bundle, "task")
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%s: sandboxOf = %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}

func writeSpec(t *testing.T, bundle string, spec *specs.Spec) {
	t.Helper()
	f, err := os.Create(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := jsonEncode(f, spec); err != nil {
		t.Fatal(err)
	}
}

// TestLayerCacheConcurrent builds one layer from many goroutines (as
// many shims would): one image is made, every caller gets its path, and
// no temporary file is left. A re-made snapshot directory gets a new
// image, and Prune drops the entry whose directory is gone.
func TestLayerCacheConcurrent(t *testing.T) {
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	dir := t.TempDir()
	layer := filepath.Join(dir, "snapshots", "1", "fs")
	if err := os.MkdirAll(filepath.Join(layer, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(layer, "etc", "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cache, err := newLayerCache(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 6
	var wg sync.WaitGroup
	paths, builds, errs := make([]string, n), make([]bool, n), make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], builds[i], errs[i] = cache.Image(ctx, layer)
		}()
	}
	wg.Wait()
	built := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Image: %v", errs[i])
		}
		if paths[i] != paths[0] {
			t.Errorf("paths differ: %s, %s", paths[i], paths[0])
		}
		if builds[i] {
			built++
		}
	}
	if built != 1 {
		t.Errorf("%d builds of one layer, want 1", built)
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, "cache", "*.tmp-*")); len(tmps) > 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
	if _, b, err := cache.Image(ctx, layer); err != nil || b {
		t.Errorf("second use: built=%v err=%v, want the cached image", b, err)
	}

	// Re-made under the same path: a new key.
	if err := os.RemoveAll(layer); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(layer, 0o755); err != nil {
		t.Fatal(err)
	}
	p2, b2, err := cache.Image(ctx, layer)
	if err != nil || !b2 || p2 == paths[0] {
		t.Errorf("re-made snapshot: %s built=%v %v; want a new image", p2, b2, err)
	}
	removed, err := cache.Prune(ctx)
	if err != nil || removed != 1 {
		t.Errorf("Prune = %d, %v; want the stale entry removed", removed, err)
	}
	if _, err := os.Stat(paths[0]); !os.IsNotExist(err) {
		t.Errorf("stale image still there: %v", err)
	}
	if _, err := os.Stat(p2); err != nil {
		t.Errorf("live image pruned: %v", err)
	}
}

func TestLayerCacheCanceledWait(t *testing.T) {
	dir := t.TempDir()
	lock := filepath.Join(dir, "x.lock")
	unlock, err := lockFile(context.Background(), lock)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, lock); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("lockFile on a held lock = %v, want the deadline", err)
	}
}

// TestStdinPumpCloseIO writes to a stdin fifo and calls CloseIO at once,
// as containerd's client does: every byte written before CloseIO reaches
// the process, then EOF. The fifo's writer never closing must not end
// stdin before that (ctr never closes a piped stdin).
func TestStdinPumpCloseIO(t *testing.T) {
	fifoPath := filepath.Join(t.TempDir(), "stdin")
	if err := syscall.Mkfifo(fifoPath, 0o600); err != nil {
		t.Fatal(err)
	}
	pump, err := openStdin(fifoPath)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(fifoPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	want := strings.Repeat("0123456789abcdef", 10000) // more than a pipe holds
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(pump.r)
		got <- string(b)
	}()
	if _, err := w.WriteString(want); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		t.Fatalf("stdin ended before CloseIO after %d bytes", len(s))
	case <-time.After(100 * time.Millisecond):
	}
	pump.closeInput()
	select {
	case s := <-got:
		if s != want {
			t.Errorf("got %d bytes, want %d", len(s), len(want))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stdin did not end after CloseIO")
	}
	<-pump.done
}

func TestCappedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	c, err := createCappedFile(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"hello ", "world ", "again"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Errorf("Write(%q) = %d, %v", s, n, err)
		}
	}
	c.Close()
	if data, _ := os.ReadFile(path); string(data) != "hello worl" {
		t.Errorf("log = %q, want the first 10 bytes", data)
	}
}

func jsonEncode(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// TestCreateRejectsBadInput: a rootfs the shim cannot serve and a
// missing kernel fail Create with a clear reason before any VM or disk
// is made.
func TestCreateRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	writeSpec(t, bundle, &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}})
	exe, _ := os.Executable()
	cfg := &Config{VMM: exe, Kernel: filepath.Join(dir, "no-vmlinux"), Initrd: exe, RootDir: filepath.Join(dir, "root"), RunDir: filepath.Join(dir, "run")}
	svc := NewService(ServiceConfig{Config: cfg, Namespace: "ns", SandboxID: "t", Dir: filepath.Join(cfg.RunDir, "t")})
	svc.boot = func(context.Context, machineSpec) (*machine, error) {
		t.Fatal("a VM was started")
		return nil, nil
	}
	for _, c := range []struct {
		name   string
		mounts []*types.Mount
		code   codes.Code
		want   string
	}{
		{"tmpfs rootfs", []*types.Mount{{Type: "tmpfs", Source: "tmpfs"}}, codes.InvalidArgument, `mount type "tmpfs"`},
		{"missing kernel", []*types.Mount{{Type: "bind", Source: bundle}}, codes.FailedPrecondition, "guest kernel"},
	} {
		_, err := svc.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "t", Bundle: bundle, Rootfs: c.mounts})
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Create = %v, want %v saying %q", c.name, err, c.code, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("Create left files: %v", entries)
	}
}

// TestCreateBootDoesNotBlockRPCs: while Create waits for the VM to boot
// (a minute on some hosts), the other RPCs answer, Shutdown keeps the
// shim for the task being made, and the shim's cleanup stops the boot
// and leaves none of the task's files.
func TestCreateBootDoesNotBlockRPCs(t *testing.T) {
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeSpec(t, bundle, &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}})
	exe, _ := os.Executable()
	cfg := &Config{VMM: exe, Kernel: exe, Initrd: exe, UpperSizeMiB: 16, RootDir: filepath.Join(dir, "root"), RunDir: filepath.Join(dir, "run")}
	svc := NewService(ServiceConfig{Config: cfg, Namespace: "ns", SandboxID: "b", Dir: filepath.Join(cfg.RunDir, "b")})
	booting, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) }) // unblocks a boot the fix fails to stop
	svc.boot = func(ctx context.Context, _ machineSpec) (*machine, error) {
		close(booting)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-release:
			return nil, errors.New("released")
		}
	}
	created := make(chan error, 1)
	go func() {
		_, err := svc.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "b", Bundle: bundle})
		created <- err
	}()
	select {
	case <-booting:
	case err := <-created:
		t.Fatalf("Create ended before the boot: %v", err)
	}
	answers := func(name string, call func() error, want codes.Code) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			if status.Code(err) != want {
				t.Errorf("%s during the boot: %v, want %v", name, err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s blocked behind the boot", name)
		}
	}
	ctx := context.Background()
	answers("State", func() error { _, err := svc.State(ctx, &taskAPI.StateRequest{ID: "b"}); return err }, codes.NotFound)
	answers("Connect", func() error { _, err := svc.Connect(ctx, &taskAPI.ConnectRequest{ID: "b"}); return err }, codes.OK)
	answers("Create again", func() error {
		_, err := svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "b", Bundle: bundle})
		return err
	}, codes.AlreadyExists)
	answers("Shutdown", func() error { _, err := svc.Shutdown(ctx, &taskAPI.ShutdownRequest{ID: "b"}); return err }, codes.OK)
	select {
	case <-svc.Done():
		t.Error("Shutdown ended the shim while a task was being created")
	default:
	}
	cleaned := make(chan struct{})
	go func() { svc.cleanup(); close(cleaned) }()
	select {
	case <-cleaned:
	case <-time.After(10 * time.Second):
		t.Fatal("cleanup did not stop the boot")
	}
	if err := <-created; status.Code(err) == codes.OK {
		t.Error("Create succeeded after cleanup")
	}
	if _, err := os.Stat(taskDirOf(cfg, "ns", "b")); !os.IsNotExist(err) {
		t.Errorf("task files after the stopped Create: %v", err)
	}
}

// TestShutdownKeepsTasks: Shutdown, Now or not, leaves a shim that
// still has a task running (runc's shim ignores Now too).
func TestShutdownKeepsTasks(t *testing.T) {
	svc := NewService(ServiceConfig{Config: &Config{}, Namespace: "ns", SandboxID: "s"})
	svc.containers["s"] = &container{id: "s", init: newProcess("s", "", protocol.Process{Args: []string{"true"}}, "", "", ""), execs: map[string]*process{}}
	for _, now := range []bool{false, true} {
		if _, err := svc.Shutdown(context.Background(), &taskAPI.ShutdownRequest{ID: "s", Now: now}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-svc.Done():
			t.Fatalf("Shutdown (Now %v) ended the shim with a task left", now)
		default:
		}
	}
	delete(svc.containers, "s")
	if _, err := svc.Shutdown(context.Background(), &taskAPI.ShutdownRequest{ID: "s"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-svc.Done():
	default:
		t.Error("Shutdown without tasks left the shim running")
	}
}
