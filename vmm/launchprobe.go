package vmm

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// LaunchEnv names the environment variable that turns on the startup probe.
// A launcher (the benchmarks) sets it to its CLOCK_MONOTONIC time in
// nanoseconds just before it starts vmm; vCPU 0 then prints, once, how long
// after that instant it entered KVM_RUN for the first time, and how much CPU
// the process had used by then (on a busy host the wall time is mostly
// waiting for a CPU; the CPU time is what vmm itself costs):
//
//	vmm: first KVM_RUN after 4123456 ns (cpu 3012345 ns)
//
// CLOCK_MONOTONIC is one clock for all processes of a host and, unlike the
// wall clock, is not stepped by NTP, so the two processes' readings compare.
const LaunchEnv = "VMM_LAUNCH_NS"

// firstRunProbe reports the first KVM_RUN of vCPU 0 against the launch
// timestamp. A nil probe (the variable unset, or another vCPU) does nothing,
// so the cost when off is one nil check per exit.
type firstRunProbe struct {
	launchNS int64
	fired    bool
}

// newFirstRunProbe returns the probe for vCPU id, or nil when it is off.
func newFirstRunProbe(id int) *firstRunProbe {
	if id != 0 {
		return nil
	}
	s, ok := os.LookupEnv(LaunchEnv)
	if !ok {
		return nil
	}
	ns, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmm: ignoring %s=%q: not a number of nanoseconds\n", LaunchEnv, s)
		return nil
	}
	return &firstRunProbe{launchNS: ns}
}

// fire prints the elapsed time the first time it is called, right before
// KVM_RUN; later calls return at once.
func (p *firstRunProbe) fire() {
	if p == nil || p.fired {
		return
	}
	p.fired = true
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		fmt.Fprintf(os.Stderr, "vmm: startup probe: %v\n", err)
		return
	}
	var ru unix.Rusage
	cpu := int64(-1)
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		cpu = ru.Utime.Nano() + ru.Stime.Nano()
	}
	fmt.Fprintf(os.Stderr, "vmm: first KVM_RUN after %d ns (cpu %d ns)\n", ts.Nano()-p.launchNS, cpu)
}
