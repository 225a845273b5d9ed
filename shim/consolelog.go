package shim

import (
	"bytes"
	"fmt"
	"os"
	"sync"
)

// consoleLogMax caps vmm run's console.log. The log only feeds the tail
// shown when the VM dies, so a guest printing without end must not fill
// the disk with it.
const consoleLogMax = 4 << 20

// consoleTruncated starts a console log whose older output was dropped.
const consoleTruncated = "[vmm run: older console output dropped]\n"

// consoleLog is a file that never grows beyond max bytes and keeps the
// newest output: a write that would pass max restarts the file with
// consoleTruncated and the newest half of what it held (from a line
// start), so the tail is always there and the copying is amortised over
// max/2 bytes of output.
type consoleLog struct {
	mu   sync.Mutex
	f    *os.File
	size int64
	max  int64
}

func createConsoleLog(path string, max int64) (*consoleLog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &consoleLog{f: f, max: max}, nil
}

// Write implements io.Writer. It reports all of p written even when only
// its newest part fits.
func (l *consoleLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size+int64(len(p)) <= l.max {
		n, err := l.f.WriteAt(p, l.size)
		l.size += int64(n)
		return n, err
	}
	if err := l.restart(p); err != nil {
		return 0, fmt.Errorf("console log: %w", err)
	}
	return len(p), nil
}

// restart rewrites the file as the marker and the newest max/2 bytes of
// its content followed by p.
func (l *consoleLog) restart(p []byte) error {
	keep := l.max/2 - int64(len(consoleTruncated))
	var tail []byte
	if int64(len(p)) >= keep {
		tail = p[int64(len(p))-keep:]
	} else {
		old := min(keep-int64(len(p)), l.size)
		tail = make([]byte, old, old+int64(len(p)))
		if _, err := l.f.ReadAt(tail, l.size-old); err != nil {
			return err
		}
		tail = append(tail, p...)
	}
	// A partial first line would only confuse the reader of the tail.
	if i := bytes.IndexByte(tail, '\n'); i >= 0 && i+1 < len(tail) {
		tail = tail[i+1:]
	}
	buf := append([]byte(consoleTruncated), tail...)
	if _, err := l.f.WriteAt(buf, 0); err != nil {
		return err
	}
	if err := l.f.Truncate(int64(len(buf))); err != nil {
		return err
	}
	l.size = int64(len(buf))
	return nil
}

// Close closes the file.
func (l *consoleLog) Close() error { return l.f.Close() }
