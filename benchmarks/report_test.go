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

// TestMarkdownReference: a suite that compares vmm with something other
// than QEMU names it in its columns, ratios and chart legend.
func TestMarkdownReference(t *testing.T) {
	r := &SuiteResult{Name: "dp", Title: "Data path", About: "about", Reference: "raw"}
	m := r.metric("read", "GiB/s", "blk")
	m.Target = "≥ 0.8× raw"
	for _, v := range []float64{3, 4, 5} {
		m.add(implVMM, v)
		m.add("raw", 2*v)
	}
	md := Markdown(&Run{Suites: []*SuiteResult{r}}, "charts")
	for _, want := range []string{
		"| metric | unit | vmm median | vmm min | vmm max | raw median | raw min | raw max | vmm / raw | target |",
		"| read | GiB/s | 4.00 | 3.00 | 5.00 | 8.00 | 6.00 | 10.0 | 0.50× | ≥ 0.8× raw |",
		"Samples per metric: up to 3 (vmm), 3 (raw).",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "QEMU median") {
		t.Errorf("the reference suite has QEMU columns:\n%s", md)
	}
	svg := chartSVG("dp: blk", "GiB/s", r.Metrics, r.columns())
	if !strings.Contains(svg, ">raw</text>") || strings.Contains(svg, "QEMU") || strings.Contains(svg, "n/a") {
		t.Errorf("chart legend or bars do not follow the reference:\n%s", svg)
	}
}
