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

// TestE820Reserved checks that extra reserved ranges (the PCI ECAM window)
// land in address order between the RAM entries, RAM unchanged.
func TestE820Reserved(t *testing.T) {
	ecam := E820Entry{0xE000_0000, 1 * mib, E820Reserved}
	got := E820Map(6*gib, ecam)
	want := []E820Entry{
		{0, 0x9FC00, E820RAM},
		{0x9FC00, 0x400, E820Reserved},
		{0xE0000, 0x20000, E820Reserved},
		{0x100000, 3*gib - 0x100000, E820RAM},
		ecam,
		{4 * gib, 3 * gib, E820RAM},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("E820Map(6 GiB, ECAM) = %+v, want %+v", got, want)
	}
	if got := E820Map(128*mib, ecam); got[len(got)-1] != ecam || len(got) != 5 {
		t.Errorf("E820Map(128 MiB, ECAM) = %+v", got)
	}
}

// TestHighMMIOStart: MMIO above 4 GiB starts at 4 GiB or the next 1 GiB
// boundary past the relocated RAM, never inside an e820 entry.
func TestHighMMIOStart(t *testing.T) {
	for _, tt := range []struct{ mem, want uint64 }{
		{128 * mib, 4 * gib},
		{3 * gib, 4 * gib},
		{3*gib + 4096, 5 * gib},
		{4 * gib, 5 * gib},
		{6 * gib, 7 * gib},
		{6*gib + 512*mib, 8 * gib},
	} {
		got := HighMMIOStart(tt.mem)
		if got != tt.want {
			t.Errorf("HighMMIOStart(%#x) = %#x, want %#x", tt.mem, got, tt.want)
		}
		for _, e := range E820Map(tt.mem) {
			if e.Addr+e.Size > got {
				t.Errorf("mem %#x: e820 entry %+v reaches past %#x", tt.mem, e, got)
			}
		}
	}
}
