package devices

import (
	"errors"
	"testing"
)

type recorder struct {
	reads, writes []uint64
}

func (r *recorder) Read(off uint64, data []byte) {
	r.reads = append(r.reads, off)
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}
func (r *recorder) Write(off uint64, data []byte) { r.writes = append(r.writes, off) }

func TestBusRegisterRejectsOverlap(t *testing.T) {
	tests := []struct {
		name       string
		base, size uint64
		wantErr    bool
	}{
		{"disjoint below", 0x100, 0x10, false},
		{"touching below", 0x3f0, 0x8, false},
		{"exact duplicate", 0x3f8, 8, true},
		{"overlap start", 0x3f4, 8, true},
		{"overlap end", 0x3ff, 2, true},
		{"inside", 0x3fa, 1, true},
		{"covering", 0x300, 0x200, true},
		{"touching above", 0x400, 4, false},
		{"empty", 0x500, 0, true},
		{"wrapping", ^uint64(0) - 1, 4, true},
	}
	b := NewBus("pio")
	if err := b.Register("com1", 0x3f8, 8, &recorder{}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		err := b.Register(tt.name, tt.base, tt.size, &recorder{})
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: Register(%#x, %#x) error = %v, wantErr %v", tt.name, tt.base, tt.size, err, tt.wantErr)
		}
	}
}

func TestBusDispatch(t *testing.T) {
	b := NewBus("mmio")
	a, c := &recorder{}, &recorder{}
	if err := b.Register("a", 0x1000, 0x100, a); err != nil {
		t.Fatal(err)
	}
	if err := b.Register("c", 0x2000, 0x10, c); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4)
	if err := b.Read(0x1010, data); err != nil || data[0] != 0x10 {
		t.Fatalf("read a: %v %x", err, data)
	}
	if err := b.Write(0x200c, data); err != nil || len(c.writes) != 1 || c.writes[0] != 0xc {
		t.Fatalf("write c: %v %v", err, c.writes)
	}
	// Straddling the end of a range is not a hit.
	if err := b.Read(0x200e, data); !errors.Is(err, ErrUnmapped) {
		t.Fatalf("straddling read: %v", err)
	}
	if data[0] != 0xff || data[3] != 0xff {
		t.Fatalf("unmapped read returned %x, want all ones", data)
	}
	if err := b.Write(0x5000, data); !errors.Is(err, ErrUnmapped) {
		t.Fatalf("unmapped write: %v", err)
	}
	if err := b.Unregister(0x1000); err != nil {
		t.Fatal(err)
	}
	if err := b.Read(0x1010, data); !errors.Is(err, ErrUnmapped) {
		t.Fatalf("read after unregister: %v", err)
	}
}
