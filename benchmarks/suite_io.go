package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/kvm"
)

// The iperf3 and fio suites share their boots: each repetition boots the
// Linux guest once per VMM with the tools image, a data disk and a tap in
// a network namespace of the benchmark's own, starts iperf3 and fio
// servers in the guest, and drives every test from the host (iperf3 -c,
// fio --client), sampling the VMM's thread CPU around each test.

// ioDataBytes is the size of the raw data image fio runs on.
const ioDataBytes = 1 << 30

// ioMemMiB is the guest memory of the io suites: fio's libraries (~80 MB
// on disk, Ceph and Gluster engines included) and the page cache need more
// than the 128 MiB of the boot suites.
const ioMemMiB = 256

// ioAttempts and ioRetryPause bound the retries of a failed test.
const (
	ioAttempts   = 3
	ioRetryPause = 10 * time.Second
)

// ioMAC is the guest's MAC address, the same for both VMMs.
const ioMAC = "52:54:00:12:34:56"

// ioResults are the two suites one set of boots fills.
type ioResults struct {
	net, blk *SuiteResult
}

// iperfTest is one iperf3 run: reverse makes the guest send.
type iperfTest struct {
	name    string
	reverse bool
	streams int
}

func iperfTests() []iperfTest {
	return []iperfTest{
		{"host → guest, 1 stream", false, 1},
		{"host → guest, 4 streams", false, 4},
		{"guest → host, 1 stream", true, 1},
		{"guest → host, 4 streams", true, 4},
	}
}

// fioJob is one fio job; iops selects IOPS (else MB/s) as its figure.
type fioJob struct {
	name    string
	rw      string
	bs      string
	iodepth int
	iops    bool
}

func fioJobs() []fioJob {
	return []fioJob{
		{"4k random read, iodepth 32", "randread", "4k", 32, true},
		{"4k random write, iodepth 32", "randwrite", "4k", 32, true},
		{"128k sequential read, iodepth 32", "read", "128k", 32, false},
		{"128k sequential write, iodepth 32", "write", "128k", 32, false},
	}
}

func (m fioJob) unit() string {
	if m.iops {
		return "IOPS"
	}
	return "MB/s"
}

// jobFile is the fio job for filename, running for d.
func (m fioJob) jobFile(filename string, d time.Duration) string {
	return fmt.Sprintf("[global]\nfilename=%s\ndirect=1\nioengine=libaio\ntime_based=1\nruntime=%d\n\n[%s]\nrw=%s\nbs=%s\niodepth=%d\n",
		filename, int(d.Seconds()), m.rw, m.rw, m.bs, m.iodepth)
}

func (b *bench) iperf3Suite(ctx context.Context) *SuiteResult {
	b.runIO(ctx)
	return b.io.net
}

func (b *bench) fioSuite(ctx context.Context) *SuiteResult {
	b.runIO(ctx)
	return b.io.blk
}

// ioSteps counts the boots of the io suites, for the progress line.
func (b *bench) ioSteps() int { return 2 * b.cfg.ioReps }

func (b *bench) runIO(ctx context.Context) {
	if b.io != nil {
		return
	}
	wantNet, wantBlk := slices.Contains(b.cfg.suites, "iperf3"), slices.Contains(b.cfg.suites, "fio")
	t := b.cfg.ioTime
	net := &SuiteResult{Name: "iperf3", Title: "Network: iperf3 between the host and the Linux guest",
		About: fmt.Sprintf("Debian's iperf3 in the project's Linux guest (%d MiB, one vCPU) as the server, the host's iperf3 as the "+
			"client on the other end of the guest's tap, in a network namespace of the benchmark's own; host → guest is the "+
			"client sending, guest → host is `-R`; 1 and 4 parallel streams, %v each; Gb/s received. Then the VMM's own "+
			"cost: the CPU time of its threads other than the vCPU threads (device emulation, I/O and event loops; read "+
			"per thread from /proc before and after each test) per GiB moved. vmm: virtio-net on the tap (IFF_VNET_HDR, "+
			"offloads). QEMU: virtio-net-pci with `-netdev tap,vnet_hdr=on` (no vhost-net on this host). Same kernel, "+
			"initramfs and tools image for both; %d boot(s) each.", ioMemMiB, t, b.cfg.ioReps)}
	blk := &SuiteResult{Name: "fio", Title: "Block: fio in the Linux guest",
		About: fmt.Sprintf("Debian's fio, run by the guest's fio server (`fio --server`, driven with `fio --client` from the "+
			"host) on the raw 1 GiB data disk: `direct=1`, `ioengine=libaio`, %v per job; the same jobs on the image file "+
			"from the host are the physical reference. Then the VMM's device-thread CPU time per GiB moved, as for iperf3. "+
			"vmm: `--disk path=data.raw,direct` (O_DIRECT). QEMU: virtio-blk-pci, `cache=none,aio=io_uring` (O_DIRECT too). Same boots as the iperf3 suite.", t)}
	b.io = &ioResults{net: net, blk: blk}
	skip := func(why string) {
		net.Skipped, blk.Skipped = why, why
		b.prog.total -= b.ioSteps()
	}
	if b.vmlinux == "" || b.initrd == "" {
		skip(fmt.Sprintf("no vmlinux and initramfs.cpio in %s (run `make guest`)", b.cfg.guestDir))
		return
	}
	tools, err := findIOTools()
	if err != nil {
		skip(err.Error())
		return
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skip("no ip(8) for the network namespace (apt-get install iproute2)")
		return
	}
	dir := filepath.Join(b.tmp, "io")
	toolsImage, dataImage := filepath.Join(dir, "tools.ext4"), filepath.Join(dir, "data.raw")
	b.prog.say("io: building the tools image (iperf3, fio and their libraries)")
	if err := buildToolsImage(tools, dir, toolsImage); err != nil {
		skip("tools image: " + err.Error())
		return
	}
	if err := writeDataImage(dataImage, ioDataBytes); err != nil {
		skip("data image: " + err.Error())
		return
	}
	cmdline, err := b.effectiveCmdline(ctx)
	if err != nil {
		skip("could not learn vmm's effective command line: " + err.Error())
		return
	}
	ns := fmt.Sprintf("vmmbench%d", os.Getpid())
	if err := createIONetNS(ns); err != nil {
		skip(err.Error())
		return
	}
	defer exec.Command("ip", "netns", "del", ns).Run()

	// O_DIRECT for vmm as for QEMU's cache=none, where the file system
	// has it (tmpfs has not: then QEMU's cache=none fails too).
	dataDisk := "path=" + dataImage
	if supportsDirect(dataImage) {
		dataDisk += ",direct"
	} else {
		blk.note("The data image's file system has no O_DIRECT: vmm's disk is buffered.")
	}
	vmmArgv := []string{b.vmm, "--kernel", b.vmlinux, "--initrd", b.initrd, "--mem", fmt.Sprintf("%dM", ioMemMiB),
		"--disk", "path=" + toolsImage + ",ro", "--disk", dataDisk, "--net", "tap=" + ioTap + ",mac=" + ioMAC}
	qemuArgv := b.qemuIO(cmdline, toolsImage, dataImage)
	for _, r := range []*SuiteResult{net, blk} {
		r.command("vmm", vmmArgv)
		if b.qemu != "" {
			r.command("QEMU", qemuArgv)
		} else {
			r.note("QEMU skipped: " + b.qemuWhy)
		}
		r.note(fmt.Sprintf("Both VMMs run in network namespace %s (`ip netns exec`), where the tap %s has %s/%d and the guest %s.",
			"vmmbench<pid>", ioTap, ioHostIP, ioPrefix, ioGuestIP))
	}
	for _, r := range []*SuiteResult{net, blk} {
		r.note("Every figure is per second of host time. A guest whose clock runs slow reports too much work per second, " +
			"and on kvm-pvm QEMU's guest does: it marks its TSC unstable at boot and keeps time with jiffies, which lose " +
			"the emulated guest's late timer ticks. So iperf3's rate is the bytes received over the duration the host's " +
			"end measured, and fio's figures (timed by the guest) are multiplied by the guest's clock rate, read from its " +
			"/proc/uptime over the console before and after each test (guest seconds per host second: the last row).")
	}
	if kvm.IsPVM() {
		note := "On this kvm-pvm host the guest kernel's network and block stacks run in KVM's instruction emulator, so " +
			"throughput is bounded by the emulated guest (KB/s, not Gb/s) for both VMMs; the device-thread CPU per GiB is " +
			"the VMM's own cost, and QEMU's guest gets `noxsave` on top of vmm's command line (QEMU does not complete " +
			"XSAVE/XRSTOR, which vmm does for the guest kernel here)."
		net.note(note)
		blk.note(note)
	}
	if wantBlk {
		b.hostFioReference(ctx, blk, dataImage)
	}
	runQEMU := b.qemu != ""
	for rep := 1; rep <= b.cfg.ioReps && ctx.Err() == nil; rep++ {
		for _, impl := range impls() {
			argv := vmmArgv
			if impl == implQEMU {
				if !runQEMU {
					b.prog.total--
					continue
				}
				argv = qemuArgv
			}
			b.prog.step("iperf3/fio: %s rep %d/%d (a Linux boot, then %d tests of %v)", impl, rep, b.cfg.ioReps,
				boolInt(wantNet)*len(iperfTests())+boolInt(wantBlk)*len(fioJobs()), t)
			log := filepath.Join(b.dir, fmt.Sprintf("io-%s-%d", strings.ToLower(impl), rep))
			b.prog.say("console log: %s.console.log", log)
			err := b.ioBoot(ctx, impl, append([]string{"ip", "netns", "exec", ns}, argv...), log, ns, wantNet, wantBlk)
			if err != nil {
				for _, r := range []*SuiteResult{net, blk} {
					r.failure(fmt.Sprintf("%s rep %d: %v", impl, rep, err))
				}
				if impl == implQEMU {
					runQEMU = false // it fails the same way again
				}
			}
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// qemuIO is QEMU's counterpart of the io suites' vmm command line: PCIe on
// microvm (described to the guest by ACPI, as vmm does), modern-only
// virtio-pci devices, the tap with a vnet header, O_DIRECT io_uring disks.
func (b *bench) qemuIO(cmdline, toolsImage, dataImage string) []string {
	cmdline = qemuCmdline(cmdline)
	return []string{b.qemu, "-M", "microvm,acpi=on,pcie=on", "-enable-kvm", "-cpu", qemuLinuxCPU, "-smp", "1",
		"-m", strconv.Itoa(ioMemMiB), "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
		"-name", "io,debug-threads=on", "-kernel", b.vmlinux, "-initrd", b.initrd, "-append", cmdline,
		"-drive", "id=tools,file=" + toolsImage + ",format=raw,if=none,readonly=on,cache=none,aio=io_uring",
		"-device", "virtio-blk-pci,drive=tools,disable-legacy=on",
		"-drive", "id=data,file=" + dataImage + ",format=raw,if=none,cache=none,aio=io_uring",
		"-device", "virtio-blk-pci,drive=data,disable-legacy=on",
		"-netdev", "tap,id=n0,ifname=" + ioTap + ",script=no,downscript=no,vnet_hdr=on",
		"-device", "virtio-net-pci,netdev=n0,mac=" + ioMAC + ",disable-legacy=on,romfile="}
}

// createIONetNS makes the namespace with the tap the guest's NIC attaches
// to: persistent, with a vnet header, and the host's address.
func createIONetNS(ns string) error {
	steps := [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "tuntap", "add", "dev", ioTap, "mode", "tap", "vnet_hdr"},
		{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", ioHostIP, ioPrefix), "dev", ioTap},
		{"-n", ns, "link", "set", ioTap, "up"},
	}
	for i, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			if i > 0 {
				exec.Command("ip", "netns", "del", ns).Run()
			}
			return fmt.Errorf("network namespace: ip %s: %v: %s", strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// supportsDirect reports whether vmm can open path with O_DIRECT: the
// open succeeds and the file is not on tmpfs, which since Linux 6.6
// accepts O_DIRECT but still caches (vmm refuses it, virtio/blk/direct.go).
func supportsDirect(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil || st.Type == unix.TMPFS_MAGIC {
		return false
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// writeDataImage writes a data image of n bytes with a non-zero pattern,
// so that reads are of allocated blocks, not of holes.
func writeDataImage(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < n; off += int64(len(block)) {
		if _, err := w.Write(block); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ioBoot boots one guest for the io suites and runs the tests.
func (b *bench) ioBoot(ctx context.Context, impl string, argv []string, log, ns string, wantNet, wantBlk bool) error {
	p, err := Launch(ctx, ProcSpec{Name: impl, Argv: argv, Stdin: true, Timeout: b.cfg.linuxTimeout + 45*time.Minute,
		Marks: []string{linuxReady, ioReadyLine, ioFailLine}, ErrMarks: qemuDead(), LogBase: log})
	if err != nil {
		return err
	}
	defer p.Stop()
	if _, err := waitConsole(ctx, p, linuxReady, "", b.cfg.linuxTimeout); err != nil {
		return err
	}
	time.Sleep(2 * idleSettle) // let the shell reach its prompt
	if err := p.Send(ioMountCommand()); err != nil {
		return err
	}
	if _, err := waitConsole(ctx, p, ioReadyLine, ioFailLine, 20*time.Minute); err != nil {
		return err
	}
	dataDisk := ""
	for _, l := range p.Tail(400) {
		if i := strings.Index(l, ioDataLine); i >= 0 {
			dataDisk = strings.TrimSpace(l[i+len(ioDataLine):])
		}
	}
	if !strings.HasPrefix(dataDisk, "/dev/vd") {
		return fmt.Errorf("the guest named no data disk (%q)", dataDisk)
	}
	b.prog.say("%s: guest ready for the io tests (data disk %s)", impl, dataDisk)
	clock := &guestClock{p: p}
	if wantNet {
		for _, test := range iperfTests() {
			// runIperf3 times the transfer by the host's side.
			b.ioMeasure(ctx, b.io.net, impl, clock, false, test.name, "Gb/s", func(ctx context.Context) (float64, float64, error) {
				return runIperf3(ctx, ns, test, b.cfg.ioTime)
			})
		}
	}
	if wantBlk {
		for _, job := range fioJobs() {
			b.ioMeasure(ctx, b.io.blk, impl, clock, true, job.name, job.unit(), func(ctx context.Context) (float64, float64, error) {
				return runFioClient(ctx, ns, job, dataDisk, b.cfg.ioTime)
			})
		}
	}
	return nil
}

// ioClockWait bounds one guest clock probe; a guest winding down a test
// can take a while to run a shell command.
const ioClockWait = 2 * time.Minute

// guestClockMetric is the metric of each io suite that reports the guests'
// clock rates.
const guestClockMetric = "guest clock during the tests (guest seconds per host second)"

// ioMeasure runs one test and records its figure and the device-thread CPU
// per GiB it cost. guestTimed says the figure is per second of the guest's
// clock; it is converted to host time with the clock rate measured around
// the test (guestclock.go).
func (b *bench) ioMeasure(ctx context.Context, r *SuiteResult, impl string, clock *guestClock, guestTimed bool, name, unit string,
	test func(context.Context) (figure, bytes float64, err error)) {
	var (
		before, after   ThreadCPU
		cpuErr, cpuErr2 error
		figure, moved   float64
		rate            float64
		err             error
	)
	pid := clock.p.PID()
	// A server in the emulated guest can still be winding down the last
	// test ("the server is busy running a test"): a failed attempt is
	// retried, and each attempt is measured on its own.
	for attempt := 1; attempt <= ioAttempts; attempt++ {
		var t0, t1 guestClockReading
		if t0, err = clock.read(ctx, ioClockWait); err != nil {
			break
		}
		before, cpuErr = ReadThreadCPU(pid)
		figure, moved, err = test(ctx)
		after, cpuErr2 = ReadThreadCPU(pid)
		if err == nil {
			if t1, err = clock.read(ctx, ioClockWait); err == nil {
				rate, err = guestClockRate(t0, t1)
			}
			break
		}
		if ctx.Err() != nil {
			break
		}
		b.prog.say("%s: %s: attempt %d: %v", impl, name, attempt, err)
		time.Sleep(ioRetryPause)
	}
	if err != nil {
		r.failure(fmt.Sprintf("%s, %s: %v", impl, name, err))
		return
	}
	defer func() { r.metric(guestClockMetric, "×", "guest clock").add(impl, rate) }() // the report's last row
	if guestTimed {
		reported := figure
		figure *= rate
		b.prog.say("%s: %s: %.4g %s (the guest reported %.4g, its clock running at %.2f× host time)", impl, name, figure, unit, reported, rate)
	} else {
		b.prog.say("%s: %s: %.4g %s (guest clock at %.2f× host time)", impl, name, figure, unit, rate)
	}
	r.metric(name, unit, "throughput").add(impl, figure)
	if cpuErr == nil {
		cpuErr = cpuErr2
	}
	if cpuErr != nil {
		r.failure(fmt.Sprintf("%s, %s: device CPU: %v", impl, name, cpuErr))
		return
	}
	if moved <= 0 {
		r.failure(fmt.Sprintf("%s, %s: no bytes moved", impl, name))
		return
	}
	used := after.Sub(before)
	m := r.metric("device-thread CPU per GiB: "+name, "s/GiB", "device-thread CPU per GiB moved")
	m.Group = name
	m.Target = "≤ 0.7× QEMU"
	m.add(impl, used.Device().Seconds()/(moved/(1<<30)))
}

// runIperf3 runs the host's iperf3 client in the namespace against the
// guest's server and returns Gb/s received and the bytes moved.
func runIperf3(ctx context.Context, ns string, t iperfTest, d time.Duration) (float64, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, d+3*time.Minute)
	defer cancel()
	args := []string{"netns", "exec", ns, "iperf3", "-c", ioGuestIP, "-J", "-t", strconv.Itoa(int(d.Seconds())),
		"-P", strconv.Itoa(t.streams), "--connect-timeout", "60000"}
	if t.reverse {
		args = append(args, "-R")
	}
	out, err := exec.CommandContext(ctx, "ip", args...).Output()
	res, perr := parseIperf3(out, t.reverse)
	if perr != nil {
		if err != nil {
			return 0, 0, fmt.Errorf("iperf3: %v (%v)", err, perr)
		}
		return 0, 0, perr
	}
	return res.bitsPerSecond / 1e9, res.bytes, nil
}

type iperf3Result struct {
	bitsPerSecond, bytes float64
}

// iperf3Sum is one of the totals in iperf3's JSON output.
type iperf3Sum struct {
	Seconds float64 `json:"seconds"`
	Bytes   float64 `json:"bytes"`
}

// parseIperf3 reads iperf3 -J output from the host's client: the bytes the
// receiver got, over the duration the host's side measured (its sending
// time host → guest, its receiving time guest → host, when reverse), so
// that the figure keeps host time whatever the guest's clock does.
func parseIperf3(out []byte, reverse bool) (iperf3Result, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumSent     iperf3Sum `json:"sum_sent"`
			SumReceived iperf3Sum `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return iperf3Result{}, fmt.Errorf("iperf3 output: %w", err)
	}
	if doc.Error != "" {
		return iperf3Result{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	if doc.End.SumReceived.Bytes <= 0 {
		return iperf3Result{}, fmt.Errorf("iperf3 reported no bytes received")
	}
	host := doc.End.SumSent
	if reverse {
		host = doc.End.SumReceived
	}
	if host.Seconds <= 0 {
		return iperf3Result{}, fmt.Errorf("iperf3 reported no duration for the host's side")
	}
	bytes := doc.End.SumReceived.Bytes
	return iperf3Result{bitsPerSecond: 8 * bytes / host.Seconds, bytes: bytes}, nil
}

// runFioClient sends one job to the guest's fio server and returns the
// job's figure (IOPS or MB/s) and the bytes moved.
func runFioClient(ctx context.Context, ns string, job fioJob, disk string, d time.Duration) (float64, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, d+5*time.Minute)
	defer cancel()
	f, err := os.CreateTemp("", "vmm-bench-*.fio")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(job.jobFile(disk, d)); err != nil {
		f.Close()
		return 0, 0, err
	}
	f.Close()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "fio", "--client=ip:"+ioGuestIP,
		"--output-format=json", f.Name()).Output()
	res, perr := parseFio(out, job)
	if perr != nil {
		if err != nil {
			return 0, 0, fmt.Errorf("fio --client: %v (%v)", err, perr)
		}
		return 0, 0, perr
	}
	return res.figure, res.bytes, nil
}

type fioResult struct {
	figure, bytes float64
}

// fioSide is one direction of a fio job in its JSON output.
type fioSide struct {
	IOPS    float64 `json:"iops"`
	BWBytes float64 `json:"bw_bytes"`
	IOBytes float64 `json:"io_bytes"`
}

// parseFio reads fio's JSON output, local ("jobs") or from a server
// ("client_stats"), and returns the job's figure.
func parseFio(out []byte, job fioJob) (fioResult, error) {
	// fio --client prints lines before the JSON document on some errors.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	var doc struct {
		Jobs        []fioJobStats `json:"jobs"`
		ClientStats []fioJobStats `json:"client_stats"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fioResult{}, fmt.Errorf("fio output: %w", err)
	}
	for _, j := range append(doc.Jobs, doc.ClientStats...) {
		if j.JobName != job.rw {
			continue
		}
		if j.Error != 0 {
			return fioResult{}, fmt.Errorf("fio job %s: error %d", job.rw, j.Error)
		}
		side := j.Read
		if strings.Contains(job.rw, "write") {
			side = j.Write
		}
		if side.IOBytes <= 0 {
			return fioResult{}, fmt.Errorf("fio job %s moved no bytes", job.rw)
		}
		figure := side.BWBytes / 1e6
		if job.iops {
			figure = side.IOPS
		}
		return fioResult{figure: figure, bytes: side.IOBytes}, nil
	}
	return fioResult{}, fmt.Errorf("no job %q in fio's output", job.rw)
}

type fioJobStats struct {
	JobName string  `json:"jobname"`
	Error   int     `json:"error"`
	Read    fioSide `json:"read"`
	Write   fioSide `json:"write"`
}

// hostFioReference runs the same jobs on the image file from the host: the
// physical limit the guests' numbers are read against.
func (b *bench) hostFioReference(ctx context.Context, r *SuiteResult, image string) {
	var parts []string
	for _, job := range fioJobs() {
		f := filepath.Join(filepath.Dir(image), job.rw+".fio")
		if err := os.WriteFile(f, []byte(job.jobFile(image, b.cfg.ioTime)), 0o644); err != nil {
			r.failure("host fio: " + err.Error())
			return
		}
		b.prog.say("io: host fio reference: %s", job.name)
		cctx, cancel := context.WithTimeout(ctx, b.cfg.ioTime+2*time.Minute)
		out, err := exec.CommandContext(cctx, "fio", "--output-format=json", f).Output()
		cancel()
		res, perr := parseFio(out, job)
		if perr != nil {
			r.failure(fmt.Sprintf("host fio %s: %v (%v)", job.name, perr, err))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.4g %s", job.name, res.figure, job.unit()))
	}
	if len(parts) > 0 {
		r.note("Physical reference, the same jobs on the image file from the host (one run each): " + strings.Join(parts, "; ") + ".")
	}
}
