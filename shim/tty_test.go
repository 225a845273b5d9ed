package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/govmm/vmm/internal/testenv"
)

// openPTY returns a pseudo-terminal pair (master, slave).
func openPTY(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		testenv.Skipf(t, "no /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		testenv.Skipf(t, "unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		testenv.Skipf(t, "ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		testenv.Skipf(t, "open pts: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 33, Col: 101}); err != nil {
		t.Fatal(err)
	}
	return m, s
}

// TestRunTerminalRestored runs with -t on a terminal: the command gets
// the terminal's size, and the terminal is back in its original mode
// after a normal exit and after a failed run.
func TestRunTerminalRestored(t *testing.T) {
	m, s := openPTY(t)
	go func() { // drain echoes so nothing blocks
		buf := make([]byte, 1024)
		for {
			if _, err := m.Read(buf); err != nil {
				return
			}
		}
	}()
	before, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if !term.IsTerminal(int(s.Fd())) {
		t.Fatal("pts is not a terminal")
	}
	check := func(when string) {
		t.Helper()
		after, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
			t.Errorf("%s: terminal mode not restored: %+v, was %+v", when, after, before)
		}
	}

	w := newFakeWorld(t)
	o := w.options(t, "exit", "4")
	o.TTY, o.Stdin = true, s
	var stdout bytes.Buffer
	o.Stdout = &stdout
	if code, err := Run(context.Background(), o); err != nil || code != 4 {
		t.Fatalf("Run = %d, %v; want 4", code, err)
	}
	check("after exit")
	w.mu.Lock()
	if p := w.processes[0]; !p.Terminal || p.Rows != 33 || p.Cols != 101 {
		t.Errorf("process terminal %v size %dx%d, want 33x101", p.Terminal, p.Rows, p.Cols)
	}
	w.mu.Unlock()

	w = newFakeWorld(t)
	o = w.options(t, "sleep")
	o.TTY, o.Stdin = true, s
	go func() {
		<-w.started
		w.lastVMM().exit()
	}()
	if _, err := Run(context.Background(), o); err == nil {
		t.Fatal("Run survived the VMM's death")
	}
	check("after the VMM died")
}
