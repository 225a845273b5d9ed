package testimage

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/govmm/vmm/internal/testenv"
)

func TestPopulate(t *testing.T) {
	busybox, err := FindBusybox()
	if err != nil {
		testenv.Skipf(t, "%v (package busybox-static; `make deps` installs it)", err)
	}
	dir := t.TempDir()
	if err := Populate(dir, busybox); err != nil {
		t.Fatal(err)
	}
	for _, link := range []string{"bin/sh", "bin/echo", "bin/cat", "bin/sleep", "bin/ps", "bin/hostname"} {
		if target, err := os.Readlink(filepath.Join(dir, link)); err != nil || target != "busybox" {
			t.Errorf("%s -> %q, %v", link, target, err)
		}
	}
	for name, perm := range map[string]os.FileMode{"proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o777 | os.ModeSticky} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !info.IsDir() {
			t.Errorf("/%s: %v", name, err)
			continue
		}
		if got := info.Mode() & (os.ModePerm | os.ModeSticky); got != perm&(os.ModePerm|os.ModeSticky) {
			t.Errorf("/%s mode %v", name, got)
		}
	}
	if data, err := os.ReadFile(filepath.Join(dir, "etc/passwd")); err != nil || len(data) == 0 {
		t.Errorf("/etc/passwd: %v", err)
	}
	if err := isStatic(filepath.Join(dir, "bin/busybox")); err != nil {
		t.Error(err)
	}
}
