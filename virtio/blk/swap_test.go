package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// newImageOf writes an image of n sectors whose sector s is filled with
// fill(s).
func newImageOf(t testing.TB, name string, n int, fill func(s int) byte) string {
	t.Helper()
	img := make([]byte, n*SectorSize)
	for s := range n {
		for i := range SectorSize {
			img[s*SectorSize+i] = fill(s)
		}
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// newFill is the pattern of the images swapped in: distinct from newImage's.
func newFill(s int) byte { return byte(s) | 0x80 }

// capacity reads the capacity field through the configuration space.
func capacity(b *Block) uint64 {
	var c [8]byte
	b.ReadConfig(cfgCapacity, c[:])
	return binary.LittleEndian.Uint64(c[:])
}

// readSector0 reads sector 0 through the queue.
func (h *harness) readSector0() []byte {
	h.t.Helper()
	r := h.submit(typeIn, 0, nil, SectorSize)
	h.run(1)
	h.used(1)
	if st := h.statusOf(r); st != StatusOK {
		h.t.Fatalf("read sector 0: status %d", st)
	}
	return h.d.Read(r.data, SectorSize)
}

// holdImage opens path as another VM would, until the test ends.
func holdImage(t *testing.T, path string, ro bool) {
	t.Helper()
	b, err := Open(Config{ID: "other-vm", Path: path, ReadOnly: ro})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
}

func TestSwap(t *testing.T) { forEachEngine(t, testSwap) }

func testSwap(t *testing.T, engine Engine) {
	tests := []struct {
		name string
		ro   bool
		// target prepares and returns the path to swap to; old is the
		// image in service.
		target      func(t *testing.T, old string) string
		wantErr     string // "" for success
		wantSectors uint64
		wantSector0 byte // first byte of sector 0 after the swap
	}{
		{
			name:        "grow",
			target:      func(t *testing.T, _ string) string { return newImageOf(t, "big.img", 1024, newFill) },
			wantSectors: 1024, wantSector0: 0x80,
		},
		{
			name:        "shrink",
			target:      func(t *testing.T, _ string) string { return newImageOf(t, "small.img", 16, newFill) },
			wantSectors: 16, wantSector0: 0x80,
		},
		{
			name: "same image grown on the host",
			target: func(t *testing.T, old string) string {
				if err := os.Truncate(old, 300*SectorSize); err != nil {
					t.Fatal(err)
				}
				return old
			},
			wantSectors: 300, wantSector0: 0,
		},
		{
			name:        "missing file keeps the old image",
			target:      func(t *testing.T, _ string) string { return filepath.Join(t.TempDir(), "nope.img") },
			wantErr:     "open image",
			wantSectors: testSectors, wantSector0: 0,
		},
		{
			name: "image used by another VM keeps the old image",
			target: func(t *testing.T, _ string) string {
				p := newImageOf(t, "busy.img", 64, newFill)
				holdImage(t, p, false)
				return p
			},
			wantErr:     "is in use by another VM",
			wantSectors: testSectors, wantSector0: 0,
		},
		{
			name: "writable drive to an image shared read-only",
			target: func(t *testing.T, _ string) string {
				p := newImageOf(t, "shared.img", 64, newFill)
				holdImage(t, p, true)
				return p
			},
			wantErr:     "is in use by another VM",
			wantSectors: testSectors, wantSector0: 0,
		},
		{
			name:        "read-only drive",
			ro:          true,
			target:      func(t *testing.T, _ string) string { return newImageOf(t, "ro.img", 64, newFill) },
			wantSectors: 64, wantSector0: 0x80,
		},
		{
			name: "read-only drive to an image shared read-only",
			ro:   true,
			target: func(t *testing.T, _ string) string {
				p := newImageOf(t, "shared-ro.img", 64, newFill)
				holdImage(t, p, true)
				return p
			},
			wantSectors: 64, wantSector0: 0x80,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := newImage(t)
			h := newHarness(t, Config{Engine: engine, ID: "swap", Path: old, ReadOnly: tt.ro})
			var changes atomic.Int32
			h.b.BindConfigChange(func() { changes.Add(1) })
			target := tt.target(t, old)

			err := h.b.Swap(target)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "virtio-blk swap: swap to "+target+": ") {
					t.Fatalf("Swap: %v, want an error naming the device and %s and saying %q", err, target, tt.wantErr)
				}
				if h.b.Path() != old {
					t.Errorf("path in service %s after a failed swap, want %s", h.b.Path(), old)
				}
			} else {
				if err != nil {
					t.Fatalf("Swap: %v", err)
				}
				if h.b.Path() != target {
					t.Errorf("path in service %s, want %s", h.b.Path(), target)
				}
			}
			wantChanges := int32(1)
			if tt.wantErr != "" {
				wantChanges = 0
			}
			if n := changes.Load(); n != wantChanges {
				t.Errorf("%d configuration changes signalled, want %d", n, wantChanges)
			}
			if s, c := h.b.Sectors(), capacity(h.b); s != tt.wantSectors || c != tt.wantSectors {
				t.Errorf("sectors %d, config capacity %d, want %d", s, c, tt.wantSectors)
			}
			if got := h.readSector0(); !bytes.Equal(got, bytes.Repeat([]byte{tt.wantSector0}, SectorSize)) {
				t.Errorf("sector 0 reads %#x..., want %#x", got[:4], tt.wantSector0)
			}
			if f := h.b.Features(); (f&FeatureRO != 0) != tt.ro {
				t.Errorf("features %#x: read-only bit changed", f)
			}
			if tt.ro {
				checkStillReadOnly(t, h, h.b.Path())
			}
		})
	}
}

// checkStillReadOnly checks that the image in service is open read-only
// and that the device refuses a write to it.
func checkStillReadOnly(t *testing.T, h *harness, path string) {
	t.Helper()
	h.b.io.RLock()
	fl, err := unix.FcntlInt(h.b.file.Fd(), unix.F_GETFL, 0)
	h.b.io.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Errorf("image opened with flags %#x, want O_RDONLY", fl)
	}
	before, _ := os.ReadFile(path)
	w := h.submit(typeOut, 0, bytes.Repeat([]byte{0x11}, SectorSize), 0)
	h.run(1)
	h.used(1)
	if st := h.statusOf(w); st != StatusIOErr {
		t.Errorf("write after the swap: status %d, want IOERR", st)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("read-only image was written after the swap")
	}
}

// TestSwapKeepsEarlierWrites checks that what the guest wrote before the
// swap is in the old image, and the new image only sees later writes.
func TestSwapKeepsEarlierWrites(t *testing.T) { forEachEngine(t, testSwapKeepsEarlierWrites) }

func testSwapKeepsEarlierWrites(t *testing.T, engine Engine) {
	old := newImage(t)
	h := newHarness(t, Config{Engine: engine, ID: "w", Path: old})
	before := bytes.Repeat([]byte{0xab}, 2*SectorSize)
	w := h.submit(typeOut, 7, before, 0)
	fl := h.submit(typeFlush, 0, nil, 0)
	h.run(2)
	h.used(2)
	if h.statusOf(w) != StatusOK || h.statusOf(fl) != StatusOK {
		t.Fatalf("write/flush before the swap: status %d/%d", h.statusOf(w), h.statusOf(fl))
	}
	next := newImageOf(t, "next.img", 64, newFill)
	if err := h.b.Swap(next); err != nil {
		t.Fatal(err)
	}
	after := bytes.Repeat([]byte{0xcd}, SectorSize)
	w2 := h.submit(typeOut, 3, after, 0)
	h.run(1)
	h.used(1)
	if h.statusOf(w2) != StatusOK {
		t.Fatalf("write after the swap: status %d", h.statusOf(w2))
	}
	oldImg, _ := os.ReadFile(old)
	newImg, _ := os.ReadFile(next)
	if !bytes.Equal(oldImg[7*SectorSize:9*SectorSize], before) {
		t.Error("the write done before the swap is not in the old image")
	}
	if !bytes.Equal(oldImg[3*SectorSize:4*SectorSize], sectorBytes(3, 1)) {
		t.Error("a write done after the swap reached the old image")
	}
	if !bytes.Equal(newImg[3*SectorSize:4*SectorSize], after) {
		t.Error("the write done after the swap is not in the new image")
	}
	if newImg[7*SectorSize] != newFill(7) {
		t.Error("the write done before the swap reached the new image")
	}
	// The old image's lock is released: another VM may take it now.
	b2, err := Open(Config{Engine: engine, ID: "next-vm", Path: old})
	if err != nil {
		t.Fatalf("old image still locked after the swap: %v", err)
	}
	b2.Close()
}

// TestSwapDuringIO swaps while requests are in flight: each one must be
// served entirely by one image, and each write must land, whole, in
// exactly one of them.
func TestSwapDuringIO(t *testing.T) { forEachEngine(t, testSwapDuringIO) }

func testSwapDuringIO(t *testing.T, engine Engine) {
	const (
		reqSectors = 4
		reads      = 8
		writes     = 8
		writeBase  = 128
	)
	old := newImage(t)
	next := newImageOf(t, "next.img", testSectors, newFill)
	h := newHarness(t, Config{Engine: engine, ID: "io", Path: old, Workers: 4})
	var rs, ws []req
	for i := range reads {
		rs = append(rs, h.submit(typeIn, uint64(i*reqSectors), nil, reqSectors*SectorSize))
	}
	for i := range writes {
		ws = append(ws, h.submit(typeOut, uint64(writeBase+i*reqSectors), bytes.Repeat([]byte{byte(0x40 + i)}, reqSectors*SectorSize), 0))
	}
	var wg sync.WaitGroup
	var swapErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		swapErr = h.b.Swap(next)
	}()
	h.run(reads + writes)
	wg.Wait()
	if swapErr != nil {
		t.Fatal(swapErr)
	}
	h.used(reads + writes)
	oldFill := func(s int) byte { return byte(s) }
	for i, r := range rs {
		if st := h.statusOf(r); st != StatusOK {
			t.Fatalf("read %d: status %d", i, st)
		}
		got := h.d.Read(r.data, reqSectors*SectorSize)
		if !servedBy(got, i*reqSectors, oldFill) && !servedBy(got, i*reqSectors, newFill) {
			t.Errorf("read %d was not served by exactly one image: %x...", i, got[:8])
		}
	}
	oldImg, _ := os.ReadFile(old)
	newImg, _ := os.ReadFile(next)
	for i, w := range ws {
		if st := h.statusOf(w); st != StatusOK {
			t.Fatalf("write %d: status %d", i, st)
		}
		off := (writeBase + i*reqSectors) * SectorSize
		want := bytes.Repeat([]byte{byte(0x40 + i)}, reqSectors*SectorSize)
		inOld := bytes.Equal(oldImg[off:off+len(want)], want)
		inNew := bytes.Equal(newImg[off:off+len(want)], want)
		untouchedOld := servedBy(oldImg[off:off+len(want)], writeBase+i*reqSectors, oldFill)
		untouchedNew := servedBy(newImg[off:off+len(want)], writeBase+i*reqSectors, newFill)
		if !(inOld && untouchedNew) && !(inNew && untouchedOld) {
			t.Errorf("write %d: in old image %v, in new image %v; want it whole in exactly one", i, inOld, inNew)
		}
	}
}

// servedBy reports whether data is what an image filled with fill holds
// from sector first on.
func servedBy(data []byte, first int, fill func(int) byte) bool {
	for i, c := range data {
		if c != fill(first+i/SectorSize) {
			return false
		}
	}
	return true
}

// TestSwapAfterClose checks a closed device refuses a swap.
func TestSwapAfterClose(t *testing.T) {
	b, err := Open(Config{ID: "c", Path: newImage(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	next := newImageOf(t, "next.img", 8, newFill)
	if err := b.Swap(next); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Swap after Close: %v, want an error", err)
	}
	// The refused swap left the target unlocked.
	b2, err := Open(Config{ID: "d", Path: next})
	if err != nil {
		t.Fatal(err)
	}
	b2.Close()
}

// TestSwapMissingFileError checks the error wraps the cause.
func TestSwapMissingFileError(t *testing.T) {
	b, err := Open(Config{ID: "m", Path: newImage(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Swap(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Swap to a missing file: %v, want it to wrap ErrNotExist", err)
	}
}
