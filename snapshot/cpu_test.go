package snapshot

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestVendorFromCPUID(t *testing.T) {
	for _, c := range []struct {
		table []CPUIDEntry
		want  string
	}{
		{[]CPUIDEntry{intelLeaf0}, "GenuineIntel"},
		{[]CPUIDEntry{{Function: 1}, amdLeaf0}, "AuthenticAMD"},
		{[]CPUIDEntry{{Function: 1}}, ""},
		{nil, ""},
	} {
		if got := VendorFromCPUID(c.table); got != c.want {
			t.Errorf("%v: vendor %q, want %q", c.table, got, c.want)
		}
	}
}

func TestFeaturesFromCPUID(t *testing.T) {
	table := []CPUIDEntry{
		intelLeaf0,
		// Hypervisor, OSXSAVE and TSC-deadline are the VMM's or the
		// guest's doing, HTT the VMM's: none is a feature to compare.
		{Function: 1, ECX: bit1ECXSSE42 | bit1ECXHypervisor | bit1ECXOSXSAVE | bit1ECXTSCDeadline, EDX: 1<<0 | bit1EDXHTT},
		{Function: 7, Index: 1, EAX: 1 << 4},
		{Function: 7, Index: 0, EBX: bit7EBXAVX2, ECX: bit7ECXOSPKE | 1<<3},
		{Function: 0xd, Index: 0, EAX: 0x7},
		{Function: 0xd, Index: 2, EAX: 0x100}, // a size, not a feature word
		{Function: 0x80000001, Index: 0, EDX: 1 << 29},
		{Function: 0x80000008, EBX: 0}, // empty words are left out
		{Function: 0x40000001, EAX: 0xffffffff},
	}
	want := CPUFeatures{
		{Function: 1, Register: ECX, Bits: bit1ECXSSE42},
		{Function: 1, Register: EDX, Bits: 1},
		{Function: 7, Index: 0, Register: EBX, Bits: bit7EBXAVX2},
		{Function: 7, Index: 0, Register: ECX, Bits: 1 << 3},
		{Function: 7, Index: 1, Register: EAX, Bits: 1 << 4},
		{Function: 0xd, Index: 0, Register: EAX, Bits: 0x7},
		{Function: 0x80000001, Register: EDX, Bits: 1 << 29},
	}
	if got := FeaturesFromCPUID(table); !reflect.DeepEqual(got, want) {
		t.Errorf("features\n%+v\nwant\n%+v", got, want)
	}
}

func TestNonIndexedLeafAnyIndex(t *testing.T) {
	// A leaf whose output does not depend on ECX matches whatever index
	// the table gives it.
	got := FeaturesFromCPUID([]CPUIDEntry{{Function: 1, Index: 3, EDX: 1}})
	if want := (CPUFeatures{{Function: 1, Register: EDX, Bits: 1}}); !reflect.DeepEqual(got, want) {
		t.Errorf("features %+v, want %+v", got, want)
	}
}

func TestMissingNames(t *testing.T) {
	need := CPUFeatures{
		{Function: 7, Register: EBX, Bits: bit7EBXAVX512F | 1<<6},
		{Function: 0xd, Register: EAX, Bits: 1 << 18},
		{Function: 0x80000001, Register: EDX, Bits: 1 << 29},
	}
	have := CPUFeatures{{Function: 0x80000001, Register: EDX, Bits: 1 << 29}}
	want := []string{"CPUID.(EAX=0x7,ECX=0):EBX[6]", "AVX512F", "XCR0.XTILEDATA"}
	if got := have.Missing(need); !reflect.DeepEqual(got, want) {
		t.Errorf("missing %q, want %q", got, want)
	}
	if got := need.Missing(need); len(got) != 0 {
		t.Errorf("a CPU lacks its own features: %q", got)
	}
}

func TestRegisterJSON(t *testing.T) {
	w := FeatureWord{Function: 0x80000001, Register: EDX, Bits: 5}
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"function":2147483649,"index":0,"register":"edx","bits":5}`; string(b) != want {
		t.Errorf("JSON %s, want %s", b, want)
	}
	var back FeatureWord
	if err := json.Unmarshal(b, &back); err != nil || back != w {
		t.Errorf("round trip %+v, %v; want %+v", back, err, w)
	}
	if err := json.Unmarshal([]byte(`{"register":"rax"}`), &back); err == nil {
		t.Error(`register "rax" accepted`)
	}
	if _, err := json.Marshal(FeatureWord{Register: 4}); err == nil {
		t.Error("register 4 encoded")
	}
}
