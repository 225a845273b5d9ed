package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/api"
)

// decodeStrict decodes body into v, refusing fields v does not have: the
// bodies must be what the API's own types read.
func decodeStrict(t *testing.T, body []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
}

func TestSnapshotCreateBody(t *testing.T) {
	body, err := snapshotCreateBody("/s/vmm.state", "/s/vmm.mem")
	if err != nil {
		t.Fatal(err)
	}
	var p api.SnapshotCreateParams
	decodeStrict(t, body, &p)
	if p.SnapshotType == nil || *p.SnapshotType != api.SnapshotFull || p.SnapshotPath == nil || *p.SnapshotPath != "/s/vmm.state" ||
		p.MemFilePath == nil || *p.MemFilePath != "/s/vmm.mem" || p.Version != nil {
		t.Errorf("create body %s decodes to %+v", body, p)
	}
}

func TestSnapshotLoadBody(t *testing.T) {
	for _, vsock := range []string{"", "/c/3.vsock"} {
		body, err := snapshotLoadBody("/s/vmm.state", "/s/vmm.mem", vsock)
		if err != nil {
			t.Fatal(err)
		}
		var p api.SnapshotLoadParams
		decodeStrict(t, body, &p)
		if p.SnapshotPath == nil || *p.SnapshotPath != "/s/vmm.state" || p.MemFilePath != nil {
			t.Errorf("load body %s: snapshot_path or mem_file_path wrong", body)
		}
		if b := p.MemBackend; b == nil || b.BackendType == nil || *b.BackendType != api.MemBackendFile || b.BackendPath == nil || *b.BackendPath != "/s/vmm.mem" {
			t.Errorf("load body %s: mem_backend wrong", body)
		}
		if p.ResumeVM == nil || !*p.ResumeVM {
			t.Errorf("load body %s: not resumed", body)
		}
		switch {
		case vsock == "" && p.VsockOverride != nil:
			t.Errorf("load body %s: a vsock override nobody asked for", body)
		case vsock != "" && (p.VsockOverride == nil || p.VsockOverride.UDSPath == nil || *p.VsockOverride.UDSPath != vsock):
			t.Errorf("load body %s: vsock override missing or wrong", body)
		}
	}
}

// snapTestBench is a bench with the flags that shape the suite and no
// binaries: enough to build its metrics and count its steps.
func snapTestBench(t *testing.T) *bench {
	t.Helper()
	cfg, err := parseFlags([]string{"-reps", "4", "-scale-reps", "2", "-linux-reps", "3", "-clones", "1,8"})
	if err != nil {
		t.Fatal(err)
	}
	return &bench{cfg: cfg, qemu: "qemu", testguest: "/tg", vmlinux: "/vmlinux", initrd: "/initrd", vmm: "/vmm"}
}

func TestSnapSteps(t *testing.T) {
	b := snapTestBench(t)
	// Per implementation: 4 snapshots, each restored once; 2 clone counts
	// × 2 repetitions × 2 batches (answer, idle memory).
	if got := b.snapSteps(b.testguestSnap()); got != 4*2+2*2*2 {
		t.Errorf("test guest steps %d, want 16", got)
	}
	// One boot, 3 restores; one batch per clone count.
	if got := b.snapSteps(b.linuxSnap("")); got != 1+3+2 {
		t.Errorf("Linux steps %d, want 6", got)
	}
	if got := b.snapshotSteps(); got != 2*(16+6) {
		t.Errorf("suite steps %d, want 44", got)
	}
	b.vmlinux = ""
	if got := b.snapshotSteps(); got != 2*16 {
		t.Errorf("suite steps without Linux %d, want 32", got)
	}
}

func TestSnapGuestArgv(t *testing.T) {
	b := snapTestBench(t)
	tg := b.testguestSnap()
	vmm := strings.Join(tg.vmmArgv("/t/api.sock", "/t/v.sock"), " ")
	if !strings.Contains(vmm, "--api-sock /t/api.sock") || !strings.Contains(vmm, "--cmdline "+echoCmdline) || strings.Contains(vmm, "--vsock") {
		t.Errorf("test guest source argv %q", vmm)
	}
	qemu := tg.qemuArgv("/t/q.sock", "-incoming", "exec:cat /t/f")
	if i := indexOf(qemu, "-incoming"); i < 0 || qemu[i+1] != "exec:cat /t/f" || indexOf(qemu, "unix:/t/q.sock,server=on,wait=off") < 0 {
		t.Errorf("QEMU restore argv %q", qemu)
	}
	lg := b.linuxSnap("console=ttyS0")
	vmm = strings.Join(lg.vmmArgv("/t/api.sock", "/t/v.sock"), " ")
	if !strings.Contains(vmm, "--vsock cid=3,uds=/t/v.sock") || !strings.Contains(vmm, "--api-sock /t/api.sock") {
		t.Errorf("Linux source argv %q", vmm)
	}
	if strings.Contains(linuxQuery, linuxAnswer) {
		t.Errorf("the Linux query %q contains its answer %q: the terminal's echo would count", linuxQuery, linuxAnswer)
	}
}

func indexOf(xs []string, s string) int {
	for i, x := range xs {
		if x == s {
			return i
		}
	}
	return -1
}

func TestAddSnapshot(t *testing.T) {
	b := snapTestBench(t)
	r := &SuiteResult{Name: "snapshot"}
	m := newSnapMetrics(r, b.testguestSnap(), 128)
	dir := t.TempDir()
	f := snapFiles{dir: dir, state: filepath.Join(dir, "vmm.state"), mem: sparseFile(t, 128<<20, 0, 1<<20), stream: filepath.Join(dir, "qemu.migration")}
	if err := os.WriteFile(f.state, bytes.Repeat([]byte{1}, 3072), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.stream, bytes.Repeat([]byte{2}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	taken := snapTaken{pause: 2 * time.Millisecond, create: 40 * time.Millisecond, bootedPSS: 8192}
	if err := m.addSnapshot(implVMM, f, taken); err != nil {
		t.Fatal(err)
	}
	if err := m.addSnapshot(implQEMU, f, snapTaken{pause: time.Millisecond, create: 80 * time.Millisecond, bootedPSS: 16384}); err != nil {
		t.Fatal(err)
	}
	one := func(x *Metric, impl string) float64 {
		t.Helper()
		if len(x.Values[impl]) != 1 {
			t.Fatalf("%s: %s has %d samples, want 1", x.Name, impl, len(x.Values[impl]))
		}
		return x.Values[impl][0]
	}
	_, alloc, _ := fileSpace(f.mem)
	_, stAlloc, _ := fileSpace(f.state)
	for _, c := range []struct {
		m    *Metric
		impl string
		want float64
	}{
		{m.pause, implVMM, 2}, {m.create, implVMM, 40}, {m.both, implVMM, 42}, {m.booted, implVMM, 8},
		{m.stateKiB, implVMM, 3}, {m.memApparent, implVMM, 128}, {m.memAllocated, implVMM, mib(alloc)},
		{m.diskApparent, implVMM, 128 + 3.0/1024}, {m.diskAllocated, implVMM, mib(alloc + stAlloc)},
		{m.both, implQEMU, 81}, {m.booted, implQEMU, 16}, {m.diskApparent, implQEMU, 1},
	} {
		if got := one(c.m, c.impl); got != c.want {
			t.Errorf("%s (%s) = %v, want %v", c.m.Name, c.impl, got, c.want)
		}
	}
	if mib(alloc) >= 64 {
		t.Errorf("the sparse memory file counts %v MiB allocated", mib(alloc))
	}
	if len(m.memApparent.Values[implQEMU]) != 0 || len(m.stateKiB.Values[implQEMU]) != 0 {
		t.Error("QEMU got vmm's per-file rows")
	}
	f.state = filepath.Join(dir, "missing")
	if err := m.addSnapshot(implVMM, f, taken); err == nil {
		t.Error("addSnapshot of a missing state file succeeded")
	}
}

// TestSnapshotReport renders a snapshot suite as the suite fills it: the
// targets' verdicts next to vmm's numbers, and the vmm / QEMU ratio.
func TestSnapshotReport(t *testing.T) {
	b := snapTestBench(t)
	r := &SuiteResult{Name: "snapshot", Title: "Snapshot, restore and clones", About: "about"}
	m := newSnapMetrics(r, b.linuxSnap(""), 128)
	m.running.Values[implVMM] = []float64{3, 4, 5}
	m.running.Values[implQEMU] = []float64{40, 40}
	m.agent.Values[implVMM] = []float64{1500, 1700}
	ratio := r.metric("Linux clones N=8: "+cloneRatioSuffix, "×", "Linux clones: "+cloneRatioSuffix)
	ratio.Target = "≤ 0.25"
	ratio.Values[implVMM] = []float64{0.1}
	ratio.Values[implQEMU] = []float64{1.02}
	for _, x := range r.Metrics {
		switch {
		case x == m.running:
			judgeTarget(x, targetRunningMS)
		case x == m.agent:
			judgeTarget(x, targetAgentMS)
		case x == ratio:
			judgeTarget(x, targetCloneRatio)
		}
	}
	md := Markdown(&Run{Suites: []*SuiteResult{r}}, "charts")
	for _, want := range []string{
		"| Linux: restore → vCPU running (vmm: first KVM_RUN; QEMU: cont answered after -incoming) | ms | 4.00 | 3.00 | 5.00 | 40.0 | 40.0 | 40.0 | 0.10× | ≤ 10 ms at 128 MiB: met |",
		"| Linux: restore → agent answers on vsock (vmm) | ms | 1600 | 1500 | 1700 | — | — | — | — | ≤ 1 s: not met |",
		"| Linux clones N=8: PSS per clone ÷ booted VM's | × | 0.10 | 0.10 | 0.10 | 1.02 | 1.02 | 1.02 | 0.10× | ≤ 0.25: met |",
		"| Linux: pause + create | ms | — |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if _, groups := chartGroups(r); len(groups["Linux: restore"]) != 3 {
		t.Errorf("the restore chart has %d metrics, want running, answered, agent", len(groups["Linux: restore"]))
	}
}
