package main

import (
	"fmt"
	"math"
	"sort"
)

// Summary condenses the repetitions of one measurement.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns the median, minimum and maximum of xs; the median of an
// even count is the mean of the two middle values. An empty input gives
// N == 0 and NaNs, which the report prints as a dash.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	mid := len(s) / 2
	med := s[mid]
	if len(s)%2 == 0 {
		med = (s[mid-1] + s[mid]) / 2
	}
	return Summary{N: len(s), Median: med, Min: s[0], Max: s[len(s)-1]}
}

// Ratio formats a/b as "0.42×": how the VMM's median compares with QEMU's
// (below 1 means the VMM is faster or smaller). A dash when either side is
// missing or b is zero.
func Ratio(a, b Summary) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 || math.IsNaN(a.Median) || math.IsNaN(b.Median) {
		return "—"
	}
	r := a.Median / b.Median
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f×", r)
	case r >= 10:
		return fmt.Sprintf("%.1f×", r)
	default:
		return fmt.Sprintf("%.2f×", r)
	}
}

// FormatValue prints a measurement with about three significant digits
// (enough for noisy timings, short in a table), or a dash when missing.
func FormatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "—"
	case v == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 0.1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}
