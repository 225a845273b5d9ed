package rtc

import (
	"testing"
	"time"
)

func TestRTCReadsTimeInBCD(t *testing.T) {
	r := New()
	r.now = func() time.Time { return time.Date(2026, 11, 22, 13, 45, 59, 0, time.UTC) }
	tests := []struct {
		reg  byte
		want byte
	}{
		{regSeconds, 0x59}, {regMinutes, 0x45}, {regHours, 0x13}, {regDayOfMonth, 0x22},
		{regMonth, 0x11}, {regYear, 0x26}, {regCentury, 0x20}, {regA, regADivider}, {regD, regDValid},
	}
	b := []byte{0}
	for _, tt := range tests {
		r.Write(0, []byte{tt.reg | 0x80}) // NMI-disable bit must be ignored
		r.Read(1, b)
		if b[0] != tt.want {
			t.Errorf("reg %#x = %#x, want %#x", tt.reg, b[0], tt.want)
		}
	}
}
