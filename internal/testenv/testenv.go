// Package testenv is how a test says that this host cannot run it: no
// /dev/kvm, not root, a missing tool, a missing kernel feature. Such a test
// is skipped, unless VMM_TEST_STRICT=1 is set (CI sets it where /dev/kvm is
// usable, see .ci/run): then it fails, so that a run can't pass by testing
// nothing. Skips that are a choice of the run (testing.Short) don't belong
// here.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// StrictVar is the environment variable that turns skips into failures
// when it is "1".
const StrictVar = "VMM_TEST_STRICT"

// KVMDevice is the KVM device node. It is the kvm package's DevicePath,
// repeated because the kvm package's own tests use this package.
const KVMDevice = "/dev/kvm"

// Strict reports whether a test that can't run here must fail.
func Strict() bool { return os.Getenv(StrictVar) == "1" }

// Skip skips t because this host lacks what it needs, or fails it in
// strict mode. Like t.Skip, it ends the test.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Strict() {
		t.Fatalf("%s=1, so this fails instead of skipping: %s", StrictVar, reason)
		return
	}
	t.Skip("SKIPPING: " + reason)
}

// Skipf is Skip with a formatted reason.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	Skip(t, fmt.Sprintf(format, args...))
}

// RequireKVM skips (or, strict, fails) t when KVMDevice is absent. A
// device that is there but can't be opened is left for the test to fail
// on: that is a broken host, not a host without KVM.
func RequireKVM(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(KVMDevice); err != nil {
		Skip(t, KVMDevice+" is absent on this host; this VM test did not run")
	}
}

// RequireRoot skips (or, strict, fails) t unless it runs as root; why says
// what the test needs root for.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root ("+why+"); run `go test` as root")
	}
}

// LookCommand returns the path of the command name, looked up on PATH and
// then in /usr/sbin and /sbin: a non-root PATH often lacks them, and Debian
// installs mkfs.ext4, debugfs, ip and losetup there.
func LookCommand(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p, serr := exec.LookPath(filepath.Join(dir, name)); serr == nil {
			return p, nil
		}
	}
	return "", err
}

// RequireCommand returns the path of the command name, or skips (or,
// strict, fails) t when it isn't installed; pkg is the Debian package that
// provides it, which scripts/deps.sh installs.
func RequireCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := LookCommand(name)
	if err != nil {
		Skipf(t, "%v (package %s; `make deps` installs it)", err, pkg)
	}
	return p
}
