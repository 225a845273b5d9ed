package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestWatcherFindsMarksAcrossWrites(t *testing.T) {
	w := newWatcher()
	w.start = time.Now()
	ready := w.mark("ready>")
	w.Write([]byte("testguest: boot=pvh\r\ntestguest: rea"))
	if isDone(ready) {
		t.Fatal("mark found before it was complete")
	}
	w.Write([]byte("dy> "))
	if !isDone(ready) {
		t.Fatal("mark split across two writes was not found")
	}
	if at, ok := w.first(); !ok || at > ready.at {
		t.Errorf("first output at %v (%v), mark at %v", at, ok, ready.at)
	}
	if late := w.mark("boot=pvh"); !isDone(late) {
		t.Error("a mark registered after its output arrived was not found")
	}
	if got := w.firstSeen([]string{"nope", "boot=pvh"}); got != "boot=pvh" {
		t.Errorf("firstSeen = %q", got)
	}
}

func TestLaunchWaitAndTimeout(t *testing.T) {
	p, err := Launch(context.Background(), ProcSpec{Name: "sh", Argv: []string{"sh", "-c", `echo "$VMM_LAUNCH_NS" >&2; echo hello; exit 3`},
		Timeout: 10 * time.Second, Marks: []string{"hello"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitOutput("hello", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	code, _, err := p.Wait()
	if err != nil || code != 3 {
		t.Errorf("Wait = %d, %v; want 3, nil", code, err)
	}
	if tail := p.StderrTail(1); len(tail) != 1 || strings.TrimSpace(tail[0]) == "" {
		t.Errorf("VMM_LAUNCH_NS not passed: stderr %q", tail)
	}

	slow, err := Launch(context.Background(), ProcSpec{Name: "sleep", Argv: []string{"sleep", "30"}, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	slow.Wait()
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("timeout did not end the process (waited %v)", d)
	}
	if !slow.TimedOut() {
		t.Error("TimedOut = false for a process ended by its timeout")
	}
}

func TestLastLines(t *testing.T) {
	got := lastLines([]byte("a\r\nb\r\nc\r\n"), 2)
	if strings.Join(got, "|") != "b|c" {
		t.Errorf("lastLines = %q", got)
	}
	if got := lastLines(nil, 3); got != nil {
		t.Errorf("lastLines(nil) = %q", got)
	}
}
