package main

import (
	"strings"
	"testing"
	"time"
)

func TestIoctlTimes(t *testing.T) {
	const trace = `100 ioctl(5, KVM_GET_API_VERSION, 0) = 12 <0.000010>
100 ioctl(5, KVM_CREATE_VM, 0 <unfinished ...>
101 mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE, -1, 0) = 0x7f00 <0.000003>
100 <... ioctl resumed>) = 8 <0.000500>
100 ioctl(8, KVM_CREATE_IRQCHIP, 0) = 0 <0.012000>
100 ioctl(8, KVM_CREATE_IRQCHIP, 0) = -1 EEXIST (File exists) <0.001000>
102 ioctl(9, KVM_RUN, 0) = 0 <0.005000>
100 ioctl(8, KVM_CREATE_PIT2, 0) = 0 <0.004000>
`
	got, err := IoctlTimes(strings.NewReader(trace))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Duration{
		"KVM_GET_API_VERSION": 10 * time.Microsecond,
		"KVM_CREATE_VM":       500 * time.Microsecond,
		"KVM_CREATE_IRQCHIP":  13 * time.Millisecond,
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if d := got[k] - v; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, err := IoctlTimes(strings.NewReader("1 ioctl(5, KVM_CREATE_VM, 0) = 3 <0.1>\n")); err == nil {
		t.Error("a trace without KVM_RUN gave no error")
	}
}
