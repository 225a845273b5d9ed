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

// TestStateless backs the package's claim that a snapshot has nothing to
// save: whatever the guest writes, it reads the same afterwards.
func TestStateless(t *testing.T) {
	p := New(func() {}, func() {})
	b := make([]byte, 4)
	for off := range uint64(Size) {
		for v := range 256 {
			p.Write(off, []byte{byte(v)})
			for r := range uint64(Size) {
				b[0], b[1], b[2], b[3] = 0xff, 0xff, 0xff, 0xff
				p.Read(r, b)
				if b[0]|b[1]|b[2]|b[3] != 0 {
					t.Fatalf("after writing %#x at %d, offset %d reads % x", v, off, r, b)
				}
			}
		}
	}
}
