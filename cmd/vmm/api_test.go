package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
)

// shortDir keeps socket paths within sun_path's 108 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmmcmd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestAPIModeFlags checks failures of --config-file and --api-sock before
// any VM exists.
func TestAPIModeFlags(t *testing.T) {
	dir := shortDir(t)
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	badConfig := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(badConfig, []byte(`{"machine-config":{"vcpu_count":1,"mem_size_mib":"128"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing config file", []string{"--config-file", filepath.Join(dir, "nope.json")}, exitUsage, "config file"},
		{"bad config file", []string{"--config-file", badConfig}, exitUsage, `field "machine-config.mem_size_mib": expected an integer`},
		{"config file without kernel", []string{"--config-file", writeTemp(t, dir, "empty.json", `{}`)}, 1, "no boot source"},
		{"socket over a regular file", []string{"--api-sock", regular}, 1, "refusing to replace an existing regular file"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		code := run(tt.args, nil, io.Discard, &stderr)
		if code != tt.code || strings.Count(stderr.String(), "\n") != 1 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and one line containing %q", tt.name, code, stderr.String(), tt.code, tt.want)
		}
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Error("regular file clobbered by --api-sock")
	}
}

func writeTemp(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAPISocketLifecycle runs vmm --api-sock without booting: the socket
// appears with mode 0600, answers, and SIGTERM ends the process with 130
// and removes it. No KVM is needed before InstanceStart.
func TestAPISocketLifecycle(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() { done <- run([]string{"--api-sock", sock, "--id", "cmd-test"}, nil, io.Discard, &stderr) }()
	c := client.New(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v, want mode 0600", st, err)
	}
	info, err := c.InstanceInfo(ctx)
	if err != nil || info.ID != "cmd-test" || info.State != api.StateNotStarted {
		t.Fatalf("instance info %+v %v", info, err)
	}
	// signal.NotifyContext in run has caught SIGTERM since before the
	// socket existed, so this does not kill the test binary.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 130 {
			t.Errorf("exit %d after SIGTERM, want 130 (stderr %q)", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after SIGTERM")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}
