package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/internal/testenv"
)

// TestAnswersAsJailer: vmm started through a link named jailer is the
// jailer, as Firecracker's launchers expect; a bad command line gets the
// jailer's one-line error and status 2, not vmm's.
func TestAnswersAsJailer(t *testing.T) {
	goTool := testenv.RequireCommand(t, "go", "golang-go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "vmm")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building vmm: %v\n%s", err, out)
	}
	link := filepath.Join(dir, jailerName)
	if err := os.Symlink("vmm", link); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		argv0   string
		args    []string
		wantErr string
	}{
		{link, []string{"--id", "x"}, "jailer: --exec-file is required\n"},
		{bin, []string{"jailer", "--id", "x"}, "jailer: --exec-file is required\n"},
	} {
		var stderr strings.Builder
		cmd := exec.Command(tt.argv0, tt.args...)
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || stderr.String() != tt.wantErr {
			t.Errorf("%s %q: %v, stderr %q; want status %d and %q", tt.argv0, tt.args, err, stderr.String(), exitUsage, tt.wantErr)
		}
	}
}
