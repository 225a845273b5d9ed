package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	agent "github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
)

// Where the default guest's agent is (the values `vmm run` uses, see the
// shim package).
const (
	agentCID    = 3
	agentPort   = 1024
	agentRootfs = "/dev/vda"
)

// runEcho is the container command of the cold-start and exec measurements
// and what it must print.
var runEcho = []string{"echo", "hi"}

const runEchoOut = "hi\n"

// execQuantiles are the percentiles the exec latency table shows.
var execQuantiles = []float64{50, 90}

// execWarmup execs go unmeasured before the timed ones: the first pays for
// reading busybox from the disk into the guest's page cache.
const execWarmup = 1

// noContainerQEMU explains the missing QEMU columns of run and exec;
// instead says what they compare with.
func noContainerQEMU(instead string) string {
	return "No QEMU counterpart: QEMU has no container runtime of its own, and the usual pairing " +
		"(Kata Containers' agent over virtio-vsock) needs vhost-vsock in the host kernel, which this host lacks " +
		"(no `/dev/vhost-vsock`). " + instead
}

// runSteps and execSteps are the progress steps of the run and exec suites.
func (b *bench) runSteps() int  { return 2 * b.cfg.runReps }
func (b *bench) execSteps() int { return 2 }

// containerImage copies the guest directory's test.ext4 (the busybox image)
// to name in the scratch directory: the container's root is writable and
// vmm locks its disks, so no run touches the original or another run's
// copy.
func (b *bench) containerImage(name string) (string, error) {
	if b.image == "" {
		return "", fmt.Errorf("no test.ext4 in %s (run `make guest`)", b.cfg.guestDir)
	}
	dst := filepath.Join(b.tmp, name)
	src, err := os.Open(b.image)
	if err != nil {
		return "", err
	}
	defer src.Close()
	out, err := os.Create(dst)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		return "", fmt.Errorf("copy %s: %w", b.image, err)
	}
	return dst, out.Close()
}

// load1 is the host's 1-minute load average, or "?".
func load1() string {
	f := strings.Fields(loadAvg())
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// linuxMissing says why the Linux-based suites cannot run, or "".
func (b *bench) linuxMissing() string {
	switch {
	case b.vmlinux == "" || b.initrd == "":
		return fmt.Sprintf("no vmlinux and initramfs.cpio in %s (run `make guest`)", b.cfg.guestDir)
	case b.image == "":
		return fmt.Sprintf("no test.ext4 in %s (run `make guest`)", b.cfg.guestDir)
	}
	return ""
}

// vmmRun is `vmm run` of the echo command on image, with the guest and
// memory of the plain boot. --no-snapshot: this suite measures the cold
// start, which a warm snapshot from an earlier repetition would skip (the
// snapshot suite measures warm ones).
func (b *bench) vmmRun(image string) []string {
	argv := []string{b.vmm, "run", "--no-snapshot", "--image", image, "--kernel", b.vmlinux, "--initrd", b.initrd, "--mem", b.memArg(),
		"--boot-timeout", b.cfg.linuxTimeout.String(), "--"}
	return append(argv, runEcho...)
}

func (b *bench) runSuite(ctx context.Context) *SuiteResult {
	r := &SuiteResult{Name: "run", Title: "Containers: `vmm run` cold start",
		About: fmt.Sprintf("Wall time from starting `vmm run --image <copy of test.ext4> -- %s` (boot the default guest in "+
			"a child vmm configured over its API, wait for the guest agent on hybrid vsock, create the container on the "+
			"image, run the command) to the first byte of its standard output, and to its exit; against the plain boot of "+
			"the same kernel and initramfs in the same run (`vmm --kernel --initrd`, process start to the `%s` console "+
			"line), alternating cold start and plain boot. %d MiB, one vCPU, %d of each (`-run-reps`), timeout %v. "+
			"Target: cold start under 2× the plain boot.",
			strings.Join(runEcho, " "), linuxReady, b.cfg.memMiB, b.cfg.runReps, b.cfg.linuxTimeout)}
	if why := b.linuxMissing(); why != "" {
		r.Skipped = why
		b.prog.total -= b.runSteps()
		return r
	}
	cold := r.metric("vmm run: process start → first byte of stdout", "s", "cold start vs plain boot")
	cold.Target = "< 2× plain boot"
	exit := r.metric("vmm run: process start → exit", "s", "cold start vs plain boot")
	plain := r.metric("plain boot: process start → "+linuxReady, "s", "cold start vs plain boot")
	ratio := r.metric("cold start ÷ plain boot (the same repetition's pair)", "×", "cold start ÷ plain boot")
	ratio.Target = "< 2×"
	r.command("vmm run (cold start)", b.vmmRun(filepath.Join(b.tmp, "run.ext4")))
	r.command("plain boot", b.vmmLinux())
	r.note(noContainerQEMU("The reference is vmm's own plain boot of the same kernel and initramfs, measured alongside."))
	runCold, runPlain := true, true
	var loads []string // the host's load at the start of each boot
	for rep := 1; rep <= b.cfg.runReps && ctx.Err() == nil; rep++ {
		var c, p time.Duration
		loads = append(loads, fmt.Sprintf("rep %d: %s before the cold start", rep, load1()))
		if runCold {
			b.prog.step("run: vmm run cold start rep %d/%d (minutes; timeout %v)", rep, b.cfg.runReps, b.cfg.linuxTimeout)
			first, end, err := b.coldStart(ctx, rep)
			if err != nil {
				r.failure(fmt.Sprintf("cold start rep %d: %v", rep, err))
				runCold = false
				r.note(fmt.Sprintf("The cold start was not retried after its failure (rep %d).", rep))
			} else {
				c = first
				cold.add(implVMM, first.Seconds())
				exit.add(implVMM, end.Seconds())
			}
		} else {
			b.prog.total--
		}
		loads[len(loads)-1] += ", " + load1() + " before the plain boot"
		if runPlain {
			b.prog.step("run: plain boot rep %d/%d (minutes; timeout %v)", rep, b.cfg.runReps, b.cfg.linuxTimeout)
			log := filepath.Join(b.dir, fmt.Sprintf("run-plain-%d", rep))
			at, _, _, err := b.linuxBoot(ctx, "vmm", b.vmmLinux(), log)
			if err != nil {
				r.failure(fmt.Sprintf("plain boot rep %d: %v", rep, err))
				runPlain = false
				r.note(fmt.Sprintf("The plain boot was not retried after its failure (rep %d).", rep))
			} else {
				p = at
				plain.add(implVMM, at.Seconds())
			}
		} else {
			b.prog.total--
		}
		if c > 0 && p > 0 {
			ratio.add(implVMM, c.Seconds()/p.Seconds())
		}
	}
	if len(loads) > 0 {
		r.note(fmt.Sprintf("Host load (1-minute average, %d CPUs) at the start of each boot: %s. Each boot is one "+
			"sample of minutes on a machine shared with other work, so a busier stretch weighs on its pair.",
			runtime.NumCPU(), strings.Join(loads, "; ")))
	}
	if cs, ps := Summarize(cold.Values[implVMM]), Summarize(plain.Values[implVMM]); cs.N > 0 && ps.N > 0 {
		k := cs.Median / ps.Median
		verdict := "met"
		if k >= 2 {
			verdict = "not met"
		}
		r.note(fmt.Sprintf("Medians: cold start %s s, plain boot %s s: %.2f× (target < 2×: %s). The cold start adds to the "+
			"plain boot the `vmm run` parent and the child vmm's API configuration, the virtio-blk and virtio-vsock devices, "+
			"the agent's start and first answer, mounting the image and starting the container; the plain boot stops at the "+
			"ready line, which the guest's init prints just after starting the agent.", FormatValue(cs.Median), FormatValue(ps.Median), k, verdict))
	}
	return r
}

// coldStart runs `vmm run ... -- echo hi` once and returns when the first
// byte of its standard output came and when it exited (status 0 and the
// expected output are checked).
func (b *bench) coldStart(ctx context.Context, rep int) (first, exit time.Duration, err error) {
	img, err := b.containerImage("run.ext4")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(img)
	log := filepath.Join(b.dir, fmt.Sprintf("run-cold-%d", rep))
	b.prog.say("vmm run output: %s.stderr.log", log)
	p, err := Launch(ctx, ProcSpec{Name: "vmm run", Argv: b.vmmRun(img), Timeout: b.cfg.linuxTimeout + time.Minute, LogBase: log})
	if err != nil {
		return 0, 0, err
	}
	defer p.Stop()
	code, end, err := p.Wait()
	if err != nil {
		return 0, 0, err
	}
	out := string(p.out.bytes())
	if code != 0 || out != runEchoOut {
		return 0, 0, fmt.Errorf("exit status %d and stdout %q, want 0 and %q; stderr:\n%s", code, out, runEchoOut, strings.Join(p.StderrTail(12), "\n"))
	}
	at, ok := p.FirstOutput()
	if !ok {
		return 0, 0, fmt.Errorf("no output")
	}
	return at, end, nil
}

func (b *bench) execSuite(ctx context.Context) *SuiteResult {
	r := &SuiteResult{Name: "exec", Title: "Containers: exec latency in a warm VM",
		About: fmt.Sprintf("One VM booted once (`vmm --kernel --initrd --disk` with a copy of test.ext4 and `--vsock "+
			"cid=%d,uds=...`); the benchmark connects to the guest agent over hybrid vsock (port %d, retried until it "+
			"answers), creates a container on %s (ext4) and starts its init (`sleep 100000`), then times %d `ExecProcess` "+
			"of `%s` (after %d unmeasured), each from the call to its exit status with its standard output received, "+
			"and as many agent `Ping` round trips (the transport alone). %d MiB, one vCPU. Target: exec < 10 ms.",
			agentCID, agentPort, agentRootfs, b.cfg.execReps, strings.Join(runEcho, " "), execWarmup, b.cfg.memMiB)}
	if why := b.linuxMissing(); why != "" {
		r.Skipped = why
		b.prog.total -= b.execSteps()
		return r
	}
	execLat := r.metric("ExecProcess `echo hi` → exit status and stdout", "ms", "exec latency")
	execLat.Quantiles, execLat.Target = execQuantiles, "< 10 ms"
	ping := r.metric("agent Ping round trip", "ms", "exec latency")
	ping.Quantiles = execQuantiles
	agentUp := r.metric("process start → agent answers (polled every second)", "s", "warm VM set-up")
	ready := r.metric("process start → "+linuxReady, "s", "warm VM set-up")
	setup := r.metric("CreateContainer + StartProcess (container init up)", "ms", "container set-up")
	r.note(noContainerQEMU("The references are the run suite's plain boot and, for the transport, the agent's Ping."))
	if err := b.execWarm(ctx, r, execLat, ping, agentUp, ready, setup); err != nil {
		r.failure(err.Error())
	}
	if s := SummarizeQuantiles(execLat.Values[implVMM], execQuantiles); s.N > 0 {
		verdict := "met"
		if s.Values[0] >= 10 {
			verdict = "not met"
		}
		r.note(fmt.Sprintf("Exec median %s ms, p90 %s ms (target < 10 ms: %s). Each exec makes the agent fork and exec "+
			"a process in the container's namespaces and cgroup and copy its output back over vsock; on kvm-pvm every "+
			"guest system call, page fault and context switch of that goes through KVM's instruction emulator, which is "+
			"where the time goes (compare the Ping row, which is the vsock transport and the agent's request loop alone). "+
			"A VT-x host runs guest kernel code natively and should be orders of magnitude faster; it was not measured here.", FormatValue(s.Values[0]), FormatValue(s.Values[1]), verdict))
	}
	return r
}

// execWarm boots the warm VM and takes the exec suite's measurements.
func (b *bench) execWarm(ctx context.Context, r *SuiteResult, execLat, ping, agentUp, ready, setup *Metric) error {
	img, err := b.containerImage("exec.ext4")
	if err != nil {
		b.prog.total -= b.execSteps()
		return err
	}
	defer os.Remove(img)
	vsock := filepath.Join(b.tmp, "exec-vsock.sock")
	_ = os.Remove(vsock)
	argv := append(b.vmmLinux(), "--disk", "path="+img, "--vsock", fmt.Sprintf("cid=%d,uds=%s", agentCID, vsock))
	r.command("vmm (warm VM)", argv)
	b.prog.step("exec: boot the warm VM and reach its agent (minutes; timeout %v)", b.cfg.linuxTimeout)
	log := filepath.Join(b.dir, "exec-vm")
	b.prog.say("console log: %s.console.log", log)
	p, err := Launch(ctx, ProcSpec{Name: "vmm", Argv: argv, Stdin: true, Timeout: b.cfg.linuxTimeout + 10*time.Minute,
		Marks: []string{linuxReady}, LogBase: log})
	if err != nil {
		b.prog.total--
		return err
	}
	defer p.Stop()
	c, err := dialAgent(ctx, p, vsock, b.cfg.linuxTimeout)
	if err != nil {
		b.prog.total--
		return fmt.Errorf("%w; last console lines:\n%s", err, strings.Join(p.Tail(10), "\n"))
	}
	defer c.Close()
	agentUp.add(implVMM, time.Since(p.Start()).Seconds())
	if m := p.out.mark(linuxReady); isDone(m) {
		ready.add(implVMM, m.at.Seconds())
	}

	b.prog.step("exec: %d execs of %s in the warm VM", b.cfg.execReps, strings.Join(runEcho, " "))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	const cid = "bench"
	t0 := time.Now()
	if _, err := c.CreateContainer(cctx, protocol.CreateContainerRequest{ID: cid,
		Rootfs: protocol.Rootfs{Source: agentRootfs, Type: "ext4"}, Hostname: "bench"}); err != nil {
		return fmt.Errorf("create container: %w", err)
	}
	initProc, err := c.StartProcess(cctx, cid, protocol.Process{Args: []string{"sleep", "100000"}}, agent.Stdio{})
	if err != nil {
		return fmt.Errorf("start the container's init: %w", err)
	}
	setup.add(implVMM, ms(time.Since(t0)))
	for i := 1; i <= execWarmup+b.cfg.execReps && ctx.Err() == nil; i++ {
		d, err := execOnce(cctx, c, cid, fmt.Sprintf("exec-%d", i))
		if err != nil {
			return fmt.Errorf("exec %d: %w", i, err)
		}
		if i > execWarmup {
			execLat.add(implVMM, ms(d))
		}
		t := time.Now()
		if err := c.Ping(cctx); err != nil {
			return fmt.Errorf("ping: %w", err)
		}
		if i > execWarmup {
			ping.add(implVMM, ms(time.Since(t)))
		}
	}
	_ = initProc.Signal(cctx, syscall.SIGKILL)
	_, _ = initProc.Wait(cctx)
	_ = c.DestroyContainer(cctx, cid)
	return nil
}

// execOnce runs echo hi in the container and returns the time from the
// call to its exit status with its output received.
func execOnce(ctx context.Context, c *agent.Client, cid, id string) (time.Duration, error) {
	var stdout, stderr lockedBuffer
	t0 := time.Now()
	p, err := c.ExecProcess(ctx, cid, id, protocol.Process{Args: runEcho}, agent.Stdio{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		return 0, err
	}
	st, err := p.Wait(ctx)
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if st.Code != 0 || stdout.String() != runEchoOut {
		return 0, fmt.Errorf("status %+v, stdout %q, stderr %q; want 0 and %q", st, stdout.String(), stderr.String(), runEchoOut)
	}
	return d, nil
}

// dialAgent connects to the guest agent through the hybrid vsock socket,
// retrying every second until it answers, the VMM exits, or timeout
// passes.
func dialAgent(ctx context.Context, p *Proc, vsock string, timeout time.Duration) (*agent.Client, error) {
	return dialAgentEvery(ctx, p, vsock, timeout, time.Second)
}

// dialAgentEvery is dialAgent retrying every `every`.
func dialAgentEvery(ctx context.Context, p *Proc, vsock string, timeout, every time.Duration) (*agent.Client, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		nc, err := agent.DialHybridVsock(actx, vsock, agentPort)
		if err == nil {
			var c *agent.Client
			if c, _, err = agent.New(actx, nc); err == nil {
				cancel()
				return c, nil
			}
		}
		cancel()
		last = err
		select {
		case <-p.exited:
			return nil, fmt.Errorf("vmm exited before the agent answered (last attempt: %v)", last)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(every):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the agent did not answer within %v (last attempt: %v)", timeout, last)
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for the client's copying goroutine
// and the reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
