package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture the project runs on.
const userHZ = 100

// ThreadCPU splits a VMM process's CPU time between its vCPU threads
// (guest execution, KVM's instruction emulator included) and everything
// else: device emulation, I/O and event threads, the main loop. Both come
// from the same tick accounting (/proc/PID/stat for the process, whose
// total keeps the time of threads that have exited, and
// /proc/PID/task/TID/stat per thread), so the difference is consistent.
type ThreadCPU struct {
	Total time.Duration
	VCPU  time.Duration
}

// Device is the CPU time outside the vCPU threads.
func (c ThreadCPU) Device() time.Duration { return c.Total - c.VCPU }

// Sub is the CPU time spent between an earlier sample and c.
func (c ThreadCPU) Sub(earlier ThreadCPU) ThreadCPU {
	return ThreadCPU{Total: c.Total - earlier.Total, VCPU: c.VCPU - earlier.VCPU}
}

// isVCPUThread tells the vCPU threads by name: vmm names them "vcpuN"
// (vmm/vcpu.go), QEMU "CPU N/KVM" when started with -name ...,debug-threads=on.
func isVCPUThread(comm string) bool {
	return strings.HasPrefix(comm, "vcpu") || (strings.HasPrefix(comm, "CPU ") && strings.HasSuffix(comm, "/KVM"))
}

// ReadThreadCPU samples pid's CPU time. It fails when no thread carries a
// vCPU name: the split would then charge guest execution to devices.
func ReadThreadCPU(pid int) (ThreadCPU, error) {
	var c ThreadCPU
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return c, err
	}
	_, ticks, err := parseStatTicks(string(raw))
	if err != nil {
		return c, fmt.Errorf("pid %d: %w", pid, err)
	}
	c.Total = ticksToDuration(ticks)
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil {
		return c, err
	}
	vcpus := 0
	for _, t := range tasks {
		raw, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended meanwhile
		}
		comm, ticks, err := parseStatTicks(string(raw))
		if err != nil {
			return c, fmt.Errorf("%s: %w", t, err)
		}
		if isVCPUThread(comm) {
			vcpus++
			c.VCPU += ticksToDuration(ticks)
		}
	}
	if vcpus == 0 {
		return c, fmt.Errorf("pid %d has no thread named as a vCPU (vcpuN, CPU N/KVM)", pid)
	}
	return c, nil
}

func ticksToDuration(t uint64) time.Duration { return time.Duration(t) * time.Second / userHZ }

// parseStatTicks returns the command name and utime+stime of a
// /proc/PID/stat or /proc/PID/task/TID/stat line. The name is in
// parentheses and may hold spaces and parentheses itself, so the fields are
// counted from the last ')'.
func parseStatTicks(line string) (comm string, ticks uint64, err error) {
	open, end := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
	if open < 0 || end < open {
		return "", 0, fmt.Errorf("malformed stat line %q", line)
	}
	comm = line[open+1 : end]
	// After ")": state(3) ppid(4) ... utime(14) stime(15).
	f := strings.Fields(line[end+1:])
	if len(f) < 13 {
		return "", 0, fmt.Errorf("short stat line %q", line)
	}
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return "", 0, fmt.Errorf("stat utime/stime %q: %w", s, err)
		}
		ticks += v
	}
	return comm, ticks, nil
}
