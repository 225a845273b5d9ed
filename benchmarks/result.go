package main

import (
	"os"
	"strings"
)

// The two implementations compared, as they appear in tables and charts.
const (
	implVMM  = "vmm"
	implQEMU = "QEMU"
)

// impls lists the implementations in table and chart order.
func impls() []string { return []string{implVMM, implQEMU} }

// SuiteResult is everything one suite measured, as written to the JSON file
// and rendered in the report.
type SuiteResult struct {
	Name     string    `json:"name"`
	Title    string    `json:"title"`
	About    string    `json:"about"`
	Skipped  string    `json:"skipped,omitempty"` // why the suite did not run at all
	Notes    []string  `json:"notes,omitempty"`
	Commands []Command `json:"commands,omitempty"`
	Metrics  []*Metric `json:"metrics"`
	Failures []string  `json:"failures,omitempty"`
	Profiles []Profile `json:"profiles,omitempty"`
	// Reference, when set, is what the suite compares vmm with instead of
	// QEMU (datapath: the raw syscalls on the same file or tap): the
	// metrics keep its samples under that name, and it heads the second
	// set of columns and bars.
	Reference string `json:"reference,omitempty"`
}

// columns are the implementations the suite's tables and charts compare:
// vmm and QEMU, or vmm and the suite's Reference.
func (r *SuiteResult) columns() []string {
	if r.Reference != "" {
		return []string{implVMM, r.Reference}
	}
	return impls()
}

// Command is a command line used, shown verbatim in the report.
type Command struct {
	Label string `json:"label"`
	Argv  string `json:"argv"`
}

// Metric is one measured quantity with the samples of each implementation.
type Metric struct {
	Name   string               `json:"name"`
	Unit   string               `json:"unit"`
	Chart  string               `json:"chart"`           // metrics with the same chart are drawn together
	Group  string               `json:"group,omitempty"` // the label under the bars (default: Name)
	Target string               `json:"target,omitempty"`
	Values map[string][]float64 `json:"values"`
	// Quantiles, when set, makes the metric a latency distribution: the
	// report gives these percentiles (e.g. 50, 99) and the maximum of its
	// many samples instead of their median, minimum and maximum.
	Quantiles []float64 `json:"quantiles,omitempty"`
}

// metric returns the named metric, creating it in order of first use.
func (r *SuiteResult) metric(name, unit, chart string) *Metric {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m
		}
	}
	m := &Metric{Name: name, Unit: unit, Chart: chart, Values: map[string][]float64{}}
	r.Metrics = append(r.Metrics, m)
	return m
}

func (m *Metric) add(impl string, v float64) { m.Values[impl] = append(m.Values[impl], v) }

func (m *Metric) label() string {
	if m.Group != "" {
		return m.Group
	}
	return m.Name
}

func (r *SuiteResult) note(s string)    { r.Notes = append(r.Notes, s) }
func (r *SuiteResult) failure(s string) { r.Failures = append(r.Failures, s) }

// command records a command line, with paths under the working directory
// (the repository, under make) made relative so the report reads the same
// on every machine.
func (r *SuiteResult) command(label string, argv []string) {
	shown := append([]string(nil), argv...)
	if wd, err := os.Getwd(); err == nil {
		for i, a := range shown {
			shown[i] = strings.ReplaceAll(a, wd+string(os.PathSeparator), "")
		}
	}
	r.Commands = append(r.Commands, Command{Label: label, Argv: shellQuote(shown)})
}
