package boot

import (
	"reflect"
	"testing"

	"github.com/govmm/vmm/memory"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

func TestMemoryLayout(t *testing.T) {
	tests := []struct {
		mem  uint64
		want []memory.Layout
	}{
		{128 * mib, []memory.Layout{{GuestAddr: 0, Size: 128 * mib}}},
		{3 * gib, []memory.Layout{{GuestAddr: 0, Size: 3 * gib}}},
		{6 * gib, []memory.Layout{{GuestAddr: 0, Size: 3 * gib}, {GuestAddr: 4 * gib, Size: 3 * gib}}},
	}
	for _, tt := range tests {
		if got := MemoryLayout(tt.mem); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("MemoryLayout(%#x) = %+v, want %+v", tt.mem, got, tt.want)
		}
	}
}

func TestE820Map(t *testing.T) {
	base := []E820Entry{
		{0, 0x9FC00, E820RAM},
		{0x9FC00, 0x400, E820Reserved},
		{0xE0000, 0x20000, E820Reserved},
	}
	tests := []struct {
		mem  uint64
		want []E820Entry
	}{
		{128 * mib, append(base[:3:3], E820Entry{0x100000, 128*mib - 0x100000, E820RAM})},
		{3 * gib, append(base[:3:3], E820Entry{0x100000, 3*gib - 0x100000, E820RAM})},
		{6 * gib, append(base[:3:3],
			E820Entry{0x100000, 3*gib - 0x100000, E820RAM},
			E820Entry{4 * gib, 3 * gib, E820RAM})},
	}
	for _, tt := range tests {
		got := E820Map(tt.mem)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("E820Map(%#x) = %+v, want %+v", tt.mem, got, tt.want)
		}
		// RAM in the map must be exactly the RAM MemoryLayout maps.
		var ram uint64
		for _, e := range got {
			if e.Type == E820RAM {
				ram += e.Size
			}
		}
		if want := tt.mem - (0x100000 - 0x9FC00); ram != want {
			t.Errorf("E820Map(%#x): %#x bytes of RAM, want %#x", tt.mem, ram, want)
		}
	}
}

func TestValidateMemSize(t *testing.T) {
	tests := []struct {
		mem uint64
		ok  bool
	}{
		{0, false},
		{16*mib - 4096, false},
		{16 * mib, true},
		{16*mib + 1, false},
		{6 * gib, true},
		{MaxMemSize, true},
		{MaxMemSize + 4096, false},
	}
	for _, tt := range tests {
		if err := ValidateMemSize(tt.mem); (err == nil) != tt.ok {
			t.Errorf("ValidateMemSize(%#x) = %v, want ok=%v", tt.mem, err, tt.ok)
		}
	}
}
