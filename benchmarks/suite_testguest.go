package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// idleSettle is how long a VM sits at its prompt before its memory is read,
// so that start-up allocations have settled.
const idleSettle = 500 * time.Millisecond

func (b *bench) bootTestguest(ctx context.Context) *SuiteResult {
	r := &SuiteResult{Name: "boot-testguest", Title: "Boot: freestanding test guest",
		About: "Wall time from process start to process exit for the freestanding test guest " +
			"(`guest/testguest`: enters 64-bit mode, prints its boot report on COM1, writes status 0 " +
			"to the test exit port), and the process's CPU time (user + system, from `wait4`'s rusage, " +
			fmt.Sprintf("the utime+stime of `/proc/PID/stat`). %d MiB guest. On VT-x the guest itself would run for well under a ", b.cfg.memMiB) +
			"millisecond, leaving the VMM's own cost (set-up, exits, tear-down); on kvm-pvm its ring-0 code runs in KVM's " +
			"instruction emulator, whose share the scaling suite's perf profile shows."}
	wall := r.metric("process start → exit (wall)", "ms", "wall time")
	cpu := r.metric("CPU time (user + system)", "ms", "CPU time")
	r.command("vmm", b.vmmTestguest(testguestCmdline))
	if b.qemu != "" {
		r.command("QEMU", b.qemuTestguest(testguestCmdline))
	} else {
		r.note("QEMU skipped: " + b.qemuWhy)
	}
	for rep := 1; rep <= b.cfg.reps && ctx.Err() == nil; rep++ {
		b.prog.step("boot-testguest: vmm rep %d/%d", rep, b.cfg.reps)
		if p, err := b.runToExit(ctx, "vmm", b.vmmTestguest(testguestCmdline), 0); err != nil {
			r.failure(err.Error())
		} else {
			_, d, _ := p.Wait()
			wall.add(implVMM, ms(d))
			cpu.add(implVMM, ms(p.CPUTime()))
		}
		if b.qemu == "" {
			b.prog.total--
			continue
		}
		b.prog.step("boot-testguest: QEMU rep %d/%d", rep, b.cfg.reps)
		if p, err := b.runToExit(ctx, "QEMU", b.qemuTestguest(testguestCmdline), qemuExitStatus(0)); err != nil {
			r.failure(err.Error())
		} else {
			_, d, _ := p.Wait()
			wall.add(implQEMU, ms(d))
			cpu.add(implQEMU, ms(p.CPUTime()))
		}
	}
	r.note("QEMU's exit status for guest status 0 is 1 (isa-debug-exit makes it (N<<1)|1); both statuses are checked.")
	return r
}

func (b *bench) memorySuite(ctx context.Context) *SuiteResult {
	r := b.memoryResult()
	r.command("vmm (test guest at its prompt)", b.vmmTestguest(echoCmdline))
	if b.qemu != "" {
		r.command("QEMU (test guest at its prompt)", b.qemuTestguest(echoCmdline))
	} else {
		r.note("QEMU skipped: " + b.qemuWhy)
	}
	for rep := 1; rep <= b.cfg.reps && ctx.Err() == nil; rep++ {
		b.prog.step("memory: vmm test guest at its prompt, rep %d/%d", rep, b.cfg.reps)
		if u, err := b.idleUsage(ctx, "vmm", b.vmmTestguest(echoCmdline), 0); err != nil {
			r.failure(err.Error())
		} else {
			addUsage(r, "test guest", implVMM, u)
		}
		if b.qemu == "" {
			b.prog.total--
			continue
		}
		b.prog.step("memory: QEMU test guest at its prompt, rep %d/%d", rep, b.cfg.reps)
		if u, err := b.idleUsage(ctx, "QEMU", b.qemuTestguest(echoCmdline), qemuExitStatus(0)); err != nil {
			r.failure(err.Error())
		} else {
			addUsage(r, "test guest", implQEMU, u)
		}
	}
	return r
}

// memoryResult is the memory suite's result, shared with boot-linux, which
// adds the idle Linux guest's numbers.
func (b *bench) memoryResult() *SuiteResult {
	if b.memory == nil {
		b.memory = &SuiteResult{Name: "memory", Title: "Memory overhead",
			About: fmt.Sprintf("Resident (RSS) and proportional (PSS) memory of the VMM process from `/proc/PID/smaps_rollup`, "+
				"minus the guest RAM it touched: the Rss/Pss of the anonymous mappings of at least 7/8 of the guest's %d MiB in "+
				"`/proc/PID/smaps` (guest RAM is one such mapping in both VMMs). Measured %v after the guest went idle: the "+
				"test guest at its `echo=1` prompt (it polls the UART for input), and the Linux guest at its shell prompt "+
				"(from the boot-linux runs, when they reach it). Target for vmm: ≤ 5 MiB.", b.cfg.memMiB, idleSettle)}
	}
	return b.memory
}

// addUsage records one measurement; what is "guest" goes in the metric names.
func addUsage(r *SuiteResult, guest, impl string, u MemUsage) {
	mib := func(kb uint64) float64 { return float64(kb) / 1024 }
	rss := r.metric(guest+": RSS − guest RAM", "MiB", "overhead")
	rss.Target = "≤ 5 MiB"
	rss.add(impl, mib(u.OverheadRSS()))
	r.metric(guest+": PSS − guest RAM", "MiB", "overhead").add(impl, mib(u.OverheadPSS()))
	r.metric(guest+": overhead in mapped files (binary, libraries)", "MiB", "overhead split").add(impl, mib(u.FileRSS))
	r.metric(guest+": overhead in anonymous memory (heap, stacks, buffers)", "MiB", "overhead split").add(impl, mib(u.AnonOverheadRSS()))
	r.metric(guest+": RSS total", "MiB", "totals").add(impl, mib(u.RSS))
	r.metric(guest+": guest RAM touched", "MiB", "totals").add(impl, mib(u.GuestRSS))
}

// idleUsage boots the test guest to its prompt, reads the VMM's memory,
// then answers the prompt and checks the exit status.
func (b *bench) idleUsage(ctx context.Context, name string, argv []string, want int) (MemUsage, error) {
	p, err := Launch(ctx, ProcSpec{Name: name, Argv: argv, Stdin: true, Timeout: b.cfg.runTimeout, Marks: []string{"ready>"}})
	if err != nil {
		return MemUsage{}, err
	}
	defer p.Stop()
	if _, err := p.WaitOutput("ready>", b.cfg.runTimeout); err != nil {
		return MemUsage{}, fmt.Errorf("%w; console: %s", err, strings.Join(p.Tail(3), " | "))
	}
	time.Sleep(idleSettle)
	u, err := ReadUsage(p.PID(), b.guestBytes())
	if err != nil {
		return u, fmt.Errorf("%s: %w", name, err)
	}
	if err := p.Send("bench\n"); err != nil {
		return u, fmt.Errorf("%s: answer the prompt: %w", name, err)
	}
	code, _, err := p.Wait()
	if err != nil {
		return u, err
	}
	return u, checkExit(name, code, want)
}
