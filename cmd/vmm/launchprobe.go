package main

import (
	"fmt"
	"io"
	"strconv"

	"golang.org/x/sys/unix"
)

// launchEnv names the environment variable that turns on the startup probe.
// A launcher (the benchmarks) sets it to its CLOCK_MONOTONIC time in
// nanoseconds just before it starts vmm; when vCPU 0 first enters KVM_RUN
// (vmm.Config.OnFirstRun), vmm prints how long after that instant it was,
// and how much CPU the process had used by then (on a busy host the wall
// time is mostly waiting for a CPU; the CPU time is what vmm itself costs):
//
//	vmm: first KVM_RUN after 4123456 ns (cpu 3012345 ns)
//
// CLOCK_MONOTONIC is one clock for all processes of a host and, unlike the
// wall clock, is not stepped by NTP, so the two processes' readings compare.
// vmm run's child VMM inherits the variable and prints the line too.
const launchEnv = "VMM_LAUNCH_NS"

// launchProbe returns the OnFirstRun hook for the value of launchEnv
// (lookup is os.LookupEnv), writing its line to w; nil when the variable is
// unset or, after a warning on w, not a number.
func launchProbe(lookup func(string) (string, bool), w io.Writer) func() {
	s, ok := lookup(launchEnv)
	if !ok {
		return nil
	}
	launchNS, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		fmt.Fprintf(w, "vmm: ignoring %s=%q: not a number of nanoseconds\n", launchEnv, s)
		return nil
	}
	return func() {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			fmt.Fprintf(w, "vmm: startup probe: %v\n", err)
			return
		}
		var ru unix.Rusage
		cpu := int64(-1)
		if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
			cpu = ru.Utime.Nano() + ru.Stime.Nano()
		}
		fmt.Fprintf(w, "vmm: first KVM_RUN after %d ns (cpu %d ns)\n", ts.Nano()-launchNS, cpu)
	}
}
