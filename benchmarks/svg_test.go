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

func TestMetricBar(t *testing.T) {
	m := &Metric{Name: "lat", Unit: "µs", Values: map[string][]float64{implVMM: {1, 2, 3, 4, 5, 1000}}}
	tests := []struct {
		name       string
		quantiles  []float64
		wantMedian float64
		wantMax    float64
		wantHi     string
	}{
		{"plain: median of the middle two, whisker to the maximum", nil, 3.5, 1000, "max"},
		{"latency: nearest-rank p50, whisker to the highest percentile", []float64{50, 80}, 3, 5, "p80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m.Quantiles = tt.quantiles
			s, hi := m.bar(implVMM)
			if s.Median != tt.wantMedian || s.Min != 1 || s.Max != tt.wantMax || hi != tt.wantHi {
				t.Errorf("bar = %+v, %q; want median %v, min 1, max %v, %q", s, hi, tt.wantMedian, tt.wantMax, tt.wantHi)
			}
		})
	}
	if s, _ := m.bar(implQEMU); s.N != 0 {
		t.Errorf("bar of no samples: %+v", s)
	}
}
