package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/vmm"
)

// snapMachine is a fake machine that writes snapshots.
type snapMachine struct {
	*fakeMachine
	snapshots  []string      // "state mem" per Snapshot call
	resumes    int           // Resume calls
	delay      time.Duration // how long Snapshot takes
	fail       error         // Snapshot's answer
	resumeFail error         // Resume's answer
}

func (s *snapMachine) Snapshot(statePath, memPath string) error {
	s.mu.Lock()
	delay := s.delay
	s.mu.Unlock()
	time.Sleep(delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snapshots = append(s.snapshots, statePath+" "+memPath)
	return s.fail
}

func (s *snapMachine) SnapshotDiff(statePath, memPath string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snapshots = append(s.snapshots, "diff "+statePath+" "+memPath)
	return s.fail
}

func (s *snapMachine) Resume() error {
	s.mu.Lock()
	s.resumes++
	fail := s.resumeFail
	s.mu.Unlock()
	if fail != nil {
		return fail
	}
	return s.fakeMachine.Resume()
}

func (s *snapMachine) counts() (snapshots []string, resumes int, paused, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.snapshots), s.resumes, s.paused, s.closed
}

// fakeRestorer is a Restorer over a made-up snapshot: it records each
// request and builds a paused snapMachine from snap with the request's
// overrides applied, refusing overrides for devices snap lacks.
type fakeRestorer struct {
	mu         sync.Mutex
	snap       vmm.Config // what the snapshot carries
	reqs       []RestoreRequest
	fail       error // returned instead of a machine
	resumeFail error // the machines' Resume answer
	delay      time.Duration
	machine    *snapMachine // the last one built
}

func (r *fakeRestorer) restore(req RestoreRequest, _ *slog.Logger) (Machine, vmm.Config, error) {
	r.mu.Lock()
	delay := r.delay
	r.mu.Unlock()
	time.Sleep(delay)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
	if r.fail != nil {
		return nil, vmm.Config{}, r.fail
	}
	cfg := r.snap
	cfg.TrackDirtyPages = req.TrackDirtyPages
	cfg.Nets = slices.Clone(cfg.Nets)
	for _, o := range req.NetOverrides {
		i := slices.IndexFunc(cfg.Nets, func(n vmm.NetConfig) bool { return n.ID == o.IfaceID })
		if i < 0 {
			return nil, vmm.Config{}, fmt.Errorf("network override: the snapshot has no interface %q", o.IfaceID)
		}
		cfg.Nets[i].Tap = o.Tap
	}
	if req.VsockUDSPath != "" {
		if cfg.Vsock == nil {
			return nil, vmm.Config{}, errors.New("vsock override: the snapshot has no vsock device")
		}
		v := *cfg.Vsock
		v.UDSPath = req.VsockUDSPath
		cfg.Vsock = &v
	}
	r.machine = &snapMachine{fakeMachine: &fakeMachine{cfg: cfg, paused: true, exit: make(chan vmm.Exit, 1)}, resumeFail: r.resumeFail}
	return r.machine, cfg, nil
}

func (r *fakeRestorer) requests() []RestoreRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

func (r *fakeRestorer) last() *snapMachine {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.machine
}

// snapEnv is an API server whose machines snapshot and restore, with a
// state and a memory file in its directory.
type snapEnv struct {
	*env
	r           *fakeRestorer
	stFile, mem string
}

func newSnapEnv(t *testing.T) *snapEnv {
	t.Helper()
	r := &fakeRestorer{snap: vmm.Config{
		CPUs: 2, MemSize: 256 << 20,
		Drives: []vmm.DriveConfig{{ID: "rootfs", Path: "/images/rootfs.ext4", Root: true, ReadOnly: true}},
		Nets:   []vmm.NetConfig{{ID: "eth0", Tap: "tap0", MAC: "06:00:ac:10:00:02"}},
		Vsock:  &vmm.VsockConfig{GuestCID: 3, UDSPath: "/run/old.sock"},
	}}
	e := newEnv(t, envOption{restore: r.restore, wrap: func(m *fakeMachine) Machine { return &snapMachine{fakeMachine: m} }})
	return &snapEnv{env: e, r: r,
		stFile: writeFile(t, e.dir, "vm.state", "state"),
		mem:    writeFile(t, e.dir, "vm.mem", "memory")}
}

// load is a PUT /snapshot/load body from the env's files, with extra
// fields appended.
func (e *snapEnv) load(extra string) string {
	return fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}%s}`, e.stFile, e.mem, extra)
}

// TestSnapshotLoadValidation covers each way a load body can be wrong:
// every one is a 400 with its reason, and none reaches the restorer.
func TestSnapshotLoadValidation(t *testing.T) {
	e := newSnapEnv(t)
	st, mem := e.stFile, e.mem
	b := func(format string, a ...any) string { return fmt.Sprintf(format, a...) }
	cases := []apiCase{
		{"missing snapshot_path", "PUT", "/snapshot/load", b(`{"mem_file_path":%q}`, mem), 400, `missing required field "snapshot_path"`},
		{"empty snapshot_path", "PUT", "/snapshot/load", b(`{"snapshot_path":"","mem_file_path":%q}`, mem), 400, "snapshot_path is empty"},
		{"no memory source", "PUT", "/snapshot/load", b(`{"snapshot_path":%q}`, st), 400, `one of "mem_backend" or "mem_file_path"`},
		{"null memory backend", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_backend":null}`, st), 400, `one of "mem_backend" or "mem_file_path"`},
		{"both memory sources", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_file_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, st, mem, mem), 400, "exclude each other"},
		{"empty mem_file_path", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_file_path":""}`, st), 400, "mem_file_path is empty"},
		{"backend type missing", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_backend":{"backend_path":%q}}`, st, mem), 400, `missing required field "mem_backend.backend_type"`},
		{"uffd backend", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Uffd","backend_path":"/run/uffd.sock"}}`, st), 400, `"Uffd" is not supported`},
		{"unknown backend", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_backend":{"backend_type":"file","backend_path":%q}}`, st, mem), 400, `backend_type "file" is not one of File, Uffd`},
		{"backend path missing", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File"}}`, st), 400, `missing required field "mem_backend.backend_path"`},
		{"backend unknown field", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q,"prefault":true}}`, st, mem), 400, `unknown field "prefault"`},
		{"dirty pages wrong type", "PUT", "/snapshot/load", e.load(`,"track_dirty_pages":"yes"`), 400, `field "track_dirty_pages": expected a boolean`},
		{"realtime clock", "PUT", "/snapshot/load", e.load(`,"clock_realtime":true`), 400, "clock_realtime is not supported"},
		{"huge pages", "PUT", "/snapshot/load", e.load(`,"huge_pages":"2M"`), 400, `huge_pages "2M" is not supported`},
		{"bad huge pages", "PUT", "/snapshot/load", e.load(`,"huge_pages":"1G"`), 400, `huge_pages "1G" is not one of`},
		{"override without iface_id", "PUT", "/snapshot/load", e.load(`,"network_overrides":[{"host_dev_name":"tap1"}]`), 400, `missing required field "network_overrides[0].iface_id"`},
		{"override bad iface_id", "PUT", "/snapshot/load", e.load(`,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"},{"iface_id":"a-b","host_dev_name":"tap2"}]`), 400, `network_overrides[1].iface_id "a-b" is invalid`},
		{"override without tap", "PUT", "/snapshot/load", e.load(`,"network_overrides":[{"iface_id":"eth0"}]`), 400, `missing required field "network_overrides[0].host_dev_name"`},
		{"override bad tap", "PUT", "/snapshot/load", e.load(`,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap/1"}]`), 400, `network_overrides[0].host_dev_name "tap/1" is not a valid interface name`},
		{"override twice", "PUT", "/snapshot/load", e.load(`,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"},{"iface_id":"eth0","host_dev_name":"tap2"}]`), 400, `iface_id "eth0" is overridden twice`},
		{"drive override without drive_id", "PUT", "/snapshot/load", e.load(`,"drive_overrides":[{"path_on_host":"x"}]`), 400, `missing required field "drive_overrides[0].drive_id"`},
		{"drive override without path", "PUT", "/snapshot/load", e.load(`,"drive_overrides":[{"drive_id":"rootfs"}]`), 400, `missing required field "drive_overrides[0].path_on_host"`},
		{"drive override twice", "PUT", "/snapshot/load", e.load(`,"drive_overrides":[{"drive_id":"rootfs","path_on_host":"a"},{"drive_id":"rootfs","path_on_host":"b"}]`), 400, `drive_id "rootfs" is overridden twice`},
		{"drive override file absent", "PUT", "/snapshot/load", e.load(`,"drive_overrides":[{"drive_id":"rootfs","path_on_host":"/nonexistent/clone.img"}]`), 400, "drive_overrides[0].path_on_host: open"},
		{"vsock override without path", "PUT", "/snapshot/load", e.load(`,"vsock_override":{}`), 400, `missing required field "vsock_override.uds_path"`},
		{"vsock override empty path", "PUT", "/snapshot/load", e.load(`,"vsock_override":{"uds_path":""}`), 400, "vsock_override.uds_path is empty"},
		{"unknown field", "PUT", "/snapshot/load", e.load(`,"version":"1.0.0"`), 400, `unknown field "version"`},
		{"wrong type", "PUT", "/snapshot/load", e.load(`,"resume_vm":"yes"`), 400, `field "resume_vm": expected a boolean`},
		{"no body", "PUT", "/snapshot/load", "", 400, "empty request body"},
		{"state file absent", "PUT", "/snapshot/load", b(`{"snapshot_path":"%s/nope","mem_file_path":%q}`, e.dir, mem), 400, "snapshot_path: open"},
		{"state file a directory", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_file_path":%q}`, e.dir, mem), 400, "snapshot_path: " + e.dir + " is not a regular file"},
		{"memory file absent", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":"%s/nope"}}`, st, e.dir), 400, "mem_backend.backend_path: open"},
		{"memory file absent (deprecated field)", "PUT", "/snapshot/load", b(`{"snapshot_path":%q,"mem_file_path":"%s/nope"}`, st, e.dir), 400, "mem_file_path: open"},
		{"create before boot", "PUT", "/snapshot/create", b(`{"snapshot_path":"%s/s","mem_file_path":"%s/m"}`, e.dir, e.dir), 400, "not supported before starting"},
		{"still not started", "GET", "/", "", 200, `"state":"Not started"`},
	}
	runCases(t, e.env, cases)
	if reqs := e.r.requests(); len(reqs) != 0 {
		t.Errorf("refused loads reached the restorer: %+v", reqs)
	}
}

// TestSnapshotCreateValidation covers each way a create body can be
// wrong, on a paused machine: a 400 with its reason, and no Snapshot call.
func TestSnapshotCreateValidation(t *testing.T) {
	e := newSnapEnv(t)
	e.boot()
	e.mustDo("PATCH", "/vm", `{"state":"Paused"}`, 204)
	cases := []apiCase{
		{"missing snapshot_path", "PUT", "/snapshot/create", `{"mem_file_path":"%[3]s/m"}`, 400, `missing required field "snapshot_path"`},
		{"missing mem_file_path", "PUT", "/snapshot/create", `{"snapshot_path":"%[3]s/s"}`, 400, `missing required field "mem_file_path"`},
		{"empty mem_file_path", "PUT", "/snapshot/create", `{"snapshot_path":"%[3]s/s","mem_file_path":""}`, 400, "mem_file_path is empty"},
		{"one file for both", "PUT", "/snapshot/create", `{"snapshot_path":"%[3]s/s","mem_file_path":"%[3]s/s"}`, 400, "are the same file"},
		{"diff without dirty page tracking", "PUT", "/snapshot/create", `{"snapshot_type":"Diff","snapshot_path":"%[3]s/s","mem_file_path":"%[3]s/m"}`, 400, `snapshot_type "Diff" needs dirty page tracking`},
		{"unknown type", "PUT", "/snapshot/create", `{"snapshot_type":"full","snapshot_path":"%[3]s/s","mem_file_path":"%[3]s/m"}`, 400, `snapshot_type "full" is not one of Full, Diff`},
		{"version", "PUT", "/snapshot/create", `{"snapshot_path":"%[3]s/s","mem_file_path":"%[3]s/m","version":"0.25.0"}`, 400, "removed it in v1.6.0"},
		{"unknown field", "PUT", "/snapshot/create", `{"snapshot_path":"%[3]s/s","mem_file_path":"%[3]s/m","compress":true}`, 400, `unknown field "compress"`},
		{"load after boot", "PUT", "/snapshot/load", e.load(""), 400, "not supported after starting"},
	}
	runCases(t, e.env, cases)
	m := e.machineAs(t)
	if got, _, _, _ := m.counts(); len(got) != 0 {
		t.Errorf("refused creates reached the machine: %v", got)
	}
}

// machineAs is the machine InstanceStart built, as the env's wrapper made it.
func (e *snapEnv) machineAs(t *testing.T) *snapMachine {
	t.Helper()
	e.ctl.mu.Lock()
	defer e.ctl.mu.Unlock()
	m, ok := e.ctl.machine.(*snapMachine)
	if !ok {
		t.Fatalf("machine %T, want a *snapMachine", e.ctl.machine)
	}
	return m
}

// TestSnapshotCreate checks Firecracker's rules for creating a snapshot:
// only after boot and while paused; the machine gets the paths and stays
// paused; its refusal is a 400 with its reason.
func TestSnapshotCreate(t *testing.T) {
	e := newSnapEnv(t)
	body := fmt.Sprintf(`{"snapshot_path":"%s/vm.snap","mem_file_path":"%s/vm.mem2"}`, e.dir, e.dir)
	code, got, _ := e.do("PUT", "/snapshot/create", body)
	if code != 400 || !strings.Contains(got, "not supported before starting") {
		t.Fatalf("create before boot: %d %s", code, got)
	}
	e.boot()
	m := e.machineAs(t)
	code, got, _ = e.do("PUT", "/snapshot/create", body)
	if code != 400 || !strings.Contains(got, "must be paused to create a snapshot") {
		t.Fatalf("create while running: %d %s", code, got)
	}
	e.mustDo("PATCH", "/vm", `{"state":"Paused"}`, 204)
	e.mustDo("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":"%s/vm.snap","mem_file_path":"%s/vm.mem2"}`, e.dir, e.dir), 204)
	snaps, _, paused, _ := m.counts()
	if want := []string{e.dir + "/vm.snap " + e.dir + "/vm.mem2"}; !slices.Equal(snaps, want) || !paused {
		t.Fatalf("Snapshot calls %q (paused %v), want %q on a paused machine", snaps, paused, want)
	}
	if s := e.state(); s != StatePaused {
		t.Fatalf("state after create %q, want Paused", s)
	}

	m.mu.Lock()
	m.fail = errors.New("write /full/disk/vm.mem2: no space left on device")
	m.mu.Unlock()
	code, got, _ = e.do("PUT", "/snapshot/create", body)
	if code != 400 || !strings.Contains(got, "cannot create the snapshot: write /full/disk/vm.mem2: no space left on device") {
		t.Fatalf("create the machine refuses: %d %s", code, got)
	}

	e.mustDo("PATCH", "/vm", `{"state":"Resumed"}`, 204)
	m.exit <- vmm.Exit{Kind: vmm.ExitDebugPort}
	<-e.ctl.Done()
	code, got, _ = e.do("PUT", "/snapshot/create", body)
	if code != 400 || !strings.Contains(got, "already exited") {
		t.Fatalf("create after exit: %d %s", code, got)
	}
}

// TestDiffSnapshotCreate: a microVM booted with track_dirty_pages takes
// Diff snapshots through DiffSnapshotter, Full ones still through
// Snapshot, and the latency of each is reported under its own name.
func TestDiffSnapshotCreate(t *testing.T) {
	e := newSnapEnv(t)
	e.mustDo("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"track_dirty_pages":true}`, 204)
	e.boot()
	m := e.machineAs(t)
	e.mustDo("PATCH", "/vm", `{"state":"Paused"}`, 204)
	e.mustDo("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":"%s/s1","mem_file_path":"%s/m1"}`, e.dir, e.dir), 204)
	e.mustDo("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Diff","snapshot_path":"%s/s2","mem_file_path":"%s/d2"}`, e.dir, e.dir), 204)
	snaps, _, paused, _ := m.counts()
	if want := []string{e.dir + "/s1 " + e.dir + "/m1", "diff " + e.dir + "/s2 " + e.dir + "/d2"}; !slices.Equal(snaps, want) || !paused {
		t.Fatalf("snapshot calls %q (paused %v), want %q", snaps, paused, want)
	}
	if got := e.mustDo("GET", "/vm/config", "", 200); !strings.Contains(got, `"track_dirty_pages":true`) {
		t.Errorf("GET /vm/config: %s, want track_dirty_pages true", got)
	}
}

// TestDiffSnapshotAfterLoad: track_dirty_pages in a load (or the
// deprecated enable_diff_snapshots, with Firecracker's Deprecation header)
// reaches the restorer and makes the restored microVM take Diff
// snapshots; a load without it leaves Diff refused.
func TestDiffSnapshotAfterLoad(t *testing.T) {
	for _, tt := range []struct {
		name, extra string
		track, dep  bool
	}{
		{"track_dirty_pages", `,"track_dirty_pages":true`, true, false},
		{"enable_diff_snapshots", `,"enable_diff_snapshots":true`, true, true},
		{"neither", `,"track_dirty_pages":false`, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newSnapEnv(t)
			_, _, hdr := e.do("PUT", "/snapshot/load", e.load(tt.extra))
			if (hdr.Get("Deprecation") != "") != tt.dep {
				t.Errorf("Deprecation header %q, want one: %v", hdr.Get("Deprecation"), tt.dep)
			}
			reqs := e.r.requests()
			if len(reqs) != 1 || reqs[0].TrackDirtyPages != tt.track {
				t.Fatalf("restore requests %+v, want one with TrackDirtyPages %v", reqs, tt.track)
			}
			if got := e.mustDo("GET", "/machine-config", "", 200); !strings.Contains(got, fmt.Sprintf(`"track_dirty_pages":%v`, tt.track)) {
				t.Errorf("GET /machine-config: %s", got)
			}
			code, got, _ := e.do("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Diff","snapshot_path":"%s/s","mem_file_path":"%s/d"}`, e.dir, e.dir))
			snaps, _, _, _ := e.r.last().counts()
			if tt.track {
				if code != 204 || !slices.Equal(snaps, []string{"diff " + e.dir + "/s " + e.dir + "/d"}) {
					t.Errorf("Diff after the load: %d %s, calls %q", code, got, snaps)
				}
			} else if code != 400 || !strings.Contains(got, "needs dirty page tracking") || len(snaps) != 0 {
				t.Errorf("Diff after a load without tracking: %d %s, calls %q", code, got, snaps)
			}
		})
	}
}

// TestSnapshotCreateWithoutSnapshotter checks the refusal when the machine
// can't write snapshots.
func TestSnapshotCreateWithoutSnapshotter(t *testing.T) {
	e := newEnv(t)
	e.boot()
	e.mustDo("PATCH", "/vm", `{"state":"Paused"}`, 204)
	code, got, _ := e.do("PUT", "/snapshot/create", `{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}`)
	if code != 400 || !strings.Contains(got, "creating snapshots is not supported by this machine") {
		t.Fatalf("create without a Snapshotter: %d %s", code, got)
	}
}

// TestSnapshotLoadOnlyFirst checks that a load must come before any
// configuration but the logger's and the metrics', as in Firecracker,
// and that a configuration call that failed does not count.
func TestSnapshotLoadOnlyFirst(t *testing.T) {
	for _, tc := range []struct {
		name, method, path, body, configured string
	}{
		{"machine config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`, "machine-config"},
		{"machine config patch", "PATCH", "/machine-config", `{"vcpu_count":2}`, "machine-config"},
		{"boot source", "PUT", "/boot-source", `{"kernel_image_path":"%[1]s"}`, "boot-source"},
		{"drive", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s","is_root_device":false}`, "drives"},
		{"network interface", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`, "network-interfaces"},
		{"vsock", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"%[3]s/v.sock"}`, "vsock"},
		{"entropy", "PUT", "/entropy", `{}`, "entropy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newSnapEnv(t)
			e.mustDo("PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`, 400) // refused: not configured
			body := tc.body
			if strings.Contains(body, "%[") {
				body = fmt.Sprintf(body, e.kernel, e.disk, e.dir)
			}
			e.mustDo(tc.method, tc.path, body, 204)
			code, got, _ := e.do("PUT", "/snapshot/load", e.load(""))
			want := "load snapshot is only allowed before any other configuration except the logger and metrics (" + tc.configured + " is already configured)"
			if code != 400 || !strings.Contains(got, want) {
				t.Fatalf("load after %s: %d %s, want 400 %q", tc.name, code, got, want)
			}
			if reqs := e.r.requests(); len(reqs) != 0 {
				t.Errorf("refused load reached the restorer: %+v", reqs)
			}
		})
	}
	t.Run("logger and metrics", func(t *testing.T) {
		e := newSnapEnv(t)
		e.mustDo("PUT", "/logger", fmt.Sprintf(`{"log_path":"%s/log","level":"Info"}`, e.dir), 204)
		e.mustDo("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":"%s/metrics"}`, e.dir), 204)
		e.mustDo("PUT", "/snapshot/load", e.load(""), 204)
		if s := e.state(); s != StatePaused {
			t.Fatalf("state %q after a load, want Paused", s)
		}
		if log, _ := os.ReadFile(filepath.Join(e.dir, "log")); !strings.Contains(string(log), "microVM restored") {
			t.Errorf("the log chosen before the load has no restore line: %q", log)
		}
	})
	t.Run("command line", func(t *testing.T) {
		for _, base := range []vmm.Config{
			{Kernel: "/boot/vmlinux"},
			{Drives: []vmm.DriveConfig{{ID: "d", Path: "/d.img"}}},
			{Entropy: &vmm.EntropyConfig{}},
		} {
			r := &fakeRestorer{}
			ctl := NewController(Options{Base: base, Restore: r.restore})
			err := ctl.LoadSnapshot(SnapshotLoadParams{SnapshotPath: ptr("/s"), MemFilePath: ptr("/m")})
			ctl.Close()
			if err == nil || !strings.Contains(err.Error(), "(command line) is already configured") {
				t.Errorf("load over command-line config %+v: %v", base, err)
			}
		}
	})
}

// TestSnapshotLoadThenResume loads a snapshot without resume_vm: the
// instance is Paused with the snapshot's configuration, overrides
// applied, until PATCH /vm resumes it; from then on it is a booted VM.
func TestSnapshotLoadThenResume(t *testing.T) {
	e := newSnapEnv(t)
	_, _, hdr := e.do("PUT", "/snapshot/load", e.load(`,"resume_vm":false,"track_dirty_pages":false,"clock_realtime":false,"huge_pages":"None",`+
		`"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap7"}],"vsock_override":{"uds_path":"/run/new.sock"},`+
		fmt.Sprintf(`"drive_overrides":[{"drive_id":"rootfs","path_on_host":%q}]`, e.mem)))
	if hdr.Get("Deprecation") != "" {
		t.Error("Deprecation header on a load without deprecated fields")
	}
	reqs := e.r.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d restore requests, want 1", len(reqs))
	}
	req := reqs[0]
	if req.SnapshotPath != e.stFile || req.MemFilePath != e.mem || !slices.Equal(req.NetOverrides, []NetOverride{{IfaceID: "eth0", Tap: "tap7"}}) || req.VsockUDSPath != "/run/new.sock" ||
		!slices.Equal(req.DriveOverrides, []DriveOverrideRequest{{DriveID: "rootfs", Path: e.mem}}) {
		t.Fatalf("restore request %+v does not carry the load's paths and overrides", req)
	}
	m := e.r.last()
	if _, resumes, paused, _ := m.counts(); resumes != 0 || !paused {
		t.Fatalf("after a load without resume_vm: %d resumes, paused %v", resumes, paused)
	}
	runCases(t, e.env, []apiCase{
		{"paused", "GET", "/", "", 200, `"state":"Paused"`},
		{"machine config", "GET", "/machine-config", "", 200, `"vcpu_count":2,"mem_size_mib":256`},
		{"vm config machine", "GET", "/vm/config", "", 200, `"machine-config":{"vcpu_count":2,"mem_size_mib":256`},
		{"vm config drives", "GET", "/vm/config", "", 200, `"drives":[{"drive_id":"rootfs","path_on_host":"/images/rootfs.ext4","is_root_device":true,"is_read_only":true`},
		{"vm config nets", "GET", "/vm/config", "", 200, `"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap7","guest_mac":"06:00:ac:10:00:02"}]`},
		{"vm config vsock", "GET", "/vm/config", "", 200, `"vsock":{"guest_cid":3,"uds_path":"/run/new.sock"}`},
		{"no second load", "PUT", "/snapshot/load", e.load(""), 400, "not supported after starting"},
		{"no boot", "PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "not supported after starting"},
		{"no reconfiguration", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`, 400, "not supported after starting"},
		{"resume", "PATCH", "/vm", `{"state":"Resumed"}`, 204, ""},
		{"running", "GET", "/", "", 200, `"state":"Running"`},
		{"pause", "PATCH", "/vm", `{"state":"Paused"}`, 204, ""},
		{"snapshot the restored VM", "PUT", "/snapshot/create", `{"snapshot_path":"%[3]s/again.snap","mem_file_path":"%[3]s/again.mem"}`, 204, ""},
	})
	snaps, resumes, _, _ := m.counts()
	if resumes != 1 || !slices.Equal(snaps, []string{e.dir + "/again.snap " + e.dir + "/again.mem"}) {
		t.Errorf("restored machine saw %d resumes and snapshots %q; want 1 and the second snapshot", resumes, snaps)
	}
	// The restored machine ends like a booted one.
	m.exit <- vmm.Exit{Kind: vmm.ExitDebugPort, Status: 3}
	select {
	case <-e.ctl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the restored machine exited")
	}
	if _, _, _, closed := m.counts(); !closed || e.ctl.Exit().ExitCode() != 3 {
		t.Errorf("after exit: closed %v, exit code %d", closed, e.ctl.Exit().ExitCode())
	}
}

// TestSnapshotLoadResumeVM: resume_vm resumes the machine before the load
// answers; the deprecated mem_file_path works and is flagged.
func TestSnapshotLoadResumeVM(t *testing.T) {
	e := newSnapEnv(t)
	code, got, hdr := e.do("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"resume_vm":true}`, e.stFile, e.mem))
	if code != 204 {
		t.Fatalf("load: %d %s", code, got)
	}
	if hdr.Get("Deprecation") == "" {
		t.Error("no Deprecation header for mem_file_path")
	}
	if reqs := e.r.requests(); len(reqs) != 1 || reqs[0].MemFilePath != e.mem {
		t.Fatalf("restore requests %+v, want one with mem_file_path as the memory file", reqs)
	}
	if _, resumes, paused, _ := e.r.last().counts(); resumes != 1 || paused {
		t.Fatalf("after a load with resume_vm: %d resumes, paused %v", resumes, paused)
	}
	if s := e.state(); s != StateRunning {
		t.Fatalf("state %q, want Running", s)
	}
}

// TestSnapshotLoadFailure: a restore that fails, or a machine that fails
// to resume, is a 400 with the reason; nothing is left running and the
// next load may succeed.
func TestSnapshotLoadFailure(t *testing.T) {
	e := newSnapEnv(t)
	e.r.mu.Lock()
	e.r.fail = errors.New("snapshot file: bad checksum")
	e.r.mu.Unlock()
	code, got, _ := e.do("PUT", "/snapshot/load", e.load(""))
	if code != 400 || !strings.Contains(got, "cannot load the snapshot: snapshot file: bad checksum") {
		t.Fatalf("load the restorer refuses: %d %s", code, got)
	}
	e.r.mu.Lock()
	e.r.fail = nil
	e.r.mu.Unlock()
	code, got, _ = e.do("PUT", "/snapshot/load", e.load(`,"network_overrides":[{"iface_id":"eth9","host_dev_name":"tap9"}]`))
	if code != 400 || !strings.Contains(got, `the snapshot has no interface \"eth9\"`) {
		t.Fatalf("override for an unknown interface: %d %s", code, got)
	}
	if e.ctl.Started() || e.state() != StateNotStarted {
		t.Fatal("started after a failed load")
	}

	e.r.mu.Lock()
	e.r.resumeFail = errors.New("vcpu 0: KVM_SET_REGS: invalid argument")
	e.r.mu.Unlock()
	code, got, _ = e.do("PUT", "/snapshot/load", e.load(`,"resume_vm":true`))
	if code != 400 || !strings.Contains(got, "could not be resumed") || !strings.Contains(got, "KVM_SET_REGS") {
		t.Fatalf("load whose resume fails: %d %s", code, got)
	}
	if _, _, _, closed := e.r.last().counts(); !closed {
		t.Error("machine that failed to resume was not closed")
	}
	if e.ctl.Started() {
		t.Fatal("started after a failed resume")
	}

	e.r.mu.Lock()
	e.r.resumeFail = nil
	e.r.mu.Unlock()
	e.mustDo("PUT", "/snapshot/load", e.load(`,"resume_vm":true`), 204)
	if s := e.state(); s != StateRunning {
		t.Fatalf("state after a load following failures %q, want Running", s)
	}
}

// TestSnapshotLoadFIFO: a named pipe as the state file is refused at
// once, not waited on with the controller locked.
func TestSnapshotLoadFIFO(t *testing.T) {
	e := newSnapEnv(t)
	fifo := filepath.Join(e.dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		code, got, _, err := e.send("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, fifo, e.mem))
		if err != nil || code != 400 || !strings.Contains(got, "is not a regular file") {
			t.Errorf("load from a FIFO: %d %s %v", code, got, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("load from a FIFO hangs")
	}
}

// TestSnapshotLoadDefaultRestorer: a controller built without a Restorer
// restores with vmm.Restore, which refuses a file that is not a snapshot
// for what it is (before it needs KVM), and the instance is still not
// started.
func TestSnapshotLoadDefaultRestorer(t *testing.T) {
	e := newEnv(t)
	st := writeFile(t, e.dir, "s", "state")
	code, got, _ := e.do("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`, st, st))
	if code != 400 || !strings.Contains(got, "not a vmm snapshot") {
		t.Fatalf("load of a file that is not a snapshot: %d %s", code, got)
	}
	if code, got, _ := e.do("GET", "/", ""); code != 200 || !strings.Contains(got, `"Not started"`) {
		t.Fatalf("after a refused load: %d %s", code, got)
	}
}

// TestRestoreRequestBase: the restorer gets the command line's host-side
// settings, and none of the guest's shape, which is the snapshot's.
func TestRestoreRequestBase(t *testing.T) {
	dir := t.TempDir()
	st := writeFile(t, dir, "s", "state")
	var console strings.Builder
	r := &fakeRestorer{snap: vmm.Config{CPUs: 1, MemSize: 64 << 20}}
	ctl := NewController(Options{Base: vmm.Config{CPUs: 4, MemSize: 1 << 30, Cmdline: vmm.DefaultCmdline, ConsoleOut: &console, DebugExit: true, SystemMap: "/boot/System.map"},
		Restore: r.restore})
	defer ctl.Close()
	if err := ctl.LoadSnapshot(SnapshotLoadParams{SnapshotPath: &st, MemFilePath: &st}); err != nil {
		t.Fatal(err)
	}
	defer func() { ctl.Stop(); <-ctl.Done() }()
	reqs := r.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d restore requests", len(reqs))
	}
	b := reqs[0].Base
	if b.ConsoleOut != &console || !b.DebugExit || b.SystemMap != "/boot/System.map" {
		t.Errorf("base %+v lost the host-side settings", b)
	}
	if b.CPUs != 0 || b.MemSize != 0 || b.Cmdline != "" {
		t.Errorf("base %+v carries a guest shape the snapshot should decide", b)
	}
	if mc := ctl.MachineConfig(); *mc.VCPUCount != 1 || *mc.MemSizeMiB != 64 {
		t.Errorf("machine config after the load %d vCPUs, %d MiB; want the snapshot's 1, 64", *mc.VCPUCount, *mc.MemSizeMiB)
	}
}

// TestSnapshotLatencyMetrics: the metrics line reports how long the last
// load and create took.
func TestSnapshotLatencyMetrics(t *testing.T) {
	e := newSnapEnv(t)
	const delay = 3 * time.Millisecond
	e.r.mu.Lock()
	e.r.delay = delay
	e.r.mu.Unlock()
	path := filepath.Join(e.dir, "metrics")
	e.mustDo("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, path), 204)
	e.mustDo("PUT", "/snapshot/load", e.load(""), 204)
	m := e.r.last()
	m.mu.Lock()
	m.delay = 2 * delay
	m.mu.Unlock()
	e.mustDo("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path":"%s/s2","mem_file_path":"%s/m2"}`, e.dir, e.dir), 204)
	e.mustDo("PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	var line MetricsLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &line); err != nil {
		t.Fatal(err)
	}
	l := line.LatenciesUs
	if l.LoadSnapshot < uint64(delay.Microseconds()) || l.FullCreateSnapshot < uint64(2*delay.Microseconds()) {
		t.Errorf("latencies %+v, want load >= %d us and create >= %d us", l, delay.Microseconds(), 2*delay.Microseconds())
	}
}
