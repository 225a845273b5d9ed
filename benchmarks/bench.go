package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// bench holds what every suite needs: the binaries, the guest images and
// the progress line.
type bench struct {
	cfg  config
	prog *progress
	tmp  string // sockets and scratch files
	dir  string // this run's results directory

	vmm       string
	vmmAPI    bool   // vmm has --api-sock
	qemu      string // empty when QEMU is missing
	qemuWhy   string // why it is missing
	testguest string
	vmlinux   string
	bzImage   string // the same kernel as a bzImage (LZ4), for boot-linux's bzImage rows
	initrd    string
	image     string // test.ext4, the busybox container image (run, exec)

	memory *SuiteResult // boot-linux adds its idle Linux numbers here
	io     *ioResults   // the iperf3 and fio suites, which share their boots
}

// guestBytes is the guest memory size in bytes.
func (b *bench) guestBytes() uint64 { return uint64(b.cfg.memMiB) << 20 }

func newBench(cfg config) (*bench, error) {
	b := &bench{cfg: cfg, prog: newProgress(os.Stderr, 0)}
	var err error
	if b.vmm, err = filepath.Abs(cfg.vmm); err != nil {
		return nil, err
	}
	// The vmm binary and the test guest are needed unless every suite
	// chosen runs without VMs.
	needVMs := slices.ContainsFunc(cfg.suites, func(s string) bool { return !guestless(s) })
	if _, err := os.Stat(b.vmm); err != nil && needVMs {
		return nil, fmt.Errorf("vmm binary: %w (run `make vmm`)", err)
	}
	help, _ := exec.Command(b.vmm, "--help").CombinedOutput()
	b.vmmAPI = bytes.Contains(help, []byte("-api-sock"))
	tg, err := os.ReadFile(filepath.Join(cfg.guestDir, "testguest.elf"))
	if err != nil && needVMs {
		return nil, fmt.Errorf("test guest: %w (run `make guest`)", err)
	}
	if k := filepath.Join(cfg.guestDir, "vmlinux"); exists(k) {
		b.vmlinux, _ = filepath.Abs(k)
		if z := filepath.Join(cfg.guestDir, "bzImage"); exists(z) {
			b.bzImage, _ = filepath.Abs(z)
		}
		for _, n := range []string{"initramfs.cpio", "initramfs.cpio.gz"} {
			if p := filepath.Join(cfg.guestDir, n); exists(p) {
				b.initrd, _ = filepath.Abs(p)
				break
			}
		}
	}
	if p := filepath.Join(cfg.guestDir, "test.ext4"); exists(p) {
		b.image, _ = filepath.Abs(p)
	}
	if p, err := exec.LookPath(cfg.qemu); err != nil {
		b.qemuWhy = fmt.Sprintf("%s not found (`apt-get install -y qemu-system-x86` installs it; `make bench` tries to)", cfg.qemu)
	} else {
		b.qemu = p
	}
	b.dir = filepath.Join(cfg.out, time.Now().UTC().Format("2006-01-02T150405Z"))
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return nil, fmt.Errorf("results directory: %w", err)
	}
	if b.tmp, err = os.MkdirTemp("", "vmm-bench-"); err != nil {
		return nil, err
	}
	if tg == nil {
		return b, nil
	}
	// The test guest runs from a directory of its own: vmm loads a
	// System.map found beside the kernel, and the one in the guest directory
	// is Linux's (parsing it costs vmm ~20 ms of CPU and ~7 MiB of RSS, which
	// has nothing to do with the test guest).
	b.testguest = filepath.Join(b.tmp, "testguest", "testguest.elf")
	if err := os.MkdirAll(filepath.Dir(b.testguest), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(b.testguest, tg, 0o755); err != nil {
		return nil, fmt.Errorf("copy the test guest: %w", err)
	}
	return b, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// plan counts the runs of the chosen suites, for the progress line.
func (b *bench) plan() int {
	perImpl := 2
	n := 0
	counted := map[string]bool{}
	for _, s := range b.cfg.suites {
		switch s {
		case "startup":
			n += b.cfg.reps * perImpl * 2
		case "boot-testguest", "memory":
			n += b.cfg.reps * perImpl
		case "boot-linux":
			n += b.cfg.linuxReps * perImpl * len(b.linuxKernels())
		case "scaling":
			n += len(b.cfg.scale) * b.cfg.scaleReps * perImpl * 2
		case "api":
			n += b.apiSteps()
		case "datapath":
			n += b.datapathSteps()
		case "snapshot":
			n += b.snapshotSteps()
		case "run":
			n += b.runSteps()
		case "exec":
			n += b.execSteps()
		case "iperf3", "fio":
			if !counted["io"] {
				n += b.ioSteps()
				counted["io"] = true
			}
		}
	}
	return n
}

func runAll(ctx context.Context, cfg config) error {
	began := time.Now()
	b, err := newBench(cfg)
	if err != nil {
		return err
	}
	defer os.RemoveAll(b.tmp)
	b.prog.total = b.plan()
	if b.qemu == "" {
		b.prog.say("QEMU columns skipped: %s", b.qemuWhy)
	}
	run := hostInfo(b)
	startLoad := loadAvg()
	suites := map[string]func(context.Context) *SuiteResult{
		"startup":        b.startup,
		"boot-testguest": b.bootTestguest,
		"memory":         b.memorySuite,
		"boot-linux":     b.bootLinux,
		"scaling":        b.scaling,
		"api":            b.apiSuite,
		"run":            b.runSuite,
		"exec":           b.execSuite,
		"datapath":       b.datapathSuite,
		"iperf3":         b.iperf3Suite,
		"fio":            b.fioSuite,
		"snapshot":       b.snapshotSuite,
	}
	for _, name := range runOrder() {
		if !slices.Contains(cfg.suites, name) {
			continue
		}
		if ctx.Err() != nil {
			b.prog.say("interrupted: skipping suite %s", name)
			continue
		}
		b.prog.say("suite %s", name)
		run.Suites = append(run.Suites, suites[name](ctx))
	}
	if b.memory != nil && !slices.Contains(cfg.suites, "memory") {
		run.Suites = append(run.Suites, b.memory) // boot-linux measured Linux's memory
	}
	if ctx.Err() != nil {
		b.prog.say("interrupted: writing what was measured")
	}
	if cfg.merge != "" {
		if err := mergeRun(run, cfg.merge); err != nil {
			return err
		}
	}
	order := allSuites()
	slices.SortStableFunc(run.Suites, func(a, b *SuiteResult) int {
		return slices.Index(order, a.Name) - slices.Index(order, b.Name)
	})
	run.Duration = time.Since(began).Round(time.Second).String()
	run.Load = fmt.Sprintf("%s at the start, %s at the end (other work shares this machine)", startLoad, loadAvg())
	return b.write(run)
}

// write saves the raw results, the charts and the reports.
func (b *bench) write(run *Run) error {
	raw, err := json.MarshalIndent(run, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, "results.json"), raw, 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return writeReports(b.dir, b.cfg.report, run, b.prog)
}

// mergeRun adds to run the suites of an earlier run that run lacks; the
// memory suite, which boot-linux also writes to, gets the earlier metrics
// this run did not measure.
func mergeRun(run *Run, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read results to merge: %w", err)
	}
	var old Run
	if err := json.Unmarshal(raw, &old); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	have := map[string]*SuiteResult{}
	for _, s := range run.Suites {
		have[s.Name] = s
	}
	for _, s := range old.Suites {
		cur, ok := have[s.Name]
		switch {
		case !ok:
			run.Suites = append(run.Suites, s)
		case s.Name == "memory":
			var add []*Metric
			for _, m := range s.Metrics {
				if !slices.ContainsFunc(cur.Metrics, func(c *Metric) bool { return c.Name == m.Name }) {
					add = append(add, m)
				}
			}
			cur.Metrics = append(add, cur.Metrics...)
			cur.Commands = append(s.Commands, cur.Commands...)
			cur.Notes = append(s.Notes, cur.Notes...)
			cur.Failures = append(s.Failures, cur.Failures...)
		}
	}
	run.Flags += fmt.Sprintf("; the other suites from the run of %s (%s, flags: %s)", old.Date, filepath.Dir(path), old.Flags)
	return nil
}

// rerender rewrites the reports of an earlier run from its results.json.
func rerender(cfg config) error {
	raw, err := os.ReadFile(cfg.from)
	if err != nil {
		return fmt.Errorf("read results: %w", err)
	}
	var run Run
	if err := json.Unmarshal(raw, &run); err != nil {
		return fmt.Errorf("%s: %w", cfg.from, err)
	}
	return writeReports(filepath.Dir(cfg.from), cfg.report, &run, newProgress(os.Stderr, 0))
}

// writeReports writes the charts and report.md into the results directory
// dir, and the report with its charts to report unless that is empty.
func writeReports(dir, report string, run *Run, prog *progress) error {
	if err := WriteCharts(dir, run); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(Markdown(run, ".")), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	prog.say("results in %s", dir)
	if report == "" {
		return nil
	}
	charts := filepath.Join(filepath.Dir(report), "charts")
	if err := os.MkdirAll(charts, 0o755); err != nil {
		return fmt.Errorf("charts directory: %w", err)
	}
	if err := WriteCharts(charts, run); err != nil {
		return err
	}
	if err := os.WriteFile(report, []byte(Markdown(run, "charts")), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	prog.say("report in %s", report)
	return nil
}

// hostInfo describes the machine for the report header.
func hostInfo(b *bench) *Run {
	r := &Run{Date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), CPUs: runtime.NumCPU(), Flags: b.cfg.flags}
	r.Host, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if ci, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(ci), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				r.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	r.KVM = "VT-x/AMD-V"
	if exists("/sys/module/kvm_pvm") {
		r.KVM = "kvm-pvm (no VT-x: guest kernel code runs in KVM's instruction emulator)"
	}
	r.VMM = b.cfg.vmm
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		r.VMM += ", tree at " + strings.TrimSpace(string(out))
	}
	r.QEMU = "not installed: " + b.qemuWhy
	if b.qemu != "" {
		if out, err := exec.Command(b.qemu, "--version").Output(); err == nil {
			r.QEMU, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
		}
	}
	return r
}

// loadAvg is the host's 1, 5 and 15 minute load averages, to tell a quiet
// run from a busy one.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
