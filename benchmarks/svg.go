package main

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// Chart geometry, in SVG user units.
const (
	chartW      = 760
	chartH      = 380
	chartLeft   = 70
	chartRight  = 20
	chartTop    = 60
	chartBottom = 120
)

// implColor is the bar colour of an implementation.
func implColor(impl string) string {
	if impl == implVMM {
		return "#2b6cb0"
	}
	return "#c05621"
}

// ChartSVG draws metrics that share a unit as grouped bars: one group per
// metric, one bar per implementation at its median, a whisker from min to
// max (for a latency distribution, to its highest percentile: one outlier
// in a thousand would squash every bar). Hand-written SVG keeps the benchmark free of plotting dependencies.
func ChartSVG(title, unit string, metrics []*Metric) string {
	return chartSVG(title, unit, metrics, impls())
}

// chartSVG is ChartSVG with a bar per implementation of cols (vmm and a
// suite's Reference instead of QEMU: SuiteResult.columns).
func chartSVG(title, unit string, metrics []*Metric, cols []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>`+"\n", chartLeft, html.EscapeString(title))

	top := 0.0
	for _, m := range metrics {
		for _, impl := range cols {
			if s, _ := m.bar(impl); s.N > 0 {
				top = math.Max(top, s.Max)
			}
		}
	}
	step := niceStep(top / 5)
	top = math.Max(step*math.Ceil(top/step), step)

	plotW := float64(chartW - chartLeft - chartRight)
	plotH := float64(chartH - chartTop - chartBottom)
	y := func(v float64) float64 { return chartTop + plotH*(1-v/top) }

	// Axis, grid and tick labels.
	for v := 0.0; v <= top+step/2; v += step {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", chartLeft, chartW-chartRight, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", chartLeft-6, y(v)+4, FormatValue(v))
	}
	fmt.Fprintf(&b, `<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", chartTop+plotH/2, html.EscapeString(unit))

	// Legend.
	for i, impl := range cols {
		x := chartLeft + i*80
		fmt.Fprintf(&b, `<rect x="%d" y="32" width="12" height="12" fill="%s"/><text x="%d" y="42">%s</text>`+"\n", x, implColor(impl), x+16, impl)
	}

	groupW := plotW / float64(max(len(metrics), 1))
	barW := math.Min(groupW*0.8/float64(len(cols)), 60)
	// Labels wrap at spaces under their group; when a word does not fit
	// (KVM_SET_USER_MEMORY_REGION), all labels are drawn slanted instead.
	charsPer := int(groupW / 6.5)
	rotate := false
	for _, m := range metrics {
		for _, w := range strings.Fields(m.label()) {
			rotate = rotate || len(w) > charsPer
		}
	}
	for gi, m := range metrics {
		gx := chartLeft + groupW*float64(gi) + (groupW-barW*float64(len(cols)))/2
		for ii, impl := range cols {
			s, hi := m.bar(impl)
			x := gx + barW*float64(ii)
			if s.N == 0 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#888">n/a</text>`+"\n", x+barW/2, y(0)-4)
				continue
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: median %s, min %s, %s %s %s (n=%d)</title></rect>`+"\n",
				x+1, y(s.Median), barW-2, y(0)-y(s.Median), implColor(impl), impl, html.EscapeString(m.Name),
				FormatValue(s.Median), FormatValue(s.Min), hi, FormatValue(s.Max), html.EscapeString(m.Unit), s.N)
			cx := x + barW/2
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", cx, cx, y(s.Min), y(s.Max))
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/><line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n",
				cx-4, cx+4, y(s.Min), y(s.Min), cx-4, cx+4, y(s.Max), y(s.Max))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", cx, y(s.Max)-4, FormatValue(s.Median))
		}
		cx := chartLeft + groupW*(float64(gi)+0.5)
		if rotate {
			fmt.Fprintf(&b, `<text transform="translate(%.1f %.1f) rotate(-30)" text-anchor="end" font-size="11">%s</text>`+"\n",
				cx, y(0)+14, html.EscapeString(m.label()))
			continue
		}
		for li, line := range wrap(m.label(), charsPer) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", cx, y(0)+16+float64(li)*14, html.EscapeString(line))
		}
	}
	fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", chartLeft, chartW-chartRight, y(0), y(0))
	b.WriteString("</svg>\n")
	return b.String()
}

// bar is what a chart draws for one implementation's samples of m: the
// median, minimum and maximum, or for a latency distribution the p50 (by
// nearest rank, as in its table), minimum and highest percentile (in Max);
// hi names what Max is.
func (m *Metric) bar(impl string) (s Summary, hi string) {
	s = Summarize(m.Values[impl])
	if len(m.Quantiles) == 0 || s.N == 0 {
		return s, "max"
	}
	p := slices.Max(m.Quantiles)
	s.Median = Percentile(m.Values[impl], 50) // as the table's p50
	s.Max = Percentile(m.Values[impl], p)
	return s, QuantileName(p)
}

// niceStep rounds a raw tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 || math.IsNaN(raw) || math.IsInf(raw, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// wrap breaks s into lines of at most width characters at spaces (at most
// four lines: the labels sit in a fixed margin).
func wrap(s string, width int) []string {
	width = max(width, 8)
	var lines []string
	cur := ""
	for _, w := range strings.Fields(s) {
		if cur != "" && len(cur)+1+len(w) > width {
			lines = append(lines, cur)
			cur = w
			continue
		}
		if cur != "" {
			cur += " "
		}
		cur += w
	}
	if cur != "" {
		lines = append(lines, cur)
	}
	if len(lines) > 4 {
		lines = lines[:4]
	}
	return lines
}
