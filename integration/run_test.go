package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/shim"
)

// TestRun boots the default guest once with `vmm run` and runs a command
// in a container on the busybox test image. One boot checks: stdin piped
// in reaches the command, its stdout reaches ours, -e, -w and --hostname
// apply, the container has its own PID namespace (the command is PID 1 and
// sees only its own processes), and its exit status is vmm's.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	requireKVM(t)
	// In parallel with TestRunSIGTERM: two `vmm run` at once must not
	// interfere.
	t.Parallel()
	image := privateTestImage(t)

	script := `read x; echo "got-$x $GREETING $(hostname) $(pwd) pid=$$"; ` +
		`echo procs=$(ls /proc | grep -c '^[0-9]'); exit 3`
	ctx, cancel := context.WithTimeout(context.Background(), linuxBootTimeout+5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, shared.vmm, "run", "--image", image,
		"--boot-timeout", linuxBootTimeout.String(), "-e", "GREETING=hi", "-w", "/tmp",
		"--hostname", "box", "--", "sh", "-c", script)
	cmd.Dir = shared.root
	cmd.Stdin = strings.NewReader("ping\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("vmm run took %v", time.Since(start).Round(time.Second))
	if ctx.Err() != nil {
		t.Fatalf("vmm run timed out\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if code != 3 || len(lines) != 2 || lines[0] != "got-ping hi box /tmp pid=1" {
		t.Fatalf("vmm run: status %d, stdout %q; want 3 and \"got-ping hi box /tmp pid=1\", procs=N\nstderr:\n%s",
			code, stdout.String(), stderr.String())
	}
	// sh, plus the ls and grep of the pipeline: the guest's own processes
	// and kernel threads (dozens) must not show.
	n, err := strconv.Atoi(strings.TrimPrefix(lines[1], "procs="))
	if err != nil || n < 1 || n > 4 {
		t.Errorf("container sees %q processes, want 1 to 4 (its own only)", lines[1])
	}
}

// TestRunSIGTERM runs `sleep 100` with `vmm run`, in parallel with
// TestRun, and sends vmm run SIGTERM once the container runs. sleep is
// PID 1 of its PID namespace, which the kernel shields from signals it has
// no handler for, so, as with `docker stop`, vmm run follows up with
// SIGKILL after its grace period: the command ends (128+15 or 128+9), vmm
// run exits with its status, and the VMM process and the API socket
// directory are gone afterwards.
func TestRunSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	requireKVM(t)
	t.Parallel()
	image := privateTestImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), linuxBootTimeout+5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, shared.vmm, "run", "--image", image,
		"--boot-timeout", linuxBootTimeout.String(), "--", "sh", "-c", "echo started; exec sleep 100")
	cmd.Dir = shared.root
	stdout, stderr := startPiped(t, cmd)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "started\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("first output %q (%v), want \"started\"\nstderr:\n%s", line, err, stderr.String())
	}
	vmmPID, apiSock := runChildVMM(t, cmd.Process.Pid)
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	t.Logf("vmm run exited %v after SIGTERM", time.Since(sent).Round(time.Millisecond))
	var ee *exec.ExitError
	if !errors.As(err, &ee) || (ee.ExitCode() != 128+int(syscall.SIGTERM) && ee.ExitCode() != 128+int(syscall.SIGKILL)) {
		t.Errorf("vmm run after SIGTERM: %v, want exit status %d or %d\nstderr:\n%s",
			err, 128+int(syscall.SIGTERM), 128+int(syscall.SIGKILL), stderr.String())
	}
	if time.Since(sent) > shim.DefaultKillGrace+time.Minute {
		t.Errorf("vmm run took %v to end after SIGTERM", time.Since(sent))
	}
	if vmmPID != 0 && syscall.Kill(vmmPID, 0) == nil {
		t.Errorf("the VMM (pid %d) outlived vmm run", vmmPID)
		syscall.Kill(vmmPID, syscall.SIGKILL)
	}
	if apiSock != "" {
		if _, err := os.Stat(filepath.Dir(apiSock)); !os.IsNotExist(err) {
			t.Errorf("vmm run left %s behind (%v)", filepath.Dir(apiSock), err)
		}
	}
}

// TestRunImageUnchanged runs a container that writes all over its root
// and checks that the image file keeps its bytes and modification time:
// vmm run attaches it read-only and the guest agent gives the container
// an overlay root. The test holds a shared lock on the image throughout,
// which a read-write attachment (an exclusive lock) would fail on.
func TestRunImageUnchanged(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	requireKVM(t)
	t.Parallel()
	image := privateTestImage(t)
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	before := imageState(t, image)
	script := `set -e; echo ok > /written; echo more >> /etc/hostname; rm /etc/hosts; ` +
		`mkdir /newdir; dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null; sync; cat /written`
	code, stdout, stderr := runVMM(t, linuxBootTimeout+5*time.Minute, "run", "--image", image,
		"--boot-timeout", linuxBootTimeout.String(), "--", "sh", "-c", script)
	if code != 0 || stdout != "ok\n" {
		t.Fatalf("vmm run: status %d, stdout %q; want 0 and \"ok\"\nstderr:\n%s", code, stdout, stderr)
	}
	if after := imageState(t, image); after != before {
		t.Errorf("vmm run changed the image: %s before, %s after", before, after)
	}
}

// imageState is what a run must not change about an image file.
func imageState(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("sha256 %x, %d bytes, mtime %v", sha256.Sum256(data), st.Size(), st.ModTime())
}

// startPiped starts cmd with a pipe from its standard output and its
// standard error collected.
func startPiped(t *testing.T, cmd *exec.Cmd) (io.ReadCloser, *syncBuffer) {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return stdout, stderr
}

// runChildVMM finds the VMM process vmm run started (its descendant with
// --api-sock: normally a child, but a wrapper such as `ip netns exec` may
// add a level) and that socket's path.
func runChildVMM(t *testing.T, runPID int) (int, string) {
	t.Helper()
	var seen []int
	level := []int{runPID}
	for depth := 0; depth < 3 && len(level) > 0; depth++ {
		var next []int
		for _, parent := range level {
			for _, pid := range procChildren(parent) {
				seen = append(seen, pid)
				args := procCmdline(pid)
				for i, a := range args {
					if a == "--api-sock" && i+1 < len(args) {
						return pid, args[i+1]
					}
				}
				next = append(next, pid)
			}
		}
		level = next
	}
	t.Errorf("no VMM with --api-sock under vmm run (pid %d); descendants %v", runPID, seen)
	return 0, ""
}

// procChildren lists pid's children. Each thread lists the children it
// forked, and Go forks from any thread.
func procChildren(pid int) []int {
	var pids []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, task := range tasks {
		c, _ := os.ReadFile(task)
		for _, f := range strings.Fields(string(c)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}

// procCmdline is pid's argv, nil if it is gone.
func procCmdline(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(raw) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
}

// procStat returns pid's state, process group and start time (in clock
// ticks since boot, which with the pid names one process for good);
// ok is false if there is no such process.
func procStat(pid int) (state string, pgrp int, start uint64, ok bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, 0, false
	}
	// The command name is in parentheses and may hold anything.
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return "", 0, 0, false
	}
	pgrp, _ = strconv.Atoi(f[2])
	start, _ = strconv.ParseUint(f[19], 10, 64)
	return f[0], pgrp, start, true
}

// TestRunCtrlC does to `vmm run` what Ctrl-C on a terminal does: SIGINT to
// its whole process group. vmm run runs in a private network namespace
// with --net on a tap that does not exist yet (so the VMM creates it),
// in its own process group as a shell's foreground job would be. The VMM
// has a process group of its own, so only vmm run gets the SIGINT and
// forwards it to the container's `sleep`, which as PID 1 ignores it; the
// grace period's SIGKILL ends it and vmm run exits 137 (130 would also
// do: a run that the SIGINT itself ended). Afterwards no process of the
// run is left (the VMM, anything in the group, anything naming or holding
// the image or the run directory), the API socket directory is gone, and
// so is the tap.
func TestRunCtrlC(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	requireKVM(t)
	t.Parallel()
	ns := newNetNS(t, 30)
	image := privateTestImage(t)
	const tap = "vmmrun0" // not newNetNS's tap: vmm run must create it
	if tapInNS(t, ns, tap) {
		t.Fatalf("tap %s exists in %s before the run", tap, ns.name)
	}

	ctx, cancel := context.WithTimeout(context.Background(), linuxBootTimeout+5*time.Minute)
	defer cancel()
	// `ip netns exec` execs vmm in place: cmd's process is vmm run.
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.name, shared.vmm, "run",
		"--image", image, "--net", "tap="+tap, "--boot-timeout", linuxBootTimeout.String(),
		"--", "sh", "-c", "echo started; exec sleep 100")
	cmd.Dir = shared.root
	// A shell's job: its own process group, which a terminal's Ctrl-C
	// signals as a whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	stdout, stderr := startPiped(t, cmd)
	pgid := cmd.Process.Pid
	// One reader of stdout: the first line, then the rest (sleep prints
	// nothing), then Wait.
	firstLine := make(chan string, 1)
	waited := make(chan error, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, err := r.ReadString('\n')
		if err != nil {
			line += fmt.Sprintf(" (%v)", err)
		}
		firstLine <- line
		_, _ = io.Copy(io.Discard, r)
		waited <- cmd.Wait()
	}()
	var waitErr error
	exited := false
	// On an early failure, take the whole group down.
	defer func() {
		if !exited {
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-waited
		}
	}()

	start := time.Now()
	if line := <-firstLine; line != "started\n" {
		t.Fatalf("first output %q, want \"started\"\nstderr:\n%s", line, stderr.String())
	}
	t.Logf("the command started %v after vmm run", time.Since(start).Round(time.Second))
	if !tapInNS(t, ns, tap) {
		t.Errorf("tap %s is not in %s while the guest runs", tap, ns.name)
	}
	vmmPID, apiSock := runChildVMM(t, pgid)
	if vmmPID == 0 {
		t.FailNow()
	}
	_, vmmPgrp, vmmStart, ok := procStat(vmmPID)
	if !ok {
		t.Fatalf("the VMM (pid %d) is gone while the command runs", vmmPID)
	}
	if vmmPgrp == pgid {
		t.Errorf("the VMM (pid %d) is in vmm run's process group %d: a terminal's Ctrl-C reaches it directly", vmmPID, pgid)
	}
	runDir := filepath.Dir(apiSock)

	sent := time.Now()
	if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case waitErr = <-waited:
		exited = true
	case <-time.After(shim.DefaultKillGrace + time.Minute):
		t.Fatalf("vmm run still running %v after Ctrl-C\nstderr:\n%s", time.Since(sent).Round(time.Second), stderr.String())
	}
	took := time.Since(sent)
	var ee *exec.ExitError
	status := 0
	switch {
	case errors.As(waitErr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Errorf("vmm run was killed by %v on Ctrl-C instead of exiting with a status", ws.Signal())
		}
		status = ee.ExitCode()
	case waitErr != nil:
		t.Errorf("waiting for vmm run: %v", waitErr)
	}
	t.Logf("vmm run exited with status %d %v after Ctrl-C; stderr:\n%s", status, took.Round(time.Millisecond), stderr.String())
	if status != 128+int(syscall.SIGINT) && status != 128+int(syscall.SIGKILL) {
		t.Errorf("vmm run after Ctrl-C: status %d, want %d or %d\nstderr:\n%s",
			status, 128+int(syscall.SIGINT), 128+int(syscall.SIGKILL), stderr.String())
	}

	// vmm run waits for its VMM, so the VMM must be gone altogether, not
	// even a zombie.
	if state, _, st, ok := procStat(vmmPID); ok && st == vmmStart {
		t.Errorf("the VMM (pid %d, state %s) outlived vmm run", vmmPID, state)
		syscall.Kill(-vmmPgrp, syscall.SIGKILL)
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("vmm run left %s behind (%v)", runDir, err)
	}
	if tapInNS(t, ns, tap) {
		t.Errorf("vmm run left tap %s behind in %s", tap, ns.name)
	}
	for _, p := range leftoverProcs(pgid, vmmPgrp, []string{image, runDir}) {
		t.Errorf("left behind: %s", p)
	}
}

// tapInNS reports whether ns has an interface called name.
func tapInNS(t *testing.T, ns *netNS, name string) bool {
	t.Helper()
	found := false
	err := inNetNS(ns, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			found = found || i.Name == name
		}
		return err
	})
	if err != nil {
		t.Fatalf("listing the interfaces of %s: %v", ns.name, err)
	}
	return found
}

// leftoverProcs describes every process in one of the process groups
// pgrps, or whose command line names, or whose open files lie under, one
// of paths.
func leftoverProcs(pgrp1, pgrp2 int, paths []string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		state, pgrp, _, ok := procStat(pid)
		if !ok {
			continue
		}
		args := procCmdline(pid)
		desc := fmt.Sprintf("pid %d (state %s, group %d) %q", pid, state, pgrp, args)
		if pgrp == pgrp1 || pgrp == pgrp2 {
			found = append(found, desc+": in the run's process groups")
			continue
		}
		if hit := mentions(strings.Join(args, " "), paths); hit != "" {
			found = append(found, desc+": its command line names "+hit)
			continue
		}
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		for _, fd := range fds {
			target, err := os.Readlink(fd)
			if err != nil {
				continue
			}
			if hit := mentions(target, paths); hit != "" {
				found = append(found, desc+": holds "+target+" open")
				break
			}
		}
	}
	return found
}

// mentions returns the first of paths that s contains, or "".
func mentions(s string, paths []string) string {
	for _, p := range paths {
		if p != "" && p != "." && strings.Contains(s, p) {
			return p
		}
	}
	return ""
}

// privateTestImage checks that the default guest is built and returns a
// private copy of its busybox test image: vmm locks its images, and a copy
// keeps parallel runs apart.
func privateTestImage(t *testing.T) string {
	t.Helper()
	for _, f := range []string{"vmlinux", "initramfs.cpio", "test.ext4"} {
		if _, err := os.Stat(filepath.Join(shared.guestDir, f)); err != nil {
			t.Fatalf("default guest not built (%v): run `make guest` (make test does)", err)
		}
	}
	image := filepath.Join(t.TempDir(), "rootfs.ext4")
	copyFile(t, filepath.Join(shared.guestDir, "test.ext4"), image)
	return image
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRunBadFlag checks that a usage error costs no boot.
func TestRunBadFlag(t *testing.T) {
	code, _, stderr := runVMM(t, time.Minute, "run", "--mem", "lots", "--image", "x", "true")
	if code != 2 || strings.Count(stderr, "\n") != 1 {
		t.Errorf("status %d, stderr %q; want 2 and one line", code, stderr)
	}
}

// TestRunWarm runs `vmm run` three times on the default guest. The runs
// share the test binary's snapshot cache with the other run tests, so at
// most one of all of them boots; the second and third runs here must be
// restored clones (vmm run --debug says so), print the command's output
// and pass its exit status through. The clones are fresh: 16 bytes of
// /dev/urandom differ between them, and their wall clock is the host's.
func TestRunWarm(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	requireKVM(t)
	t.Parallel()
	image := privateTestImage(t)
	script := `head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; date +%s; exit 7`
	type result struct {
		random string
		clock  int64
		host   int64 // the host's clock when the run ended
		stderr string
	}
	runOnce := func(n int) result {
		ctx, cancel := context.WithTimeout(context.Background(), linuxBootTimeout+5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, shared.vmm, "run", "--debug", "--image", image,
			"--boot-timeout", linuxBootTimeout.String(), "--", "sh", "-c", script)
		cmd.Dir = shared.root
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		host := time.Now().Unix()
		t.Logf("run %d took %v", n, time.Since(start).Round(time.Millisecond))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("run %d: %v, want exit status 7\nstdout:\n%s\nstderr:\n%s", n, err, stdout.String(), stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if len(lines) != 2 || len(lines[0]) != 32 {
			t.Fatalf("run %d: stdout %q, want 32 hex digits and a time", n, stdout.String())
		}
		clock, err := strconv.ParseInt(lines[1], 10, 64)
		if err != nil {
			t.Fatalf("run %d: date printed %q", n, lines[1])
		}
		return result{random: lines[0], clock: clock, host: host, stderr: stderr.String()}
	}
	first := runOnce(1)
	if !strings.Contains(first.stderr, "vmm run: saved snapshot ") && !strings.Contains(first.stderr, "vmm run: restored from snapshot ") {
		t.Errorf("run 1 neither saved nor restored a snapshot; its notes:\n%s", lastLines(first.stderr, 30))
	}
	clones := []result{runOnce(2), runOnce(3)}
	for i, c := range clones {
		if !strings.Contains(c.stderr, "vmm run: restored from snapshot ") {
			t.Errorf("run %d booted instead of restoring; its notes:\n%s", i+2, lastLines(c.stderr, 30))
		}
		// The guest's date ran before the host read its clock.
		if d := c.host - c.clock; d < -1 || d > 10 {
			t.Errorf("run %d: the guest's clock says %d, the host's %d", i+2, c.clock, c.host)
		}
	}
	if clones[0].random == clones[1].random || clones[0].random == first.random {
		t.Errorf("clones read the same /dev/urandom bytes: %s, %s, %s", first.random, clones[0].random, clones[1].random)
	}
}

// lastLines is the tail of s, for failure messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
