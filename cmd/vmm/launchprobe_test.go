package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestLaunchProbe(t *testing.T) {
	env := func(vals map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := vals[k]; return v, ok }
	}
	var w bytes.Buffer
	if p := launchProbe(env(nil), &w); p != nil || w.Len() != 0 {
		t.Errorf("unset: probe %v, output %q; want neither", p != nil, w.String())
	}
	if p := launchProbe(env(map[string]string{launchEnv: "soon"}), &w); p != nil || !strings.Contains(w.String(), `ignoring VMM_LAUNCH_NS="soon"`) {
		t.Errorf("not a number: probe %v, output %q; want none and a warning", p != nil, w.String())
	}

	w.Reset()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	p := launchProbe(env(map[string]string{launchEnv: strconv.FormatInt(ts.Nano(), 10)}), &w)
	if p == nil {
		t.Fatal("no probe for a valid launch time")
	}
	p()
	// The line the benchmarks parse (benchmarks/suite_startup.go).
	rest, ok := strings.CutPrefix(w.String(), "vmm: first KVM_RUN after ")
	num, cpu, ok2 := strings.Cut(rest, " ns (cpu ")
	if !ok || !ok2 || !strings.HasSuffix(cpu, " ns)\n") {
		t.Fatalf("probe printed %q", w.String())
	}
	if ns, err := strconv.ParseInt(num, 10, 64); err != nil || ns < 0 {
		t.Errorf("elapsed %q: want a non-negative number of ns", num)
	}
	if c, err := strconv.ParseInt(strings.TrimSuffix(cpu, " ns)\n"), 10, 64); err != nil || c <= 0 {
		t.Errorf("cpu %q: want a positive number of ns", cpu)
	}
}
