package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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

// TestLinuxGuest is the long test: one boot of the default Linux guest
// with a disk for containers, a data disk, a raw disk, a network interface
// in a test namespace, a vsock device and an entropy device, and every check that needs a
// real Linux guest done against that one boot (boots take minutes on
// kvm-pvm hosts). After the console checks the guest is snapshotted, its
// vmm killed and the snapshot restored in a new vmm process
// (snapshotLinuxGuest): every later check (disks, entropy, the agent on
// vsock, the network) runs against the restored guest. It ends with
// poweroff, which must end vmm with status 0.
func TestLinuxGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("long test: boots Linux")
	}
	_, initrd := defaultGuest(t)
	// The bzImage, not the vmlinux: this one boot also proves the
	// mission's `vmm --kernel bzImage` (its LZ4 decompressor, the Linux
	// boot protocol's 64-bit entry) on this host.
	kernel := filepath.Join(shared.guestDir, "bzImage")
	ns := newNetNS(t, 20)
	g := newLinuxGuestDisks(t)
	start := time.Now()
	// Booted through the API socket (InstanceStart with the flags'
	// configuration), which later takes the snapshot.
	sock := filepath.Join(apiDir(t), "api.sock")
	v := StartInNS(t, ns, "--api-sock", sock, "--kernel", kernel, "--initrd", initrd, "--mem", "512M", "--cpus", "2",
		"--disk", "path="+g.rootfs+",id=rootfs", "--disk", "path="+g.data+",id=data", "--disk", "path="+g.raw+",id=raw",
		"--net", "tap="+ns.tap+",mac="+guestMAC, "--vsock", "cid=3,uds="+g.vsock, "--entropy")
	ctl := apiClient(t, sock)
	if err := ctl.Start(context.Background()); err != nil {
		t.Fatalf("InstanceStart: %v", err)
	}
	_, off := v.WaitFor(regexp.MustCompile(`vmm-guest: ready`), 0, linuxBootTimeout)
	t.Logf("ready line after %v", time.Since(start).Round(time.Second))
	step := func(name string) func() {
		s := time.Now()
		return func() { t.Logf("%s: %v", name, time.Since(s).Round(time.Second)) }
	}

	// Console, both directions: commands typed, answers read back.
	done := step("console")
	v.Type("echo marker-$((6*7))\r")
	_, off = v.WaitFor(regexp.MustCompile(`marker-42`), off, 5*time.Minute)
	v.Type("cat /proc/cpuinfo\r")
	var cpus int
	for cpus < 2 {
		m, next := v.WaitFor(regexp.MustCompile(`processor\s*:\s*(\d+)`), off, 5*time.Minute)
		off = next
		n, _ := strconv.Atoi(m[1])
		cpus = max(cpus, n+1)
	}
	v.Type("cat /proc/meminfo\r")
	m, off := v.WaitFor(regexp.MustCompile(`MemTotal:\s+(\d+) kB`), off, 5*time.Minute)
	memKB, _ := strconv.Atoi(m[1])
	// The kernel reserves some of RAM for itself; what's left must still
	// be most of --mem and never more.
	if memKB > 512*1024 || memKB < 400*1024 {
		t.Errorf("MemTotal %d kB does not fit --mem 512M", memKB)
	}
	done()

	// Snapshot, SIGKILL, restore in a new process: from here on v is the
	// restored VM.
	done = step("snapshot and restore")
	v, off = snapshotLinuxGuest(t, ns, g, v, ctl, off)
	done()

	// virtio-blk, ext4: the guest reads a file the host put in the image
	// and writes one the host reads back after the guest unmounts.
	done = step("blk ext4")
	v.Type("mkdir -p /mnt/data && mount -t ext4 /dev/vdb /mnt/data && cat /mnt/data/hello.txt && " +
		"echo guest-wrote-$((40+2)) > /mnt/data/guest.txt && umount /mnt/data && echo blk-ok-$((1+1))\r")
	_, off = v.WaitFor(regexp.MustCompile(`(?s)(hello from the host).*?blk-ok-2`), off, 5*time.Minute)
	if got := debugfsCat(t, g.data, "/guest.txt"); got != "guest-wrote-42\n" {
		t.Errorf("data disk /guest.txt = %q after the guest unmounted it, want %q", got, "guest-wrote-42\n")
	}
	done()

	// virtio-blk, raw: once the guest's sync returns, the data is in the
	// host file, so killing vmm (even with -9) cannot lose it: vmm keeps no
	// write-back buffer of its own.
	done = step("blk flush")
	v.Type("echo flushed-$((20+22)) > /dev/vdc && sync && echo raw-ok-$((2+1))\r")
	_, off = v.WaitFor(regexp.MustCompile(`raw-ok-3`), off, 5*time.Minute)
	if got := readPrefix(t, g.raw, len("flushed-42\n")); got != "flushed-42\n" {
		t.Errorf("raw disk starts with %q after the guest's sync, want %q", got, "flushed-42\n")
	}
	done()

	// virtio-rng: the kernel's hw_random core chose the device, and
	// /dev/hwrng gives bytes that differ from read to read.
	done = step("rng")
	v.Type("cat /sys/class/misc/hw_random/rng_current && head -c 16 /dev/hwrng | hexdump && head -c 16 /dev/hwrng | hexdump && echo rng-ok-$((3+4))\r")
	hexLine := `00000000  ((?:[0-9a-f]{2} +){16})`
	m, _ = v.WaitFor(regexp.MustCompile(`(?s)(virtio_rng\.\d+).*?`+hexLine+`.*?`+hexLine+`.*?rng-ok-7`), off, 5*time.Minute)
	a, b := strings.Join(strings.Fields(m[2]), ""), strings.Join(strings.Fields(m[3]), "")
	if a == b || a == strings.Repeat("0", 32) || b == strings.Repeat("0", 32) {
		t.Errorf("/dev/hwrng gave %s then %s: not random", a, b)
	}
	done()

	// The agent over vsock runs containers on the rootfs disk; they share
	// the guest's network, so the network checks run in one of them with
	// the test image's busybox.
	t.Run("agent", func(t *testing.T) { testAgentInLinuxGuest(t, g, ns) })

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
