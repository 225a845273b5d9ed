package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// Bounds on reading cgroup files: the kernel writes them, but a bound
// costs nothing and keeps a surprise from growing the answer.
const (
	maxCgroupFile  = 64 << 10
	maxCgroupLines = 512
)

// stats reads the cgroup's numbers and its processes.
func (cg *cgroup) stats() (protocol.ContainerStats, error) {
	var st protocol.ContainerStats
	if len(cg.dirs) == 0 {
		return st, errors.New("the container has no cgroup")
	}
	pids, err := readPIDs(filepath.Join(cg.dirs[0], "cgroup.procs"))
	if err != nil {
		return st, err
	}
	st.PIDs = pids
	st.PidsCurrent = uint64(len(pids))
	if cg.v2 {
		dir := cg.dirs[0]
		st.MemoryUsageBytes, _ = readUint(filepath.Join(dir, "memory.current"))
		st.MemoryLimitBytes, _ = readUint(filepath.Join(dir, "memory.max")) // "max": 0
		st.MemoryStat, _ = readKeyValues(filepath.Join(dir, "memory.stat"))
		st.CPUStat, _ = readKeyValues(filepath.Join(dir, "cpu.stat"))
		if n, err := readUint(filepath.Join(dir, "pids.current")); err == nil {
			st.PidsCurrent = n
		}
		return st, nil
	}
	for _, dir := range cg.dirs {
		if v, err := readUint(filepath.Join(dir, "memory.usage_in_bytes")); err == nil {
			st.MemoryUsageBytes = v
			// v1 says "no limit" with a huge page-aligned number.
			if lim, err := readUint(filepath.Join(dir, "memory.limit_in_bytes")); err == nil && lim < 1<<62 {
				st.MemoryLimitBytes = lim
			}
			st.MemoryStat, _ = readKeyValues(filepath.Join(dir, "memory.stat"))
		}
		if ns, err := readUint(filepath.Join(dir, "cpuacct.usage")); err == nil {
			st.CPUStat = map[string]uint64{"usage_usec": ns / 1000}
		}
	}
	return st, nil
}

func readCgroupFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCgroupFile))
	return string(data), err
}

// readUint reads a file holding one number ("max" reads as 0).
func readUint(path string) (uint64, error) {
	s, err := readCgroupFile(path)
	if err != nil {
		return 0, err
	}
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// readKeyValues reads a flat-keyed cgroup file ("key value" lines).
func readKeyValues(path string) (map[string]uint64, error) {
	s, err := readCgroupFile(path)
	if err != nil {
		return nil, err
	}
	return parseKeyValues(s), nil
}

func parseKeyValues(s string) map[string]uint64 {
	out := map[string]uint64{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for n := 0; n < maxCgroupLines && sc.Scan(); n++ {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if u, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = u
		}
	}
	return out
}

// readPIDs reads cgroup.procs, at most protocol.MaxStatsPIDs of them.
func readPIDs(path string) ([]int, error) {
	s, err := readCgroupFile(path)
	if err != nil {
		return nil, fmt.Errorf("listing the container's processes: %w", err)
	}
	pids := []int{}
	for _, f := range strings.Fields(s) {
		if len(pids) == protocol.MaxStatsPIDs {
			break
		}
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
