package main

import "testing"

func TestSplitProfile(t *testing.T) {
	const report = `# Samples: 1K
#
    60.00%  [kernel.kallsyms]  [k] x86_decode_insn
    30.00%  vmm                [.] runtime.usleep
    10.00%  [kernel.kallsyms]  [k] native_read_msr

`
	k, u, top := splitProfile(report, 2)
	if k != 70 || u != 30 || len(top) != 2 || top[1] != "    30.00%  vmm                [.] runtime.usleep" {
		t.Errorf("splitProfile = %v, %v, %q", k, u, top)
	}
}

func TestCommName(t *testing.T) {
	if got := commName("/usr/bin/qemu-system-x86_64"); got != "qemu-system-x86" {
		t.Errorf("commName = %q", got)
	}
}
