// Package leakcheck is the test-only check that a device or machine gives
// back what it took: the goroutines and file descriptors counted after a
// run of create/use/teardown cycles must be those counted before, within
// Tolerance. A leak that grows per cycle shows up as a delta of about the
// cycle count, far past the tolerance, which absorbs the runtime's and the
// testing package's own comings and goings.
package leakcheck

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tolerance is how far a count may drift from its baseline: issue 12
// allows ±2.
const Tolerance = 2

// Cycles is how many create/teardown cycles a leak test runs (issue 12).
const Cycles = 50

// settle bounds how long Check waits for goroutines that are on their way
// out (a closed socket's reader returning, a timer's goroutine) and polls
// at settleStep.
const (
	settle     = 5 * time.Second
	settleStep = 10 * time.Millisecond
)

// Snapshot is what a process holds at one moment.
type Snapshot struct {
	Goroutines int
	// FDs maps each open descriptor to what it refers to (readlink of
	// /proc/self/fd/N), so a failure can name the new ones.
	FDs map[int]string
	// stacks maps goroutine IDs to their stacks, so a failure can show
	// only the goroutines that were not there before.
	stacks map[int]string
}

// Take counts the goroutines and open descriptors now.
func Take(tb testing.TB) Snapshot {
	tb.Helper()
	fds, err := openFDs()
	if err != nil {
		tb.Fatalf("leakcheck: %v", err)
	}
	return Snapshot{Goroutines: runtime.NumGoroutine(), FDs: fds, stacks: goroutines()}
}

// Check fails tb unless the goroutines and descriptors are back within
// Tolerance of before, waiting up to a few seconds for them to settle. The
// failure gives each delta, the new descriptors' targets and the new
// goroutines' stacks.
func Check(tb testing.TB, before Snapshot) {
	tb.Helper()
	var now Snapshot
	deadline := time.Now().Add(settle)
	for {
		runtime.GC() // finalizers close what was dropped unclosed: still a leak, but not one the counts should hide
		now = Take(tb)
		if within(now.Goroutines, before.Goroutines) && within(len(now.FDs), len(before.FDs)) {
			tb.Logf("leakcheck: goroutines %d -> %d, fds %d -> %d", before.Goroutines, now.Goroutines, len(before.FDs), len(now.FDs))
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(settleStep)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "leakcheck: goroutines %d -> %d (%+d), fds %d -> %d (%+d), tolerance ±%d",
		before.Goroutines, now.Goroutines, now.Goroutines-before.Goroutines,
		len(before.FDs), len(now.FDs), len(now.FDs)-len(before.FDs), Tolerance)
	if extra := newKeys(now.FDs, before.FDs); len(extra) > 0 {
		b.WriteString("\nnew fds:")
		for _, fd := range extra {
			fmt.Fprintf(&b, "\n  %d -> %s", fd, now.FDs[fd])
		}
	}
	if extra := newKeys(now.stacks, before.stacks); len(extra) > 0 {
		b.WriteString("\nnew goroutines:")
		for _, id := range extra {
			b.WriteString("\n\n" + now.stacks[id])
		}
	}
	tb.Fatal(b.String())
}

func within(n, base int) bool { return n >= base-Tolerance && n <= base+Tolerance }

// newKeys returns the keys of now that are not in before, sorted.
func newKeys[V any](now, before map[int]V) []int {
	var ks []int
	for k := range now {
		if _, ok := before[k]; !ok {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

// openFDs lists /proc/self/fd, leaving out the descriptor that listing it
// opens.
func openFDs() (map[int]string, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("list fds: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list fds: %w", err)
	}
	fds := make(map[int]string, len(names))
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || uintptr(fd) == f.Fd() {
			continue
		}
		target, err := os.Readlink(filepath.Join("/proc/self/fd", n))
		if err != nil {
			continue // closed while we listed
		}
		fds[fd] = target
	}
	return fds, nil
}

// goroutines returns every goroutine's stack keyed by its ID.
func goroutines() map[int]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	m := map[int]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		rest, ok := strings.CutPrefix(g, "goroutine ")
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, " ")
		if n, err := strconv.Atoi(id); err == nil {
			m[n] = g
		}
	}
	return m
}
