package acpipm

import "testing"

func TestPM(t *testing.T) {
	tests := []struct {
		name                string
		offset              uint64
		value               byte
		wantOff, wantResets int
	}{
		{"S5 with SLP_EN powers off", SleepControl, S5SleepType<<sleepTypeShift | sleepEnable, 1, 0},
		{"S5 without SLP_EN is ignored", SleepControl, S5SleepType << sleepTypeShift, 0, 0},
		{"S3 is ignored", SleepControl, 3<<sleepTypeShift | sleepEnable, 0, 0},
		{"reset value resets", Reset, ResetValue, 0, 1},
		{"other reset values are ignored", Reset, 0x06, 0, 0},
		{"status writes are ignored", SleepStatus, 0xff, 0, 0},
	}
	for _, tt := range tests {
		off, resets := 0, 0
		p := New(func() { off++ }, func() { resets++ })
		p.Write(tt.offset, []byte{tt.value})
		if off != tt.wantOff || resets != tt.wantResets {
			t.Errorf("%s: poweroffs %d resets %d, want %d %d", tt.name, off, resets, tt.wantOff, tt.wantResets)
		}
	}
}
