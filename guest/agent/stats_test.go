package main

import (
	"reflect"
	"slices"
	"testing"

	"github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
)

// TestContainerStatsAndUpdate reads a running container's cgroup numbers
// and processes, changes its memory limit, and reads the new one.
func TestContainerStatsAndUpdate(t *testing.T) {
	h := newHarness(t)
	h.create("stats", func(req *protocol.CreateContainerRequest) {
		req.Resources.MemoryMaxBytes = 64 << 20
	})
	p, err := h.client.StartProcess(ctxT(t), "stats", protocol.Process{Args: []string{"sh", "-c", "sleep 100 & wait"}}, client.Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := h.client.DestroyContainer(ctxT(t), "stats"); err != nil {
			t.Error(err)
		}
	}()
	var st protocol.ContainerStats
	for range 100 { // until the shell has started sleep
		if st, err = h.client.ContainerStats(ctxT(t), "stats"); err != nil {
			t.Fatal(err)
		}
		if len(st.PIDs) >= 2 {
			break
		}
	}
	if !slices.Contains(st.PIDs, p.PID) || len(st.PIDs) != 2 {
		t.Errorf("PIDs %v, want the init %d and its sleep", st.PIDs, p.PID)
	}
	if st.MemoryLimitBytes != 64<<20 || st.MemoryUsageBytes == 0 {
		t.Errorf("memory: usage %d limit %d, want some usage under 64 MiB", st.MemoryUsageBytes, st.MemoryLimitBytes)
	}
	if err := h.client.UpdateContainer(ctxT(t), "stats", protocol.Resources{MemoryMaxBytes: 32 << 20}); err != nil {
		t.Fatalf("UpdateContainer: %v", err)
	}
	if st, err = h.client.ContainerStats(ctxT(t), "stats"); err != nil || st.MemoryLimitBytes != 32<<20 {
		t.Errorf("limit after update: %d %v, want 32 MiB", st.MemoryLimitBytes, err)
	}
	if err := h.client.UpdateContainer(ctxT(t), "stats", protocol.Resources{MemoryMaxBytes: 100}); !protocol.IsCode(err, protocol.CodeInvalidArgument) {
		t.Errorf("update to 100 bytes: %v, want invalid_argument", err)
	}
	if _, err := h.client.ContainerStats(ctxT(t), "nope"); !protocol.IsCode(err, protocol.CodeNotFound) {
		t.Errorf("stats of a missing container: %v", err)
	}
}

func TestParseKeyValues(t *testing.T) {
	got := parseKeyValues("usage_usec 120\nuser_usec 100\nbad line\nneg -1\nsystem_usec 20\n")
	want := map[string]uint64{"usage_usec": 120, "user_usec": 100, "system_usec": 20}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseKeyValues = %v, want %v", got, want)
	}
}

func FuzzParseKeyValues(f *testing.F) {
	f.Add("anon 4096\nfile 0\n")
	f.Fuzz(func(t *testing.T, s string) {
		if m := parseKeyValues(s); len(m) > maxCgroupLines {
			t.Fatalf("%d keys from %d lines at most", len(m), maxCgroupLines)
		}
	})
}
