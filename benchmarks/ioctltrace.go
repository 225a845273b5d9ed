package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// IoctlTimes sums, per ioctl request, the time strace -T saw the calls take
// before the first KVM_RUN: the host kernel's share of getting a VM ready.
func IoctlTimes(r io.Reader) (map[string]time.Duration, error) {
	// An strace -f -T ioctl line, with or without the PID column, is either
	// complete, `123 ioctl(8, KVM_CREATE_IRQCHIP, 0) = 0 <0.012>`, or split
	// by another thread's call: `123 ioctl(8, KVM_CREATE_VM, 0 <unfinished
	// ...>` then `123 <... ioctl resumed>) = 8 <0.0005>`.
	ioctlCall := regexp.MustCompile(`^(?:(\d+)\s+)?ioctl\(\d+, ([A-Z0-9_]+|0x[0-9a-f]+|_IOC\([^)]*\))`)
	ioctlResumed := regexp.MustCompile(`^(?:(\d+)\s+)?<\.\.\. ioctl resumed>`)
	syscallTime := regexp.MustCompile(`<(\d+\.\d+)>\s*$`)
	out := map[string]time.Duration{}
	pending := map[string]string{} // pid -> request of an unfinished call
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var pid, name string
		if m := ioctlCall.FindStringSubmatch(line); m != nil {
			pid, name = m[1], m[2]
			if name == "KVM_RUN" {
				return out, nil
			}
			if strings.HasSuffix(line, "<unfinished ...>") {
				pending[pid] = name
				continue
			}
		} else if m := ioctlResumed.FindStringSubmatch(line); m != nil {
			pid = m[1]
			name = pending[pid]
			delete(pending, pid)
		} else {
			continue
		}
		t := syscallTime.FindStringSubmatch(line)
		if t == nil || name == "" {
			continue
		}
		s, err := strconv.ParseFloat(t[1], 64)
		if err != nil {
			return nil, fmt.Errorf("strace time %q: %w", t[1], err)
		}
		out[name] += time.Duration(s * float64(time.Second))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read strace output: %w", err)
	}
	return out, fmt.Errorf("no KVM_RUN in the trace")
}
