package main

import (
	"testing"
	"time"
)

func TestParseGuestClock(t *testing.T) {
	const tag = "guest-clock-2:"
	const cmd = `$ read -r up rest < /proc/uptime; echo $up g""uest-clock-2:`
	tests := []struct {
		name    string
		lines   []string
		want    float64
		wantErr bool
	}{
		{"answer", []string{cmd, "123.45 guest-clock-2:", "$ "}, 123.45, false},
		{"after the prompt", []string{"$ 9.50 guest-clock-2:"}, 9.5, false},
		{"the newest answer wins", []string{"1.00 guest-clock-2:", "2.00 guest-clock-2:"}, 2, false},
		{"an earlier probe only", []string{"5.00 guest-clock-1:"}, 0, true},
		{"a later probe's tag is not this one's", []string{"5.00 guest-clock-21:"}, 0, true},
		{"only the echo", []string{cmd}, 0, true},
		{"no uptime", []string{"guest-clock-2:"}, 0, true},
		{"not a number", []string{"$ guest-clock-2:"}, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseGuestClock(tc.lines, tag)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("uptime = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestGuestClockRate(t *testing.T) {
	tests := []struct {
		name    string
		a, b    guestClockReading
		want    float64
		wantErr bool
	}{
		{"in step", guestClockReading{10, 5 * time.Second}, guestClockReading{30, 25 * time.Second}, 1, false},
		{"half speed", guestClockReading{10, 0}, guestClockReading{15, 10 * time.Second}, 0.5, false},
		{"no host time", guestClockReading{10, time.Second}, guestClockReading{11, time.Second}, 0, true},
		{"guest clock stopped", guestClockReading{10, 0}, guestClockReading{10, time.Second}, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := guestClockRate(tc.a, tc.b)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("rate = %v, want %v", got, tc.want)
			}
		})
	}
}
