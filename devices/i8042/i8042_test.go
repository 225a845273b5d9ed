package i8042

import "testing"

func TestController(t *testing.T) {
	resets := 0
	c := New(nil, func() { resets++ })
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

// fakeIRQ counts rising edges.
type fakeIRQ struct {
	high  bool
	edges int
}

func (f *fakeIRQ) SetLevel(high bool) error {
	if high && !f.high {
		f.edges++
	}
	f.high = high
	return nil
}

func TestSendCtrlAltDel(t *testing.T) {
	tests := []struct {
		name        string
		commandByte byte
		want        []byte
		wantEdges   int
	}{
		{"set 2, interrupts on", ctrKbdInt, ctrlAltDelSet2, len(ctrlAltDelSet2)},
		{"set 1 when translating", ctrKbdInt | ctrTranslate, ctrlAltDelSet1, len(ctrlAltDelSet1)},
		{"interrupts off: polled only", 0, ctrlAltDelSet2, 0},
	}
	for _, tt := range tests {
		irq := &fakeIRQ{}
		c := New(irq, nil)
		cmd, data := c.Command(), c.Data()
		cmd.Write(0, []byte{cmdWriteCommandByte})
		data.Write(0, []byte{tt.commandByte})
		if err := c.SendCtrlAltDel(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got []byte
		b := []byte{0}
		for {
			cmd.Read(0, b)
			if b[0]&statusOutputFull == 0 {
				break
			}
			data.Read(0, b)
			got = append(got, b[0])
		}
		if string(got) != string(tt.want) {
			t.Errorf("%s: guest read % x, want % x", tt.name, got, tt.want)
		}
		if irq.edges != tt.wantEdges {
			t.Errorf("%s: %d interrupts, want one per byte (%d)", tt.name, irq.edges, tt.wantEdges)
		}
	}
}

func TestSendCtrlAltDelRefusesToOverflow(t *testing.T) {
	c := New(nil, nil)
	if err := c.SendCtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	if err := c.SendCtrlAltDel(); err != ErrBufferFull {
		t.Fatalf("second unread SendCtrlAltDel = %v, want ErrBufferFull", err)
	}
}
