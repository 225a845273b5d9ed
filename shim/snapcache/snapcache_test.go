package snapcache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBuild writes an entry's two files, as a run's snapshot does.
func fakeBuild(content string) func(dir string) error {
	return func(dir string) error {
		for _, f := range []string{StateFile, MemFile} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestKey(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	for _, f := range []string{kernel, initrd} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := Inputs{Files: []string{kernel, initrd}, Params: []string{"mem=256", "cpus=1"}}
	k0, err := Key(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkKey(k0); err != nil {
		t.Fatalf("Key made %q: %v", k0, err)
	}
	if again, _ := Key(base); again != k0 {
		t.Fatalf("same inputs, keys %s and %s", k0, again)
	}
	keys := map[string]string{k0: "base"}
	differ := func(name string, in Inputs) {
		t.Helper()
		k, err := Key(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if prev, dup := keys[k]; dup {
			t.Errorf("%s has the key of %s", name, prev)
		}
		keys[k] = name
	}
	differ("other memory", Inputs{Files: base.Files, Params: []string{"mem=512", "cpus=1"}})
	differ("other CPUs", Inputs{Files: base.Files, Params: []string{"mem=256", "cpus=2"}})
	differ("params moved between fields", Inputs{Files: base.Files, Params: []string{"mem=256cpus=1"}})
	differ("no initrd", Inputs{Files: []string{kernel, ""}, Params: base.Params})
	// A rebuilt kernel: same name, new content and time.
	if err := os.WriteFile(kernel, []byte("rebuilt"), 0o644); err != nil {
		t.Fatal(err)
	}
	differ("rebuilt kernel", base)
	// Replaced by rename: a new inode even with the same size and time.
	st, _ := os.Stat(kernel)
	repl := kernel + ".new"
	if err := os.WriteFile(repl, []byte("REBUILT"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(repl, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(repl, kernel); err != nil {
		t.Fatal(err)
	}
	differ("kernel replaced", base)
	if _, err := Key(Inputs{Files: []string{filepath.Join(dir, "missing")}}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want not-exist", err)
	}
}

func TestBuildThenLookup(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	const key = "0123abcd"
	if _, ok := c.Lookup(key); ok {
		t.Fatal("empty cache has an entry")
	}
	e, built, err := c.Build(context.Background(), key, fakeBuild("one"))
	if err != nil || !built {
		t.Fatalf("Build: %v, built %v", err, built)
	}
	got, ok := c.Lookup(key)
	if !ok || got.Key != e.Key || got.Dir != e.Dir || !os.SameFile(got.state, e.state) {
		t.Fatalf("Lookup: %+v %v, want %+v", got, ok, e)
	}
	if b, _ := os.ReadFile(e.State()); string(b) != "one" {
		t.Errorf("state %q", b)
	}
	// A second Build finds it and does not call the builder.
	_, built, err = c.Build(context.Background(), key, func(string) error {
		t.Error("builder called for an entry in place")
		return nil
	})
	if err != nil || built {
		t.Errorf("second Build: %v, built %v", err, built)
	}
	// Nothing but the entry, its lock, and no temporary directories.
	names, _ := filepath.Glob(filepath.Join(c.Dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(c.Dir, ".*"))
	if len(names) != 2 || len(hidden) != 0 {
		t.Errorf("cache holds %v %v, want the entry and its lock", names, hidden)
	}
}

func TestBuildFailureLeavesNothing(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	const key = "feed"
	boom := errors.New("boot failed")
	var seen string
	_, _, err := c.Build(context.Background(), key, func(dir string) error {
		seen = dir
		_ = fakeBuild("half")(dir)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Build: %v, want %v", err, boom)
	}
	if _, ok := c.Lookup(key); ok {
		t.Error("a failed build left an entry")
	}
	if _, err := os.Stat(seen); !os.IsNotExist(err) {
		t.Errorf("the build directory %s is still there (%v)", seen, err)
	}
	// A build that died (no cleanup) leaves a directory the next build
	// of the key removes.
	dead := filepath.Join(c.Dir, ".build-"+key+"-dead")
	if err := os.Mkdir(dead, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Build(context.Background(), key, fakeBuild("two")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("leftover %s not removed (%v)", dead, err)
	}
}

// TestConcurrentFirstRuns races first runs of one key: one builds, the
// others wait for it and use its entry.
func TestConcurrentFirstRuns(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	const key = "abc123"
	const runs = 4
	var builds atomic.Int32
	var wg sync.WaitGroup
	entries := make([]Entry, runs)
	errs := make([]error, runs)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			entries[i], _, errs[i] = c.Build(context.Background(), key, func(dir string) error {
				builds.Add(1)
				time.Sleep(3 * lockPoll) // a boot takes a while: the others must wait
				return fakeBuild("winner")(dir)
			})
		}()
	}
	wg.Wait()
	if n := builds.Load(); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}
	for i := range runs {
		if want := c.entry(key); errs[i] != nil || entries[i].Key != want.Key || entries[i].Dir != want.Dir || entries[i].state == nil {
			t.Errorf("run %d: %+v, %v", i, entries[i], errs[i])
		}
	}
}

func TestBuildWaitEndsWithContext(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	const key = "beef"
	holding, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, _, err := c.Build(context.Background(), key, func(dir string) error {
			close(holding)
			<-release
			return fakeBuild("slow")(dir)
		})
		done <- err
	}()
	<-holding
	ctx, cancel := context.WithTimeout(context.Background(), 2*lockPoll)
	defer cancel()
	_, _, err := c.Build(ctx, key, fakeBuild("impatient"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Build while another builds, past its deadline: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestStaleEntryRebuilt removes an entry a restore refused and builds it
// again; a reader holding the old files keeps them.
func TestStaleEntryRebuilt(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	const key = "5a1e"
	ctx := context.Background()
	e, _, err := c.Build(ctx, key, fakeBuild("old"))
	if err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(e.Mem())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := c.Remove(ctx, e); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup(key); ok {
		t.Fatal("entry still there after Remove")
	}
	rebuilt, built, err := c.Build(ctx, key, fakeBuild("new"))
	if err != nil || !built {
		t.Fatalf("rebuild: %v, built %v", err, built)
	}
	// A second run that found the old entry stale too must not throw
	// away the one just rebuilt.
	if err := c.Remove(ctx, e); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup(key); !ok {
		t.Fatal("removing the stale entry again discarded the rebuilt one")
	}
	if err := c.Remove(ctx, rebuilt); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup(key); ok {
		t.Fatal("the rebuilt entry, removed as itself, is still there")
	}
	if _, _, err := c.Build(ctx, key, fakeBuild("new")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(e.State()); string(b) != "new" {
		t.Errorf("state after the rebuild %q, want new", b)
	}
	buf := make([]byte, 3)
	if _, err := held.ReadAt(buf, 0); err != nil || string(buf) != "old" {
		t.Errorf("the old memory file, still open, reads %q (%v)", buf, err)
	}
	if err := c.Remove(ctx, Entry{Key: "0"}); err != nil {
		t.Errorf("removing a missing entry: %v", err)
	}
}

func TestIncompleteEntryIgnored(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	const key = "c0ffee"
	dir := filepath.Join(c.Dir, key)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, StateFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup(key); ok {
		t.Fatal("an entry without its memory file was found")
	}
	if _, built, err := c.Build(context.Background(), key, fakeBuild("whole")); err != nil || !built {
		t.Fatalf("Build over an incomplete entry: %v, built %v", err, built)
	}
	if _, ok := c.Lookup(key); !ok {
		t.Error("no entry after the build")
	}
}

func TestBadKeysRefused(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	for _, key := range []string{"", "../x", "ABC", "a/b", string(make([]byte, 65))} {
		if _, _, err := c.Build(context.Background(), key, fakeBuild("x")); err == nil {
			t.Errorf("Build(%q) accepted", key)
		}
		if err := c.Remove(context.Background(), Entry{Key: key}); err == nil {
			t.Errorf("Remove(%q) accepted", key)
		}
	}
}

func TestPlaceholder(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	p, err := c.Placeholder()
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Size() != PlaceholderSize {
		t.Fatalf("placeholder %v, %v", st, err)
	}
	again, err := c.Placeholder()
	if err != nil || again != p {
		t.Fatalf("second Placeholder %s, %v", again, err)
	}
	st2, _ := os.Stat(p)
	if !os.SameFile(st, st2) {
		t.Error("placeholder remade")
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("VMM_CACHE", "/somewhere/cache")
	if d, err := DefaultDir(); err != nil || d != "/somewhere/cache/snapshots" {
		t.Errorf("with VMM_CACHE: %s, %v", d, err)
	}
	t.Setenv("VMM_CACHE", "")
	t.Setenv("HOME", "/home/u")
	if d, err := DefaultDir(); err != nil || d != "/home/u/.cache/vmm/snapshots" {
		t.Errorf("without: %s, %v", d, err)
	}
}

// TestPrune deletes entries unused for longer than the limit and old
// leftovers of killed runs, keeps recent and locked entries, and never
// waits for a lock.
func TestPrune(t *testing.T) {
	c := Cache{Dir: filepath.Join(t.TempDir(), "snapshots")}
	ctx := context.Background()
	old := time.Now().Add(-30 * 24 * time.Hour)
	mk := func(key string, used time.Time) Entry {
		e, _, err := c.Build(ctx, key, fakeBuild(key))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(e.Dir, used, used); err != nil {
			t.Fatal(err)
		}
		return e
	}
	mk("01d", old)
	recent := mk("0e0", time.Now())
	touched := mk("70c", old)
	if err := c.Touch(touched); err != nil {
		t.Fatal(err)
	}
	mk("10cced", old)
	unlock, err := c.lock(ctx, "10cced") // a run restoring it
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	leftover := filepath.Join(c.Dir, ".stale-123")
	if err := os.Mkdir(leftover, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(leftover, old, old); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(c.Dir, ".stale-456")
	if err := os.Mkdir(fresh, 0o700); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	removed, err := c.Prune(14 * 24 * time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*lockPoll {
		t.Errorf("Prune took %v: it waited for a lock", time.Since(start))
	}
	if len(removed) != 1 || removed[0] != "01d" {
		t.Errorf("removed %q, want [01d]", removed)
	}
	for key, want := range map[string]bool{"01d": false, recent.Key: true, touched.Key: true, "10cced": true} {
		if _, ok := c.Lookup(key); ok != want {
			t.Errorf("entry %s present %v, want %v", key, ok, want)
		}
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("an old leftover survived: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a recent leftover (maybe a run's) was deleted: %v", err)
	}
	if removed, err := (Cache{Dir: filepath.Join(t.TempDir(), "none")}).Prune(time.Hour); err != nil || len(removed) != 0 {
		t.Errorf("Prune of a missing cache: %q, %v", removed, err)
	}
}
