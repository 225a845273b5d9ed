package i8042

import "testing"

func TestController(t *testing.T) {
	resets := 0
	c := New(func() { resets++ })
	b := []byte{0}
	cmd, data := c.Command(), c.Data()

	cmd.Read(0, b)
	if b[0]&statusOutputFull != 0 {
		t.Fatalf("status %#x: output full at reset", b[0])
	}
	tests := []struct {
		name    string
		command byte
		arg     []byte
		want    byte
	}{
		{"self test", cmdSelfTest, nil, selfTestPassed},
		{"interface test", cmdInterfaceTest, nil, 0},
		{"write then read command byte", cmdWriteCommandByte, []byte{0x47}, 0x47},
	}
	for _, tt := range tests {
		cmd.Write(0, []byte{tt.command})
		if tt.arg != nil {
			data.Write(0, tt.arg)
			cmd.Write(0, []byte{cmdReadCommandByte})
		}
		cmd.Read(0, b)
		if b[0]&statusOutputFull == 0 {
			t.Fatalf("%s: no output", tt.name)
		}
		data.Read(0, b)
		if b[0] != tt.want {
			t.Fatalf("%s: got %#x want %#x", tt.name, b[0], tt.want)
		}
	}
	if resets != 0 {
		t.Fatal("reset before asked")
	}
	cmd.Write(0, []byte{cmdPulseReset})
	if resets != 1 {
		t.Fatalf("resets = %d after 0xfe", resets)
	}
}
