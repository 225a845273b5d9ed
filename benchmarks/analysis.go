package main

import (
	"fmt"
	"strconv"
	"strings"
)

// saturated is the share of the host's CPUs above which a batch counts as
// CPU-bound.
const saturated = 0.8

// scalingPoint is one VM count's medians for one implementation.
type scalingPoint struct {
	n         int
	wallMS    float64 // until all exited
	cpuPerVM  float64 // ms
	haveWall  bool
	haveCPUMS bool
}

// scalingAnalysis derives, from the scaling suite's medians, how busy the
// host's CPUs were for each N (N × CPU per VM / (wall × CPUs)) and where the
// knee is: the first N at which the batch is CPU-bound, from which on the
// time until all are done grows with N. Derived in the report rather than
// stored, so re-rendering an old run gets it too.
func scalingAnalysis(r *SuiteResult, cpus int) []string {
	if r.Name != "scaling" || cpus < 1 {
		return nil
	}
	var out []string
	for _, impl := range impls() {
		points := map[int]*scalingPoint{}
		var order []int
		for _, m := range r.Metrics {
			nStr, ok := strings.CutPrefix(m.Group, "N=")
			if !ok {
				continue
			}
			n, err := strconv.Atoi(nStr)
			if err != nil {
				continue
			}
			s := Summarize(m.Values[impl])
			if s.N == 0 {
				continue
			}
			p := points[n]
			if p == nil {
				p = &scalingPoint{n: n}
				points[n] = p
				order = append(order, n)
			}
			switch {
			case strings.HasSuffix(m.Name, "all exited"):
				p.wallMS, p.haveWall = s.Median, true
			case strings.HasSuffix(m.Name, "CPU per VM"):
				p.cpuPerVM, p.haveCPUMS = s.Median, true
			}
		}
		var parts []string
		knee := 0
		for _, n := range order {
			p := points[n]
			if !p.haveWall || !p.haveCPUMS || p.wallMS <= 0 {
				continue
			}
			busy := float64(n) * p.cpuPerVM / (p.wallMS * float64(cpus))
			parts = append(parts, fmt.Sprintf("N=%d: %s ms per VM, CPUs %.0f%% busy", n, FormatValue(p.wallMS/float64(n)), 100*busy))
			if knee == 0 && busy >= saturated {
				knee = n
			}
		}
		if len(parts) == 0 {
			continue
		}
		line := fmt.Sprintf("%s: %s.", impl, strings.Join(parts, "; "))
		if knee > 0 {
			line += fmt.Sprintf(" Knee at N=%d: from there the %d host CPUs are ≥ %.0f%% busy with these VMs, so the time until all are done grows in proportion to N × CPU per VM.", knee, cpus, 100*saturated)
		} else {
			line += fmt.Sprintf(" The host CPUs never reached %.0f%% busy: the batches stayed latency-bound.", 100*saturated)
		}
		out = append(out, line)
	}
	return out
}
