package main

import (
	"bufio"
	"net"
	"strings"
	"testing"
)

func TestParseQMP(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		kind    qmpKind
		ret     string
		wantErr string
	}{
		{"greeting", `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`, qmpGreeting, "", ""},
		{"empty return", `{"return": {}}` + "\r\n", qmpReturn, `{}`, ""},
		{"status", `{"return": {"status": "prelaunch", "singlestep": false, "running": false}}`, qmpReturn, `{"status": "prelaunch", "singlestep": false, "running": false}`, ""},
		{"event", `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}`, qmpEvent, "", ""},
		{"error", `{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`, qmpError, "", "QMP error CommandNotFound: The command nope has not been found"},
		{"not JSON", `hello`, 0, "", "bad message"},
		{"unknown object", `{"foo": 1}`, 0, "", "unknown message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, ret, err := parseQMP([]byte(tt.line))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseQMP(%q) error = %v, want one containing %q", tt.line, err, tt.wantErr)
				}
				if tt.kind == qmpError && kind != qmpError {
					t.Errorf("kind = %v, want qmpError", kind)
				}
				return
			}
			if err != nil || kind != tt.kind || string(ret) != tt.ret {
				t.Errorf("parseQMP(%q) = %v, %s, %v; want %v, %s", tt.line, kind, ret, err, tt.kind, tt.ret)
			}
		})
	}
}

// fakeQMP plays QEMU's side of a QMP session on c: the greeting, then one
// scripted answer (possibly several lines) per command received, checking
// each command is the expected one.
func fakeQMP(t *testing.T, c net.Conn, script []struct{ cmd, reply string }) {
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := c.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\r\n")); err != nil {
		return
	}
	for _, s := range script {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if want := `{"execute":"` + s.cmd + `"}`; strings.TrimSpace(line) != want {
			t.Errorf("fake QMP got %q, want %q", strings.TrimSpace(line), want)
		}
		if _, err := c.Write([]byte(s.reply)); err != nil {
			return
		}
	}
}

func TestQMPSession(t *testing.T) {
	client, server := net.Pipe()
	go fakeQMP(t, server, []struct{ cmd, reply string }{
		{"qmp_capabilities", `{"return": {}}` + "\r\n"},
		{"query-status", `{"return": {"status": "prelaunch", "running": false}}` + "\r\n"},
		{"cont", `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}` + "\r\n" + `{"return": {}}` + "\r\n"},
		{"nope", `{"error": {"class": "CommandNotFound", "desc": "no"}}` + "\r\n"},
	})
	q, err := qmpOpen(client)
	if err != nil {
		t.Fatalf("qmpOpen: %v", err)
	}
	defer q.Close()
	if ret, err := q.execute("query-status"); err != nil || !strings.Contains(string(ret), "prelaunch") {
		t.Errorf("query-status = %s, %v", ret, err)
	}
	if ret, err := q.execute("cont"); err != nil || string(ret) != "{}" {
		t.Errorf("cont (after an event) = %s, %v; want {}", ret, err)
	}
	if _, err := q.execute("nope"); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("unknown command: error %v, want CommandNotFound", err)
	}
}

func TestQMPOpenRejectsNonGreeting(t *testing.T) {
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		server.Write([]byte(`{"return": {}}` + "\n"))
	}()
	if _, err := qmpOpen(client); err == nil {
		t.Error("qmpOpen accepted a session that did not start with a greeting")
	}
}
