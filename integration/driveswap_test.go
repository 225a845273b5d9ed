package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
	"github.com/govmm/vmm/virtio/blk"
)

// writeDisk writes a raw image of size bytes starting with content and
// returns the hex of its first 16 bytes, as the test guest prints them.
func writeDisk(t *testing.T, path, content string, size int) string {
	t.Helper()
	img := make([]byte, size)
	copy(img, content)
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", img[:16])
}

func patchDrive(ctx context.Context, c *client.Client, id, path string) error {
	return c.Do(ctx, http.MethodPatch, "/drives/"+id, api.PartialDrive{DriveID: &id, PathOnHost: &path}, nil)
}

// TestDriveHotSwap launches the way Kata does: a config file with a
// placeholder drive plus the API socket, GET / until Running, then PATCH
// /drives/{id} with the real image. The test guest (blk=watch) reads
// sector 0, waits for the configuration change and reads it again: it must
// see the new content and capacity, with a new config_generation, ISR bit 1
// and the configuration MSI-X interrupt. Swaps to a missing or locked image
// fail with a 400 and leave the placeholder in service. SIGTERM then ends
// vmm as it does for any running VM and removes the socket.
func TestDriveHotSwap(t *testing.T) {
	requireKVM(t)
	ctx := context.Background()
	dir := apiDir(t)
	sock := filepath.Join(dir, "api.sock")
	placeholder := filepath.Join(dir, "placeholder.img")
	oldHex := writeDisk(t, placeholder, "PLACEHOLDER", 64<<10) // 128 sectors
	real := filepath.Join(dir, "rootfs.img")
	newHex := writeDisk(t, real, "REAL ROOTFS DATA", 1<<20) // 2048 sectors
	config := filepath.Join(dir, "vm.json")
	js := fmt.Sprintf(`{
  "boot-source": {"kernel_image_path": %q, "boot_args": "blk=watch"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
  "drives": [{"drive_id": "rootfs", "path_on_host": %q, "is_root_device": true, "is_read_only": false}]
}`, filepath.Join(shared.testGuest, "testguest.bzimage"), placeholder)
	if err := os.WriteFile(config, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}

	v := Start(t, "--api-sock", sock, "--config-file", config)
	c := apiClient(t, sock)
	expectState(t, c, api.StateRunning)
	m, off := v.WaitFor(regexp.MustCompile(`testguest: blk watch before capacity=(\d+) data=([0-9a-f]{32})\r?\n`), 0, testGuestTimeout)
	if m[1] != "128" || m[2] != oldHex {
		t.Fatalf("guest read capacity %s, sector 0 %s before the swap; want 128, %s", m[1], m[2], oldHex)
	}
	m, off = v.WaitFor(regexp.MustCompile(`testguest: blk watch waiting gen=(\d+) secs=\d+\r?\n`), off, testGuestTimeout)
	gen0, _ := strconv.Atoi(m[1])

	// Swaps that must fail, leaving the placeholder in service.
	missing := filepath.Join(dir, "missing.img")
	busy := filepath.Join(dir, "busy.img")
	writeDisk(t, busy, "BUSY", 4096)
	holder, err := blk.Open(blk.Config{ID: "other-vm", Path: busy})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	for _, tt := range []struct {
		name, path string
		want       []string // in the fault message
	}{
		{"nonexistent path", missing, []string{"path_on_host", missing, "no such file or directory"}},
		{"image held by another VM", busy, []string{`drive "rootfs"`, "swap to " + busy, "in use by another VM"}},
	} {
		err := patchDrive(ctx, c, "rootfs", tt.path)
		var apiErr *client.Error
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest {
			t.Fatalf("%s: PATCH /drives/rootfs: %v, want a 400", tt.name, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(apiErr.Message, w) {
				t.Errorf("%s: fault message %q does not contain %q", tt.name, apiErr.Message, w)
			}
		}
	}
	v.Type("r") // ask the guest to read sector 0 again
	m, off = v.WaitFor(regexp.MustCompile(`testguest: blk watch reread capacity=(\d+) data=([0-9a-f]{32})\r?\n`), off, testGuestTimeout)
	if m[1] != "128" || m[2] != oldHex {
		t.Fatalf("after the failed swaps the guest reads capacity %s, sector 0 %s; want the placeholder's 128, %s", m[1], m[2], oldHex)
	}
	if strings.Contains(v.Output(), "blk watch changed") {
		t.Fatal("a failed swap reached the guest as a configuration change")
	}

	// The real image.
	if err := patchDrive(ctx, c, "rootfs", real); err != nil {
		t.Fatalf("PATCH /drives/rootfs to the real image: %v", err)
	}
	m, off = v.WaitFor(regexp.MustCompile(`testguest: blk watch changed gen=(\d+) isr=(\d) irq=(\w+)\r?\n`), off, testGuestTimeout)
	if gen, _ := strconv.Atoi(m[1]); gen != (gen0+1)&0xff || m[2] != "1" || m[3] != "ok" {
		t.Errorf("guest saw generation %s (was %d), ISR config bit %s, config interrupt %s; want %d, 1, ok", m[1], gen0, m[2], m[3], (gen0+1)&0xff)
	}
	m, off = v.WaitFor(regexp.MustCompile(`testguest: blk watch after capacity=(\d+) data=([0-9a-f]{32})\r?\n`), off, testGuestTimeout)
	if m[1] != "2048" || m[2] != newHex {
		t.Fatalf("after the swap the guest reads capacity %s, sector 0 %s; want 2048, %s", m[1], m[2], newHex)
	}
	v.WaitFor(regexp.MustCompile(`testguest: done`), off, testGuestTimeout)

	cfg, err := c.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Drives) != 1 || deref(cfg.Drives[0].PathOnHost) != real {
		t.Errorf("/vm/config drives %+v, want rootfs on %s", cfg.Drives, real)
	}
	// Without the test exit device the guest just halts: still Running.
	expectState(t, c, api.StateRunning)
	// The placeholder was let go; the real image is held.
	if b, err := blk.Open(blk.Config{ID: "after", Path: placeholder}); err != nil {
		t.Errorf("placeholder still locked after the swap: %v", err)
	} else {
		b.Close()
	}
	if _, err := blk.Open(blk.Config{ID: "after", Path: real}); err == nil || !strings.Contains(err.Error(), "in use by another VM") {
		t.Errorf("real image not locked by the VM: %v", err)
	}

	v.Signal(syscall.SIGTERM)
	if code := v.Wait(time.Minute); code != 130 {
		t.Errorf("exit status after SIGTERM %d, want 130", code)
	}
	requireGone(t, sock)
}
