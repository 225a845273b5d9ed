package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"time"
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
	return q.executeArgs(cmd, nil)
}

// executeArgs is execute for a command with arguments (nil: none), which
// are encoded as the command's "arguments" object.
func (q *qmpSession) executeArgs(cmd string, args any) (json.RawMessage, error) {
	msg := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{cmd, args}
	line, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	if _, err := q.c.Write(append(line, '\n')); err != nil {
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

// Migration states of query-migrate that end a migration (QEMU's
// qapi/migration.json, MigrationStatus).
const (
	migrationCompleted = "completed"
	migrationFailed    = "failed"
	migrationCancelled = "cancelled"
)

// migrationStatus reads the answer to query-migrate: the migration's
// status ("" before any migration, then "setup", "active", ...,
// "completed"), and for a failed or cancelled one an error with QEMU's
// reason.
func migrationStatus(ret json.RawMessage) (string, error) {
	var m struct {
		Status    string `json:"status"`
		ErrorDesc string `json:"error-desc"`
	}
	if err := json.Unmarshal(ret, &m); err != nil {
		return "", fmt.Errorf("query-migrate: bad answer %q: %w", strings.TrimSpace(string(ret)), err)
	}
	switch m.Status {
	case migrationFailed, migrationCancelled:
		why := m.ErrorDesc
		if why == "" {
			why = "no reason given"
		}
		return m.Status, fmt.Errorf("migration %s: %s", m.Status, why)
	}
	return m.Status, nil
}

// waitMigration polls query-migrate every poll until the migration (out
// of this QEMU, or into it with -incoming) completed; it fails when it
// failed, or when timeout passes first.
func (q *qmpSession) waitMigration(poll, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ret, err := q.execute("query-migrate")
		if err != nil {
			return err
		}
		st, err := migrationStatus(ret)
		if err != nil {
			return err
		}
		if st == migrationCompleted {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("migration still %q after %v", st, timeout)
		}
		time.Sleep(poll)
	}
}
