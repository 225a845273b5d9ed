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
