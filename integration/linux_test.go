package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// linuxBootTimeout bounds a boot of the default guest to its ready line. On
// VT-x hosts this takes about a second; on kvm-pvm hosts the guest kernel
// runs in KVM's instruction emulator and takes minutes.
const linuxBootTimeout = 20 * time.Minute

func defaultGuest(t *testing.T) (kernel, initrd string) {
	t.Helper()
	requireKVM(t)
	kernel = filepath.Join(shared.guestDir, "vmlinux")
	initrd = filepath.Join(shared.guestDir, "initramfs.cpio")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("default guest not built (%v): run `make guest` (make test does)", err)
		}
	}
	return kernel, initrd
}

// TestLinuxBoot is the long test: one boot of the default Linux guest that
// checks the console in both directions, the CPU count and memory size the
// guest sees, and that poweroff ends vmm with status 0.
func TestLinuxBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	kernel, initrd := defaultGuest(t)
	start := time.Now()
	v := Start(t, "--kernel", kernel, "--initrd", initrd, "--mem", "512M", "--cpus", "2")
	_, off := v.WaitFor(regexp.MustCompile(`vmm-guest: ready`), 0, linuxBootTimeout)
	t.Logf("ready line after %v", time.Since(start).Round(time.Second))

	// Commands typed on the serial console, answers read back from it.
	v.Type("echo marker-$((6*7))\r")
	_, off = v.WaitFor(regexp.MustCompile(`marker-42`), off, 5*time.Minute)

	v.Type("cat /proc/cpuinfo\r")
	var cpus int
	for {
		m, next := v.WaitFor(regexp.MustCompile(`processor\s*:\s*(\d+)|(model name[^\n]*\n)`), off, 5*time.Minute)
		off = next
		if m[1] != "" {
			n, _ := strconv.Atoi(m[1])
			cpus = max(cpus, n+1)
			if cpus == 2 {
				break
			}
		}
	}

	v.Type("cat /proc/meminfo\r")
	m, off := v.WaitFor(regexp.MustCompile(`MemTotal:\s+(\d+) kB`), off, 5*time.Minute)
	memKB, _ := strconv.Atoi(m[1])
	// The kernel reserves some of RAM for itself; what's left must still
	// be most of --mem and never more.
	if memKB > 512*1024 || memKB < 400*1024 {
		t.Errorf("MemTotal %d kB does not fit --mem 512M", memKB)
	}

	v.Type("poweroff\r")
	if code := v.Wait(5 * time.Minute); code != 0 {
		t.Fatalf("vmm exit status %d after poweroff, want 0", code)
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Second))
}

// TestLinuxPanicEndsVMM boots the default kernel with no root file system:
// the kernel panics, and with panic=1 it reboots, which must end vmm.
func TestLinuxPanicEndsVMM(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	kernel, _ := defaultGuest(t)
	v := Start(t, "--kernel", kernel, "--mem", "128M", "--cmdline", "console=ttyS0 reboot=k panic=1")
	v.WaitFor(regexp.MustCompile(`Kernel panic - not syncing`), 0, linuxBootTimeout)
	if code := v.Wait(5 * time.Minute); code != 0 {
		t.Fatalf("vmm exit status %d after the guest panicked and rebooted, want 0", code)
	}
}
