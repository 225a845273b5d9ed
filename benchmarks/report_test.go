package main

import (
	"strings"
	"testing"
)

func TestMarkdownTable(t *testing.T) {
	r := &SuiteResult{Name: "s", Title: "Suite", About: "about"}
	m := r.metric("boot", "ms", "time")
	for _, v := range []float64{10, 30, 20} {
		m.add(implVMM, v)
	}
	for _, v := range []float64{40, 40} {
		m.add(implQEMU, v)
	}
	r.metric("probe", "ms", "time").add(implVMM, 2)
	md := Markdown(&Run{Suites: []*SuiteResult{r}}, "charts")
	for _, want := range []string{
		"| boot | ms | 20.0 | 10.0 | 30.0 | 40.0 | 40.0 | 40.0 | 0.50× |",
		"| probe | ms | 2.00 | 2.00 | 2.00 | — | — | — | — |",
		"![time](charts/s-1.svg)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestMarkdownQuantileTable(t *testing.T) {
	r := &SuiteResult{Name: "api", Title: "API", About: "about"}
	lat := r.metric("GET /", "µs", "round trip")
	lat.Quantiles, lat.Target = []float64{50, 99}, "p99 < 1 ms"
	for i := 1; i <= 100; i++ {
		lat.add(implVMM, float64(i))
		lat.add(implQEMU, float64(2*i))
	}
	r.metric("start", "ms", "start").add(implVMM, 5)
	exec := r.metric("exec", "ms", "exec")
	exec.Quantiles = []float64{50, 90}
	exec.add(implVMM, 3)
	md := Markdown(&Run{Suites: []*SuiteResult{r}}, "charts")
	for _, want := range []string{
		"| metric | unit | vmm p50 | vmm p99 | vmm max | QEMU p50 | QEMU p99 | QEMU max | vmm / QEMU p50 | vmm / QEMU p99 | samples (vmm, QEMU) | target |",
		"| GET / | µs | 50.0 | 99.0 | 100 | 100 | 198 | 200 | 0.50× | 0.50× | 100, 100 | p99 < 1 ms |",
		"| start | ms | 5.00 | 5.00 | 5.00 | — | — | — | — |  |",
		"| exec | ms | 3.00 | 3.00 | 3.00 | — | — | — | — | — | 1, 0 |  |",
		"Samples per metric: up to 1 (vmm), 0 (QEMU).",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	// The suite starts with a latency metric, so its table comes first;
	// the p50/p90 metric gets a table of its own after the plain one.
	iLat, iPlain, iExec := strings.Index(md, "| GET / |"), strings.Index(md, "| start |"), strings.Index(md, "vmm p90")
	if !(iLat < iPlain && iPlain < iExec) {
		t.Errorf("table order: latency at %d, plain at %d, p90 table at %d; want that order", iLat, iPlain, iExec)
	}
}
