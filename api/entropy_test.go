package api

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/govmm/vmm/vmm"
)

// TestEntropy covers PUT /entropy: accepted bodies add the virtio-rng
// device, a rate limiter that limits is refused with a reason (not
// ignored), /vm/config shows the device, and after boot it can't change.
func TestEntropy(t *testing.T) {
	e := newEnv(t)
	const path = "/entropy"
	if b := e.mustDo("GET", "/vm/config", "", 200); strings.Contains(b, "entropy") {
		t.Errorf("/vm/config shows entropy before PUT /entropy: %s", b)
	}
	runCases(t, e, []apiCase{
		{"empty body", "PUT", path, ``, 400, ""},
		{"unknown field", "PUT", path, `{"rate_limiter":{},"size":4}`, 400, `unknown field "size"`},
		{"bandwidth limit", "PUT", path, `{"rate_limiter":{"bandwidth":{"size":1024,"refill_time":100}}}`, 400, "rate_limiter: rate limiting is not supported"},
		{"ops limit", "PUT", path, `{"rate_limiter":{"ops":{"size":10,"refill_time":1000}}}`, 400, "rate_limiter: rate limiting is not supported"},
		{"one-time burst", "PUT", path, `{"rate_limiter":{"bandwidth":{"size":0,"refill_time":0,"one_time_burst":4096}}}`, 400, "rate_limiter: rate limiting is not supported"},
		{"bucket without size", "PUT", path, `{"rate_limiter":{"bandwidth":{"refill_time":100}}}`, 400, `missing required field "rate_limiter.bandwidth.size"`},
		{"negative refill", "PUT", path, `{"rate_limiter":{"ops":{"size":1,"refill_time":-1}}}`, 400, "rate_limiter.ops.refill_time must not be negative"},
		{"wrong method", "GET", path, "", 405, "allowed: PUT"},
		{"disabled buckets", "PUT", path, `{"rate_limiter":{"bandwidth":{"size":0,"refill_time":100},"ops":{"size":5,"refill_time":0}}}`, 204, ""},
		{"no limiter", "PUT", path, `{}`, 204, ""},
		{"shown in the config", "GET", "/vm/config", "", 200, `"entropy":{}`},
	})
	m := e.boot()
	if m.cfg.Entropy == nil {
		t.Errorf("the machine got no entropy device: %+v", m.cfg)
	}
	e.mustDo("PUT", path, `{}`, 400)
}

// TestEntropyConfigFile: the config file's entropy section adds the device
// through the same checks; without it there is none; the command line's
// device (the controller's base) stays unless the file says otherwise.
func TestEntropyConfigFile(t *testing.T) {
	dir := shortTempDir(t)
	kernel := writeFile(t, dir, "k", "kernel")
	for _, tt := range []struct {
		name, entropy string
		base          bool
		want          bool
		wantErr       string
	}{
		{name: "absent", want: false},
		{name: "null", entropy: `,"entropy":null`, want: false},
		{name: "from the command line", base: true, want: true},
		{name: "empty", entropy: `,"entropy":{}`, want: true},
		{name: "limiter", entropy: `,"entropy":{"rate_limiter":{"ops":{"size":1,"refill_time":1}}}`, wantErr: "entropy: rate_limiter: rate limiting is not supported"},
		{name: "not an object", entropy: `,"entropy":4`, wantErr: "entropy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := vmm.Config{CPUs: 1, MemSize: 128 << 20}
			if tt.base {
				base.Entropy = &vmm.EntropyConfig{}
			}
			var f *fakeMachine
			ctl := NewController(Options{Base: base, Factory: func(cfg vmm.Config, _ *slog.Logger) (Machine, error) {
				f = &fakeMachine{cfg: cfg, exit: make(chan vmm.Exit, 1)}
				return f, nil
			}})
			defer ctl.Close()
			js := fmt.Sprintf(`{"boot-source":{"kernel_image_path":%q}%s}`, kernel, tt.entropy)
			if wantedErr(t, LoadConfigFile(ctl, writeFile(t, dir, "config.json", js)), tt.wantErr) {
				return
			}
			if got := ctl.FullConfig().Entropy != nil; got != tt.want {
				t.Errorf("/vm/config shows entropy: %v, want %v", got, tt.want)
			}
			if err := ctl.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { ctl.Stop(); <-ctl.Done() }()
			if got := f.cfg.Entropy != nil; got != tt.want {
				t.Errorf("machine has entropy: %v, want %v", got, tt.want)
			}
		})
	}
}
