package main

import (
	"bufio"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
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

func TestMigrationStatus(t *testing.T) {
	tests := []struct {
		ret, status, wantErr string
	}{
		{`{}`, "", ""},
		{`{"status": "setup"}`, "setup", ""},
		{`{"expected-downtime": 300, "status": "active", "ram": {"total": 134295552}}`, "active", ""},
		{`{"status": "completed", "setup-time": 5, "downtime": 4, "total-time": 199}`, migrationCompleted, ""},
		{`{"status": "failed", "error-desc": "Unable to write to command: Broken pipe"}`, migrationFailed, "migration failed: Unable to write to command: Broken pipe"},
		{`{"status": "cancelled"}`, migrationCancelled, "migration cancelled: no reason given"},
		{`[1]`, "", "bad answer"},
	}
	for _, tt := range tests {
		st, err := migrationStatus(json.RawMessage(tt.ret))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("migrationStatus(%s) error %v, want one containing %q", tt.ret, err, tt.wantErr)
			}
			continue
		}
		if err != nil || st != tt.status {
			t.Errorf("migrationStatus(%s) = %q, %v; want %q", tt.ret, st, err, tt.status)
		}
	}
}

func FuzzMigrationStatus(f *testing.F) {
	f.Add(`{"status": "completed", "total-time": 199}`)
	f.Add(`{"status": "failed", "error-desc": "x"}`)
	f.Add(`{}`)
	f.Add(`null`)
	f.Fuzz(func(t *testing.T, ret string) {
		st, err := migrationStatus(json.RawMessage(ret))
		if err == nil && (st == migrationFailed || st == migrationCancelled) {
			t.Errorf("status %q without an error", st)
		}
	})
}

func TestWaitMigration(t *testing.T) {
	tests := []struct {
		name    string
		replies []string
		wantErr string
	}{
		{"completes", []string{`{"return": {}}`, `{"return": {"status": "setup"}}`, `{"return": {"status": "active"}}`,
			`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION"}` + "\r\n" + `{"return": {"status": "completed"}}`}, ""},
		{"fails", []string{`{"return": {"status": "active"}}`, `{"return": {"status": "failed", "error-desc": "no space left"}}`}, "no space left"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := []struct{ cmd, reply string }{{"qmp_capabilities", `{"return": {}}` + "\r\n"}}
			for _, r := range tt.replies {
				script = append(script, struct{ cmd, reply string }{"query-migrate", r + "\r\n"})
			}
			client, server := net.Pipe()
			go fakeQMP(t, server, script)
			q, err := qmpOpen(client)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			err = q.waitMigration(time.Microsecond, time.Minute)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("waitMigration error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestWaitMigrationTimeout(t *testing.T) {
	client, server := net.Pipe()
	go fakeQMP(t, server, []struct{ cmd, reply string }{
		{"qmp_capabilities", `{"return": {}}` + "\r\n"},
		{"query-migrate", `{"return": {"status": "active"}}` + "\r\n"},
		{"query-migrate", `{"return": {"status": "active"}}` + "\r\n"},
	})
	q, err := qmpOpen(client)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.waitMigration(time.Millisecond, 0); err == nil || !strings.Contains(err.Error(), `still "active"`) {
		t.Errorf("waitMigration error %v, want a timeout", err)
	}
}

func TestExecuteArgs(t *testing.T) {
	client, server := net.Pipe()
	got := make(chan string, 1)
	go func() {
		defer server.Close()
		r := bufio.NewReader(server)
		line, err := r.ReadString('\n')
		if err != nil {
			got <- err.Error()
			return
		}
		got <- strings.TrimSpace(line)
		server.Write([]byte(`{"return": {}}` + "\r\n"))
	}()
	q := &qmpSession{c: client, r: bufio.NewReader(client)}
	if _, err := q.executeArgs("migrate", map[string]string{"uri": "exec:cat > '/tmp/a b'"}); err != nil {
		t.Fatal(err)
	}
	var msg struct {
		Execute   string            `json:"execute"`
		Arguments map[string]string `json:"arguments"`
	}
	line := <-got
	if err := json.Unmarshal([]byte(line), &msg); err != nil {
		t.Fatalf("sent %q: %v", line, err)
	}
	if msg.Execute != "migrate" || msg.Arguments["uri"] != "exec:cat > '/tmp/a b'" {
		t.Errorf("sent %q", line)
	}
}
