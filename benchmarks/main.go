// Command benchmarks compares vmm with QEMU on this host: startup time, API
// latency, the boot of the freestanding test guest and of the project's
// Linux guest, containers (`vmm run` cold start, exec in a warm VM), memory
// overhead, many VMs at once, and snapshots (save, restore, clones).
// `make bench` runs it:
//
//	go run ./benchmarks [-suites startup,api,boot-testguest,boot-linux,run,exec,iperf3,fio,datapath,memory,scaling,snapshot] [-reps 10] [-out DIR] [-guest-dir DIR]
//
// Every run is interleaved (vmm, QEMU, vmm, QEMU, ...) so that the noise of
// a shared machine hits both alike. Results go to OUT/<UTC date-time>/
// (results.json, report.md, one SVG per chart), and the Markdown report to
// -report (benchmarks/RESULTS.md, with its charts beside it in charts/).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/govmm/vmm/kvm"
)

// config is the parsed command line.
type config struct {
	suites       []string
	reps         int
	linuxReps    int
	runReps      int
	execReps     int
	apiRequests  int
	datapathReps int
	datapathTime time.Duration
	scaleReps    int
	scale        []int
	clones       []int
	memMiB       int
	out          string
	report       string
	guestDir     string
	vmm          string
	qemu         string
	ioReps       int
	ioTime       time.Duration
	runTimeout   time.Duration
	linuxTimeout time.Duration
	flags        string // as given, for the report
	from         string // re-render this results.json instead of measuring
	merge        string // take the suites this run skips from this results.json
}

// allSuites lists the suites in the order of the report.
func allSuites() []string {
	return []string{"startup", "api", "boot-testguest", "boot-linux", "run", "exec", "iperf3", "fio", "datapath", "memory", "scaling", "snapshot"}
}

// runOrder is the order the suites run in: the in-process datapath first,
// the slow Linux boots last, so that an interrupted run (SIGINT writes what
// was measured) has the rest.
func runOrder() []string {
	return []string{"datapath", "startup", "api", "boot-testguest", "memory", "scaling", "exec", "iperf3", "fio", "snapshot", "boot-linux", "run"}
}

// defaultRunReps is -run-reps's default: each cold start and plain boot
// takes minutes on a kvm-pvm host (guest kernel code in KVM's instruction
// emulator), a second or so elsewhere.
func defaultRunReps(pvm bool) int {
	if pvm {
		return 3
	}
	return 10
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("benchmarks", flag.ContinueOnError)
	var c config
	suites := fs.String("suites", strings.Join(allSuites(), ","), "comma-separated suites to run: "+strings.Join(allSuites(), ", "))
	scale := fs.String("scale", "1,2,4,8,16,32", "VM counts for the scaling suite")
	clones := fs.String("clones", "1,2,4,8,16,32", "clone counts for the snapshot suite (VMs restored from one snapshot at once)")
	fs.IntVar(&c.reps, "reps", 10, "repetitions per implementation (startup, boot-testguest, memory)")
	fs.IntVar(&c.linuxReps, "linux-reps", 3, "repetitions per implementation for boot-linux (each boot takes minutes on kvm-pvm)")
	fs.IntVar(&c.scaleReps, "scale-reps", 3, "repetitions per VM count for scaling, and per clone count for the snapshot suite's test guest")
	fs.IntVar(&c.runReps, "run-reps", defaultRunReps(kvm.IsPVM()), "cold starts and plain boots for run (3 on kvm-pvm hosts, 10 elsewhere)")
	fs.IntVar(&c.ioReps, "io-reps", 1, "Linux boots per implementation for iperf3 and fio (one boot serves both suites)")
	fs.DurationVar(&c.ioTime, "io-time", 10*time.Second, "duration of each iperf3 test and fio job")
	fs.IntVar(&c.execReps, "exec-reps", 20, "measured execs in the warm VM for exec")
	fs.IntVar(&c.apiRequests, "api-requests", 1000, "measured API (and QMP) round trips of each kind for api")
	fs.IntVar(&c.datapathReps, "datapath-reps", 5, "rounds of the datapath benchmarks (each runs every device and raw case once)")
	fs.DurationVar(&c.datapathTime, "datapath-time", 500*time.Millisecond, "-benchtime of each datapath benchmark")
	fs.IntVar(&c.memMiB, "mem", 128, "guest memory in MiB")
	fs.StringVar(&c.out, "out", "benchmarks/results", "directory for raw results (a dated subdirectory is made per run)")
	fs.StringVar(&c.report, "report", "benchmarks/RESULTS.md", "Markdown report to write (charts go to charts/ beside it); empty: none")
	fs.StringVar(&c.guestDir, "guest-dir", "build/guest", "where `make guest` put testguest.elf, vmlinux and initramfs.cpio")
	fs.StringVar(&c.vmm, "vmm", "bin/vmm", "the vmm binary")
	fs.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "the QEMU binary")
	fs.DurationVar(&c.runTimeout, "timeout", 60*time.Second, "timeout of each test-guest run")
	fs.DurationVar(&c.linuxTimeout, "linux-timeout", 15*time.Minute, "timeout of each Linux boot")
	fs.StringVar(&c.merge, "merge", "", "an earlier results.json whose suites fill in the ones this run does not measure")
	fs.StringVar(&c.from, "from", "", "do not measure: rewrite the report and charts of this results.json (and -report)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	known := map[string]bool{}
	for _, s := range allSuites() {
		known[s] = true
	}
	for _, s := range strings.Split(*suites, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !known[s] {
			return c, fmt.Errorf("unknown suite %q (have %s)", s, strings.Join(allSuites(), ", "))
		}
		c.suites = append(c.suites, s)
	}
	var err error
	if c.scale, err = parseCounts("scale", *scale); err != nil {
		return c, err
	}
	if c.clones, err = parseCounts("clones", *clones); err != nil {
		return c, err
	}
	if c.reps < 1 || c.linuxReps < 1 || c.scaleReps < 1 || c.runReps < 1 || c.execReps < 1 || c.apiRequests < 1 || c.datapathReps < 1 || c.datapathTime <= 0 || c.ioReps < 1 || c.ioTime < time.Second || c.memMiB < 16 {
		return c, fmt.Errorf("repetitions must be at least 1 and -mem at least 16")
	}
	c.flags = strings.Join(args, " ")
	return c, nil
}

// parseCounts parses a comma-separated list of VM counts (-scale, -clones).
func parseCounts(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("invalid -%s entry %q", flagName, f)
		}
		out = append(out, n)
	}
	return out, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchmarks: %v\n", err)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	run := runAll
	if cfg.from != "" {
		run = func(_ context.Context, cfg config) error { return rerender(cfg) }
	}
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "benchmarks: %v\n", err)
		os.Exit(1)
	}
}
