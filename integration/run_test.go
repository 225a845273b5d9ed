package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
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
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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

// runChildVMM finds the VMM process vmm run started (its child with
// --api-sock) and that socket's path.
func runChildVMM(t *testing.T, runPID int) (int, string) {
	t.Helper()
	// Each thread lists the children it forked; Go forks from any thread.
	var children []byte
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", runPID))
	for _, task := range tasks {
		c, _ := os.ReadFile(task)
		children = append(append(children, c...), ' ')
	}
	for _, f := range strings.Fields(string(children)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		for i, a := range args {
			if a == "--api-sock" && i+1 < len(args) {
				return pid, args[i+1]
			}
		}
	}
	t.Errorf("no VMM child with --api-sock under vmm run (pid %d); children %q", runPID, children)
	return 0, ""
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
