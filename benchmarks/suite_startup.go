package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// probePrefix starts the line vmm's startup probe prints
// (cmd/vmm/launchprobe.go): "vmm: first KVM_RUN after <ns> ns (cpu <ns> ns)".
const probePrefix = "vmm: first KVM_RUN after "

// parseProbe finds the probe's line in vmm's standard error: the wall time
// from launch and, when the line has it, the CPU time used by then.
func parseProbe(stderr string) (wall, cpu time.Duration, hasCPU, ok bool) {
	_, rest, ok := strings.Cut(stderr, probePrefix)
	if !ok {
		return 0, 0, false, false
	}
	line, _, _ := strings.Cut(rest, "\n")
	num, after, ok := strings.Cut(line, " ns")
	if !ok {
		return 0, 0, false, false
	}
	ns, err := strconv.ParseInt(num, 10, 64)
	if err != nil || ns < 0 {
		return 0, 0, false, false
	}
	if c, found := strings.CutPrefix(strings.TrimSpace(after), "(cpu "); found {
		if cn, err := strconv.ParseInt(strings.TrimSuffix(c, " ns)"), 10, 64); err == nil && cn >= 0 {
			return time.Duration(ns), time.Duration(cn), true, true
		}
	}
	return time.Duration(ns), 0, false, true
}

// apiPoll is the pause between attempts to reach a control socket; short,
// because it bounds the resolution, and not zero, because the poller shares
// two cores with the process it waits for.
const apiPoll = 200 * time.Microsecond

func (b *bench) startup(ctx context.Context) *SuiteResult {
	r := &SuiteResult{Name: "startup", Title: "Startup",
		About: "Process start (the benchmark's fork/exec) to the first `KVM_RUN` of vCPU 0, to the test guest's " +
			"first byte on the serial console, and to a control socket that answers: vmm's API " +
			"(`--api-sock`, `GET /` answered) and, for QEMU, QMP (`-S -qmp`, greeting received). " +
			"QEMU has no first-`KVM_RUN` probe, so its first serial output stands in for it. " +
			fmt.Sprintf("%d MiB guest. Targets: first `KVM_RUN` ≤ 5 ms; Firecracker's published bar is ≤ 8 ms of CPU to API-ready.", b.cfg.memMiB)}
	kvmRun := r.metric("process start → first KVM_RUN", "ms", "time from process start")
	kvmRun.Target = "≤ 5 ms"
	serial := r.metric("process start → first serial output", "ms", "time from process start")
	api := r.metric("process start → API (QEMU: QMP) ready", "ms", "time from process start")
	kvmRunCPU := r.metric("CPU time until the first KVM_RUN", "ms", "CPU time")
	apiCPU := r.metric("CPU time until API (QEMU: QMP) ready", "ms", "CPU time")
	apiCPU.Target = "≤ 8 ms (Firecracker)"
	r.command("vmm", b.vmmTestguest(testguestCmdline))
	if b.vmmAPI {
		r.command("vmm API", []string{b.vmm, "--api-sock", filepath.Join(b.tmp, "api.sock")})
	} else {
		r.note("vmm API-ready skipped: this vmm has no --api-sock flag")
	}
	if b.qemu != "" {
		r.command("QEMU", b.qemuTestguest(testguestCmdline))
		r.command("QEMU QMP", b.qemuTestguest(testguestCmdline, "-S", "-qmp", "unix:"+filepath.Join(b.tmp, "qmp.sock")+",server=on,wait=off"))
	} else {
		r.note("QEMU skipped: " + b.qemuWhy)
	}
	for rep := 1; rep <= b.cfg.reps && ctx.Err() == nil; rep++ {
		// vmm to the first serial byte, with the probe.
		b.prog.step("startup: vmm boot rep %d/%d", rep, b.cfg.reps)
		if p, err := b.runToExit(ctx, "vmm", b.vmmTestguest(testguestCmdline), 0); err != nil {
			r.failure(err.Error())
		} else {
			if d, cpu, hasCPU, ok := parseProbe(string(p.err.bytes())); ok {
				kvmRun.add(implVMM, ms(d))
				if hasCPU {
					kvmRunCPU.add(implVMM, ms(cpu))
				}
			} else {
				r.failure("vmm printed no startup probe line (is vmm/launchprobe.go hooked in?)")
			}
			if at, ok := p.FirstOutput(); ok {
				serial.add(implVMM, ms(at))
			}
		}
		if b.qemu != "" {
			b.prog.step("startup: QEMU boot rep %d/%d", rep, b.cfg.reps)
			if p, err := b.runToExit(ctx, "QEMU", b.qemuTestguest(testguestCmdline), qemuExitStatus(0)); err != nil {
				r.failure(err.Error())
			} else if at, ok := p.FirstOutput(); ok {
				serial.add(implQEMU, ms(at))
			}
		} else {
			b.prog.total--
		}
		// Control sockets.
		if b.vmmAPI {
			b.prog.step("startup: vmm API rep %d/%d", rep, b.cfg.reps)
			sock := filepath.Join(b.tmp, "api.sock")
			wall, cpu, err := b.socketReady(ctx, "vmm API", []string{b.vmm, "--api-sock", sock}, sock, httpReady)
			if err != nil {
				r.failure(err.Error())
			} else {
				api.add(implVMM, ms(wall))
				apiCPU.add(implVMM, ms(cpu))
			}
		} else {
			b.prog.total--
		}
		if b.qemu != "" {
			b.prog.step("startup: QEMU QMP rep %d/%d", rep, b.cfg.reps)
			sock := filepath.Join(b.tmp, "qmp.sock")
			argv := b.qemuTestguest(testguestCmdline, "-S", "-qmp", "unix:"+sock+",server=on,wait=off")
			wall, cpu, err := b.socketReady(ctx, "QEMU QMP", argv, sock, qmpReady)
			if err != nil {
				r.failure(err.Error())
			} else {
				api.add(implQEMU, ms(wall))
				apiCPU.add(implQEMU, ms(cpu))
			}
		} else {
			b.prog.total--
		}
	}
	b.traceIoctls(ctx, r)
	r.note("CPU time is the sum over the process's threads of `/proc/PID/task/*/schedstat` (nanoseconds) at the moment the socket answered.")
	r.note("The first serial output includes the test guest's own work before it prints (entering long mode, clearing its .bss), which on kvm-pvm runs through KVM's instruction emulator.")
	r.note("The wall times include waiting for a CPU on this shared 2-CPU machine; the CPU times (vmm's probe reads getrusage at its first KVM_RUN) are what the VMM itself spends.")
	return r
}

// runToExit runs a test-guest VM to its end and checks its exit status.
func (b *bench) runToExit(ctx context.Context, name string, argv []string, want int) (*Proc, error) {
	p, err := Launch(ctx, ProcSpec{Name: name, Argv: argv, Timeout: b.cfg.runTimeout, ErrMarks: []string{probePrefix}})
	if err != nil {
		return nil, err
	}
	code, _, err := p.Wait()
	if err != nil {
		return p, err
	}
	if err := checkExit(name, code, want); err != nil {
		return p, fmt.Errorf("%w; console: %s; stderr: %s", err, strings.Join(p.Tail(3), " | "), strings.Join(p.StderrTail(3), " | "))
	}
	return p, nil
}

// socketReady launches argv and polls the Unix socket sock until ready
// says it answers; it returns the wall time from launch and the process's
// CPU time at that moment, then stops the process.
func (b *bench) socketReady(ctx context.Context, name string, argv []string, sock string, ready func(net.Conn) error) (wall, cpu time.Duration, err error) {
	_ = os.Remove(sock) // a stale socket from a killed run would make bind fail
	p, err := Launch(ctx, ProcSpec{Name: name, Argv: argv, Timeout: b.cfg.runTimeout})
	if err != nil {
		return 0, 0, err
	}
	defer p.Stop()
	deadline := time.Now().Add(b.cfg.runTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return 0, 0, fmt.Errorf("%s exited before its socket answered: %s", name, strings.Join(p.StderrTail(3), " | "))
		default:
		}
		c, derr := net.Dial("unix", sock)
		if derr != nil {
			time.Sleep(apiPoll)
			continue
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		rerr := ready(c)
		c.Close()
		if rerr != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, rerr)
		}
		wall = time.Since(p.Start())
		cpu, err = LiveCPUTime(p.PID())
		return wall, cpu, err
	}
	return 0, 0, fmt.Errorf("%s: socket %s did not answer within %v", name, sock, b.cfg.runTimeout)
}

// httpReady asks the Firecracker-style API for the instance info.
func httpReady(c net.Conn) error {
	if _, err := fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"); err != nil {
		return fmt.Errorf("API request: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("API response: %w", err)
	}
	if !strings.Contains(line, " 200 ") {
		return fmt.Errorf("API answered %q", strings.TrimSpace(line))
	}
	return nil
}

// qmpReady waits for QMP's greeting, the first thing QEMU sends.
func qmpReady(c net.Conn) error {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("QMP greeting: %w", err)
	}
	if !strings.Contains(line, `"QMP"`) {
		return fmt.Errorf("QMP greeting %q", strings.TrimSpace(line))
	}
	return nil
}

// ms converts a duration to milliseconds.
func ms(d time.Duration) float64 { return float64(d) / 1e6 }
