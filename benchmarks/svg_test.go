package main

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

func TestChartSVGIsWellFormed(t *testing.T) {
	m := &Metric{Name: "first serial output <ms>", Unit: "ms", Values: map[string][]float64{implVMM: {3, 4, 5}}}
	svg := ChartSVG("startup & friends", "ms", []*Metric{m})
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v\n%s", err, svg)
		}
	}
	if !strings.Contains(svg, "n/a") {
		t.Error("the missing QEMU bar is not marked n/a")
	}
}

func TestNiceStep(t *testing.T) {
	for _, tt := range []struct{ in, want float64 }{{0.7, 1}, {1.3, 2}, {3, 5}, {42, 50}, {0, 1}} {
		if got := niceStep(tt.in); got != tt.want {
			t.Errorf("niceStep(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestWrap(t *testing.T) {
	got := wrap("process start to first KVM_RUN", 14)
	want := []string{"process start", "to first", "KVM_RUN"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("wrap = %q, want %q", got, want)
	}
}
