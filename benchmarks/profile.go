package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Profile is a system-wide perf profile taken while something ran, kept as
// the top lines of perf report.
type Profile struct {
	Title string `json:"title"`
	Text  string `json:"text"`
}

// profileLines is how many lines of each perf report view are kept.
const profileLines = 14

// profile runs fn under a system-wide `perf record` (all CPUs, so that the
// host kernel's work on the VMM's behalf is seen) and returns perf report's
// top objects and symbols of the processes named comm, in percent of their
// samples (other work on this shared host is left out).
func (b *bench) profile(ctx context.Context, title, comm string, fn func()) (Profile, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return Profile{}, fmt.Errorf("perf is not installed (apt-get install linux-perf)")
	}
	data := filepath.Join(b.tmp, "perf.data")
	rec := exec.CommandContext(ctx, perf, "record", "-a", "-F", "1999", "-o", data)
	rec.Stdout, rec.Stderr = nil, nil
	if err := rec.Start(); err != nil {
		return Profile{}, fmt.Errorf("perf record: %w", err)
	}
	time.Sleep(2 * time.Second) // perf -a takes a while to set up on every CPU
	fn()
	_ = rec.Process.Signal(syscall.SIGINT) // perf record's normal stop: it writes the file
	done := make(chan error, 1)
	go func() { done <- rec.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = rec.Process.Kill()
		<-done
		return Profile{}, fmt.Errorf("perf record did not stop")
	}
	out, err := exec.CommandContext(ctx, perf, "report", "-i", data, "--no-children", "--comms", comm,
		"--percentage", "relative", "--sort", "dso,sym", "--stdio").Output()
	if err != nil {
		return Profile{}, fmt.Errorf("perf report: %w", err)
	}
	var text strings.Builder
	kernel, user, top := splitProfile(string(out), profileLines)
	fmt.Fprintf(&text, "%s processes: %.1f%% of samples in the host kernel, %.1f%% in user space\n", comm, kernel, user)
	for _, l := range top {
		text.WriteString(l + "\n")
	}
	return Profile{Title: title, Text: text.String()}, nil
}

// commName is the kernel's name for a process running path: the file name,
// cut to 15 bytes (TASK_COMM_LEN).
func commName(path string) string {
	c := filepath.Base(path)
	if len(c) > 15 {
		c = c[:15]
	}
	return c
}

// splitProfile sums a perf report (--sort dso,sym) into kernel ([k]) and
// user ([.]) percentages and keeps its first n sample lines.
func splitProfile(report string, n int) (kernel, user float64, top []string) {
	for _, l := range strings.Split(report, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || strings.HasPrefix(f[0], "#") || !strings.HasSuffix(f[0], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(l, "[k]"):
			kernel += pct
		case strings.Contains(l, "[.]"):
			user += pct
		}
		if len(top) < n {
			top = append(top, strings.TrimRight(l, " "))
		}
	}
	return kernel, user, top
}
