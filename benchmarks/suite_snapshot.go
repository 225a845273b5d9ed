package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The snapshot suite: vmm's PUT /snapshot/create and `vmm --restore`
// against QEMU's migration to a file and -incoming from it, on the test
// guest and the Linux guest, and N clones of one snapshot at once.

// Targets of issue 13's Benchmark section, judged on vmm's medians.
const (
	targetRunningMS  = 10   // restore → vCPU running, at 128 MiB
	targetAgentMS    = 1000 // restore → agent answers
	targetCloneRatio = 0.25 // PSS per idle clone ÷ a booted VM's
)

// agentPoll is the pause between attempts to reach a restored guest's
// agent: short, because it bounds the resolution of "agent answers".
const agentPoll = 5 * time.Millisecond

// qemuUnlimitedBandwidth is the max-bandwidth (bytes/s) QEMU gets before
// it saves: its default (128 MiB/s in 7.2) throttles a migration, which
// to a local file only makes the save slower; libvirt's save lifts it the
// same way. QEMU refuses values above SIZE_MAX / 10 (XFER_LIMIT_RATIO).
const qemuUnlimitedBandwidth = 1 << 50

// The test guest's echo mode prints tgIdle and answers one line with
// "testguest: echo <line>" (guest/testguest/main.c, echo_test).
const (
	tgIdle   = "ready>"
	tgAnswer = "testguest: echo "
	// tgQuery is sent twice: QEMU's UART has been seen to drop the first
	// bytes of input on this host, and the guest answers the first line
	// it completes, then exits.
	tgQuery = "snapshot\nsnapshot\n"
)

// The Linux guest answers on its console shell: the answer ("snap42") is
// not in the query, so the terminal's echo of the query doesn't count.
const (
	linuxQuery  = "echo snap$((40+2))\n"
	linuxAnswer = "snap42"
)

// snapGuest is one guest the snapshot suite saves, restores and clones.
type snapGuest struct {
	key   string // in file names
	label string // in metric and chart names
	// idle is the console line of the guest waiting for input, query a
	// console line it answers, answer what the answer contains.
	idle, query, answer string
	exits               bool // the guest exits with status 0 once it answered
	agent               bool // vmm's source VM has vsock and the guest agent answers on it
	boot                time.Duration
	restore             time.Duration // a restore to its answer
	perClone            time.Duration // a batch's timeout grows by this per clone
	settle              time.Duration // idle time before memory is read
	logs                bool          // keep the sources' console logs in the results directory
	// snaps source VMs are booted and saved per implementation, each
	// restored restores times; clone batches are repeated cloneReps times
	// per N, in phases batches (the test guest exits once it answered, so
	// its memory is read in a batch of its own that is not asked).
	snaps, restores, cloneReps, phases int
	vmmArgv                            func(apiSock, vsock string) []string
	qemuArgv                           func(qmpSock string, extra ...string) []string
}

func (b *bench) testguestSnap() *snapGuest {
	return &snapGuest{key: "tg", label: "test guest", idle: tgIdle, query: tgQuery, answer: tgAnswer, exits: true,
		boot: b.cfg.runTimeout, restore: b.cfg.runTimeout, perClone: 2 * time.Second, settle: idleSettle,
		snaps: b.cfg.reps, restores: 1, cloneReps: b.cfg.scaleReps, phases: 2,
		vmmArgv: func(apiSock, _ string) []string {
			return append(b.vmmTestguest(echoCmdline), "--api-sock", apiSock)
		},
		qemuArgv: func(qmpSock string, extra ...string) []string {
			return b.qemuTestguest(echoCmdline, append([]string{"-qmp", "unix:" + qmpSock + ",server=on,wait=off"}, extra...)...)
		},
	}
}

// linuxSnap is the default guest with its agent on vsock (vmm); cmdline
// is vmm's effective kernel command line, which QEMU gets too.
func (b *bench) linuxSnap(cmdline string) *snapGuest {
	return &snapGuest{key: "linux", label: "Linux", idle: linuxReady, query: linuxQuery, answer: linuxAnswer, agent: true,
		boot: b.cfg.linuxTimeout, restore: min(b.cfg.linuxTimeout, 5*time.Minute), perClone: 10 * time.Second,
		settle: 2 * idleSettle, logs: true,
		snaps: 1, restores: b.cfg.linuxReps, cloneReps: 1, phases: 1,
		vmmArgv: func(apiSock, vsock string) []string {
			return append(b.vmmLinux(), "--vsock", fmt.Sprintf("cid=%d,uds=%s", agentCID, vsock), "--api-sock", apiSock)
		},
		qemuArgv: func(qmpSock string, extra ...string) []string {
			return append(append(b.qemuLinux(cmdline), "-qmp", "unix:"+qmpSock+",server=on,wait=off"), extra...)
		},
	}
}

// snapSteps is the number of progress steps of one guest, per
// implementation.
func (b *bench) snapSteps(g *snapGuest) int {
	return g.snaps*(1+g.restores) + len(b.cfg.clones)*g.cloneReps*g.phases
}

// snapshotSteps is the number of progress steps of the snapshot suite.
func (b *bench) snapshotSteps() int {
	n := 2 * b.snapSteps(b.testguestSnap())
	if b.vmlinux != "" && b.initrd != "" {
		n += 2 * b.snapSteps(b.linuxSnap(""))
	}
	return n
}

// snapFiles are one snapshot's files.
type snapFiles struct {
	dir        string
	state, mem string // vmm's
	vsock      string // vmm's source's vsock socket, which its restores get back
	stream     string // QEMU's migration stream
}

// snapTaken is what saving one source VM measured.
type snapTaken struct {
	pause, create time.Duration
	bootedPSS     uint64 // kB, the source idle before the pause
}

// snapMetrics are one guest's metrics.
type snapMetrics struct {
	pause, create, both                 *Metric
	diskApparent, diskAllocated         *Metric
	stateKiB, memApparent, memAllocated *Metric
	running, answered, agent, booted    *Metric
}

func newSnapMetrics(r *SuiteResult, g *snapGuest, memMiB int) *snapMetrics {
	l := g.label + ": "
	m := &snapMetrics{
		pause:         r.metric(l+"pause (PATCH /vm Paused; QEMU: stop)", "ms", g.label+": pause and create"),
		create:        r.metric(l+"create (PUT /snapshot/create; QEMU: migrate to exec:cat, until completed)", "ms", g.label+": pause and create"),
		both:          r.metric(l+"pause + create", "ms", g.label+": pause and create"),
		diskApparent:  r.metric(l+"snapshot, apparent size (vmm: state + memory file; QEMU: migration stream)", "MiB", g.label+": snapshot size"),
		diskAllocated: r.metric(l+"snapshot, allocated on disk", "MiB", g.label+": snapshot size"),
		memApparent:   r.metric(l+"memory file, apparent size", "MiB", g.label+": snapshot size"),
		memAllocated:  r.metric(l+"memory file, allocated on disk", "MiB", g.label+": snapshot size"),
		stateKiB:      r.metric(l+"state file", "KiB", g.label+": state file"),
		running:       r.metric(l+"restore → vCPU running (vmm: first KVM_RUN; QEMU: cont answered after -incoming)", "ms", g.label+": restore"),
		answered:      r.metric(l+"restore → guest answers on the console", "ms", g.label+": restore"),
		booted:        r.metric(l+"booted VM, idle: PSS", "MiB", g.label+": booted VM"),
	}
	m.running.Target = fmt.Sprintf("≤ %d ms at 128 MiB", targetRunningMS)
	if memMiB != 128 {
		m.running.Target += fmt.Sprintf(" (this run: %d MiB)", memMiB)
	}
	if g.agent {
		m.agent = r.metric(l+"restore → agent answers on vsock (vmm)", "ms", g.label+": restore")
		m.agent.Target = fmt.Sprintf("≤ %d s", targetAgentMS/1000)
	}
	return m
}

// snapshotSuite measures snapshots of the test guest and, when built, the
// Linux guest.
func (b *bench) snapshotSuite(ctx context.Context) *SuiteResult {
	tg := b.testguestSnap()
	r := &SuiteResult{Name: "snapshot", Title: "Snapshot, restore and clones",
		About: fmt.Sprintf("A source VM is booted to idle (the test guest at its `%s` prompt; the Linux guest at its shell with, "+
			"for vmm, the agent answering on vsock), its PSS read (`smaps_rollup`: the booted VM's), then paused and saved: "+
			"vmm `PATCH /vm` Paused then `PUT /snapshot/create` (Full) on its API socket, each request timed; QEMU QMP `stop` then "+
			"`migrate` to `exec:cat > FILE`, timed to `query-migrate` completed. The files' apparent size and allocated blocks "+
			"(vmm's memory file is sparse). Then restores: vmm `--restore STATE --mem-file MEM --resume` (the launch probe "+
			"gives process start → first `KVM_RUN`), QEMU the same command line plus `-incoming \"exec:cat FILE\"` (a stopped "+
			"source stays paused on the destination: `cont` once `query-migrate` says completed); then the console input is "+
			"sent and the time from process start to the guest's answer taken (and, Linux on vmm, to the agent answering "+
			"on vsock). Then N = %s clones of the last snapshot started at once, each with its own API (QMP) socket and "+
			"(Linux, vmm) its own vsock socket through `PUT /snapshot/load`'s `vsock_override`: time from the batch's start "+
			"until all answered, and PSS per clone once idle against the booted VM's. %d MiB, one vCPU; the test guest "+
			"%d snapshots (and restores) and %d batches per N per VMM, the Linux guest one boot, %d restores and one batch per N. "+
			"Targets (issue 13): restore → vCPU running ≤ %d ms at 128 MiB (Firecracker publishes under 8 ms); restore → "+
			"agent answers ≤ 1 s; PSS per idle clone ≤ ¼ of a booted VM's.",
			tgIdle, joinInts(b.cfg.clones), b.cfg.memMiB, tg.snaps, tg.cloneReps, b.cfg.linuxReps, targetRunningMS)}
	if !b.vmmAPI {
		r.Skipped = "this vmm has no --api-sock flag"
		b.prog.total -= b.snapshotSteps()
		return r
	}
	if b.qemu == "" {
		r.note("QEMU skipped: " + b.qemuWhy)
	} else {
		r.note("QEMU 7.2 (Debian 12's) has no `file:` migration URI (it answers \"Parameter 'uri' expects a valid migration " +
			"protocol\"), so its stream goes through `exec:cat`, a shell and a pipe. Before `stop`, QEMU's `max-bandwidth` is " +
			"raised to unlimited (untimed), as libvirt's save does: its default throttles a migration to 128 MiB/s.")
	}
	r.note("The restores read files the source has just written, from the page cache; no cache is dropped. The console " +
		"input is sent once the vCPUs run (vmm: its probe line; QEMU: `cont` answered), not at launch: vmm's restore puts " +
		"the UART's saved receive buffer in place of anything queued before it.")
	b.snapGuestRun(ctx, r, tg)
	switch {
	case ctx.Err() != nil:
	case b.vmlinux == "" || b.initrd == "":
		r.note(fmt.Sprintf("Linux guest skipped: no vmlinux and initramfs.cpio in %s (run `make guest`).", b.cfg.guestDir))
	default:
		cmdline, err := b.effectiveCmdline(ctx)
		if err != nil {
			r.failure("Linux guest skipped: could not learn vmm's effective command line: " + err.Error())
			b.prog.total -= 2 * b.snapSteps(b.linuxSnap(""))
			break
		}
		b.snapGuestRun(ctx, r, b.linuxSnap(cmdline))
	}
	for _, m := range r.Metrics {
		switch {
		case strings.Contains(m.Name, "restore → vCPU running"):
			judgeTarget(m, targetRunningMS)
		case strings.Contains(m.Name, "restore → agent answers"):
			judgeTarget(m, targetAgentMS)
		case strings.HasSuffix(m.Name, cloneRatioSuffix):
			judgeTarget(m, targetCloneRatio)
		}
	}
	return r
}

// cloneRatioSuffix ends the name of the clone PSS ratio metrics.
const cloneRatioSuffix = "PSS per clone ÷ booted VM's"

// snapGuestRun takes one guest's snapshots, restores and clone batches,
// vmm and QEMU interleaved.
func (b *bench) snapGuestRun(ctx context.Context, r *SuiteResult, g *snapGuest) {
	m := newSnapMetrics(r, g, b.cfg.memMiB)
	last := map[string]snapFiles{}
	defer func() {
		for _, f := range last {
			os.RemoveAll(f.dir)
		}
	}()
	run := map[string]bool{implVMM: true, implQEMU: b.qemu != ""}
	if !run[implQEMU] {
		b.prog.total -= b.snapSteps(g)
	}
	for rep := 1; rep <= g.snaps && ctx.Err() == nil; rep++ {
		for _, impl := range impls() {
			if !run[impl] {
				continue
			}
			b.prog.step("snapshot: %s %s: boot, pause, create (%d/%d)", impl, g.label, rep, g.snaps)
			f, t, err := b.takeSnapshot(ctx, impl, g, rep)
			if err != nil {
				os.RemoveAll(f.dir)
				r.failure(fmt.Sprintf("%s %s snapshot %d: %v", impl, g.label, rep, err))
				b.prog.total -= g.restores
				if g.snaps == 1 { // nothing to restore or clone
					run[impl] = false
					b.prog.total -= len(b.cfg.clones) * g.cloneReps * g.phases
				}
				continue
			}
			if old, ok := last[impl]; ok {
				os.RemoveAll(old.dir)
			}
			last[impl] = f
			if err := m.addSnapshot(impl, f, t); err != nil {
				r.failure(fmt.Sprintf("%s %s snapshot %d: %v", impl, g.label, rep, err))
			}
			for k := 1; k <= g.restores && ctx.Err() == nil; k++ {
				i := (rep-1)*g.restores + k
				b.prog.step("snapshot: %s %s: restore (%d/%d)", impl, g.label, i, g.snaps*g.restores)
				rt, err := b.restoreOnce(ctx, impl, g, f)
				if err != nil {
					r.failure(fmt.Sprintf("%s %s restore %d: %v", impl, g.label, i, err))
					continue
				}
				m.running.add(impl, ms(rt.running))
				m.answered.add(impl, ms(rt.answered))
				if m.agent != nil && rt.agent > 0 {
					m.agent.add(impl, ms(rt.agent))
				}
			}
		}
	}
	b.cloneBatches(ctx, r, g, m, last, run)
}

// addSnapshot records one snapshot's times and sizes.
func (m *snapMetrics) addSnapshot(impl string, f snapFiles, t snapTaken) error {
	m.pause.add(impl, ms(t.pause))
	m.create.add(impl, ms(t.create))
	m.both.add(impl, ms(t.pause+t.create))
	m.booted.add(impl, float64(t.bootedPSS)/1024)
	files := []string{f.stream}
	if impl == implVMM {
		files = []string{f.state, f.mem}
		st, _, err := fileSpace(f.state)
		if err != nil {
			return err
		}
		ma, mb, err := fileSpace(f.mem)
		if err != nil {
			return err
		}
		m.stateKiB.add(impl, float64(st)/1024)
		m.memApparent.add(impl, mib(ma))
		m.memAllocated.add(impl, mib(mb))
	}
	a, al, err := filesSpace(files...)
	if err != nil {
		return err
	}
	m.diskApparent.add(impl, mib(a))
	m.diskAllocated.add(impl, mib(al))
	return nil
}

func mib(bytes int64) float64 { return float64(bytes) / (1 << 20) }

// cloneBatches starts N clones of each implementation's last snapshot, for
// every N of -clones.
func (b *bench) cloneBatches(ctx context.Context, r *SuiteResult, g *snapGuest, m *snapMetrics, last map[string]snapFiles, run map[string]bool) {
	perN := g.cloneReps * g.phases
	for _, impl := range impls() {
		if _, ok := last[impl]; run[impl] && !ok {
			b.prog.total -= len(b.cfg.clones) * perN // no snapshot to clone
			run[impl] = false
		}
	}
	for _, n := range b.cfg.clones {
		if ctx.Err() != nil {
			return
		}
		avail, err := memAvailable()
		if err != nil || !batchFits(n, b.cfg.memMiB, avail) {
			r.note(fmt.Sprintf("%s clones N=%d skipped: %d × %d MiB is more than half the host's available memory (%d MiB; %v).",
				g.label, n, n, b.cfg.memMiB, avail>>10, err))
			for _, impl := range impls() {
				if run[impl] {
					b.prog.total -= perN
				}
			}
			continue
		}
		group := fmt.Sprintf("N=%d", n)
		l := fmt.Sprintf("%s clones N=%d: ", g.label, n)
		c := g.label + " clones: "
		all := r.metric(l+"all answered", "ms", c+"time from the batch's start until all answered")
		pss := r.metric(l+"PSS per clone", "MiB", c+"PSS per clone")
		guest := r.metric(l+"guest memory's PSS per clone", "MiB", c+"guest memory's PSS per clone")
		ratio := r.metric(l+cloneRatioSuffix, "×", c+cloneRatioSuffix)
		ratio.Target = "≤ 0.25"
		var agents *Metric
		if g.agent {
			agents = r.metric(l+"all agents answered (vmm)", "ms", c+"time from the batch's start until all agents answered")
			agents.Group = group
		}
		for _, x := range []*Metric{all, pss, guest, ratio} {
			x.Group = group
		}
		for rep := 1; rep <= g.cloneReps && ctx.Err() == nil; rep++ {
			for _, impl := range impls() {
				if !run[impl] {
					continue
				}
				phases := []struct{ answer, memory bool }{{true, true}}
				if g.phases == 2 {
					phases = []struct{ answer, memory bool }{{true, false}, {false, true}}
				}
				for _, ph := range phases {
					what := "answer"
					if !ph.answer {
						what = "idle memory"
					} else if ph.memory {
						what = "answer, idle memory"
					}
					b.prog.step("snapshot: %s %s: N=%d clones at once, %s (%d/%d)", impl, g.label, n, what, rep, g.cloneReps)
					outs, err := b.cloneBatch(ctx, impl, g, last[impl], n, ph.answer, ph.memory)
					if err == nil {
						var s batchSummary
						if s, err = summarizeBatch(outs); err == nil {
							if ph.answer {
								all.add(impl, ms(s.allAnswered))
								if agents != nil && s.haveAgents {
									agents.add(impl, ms(s.allAgents))
								}
							}
							if s.haveMemory {
								pss.add(impl, s.pssMiB)
								guest.add(impl, s.guestPSSMiB)
								if k, ok := pssRatio(s.pssMiB, m.booted.Values[impl]); ok {
									ratio.add(impl, k)
								}
							}
						}
					}
					if err != nil {
						r.failure(fmt.Sprintf("%s %s N=%d (%s): %v", impl, g.label, n, what, err))
					}
				}
			}
		}
	}
}

// takeSnapshot boots a source VM to idle, reads its memory, and saves it.
func (b *bench) takeSnapshot(ctx context.Context, impl string, g *snapGuest, rep int) (snapFiles, snapTaken, error) {
	dir, err := os.MkdirTemp(b.tmp, fmt.Sprintf("snap-%s-%s-", g.key, strings.ToLower(impl)))
	if err != nil {
		return snapFiles{}, snapTaken{}, err
	}
	f := snapFiles{dir: dir}
	log := ""
	if g.logs {
		log = filepath.Join(b.dir, fmt.Sprintf("snapshot-%s-%s-source-%d", g.key, strings.ToLower(impl), rep))
		b.prog.say("console log: %s.console.log", log)
	}
	var t snapTaken
	if impl == implVMM {
		f.state, f.mem, f.vsock = filepath.Join(dir, "vmm.state"), filepath.Join(dir, "vmm.mem"), filepath.Join(dir, "source.vsock")
		t, err = b.vmmSave(ctx, g, f, filepath.Join(dir, "source.sock"), log)
	} else {
		f.stream = filepath.Join(dir, "qemu.migration")
		t, err = b.qemuSave(ctx, g, f, filepath.Join(dir, "source.qmp"), log)
	}
	return f, t, err
}

// bootIdle launches a source VM, watching for its idle line.
func bootIdle(ctx context.Context, g *snapGuest, name string, argv []string, log string) (*Proc, error) {
	return Launch(ctx, ProcSpec{Name: name, Argv: argv, Stdin: true, Timeout: g.boot + 2*time.Minute,
		Marks: []string{g.idle}, ErrMarks: qemuDead(), LogBase: log})
}

// vmmSave boots the source through vmm's API (the flags configure it,
// InstanceStart starts it), waits until it is idle, and saves it.
func (b *bench) vmmSave(ctx context.Context, g *snapGuest, f snapFiles, sock, log string) (snapTaken, error) {
	var t snapTaken
	p, err := bootIdle(ctx, g, "vmm source", g.vmmArgv(sock, f.vsock), log)
	if err != nil {
		return t, err
	}
	defer p.Stop()
	api := newAPIClient(sock)
	if err := api.waitReady(ctx, p, b.cfg.runTimeout); err != nil {
		return t, err
	}
	if err := api.do(http.MethodPut, "/actions", []byte(`{"action_type":"InstanceStart"}`), http.StatusNoContent); err != nil {
		return t, err
	}
	if _, err := waitConsole(ctx, p, g.idle, "", g.boot); err != nil {
		return t, err
	}
	if g.agent {
		c, err := dialAgent(ctx, p, f.vsock, g.boot)
		if err != nil {
			return t, fmt.Errorf("source's agent: %w", err)
		}
		c.Close()
	}
	time.Sleep(g.settle)
	if t.bootedPSS, err = rollupPSS(p.PID()); err != nil {
		return t, err
	}
	t0 := time.Now()
	if err := api.do(http.MethodPatch, "/vm", []byte(`{"state":"Paused"}`), http.StatusNoContent); err != nil {
		return t, err
	}
	t.pause = time.Since(t0)
	body, err := snapshotCreateBody(f.state, f.mem)
	if err != nil {
		return t, err
	}
	t0 = time.Now()
	if err := api.do(http.MethodPut, "/snapshot/create", body, http.StatusNoContent); err != nil {
		return t, err
	}
	t.create = time.Since(t0)
	return t, nil
}

// qemuSave boots the same guest in QEMU with a QMP socket, waits until it
// is idle, stops it and migrates it to a file.
func (b *bench) qemuSave(ctx context.Context, g *snapGuest, f snapFiles, sock, log string) (snapTaken, error) {
	var t snapTaken
	p, err := bootIdle(ctx, g, "QEMU source", g.qemuArgv(sock), log)
	if err != nil {
		return t, err
	}
	defer p.Stop()
	c, err := dialWhenUp(ctx, p, sock, b.cfg.runTimeout)
	if err != nil {
		return t, err
	}
	q, err := qmpOpen(c)
	if err != nil {
		c.Close()
		return t, err
	}
	defer q.Close()
	if _, err := waitConsole(ctx, p, g.idle, "", g.boot); err != nil {
		return t, err
	}
	time.Sleep(g.settle)
	if t.bootedPSS, err = rollupPSS(p.PID()); err != nil {
		return t, err
	}
	if _, err := q.executeArgs("migrate-set-parameters", map[string]any{"max-bandwidth": qemuUnlimitedBandwidth}); err != nil {
		return t, err
	}
	t0 := time.Now()
	if _, err := q.execute("stop"); err != nil {
		return t, err
	}
	t.pause = time.Since(t0)
	t0 = time.Now()
	if _, err := q.executeArgs("migrate", map[string]string{"uri": "exec:cat > " + shellQuote([]string{f.stream})}); err != nil {
		return t, err
	}
	if err := q.waitMigration(apiPoll, g.boot); err != nil {
		return t, err
	}
	t.create = time.Since(t0)
	return t, nil
}

// snapshotCreateBody is PUT /snapshot/create's body for a Full snapshot.
func snapshotCreateBody(state, mem string) ([]byte, error) {
	return json.Marshal(map[string]string{"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem})
}

// snapshotLoadBody is PUT /snapshot/load's body: the File memory backend,
// resumed at once, with the vsock device on a socket of its own.
func snapshotLoadBody(state, mem, vsock string) ([]byte, error) {
	type backend struct {
		Type string `json:"backend_type"`
		Path string `json:"backend_path"`
	}
	type override struct {
		UDS string `json:"uds_path"`
	}
	body := struct {
		State   string    `json:"snapshot_path"`
		Backend backend   `json:"mem_backend"`
		Resume  bool      `json:"resume_vm"`
		Vsock   *override `json:"vsock_override,omitempty"`
	}{State: state, Backend: backend{"File", mem}, Resume: true}
	if vsock != "" {
		body.Vsock = &override{vsock}
	}
	return json.Marshal(body)
}

// rollupPSS is a process's PSS in kB, from /proc/PID/smaps_rollup.
func rollupPSS(pid int) (uint64, error) {
	rollup, maps, err := readSmaps(pid)
	if err != nil {
		return 0, err
	}
	if len(rollup) != 1 || len(maps) == 0 {
		return 0, fmt.Errorf("pid %d: smaps_rollup has %d entries, smaps %d", pid, len(rollup), len(maps))
	}
	return rollup[0].KB["Pss"], nil
}

// launchRestore starts one VM from the snapshot f, without waiting: vmm
// with --restore (or, given a vsock override, with only an API socket,
// for awaitRunning to load the snapshot through), QEMU with -incoming.
func (b *bench) launchRestore(ctx context.Context, impl string, g *snapGuest, f snapFiles, sock, vsock string, timeout time.Duration) (*Proc, error) {
	argv := g.qemuArgv(sock, "-incoming", "exec:cat "+shellQuote([]string{f.stream}))
	switch {
	case impl == implVMM && vsock != "":
		argv = []string{b.vmm, "--api-sock", sock}
	case impl == implVMM:
		argv = []string{b.vmm, "--restore", f.state, "--mem-file", f.mem, "--resume", "--api-sock", sock}
	}
	_ = os.Remove(sock)
	return Launch(ctx, ProcSpec{Name: impl + " restore", Argv: argv, Stdin: true, Timeout: timeout + time.Minute,
		Marks: []string{g.answer}, ErrMarks: append([]string{probePrefix}, qemuDead()...)})
}

// awaitRunning waits until a VM launchRestore started runs its vCPUs and
// returns when that was, from the process's start: vmm's launch probe
// (first KVM_RUN), or QEMU's `cont` answered once the incoming migration
// completed. For QEMU it also returns the QMP session, for the caller to
// close.
func (b *bench) awaitRunning(ctx context.Context, impl string, p *Proc, f snapFiles, sock, vsock string, timeout time.Duration) (time.Duration, *qmpSession, error) {
	if impl == implQEMU {
		c, err := dialWhenUp(ctx, p, sock, timeout)
		if err != nil {
			return 0, nil, err
		}
		q, err := qmpOpen(c)
		if err != nil {
			c.Close()
			return 0, nil, err
		}
		if err := q.waitMigration(apiPoll, timeout); err != nil {
			return 0, q, fmt.Errorf("incoming migration: %w; stderr: %s", err, strings.Join(p.StderrTail(3), " | "))
		}
		if _, err := q.execute("cont"); err != nil {
			return 0, q, err
		}
		return time.Since(p.Start()), q, nil
	}
	if vsock != "" {
		api := newAPIClient(sock)
		if err := api.waitReady(ctx, p, timeout); err != nil {
			return 0, nil, err
		}
		body, err := snapshotLoadBody(f.state, f.mem, vsock)
		if err != nil {
			return 0, nil, err
		}
		if err := api.do(http.MethodPut, "/snapshot/load", body, http.StatusNoContent); err != nil {
			return 0, nil, err
		}
	}
	if _, err := p.WaitStderr(probePrefix, timeout); err != nil {
		return 0, nil, fmt.Errorf("%w; stderr: %s", err, strings.Join(p.StderrTail(3), " | "))
	}
	// The mark can come before the rest of its line.
	for range 20 {
		if d, _, _, ok := parseProbe(string(p.err.bytes())); ok {
			return d, nil, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, nil, fmt.Errorf("%s: unreadable startup probe line: %s", p.Name, strings.Join(p.StderrTail(3), " | "))
}

// answerOnce sends the guest its query and returns when the answer came
// and, with agentSock, when the guest agent answered on it, both from the
// process's start.
func answerOnce(ctx context.Context, p *Proc, g *snapGuest, agentSock string, timeout time.Duration) (answered, agent time.Duration, err error) {
	var wg sync.WaitGroup
	var agentErr error
	if agentSock != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialAgentEvery(ctx, p, agentSock, timeout, agentPoll)
			if err != nil {
				agentErr = fmt.Errorf("agent: %w", err)
				return
			}
			agent = time.Since(p.Start())
			c.Close()
		}()
	}
	if err := p.Send(g.query); err != nil {
		wg.Wait()
		return 0, 0, fmt.Errorf("%s: console input: %w", p.Name, err)
	}
	answered, err = waitConsole(ctx, p, g.answer, "", timeout)
	wg.Wait()
	if err != nil {
		return 0, 0, err
	}
	return answered, agent, agentErr
}

// restoreTimes are one restore's measurements, from the process's start.
type restoreTimes struct{ running, answered, agent time.Duration }

// restoreOnce restores the snapshot f once and times it to the guest's
// answer (and its agent's); a guest that exits after answering must exit
// with status 0.
func (b *bench) restoreOnce(ctx context.Context, impl string, g *snapGuest, f snapFiles) (restoreTimes, error) {
	var rt restoreTimes
	dir, err := os.MkdirTemp(b.tmp, "restore-")
	if err != nil {
		return rt, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "ctl.sock")
	p, err := b.launchRestore(ctx, impl, g, f, sock, "", g.restore)
	if err != nil {
		return rt, err
	}
	defer p.Stop()
	running, q, err := b.awaitRunning(ctx, impl, p, f, sock, "", g.restore)
	if q != nil {
		defer q.Close()
	}
	if err != nil {
		return rt, err
	}
	agentSock := ""
	if impl == implVMM && g.agent {
		agentSock = f.vsock // --restore keeps the snapshot's socket
	}
	answered, agent, err := answerOnce(ctx, p, g, agentSock, g.restore)
	if err != nil {
		return rt, err
	}
	if g.exits {
		if err := waitExit(p, impl); err != nil {
			return rt, err
		}
	}
	return restoreTimes{running, answered, agent}, nil
}

// waitExit waits for a test guest that answered to exit with status 0.
func waitExit(p *Proc, impl string) error {
	want := 0
	if impl == implQEMU {
		want = qemuExitStatus(0)
	}
	code, _, err := p.Wait()
	if err != nil {
		return err
	}
	if err := checkExit(p.Name, code, want); err != nil {
		return fmt.Errorf("%w; console: %s; stderr: %s", err, strings.Join(p.Tail(3), " | "), strings.Join(p.StderrTail(3), " | "))
	}
	return nil
}

// cloneBatch starts n VMs from the snapshot f at once, each with its own
// control socket (and, vmm with an agent, its own vsock socket), and
// returns each one's outcome: with answer, when it answered (and its
// agent did) from the batch's start; with memory, its PSS once all are
// idle, after the answers if both.
func (b *bench) cloneBatch(ctx context.Context, impl string, g *snapGuest, f snapFiles, n int, answer, memory bool) ([]cloneOutcome, error) {
	timeout := g.restore + time.Duration(n)*g.perClone
	dir, err := os.MkdirTemp(b.tmp, "clones-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var mem *memFileID
	if impl == implVMM {
		id, err := statMemFile(f.mem)
		if err != nil {
			return nil, err
		}
		mem = &id
	}
	socks, vsocks := make([]string, n), make([]string, n)
	for i := range n {
		socks[i] = filepath.Join(dir, fmt.Sprintf("%d.sock", i+1))
		if impl == implVMM && g.agent {
			vsocks[i] = filepath.Join(dir, fmt.Sprintf("%d.vsock", i+1))
		}
	}
	var procs []*Proc
	defer func() { stopAll(procs) }()
	start := time.Now()
	for i := range n {
		p, err := b.launchRestore(ctx, impl, g, f, socks[i], vsocks[i], timeout)
		if err != nil {
			return nil, err
		}
		p.Name = fmt.Sprintf("%s clone %d", impl, i+1)
		procs = append(procs, p)
	}
	outs := make([]cloneOutcome, n)
	qmps := make([]*qmpSession, n)
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, q, err := b.awaitRunning(ctx, impl, p, f, socks[i], vsocks[i], timeout)
			qmps[i] = q
			if err != nil || !answer {
				outs[i].err = err
				return
			}
			ans, ag, err := answerOnce(ctx, p, g, vsocks[i], timeout)
			if err != nil {
				outs[i].err = err
				return
			}
			since := p.Start().Sub(start)
			outs[i].answered = since + ans
			if ag > 0 {
				outs[i].agent = since + ag
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, q := range qmps {
			if q != nil {
				q.Close()
			}
		}
	}()
	failed := slices.ContainsFunc(outs, func(o cloneOutcome) bool { return o.err != nil })
	if memory && !failed {
		time.Sleep(g.settle)
		for i, p := range procs {
			rollup, maps, err := readSmaps(p.PID())
			if err == nil {
				outs[i].pss, outs[i].guestPSS, err = clonePSS(rollup, maps, mem, b.guestBytes())
			}
			outs[i].err = err
		}
	}
	if g.exits && !failed {
		for i, p := range procs {
			if !answer {
				if err := p.Send(g.query); err != nil {
					outs[i].err = err
					continue
				}
			}
			if err := waitExit(p, impl); err != nil && outs[i].err == nil {
				outs[i].err = err
			}
		}
	}
	return outs, nil
}

// joinInts prints counts as "1, 2, 4".
func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ", ")
}
