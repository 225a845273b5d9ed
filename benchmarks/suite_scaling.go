package main

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"time"
)

func (b *bench) scaling(ctx context.Context) *SuiteResult {
	r := &SuiteResult{Name: "scaling", Title: "Scaling: many test-guest VMs at once",
		About: fmt.Sprintf("N test-guest VMs of %d MiB launched at the same instant. Two phases per N, each repeated %d times "+
			"and interleaved vmm/QEMU: (1) every VM boots to its exit: wall time until the last one has exited, and host "+
			"CPU per VM (user + system of each process from `wait4`, i.e. its final `/proc/PID/stat` utime+stime); (2) every "+
			"VM boots to its `echo=1` prompt: PSS − guest RAM per VM once all are there (PSS shares the VMM's binary and "+
			"libraries among the N processes). %d host CPUs.", b.cfg.memMiB, b.cfg.scaleReps, runtime.NumCPU())}
	r.command("vmm (phase 1; phase 2 uses `"+echoCmdline+"`)", b.vmmTestguest(testguestCmdline))
	if b.qemu != "" {
		r.command("QEMU (phase 1; phase 2 uses `"+echoCmdline+"`)", b.qemuTestguest(testguestCmdline))
	} else {
		r.note("QEMU skipped: " + b.qemuWhy)
	}
	for _, n := range b.cfg.scale {
		group := fmt.Sprintf("N=%d", n)
		all := r.metric(fmt.Sprintf("N=%d: all exited", n), "ms", "time until all N VMs have booted and exited")
		all.Group = group
		cpu := r.metric(fmt.Sprintf("N=%d: CPU per VM", n), "ms", "host CPU per VM")
		cpu.Group = group
		mem := r.metric(fmt.Sprintf("N=%d: PSS − guest RAM per VM", n), "MiB", "PSS − guest RAM per VM")
		mem.Group = group
		for rep := 1; rep <= b.cfg.scaleReps && ctx.Err() == nil; rep++ {
			for _, impl := range impls() {
				if impl == implQEMU && b.qemu == "" {
					b.prog.total -= 2
					continue
				}
				b.prog.step("scaling: %s N=%d boot-to-exit rep %d/%d", impl, n, rep, b.cfg.scaleReps)
				wall, cpuPer, err := b.batchExit(ctx, impl, n)
				if err != nil {
					r.failure(fmt.Sprintf("%s N=%d: %v", impl, n, err))
				} else {
					all.add(impl, ms(wall))
					cpu.add(impl, ms(cpuPer))
				}
				b.prog.step("scaling: %s N=%d at the prompt rep %d/%d", impl, n, rep, b.cfg.scaleReps)
				pss, err := b.batchIdle(ctx, impl, n)
				if err != nil {
					r.failure(fmt.Sprintf("%s N=%d idle: %v", impl, n, err))
				} else {
					mem.add(impl, pss)
				}
			}
		}
	}
	b.profileScaling(ctx, r)
	return r
}

// batchArgv is the command line of one VM of a batch.
func (b *bench) batchArgv(impl, cmdline string) []string {
	if impl == implQEMU {
		return b.qemuTestguest(cmdline)
	}
	return b.vmmTestguest(cmdline)
}

// batchExit launches n VMs at once, waits for all to exit and returns the
// wall time until the last exit and the mean CPU time per VM.
func (b *bench) batchExit(ctx context.Context, impl string, n int) (time.Duration, time.Duration, error) {
	want := 0
	if impl == implQEMU {
		want = qemuExitStatus(0)
	}
	start := time.Now()
	procs, err := b.launchBatch(ctx, impl, testguestCmdline, n, false)
	defer stopAll(procs)
	if err != nil {
		return 0, 0, err
	}
	var cpu time.Duration
	for _, p := range procs {
		code, _, err := p.Wait()
		if err != nil {
			return 0, 0, err
		}
		if err := checkExit(p.Name, code, want); err != nil {
			return 0, 0, fmt.Errorf("%w; stderr: %s", err, strings.Join(p.StderrTail(3), " | "))
		}
		cpu += p.CPUTime()
	}
	return time.Since(start), cpu / time.Duration(n), nil
}

// batchIdle launches n VMs to their prompt and returns the mean PSS minus
// guest RAM per VM in MiB, measured once all are at the prompt.
func (b *bench) batchIdle(ctx context.Context, impl string, n int) (float64, error) {
	procs, err := b.launchBatch(ctx, impl, echoCmdline, n, true)
	defer stopAll(procs)
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		if _, err := p.WaitOutput("ready>", b.cfg.runTimeout); err != nil {
			return 0, err
		}
	}
	time.Sleep(idleSettle)
	var total uint64
	for _, p := range procs {
		u, err := ReadUsage(p.PID(), b.guestBytes())
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.Name, err)
		}
		total += u.OverheadPSS()
	}
	for _, p := range procs {
		_ = p.Send("bench\n")
	}
	for _, p := range procs {
		p.Wait()
	}
	return float64(total) / 1024 / float64(n), nil
}

// launchBatch starts n VMs back to back; on error the ones started are
// returned too, for the caller to stop.
func (b *bench) launchBatch(ctx context.Context, impl, cmdline string, n int, stdin bool) ([]*Proc, error) {
	// A batch of n shares 2 CPUs: give it time in proportion.
	timeout := b.cfg.runTimeout + time.Duration(n)*2*time.Second
	var procs []*Proc
	for i := 0; i < n; i++ {
		p, err := Launch(ctx, ProcSpec{Name: fmt.Sprintf("%s#%d", impl, i+1), Argv: b.batchArgv(impl, cmdline),
			Stdin: stdin, Timeout: timeout, Marks: []string{"ready>"}})
		if err != nil {
			return procs, err
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// stopAll stops every process of a batch (each by its own PID).
func stopAll(procs []*Proc) {
	for _, p := range procs {
		p.Stop()
	}
}

// profileBatches is how many batches run under the profiler: enough samples
// at perf's rate without making the suite much longer.
const profileBatches = 3

// profileScaling boots the largest batch once more per VMM under a
// system-wide perf profile, to show what the host spends its CPUs on.
func (b *bench) profileScaling(ctx context.Context, r *SuiteResult) {
	n := 0
	for _, s := range b.cfg.scale {
		n = max(n, s)
	}
	for _, impl := range impls() {
		if ctx.Err() != nil || (impl == implQEMU && b.qemu == "") {
			continue
		}
		b.prog.say("scaling: %s N=%d under perf record -a (%d batches)", impl, n, profileBatches)
		var runErr error
		comm := commName(b.vmm)
		if impl == implQEMU {
			comm = commName(b.qemu)
		}
		title := fmt.Sprintf("Where the CPU goes while %d %s VMs boot to their exit (`perf record -a`, %d extra batches, "+
			"samples of the %s processes, user and kernel)", n, impl, profileBatches, comm)
		p, err := b.profile(ctx, title, comm, func() {
			for i := 0; i < profileBatches && runErr == nil; i++ {
				_, _, runErr = b.batchExit(ctx, impl, n)
			}
		})
		if err != nil {
			r.note(fmt.Sprintf("No %s profile: %v", impl, err))
			continue
		}
		if runErr != nil {
			r.failure(fmt.Sprintf("%s N=%d under perf: %v", impl, n, runErr))
		}
		r.Profiles = append(r.Profiles, p)
	}
}
