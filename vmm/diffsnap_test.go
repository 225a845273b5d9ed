package vmm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/kvm"
	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/snapshot"
	"github.com/govmm/vmm/virtio"
)

// TestDiffMemoryRebuildsRAM: a full memory file, then a diff of the pages
// written since (by the VMM, recorded by memory, and by the guest, which
// KVM's log would give: here a bitmap joined the way takeDirty joins it),
// merged with snapshot.Rebase, maps back as exactly the RAM of the moment
// of the diff, pages changed to zero included.
func TestDiffMemoryRebuildsRAM(t *testing.T) {
	page := uint64(os.Getpagesize())
	layout := []memory.Layout{{GuestAddr: 0, Size: 2 << 20}, {GuestAddr: 0x1_0000_0000, Size: 1 << 20}}
	g, err := memory.New(layout, memory.Options{TrackDirty: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	write := func(addr uint64, b []byte) {
		t.Helper()
		if err := g.WriteAt(b, addr); err != nil {
			t.Fatal(err)
		}
	}
	for p := range uint64(16) {
		write(p*page, bytes.Repeat([]byte{byte(p + 1)}, int(page)))
	}
	write(0x1_0000_0000+page, []byte("high RAM before"))
	dir := t.TempDir()
	base, diff := filepath.Join(dir, "base"), filepath.Join(dir, "diff")
	if err := snapshot.WriteFileAtomic(base, g.Dump); err != nil {
		t.Fatal(err)
	}
	g.TakeDirty() // the full snapshot restarts the record

	write(2*page+100, []byte("changed by a device"))
	if err := g.Zero(5*page, page); err != nil { // was data, now zero
		t.Fatal(err)
	}
	write(100*page, []byte("was a hole"))
	write(0x1_0000_0000+page, []byte("high RAM after "))
	s, err := g.Slice(200*page, 8) // an io_uring read would land here
	if err != nil {
		t.Fatal(err)
	}
	copy(s, "io_uring")
	// The guest writes straight to its RAM: only KVM's log sees that.
	guestLog := g.NewDirtyBitmaps()
	low := g.Regions()[0].Host
	copy(low[7*page:], "guest wrote this")
	guestLog[0][0] |= 1 << 7
	clear(low[9*page : 10*page])
	guestLog[0][0] |= 1 << 9

	dirty := g.TakeDirty()
	for i := range dirty {
		if err := orBitmap(dirty[i], guestLog[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := snapshot.WriteFileAtomic(diff, func(f *os.File) error { return g.DumpDirty(f, dirty) }); err != nil {
		t.Fatal(err)
	}
	if err := snapshot.Rebase(base, diff); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := memory.NewFromFile(layout, f, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want, got := g.Regions(), r.Regions()
	for i := range want {
		for off := 0; off < len(want[i].Host); off += int(page) {
			if !bytes.Equal(want[i].Host[off:off+int(page)], got[i].Host[off:off+int(page)]) {
				t.Errorf("region %d page %d differs after the rebase", i, off/int(page))
			}
		}
	}
}

// TestMarkUsedRings: every enabled queue's used ring is in a diff, the
// pages it spans and no others; a disabled queue's, or one outside RAM,
// is not.
func TestMarkUsedRings(t *testing.T) {
	page := uint64(os.Getpagesize())
	mem, err := memory.New([]memory.Layout{{GuestAddr: 0, Size: 1 << 20}}, memory.Options{TrackDirty: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	m := &Machine{mem: mem}
	st := &pciSnapshot{Functions: []functionState{
		{Kind: "blk", ID: "a", Transport: virtio.PCIState{Queues: []virtio.QueueState{
			{Size: 256, Enabled: true, DeviceAddr: 3*page - 4}, // 6+8*256 bytes: pages 2 and 3
			{Size: 256, Enabled: false, DeviceAddr: 10 * page},
		}}},
		{Kind: "net", ID: "b", Transport: virtio.PCIState{Queues: []virtio.QueueState{
			{Size: 8, Enabled: true, DeviceAddr: 20 * page},
			{Size: 8, Enabled: true, DeviceAddr: 1 << 40},
		}}},
	}}
	dirty := mem.NewDirtyBitmaps()
	if err := m.markUsedRings(dirty, st); err != nil {
		t.Fatal(err)
	}
	if got, want := dirty[0][0], uint64(1<<2|1<<3|1<<20); got != want || slices.ContainsFunc(dirty[0][1:], func(w uint64) bool { return w != 0 }) {
		t.Errorf("dirty bitmap %#x, want %#x", dirty[0], want)
	}
	if err := m.markUsedRings(dirty, nil); err != nil {
		t.Errorf("a machine without PCI: %v", err)
	}
}

func TestOrBitmap(t *testing.T) {
	dst := []uint64{1, 0}
	if err := orBitmap(dst, []uint64{2, 1 << 63}); err != nil || !slices.Equal(dst, []uint64{3, 1 << 63}) {
		t.Errorf("orBitmap: %v, %v", dst, err)
	}
	if err := orBitmap(dst, []uint64{1}); err == nil {
		t.Error("bitmaps of different sizes joined")
	}
}

// TestSnapshotDiffNeedsTracking: a diff of a machine that doesn't track
// is refused for that reason, before anything else.
func TestSnapshotDiffNeedsTracking(t *testing.T) {
	m := newMachine(Config{}, nil)
	dir := t.TempDir()
	if err := m.SnapshotDiff(filepath.Join(dir, "s"), filepath.Join(dir, "m")); !errors.Is(err, ErrNoDirtyTracking) {
		t.Errorf("SnapshotDiff without tracking = %v, want ErrNoDirtyTracking", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused diff left %d files", len(entries))
	}
}

// TestRestoredConfigTracksDirty: track_dirty_pages of a load reaches the
// restored machine's config, which decides the slots' flags.
func TestRestoredConfigTracksDirty(t *testing.T) {
	saved := machineState{Version: machineStateVersion, Config: savedConfig{Kernel: "/k", MemSize: 128 << 20, CPUs: 1}, VCPUs: make([]kvm.VCPUState, 1)}
	for _, on := range []bool{false, true} {
		cfg, err := saved.config(RestoreConfig{TrackDirtyPages: on})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.TrackDirtyPages != on {
			t.Errorf("TrackDirtyPages %v after a restore asking %v", cfg.TrackDirtyPages, on)
		}
	}
}

// TestDiffSnapshotTestGuest: the test guest (snap=1: a line counter in
// RAM) booted with dirty page tracking; a full snapshot, more lines, a
// diff snapshot; the diff merged onto the full memory file restores the
// later guest, which counts on from the diff's count.
func TestDiffSnapshotTestGuest(t *testing.T) {
	dir := buildTestGuest(t)
	out := &syncBuf{}
	inR, inW := io.Pipe()
	defer inW.Close()
	m, err := New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 1,
		Cmdline: "snap=1 exit=7", DebugExit: true, ConsoleOut: out, ConsoleIn: inR, TrackDirtyPages: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Exit, 1)
	go func() { done <- m.Run(ctx) }()
	waitOutput(t, out, "testguest: snap ready")
	line := func(w io.Writer, o *syncBuf, count string) {
		t.Helper()
		if _, err := io.WriteString(w, "x\r"); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, o, "testguest: snap count="+count+" pattern=ok")
	}
	line(inW, out, "1")
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	state1, mem1 := filepath.Join(dir, "state1"), filepath.Join(dir, "mem1")
	if err := m.Snapshot(state1, mem1); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	line(inW, out, "2")
	line(inW, out, "3")
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	state2, diff2 := filepath.Join(dir, "state2"), filepath.Join(dir, "diff2")
	if err := m.SnapshotDiff(state2, diff2); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	m.Close()

	used := func(path string) int64 {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	if full, d := used(mem1), used(diff2); d == 0 || d >= full {
		t.Errorf("the diff uses %d bytes on disk, the full memory file %d: want some, and fewer", d, full)
	}
	if err := snapshot.Rebase(mem1, diff2); err != nil {
		t.Fatal(err)
	}

	out2 := &syncBuf{}
	inR2, inW2 := io.Pipe()
	defer inW2.Close()
	r, err := Restore(RestoreConfig{StatePath: state2, MemPath: mem1, TrackDirtyPages: true, Host: Config{ConsoleOut: out2, ConsoleIn: inR2}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Config().TrackDirtyPages {
		t.Error("the restored machine does not track dirty pages")
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan Exit, 1)
	go func() { done2 <- r.Run(ctx2) }()
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	line(inW2, out2, "4")
	if strings.Contains(out2.String(), "pattern=BAD") {
		t.Fatalf("the merged memory lost the guest's pattern: %s", out2.String())
	}
	// Tracking restarted with the restore: another diff can be taken.
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := r.SnapshotDiff(filepath.Join(dir, "state3"), filepath.Join(dir, "diff3")); err != nil {
		t.Fatal(err)
	}
	cancel2()
	select {
	case <-done2:
	case <-time.After(time.Minute):
		t.Fatal("the restored machine did not stop")
	}
}
