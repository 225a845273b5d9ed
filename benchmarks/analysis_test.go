package main

import (
	"strconv"
	"strings"
	"testing"
)

func TestScalingAnalysis(t *testing.T) {
	r := &SuiteResult{Name: "scaling"}
	add := func(n int, wall, cpu float64) {
		w := r.metric("N="+itoa(n)+": all exited", "ms", "t")
		w.Group = "N=" + itoa(n)
		w.add(implVMM, wall)
		c := r.metric("N="+itoa(n)+": CPU per VM", "ms", "c")
		c.Group = "N=" + itoa(n)
		c.add(implVMM, cpu)
	}
	add(1, 100, 50) // 1×50/(100×2) = 25% busy
	add(4, 125, 50) // 4×50/(125×2) = 80% busy: the knee
	add(8, 250, 50) // 80%
	got := scalingAnalysis(r, 2)
	if len(got) != 1 {
		t.Fatalf("got %d lines, want 1 (no QEMU samples): %q", len(got), got)
	}
	for _, want := range []string{"N=1: 100 ms per VM, CPUs 25% busy", "N=4: 31.2 ms per VM, CPUs 80% busy", "Knee at N=4"} {
		if !strings.Contains(got[0], want) {
			t.Errorf("analysis lacks %q: %s", want, got[0])
		}
	}
	if scalingAnalysis(&SuiteResult{Name: "memory"}, 2) != nil {
		t.Error("analysis for a suite other than scaling")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
