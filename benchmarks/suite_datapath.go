package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The datapath suite measures vmm's virtio-blk and virtio-net data paths
// in-process, with the packages' own benchmarks (BenchmarkDatapath in
// virtio/blk and virtio/net: a fake guest lays out requests or frames in
// guest memory and notifies the device, which serves them on a real file
// or tap), each beside the raw syscalls on the same file or tap, the
// host's limit. It needs no guest, no KVM and no vmm binary.

// implRaw is the suite's reference column: the raw syscalls.
const implRaw = "raw"

// dpBenchmark is the benchmark the suite runs in each package; its
// sub-benchmarks are <case>/device and <case>/raw.
const dpBenchmark = "BenchmarkDatapath"

// dpTarget is the target: the device path at 80% of the raw limit
// or better.
const dpTarget = 0.8

// dpPackages are the packages the suite benchmarks, in report order.
var dpPackages = []string{"virtio/blk", "virtio/net"}

// dpRow names one case of a package's BenchmarkDatapath in the report.
type dpRow struct {
	pkg, bench  string // package and sub-benchmark (the case)
	name, group string // metric name and chart label
}

// dpRows are the known cases in report order; a case not listed here is
// still reported, under its benchmark name.
var dpRows = []dpRow{
	{"virtio/blk", "randread-4k-qd32", "blk 4 KiB random read, 32 in flight", "4k rand read"},
	{"virtio/blk", "randwrite-4k-qd32", "blk 4 KiB random write, 32 in flight", "4k rand write"},
	{"virtio/blk", "seqread-128k-qd32", "blk 128 KiB sequential read, 32 in flight", "128k seq read"},
	{"virtio/blk", "seqwrite-128k-qd32", "blk 128 KiB sequential write, 32 in flight", "128k seq write"},
	{"virtio/net", "tx-64B", "net TX 64 B frames", "TX 64 B"},
	{"virtio/net", "tx-1500B", "net TX 1500 B frames", "TX 1500 B"},
	{"virtio/net", "tx-64KiB-gso", "net TX 64 KiB TSO frames", "TX 64 KiB TSO"},
	{"virtio/net", "rx-64B", "net RX 64 B frames", "RX 64 B"},
	{"virtio/net", "rx-1500B", "net RX 1500 B frames", "RX 1500 B"},
}

// dpUnits are the two figures of a package's rows: operations (requests
// or frames) per second from ns/op, and data per second from MB/s.
func dpUnits(pkg string) (ops, opsChart, data, dataChart string, fromMBs func(float64) float64) {
	if pkg == "virtio/net" {
		return "k frames/s", "net frames/s", "Gb/s", "net Gb/s", func(mbs float64) float64 { return mbs * 8 / 1000 }
	}
	return "k requests/s", "blk requests/s", "GiB/s", "blk GiB/s", func(mbs float64) float64 { return mbs * 1e6 / (1 << 30) }
}

// datapathSteps is the number of progress steps of the datapath suite.
func (b *bench) datapathSteps() int { return 1 + b.cfg.datapathReps*len(dpPackages) }

func (b *bench) datapathSuite(ctx context.Context) *SuiteResult {
	reps, bt := b.cfg.datapathReps, b.cfg.datapathTime
	r := &SuiteResult{Name: "datapath", Title: "Device data path in-process: virtio-blk and virtio-net against the raw syscalls",
		Reference: implRaw,
		About: fmt.Sprintf("No VM: the `%s` benchmarks of `virtio/blk` and `virtio/net` (`go test -bench`), where a fake guest "+
			"(`virtio/virtiotest`) lays out requests or frames in guest memory, notifies the device and waits for its "+
			"used-buffer notification (EVENT_IDX), and the device serves them on a real file or tap with its own goroutines. "+
			"The **vmm** columns are that device path, the **raw** columns the same transfers as plain syscalls on the same "+
			"file or tap descriptor from the benchmark itself, one system call per request or frame, as a program without "+
			"batching would do them: the host's limit for that way of doing I/O. The device can pass it where it batches "+
			"system calls (io_uring: one io_uring_enter per burst). Throughput, so higher is better. %d rounds, each running every case's device "+
			"and raw benchmark back to back (`-test.benchtime %v`), so the noise of this shared machine hits both alike; "+
			"the tables give the median, minimum and maximum of the rounds. Target: the device path at %.1f× raw or better.",
			dpBenchmark, reps, bt, dpTarget)}
	dir := filepath.Join(b.tmp, "datapath")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.Skipped = err.Error()
		b.prog.total -= b.datapathSteps()
		return r
	}
	// The metrics in report order, whatever runs.
	for _, row := range dpRows {
		dpMetrics(r, row)
	}

	b.prog.step("datapath: build the test binaries of %s", strings.Join(dpPackages, " and "))
	goCmd, err := exec.LookPath("go")
	if err != nil {
		r.Skipped = "the go command is not in PATH: " + err.Error()
		b.prog.total -= b.datapathSteps() - 1
		return r
	}
	bins := map[string]string{}
	for _, pkg := range dpPackages {
		bin := filepath.Join(dir, filepath.Base(pkg)+".test")
		argv := []string{goCmd, "test", "-c", "-o", bin, "./" + pkg}
		r.command("build "+pkg, argv)
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			r.failure(fmt.Sprintf("go test -c ./%s: %v\n%s", pkg, err, out))
			continue
		}
		bins[pkg] = bin
	}
	args := []string{"-test.run", "^$", "-test.bench", "^" + dpBenchmark + "$", "-test.benchtime", bt.String(),
		"-test.count", "1", "-test.timeout", "10m", "-test.v"} // -v: a skip says why
	for _, pkg := range dpPackages {
		if bin := bins[pkg]; bin != "" {
			r.command(fmt.Sprintf("%s, each round (in %s; the same as `go test -run '^$' -bench '^%s$' -benchtime %v -v ./%s`)",
				pkg, pkg, dpBenchmark, bt, pkg), append([]string{bin}, args...))
		}
	}
	skipped, noted := map[string]bool{}, map[string]bool{}
	for rep := 1; rep <= reps; rep++ {
		for _, pkg := range dpPackages {
			if ctx.Err() != nil {
				return b.datapathFinish(r, dir)
			}
			b.prog.step("datapath: %s round %d/%d", pkg, rep, reps)
			bin := bins[pkg]
			if bin == "" || skipped[pkg] {
				continue
			}
			out, err := runDatapathBench(ctx, bin, pkg, dir, args)
			results, problems := parseBenchOutput(out)
			failed := false
			for _, p := range problems {
				switch {
				case p == "SKIP "+dpBenchmark || strings.HasPrefix(p, "SKIP "+dpBenchmark+": "):
					// The whole package can't run here (no tap, say):
					// said once, loudly, and not tried again.
					skipped[pkg] = true
					r.note(fmt.Sprintf("**%s skipped**: %s", pkg, p))
					b.prog.say("datapath: %s skipped: %s", pkg, p)
				case strings.HasPrefix(p, "SKIP "):
					if !noted[p] {
						noted[p] = true
						r.note(fmt.Sprintf("**%s: a case skipped**: %s", pkg, p))
					}
				default:
					failed = true
					r.failure(fmt.Sprintf("%s round %d: %s", pkg, rep, p))
				}
			}
			if err != nil && !failed && ctx.Err() == nil {
				r.failure(fmt.Sprintf("%s round %d: %v\n%s", pkg, rep, err, strings.Join(lastLines([]byte(out), 15), "\n")))
			}
			for _, res := range results {
				addDatapathResult(r, pkg, res)
			}
		}
	}
	return b.datapathFinish(r, dir)
}

// runDatapathBench runs one package's benchmark binary in the package's
// directory, as go test does, with its temporary files under tmp, and
// returns its output. A benchmark killed mid-way (SIGINT reaches the whole
// process group) leaves its files and, for net, its network namespace
// behind: the files go with tmp, the namespace is deleted here.
func runDatapathBench(ctx context.Context, bin, pkg, tmp string, args []string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = pkg
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if cmd.Process != nil {
		// The name newTapNetNS (virtio/net/tap_test.go) gives it.
		ns := fmt.Sprintf("vmmtest-%d-datapath", cmd.Process.Pid)
		if exists(filepath.Join("/run/netns", ns)) {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	}
	return string(out), err
}

// dpMetrics returns the two metrics of row, which share its name, made in
// order of first use.
func dpMetrics(r *SuiteResult, row dpRow) (ops, data *Metric) {
	opsUnit, opsChart, dataUnit, dataChart, _ := dpUnits(row.pkg)
	get := func(unit, chart string) *Metric {
		for _, m := range r.Metrics {
			if m.Name == row.name && m.Unit == unit {
				return m
			}
		}
		m := &Metric{Name: row.name, Unit: unit, Chart: chart, Group: row.group,
			Target: fmt.Sprintf("≥ %.1f× raw", dpTarget), Values: map[string][]float64{}}
		r.Metrics = append(r.Metrics, m)
		return m
	}
	return get(opsUnit, opsChart), get(dataUnit, dataChart)
}

// addDatapathResult adds one benchmark result line to its metrics.
func addDatapathResult(r *SuiteResult, pkg string, res benchResult) {
	parts := strings.Split(res.Name, "/")
	if len(parts) != 3 || parts[0] != dpBenchmark {
		return
	}
	impl := map[string]string{"device": implVMM, "raw": implRaw}[parts[2]]
	if impl == "" {
		return
	}
	row := dpRow{pkg: pkg, bench: parts[1], name: filepath.Base(pkg) + " " + parts[1], group: parts[1]}
	for _, known := range dpRows {
		if known.pkg == pkg && known.bench == parts[1] {
			row = known
		}
	}
	ops, data := dpMetrics(r, row)
	_, _, _, _, fromMBs := dpUnits(pkg)
	if ns, ok := res.Metrics["ns/op"]; ok && ns > 0 {
		ops.add(impl, 1e9/ns/1000)
	}
	if mbs, ok := res.Metrics["MB/s"]; ok {
		data.add(impl, fromMBs(mbs))
	}
}

// datapathFinish adds the notes: what each raw column is, and the verdict;
// tmp is where the benchmarks kept their files.
func (b *bench) datapathFinish(r *SuiteResult, tmp string) *SuiteResult {
	fs := "?"
	var st unix.Statfs_t
	if unix.Statfs(tmp, &st) == nil {
		fs = fsName(st.Type)
	}
	r.note(fmt.Sprintf("blk: a 64 MiB image of non-zero data in the benchmark's temporary directory (%s, %s; not /dev/shm), "+
		"written and flushed before the runs, so every read and write is served by the page cache: no disk I/O in either "+
		"column. Device: 32 requests posted (header, data, status; the same 32 slots every batch), one notification, "+
		"one used-buffer notification when the last completes, repeat; with the default engine, the queue goroutine hands "+
		"the reads to io_uring (one io_uring_enter per batch, straight into guest memory) and does the buffered writes itself. Raw: 32 goroutines doing pread(2)/pwrite(2) of the same sizes at the same offsets on "+
		"the same file (random: a fixed permutation of the image's blocks; sequential: consecutive blocks), the file's "+
		"limit at 32 in flight.", filepath.Dir(tmp), fs))
	r.note("net TX: the device on a tap (IFF_VNET_HDR) in a network namespace of the benchmark's own, with the offloads a " +
		"Linux guest negotiates; the fake guest keeps up to 128 one-buffer chains (virtio-net header and frame) in flight, " +
		"posted 32 per notification; the device writes each burst of frames with one io_uring_enter (one write per frame, " +
		"linked so they stay in order). Raw: write(2) of the same header and frame to the same tap descriptor, one frame a call. " +
		"The frames are addressed to a MAC that is not the tap's, so the host drops them at IP input: both columns measure " +
		"the tap's write path, not the host's network stack. The 64 KiB case is one TSO frame (GSO_TCPV4, 1448-byte segments) " +
		"that the tap takes whole. Gb/s counts Ethernet frames without the virtio-net header.")
	r.note("net RX: with the benchmark's timer stopped, a packet socket on the tap's interface queues 512 frames (sendmmsg, " +
		"bypassing the qdisc; the tap's queue holds 1000); then, timed, the device reads them into the fake guest's 2 KiB " +
		"receive buffers (mergeable, posted back as they are reaped; one io_uring_enter reads a burst of up to 16 frames, a " +
		"non-blocking read per posted buffer) or the raw baseline read(2)s them, one call per frame, from the same tap " +
		"descriptor. Round after round, so the host's sender does not compete with the reader for the CPUs.")
	var below, met []string
	for _, m := range r.Metrics {
		if m.Unit == "GiB/s" || m.Unit == "Gb/s" {
			continue // the same ratio as the row's operations per second
		}
		v, w := Summarize(m.Values[implVMM]), Summarize(m.Values[implRaw])
		if v.N == 0 || w.N == 0 || w.Median == 0 {
			continue
		}
		ratio := v.Median / w.Median
		s := fmt.Sprintf("%s %.2f×", m.Name, ratio)
		if ratio >= dpTarget {
			met = append(met, s)
		} else {
			below = append(below, s)
		}
	}
	if len(met)+len(below) > 0 {
		r.note(fmt.Sprintf("Target %.1f× raw met by %d of %d cases%s%s.", dpTarget, len(met), len(met)+len(below),
			listAfter(": ", met), listAfter("; below it: ", below)))
	}
	return r
}

func listAfter(prefix string, xs []string) string {
	if len(xs) == 0 {
		return ""
	}
	return prefix + strings.Join(xs, ", ")
}

// fsName names the file system of a statfs f_type.
func fsName(t int64) string {
	switch t {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("file system %#x", t)
}

// benchResult is one result line of `go test -bench` output.
type benchResult struct {
	Name    string             // without the -GOMAXPROCS suffix
	Procs   int                // that suffix; 1 without one
	N       int64              // iterations
	Metrics map[string]float64 // value by unit: "ns/op", "MB/s", "B/op", custom units
}

var procsSuffix = regexp.MustCompile(`^(.+)-(\d+)$`)

// parseBenchOutput reads the output of a Go test binary run with -bench
// and -test.v (without -v a skipped benchmark prints nothing): the result
// lines, and what went wrong ("SKIP name: why", "FAIL name: why", with the
// messages the benchmark logged, which -v prints before the --- line, and
// panics). Benchmark names must not end in -digits of their own: that
// suffix is GOMAXPROCS.
func parseBenchOutput(out string) (results []benchResult, problems []string) {
	var pending []string // logged lines waiting for their --- line
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "    ") && trimmed != "":
			pending = append(pending, trimmed)
			continue
		case strings.HasPrefix(trimmed, "--- SKIP: "), strings.HasPrefix(trimmed, "--- FAIL: "):
			kind := trimmed[4:8]
			name, _, _ := strings.Cut(strings.TrimSpace(trimmed[len("--- SKIP: "):]), " (")
			p := kind + " " + name
			if len(pending) > 0 {
				p += ": " + strings.Join(pending, "; ")
			}
			problems = append(problems, p)
		case strings.HasPrefix(trimmed, "panic: "):
			problems = append(problems, trimmed)
		default:
			if res, ok := parseBenchLine(line); ok {
				results = append(results, res)
			}
		}
		pending = nil
	}
	// A parent benchmark fails with its failed sub-benchmark, saying no
	// more: keep the sub-benchmark's message only.
	var kept []string
	for i, p := range problems {
		name, _, hasMsg := strings.Cut(p, ": ")
		name = strings.TrimPrefix(name, "FAIL ")
		covered := false
		for j, q := range problems {
			covered = covered || j != i && strings.HasPrefix(strings.TrimPrefix(strings.TrimPrefix(q, "FAIL "), "SKIP "), name+"/")
		}
		if hasMsg || !covered || !strings.HasPrefix(p, "FAIL ") {
			kept = append(kept, p)
		}
	}
	return results, kept
}

// parseBenchLine parses "BenchmarkX/y-2  1000  1234 ns/op  5.6 MB/s".
func parseBenchLine(line string) (benchResult, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || len(f)%2 != 0 || !strings.HasPrefix(f[0], "Benchmark") {
		return benchResult{}, false
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || n <= 0 {
		return benchResult{}, false
	}
	res := benchResult{Name: f[0], Procs: 1, N: n, Metrics: map[string]float64{}}
	if m := procsSuffix.FindStringSubmatch(f[0]); m != nil {
		res.Name = m[1]
		res.Procs, _ = strconv.Atoi(m[2])
	}
	for i := 2; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil || math.IsNaN(v) {
			return benchResult{}, false
		}
		res.Metrics[f[i+1]] = v
	}
	return res, true
}

// guestless reports whether suite runs without VMs: no vmm binary, no
// guest images, no QEMU.
func guestless(suite string) bool { return suite == "datapath" }
