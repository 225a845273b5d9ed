package api

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLoggerReplaceClosesFile checks that every PUT /logger replaces the
// previous log file rather than adding a descriptor: 1,000 of them leave
// the process's open files where one left them, and logs go only to the
// file named last.
func TestLoggerReplaceClosesFile(t *testing.T) {
	const puts = 1000
	e := newEnv(t)
	paths := []string{filepath.Join(e.dir, "log-a"), filepath.Join(e.dir, "log-b")}
	put := func(path string) {
		e.mustDo("PUT", "/logger", fmt.Sprintf(`{"log_path":%q,"level":"Info"}`, path), 204)
	}
	// The first PUT opens the file and the API connection; both stay.
	put(paths[0])
	base := openFDs(t)
	for i := range puts {
		put(paths[i%2])
	}
	if n := openFDs(t); n < base-2 || n > base+2 {
		t.Errorf("%d open files after %d PUT /logger, want %d±2", n, puts, base)
	}

	last := paths[(puts-1)%2]
	old := paths[puts%2]
	if err := os.Truncate(old, 0); err != nil {
		t.Fatal(err)
	}
	e.ctl.Logger().Info("after the last PUT")
	for _, p := range []string{last, old} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.Contains(string(data), "after the last PUT"), p == last; got != want {
			t.Errorf("%s has the log line: %v, want %v", filepath.Base(p), got, want)
		}
	}
}
