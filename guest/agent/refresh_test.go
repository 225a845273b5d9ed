package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/internal/testenv"
	"golang.org/x/sys/unix"
)

// kernelRecorder stands in for the guest kernel: it records what Refresh
// asks of it, so no test sets the host's clock.
type kernelRecorder struct {
	mu         sync.Mutex
	entropy    [][]byte
	clock      []unix.Timespec
	entropyErr error
}

func (k *kernelRecorder) ops() kernelOps {
	return kernelOps{
		addEntropy: func(buf []byte) error {
			k.mu.Lock()
			defer k.mu.Unlock()
			k.entropy = append(k.entropy, bytes.Clone(buf))
			return k.entropyErr
		},
		setRealtime: func(ts unix.Timespec) error {
			k.mu.Lock()
			defer k.mu.Unlock()
			k.clock = append(k.clock, ts)
			return nil
		},
	}
}

// refreshClient serves an agent whose kernel is k on a Unix socket and
// returns a client of it.
func refreshClient(t *testing.T, k *kernelRecorder) *client.Client {
	t.Helper()
	a := newAgent("/proc/self/exe", t.TempDir(), nil, t.Logf)
	a.kernel = k.ops()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := listenOn("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go a.serve(l)
	t.Cleanup(func() { l.Close(); a.shutdown() })
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := client.New(ctx, nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRefresh(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)
	good := bytes.Repeat([]byte{0xa5}, 64)
	cases := []struct {
		name       string
		entropy    []byte
		now        time.Time
		entropyErr error
		code       string // "" for success
		calls      int    // kernel calls made
	}{
		{"ok", good, now, nil, "", 2},
		{"smallest", make([]byte, protocol.MinRefreshEntropy), now, nil, "", 2},
		{"largest", make([]byte, protocol.MaxRefreshEntropy), now, nil, "", 2},
		{"no entropy", nil, now, nil, protocol.CodeInvalidArgument, 0},
		{"too little entropy", make([]byte, protocol.MinRefreshEntropy-1), now, nil, protocol.CodeInvalidArgument, 0},
		{"too much entropy", make([]byte, protocol.MaxRefreshEntropy+1), now, nil, protocol.CodeInvalidArgument, 0},
		{"clock before 2020", good, time.Date(2019, 12, 31, 0, 0, 0, 0, time.UTC), nil, protocol.CodeInvalidArgument, 0},
		{"zero clock", good, time.Unix(0, 0), nil, protocol.CodeInvalidArgument, 0},
		{"entropy refused", good, now, unix.EPERM, protocol.CodeInternal, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := &kernelRecorder{entropyErr: tc.entropyErr}
			c := refreshClient(t, k)
			err := c.Refresh(context.Background(), tc.entropy, tc.now)
			if tc.code == "" && err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			if tc.code != "" && !protocol.IsCode(err, tc.code) {
				t.Fatalf("Refresh: %v, want code %s", err, tc.code)
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			if got := len(k.entropy) + len(k.clock); got != tc.calls {
				t.Fatalf("%d kernel calls (entropy %d, clock %d), want %d", got, len(k.entropy), len(k.clock), tc.calls)
			}
			if tc.calls >= 1 && !bytes.Equal(k.entropy[0], tc.entropy) {
				t.Errorf("entropy added %x, want %x", k.entropy[0], tc.entropy)
			}
			if tc.calls == 2 {
				if got := time.Unix(k.clock[0].Unix()); !got.Equal(tc.now) {
					t.Errorf("clock set to %v, want %v", got, tc.now)
				}
			}
		})
	}
}

func TestRandPoolInfo(t *testing.T) {
	buf := []byte{1, 2, 3, 4, 5}
	info := randPoolInfo(buf)
	if len(info) != randPoolInfoHeader+len(buf) {
		t.Fatalf("%d bytes, want %d", len(info), randPoolInfoHeader+len(buf))
	}
	if bits, size := binary.NativeEndian.Uint32(info[0:]), binary.NativeEndian.Uint32(info[4:]); bits != 40 || size != 5 {
		t.Errorf("entropy_count %d, buf_size %d; want 40, 5", bits, size)
	}
	if !bytes.Equal(info[randPoolInfoHeader:], buf) {
		t.Errorf("buffer %x, want %x", info[randPoolInfoHeader:], buf)
	}
}

// TestAddEntropy feeds the host kernel for real: adding credited
// randomness to a pool is harmless, and it is the one way to check the
// ioctl's number and layout against a kernel.
func TestAddEntropy(t *testing.T) {
	testenv.RequireRoot(t, "RNDADDENTROPY needs CAP_SYS_ADMIN")
	buf := make([]byte, protocol.MinRefreshEntropy)
	for i := range buf {
		buf[i] = byte(i * 37)
	}
	if err := addEntropy(buf); err != nil {
		t.Fatalf("addEntropy: %v", err)
	}
}

func TestSyncBlockDeviceRefuses(t *testing.T) {
	c := refreshClient(t, &kernelRecorder{})
	for _, tc := range []struct {
		path, code string
	}{
		{"/etc/passwd", protocol.CodeInvalidArgument},
		{"/dev/../etc/passwd", protocol.CodeInvalidArgument},
		{"dev/vda", protocol.CodeInvalidArgument},
		{"/dev/null", protocol.CodeInvalidArgument}, // a character device
		{"/dev/no-such-disk", protocol.CodeNotFound},
	} {
		err := c.SyncBlockDevice(context.Background(), tc.path, 4096)
		if !protocol.IsCode(err, tc.code) {
			t.Errorf("SyncBlockDevice(%s): %v, want code %s", tc.path, err, tc.code)
		}
	}
}
