package api

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
)

// sdkMachine is a Firecracker Go SDK (v1.0.0) machine that talks to the
// env's API socket and starts from a snapshot: WithSnapshot's handler
// list minus the steps that exec a Firecracker binary.
func sdkMachine(t *testing.T, e *snapEnv, opts ...firecracker.WithSnapshotOpt) *firecracker.Machine {
	t.Helper()
	ctx := context.Background()
	m, err := firecracker.NewMachine(ctx, firecracker.Config{SocketPath: e.sock, DisableValidation: true},
		firecracker.WithSnapshot(e.mem, e.stFile, opts...))
	if err != nil {
		t.Fatal(err)
	}
	// The API server is already running: no process to start, no log
	// FIFOs to create; the load itself is the SDK's own handler.
	m.Handlers.Validation = firecracker.HandlerList{}
	m.Handlers.FcInit = firecracker.HandlerList{}.Append(firecracker.LoadSnapshotHandler)
	return m
}

func sdkState(t *testing.T, m *firecracker.Machine) string {
	t.Helper()
	info, err := m.DescribeInstanceInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return firecracker.StringValue(info.State)
}

// TestSDKSnapshot drives the snapshot endpoints with the Firecracker Go SDK
// v1.0.0, which sends the deprecated mem_file_path: its load starts a
// Paused machine, ResumeVM and PauseVM work on it, and CreateSnapshot
// reaches the machine with the SDK's paths.
func TestSDKSnapshot(t *testing.T) {
	e := newSnapEnv(t)
	ctx := context.Background()
	m := sdkMachine(t, e)
	if err := m.Start(ctx); err != nil {
		t.Fatalf("SDK start from a snapshot: %v", err)
	}
	reqs := e.r.requests()
	if len(reqs) != 1 || reqs[0].SnapshotPath != e.stFile || reqs[0].MemFilePath != e.mem {
		t.Fatalf("restore requests %+v, want one for %s and %s", reqs, e.stFile, e.mem)
	}
	if s := sdkState(t, m); s != StatePaused {
		t.Fatalf("state after the SDK's load %q, want Paused", s)
	}
	if err := m.ResumeVM(ctx); err != nil {
		t.Fatal(err)
	}
	if s := sdkState(t, m); s != StateRunning {
		t.Fatalf("state after ResumeVM %q, want Running", s)
	}
	if err := m.PauseVM(ctx); err != nil {
		t.Fatal(err)
	}
	state, mem := e.dir+"/sdk.snap", e.dir+"/sdk.mem"
	if err := m.CreateSnapshot(ctx, mem, state); err != nil {
		t.Fatalf("SDK CreateSnapshot: %v", err)
	}
	snaps, resumes, _, _ := e.r.last().counts()
	if resumes != 1 || !slices.Equal(snaps, []string{state + " " + mem}) {
		t.Fatalf("machine saw %d resumes and snapshots %q, want 1 and %q", resumes, snaps, state+" "+mem)
	}
	// The SDK's error for a refused create carries the fault message.
	if err := m.ResumeVM(ctx); err != nil {
		t.Fatal(err)
	}
	err := m.CreateSnapshot(ctx, mem, state)
	if err == nil || !strings.Contains(fmt.Sprintf("%+v", err), "must be paused") {
		t.Fatalf("SDK CreateSnapshot while running: %v, want the fault", err)
	}
}

// TestSDKSnapshotResume: the SDK's ResumeVM option loads a running VM.
func TestSDKSnapshotResume(t *testing.T) {
	e := newSnapEnv(t)
	m := sdkMachine(t, e, func(c *firecracker.SnapshotConfig) { c.ResumeVM = true })
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("SDK start from a snapshot with ResumeVM: %v", err)
	}
	if s := sdkState(t, m); s != StateRunning {
		t.Fatalf("state %q, want Running", s)
	}
}

// TestSDKClientSnapshotLoad uses the SDK's low-level client: its load
// body with the memory file and diff snapshots on (its
// enable_diff_snapshots) is accepted and turns dirty page tracking on.
func TestSDKClientSnapshotLoad(t *testing.T) {
	e := newSnapEnv(t)
	ctx := context.Background()
	c := firecracker.NewClient(e.sock, nil, false)
	if _, err := c.LoadSnapshot(ctx, &models.SnapshotLoadParams{SnapshotPath: &e.stFile, MemFilePath: &e.mem, EnableDiffSnapshots: true, ResumeVM: true}); err != nil {
		t.Fatalf("SDK client load: %v", err)
	}
	if reqs := e.r.requests(); len(reqs) != 1 || !reqs[0].TrackDirtyPages {
		t.Fatalf("restore requests %+v, want one tracking dirty pages", reqs)
	}
	if _, err := c.CreateSnapshot(ctx, &models.SnapshotCreateParams{SnapshotPath: firecracker.String(e.dir + "/s"), MemFilePath: firecracker.String(e.dir + "/m"), SnapshotType: models.SnapshotCreateParamsSnapshotTypeFull}); err == nil ||
		!strings.Contains(fmt.Sprintf("%+v", err), "must be paused") {
		t.Fatalf("create on a running VM through the SDK client: %v", err)
	}
}
