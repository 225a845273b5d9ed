package main

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestParseBenchLine(t *testing.T) {
	for _, tt := range []struct {
		line string
		want benchResult
		ok   bool
	}{
		{"BenchmarkDatapath/randread-4k-qd32/device-2  \t  486948\t      2210 ns/op\t1853.31 MB/s",
			benchResult{Name: "BenchmarkDatapath/randread-4k-qd32/device", Procs: 2, N: 486948,
				Metrics: map[string]float64{"ns/op": 2210, "MB/s": 1853.31}}, true},
		{"BenchmarkPread4K-16   1210532   515.2 ns/op   7949.94 MB/s   0 B/op   0 allocs/op",
			benchResult{Name: "BenchmarkPread4K", Procs: 16, N: 1210532,
				Metrics: map[string]float64{"ns/op": 515.2, "MB/s": 7949.94, "B/op": 0, "allocs/op": 0}}, true},
		// GOMAXPROCS=1: no suffix.
		{"BenchmarkX/tx-64B 1000 1.5e+03 ns/op 12.5 k-frames/s",
			benchResult{Name: "BenchmarkX/tx-64B", Procs: 1, N: 1000,
				Metrics: map[string]float64{"ns/op": 1500, "k-frames/s": 12.5}}, true},
		{"BenchmarkDatapath/a/raw-2", benchResult{}, false}, // the name alone, before a failure
		{"BenchmarkX-2 many 12 ns/op", benchResult{}, false},
		{"BenchmarkX-2 10 12 ns/op 4", benchResult{}, false},
		{"BenchmarkX-2 10 twelve ns/op", benchResult{}, false},
		{"ok  \tgithub.com/govmm/vmm/virtio/blk\t12.928s", benchResult{}, false},
		{"cpu: AMD EPYC", benchResult{}, false},
		{"", benchResult{}, false},
	} {
		got, ok := parseBenchLine(tt.line)
		if ok != tt.ok || (ok && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("parseBenchLine(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseBenchOutput(t *testing.T) {
	for _, tt := range []struct {
		name     string
		out      string
		names    []string
		problems []string
	}{
		{"pass", `goos: linux
goarch: amd64
pkg: github.com/govmm/vmm/virtio/blk
cpu: AMD EPYC
BenchmarkDatapath/randread-4k-qd32/device-2  	  486948	      2210 ns/op	1853.31 MB/s
BenchmarkDatapath/randread-4k-qd32/raw-2     	 1265862	      1002 ns/op	4088.90 MB/s
PASS
`, []string{"BenchmarkDatapath/randread-4k-qd32/device", "BenchmarkDatapath/randread-4k-qd32/raw"}, nil},
		{"skip", `goos: linux
goarch: amd64
pkg: github.com/govmm/vmm/virtio/net
cpu: AMD EPYC
BenchmarkDatapath
    datapath_test.go:224: needs root to create a network namespace
--- SKIP: BenchmarkDatapath
PASS
`, nil, []string{"SKIP BenchmarkDatapath: datapath_test.go:224: needs root to create a network namespace"}},
		{"a failed case among results", `BenchmarkDatapath
BenchmarkDatapath/a
BenchmarkDatapath/a/device
BenchmarkDatapath/a/device-2         	44677262	         0.2801 ns/op	35701.25 MB/s
BenchmarkDatapath/a/raw
    x_test.go:12: boom: 3
    x_test.go:13: second line
--- FAIL: BenchmarkDatapath/a/raw
--- FAIL: BenchmarkDatapath/a
BenchmarkDatapath/b
BenchmarkDatapath/b/device
BenchmarkDatapath/b/device-2         	100	         5 ns/op	1 MB/s
    x_test.go:20: skipping the rest
--- SKIP: BenchmarkDatapath
FAIL
`, []string{"BenchmarkDatapath/a/device", "BenchmarkDatapath/b/device"},
			[]string{"FAIL BenchmarkDatapath/a/raw: x_test.go:12: boom: 3; x_test.go:13: second line",
				"SKIP BenchmarkDatapath: x_test.go:20: skipping the rest"}},
		{"a failure of its own", `BenchmarkDatapath
--- FAIL: BenchmarkDatapath (0.01s)
FAIL
`, nil, []string{"FAIL BenchmarkDatapath"}},
		{"panic", `BenchmarkDatapath/a/device-2 10 5 ns/op
panic: test timed out after 10m0s
`, []string{"BenchmarkDatapath/a/device"}, []string{"panic: test timed out after 10m0s"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			results, problems := parseBenchOutput(tt.out)
			var names []string
			for _, r := range results {
				names = append(names, r.Name)
			}
			if !reflect.DeepEqual(names, tt.names) {
				t.Errorf("results %q, want %q", names, tt.names)
			}
			if !reflect.DeepEqual(problems, tt.problems) {
				t.Errorf("problems %q, want %q", problems, tt.problems)
			}
		})
	}
}

func TestAddDatapathResult(t *testing.T) {
	r := &SuiteResult{Name: "datapath", Reference: implRaw}
	for _, row := range dpRows {
		dpMetrics(r, row)
	}
	n := len(r.Metrics)
	if n != 2*len(dpRows) {
		t.Fatalf("%d metrics for %d rows", n, len(dpRows))
	}
	results, _ := parseBenchOutput(`BenchmarkDatapath/randread-4k-qd32/device-2  	  486948	      2000 ns/op	2048.00 MB/s
BenchmarkDatapath/randread-4k-qd32/raw-2     	 1265862	      1000 ns/op	4096.00 MB/s
BenchmarkDatapath/new-case/device-2     	 100	      1000 ns/op	4096.00 MB/s
BenchmarkDatapath/randread-4k-qd32/other-2     	 100	      1000 ns/op
BenchmarkElse-2     	 100	      1000 ns/op
`)
	for _, res := range results {
		addDatapathResult(r, "virtio/blk", res)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9*math.Max(1, math.Abs(b)) }
	ops, data := r.Metrics[0], r.Metrics[1]
	if ops.Unit != "k requests/s" || data.Unit != "GiB/s" || ops.Name != data.Name || !strings.Contains(ops.Name, "random read") {
		t.Fatalf("first row: %+v, %+v", ops, data)
	}
	if v, w := ops.Values[implVMM], ops.Values[implRaw]; len(v) != 1 || len(w) != 1 || !near(v[0], 500) || !near(w[0], 1000) {
		t.Errorf("k requests/s: vmm %v raw %v, want [500] [1000]", v, w)
	}
	if v := data.Values[implVMM]; len(v) != 1 || !near(v[0], 2048e6/(1<<30)) {
		t.Errorf("GiB/s: %v", v)
	}
	if len(r.Metrics) != n+2 || r.Metrics[n].Name != "blk new-case" || r.Metrics[n].Target == "" {
		t.Errorf("an unknown case did not get metrics of its own: %d metrics, last %+v", len(r.Metrics), r.Metrics[len(r.Metrics)-1])
	}
	r2 := &SuiteResult{}
	res, _ := parseBenchLine("BenchmarkDatapath/tx-1500B/device-2 100 2000 ns/op 750 MB/s")
	addDatapathResult(r2, "virtio/net", res)
	if ops, gbs := r2.Metrics[0], r2.Metrics[1]; ops.Unit != "k frames/s" || gbs.Unit != "Gb/s" || !near(ops.Values[implVMM][0], 500) || !near(gbs.Values[implVMM][0], 6) {
		t.Errorf("net: %+v %+v", ops, gbs)
	}
}
