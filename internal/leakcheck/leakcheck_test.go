package leakcheck

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB whose Fatal records the message instead of
// ending the test, so the checker's own failures can be asserted.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatal(args ...any)                 { r.failed = fmt.Sprint(args...) }
func (r *recorder) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		leak func(t *testing.T) (undo func())
		want []string // in the failure; none: Check passes
	}{
		{"nothing", func(*testing.T) func() { return func() {} }, nil},
		// undo waits for the goroutines to end: one still exiting would
		// count in the next case's baseline and hide its leak.
		{"within tolerance", func(t *testing.T) func() {
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range Tolerance {
				wg.Go(func() { <-stop })
			}
			return func() { close(stop); wg.Wait() }
		}, nil},
		{"goroutines", func(t *testing.T) func() {
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range Tolerance + 1 {
				wg.Go(func() { parkedLeak(stop) })
			}
			return func() { close(stop); wg.Wait() }
		}, []string{"goroutines", "(+3)", "parkedLeak"}},
		{"fds", func(t *testing.T) func() {
			var fs []*os.File
			for range Tolerance + 1 {
				f, err := os.Open(os.DevNull)
				if err != nil {
					t.Fatal(err)
				}
				fs = append(fs, f)
			}
			return func() {
				for _, f := range fs {
					f.Close()
				}
			}
		}, []string{"fds", "(+3)", "-> /dev/null"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			before := settledBaseline(t)
			undo := tc.leak(t)
			Check(r, before)
			undo()
			if tc.want == nil {
				if r.failed != "" {
					t.Fatalf("Check failed: %s", r.failed)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(r.failed, w) {
					t.Errorf("failure %q lacks %q", r.failed, w)
				}
			}
		})
	}
}

// settledBaseline takes the baseline once the goroutine count holds still:
// the previous subtest's goroutine (t.Run's) may still be on its way out,
// and counted in a baseline it then leaves, it would hide one leaked here.
func settledBaseline(t *testing.T) Snapshot {
	prev := Take(t)
	for range 100 {
		time.Sleep(10 * time.Millisecond)
		now := Take(t)
		if now.Goroutines == prev.Goroutines {
			return now
		}
		prev = now
	}
	t.Fatalf("goroutine count still changing: %d", prev.Goroutines)
	return prev
}

// parkedLeak is a goroutine the test leaks on purpose; its name must show
// in the failure's stacks.
func parkedLeak(stop chan struct{}) { <-stop }
