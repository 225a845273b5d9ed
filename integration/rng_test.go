package integration

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
)

// TestVirtioRng boots the test guest with --entropy: it finds the
// virtio-rng function by PCI enumeration and reads random bytes through
// three requests, one of them a chain of two buffers, each filled whole.
func TestVirtioRng(t *testing.T) {
	code, out, stderr := runVMM(t, testGuestTimeout, "--kernel", filepath.Join(shared.testGuest, "testguest.elf"),
		"--debug-exit", "--entropy", "--cmdline", "rng=1 exit=9")
	if code != 9 {
		t.Fatalf("exit status %d, want 9\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
	}
	// The device is the machine's only PCI function: slot 1.
	checkLines(t, out, []string{
		"testguest: rng device=1",
		"testguest: rng bytes=4144 requests=3",
		"testguest: rng ok",
	})
}

// TestVirtioRngAPI adds the device with Firecracker's PUT /entropy; a rate
// limiter that limits is refused with a 400, before and without boot.
func TestVirtioRngAPI(t *testing.T) {
	ctx := context.Background()
	sock := filepath.Join(apiDir(t), "api.sock")
	v := Start(t, "--api-sock", sock, "--debug-exit")
	c := apiClient(t, sock)
	size, refill := int64(1024), int64(100)
	limited := api.Entropy{RateLimiter: &api.RateLimiter{Bandwidth: &api.TokenBucket{Size: &size, RefillTime: &refill}}}
	var ae *client.Error
	if err := c.Do(ctx, "PUT", "/entropy", limited, nil); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Fatalf("PUT /entropy with a bandwidth limit: %v, want a 400", err)
	}
	if err := c.PutBootSource(ctx, filepath.Join(shared.testGuest, "testguest.elf"), "", "rng=1 exit=10"); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, "PUT", "/entropy", api.Entropy{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if code := v.Wait(testGuestTimeout); code != 10 {
		t.Fatalf("exit status %d, want 10\nconsole:\n%s", code, v.Output())
	}
	checkLines(t, v.Output(), []string{"testguest: rng device=1", "testguest: rng ok"})
}
