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
