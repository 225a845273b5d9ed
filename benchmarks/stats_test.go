package main

import (
	"math"
	"testing"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want Summary
	}{
		{"one", []float64{3}, Summary{N: 1, Median: 3, Min: 3, Max: 3}},
		{"odd unsorted", []float64{5, 1, 3}, Summary{N: 3, Median: 3, Min: 1, Max: 5}},
		{"even takes the mean of the middle two", []float64{4, 1, 3, 10}, Summary{N: 4, Median: 3.5, Min: 1, Max: 10}},
		{"duplicates", []float64{2, 2, 2, 9}, Summary{N: 4, Median: 2, Min: 2, Max: 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSummarizeEmptyAndNoMutation(t *testing.T) {
	s := Summarize(nil)
	if s.N != 0 || !math.IsNaN(s.Median) || !math.IsNaN(s.Min) || !math.IsNaN(s.Max) {
		t.Errorf("Summarize(nil) = %+v, want N=0 and NaNs", s)
	}
	in := []float64{3, 1, 2}
	Summarize(in)
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Errorf("Summarize sorted its input in place: %v", in)
	}
}

func TestRatio(t *testing.T) {
	sum := func(m float64) Summary { return Summary{N: 1, Median: m, Min: m, Max: m} }
	tests := []struct {
		a, b Summary
		want string
	}{
		{sum(1), sum(4), "0.25×"},
		{sum(3), sum(1), "3.00×"},
		{sum(25), sum(2), "12.5×"},
		{sum(500), sum(2), "250×"},
		{sum(1), sum(0), "—"},
		{Summary{}, sum(1), "—"},
		{sum(1), Summary{}, "—"},
	}
	for _, tt := range tests {
		if got := Ratio(tt.a, tt.b); got != tt.want {
			t.Errorf("Ratio(%v, %v) = %q, want %q", tt.a.Median, tt.b.Median, got, tt.want)
		}
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{math.NaN(), "—"},
		{0, "0"},
		{0.01234, "0.0123"},
		{4.567, "4.57"},
		{45.678, "45.7"},
		{456.78, "457"},
		{45678.9, "45679"},
	}
	for _, tt := range tests {
		if got := FormatValue(tt.in); got != tt.want {
			t.Errorf("FormatValue(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100..1, unsorted
	}
	tests := []struct {
		name string
		in   []float64
		p    float64
		want float64
	}{
		{"one sample", []float64{7}, 50, 7},
		{"median of odd count", []float64{5, 1, 3}, 50, 3},
		{"median of even count is the lower middle", []float64{4, 1, 3, 10}, 50, 3},
		{"p99 of 1..100", hundred, 99, 99},
		{"p90 of 1..100", hundred, 90, 90},
		{"p100 is the maximum", hundred, 100, 100},
		{"tiny p is the minimum", hundred, 0.001, 1},
		{"p99 of 10 samples is the maximum", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 99, 10},
		{"p50 of two", []float64{2, 1}, 50, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.in, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.in, tt.p, got, tt.want)
			}
		})
	}
	for _, bad := range []struct {
		in []float64
		p  float64
	}{{nil, 50}, {[]float64{1}, 0}, {[]float64{1}, 101}, {[]float64{1}, math.NaN()}} {
		if got := Percentile(bad.in, bad.p); !math.IsNaN(got) {
			t.Errorf("Percentile(%v, %v) = %v, want NaN", bad.in, bad.p, got)
		}
	}
	in := []float64{3, 1, 2}
	Percentile(in, 50)
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Errorf("Percentile sorted its input in place: %v", in)
	}
}

func TestSummarizeQuantiles(t *testing.T) {
	tests := []struct {
		name    string
		in, ps  []float64
		wantN   int
		wantVs  []float64
		wantMax float64
	}{
		{"p50 p99 max", []float64{4, 2, 9, 1, 3}, []float64{50, 99}, 5, []float64{3, 9}, 9},
		{"p50 p90", []float64{10, 20}, []float64{50, 90}, 2, []float64{10, 20}, 20},
		{"empty", nil, []float64{50}, 0, []float64{math.NaN()}, math.NaN()},
	}
	same := func(a, b float64) bool { return a == b || (math.IsNaN(a) && math.IsNaN(b)) }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := SummarizeQuantiles(tt.in, tt.ps)
			ok := q.N == tt.wantN && same(q.Max, tt.wantMax) && len(q.Values) == len(tt.wantVs)
			for i := range tt.wantVs {
				ok = ok && same(q.Values[i], tt.wantVs[i])
			}
			if !ok {
				t.Errorf("SummarizeQuantiles(%v, %v) = %+v, want n=%d values %v max %v", tt.in, tt.ps, q, tt.wantN, tt.wantVs, tt.wantMax)
			}
		})
	}
}

func TestQuantileName(t *testing.T) {
	for _, tt := range []struct {
		p    float64
		want string
	}{{50, "p50"}, {99, "p99"}, {99.9, "p99.9"}} {
		if got := QuantileName(tt.p); got != tt.want {
			t.Errorf("QuantileName(%v) = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestRatioOf(t *testing.T) {
	for _, tt := range []struct {
		a, b float64
		want string
	}{{1, 4, "0.25×"}, {30, 2, "15.0×"}, {math.NaN(), 1, "—"}, {1, math.NaN(), "—"}, {1, 0, "—"}} {
		if got := RatioOf(tt.a, tt.b); got != tt.want {
			t.Errorf("RatioOf(%v, %v) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}
