package main

import (
	"testing"
	"time"
)

func TestParseProbe(t *testing.T) {
	wall, cpu, hasCPU, ok := parseProbe("level=WARN msg=x\nvmm: first KVM_RUN after 4123456 ns (cpu 3000000 ns)\nmore\n")
	if !ok || !hasCPU || wall != 4123456*time.Nanosecond || cpu != 3*time.Millisecond {
		t.Errorf("parseProbe = %v, %v, %v, %v; want 4.123456ms, 3ms, true, true", wall, cpu, hasCPU, ok)
	}
	wall, _, hasCPU, ok = parseProbe("vmm: first KVM_RUN after 12 ns\n")
	if !ok || hasCPU || wall != 12 {
		t.Errorf("old-style line: %v, %v, %v", wall, hasCPU, ok)
	}
	for _, in := range []string{"", "vmm: first KVM_RUN after x ns", "vmm: first KVM_RUN after 12"} {
		if _, _, _, ok := parseProbe(in); ok {
			t.Errorf("parseProbe(%q) succeeded", in)
		}
	}
}
