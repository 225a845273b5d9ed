package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// apiQuantiles are the percentiles the API latency table shows.
var apiQuantiles = []float64{50, 99}

// apiChunk is how many requests of one kind run back to back before the
// benchmark switches to the other VMM (or request): small enough that slow
// phases of this shared machine hit both, large enough that switching costs
// nothing measurable.
const apiChunk = 100

// apiWarmup requests of each kind go unmeasured first: the first request
// on a connection pays for the connect and for both sides' first-use costs.
const apiWarmup = 20

// tgFirstLine is the test guest's first line on its console: the "first
// guest line" of the InstanceStart measurements.
const tgFirstLine = "testguest: boot=pvh"

func (b *bench) apiSuite(ctx context.Context) *SuiteResult {
	r := &SuiteResult{Name: "api", Title: "API latency and InstanceStart",
		About: fmt.Sprintf("Round trips on the control socket of a VMM with no VM running yet, with one keep-alive "+
			"connection: vmm's API (`vmm --api-sock`, Go's `net/http` client over the Unix socket) answering `GET /` "+
			"and `PUT /machine-config` (a valid body, answered 204), and, for the ratio, QEMU's QMP (`-S -qmp unix:...`, "+
			"after the `qmp_capabilities` handshake) answering `query-status`, each timed from sending the request to "+
			"having read the whole answer. %d measured requests of each kind (after %d unmeasured), in chunks of %d "+
			"alternating vmm and QEMU; each vmm request kind gets its own, equally many, interleaved `query-status` "+
			"round trips. Then **InstanceStart → guest ready**: the test guest configured through the API "+
			"(`PUT /boot-source`, `PUT /machine-config`), timed from sending `PUT /actions` `InstanceStart` to the "+
			"guest's first console line (`%s`), against the command-line boot of the same guest and command line "+
			"(process start → the same line); QEMU's counterpart is `-S` and QMP `cont`. %d repetitions, interleaved. "+
			"Targets: API p99 < 1 ms; InstanceStart → first line no worse than the command-line boot.",
			b.cfg.apiRequests, apiWarmup, apiChunk, tgFirstLine, b.cfg.reps)}
	if !b.vmmAPI {
		r.Skipped = "this vmm has no --api-sock flag"
		b.prog.total -= b.apiSteps()
		return r
	}
	apiSock, qmpSock := filepath.Join(b.tmp, "api.sock"), filepath.Join(b.tmp, "qmp.sock")
	get := r.metric("GET / (QEMU: QMP query-status)", "µs", "API round trip")
	get.Quantiles, get.Target = apiQuantiles, "p99 < 1 ms"
	put := r.metric("PUT /machine-config (QEMU: QMP query-status)", "µs", "API round trip")
	put.Quantiles, put.Target = apiQuantiles, "p99 < 1 ms"
	r.command("vmm API", []string{b.vmm, "--api-sock", apiSock})
	if b.qemu != "" {
		r.command("QEMU QMP", b.qemuTestguest(testguestCmdline, "-S", "-qmp", "unix:"+qmpSock+",server=on,wait=off"))
	} else {
		r.note("QEMU skipped: " + b.qemuWhy)
	}
	if err := b.apiLatency(ctx, r, apiSock, qmpSock, get, put); err != nil {
		r.failure("API latency: " + err.Error())
	}
	b.instanceStart(ctx, r, apiSock, qmpSock)
	return r
}

// apiSteps is the number of progress steps of the api suite.
func (b *bench) apiSteps() int { return 1 + 4*b.cfg.reps }

// apiLatency times b.cfg.apiRequests round trips of each kind against one
// vmm and one QEMU, both left idle with no guest running.
func (b *bench) apiLatency(ctx context.Context, r *SuiteResult, apiSock, qmpSock string, get, put *Metric) error {
	timeout := max(b.cfg.runTimeout, 5*time.Minute)
	b.prog.step("api: vmm API and QEMU QMP round trips (%d of each kind, interleaved)", b.cfg.apiRequests)
	_ = os.Remove(apiSock)
	vm, err := Launch(ctx, ProcSpec{Name: "vmm API", Argv: []string{b.vmm, "--api-sock", apiSock}, Timeout: timeout})
	if err != nil {
		return err
	}
	defer vm.Stop()
	api := newAPIClient(apiSock)
	if err := api.waitReady(ctx, vm, b.cfg.runTimeout); err != nil {
		return err
	}
	machineConfig, _ := json.Marshal(map[string]int{"vcpu_count": 1, "mem_size_mib": b.cfg.memMiB})
	doGet := func() error { return api.do(http.MethodGet, "/", nil, http.StatusOK) }
	doPut := func() error { return api.do(http.MethodPut, "/machine-config", machineConfig, http.StatusNoContent) }

	var qmp *qmpSession
	if b.qemu != "" {
		_ = os.Remove(qmpSock)
		argv := b.qemuTestguest(testguestCmdline, "-S", "-qmp", "unix:"+qmpSock+",server=on,wait=off")
		q, err := Launch(ctx, ProcSpec{Name: "QEMU QMP", Argv: argv, Timeout: timeout})
		if err != nil {
			return err
		}
		defer q.Stop()
		c, err := dialWhenUp(ctx, q, qmpSock, b.cfg.runTimeout)
		if err != nil {
			return err
		}
		if qmp, err = qmpOpen(c); err != nil {
			c.Close()
			return err
		}
		defer qmp.Close()
	}
	doQMP := func() error { _, err := qmp.execute("query-status"); return err }

	for _, f := range []func() error{doGet, doPut} {
		if _, err := timeRequests(f, apiWarmup); err != nil {
			return err
		}
	}
	if qmp != nil {
		if _, err := timeRequests(doQMP, apiWarmup); err != nil {
			return err
		}
	}
	for done := 0; done < b.cfg.apiRequests && ctx.Err() == nil; done += apiChunk {
		n := min(apiChunk, b.cfg.apiRequests-done)
		for _, kind := range []struct {
			m  *Metric
			do func() error
		}{{get, doGet}, {put, doPut}} {
			d, err := timeRequests(kind.do, n)
			if err != nil {
				return err
			}
			addMicros(kind.m, implVMM, d)
			if qmp != nil {
				d, err := timeRequests(doQMP, n)
				if err != nil {
					return err
				}
				addMicros(kind.m, implQEMU, d)
			}
		}
	}
	if n := api.dials.Load(); n != 1 {
		r.note(fmt.Sprintf("The vmm client opened %d connections instead of 1 (the API closed the keep-alive connection).", n))
	} else {
		r.note(fmt.Sprintf("All %d vmm requests of the latency test went over one connection (keep-alive).", 2*(apiWarmup+b.cfg.apiRequests)))
	}
	return nil
}

// timeRequests runs do n times and returns the duration of each call.
func timeRequests(do func() error, n int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if err := do(); err != nil {
			return out, err
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}

func addMicros(m *Metric, impl string, ds []time.Duration) {
	for _, d := range ds {
		m.add(impl, float64(d)/1e3)
	}
}

// instanceStart times InstanceStart → first guest line against the
// command-line boot, for vmm and (with -S and cont) QEMU, interleaved.
func (b *bench) instanceStart(ctx context.Context, r *SuiteResult, apiSock, qmpSock string) {
	start := r.metric("InstanceStart (QEMU: QMP cont) → first guest line", "ms", "InstanceStart vs command-line boot")
	start.Target = "≤ command-line boot"
	cli := r.metric("command line: process start → first guest line", "ms", "InstanceStart vs command-line boot")
	total := r.metric("API: process start → first guest line (socket up, configured, started)", "ms", "InstanceStart vs command-line boot")
	answered := r.metric("InstanceStart (QEMU: cont) request → answered", "ms", "request answered")
	vmmAPI := []string{b.vmm, "--api-sock", apiSock, "--debug-exit"}
	qemuQMP := b.qemuTestguest(testguestCmdline, "-S", "-qmp", "unix:"+qmpSock+",server=on,wait=off")
	r.command("vmm API boot (then PUT /boot-source, /machine-config, /actions)", vmmAPI)
	r.command("vmm command-line boot", b.vmmTestguest(testguestCmdline))
	if b.qemu != "" {
		r.command("QEMU QMP boot (then cont)", qemuQMP)
		r.command("QEMU command-line boot", b.qemuTestguest(testguestCmdline))
	}
	bootSource, _ := json.Marshal(map[string]string{"kernel_image_path": b.testguest, "boot_args": testguestCmdline})
	machineConfig, _ := json.Marshal(map[string]int{"vcpu_count": 1, "mem_size_mib": b.cfg.memMiB})
	for rep := 1; rep <= b.cfg.reps && ctx.Err() == nil; rep++ {
		b.prog.step("api: vmm InstanceStart rep %d/%d", rep, b.cfg.reps)
		_ = os.Remove(apiSock)
		toLine, req, all, err := b.startThroughControl(ctx, "vmm API", vmmAPI, apiSock, 0, func(p *Proc, c net.Conn) (func() error, error) {
			c.Close()
			api := newAPIClient(apiSock)
			if err := api.do(http.MethodPut, "/boot-source", bootSource, http.StatusNoContent); err != nil {
				return nil, err
			}
			if err := api.do(http.MethodPut, "/machine-config", machineConfig, http.StatusNoContent); err != nil {
				return nil, err
			}
			return func() error {
				return api.do(http.MethodPut, "/actions", []byte(`{"action_type":"InstanceStart"}`), http.StatusNoContent)
			}, nil
		})
		if err != nil {
			r.failure(err.Error())
		} else {
			start.add(implVMM, ms(toLine))
			answered.add(implVMM, ms(req))
			total.add(implVMM, ms(all))
		}
		b.prog.step("api: vmm command-line boot rep %d/%d", rep, b.cfg.reps)
		if at, err := b.bootToLine(ctx, "vmm", b.vmmTestguest(testguestCmdline), 0); err != nil {
			r.failure(err.Error())
		} else {
			cli.add(implVMM, ms(at))
		}
		if b.qemu == "" {
			b.prog.total -= 2
			continue
		}
		b.prog.step("api: QEMU cont rep %d/%d", rep, b.cfg.reps)
		_ = os.Remove(qmpSock)
		toLine, req, all, err = b.startThroughControl(ctx, "QEMU QMP", qemuQMP, qmpSock, qemuExitStatus(0), func(p *Proc, c net.Conn) (func() error, error) {
			q, err := qmpOpen(c)
			if err != nil {
				c.Close()
				return nil, err
			}
			return func() error {
				defer q.Close()
				_, err := q.execute("cont")
				return err
			}, nil
		})
		if err != nil {
			r.failure(err.Error())
		} else {
			start.add(implQEMU, ms(toLine))
			answered.add(implQEMU, ms(req))
			total.add(implQEMU, ms(all))
		}
		b.prog.step("api: QEMU command-line boot rep %d/%d", rep, b.cfg.reps)
		if at, err := b.bootToLine(ctx, "QEMU", b.qemuTestguest(testguestCmdline), qemuExitStatus(0)); err != nil {
			r.failure(err.Error())
		} else {
			cli.add(implQEMU, ms(at))
		}
	}
	if s, c := Summarize(start.Values[implVMM]), Summarize(cli.Values[implVMM]); s.N > 0 && c.N > 0 {
		verdict := "met"
		if s.Median > c.Median {
			verdict = "not met"
		}
		r.note(fmt.Sprintf("vmm: InstanceStart → first guest line %s ms (median) against %s ms for the command-line boot: target %s. "+
			"The command-line figure includes the process start-up (exec, Go runtime, flag parsing) that the API path has "+
			"paid before InstanceStart; both include building the machine, loading the kernel and the guest's own work "+
			"up to its first line, which on kvm-pvm runs through KVM's instruction emulator.",
			FormatValue(s.Median), FormatValue(c.Median), verdict))
	}
	r.note("QEMU's `-S` has already built the machine and loaded the kernel before `cont`, whereas vmm does both on " +
		"InstanceStart, so the QEMU column of the InstanceStart row is the guest's run to its first line alone.")
	r.note("The InstanceStart request is answered once the machine is built and its vCPUs started (vmm), or once the " +
		"vCPUs are resumed (QEMU); the guest line comes after that.")
}

// startThroughControl launches argv, which waits for a command on the Unix
// socket sock; prepare gets the connected socket, does the configuration
// and returns the start request. It returns the time from sending the
// start request to the guest's first line, the time the request took to
// be answered, and the time from process start to the line, then waits for
// the exit status want.
func (b *bench) startThroughControl(ctx context.Context, name string, argv []string, sock string, want int,
	prepare func(*Proc, net.Conn) (func() error, error)) (toLine, req, all time.Duration, err error) {
	p, err := Launch(ctx, ProcSpec{Name: name, Argv: argv, Timeout: b.cfg.runTimeout, Marks: []string{tgFirstLine}})
	if err != nil {
		return 0, 0, 0, err
	}
	defer p.Stop()
	c, err := dialWhenUp(ctx, p, sock, b.cfg.runTimeout)
	if err != nil {
		return 0, 0, 0, err
	}
	startReq, err := prepare(p, c)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("%s: %w", name, err)
	}
	t0 := time.Now()
	if err := startReq(); err != nil {
		return 0, 0, 0, fmt.Errorf("%s: start: %w", name, err)
	}
	req = time.Since(t0)
	at, err := p.WaitOutput(tgFirstLine, b.cfg.runTimeout)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("%w; stderr: %s", err, strings.Join(p.StderrTail(3), " | "))
	}
	code, _, err := p.Wait()
	if err != nil {
		return 0, 0, 0, err
	}
	if err := checkExit(name, code, want); err != nil {
		return 0, 0, 0, fmt.Errorf("%w; console: %s; stderr: %s", err, strings.Join(p.Tail(3), " | "), strings.Join(p.StderrTail(3), " | "))
	}
	return at - t0.Sub(p.Start()), req, at, nil
}

// bootToLine runs a test-guest VM to its exit and returns when its first
// console line appeared.
func (b *bench) bootToLine(ctx context.Context, name string, argv []string, want int) (time.Duration, error) {
	p, err := Launch(ctx, ProcSpec{Name: name, Argv: argv, Timeout: b.cfg.runTimeout, Marks: []string{tgFirstLine}})
	if err != nil {
		return 0, err
	}
	defer p.Stop()
	at, err := p.WaitOutput(tgFirstLine, b.cfg.runTimeout)
	if err != nil {
		return 0, err
	}
	code, _, err := p.Wait()
	if err != nil {
		return 0, err
	}
	if err := checkExit(name, code, want); err != nil {
		return 0, fmt.Errorf("%w; console: %s; stderr: %s", err, strings.Join(p.Tail(3), " | "), strings.Join(p.StderrTail(3), " | "))
	}
	return at, nil
}

// dialWhenUp connects to the Unix socket sock once p has made it.
func dialWhenUp(ctx context.Context, p *Proc, sock string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited before its socket answered: %s", p.Name, strings.Join(p.StderrTail(3), " | "))
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			return c, nil
		}
		time.Sleep(apiPoll)
	}
	return nil, fmt.Errorf("%s: socket %s did not come up within %v", p.Name, sock, timeout)
}

// apiClient is a keep-alive HTTP client on one Unix socket that counts the
// connections it opens.
type apiClient struct {
	hc    *http.Client
	dials atomic.Int64
}

func newAPIClient(sock string) *apiClient {
	a := &apiClient{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", sock)
			if err == nil {
				a.dials.Add(1)
			}
			return c, err
		},
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	a.hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return a
}

// waitReady polls GET / until the API answers.
func (a *apiClient) waitReady(ctx context.Context, p *Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := a.do(http.MethodGet, "/", nil, http.StatusOK)
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before its API answered: %s", p.Name, strings.Join(p.StderrTail(3), " | "))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: API did not answer within %v: %w", p.Name, timeout, err)
		}
		time.Sleep(apiPoll)
	}
}

// do sends one request and reads the whole answer, which must have the
// status want.
func (a *apiClient) do(method, path string, body []byte, want int) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, strings.TrimSpace(string(data)))
	}
	return nil
}
