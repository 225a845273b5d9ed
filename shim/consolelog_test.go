package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsoleLogCapped floods a console log with far more than its cap,
// in writes of many sizes, and checks after every write that the file
// never exceeds the cap, and at the end that it holds the newest output
// behind the truncation marker.
func TestConsoleLogCapped(t *testing.T) {
	const capBytes = 16 << 10
	tests := []struct {
		name string
		line int // bytes per write, newline included
	}{
		{"bytes", 1},
		{"short lines", 80},
		{"odd lines", 1000},
		{"a quarter of the cap", capBytes / 4},
		{"the whole cap", capBytes},
		{"beyond the cap", 3 * capBytes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			l, err := createConsoleLog(path, capBytes)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var last []byte
			for i := 0; i*tt.line < 10*capBytes; i++ {
				last = bytes.Repeat([]byte{'a' + byte(i%26)}, tt.line)
				if tt.line > 1 {
					copy(last, fmt.Sprintf("%d:", i))
					last[len(last)-1] = '\n'
				}
				if n, err := l.Write(last); n != len(last) || err != nil {
					t.Fatalf("write %d: %d, %v", i, n, err)
				}
				st, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if st.Size() > capBytes {
					t.Fatalf("after write %d the log is %d bytes, cap %d", i, st.Size(), capBytes)
				}
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(data), consoleTruncated) {
				t.Errorf("the log does not start with the truncation marker: %.60q", data)
			}
			want := last
			if len(want) > capBytes/2-len(consoleTruncated) {
				want = want[len(want)-(capBytes/2-len(consoleTruncated)):]
			}
			if !bytes.HasSuffix(data, want) {
				t.Errorf("the log does not end with the newest output: ...%q", data[max(0, len(data)-60):])
			}
		})
	}
}

// TestRunVMMDiesAfterFlood has the VMM print more than consoleLogMax
// before it dies: the error still shows the last console lines.
func TestRunVMMDiesAfterFlood(t *testing.T) {
	w := newFakeWorld(t)
	w.dieOnBoot = strings.Repeat("noise noise noise noise\n", 2*consoleLogMax/24) +
		"Kernel panic - not syncing: no init\n"
	o := w.options(t, "echo")
	code, err := Run(context.Background(), o)
	if err == nil || code != -1 {
		t.Fatalf("Run = %d, %v; want an error", code, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "Kernel panic - not syncing") {
		t.Errorf("error %.300q... does not end with the console tail", msg)
	}
	w.checkCleanedUp(t, o)
}
