package main

import "testing"

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"128M", 128 << 20, false},
		{"128", 128 << 20, false},
		{"512MiB", 512 << 20, false},
		{"512mb", 512 << 20, false},
		{"1G", 1 << 30, false},
		{"1GiB", 1 << 30, false},
		{"6g", 6 << 30, false},
		{"65536K", 64 << 20, false},
		{"1T", 1 << 40, false},
		{"", 0, true},
		{"M", 0, true},
		{"12X", 0, true},
		{"-5M", 0, true},
		{"1.5G", 0, true},
		{"99999999999999999999M", 0, true},
		{"17179869184T", 0, true},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
