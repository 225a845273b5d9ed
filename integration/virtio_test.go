package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Sector patterns shared with the test guest (guest/testguest/virtio_blk.c):
// the host writes sector 0, the guest writes byte i^0xa5 to sector 1.
func hostSector0() []byte {
	b := make([]byte, 512)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

func guestSector1() []byte {
	b := make([]byte, 512)
	for i := range b {
		b[i] = byte(i ^ 0xa5)
	}
	return b
}

// newImage writes a 1 MiB raw image with the host pattern in sector 0.
func newImage(t *testing.T) string {
	t.Helper()
	img := make([]byte, 1<<20)
	copy(img, hostSector0())
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestVirtioBlk boots the test guest with a virtio-blk disk: it finds the
// device by PCI enumeration (its BAR is 64-bit, above 4 GiB; ECAM, found
// through MCFG, shows the same configuration space as port 0xCF8),
// negotiates features, reads sector 0 (also completed by an MSI-X
// interrupt), writes sector 1 through an indirect descriptor, reads it back
// and flushes. The host then checks the image.
func TestVirtioBlk(t *testing.T) {
	for _, boot := range []string{"testguest.elf", "testguest.bzimage"} {
		t.Run(boot, func(t *testing.T) {
			img := newImage(t)
			code, out, stderr := runVMM(t, testGuestTimeout, "--kernel", filepath.Join(shared.testGuest, boot),
				"--debug-exit", "--cpus", "2", "--disk", "path="+img+",id=testdisk", "--cmdline", "blk=1 exit=5")
			if code != 5 {
				t.Fatalf("exit status %d, want 5\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
			}
			// 128 MiB of RAM: the 64-bit window starts at 4 GiB.
			for _, re := range []string{
				`^testguest: blk bar0=0x100000000 size=0x[0-9a-f]+ 64bit=1 prefetch=1$`,
				`^testguest: blk ecam base=0xe0000000 match=1 ext=0xffffffff fn1=0xffffffff$`,
			} {
				if !regexpLine(out, re) {
					t.Errorf("console lacks %s\nconsole:\n%s", re, out)
				}
			}
			want := []string{
				"testguest: blk device=1 capacity=2048 ro=0 msix=1",
				"testguest: blk id testdisk",
				"testguest: blk irq ok",
				fmt.Sprintf("testguest: blk read ok %x", hostSector0()[:16]),
				"testguest: blk write ok",
				"testguest: blk readback ok",
				"testguest: blk flush ok",
			}
			checkLines(t, out, want)
			got, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[512:1024], guestSector1()) {
				t.Errorf("sector 1 after the guest's write = %x..., want %x...", got[512:528], guestSector1()[:16])
			}
			if !bytes.Equal(got[:512], hostSector0()) {
				t.Errorf("sector 0 changed")
			}
		})
	}
}

// TestVirtioBlkINTx boots the test guest with blk=intx: MSI-X stays off,
// so the read of sector 0 completes through INTA#. The guest finds the
// I/O APIC input in the Interrupt Line register (device 1's INTA# is GSI
// 17, as the DSDT's _PRT says), routes it level-triggered to a vector, and
// EOIs the first interrupt without reading the ISR: the VMM re-asserts the
// line (irqfd resampling), so a second interrupt comes, whose handler reads
// the ISR (queue bit set) and so deasserts the line. A third is allowed:
// KVM on kvm-pvm hosts acknowledges the interrupt when it injects it, while
// the ISR is still unread. More would mean the line never went down.
func TestVirtioBlkINTx(t *testing.T) {
	for _, boot := range []string{"testguest.elf", "testguest.bzimage"} {
		t.Run(boot, func(t *testing.T) {
			img := newImage(t)
			code, out, stderr := runVMM(t, testGuestTimeout, "--kernel", filepath.Join(shared.testGuest, boot),
				"--debug-exit", "--cpus", "2", "--disk", "path="+img, "--cmdline", "blk=intx exit=7")
			if code != 7 {
				t.Fatalf("exit status %d, want 7\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
			}
			checkLines(t, out, []string{
				"testguest: blk device=1 capacity=2048 ro=0 msix=0",
				"testguest: blk intx pin=1 line=17 vector=0x42",
			})
			if re := `^testguest: blk intx irqs=[23] isr=1 status=1 after=0$`; !regexpLine(out, re) {
				t.Errorf("console lacks %s\nconsole:\n%s", re, out)
			}
			checkLines(t, out, []string{fmt.Sprintf("testguest: blk read ok %x", hostSector0()[:16])})
		})
	}
}

// TestVirtioBlkReadOnly checks that a ,ro disk advertises VIRTIO_BLK_F_RO
// and refuses the guest's write, leaving the image untouched.
func TestVirtioBlkReadOnly(t *testing.T) {
	img := newImage(t)
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runVMM(t, testGuestTimeout, "--kernel", filepath.Join(shared.testGuest, "testguest.elf"),
		"--debug-exit", "--disk", "path="+img+",ro", "--cmdline", "blk=1 exit=6")
	if code != 6 {
		t.Fatalf("exit status %d, want 6\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
	}
	checkLines(t, out, []string{
		"testguest: blk device=1 capacity=2048 ro=1 msix=1",
		"testguest: blk id drive0",
		fmt.Sprintf("testguest: blk read ok %x", hostSector0()[:16]),
		"testguest: blk write refused",
		"testguest: blk flush ok",
	})
	after, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("read-only image changed")
	}
}

// TestVirtioBlkImageErrors checks the errors a user sees before boot: a
// missing image, and an image another VM holds.
func TestVirtioBlkImageErrors(t *testing.T) {
	kernel := filepath.Join(shared.testGuest, "testguest.elf")
	code, _, stderr := runVMM(t, time.Minute, "--kernel", kernel, "--disk", "path=/nonexistent/disk.img")
	if code != 2 || !strings.Contains(stderr, "/nonexistent/disk.img") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("missing image: status %d, stderr %q; want 2 and one line naming the file", code, stderr)
	}

	img := newImage(t)
	holder := Start(t, "--kernel", kernel, "--debug-exit", "--disk", "path="+img, "--cmdline", "echo=1")
	holder.WaitFor(regexp.MustCompile(`testguest: ready>`), 0, testGuestTimeout)
	code, _, stderr = runVMM(t, time.Minute, "--kernel", kernel, "--disk", "path="+img)
	if code == 0 || !strings.Contains(stderr, "image "+img+" is in use by another VM") {
		t.Errorf("locked image: status %d, stderr %q; want failure saying the image is in use", code, stderr)
	}
	// A read-only user conflicts with the writer too.
	code, _, stderr = runVMM(t, time.Minute, "--kernel", kernel, "--disk", "path="+img+",ro")
	if code == 0 || !strings.Contains(stderr, "in use by another VM") {
		t.Errorf("locked image, ro: status %d, stderr %q; want failure saying the image is in use", code, stderr)
	}
	holder.Type("bye\r")
	holder.Wait(testGuestTimeout)
}

// checkLines checks that want appear in out, in order, each a whole line.
func checkLines(t *testing.T, out string, want []string) {
	t.Helper()
	lines := strings.Split(strings.ReplaceAll(out, "\r", ""), "\n")
	i := 0
	for _, l := range lines {
		if i < len(want) && l == want[i] {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("console lacks %q (in order)\nconsole:\n%s", want[i], out)
	}
}
