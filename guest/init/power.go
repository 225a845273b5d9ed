package main

import (
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// powerOff flushes filesystems and turns the machine off. It returns only
// if the kernel refuses, and then PID 1 must stay alive: its exit would
// panic the kernel.
func powerOff(console io.Writer) {
	fmt.Fprintln(console, "vmm-guest: powering off")
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintf(console, "vmm-guest: power off: %v; halting\n", err)
	}
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_HALT); err != nil {
		fmt.Fprintf(console, "vmm-guest: halt: %v; idling\n", err)
	}
	reapForever()
}
