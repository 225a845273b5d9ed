package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/vmm"
)

// fuzzBodyRoutes are the routes that take a body, with a valid body each
// as a seed. PUT /logger and PUT /metrics are left out: they open any
// path for writing, which a fuzzer running as root must not do; their
// decoders are fuzzed through FuzzConfigFile's decode step instead.
var fuzzBodyRoutes = []struct{ method, path, seed string }{
	{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false}`},
	{"PATCH", "/machine-config", `{"mem_size_mib":512}`},
	{"PUT", "/boot-source", `{"kernel_image_path":"vmlinux","boot_args":"console=ttyS0","initrd_path":"initrd"}`},
	{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"rootfs.ext4","is_root_device":true,"is_read_only":false,"io_engine":"Sync"}`},
	{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"other.ext4"}`},
	{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02","rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}`},
	{"PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`},
	{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"v.sock"}`},
	{"PUT", "/entropy", `{"rate_limiter":{"bandwidth":{"size":100,"refill_time":10}}}`},
	{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	{"PATCH", "/vm", `{"state":"Paused"}`},
	{"PUT", "/snapshot/create", `{"snapshot_type":"Full","snapshot_path":"vm.snap","mem_file_path":"vm.mem"}`},
	{"PUT", "/snapshot/load", `{"snapshot_path":"vm.snap","mem_backend":{"backend_type":"File","backend_path":"vm.mem"},"resume_vm":true,` +
		`"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}],"vsock_override":{"uds_path":"v2.sock"}}`},
}

// touchesDevices reports whether any string in the JSON value data names a
// path under /dev, /proc or /sys (relative ones from the working
// directory): validation opens the files a body names, and opening some
// device nodes has effects. Such inputs are skipped.
func touchesDevices(t *testing.T, data []byte) bool {
	var v any
	if json.Unmarshal(data, &v) != nil {
		return false // nothing can be opened: decoding fails first
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	var walk func(any) bool
	walk = func(v any) bool {
		switch v := v.(type) {
		case string:
			p := v
			if !filepath.IsAbs(p) {
				p = filepath.Join(wd, p)
			}
			p = filepath.Clean(p)
			for _, d := range []string{"/dev", "/proc", "/sys"} {
				if p == d || strings.HasPrefix(p, d+"/") {
					return true
				}
			}
		case []any:
			for _, e := range v {
				if walk(e) {
					return true
				}
			}
		case map[string]any:
			for k, e := range v {
				if walk(k) || walk(e) {
					return true
				}
			}
		}
		return false
	}
	return walk(v)
}

func noMachines(vmm.Config, *slog.Logger) (Machine, error) {
	return nil, errors.New("no machines here")
}

// wantFault fails t unless w is a Firecracker fault: JSON with a message.
func wantFault(t *testing.T, what string, w *httptest.ResponseRecorder) {
	t.Helper()
	var f Fault
	if err := json.Unmarshal(w.Body.Bytes(), &f); err != nil || f.FaultMessage == "" || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%s: %d with %q (%s), want a fault", what, w.Code, w.Body, w.Header().Get("Content-Type"))
	}
}

// FuzzBodies sends arbitrary bodies to every route that takes one, through
// the server, one after another on one controller as a client would. Each
// answer is 204 or a 400 fault (never a 500 or a panic), a body over
// MaxBodySize is refused, and the configuration the requests built still
// reads back as JSON that decodes as a FullConfig.
func FuzzBodies(f *testing.F) {
	for i, r := range fuzzBodyRoutes {
		f.Add(uint8(i), []byte(r.seed))
	}
	f.Add(uint8(0), []byte(`{"vcpu_count":2}{"vcpu_count":3}`))
	f.Add(uint8(3), []byte(`{"drive_id":"other","path_on_host":"x","is_root_device":false,"is_read_only":true}`))
	f.Add(uint8(3), []byte(`{"DRIVE_ID":"rootfs","unknown":1}`))
	f.Add(uint8(9), []byte(`{"action_type":"SendCtrlAltDel"}`))
	f.Add(uint8(1), bytes.Repeat([]byte(" "), MaxBodySize+1))
	// The Go SDK v1.0.0's bodies, and the forms Firecracker deprecated.
	f.Add(uint8(12), []byte(`{"mem_file_path":"vm.mem","snapshot_path":"vm.snap","enable_diff_snapshots":true,"resume_vm":true}`))
	f.Add(uint8(12), []byte(`{"snapshot_path":"vm.snap","mem_file_path":"vm.mem","mem_backend":{"backend_type":"Uffd","backend_path":"uffd.sock"}}`))
	f.Add(uint8(11), []byte(`{"mem_file_path":"vm.mem","snapshot_path":"vm.snap","snapshot_type":"Diff","version":"1.0.0"}`))
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		if touchesDevices(t, body) {
			return
		}
		ctl := NewController(Options{Base: vmm.Config{CPUs: 1, MemSize: 128 << 20}, Factory: noMachines})
		defer ctl.Close()
		srv := NewServer(ctl)
		rt := fuzzBodyRoutes[int(route)%len(fuzzBodyRoutes)]
		what := rt.method + " " + rt.path
		// The body, then the route's valid seed (which the fuzzed body
		// may have made invalid: a second drive with is_root_device).
		for _, b := range [][]byte{body, []byte(rt.seed)} {
			if touchesDevices(t, b) {
				continue
			}
			w := httptest.NewRecorder()
			srv.ServeHTTP(w, httptest.NewRequest(rt.method, rt.path, bytes.NewReader(b)))
			switch w.Code {
			case http.StatusNoContent:
				if len(b) > MaxBodySize {
					t.Fatalf("%s: a %d-byte body accepted past the %d limit", what, len(b), MaxBodySize)
				}
			case http.StatusBadRequest:
				wantFault(t, what, w)
			default:
				t.Fatalf("%s %q: status %d (%q)", what, b, w.Code, w.Body)
			}
		}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, httptest.NewRequest("GET", "/vm/config", nil))
		if w.Code != http.StatusOK {
			t.Fatalf("GET /vm/config: %d %q", w.Code, w.Body)
		}
		if _, err := decode[FullConfig](w.Body.Bytes()); err != nil {
			t.Fatalf("GET /vm/config answered %q, which does not decode as a config: %v", w.Body, err)
		}
	})
}

// loadConfigData loads data as a config file into a new controller, which
// t closes.
func loadConfigData(t *testing.T, data []byte) (*Controller, error) {
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ctl := NewController(Options{Base: vmm.Config{CPUs: 1, MemSize: 128 << 20}, Factory: noMachines})
	t.Cleanup(func() { ctl.Close() })
	return ctl, LoadConfigFile(ctl, path)
}

// FuzzConfigFile loads arbitrary config files (--config-file) into a
// fresh controller. Loading either fails with an error naming the file or
// succeeds; a file that loads reads back as a config that loads again
// into another controller, to the same configuration.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte(`{"boot-source":{"kernel_image_path":"vmlinux","boot_args":"console=ttyS0"},` +
		`"machine-config":{"vcpu_count":2,"mem_size_mib":256},"drives":[],"network-interfaces":[]}`))
	f.Add([]byte(`{"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false},` +
		`"drives":[{"drive_id":"rootfs","path_on_host":"rootfs.ext4","is_root_device":true,"is_read_only":true}],` +
		`"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}],` +
		`"vsock":{"guest_cid":3,"uds_path":"v.sock"},"entropy":{}}`))
	f.Add([]byte(`{"balloon":{"amount_mib":0,"deflate_on_oom":false},"drives":[],"network-interfaces":[]}`))
	f.Add([]byte(`{"logger":{"log_path":"log"},"metrics":{"metrics_path":"m"}}`))
	f.Add([]byte(`{"drives":null} trailing`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > MaxBodySize || touchesDevices(t, data) {
			return
		}
		// A logger or metrics section opens its path for writing.
		if fc, err := decode[FullConfig](data); err == nil && (fc.Logger != nil || fc.Metrics != nil) {
			return
		}
		ctl, err := loadConfigData(t, data)
		if err != nil {
			if !strings.Contains(err.Error(), "config file") {
				t.Fatalf("error %q does not say it is the config file's", err)
			}
			return
		}
		first, err := json.Marshal(ctl.FullConfig())
		if err != nil {
			t.Fatal(err)
		}
		ctl2, err := loadConfigData(t, first)
		if err != nil {
			t.Fatalf("a loaded config reads back as %s, which does not load: %v", first, err)
		}
		if second, _ := json.Marshal(ctl2.FullConfig()); !bytes.Equal(first, second) {
			t.Fatalf("config changed on reload:\n%s\n%s", first, second)
		}
	})
}
