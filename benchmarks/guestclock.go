package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Throughput a guest program reports (fio's IOPS and MB/s) is work per
// second of the guest's clock, and a guest's clock need not keep host
// time. On kvm-pvm, QEMU's guest marks its TSC unstable at boot (the
// clocksource watchdog sees the emulated guest's late timer ticks as TSC
// skew) and falls back to jiffies, which then run at half to three
// quarters of real time: its figures come out too high by as much. The io
// suites therefore read the guest's clock before and after each test, over
// the console, and convert the guest's figures to host time with the
// measured rate.

// guestClockTag starts the line the guest's shell prints for a probe.
const guestClockTag = "guest-clock"

// guestClock probes one guest's clock through its shell on the console.
type guestClock struct {
	p   *Proc
	seq int
}

// guestClockReading is one probe: the guest's uptime (CLOCK_BOOTTIME,
// /proc/uptime) and when the host saw the answer, since the launch.
type guestClockReading struct {
	guest float64 // seconds
	host  time.Duration
}

// read asks the guest for its uptime and waits up to d for the answer,
// "<uptime> guest-clock-<n>:". The tag comes last because the shell's echo
// can write its arguments in pieces: seeing the tag means the number
// before it has arrived.
func (c *guestClock) read(ctx context.Context, d time.Duration) (guestClockReading, error) {
	c.seq++
	tag := fmt.Sprintf("%s-%d:", guestClockTag, c.seq)
	c.p.out.mark(tag) // before the answer can arrive, so that it is dated when it does
	// The shell's read builtin, not cat: a fork and exec takes seconds in
	// an emulated guest. The empty quotes keep the terminal's echo of the
	// command line from containing the tag.
	if err := c.p.Send(fmt.Sprintf("read -r up rest < /proc/uptime; echo $up %s\"\"%s\n", tag[:1], tag[1:])); err != nil {
		return guestClockReading{}, err
	}
	at, err := c.p.WaitOutput(tag, d)
	if err != nil {
		return guestClockReading{}, fmt.Errorf("guest clock: %w", err)
	}
	if ctx.Err() != nil {
		return guestClockReading{}, ctx.Err()
	}
	up, err := parseGuestClock(c.p.Tail(200), tag)
	if err != nil {
		return guestClockReading{}, err
	}
	return guestClockReading{guest: up, host: at}, nil
}

// parseGuestClock finds the probe's answer among console lines: the
// uptime in seconds, then the tag.
func parseGuestClock(lines []string, tag string) (float64, error) {
	for i := len(lines) - 1; i >= 0; i-- {
		j := strings.Index(lines[i], tag)
		if j < 0 {
			continue
		}
		f := strings.Fields(lines[i][:j])
		if len(f) == 0 {
			return 0, fmt.Errorf("guest clock: no uptime in %q", lines[i])
		}
		up, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil || up <= 0 {
			return 0, fmt.Errorf("guest clock: bad uptime in %q", lines[i])
		}
		return up, nil
	}
	return 0, fmt.Errorf("guest clock: no %q line on the console", tag)
}

// guestClockRate is guest seconds per host second between two readings.
func guestClockRate(a, b guestClockReading) (float64, error) {
	dh := (b.host - a.host).Seconds()
	dg := b.guest - a.guest
	if dh <= 0 || dg <= 0 {
		return 0, fmt.Errorf("guest clock: no time passed between the readings (guest %.2f s, host %.2f s)", dg, dh)
	}
	return dg / dh, nil
}
