package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strings"
)

// qmpMessage is one line QEMU's monitor sends: its greeting, the answer to
// a command (return or error), or an asynchronous event.
type qmpMessage struct {
	Greeting json.RawMessage `json:"QMP"`
	Return   json.RawMessage `json:"return"`
	Error    *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// qmpKind classifies a parsed message.
type qmpKind int

const (
	qmpGreeting qmpKind = iota
	qmpReturn
	qmpError
	qmpEvent
)

// parseQMP decodes one line from QMP and says what it is; for an error it
// also returns the error's class and description as err.
func parseQMP(line []byte) (kind qmpKind, ret json.RawMessage, err error) {
	var m qmpMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return 0, nil, fmt.Errorf("QMP: bad message %q: %w", strings.TrimSpace(string(line)), err)
	}
	switch {
	case m.Error != nil:
		return qmpError, nil, fmt.Errorf("QMP error %s: %s", m.Error.Class, m.Error.Desc)
	case m.Return != nil:
		return qmpReturn, m.Return, nil
	case m.Event != "":
		return qmpEvent, nil, nil
	case m.Greeting != nil:
		return qmpGreeting, nil, nil
	}
	return 0, nil, fmt.Errorf("QMP: unknown message %q", strings.TrimSpace(string(line)))
}

// qmpSession is a QMP connection past its capabilities handshake: ready
// for commands, one at a time.
type qmpSession struct {
	c net.Conn
	r *bufio.Reader
}

// qmpOpen reads QEMU's greeting on c and negotiates capabilities (QMP
// accepts no other command before qmp_capabilities).
func qmpOpen(c net.Conn) (*qmpSession, error) {
	q := &qmpSession{c: c, r: bufio.NewReader(c)}
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	if kind, _, err := parseQMP(line); err != nil || kind != qmpGreeting {
		return nil, fmt.Errorf("QMP greeting %q (%v)", strings.TrimSpace(string(line)), err)
	}
	if _, err := q.execute("qmp_capabilities"); err != nil {
		return nil, err
	}
	return q, nil
}

// execute sends a command without arguments and returns its "return"
// value, skipping the events that may come before it.
func (q *qmpSession) execute(cmd string) (json.RawMessage, error) {
	if _, err := fmt.Fprintf(q.c, "{\"execute\":%q}\n", cmd); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		kind, ret, err := parseQMP(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		switch kind {
		case qmpReturn:
			return ret, nil
		case qmpEvent:
			continue
		default:
			return nil, fmt.Errorf("QMP %s: unexpected %q", cmd, strings.TrimSpace(string(line)))
		}
	}
}

func (q *qmpSession) Close() error { return q.c.Close() }
