package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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
	for _, f := range []string{"vmlinux", "initramfs.cpio", "test.ext4"} {
		if _, err := os.Stat(filepath.Join(shared.guestDir, f)); err != nil {
			t.Fatalf("default guest not built (%v): run `make guest` (make test does)", err)
		}
	}
	// vmm run locks its image; a private copy keeps parallel runs apart.
	image := filepath.Join(t.TempDir(), "rootfs.ext4")
	copyFile(t, filepath.Join(shared.guestDir, "test.ext4"), image)

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
