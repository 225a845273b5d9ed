package main

import "io"

// escapeByte is Ctrl-A, the prefix of console commands (as in QEMU and
// screen): Ctrl-A x ends the VM, Ctrl-A Ctrl-A sends one Ctrl-A.
const (
	escapeByte = 0x01
	escapeQuit = 'x'
)

// escapeReader passes console input through, acting on escape sequences.
type escapeReader struct {
	r       io.Reader
	onQuit  func()
	pending bool   // the last byte read was an unconsumed Ctrl-A
	buf     []byte // filtered bytes not yet returned
	quit    bool
}

func newEscapeReader(r io.Reader, onQuit func()) *escapeReader {
	return &escapeReader{r: r, onQuit: onQuit}
}

func (e *escapeReader) Read(p []byte) (int, error) {
	for len(e.buf) == 0 {
		if e.quit {
			return 0, io.EOF
		}
		raw := make([]byte, len(p))
		n, err := e.r.Read(raw)
		for _, b := range raw[:n] {
			switch {
			case e.pending:
				e.pending = false
				switch b {
				case escapeQuit, 'X':
					e.quit = true
					e.onQuit()
				case escapeByte:
					e.buf = append(e.buf, escapeByte)
				default:
					// Unknown command: pass both bytes on, as if no escape.
					e.buf = append(e.buf, escapeByte, b)
				}
			case b == escapeByte:
				e.pending = true
			default:
				e.buf = append(e.buf, b)
			}
			if e.quit {
				break
			}
		}
		if err != nil && len(e.buf) == 0 {
			return 0, err
		}
	}
	n := copy(p, e.buf)
	e.buf = e.buf[n:]
	return n, nil
}
