package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"
)

// traceReps bounds the strace runs: they explain the startup numbers, they
// are not the numbers.
const traceReps = 5

// traceIoctls runs each VMM under strace -f -T and records how long the
// host kernel took in the KVM ioctls before the first KVM_RUN, to tell the
// VMM's own start-up cost from KVM's set-up cost on this host.
func (b *bench) traceIoctls(ctx context.Context, r *SuiteResult) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		r.note("No KVM ioctl breakdown: strace is not installed (`apt-get install strace`).")
		return
	}
	reps := min(b.cfg.reps, traceReps)
	runs := map[string][]map[string]time.Duration{}
	for rep := 1; rep <= reps && ctx.Err() == nil; rep++ {
		for _, impl := range impls() {
			if impl == implQEMU && b.qemu == "" {
				continue
			}
			out := filepath.Join(b.tmp, "strace.txt")
			argv := append([]string{strace, "-f", "-T", "-e", "trace=ioctl", "-o", out, "--"}, b.batchArgv(impl, testguestCmdline)...)
			want := 0
			if impl == implQEMU {
				want = qemuExitStatus(0)
			}
			b.prog.say("startup: %s under strace, rep %d/%d", impl, rep, reps)
			if _, err := b.runToExit(ctx, impl+" (strace)", argv, want); err != nil {
				r.failure(err.Error())
				continue
			}
			f, err := os.Open(out)
			if err != nil {
				r.failure(fmt.Sprintf("strace output: %v", err))
				continue
			}
			times, err := IoctlTimes(f)
			f.Close()
			if err != nil {
				r.failure(fmt.Sprintf("%s strace: %v", impl, err))
				continue
			}
			runs[impl] = append(runs[impl], times)
		}
	}
	// Show the requests that matter (≥ 0.2 ms median for either VMM), the
	// biggest first, and the total.
	names := map[string]float64{}
	for _, impl := range impls() {
		for name, s := range perName(runs[impl]) {
			if med := Summarize(s).Median; med >= 0.2 {
				names[name] = max(names[name], med)
			}
		}
	}
	order := make([]string, 0, len(names))
	for n := range names {
		order = append(order, n)
	}
	sort.Slice(order, func(i, j int) bool { return names[order[i]] > names[order[j]] })
	const chart = "KVM ioctl time before the first KVM_RUN (strace -T)"
	total := r.metric("KVM ioctls before the first KVM_RUN, all (strace -T)", "ms", chart)
	total.Group = "all"
	for _, impl := range impls() {
		for _, run := range runs[impl] {
			var sum time.Duration
			for _, d := range run {
				sum += d
			}
			total.add(impl, ms(sum))
		}
	}
	for _, name := range order {
		m := r.metric(name+" (strace -T)", "ms", chart)
		m.Group = name
		for _, impl := range impls() {
			for _, run := range runs[impl] {
				m.add(impl, ms(run[name]))
			}
		}
	}
	r.note(fmt.Sprintf("The strace rows come from %d extra runs of each VMM under `strace -f -T -e trace=ioctl` (which slows "+
		"the process but not the time spent inside each ioctl): time the host kernel spent in each KVM request before "+
		"the first KVM_RUN, summed per request.", reps))
}

// perName regroups per-run maps into samples per request; a run that did not
// make a request counts as zero.
func perName(runs []map[string]time.Duration) map[string][]float64 {
	out := map[string][]float64{}
	for _, run := range runs {
		for name := range run {
			out[name] = nil
		}
	}
	for name := range out {
		for _, run := range runs {
			out[name] = append(out[name], ms(run[name]))
		}
	}
	return out
}
