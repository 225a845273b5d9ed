package main

import (
	"strings"
	"testing"
)

func TestFormatUptime(t *testing.T) {
	tests := []struct {
		procUptime string
		want       string
		wantErr    bool
	}{
		{procUptime: "0.53 0.40\n", want: "0.53"},
		{procUptime: "12345.67 98765.43\n", want: "12345.67"},
		{procUptime: "3 1", want: "3.00"},
		{procUptime: "", wantErr: true},
		{procUptime: "abc 1.0", wantErr: true},
		{procUptime: "-1.00 0", wantErr: true},
	}
	for _, tt := range tests {
		got, err := formatUptime(tt.procUptime)
		if (err != nil) != tt.wantErr {
			t.Errorf("formatUptime(%q) error = %v, want error %v", tt.procUptime, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("formatUptime(%q) = %q, want %q", tt.procUptime, got, tt.want)
		}
	}
}

func TestReadyLine(t *testing.T) {
	line := readyLine("1.25")
	// Tests outside this package wait for this exact prefix on the console.
	if !strings.HasPrefix(line, "vmm-guest: ready") {
		t.Errorf("ready line %q lost its stable prefix", line)
	}
	if line != "vmm-guest: ready uptime=1.25\n" {
		t.Errorf("readyLine = %q", line)
	}
	if strings.Count(line, "\n") != 1 {
		t.Errorf("ready line %q must be exactly one line", line)
	}
}
