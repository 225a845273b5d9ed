package main

import (
	"fmt"
	"strconv"
	"strings"
)

// readyPrefix starts the one line that tells whoever watches the console
// (people and tests alike) that the guest finished booting. Keep it stable.
const readyPrefix = "vmm-guest: ready"

// readyLine is printed once, just before the shell or vmm.run program starts.
func readyLine(uptime string) string {
	return fmt.Sprintf("%s uptime=%s\n", readyPrefix, uptime)
}

// formatUptime extracts seconds since boot from the contents of
// /proc/uptime ("<uptime> <idle>", both in seconds with two decimals).
func formatUptime(procUptime string) (string, error) {
	fields := strings.Fields(procUptime)
	if len(fields) == 0 {
		return "", fmt.Errorf("parsing /proc/uptime %q: empty", procUptime)
	}
	seconds, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || seconds < 0 {
		return "", fmt.Errorf("parsing /proc/uptime %q: not a number of seconds", procUptime)
	}
	return strconv.FormatFloat(seconds, 'f', 2, 64), nil
}
