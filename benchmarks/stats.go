package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
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

// Percentile returns the p-th percentile (0 < p ≤ 100) of xs by the
// nearest-rank method: the smallest sample that at least p% of the samples
// are less than or equal to, so it is always one of the samples (p99 of
// 1000 samples is the 990th smallest). NaN for no samples or a p out of
// range.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 || !(p > 0 && p <= 100) {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// QuantileName labels a percentile in a table header: "p50", "p99.9".
func QuantileName(p float64) string { return "p" + strconv.FormatFloat(p, 'f', -1, 64) }

// Quantiles summarizes a latency distribution: the given percentiles and
// the maximum.
type Quantiles struct {
	N      int       `json:"n"`
	Values []float64 `json:"values"` // one per requested percentile
	Max    float64   `json:"max"`
}

// SummarizeQuantiles returns the percentiles ps of xs and their maximum;
// with no samples, N == 0 and NaNs.
func SummarizeQuantiles(xs []float64, ps []float64) Quantiles {
	q := Quantiles{N: len(xs), Max: math.NaN()}
	for _, p := range ps {
		q.Values = append(q.Values, Percentile(xs, p))
	}
	if len(xs) > 0 {
		q.Max = slices.Max(xs)
	}
	return q
}

// RatioOf is Ratio for two single values (NaN: missing).
func RatioOf(a, b float64) string {
	one := func(v float64) Summary {
		if math.IsNaN(v) {
			return Summary{}
		}
		return Summary{N: 1, Median: v, Min: v, Max: v}
	}
	return Ratio(one(a), one(b))
}
