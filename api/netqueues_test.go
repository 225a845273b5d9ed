package api

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/govmm/vmm/vmm"
)

// TestNetQueuesFromCommandLine: a queue count given on the command line
// (vmm.Config, the controller's base) reaches the machine, stays out of
// Firecracker's schema, and an interface PUT through the API gets one
// queue pair.
func TestNetQueuesFromCommandLine(t *testing.T) {
	base := vmm.Config{CPUs: 1, MemSize: 128 << 20, Kernel: "k", Nets: []vmm.NetConfig{{ID: "eth0", Tap: "tap0", Queues: 4}}}
	var f *fakeMachine
	ctl := NewController(Options{Base: base, Factory: func(cfg vmm.Config, _ *slog.Logger) (Machine, error) {
		f = &fakeMachine{cfg: cfg, exit: make(chan vmm.Exit, 1)}
		return f, nil
	}})
	defer ctl.Close()
	if err := ctl.PutNetworkInterface("eth1", NetworkInterface{IfaceID: ptr("eth1"), HostDevName: ptr("tap1")}); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ctl.FullConfig())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(b)), "queue") {
		t.Errorf("/vm/config shows a queue count: %s", b)
	}
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { ctl.Stop(); <-ctl.Done() }()
	if n := f.cfg.Nets; len(n) != 2 || n[0].Queues != 4 || n[1].Queues != 0 {
		t.Errorf("machine nets %+v, want eth0 with 4 queue pairs and eth1 with the default", n)
	}
}
