package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/shim/snapcache"
)

// warmOptions are a fake world's options with a snapshot cache in dir and
// an image of 4096+3 bytes (the guest sees 4096).
func warmOptions(t *testing.T, w *fakeWorld, cacheDir string, args ...string) (Options, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	o := w.options(t, args...)
	if err := os.WriteFile(o.Image, make([]byte, 4096+3), 0o644); err != nil {
		t.Fatal(err)
	}
	o.Snapshots = &snapcache.Cache{Dir: cacheDir}
	o.Verbose = true
	var stdout, stderr bytes.Buffer
	o.Stdout, o.Stderr = &stdout, &stderr
	return o, &stdout, &stderr
}

func (w *fakeWorld) callList() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.calls...)
}

// TestWarmRuns: the first run boots on the placeholder, snapshots, and
// swaps the image in; the second restores a clone, refreshes it before
// anything else, and swaps its image in; both run the command.
func TestWarmRuns(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "snapshots")
	w1 := newFakeWorld(t)
	o, stdout, stderr := warmOptions(t, w1, cacheDir, "echo", "first")
	key, err := SnapshotKey(o)
	if err != nil {
		t.Fatal(err)
	}
	code, err := Run(context.Background(), o)
	if err != nil || code != 0 || stdout.String() != "first\n" {
		t.Fatalf("first run: %d, %v, stdout %q, stderr %q", code, err, stdout, stderr)
	}
	want := []string{
		"PutBootSource",
		"PutDrive rootfs " + snapcache.PlaceholderFile + " ro=true",
		"InstanceStart",
		"Pause",
		"CreateSnapshot " + snapcache.StateFile + " " + snapcache.MemFile,
		"Resume",
		"PatchDrive rootfs " + filepath.Base(o.Image),
		"SyncBlockDevice /dev/vda 4096",
	}
	if got := w1.callList(); !reflect.DeepEqual(got, want) {
		t.Errorf("first run's calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(stderr.String(), "saved snapshot "+key) {
		t.Errorf("first run's notes %q do not say it saved %s", stderr, key)
	}
	if _, ok := (snapcache.Cache{Dir: cacheDir}).Lookup(key); !ok {
		t.Fatal("no cache entry after the first run")
	}
	w1.checkCleanedUp(t, o)

	w2 := newFakeWorld(t)
	o2, stdout, stderr := warmOptions(t, w2, cacheDir, "echo", "second")
	o2.Kernel, o2.Initrd = o.Kernel, o.Initrd // the same guest
	code, err = Run(context.Background(), o2)
	if err != nil || code != 0 || stdout.String() != "second\n" {
		t.Fatalf("second run: %d, %v, stdout %q, stderr %q", code, err, stdout, stderr)
	}
	want = []string{
		"LoadSnapshot " + snapcache.StateFile + " " + snapcache.MemFile + " resume=true",
		fmt.Sprintf("Refresh %d", refreshEntropy),
		"PatchDrive rootfs " + filepath.Base(o2.Image),
		"SyncBlockDevice /dev/vda 4096",
	}
	if got := w2.callList(); !reflect.DeepEqual(got, want) {
		t.Errorf("second run's calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(stderr.String(), "restored from snapshot "+key) {
		t.Errorf("second run's notes %q do not say it restored %s", stderr, key)
	}
	w2.mu.Lock()
	if len(w2.created) != 1 || !w2.created[0].Rootfs.Overlay {
		t.Errorf("containers %+v, want one on an overlay", w2.created)
	}
	vsock := w2.vsock
	w2.mu.Unlock()
	if filepath.Dir(filepath.Dir(vsock)) != o2.TempDir {
		t.Errorf("the clone's vsock %s is not in its run directory under %s", vsock, o2.TempDir)
	}
	w2.checkCleanedUp(t, o2)
}

// TestWarmRunStaleSnapshot: a snapshot the VMM refuses is replaced: the
// run warns, boots, saves a new one, and runs the command.
func TestWarmRunStaleSnapshot(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "snapshots")
	w := newFakeWorld(t)
	w.loadFail = true
	o, stdout, stderr := warmOptions(t, w, cacheDir, "echo", "ok")
	key, err := SnapshotKey(o)
	if err != nil {
		t.Fatal(err)
	}
	c := snapcache.Cache{Dir: cacheDir}
	if _, _, err := c.Build(context.Background(), key, func(dir string) error {
		for _, f := range []string{snapcache.StateFile, snapcache.MemFile} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("stale"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	code, err := Run(context.Background(), o)
	if err != nil || code != 0 || stdout.String() != "ok\n" {
		t.Fatalf("run: %d, %v, stdout %q, stderr %q", code, err, stdout, stderr)
	}
	if !strings.Contains(stderr.String(), "restoring snapshot "+key+" failed, booting instead") {
		t.Errorf("stderr %q has no warning", stderr)
	}
	got := w.callList()
	if len(got) < 5 || !strings.HasPrefix(got[0], "LoadSnapshot") || !slices.Contains(got, "InstanceStart") || !slices.Contains(got, "CreateSnapshot state memory") {
		t.Errorf("calls %q: want a failed load, then a boot that saves a snapshot", got)
	}
	e, ok := c.Lookup(key)
	if !ok {
		t.Fatal("no entry after the rebuild")
	}
	if b, _ := os.ReadFile(e.State()); string(b) != "snapshot" {
		t.Errorf("entry holds %q, want the new snapshot", b)
	}
	w.checkCleanedUp(t, o)
}

// TestColdRunsWithoutCache: no cache, a tap, or a writable image: the run
// boots on the image and takes no snapshot.
func TestColdRunsWithoutCache(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(o *Options)
	}{
		{"no cache", func(o *Options) { o.Snapshots = nil }},
		{"writable image", func(o *Options) { o.ImageWritable = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newFakeWorld(t)
			o, stdout, _ := warmOptions(t, w, filepath.Join(t.TempDir(), "snapshots"), "echo", "x")
			tc.setup(&o)
			if code, err := Run(context.Background(), o); err != nil || code != 0 || stdout.String() != "x\n" {
				t.Fatalf("run: %d, %v, %q", code, err, stdout)
			}
			got := w.callList()
			want := []string{"PutBootSource", fmt.Sprintf("PutDrive rootfs %s ro=%v", filepath.Base(o.Image), !o.ImageWritable), "InstanceStart"}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("calls %q, want %q", got, want)
			}
		})
	}
}

// TestWarmRunImageFailureKeepsSnapshot: an image the restored clone can't
// attach fails the run with that reason, and neither drops the snapshot
// nor boots (a boot would fail the same way).
func TestWarmRunImageFailureKeepsSnapshot(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "snapshots")
	w := newFakeWorld(t)
	o, _, _ := warmOptions(t, w, cacheDir, "true")
	if code, err := Run(context.Background(), o); err != nil || code != 0 {
		t.Fatalf("first run: %d, %v", code, err)
	}
	key, err := SnapshotKey(o)
	if err != nil {
		t.Fatal(err)
	}
	c := snapcache.Cache{Dir: cacheDir}
	before, ok := c.Lookup(key)
	if !ok {
		t.Fatal("the first run saved no snapshot")
	}
	w2 := newFakeWorld(t)
	w2.patchFail = true
	o2, _, stderr := warmOptions(t, w2, cacheDir, "true")
	o2.Kernel, o2.Initrd = o.Kernel, o.Initrd // the same guest
	if _, err := Run(context.Background(), o2); err == nil || !strings.Contains(err.Error(), "locked by another VM") {
		t.Fatalf("run with an image that can't be attached: %v, want the image's error", err)
	}
	if got := w2.callList(); slices.Contains(got, "InstanceStart") {
		t.Errorf("calls %q: the run booted after the image failed", got)
	}
	if strings.Contains(stderr.String(), "booting instead") {
		t.Errorf("stderr %q: the image's failure was taken for the snapshot's", stderr)
	}
	after, ok := c.Lookup(key)
	if !ok || after.State() != before.State() {
		t.Fatal("the snapshot was dropped for the image's failure")
	}
	if st1, st2 := statOf(t, before.State()), statOf(t, after.State()); !os.SameFile(st1, st2) {
		t.Error("the snapshot was rebuilt for the image's failure")
	}
	w2.checkCleanedUp(t, o2)
}

// TestWarmRunCacheFailureBoots: a cache that can't be used (here its lock
// file is a directory) costs the snapshot, not the run.
func TestWarmRunCacheFailureBoots(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "snapshots")
	w := newFakeWorld(t)
	o, stdout, stderr := warmOptions(t, w, cacheDir, "echo", "ran")
	key, err := SnapshotKey(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(cacheDir, key+".lock"), 0o755); err != nil {
		t.Fatal(err)
	}
	if code, err := Run(context.Background(), o); err != nil || code != 0 || stdout.String() != "ran\n" {
		t.Fatalf("run: %d, %v, stdout %q, stderr %q", code, err, stdout, stderr)
	}
	if !strings.Contains(stderr.String(), "booting without a snapshot") {
		t.Errorf("stderr %q: no warning that the cache failed", stderr)
	}
	if got := w.callList(); !slices.Contains(got, "InstanceStart") || slices.Contains(got, "CreateSnapshot state memory") {
		t.Errorf("calls %q: want a plain boot", got)
	}
	w.checkCleanedUp(t, o)
}

func statOf(t *testing.T, path string) os.FileInfo {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestWarmRunRedialsAfterLateReset: a connection the guest's late vsock
// transport reset ends under the first agent call is dialled again and
// the call repeated; the run neither fails nor drops its snapshot.
func TestWarmRunRedialsAfterLateReset(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "snapshots")
	w := newFakeWorld(t)
	o, _, _ := warmOptions(t, w, cacheDir, "true")
	if code, err := Run(context.Background(), o); err != nil || code != 0 {
		t.Fatalf("first run: %d, %v", code, err)
	}
	w2 := newFakeWorld(t)
	w2.resetOnRefresh = true
	o2, stdout, stderr := warmOptions(t, w2, cacheDir, "echo", "after")
	o2.Kernel, o2.Initrd = o.Kernel, o.Initrd // the same guest
	if code, err := Run(context.Background(), o2); err != nil || code != 0 || stdout.String() != "after\n" {
		t.Fatalf("run: %d, %v, stdout %q, stderr %q", code, err, stdout, stderr)
	}
	got := w2.callList()
	want := []string{"Refresh reset", fmt.Sprintf("Refresh %d", refreshEntropy)}
	i := slices.Index(got, want[0])
	if i < 0 || i+1 >= len(got) || got[i+1] != want[1] || slices.Contains(got, "InstanceStart") {
		t.Errorf("calls %q: want a reset Refresh retried on a new connection, and no boot", got)
	}
	w2.checkCleanedUp(t, o2)
}

// TestWarmRunPrunesOldSnapshots: a run that saves a snapshot deletes the
// ones no run has used for snapshotMaxAge (another kernel's, say).
func TestWarmRunPrunesOldSnapshots(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "snapshots")
	c := snapcache.Cache{Dir: cacheDir}
	oldEntry, _, err := c.Build(context.Background(), "0ddba11", func(dir string) error {
		for _, f := range []string{snapcache.StateFile, snapcache.MemFile} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("old"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	long := time.Now().Add(-snapshotMaxAge - time.Hour)
	if err := os.Chtimes(oldEntry.Dir, long, long); err != nil {
		t.Fatal(err)
	}
	w := newFakeWorld(t)
	o, _, stderr := warmOptions(t, w, cacheDir, "true")
	if code, err := Run(context.Background(), o); err != nil || code != 0 {
		t.Fatalf("run: %d, %v", code, err)
	}
	if _, ok := c.Lookup("0ddba11"); ok {
		t.Errorf("the unused snapshot is still in the cache; stderr %q", stderr)
	}
	key, _ := SnapshotKey(o)
	if _, ok := c.Lookup(key); !ok {
		t.Error("the run's own snapshot is missing")
	}
}
