package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/testenv"
	"github.com/govmm/vmm/vmm"
)

// fakeMachine stands in for a KVM machine.
type fakeMachine struct {
	mu         sync.Mutex
	cfg        vmm.Config
	paused     bool
	ctrlAltDel int
	closed     bool
	exit       chan vmm.Exit
}

func (f *fakeMachine) Run(ctx context.Context) vmm.Exit {
	select {
	case e := <-f.exit:
		return e
	case <-ctx.Done():
		return vmm.Exit{Kind: vmm.ExitStopped}
	}
}

func (f *fakeMachine) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeMachine) Pause() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = true
	return nil
}

func (f *fakeMachine) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = false
	return nil
}

func (f *fakeMachine) Stats() vmm.Stats {
	return vmm.Stats{Exits: map[string]uint64{"IO": 42}}
}

func (f *fakeMachine) SendCtrlAltDel() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ctrlAltDel++
	return nil
}

// updatingMachine can swap drives, as *vmm.Machine does.
type updatingMachine struct {
	*fakeMachine
	updates []string
	fail    error // returned by UpdateDrive when set
}

func (u *updatingMachine) UpdateDrive(id, path string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.updates = append(u.updates, id+"="+path)
	return u.fail
}

// env is one API server over a real Unix socket with a fake machine.
type env struct {
	t       *testing.T
	dir     string
	sock    string
	ctl     *Controller
	srv     *Server
	hc      *http.Client
	kernel  string
	disk    string
	machine *fakeMachine // set by InstanceStart
	updater *updatingMachine
	mu      sync.Mutex
}

// envOption adjusts the fake machine factory.
type envOption struct {
	devices  bool // accept virtio devices (and build a DriveUpdater)
	interval time.Duration
	wrap     func(*fakeMachine) Machine // what the factory returns, when set
	restore  Restorer
}

// shortTempDir keeps socket paths well under the 108-byte sun_path limit
// (t.TempDir embeds the test name).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "api")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	var o envOption
	if len(opts) > 0 {
		o = opts[0]
	}
	e := &env{t: t, dir: shortTempDir(t)}
	e.sock = filepath.Join(e.dir, "api.sock")
	e.kernel = writeFile(t, e.dir, "vmlinux", "not really a kernel")
	e.disk = writeFile(t, e.dir, "disk.img", strings.Repeat("\x00", 4096))
	e.ctl = NewController(Options{
		ID: "test-vm", Version: "9.9.9",
		Base:            vmm.Config{CPUs: 1, MemSize: 128 << 20},
		MetricsInterval: o.interval,
		Restore:         o.restore,
		Factory: func(cfg vmm.Config, _ *slog.Logger) (Machine, error) {
			m := &fakeMachine{cfg: cfg, exit: make(chan vmm.Exit, 1)}
			e.mu.Lock()
			defer e.mu.Unlock()
			e.machine = m
			if o.wrap != nil {
				return o.wrap(m), nil
			}
			if o.devices {
				e.updater = &updatingMachine{fakeMachine: m}
				return e.updater, nil
			}
			// Like vmm.New refusing devices it does not have yet.
			if len(cfg.Drives) > 0 || len(cfg.Nets) > 0 || cfg.Vsock != nil {
				return nil, errors.New("virtio devices (drives, network interfaces, vsock) are not supported yet")
			}
			return m, nil
		},
	})
	e.srv = NewServer(e.ctl)
	if err := e.srv.Listen(e.sock); err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve()
	t.Cleanup(func() {
		e.ctl.Stop()
		if e.ctl.Started() {
			<-e.ctl.Done()
		}
		e.srv.Shutdown(context.Background())
		e.ctl.Close()
	})
	e.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.sock)
	}}, Timeout: 10 * time.Second}
	return e
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// do sends one request and returns the status, body and headers.
func (e *env) do(method, path, body string) (int, string, http.Header) {
	e.t.Helper()
	code, got, hdr, err := e.send(method, path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	return code, got, hdr
}

// send is do for goroutines other than the test's, which must not call
// t.Fatal.
func (e *env) send(method, path, body string) (int, string, http.Header, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		return 0, "", nil, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return 0, "", nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	return resp.StatusCode, string(b), resp.Header, nil
}

func (e *env) mustDo(method, path, body string, want int) string {
	e.t.Helper()
	code, got, _ := e.do(method, path, body)
	if code != want {
		e.t.Fatalf("%s %s %s: status %d (%s), want %d", method, path, body, code, got, want)
	}
	return got
}

// boot configures a device-less machine and starts it.
func (e *env) boot() *fakeMachine {
	e.t.Helper()
	e.mustDo("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0"}`, e.kernel), 204)
	e.mustDo("PUT", "/actions", `{"action_type":"InstanceStart"}`, 204)
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.machine
}

func (e *env) state() string {
	e.t.Helper()
	var info InstanceInfo
	if err := json.Unmarshal([]byte(e.mustDo("GET", "/", "", 200)), &info); err != nil {
		e.t.Fatal(err)
	}
	return info.State
}

type apiCase struct {
	name         string
	method, path string
	body         string // %[1]s = kernel path, %[2]s = disk path, %[3]s = temp dir
	status       int
	msg          string // substring of fault_message (400/404/405) or body (200)
}

// TestEndpointsBeforeBoot covers each endpoint with a valid request and
// the ways a request can be wrong, on a machine not yet started.
func TestEndpointsBeforeBoot(t *testing.T) {
	cases := []apiCase{
		{"instance info", "GET", "/", "", 200, `"state":"Not started"`},
		{"instance info fields", "GET", "/", "", 200, `"app_name":"vmm","id":"test-vm"`},
		{"version", "GET", "/version", "", 200, `"firecracker_version":"9.9.9"`},
		{"machine config defaults", "GET", "/machine-config", "", 200, `"vcpu_count":1,"mem_size_mib":128`},
		{"GET with a body", "GET", "/machine-config", `{}`, 400, "GET requests take no body"},

		{"machine config put", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"cpu_template":"None"}`, 204, ""},
		{"machine config missing vcpu_count", "PUT", "/machine-config", `{"mem_size_mib":256}`, 400, `missing required field "vcpu_count"`},
		{"machine config missing mem", "PUT", "/machine-config", `{"vcpu_count":2}`, 400, `"mem_size_mib"`},
		{"machine config wrong type", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":256}`, 400, `field "vcpu_count": expected an integer, got string`},
		{"machine config unknown field", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"ht_enabled":true}`, 400, `unknown field "ht_enabled"`},
		{"machine config bad JSON", "PUT", "/machine-config", `{"vcpu_count":2,`, 400, "invalid JSON"},
		{"machine config trailing data", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256} {}`, 400, "after the JSON value"},
		{"machine config zero vcpus", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`, 400, "vcpu_count 0 is out of range"},
		{"machine config tiny memory", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":1}`, 400, "mem_size_mib 1"},
		{"machine config smt", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":true}`, 400, "smt"},
		{"machine config known template", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"cpu_template":"T2"}`, 400, `cpu_template "T2" is not supported`},
		{"machine config unknown template", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"cpu_template":"Z9"}`, 400, `cpu_template "Z9" is not one of`},
		{"machine config dirty pages", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"track_dirty_pages":true}`, 204, ""},
		{"dirty pages reported", "GET", "/machine-config", "", 200, `"track_dirty_pages":true`},
		{"dirty pages kept by a patch", "PATCH", "/machine-config", `{"mem_size_mib":256}`, 204, ""},
		{"dirty pages still on", "GET", "/vm/config", "", 200, `"track_dirty_pages":true`},
		{"dirty pages off by a put without them", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`, 204, ""},
		{"dirty pages off", "GET", "/machine-config", "", 200, `"track_dirty_pages":false`},
		{"dirty pages wrong type", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"track_dirty_pages":1}`, 400, `field "track_dirty_pages": expected a boolean`},
		{"machine config huge pages", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"huge_pages":"2M"}`, 400, "huge_pages"},
		{"machine config patch", "PATCH", "/machine-config", `{"vcpu_count":4}`, 204, ""},
		{"machine config patch wrong type", "PATCH", "/machine-config", `{"mem_size_mib":true}`, 400, `field "mem_size_mib"`},
		{"machine config empty body", "PUT", "/machine-config", ``, 400, "empty request body"},

		{"boot source", "PUT", "/boot-source", `{"kernel_image_path":"%[1]s","boot_args":"console=ttyS0","initrd_path":"%[2]s"}`, 204, ""},
		{"boot source missing kernel", "PUT", "/boot-source", `{"boot_args":"x"}`, 400, `missing required field "kernel_image_path"`},
		{"boot source kernel absent", "PUT", "/boot-source", `{"kernel_image_path":"%[3]s/nope"}`, 400, "kernel_image_path: open"},
		{"boot source kernel is a directory", "PUT", "/boot-source", `{"kernel_image_path":"%[3]s"}`, 400, "not a regular file"},
		{"boot source initrd absent", "PUT", "/boot-source", `{"kernel_image_path":"%[1]s","initrd_path":"%[3]s/nope"}`, 400, "initrd_path"},
		{"boot source wrong type", "PUT", "/boot-source", `{"kernel_image_path":7}`, 400, `field "kernel_image_path": expected a string`},

		{"drive", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"%[2]s","is_root_device":true,"is_read_only":false}`, 204, ""},
		{"drive with defaults spelled out", "PUT", "/drives/data_1", `{"drive_id":"data_1","path_on_host":"%[2]s","is_root_device":false,"cache_type":"Unsafe","io_engine":"Sync","rate_limiter":{"bandwidth":{"size":0,"refill_time":0}}}`, 204, ""},
		{"drive second root", "PUT", "/drives/other", `{"drive_id":"other","path_on_host":"%[2]s","is_root_device":true}`, 400, "root block device already exists"},
		{"drive id mismatch", "PUT", "/drives/rootfs", `{"drive_id":"data","path_on_host":"%[2]s","is_root_device":false}`, 400, "does not match"},
		{"drive bad id", "PUT", "/drives/a-b", `{"drive_id":"a-b","path_on_host":"%[2]s","is_root_device":false}`, 400, `drive_id "a-b" is invalid`},
		{"drive missing id in path", "PUT", "/drives/", `{"drive_id":"a","path_on_host":"%[2]s","is_root_device":false}`, 400, "id is missing"},
		{"drive missing is_root_device", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s"}`, 400, `"is_root_device"`},
		{"drive missing path", "PUT", "/drives/d", `{"drive_id":"d","is_root_device":false}`, 400, `"path_on_host"`},
		{"drive file absent", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[3]s/nope","is_root_device":false}`, 400, "path_on_host: open"},
		{"drive writeback", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s","is_root_device":false,"cache_type":"Writeback"}`, 400, "cache_type"},
		{"drive async io engine", "PUT", "/drives/data_2", `{"drive_id":"data_2","path_on_host":"%[2]s","is_root_device":false,"io_engine":"Async"}`, 204, ""},
		{"drive lower-case io engine", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s","is_root_device":false,"io_engine":"async"}`, 400, "io_engine"},
		{"drive bad io engine", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s","is_root_device":false,"io_engine":"Turbo"}`, 400, "io_engine"},
		{"drive rate limit", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s","is_root_device":false,"rate_limiter":{"ops":{"size":100,"refill_time":1000}}}`, 400, "rate_limiter: rate limiting is not supported"},
		{"drive bucket missing size", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s","is_root_device":false,"rate_limiter":{"ops":{"refill_time":1000}}}`, 400, `"rate_limiter.ops.size"`},
		{"drive vhost-user", "PUT", "/drives/d", `{"drive_id":"d","socket":"/x","is_root_device":false}`, 400, "vhost-user"},
		{"drive patch before boot", "PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"%[2]s"}`, 400, "not supported before starting"},

		{"network interface", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02"}`, 204, ""},
		{"network interface tap in use", "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap0"}`, 400, "already used"},
		{"network interface bad mac", "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"zz"}`, 400, "guest_mac"},
		{"network interface missing tap", "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1"}`, 400, `"host_dev_name"`},
		{"network interface mtu", "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","mtu":9000}`, 400, "mtu"},
		{"network interface patch before boot", "PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, 400, "not supported before starting"},

		{"vsock", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"%[3]s/v.sock","vsock_id":"root"}`, 204, ""},
		{"vsock reserved cid", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"%[3]s/v.sock"}`, 400, "guest_cid 2"},
		{"vsock missing path", "PUT", "/vsock", `{"guest_cid":3}`, 400, `"uds_path"`},
		{"vsock negative cid", "PUT", "/vsock", `{"guest_cid":-1,"uds_path":"x"}`, 400, "guest_cid"},

		{"logger", "PUT", "/logger", `{"log_path":"%[3]s/log","level":"debug","show_level":true,"show_log_origin":false}`, 204, ""},
		{"logger bad level", "PUT", "/logger", `{"log_path":"%[3]s/log","level":"Loud"}`, 400, `level "Loud"`},
		{"logger module", "PUT", "/logger", `{"log_path":"%[3]s/log","module":"api_server"}`, 400, "module"},
		{"logger unopenable path", "PUT", "/logger", `{"log_path":"%[3]s/no/such/dir/log"}`, 400, "log_path"},

		{"metrics missing path", "PUT", "/metrics", `{}`, 400, `"metrics_path"`},
		{"metrics", "PUT", "/metrics", `{"metrics_path":"%[3]s/metrics"}`, 204, ""},
		{"metrics twice", "PUT", "/metrics", `{"metrics_path":"%[3]s/metrics"}`, 400, "already configured"},

		{"action missing type", "PUT", "/actions", `{}`, 400, `"action_type"`},
		{"action unknown", "PUT", "/actions", `{"action_type":"Reboot"}`, 400, `action_type "Reboot"`},
		{"ctrl-alt-del before boot", "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 400, "not supported before starting"},
		{"flush metrics before boot", "PUT", "/actions", `{"action_type":"FlushMetrics"}`, 400, "not supported before starting"},
		{"pause before boot", "PATCH", "/vm", `{"state":"Paused"}`, 400, "not supported before starting"},
		{"vm bad state", "PATCH", "/vm", `{"state":"Frozen"}`, 400, `state "Frozen"`},
		{"vm missing state", "PATCH", "/vm", `{}`, 400, `"state"`},

		{"vm config", "GET", "/vm/config", "", 200, `"machine-config":{"vcpu_count":4,"mem_size_mib":256`},
		{"vm config devices", "GET", "/vm/config", "", 200, `"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}]`},

		{"unknown path", "GET", "/nope", "", 404, "no such resource: /nope"},
		{"wrong method", "DELETE", "/machine-config", "", 405, "method DELETE is not allowed on /machine-config"},
		{"GET on a PUT-only path", "GET", "/actions", "", 405, "allowed: PUT"},
		{"unimplemented Firecracker endpoint", "PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true}`, 400, "/balloon is not supported"},
		{"body too large", "PUT", "/boot-source", `{"kernel_image_path":"` + strings.Repeat("a", MaxBodySize) + `"}`, 400, "exceeds the limit"},
	}
	e := newEnv(t)
	runCases(t, e, cases)

	// The devices configured above reach the machine's config, and the
	// machine builder's refusal comes back as a 400; the VM stays Not started.
	code, body, _ := e.do("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if code != 400 || !strings.Contains(body, "not supported yet") {
		t.Fatalf("InstanceStart with devices: %d %s, want 400 naming the unsupported devices", code, body)
	}
	if s := e.state(); s != StateNotStarted {
		t.Fatalf("state after failed start %q, want %q", s, StateNotStarted)
	}
}

func runCases(t *testing.T, e *env, cases []apiCase) {
	t.Helper()
	for _, tc := range cases {
		body := tc.body
		if strings.Contains(body, "%[") {
			body = fmt.Sprintf(body, e.kernel, e.disk, e.dir)
		}
		code, got, hdr := e.do(tc.method, tc.path, body)
		if code != tc.status {
			t.Errorf("%s: %s %s: status %d (%s), want %d", tc.name, tc.method, tc.path, code, got, tc.status)
			continue
		}
		switch {
		case code == 204 && got != "":
			t.Errorf("%s: 204 with body %q", tc.name, got)
		case code >= 400:
			var f Fault
			if err := json.Unmarshal([]byte(got), &f); err != nil || !strings.Contains(f.FaultMessage, tc.msg) {
				t.Errorf("%s: fault %s, want fault_message containing %q", tc.name, got, tc.msg)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s: Content-Type %q", tc.name, ct)
			}
		case code == 200 && !strings.Contains(got, tc.msg):
			t.Errorf("%s: body %s, want it to contain %s", tc.name, got, tc.msg)
		}
	}
}

// TestEndpointsAfterBoot covers the post-boot rules.
func TestEndpointsAfterBoot(t *testing.T) {
	e := newEnv(t)
	e.mustDo("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":"%s/metrics"}`, e.dir), 204)
	m := e.boot()
	if m == nil {
		t.Fatal("no machine built")
	}
	if m.cfg.Kernel != e.kernel || m.cfg.Cmdline != "console=ttyS0" || m.cfg.CPUs != 1 || m.cfg.MemSize != 128<<20 {
		t.Fatalf("machine config %+v does not match the API calls", m.cfg)
	}
	cases := []apiCase{
		{"running", "GET", "/", "", 200, `"state":"Running"`},
		{"machine config put", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`, 400, "not supported after starting"},
		{"machine config patch", "PATCH", "/machine-config", `{"vcpu_count":2}`, 400, "not supported after starting"},
		{"machine config get", "GET", "/machine-config", "", 200, `"vcpu_count":1`},
		{"boot source", "PUT", "/boot-source", `{"kernel_image_path":"%[1]s"}`, 400, "not supported after starting"},
		{"drive put", "PUT", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s","is_root_device":false}`, 400, "not supported after starting"},
		{"drive patch unknown", "PATCH", "/drives/d", `{"drive_id":"d","path_on_host":"%[2]s"}`, 400, `no drive with drive_id "d"`},
		{"drive patch bad body", "PATCH", "/drives/d", `{"drive_id":"d","is_root_device":true}`, 400, `unknown field "is_root_device"`},
		{"net put", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`, 400, "not supported after starting"},
		{"net patch unknown", "PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, 400, "no network interface"},
		{"vsock", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"x"}`, 400, "not supported after starting"},
		{"logger", "PUT", "/logger", `{"log_path":"%[3]s/log"}`, 400, "not supported after starting"},
		{"metrics", "PUT", "/metrics", `{"metrics_path":"%[3]s/m2"}`, 400, "not supported after starting"},
		{"start twice", "PUT", "/actions", `{"action_type":"InstanceStart"}`, 400, "not supported after starting"},
		{"pause", "PATCH", "/vm", `{"state":"Paused"}`, 204, ""},
		{"paused", "GET", "/", "", 200, `"state":"Paused"`},
		{"pause again", "PATCH", "/vm", `{"state":"Paused"}`, 204, ""},
		{"resume", "PATCH", "/vm", `{"state":"Resumed"}`, 204, ""},
		{"resumed", "GET", "/", "", 200, `"state":"Running"`},
		{"ctrl-alt-del", "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, 204, ""},
		{"flush metrics", "PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204, ""},
		{"vm config", "GET", "/vm/config", "", 200, `"boot-source":{"kernel_image_path":"` + e.kernel},
	}
	runCases(t, e, cases)
	m.mu.Lock()
	if m.ctrlAltDel != 1 || m.paused {
		t.Errorf("machine saw %d Ctrl+Alt+Del, paused=%v; want 1, false", m.ctrlAltDel, m.paused)
	}
	m.mu.Unlock()

	// The metrics line has the exits and the request counts.
	data, err := os.ReadFile(filepath.Join(e.dir, "metrics"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	var line MetricsLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &line); err != nil {
		t.Fatalf("metrics line %q: %v", lines[len(lines)-1], err)
	}
	if line.VCPU.Exits["IO"] != 42 || line.APIServer.Requests["PATCH /vm 204"] != 3 || line.State != StateRunning {
		t.Errorf("metrics line %+v: want IO exits 42, 3 PATCH /vm 204, Running", line)
	}

	// The guest ends the machine: Done closes with its exit, and post-boot
	// calls now say so.
	m.exit <- vmm.Exit{Kind: vmm.ExitDebugPort, Status: 9}
	select {
	case <-e.ctl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the machine exited")
	}
	if got := e.ctl.Exit().ExitCode(); got != 9 {
		t.Errorf("exit code %d, want 9", got)
	}
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if !closed {
		t.Error("machine not closed after exit")
	}
	runCases(t, e, []apiCase{
		{"exited", "GET", "/", "", 200, `"state":"Exited"`},
		{"pause after exit", "PATCH", "/vm", `{"state":"Paused"}`, 400, "already exited"},
	})
}

// TestStopBeforeStart checks that after Stop no machine can start, so the
// caller's "nothing is running" holds.
func TestStopBeforeStart(t *testing.T) {
	e := newEnv(t)
	e.mustDo("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, e.kernel), 204)
	e.ctl.Stop()
	code, body, _ := e.do("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if code != 400 || !strings.Contains(body, "shutting down") {
		t.Fatalf("InstanceStart after Stop: %d %s", code, body)
	}
	if e.ctl.Started() {
		t.Fatal("started after Stop")
	}
}

func TestStartWithoutBootSource(t *testing.T) {
	e := newEnv(t)
	code, body, _ := e.do("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if code != 400 || !strings.Contains(body, "no boot source") {
		t.Fatalf("InstanceStart without boot source: %d %s", code, body)
	}
}

// TestVsockDeprecationHeader checks the deprecated vsock_id is accepted and
// flagged as Firecracker does.
func TestVsockDeprecationHeader(t *testing.T) {
	e := newEnv(t)
	_, _, hdr := e.do("PUT", "/vsock", `{"guest_cid":3,"uds_path":"/tmp/v.sock","vsock_id":"root"}`)
	if hdr.Get("Deprecation") == "" {
		t.Error("no Deprecation header for vsock_id")
	}
	_, _, hdr = e.do("PUT", "/vsock", `{"guest_cid":3,"uds_path":"/tmp/v.sock"}`)
	if hdr.Get("Deprecation") != "" {
		t.Error("Deprecation header without vsock_id")
	}
}

// TestLoggerRedirects checks that PUT /logger sends later logs to the file
// at the chosen level.
func TestLoggerRedirects(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.dir, "log")
	e.mustDo("PUT", "/logger", fmt.Sprintf(`{"log_path":%q,"level":"Warning","show_level":true}`, path), 204)
	log := e.ctl.Logger().With("k", "v")
	log.Info("hidden")
	log.Warn("shown")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if strings.Contains(s, "hidden") || !strings.Contains(s, "msg=shown") || !strings.Contains(s, "level=WARN") || !strings.Contains(s, "k=v") {
		t.Fatalf("log file %q: want only the warning, with its level and attributes", s)
	}
	if !strings.Contains(e.mustDo("GET", "/vm/config", "", 200), `"logger":{"log_path":"`+path+`","level":"Warning","show_level":true,"show_log_origin":false}`) {
		t.Error("logger missing from /vm/config")
	}
}

// TestMetricsFIFO checks that metrics go to a named pipe without a reader
// without blocking (lines are dropped, not waited on).
func TestMetricsFIFO(t *testing.T) {
	e := newEnv(t)
	fifo := filepath.Join(e.dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		testenv.Skipf(t, "mkfifo: %v", err)
	}
	e.mustDo("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, fifo), 204)
	e.boot()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// 64 KiB fills the pipe after a few hundred lines; later flushes fail fast.
		for i := 0; i < 2000; i++ {
			e.do("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("flushing metrics to an unread FIFO blocked")
	}
}

// TestConfigFile checks Firecracker's config-file schema end to end.
func TestConfigFile(t *testing.T) {
	dir := shortTempDir(t)
	kernel := writeFile(t, dir, "k", "kernel")
	disk := writeFile(t, dir, "d", "disk")
	tests := []struct {
		name, json, wantErr string
	}{
		{"full", `{"boot-source":{"kernel_image_path":%[1]q,"boot_args":"console=ttyS0 reboot=k"},
			"machine-config":{"vcpu_count":2,"mem_size_mib":512,"smt":false},
			"drives":[{"drive_id":"rootfs","path_on_host":%[2]q,"is_root_device":false,"is_read_only":true}],
			"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}],
			"vsock":{"guest_cid":3,"uds_path":"/tmp/v.sock","vsock_id":"root"},
			"logger":{"log_path":%[3]q,"level":"Debug"},
			"metrics":{"metrics_path":%[4]q},
			"balloon":null}`, ""},
		{"unknown section", `{"boot-source":{"kernel_image_path":%[1]q},"frobnicator":{}}`, `unknown field "frobnicator"`},
		{"unsupported section", `{"boot-source":{"kernel_image_path":%[1]q},"balloon":{"amount_mib":1,"deflate_on_oom":true}}`, "balloon: not supported"},
		{"bad machine config", `{"machine-config":{"vcpu_count":2}}`, `machine-config: missing required field "mem_size_mib"`},
		{"bad drive", `{"drives":[{"drive_id":"x","path_on_host":%[2]q}]}`, `drives[0]: missing required field "is_root_device"`},
		{"wrong type", `{"machine-config":{"vcpu_count":2,"mem_size_mib":"lots"}}`, `"machine-config.mem_size_mib"`},
		{"not JSON", `vcpu_count = 2`, "invalid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f *fakeMachine
			ctl := NewController(Options{Base: vmm.Config{CPUs: 1, MemSize: 128 << 20}, Factory: func(cfg vmm.Config, _ *slog.Logger) (Machine, error) {
				f = &fakeMachine{cfg: cfg, exit: make(chan vmm.Exit, 1)}
				return f, nil
			}})
			defer ctl.Close()
			js := tt.json
			if strings.Contains(js, "%[") {
				js = fmt.Sprintf(js, kernel, disk, filepath.Join(dir, "log"), filepath.Join(dir, "metrics"))
			}
			path := writeFile(t, dir, "config.json", js)
			if wantedErr(t, LoadConfigFile(ctl, path), tt.wantErr) {
				return
			}
			if err := ctl.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { ctl.Stop(); <-ctl.Done() }()
			c := f.cfg
			if c.Kernel != kernel || c.Cmdline != "console=ttyS0 reboot=k" || c.CPUs != 2 || c.MemSize != 512<<20 ||
				len(c.Drives) != 1 || !c.Drives[0].ReadOnly || c.Drives[0].Path != disk ||
				len(c.Nets) != 1 || c.Nets[0].Tap != "tap0" || c.Nets[0].MAC != "06:00:ac:10:00:02" ||
				c.Vsock == nil || c.Vsock.GuestCID != 3 || c.Vsock.UDSPath != "/tmp/v.sock" {
				t.Fatalf("machine config %+v does not match the file", c)
			}
			// GET /vm/config answers in the same schema, so it loads back.
			b, err := json.Marshal(ctl.FullConfig())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := decode[FullConfig](b); err != nil {
				t.Fatalf("/vm/config output %s does not parse as a config file: %v", b, err)
			}
		})
	}
}

// TestSocketSafety checks the socket's mode and what may be replaced.
func TestSocketSafety(t *testing.T) {
	dir := shortTempDir(t)
	ctl := NewController(Options{})
	defer ctl.Close()

	t.Run("mode 0600", func(t *testing.T) {
		p := filepath.Join(dir, "a.sock")
		s := NewServer(ctl)
		if err := s.Listen(p); err != nil {
			t.Fatal(err)
		}
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode %v, want a socket with 0600", st.Mode())
		}
		go s.Serve()
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatalf("connecting through the linked path: %v", err)
		}
		c.Close()
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket not removed on shutdown: %v", err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("leftovers in the socket's directory: %v", ents)
		}
	})
	t.Run("regular file kept", func(t *testing.T) {
		p := writeFile(t, dir, "precious", "data")
		err := NewServer(ctl).Listen(p)
		if err == nil || !strings.Contains(err.Error(), "refusing to replace an existing regular file") {
			t.Fatalf("Listen over a regular file: %v", err)
		}
		if b, _ := os.ReadFile(p); string(b) != "data" {
			t.Fatal("regular file clobbered")
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		p := filepath.Join(dir, "stale.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close() // as if its process died
		s := NewServer(ctl)
		if err := s.Listen(p); err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		s.Shutdown(context.Background())
	})
	t.Run("live socket kept", func(t *testing.T) {
		p := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		err = NewServer(ctl).Listen(p)
		if err == nil || !strings.Contains(err.Error(), "another process is serving") {
			t.Fatalf("Listen over a live socket: %v", err)
		}
	})
}

// TestSlowClientDoesNotStall checks that a client that sends half a
// request holds neither other clients nor the VM's state.
func TestSlowClientDoesNotStall(t *testing.T) {
	e := newEnv(t)
	e.boot()
	slow, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// Headers promise a body that never comes.
	fmt.Fprint(slow, "PATCH /vm HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"state\":")
	slow2, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer slow2.Close()
	fmt.Fprint(slow2, "GET / HTTP/1.1\r\nHo") // half a header

	start := time.Now()
	e.mustDo("PATCH", "/vm", `{"state":"Paused"}`, 204)
	e.mustDo("PATCH", "/vm", `{"state":"Resumed"}`, 204)
	if e.state() != StateRunning {
		t.Fatal("not running")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("requests took %v behind slow clients", d)
	}
}

// TestConcurrentRequests hammers the API from many clients at once (run
// with -race it checks the locking): every request gets its answer, the
// state clients see is the machine's, concurrent flushes write whole
// metrics lines, and the request counters miss no request.
func TestConcurrentRequests(t *testing.T) {
	e := newEnv(t)
	metrics := filepath.Join(e.dir, "metrics")
	e.mustDo("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, metrics), 204)
	m := e.boot()
	const clients, rounds = 8, 25
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < rounds; j++ {
				state := VMPaused
				if j%2 == 1 {
					state = VMResumed
				}
				for _, rq := range []struct {
					method, path, body string
					want               int
				}{
					{"PATCH", "/vm", `{"state":"` + state + `"}`, 204},
					{"GET", "/", "", 200},
					{"PUT", "/actions", `{"action_type":"FlushMetrics"}`, 204},
					{"GET", "/vm/config", "", 200},
				} {
					code, body, _, err := e.send(rq.method, rq.path, rq.body)
					if err != nil {
						t.Error(err)
						return
					}
					if code != rq.want {
						t.Errorf("%s %s: %d %s, want %d", rq.method, rq.path, code, body, rq.want)
						return
					}
					if rq.path == "/" {
						if s := stateOf(body); s != StateRunning && s != StatePaused {
							t.Errorf("GET / while pausing and resuming: state %q in %s", s, body)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	m.mu.Lock()
	paused := m.paused
	m.mu.Unlock()
	if s := e.state(); (s == StatePaused) != paused {
		t.Errorf("state %q, but the machine has paused=%v", s, paused)
	}
	data, err := os.ReadFile(metrics)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i, l := range lines {
		var line MetricsLine
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("metrics line %d of %d is torn: %v: %q", i, len(lines), err, l)
		}
	}
	if len(lines) < clients*rounds {
		t.Errorf("%d metrics lines after %d flushes", len(lines), clients*rounds)
	}
	counts := e.ctl.requestCounts()
	n := uint64(clients * rounds)
	for key, want := range map[string]uint64{
		"PATCH /vm 204":        n,
		"GET /{$} 200":         n + 1, // and e.state's
		"PUT /actions 204":     n + 1, // and InstanceStart
		"GET /vm/config 200":   n,
		"PUT /boot-source 204": 1,
	} {
		if counts[key] != want {
			t.Errorf("request counter %q = %d, want %d (all: %v)", key, counts[key], want, counts)
		}
	}
}

// stateOf is the state in a GET / answer ("" if there is none).
func stateOf(body string) string {
	var info InstanceInfo
	if json.Unmarshal([]byte(body), &info) != nil {
		return ""
	}
	return info.State
}

// TestKeepAlive checks several requests on one connection, as the Go SDK
// sends them.
func TestKeepAlive(t *testing.T) {
	e := newEnv(t)
	c, err := net.Dial("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		body := `{"vcpu_count":2,"mem_size_mib":128}`
		fmt.Fprintf(c, "PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
}

// TestDrivesAfterBoot checks drive order and PATCH /drives with a machine
// that can swap backing files.
func TestDrivesAfterBoot(t *testing.T) {
	e := newEnv(t, envOption{devices: true})
	other := writeFile(t, e.dir, "other.img", "x")
	e.mustDo("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false,"is_read_only":true}`, e.disk), 204)
	e.mustDo("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"partuuid":"abcd-01"}`, e.disk), 204)
	e.mustDo("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`, 204)
	e.mustDo("PUT", "/vsock", `{"guest_cid":5,"uds_path":"/tmp/x.sock"}`, 204)
	m := e.boot()
	d := m.cfg.Drives
	if len(d) != 2 || d[0].ID != "rootfs" || !d[0].Root || d[0].PartUUID != "abcd-01" || d[1].ID != "data" || !d[1].ReadOnly {
		t.Fatalf("drives %+v: want the root device first", d)
	}
	if len(m.cfg.Nets) != 1 || m.cfg.Nets[0].Tap != "tap0" || m.cfg.Vsock == nil || m.cfg.Vsock.GuestCID != 5 {
		t.Fatalf("devices %+v %+v", m.cfg.Nets, m.cfg.Vsock)
	}
	runCases(t, e, []apiCase{
		{"swap backing file", "PATCH", "/drives/data", `{"drive_id":"data","path_on_host":"` + other + `"}`, 204, ""},
		{"swap to a missing file", "PATCH", "/drives/data", `{"drive_id":"data","path_on_host":"%[3]s/nope"}`, 400, "path_on_host"},
		{"rate limit", "PATCH", "/drives/data", `{"drive_id":"data","rate_limiter":{"bandwidth":{"size":1,"refill_time":1}}}`, 400, "rate limiting"},
		{"patch net", "PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, 204, ""},
		{"config shows the swap", "GET", "/vm/config", "", 200, `"path_on_host":"` + other + `"`},
	})
	if got := e.updater.updates; len(got) != 1 || got[0] != "data="+other {
		t.Fatalf("UpdateDrive calls %v", got)
	}
}

// TestPatchDriveSwapFailure checks that a swap the machine refuses is a
// 400 carrying the machine's reason, and the config keeps the old path.
func TestPatchDriveSwapFailure(t *testing.T) {
	e := newEnv(t, envOption{devices: true})
	e.mustDo("PUT", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q,"is_root_device":false}`, e.disk), 204)
	e.boot()
	other := writeFile(t, e.dir, "other.img", "x")
	e.updater.mu.Lock()
	e.updater.fail = fmt.Errorf("virtio-blk data: swap to %s: image %s is in use by another VM", other, other)
	e.updater.mu.Unlock()
	code, body, _ := e.do("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id":"data","path_on_host":%q}`, other))
	if code != 400 || !strings.Contains(body, `drive \"data\": virtio-blk data: swap to `+other) || !strings.Contains(body, "in use by another VM") {
		t.Fatalf("PATCH drive refused by the machine: %d %s", code, body)
	}
	if cfg := e.mustDo("GET", "/vm/config", "", 200); !strings.Contains(cfg, fmt.Sprintf(`"path_on_host":%q`, e.disk)) {
		t.Errorf("/vm/config after a failed swap: %s, want the old path", cfg)
	}
}

// TestPatchDriveWithoutUpdater checks the honest refusal when the machine
// has no way to swap drives.
func TestPatchDriveWithoutUpdater(t *testing.T) {
	e := newEnv(t)
	ctl := e.ctl
	ctl.mu.Lock()
	ctl.drives = []Drive{{DriveID: ptr("d"), PathOnHost: ptr(e.disk), IsRootDevice: ptr(false), IsReadOnly: ptr(false)}}
	ctl.opts.Factory = func(cfg vmm.Config, _ *slog.Logger) (Machine, error) {
		return &fakeMachine{cfg: cfg, exit: make(chan vmm.Exit, 1)}, nil
	}
	ctl.mu.Unlock()
	e.boot()
	code, body, _ := e.do("PATCH", "/drives/d", fmt.Sprintf(`{"drive_id":"d","path_on_host":%q}`, e.disk))
	if code != 400 || !strings.Contains(body, "not supported by this machine") {
		t.Fatalf("PATCH drive without an updater: %d %s", code, body)
	}
}

// TestPeriodicMetrics checks metrics are written without FlushMetrics.
func TestPeriodicMetrics(t *testing.T) {
	e := newEnv(t, envOption{interval: 10 * time.Millisecond})
	path := filepath.Join(e.dir, "metrics")
	e.mustDo("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q,"emit_id":true,"properties":{"team":"vmm"}}`, path), 204)
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if n := strings.Count(string(data), "\n"); n >= 2 {
			var line MetricsLine
			first := strings.SplitN(string(data), "\n", 2)[0]
			if err := json.Unmarshal([]byte(first), &line); err != nil {
				t.Fatal(err)
			}
			if line.ID != "test-vm" || line.Properties["team"] != "vmm" || line.State != StateNotStarted || line.APIServer.Requests["PUT /metrics 204"] != 1 {
				t.Fatalf("metrics line %+v", line)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no periodic metrics lines: %q", data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRoutingFaults covers the answers ServeMux would write itself, in
// plain text or as redirects, had the routes no catch-alls: each is a
// Firecracker fault.
func TestRoutingFaults(t *testing.T) {
	e := newEnv(t)
	runCases(t, e, []apiCase{
		{"unknown method", "FROB", "/machine-config", "", 405, "method FROB is not allowed on /machine-config (allowed: GET, PUT, PATCH)"},
		{"options", "OPTIONS", "/", "", 405, "method OPTIONS is not allowed on / (allowed: GET)"},
		{"PUT on a GET-only path", "PUT", "/vm/config", `{}`, 405, "allowed: GET"},
		{"GET on a drive", "GET", "/drives/rootfs", "", 405, "method GET is not allowed on /drives/{drive_id} (allowed: PUT, PATCH)"},
		{"DELETE on the drives", "DELETE", "/drives/", "", 405, "allowed: PUT, PATCH"},
		{"GET on an interface", "GET", "/network-interfaces/eth0", "", 405, "on /network-interfaces/{iface_id} (allowed: PUT, PATCH)"},
		{"drive id missing, PATCH", "PATCH", "/drives/", `{"drive_id":"a"}`, 400, "id is missing"},
		{"interface id missing", "PUT", "/network-interfaces/", `{"iface_id":"a","host_dev_name":"tap0"}`, 400, "id is missing"},
		{"drive id with a slash", "PUT", "/drives/a/b", `{"drive_id":"a/b","path_on_host":"%[2]s","is_root_device":false}`, 400, `drive_id "a/b" is invalid`},
		{"drives without a slash", "PUT", "/drives", `{}`, 404, "no such resource: /drives"},
		{"interfaces without a slash", "GET", "/network-interfaces", "", 404, "no such resource: /network-interfaces"},
		{"trailing slash", "GET", "/version/", "", 404, "no such resource: /version/"},
		{"below a leaf", "GET", "/vm/config/x", "", 404, "no such resource: /vm/config/x"},
		{"repeated slash", "GET", "//version", "", 404, "no such resource: //version"},
		{"dot-dot segment", "GET", "/vm/../version", "", 404, "no such resource"},
		{"dot segment", "PUT", "/drives/./rootfs", `{}`, 404, "no such resource"},
		{"unsupported, below", "PUT", "/balloon/statistics", `{}`, 400, "/balloon is not supported"},
		{"GET on a snapshot", "GET", "/snapshot/create", "", 405, "method GET is not allowed on /snapshot/create (allowed: PUT)"},
		{"unknown snapshot action", "PUT", "/snapshot/delete", `{}`, 404, "no such resource: /snapshot/delete"},
		{"unsupported, lookalike", "GET", "/balloons", "", 404, "no such resource: /balloons"},
	})
	// ServeMux serves HEAD with GET routes; Firecracker has no HEAD.
	for _, path := range []string{"/", "/version", "/machine-config", "/vm/config"} {
		code, body, hdr := e.do("HEAD", path, "")
		if code != 405 || hdr.Get("Allow") == "" || hdr.Get("Content-Type") != "application/json" || body != "" {
			t.Errorf("HEAD %s: %d %q, Allow %q, Content-Type %q; want 405 with Allow and the fault's type", path, code, body, hdr.Get("Allow"), hdr.Get("Content-Type"))
		}
	}
}

// TestRequestCountersBounded checks that clients can't grow the request
// counters: methods and paths are theirs to choose, the counters' keys
// are not.
func TestRequestCountersBounded(t *testing.T) {
	e := newEnv(t)
	for i := range 300 {
		for _, path := range []string{"/machine-config", fmt.Sprintf("/x%d", i), "/drives/d" + strconv.Itoa(i), "/balloon/" + strconv.Itoa(i)} {
			e.do(fmt.Sprintf("M%d", i), path, "")
		}
		e.do("HEAD", fmt.Sprintf("//version%d", i), "")
	}
	counts := e.ctl.requestCounts()
	want := map[string]uint64{
		"/machine-config 405":       300,
		"/drives/{drive_id...} 405": 300,
		"/balloon 400":              300,
		"unknown 404":               600,
	}
	if !maps.Equal(counts, want) {
		t.Errorf("request counters %v, want %v", counts, want)
	}
}

// FuzzRouting checks that whatever method and path a client sends, the
// answer is one of the API's own: never a redirect or ServeMux's plain
// text, and a fault JSON body for every error.
func FuzzRouting(f *testing.F) {
	for _, seed := range [][2]string{
		{"GET", "/"}, {"PUT", "/drives/a/b"}, {"PUT", "/drives"}, {"HEAD", "/version"}, {"GET", "//version"},
		{"PATCH", "/network-interfaces/"}, {"X", "/vm/../vm"}, {"GET", "/balloon/x"}, {"CONNECT", ""}, {"GET", "/%2e%2e/version"},
	} {
		f.Add(seed[0], seed[1])
	}
	ctl := NewController(Options{Factory: func(vmm.Config, *slog.Logger) (Machine, error) {
		return nil, errors.New("no machines here")
	}})
	defer ctl.Close()
	srv := NewServer(ctl)
	f.Fuzz(func(t *testing.T, method, target string) {
		u, err := url.Parse("http://localhost" + target)
		if err != nil || method == "" || strings.ContainsAny(method, " \t\r\n") {
			return
		}
		// No body: a PUT with one could point the logger or the metrics
		// at any file.
		r := &http.Request{Method: method, URL: u, Host: "localhost", Header: http.Header{}, Body: http.NoBody, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		switch code := w.Code; code {
		case 200:
			if method != "GET" || !json.Valid(w.Body.Bytes()) {
				t.Fatalf("%s %q: 200 with %q", method, target, w.Body)
			}
		case 400, 404, 405:
			var f Fault
			if err := json.Unmarshal(w.Body.Bytes(), &f); err != nil || f.FaultMessage == "" || w.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("%s %q: %d with %q (%s), want a fault", method, target, code, w.Body, w.Header().Get("Content-Type"))
			}
		default:
			t.Fatalf("%s %q: status %d (%q)", method, target, code, w.Body)
		}
	})
}

// wantedErr checks err against want: with want empty, err must be nil;
// otherwise err must contain want, and wantedErr reports true (the case is
// done).
func wantedErr(t *testing.T, err error, want string) bool {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one containing %q", err, want)
	}
	return true
}
