package kvm

import (
	"testing"
)

func TestDirtyLogRefusesNoPages(t *testing.T) {
	vm := &VM{fd: -1}
	if _, err := vm.DirtyLog(0, 0); err == nil {
		t.Error("a dirty log of 0 pages was asked of KVM")
	}
}

// A real-mode guest writes two pages of a slot logging dirty pages: the
// log has them, and reading it cleared it. A slot without the flag has no
// log.
func TestDirtyLogGuestWrites(t *testing.T) {
	s := openOrSkip(t)
	code := []byte{
		0xc6, 0x06, 0x00, 0x50, 0x01, // mov byte [0x5000], 1
		0xc6, 0x06, 0x01, 0x90, 0x02, // mov byte [0x9001], 2
		0xf4, // hlt
	}
	vcpu, vm := realModeVM(t, s, code, MemoryFlagLogDirtyPages)
	for i := 0; ; i++ {
		exit, err := vcpu.Run()
		if err != nil {
			t.Fatal(err)
		}
		if exit == ExitHLT {
			break
		}
		if i == 10 {
			t.Fatalf("guest did not halt (last exit %v)", exit)
		}
	}
	const pages = 0x10000 / 0x1000
	bm, err := vm.DirtyLog(0, pages)
	if err != nil {
		t.Fatal(err)
	}
	if len(bm) != 1 || bm[0]&(1<<5) == 0 || bm[0]&(1<<9) == 0 {
		t.Fatalf("dirty log %#x, want pages 5 and 9 in one word", bm)
	}
	if bm, err := vm.DirtyLog(0, pages); err != nil || bm[0]&(1<<5|1<<9) != 0 {
		t.Errorf("second read %#x, %v: want the pages cleared", bm, err)
	}

	_, plain := realModeVM(t, s, code, 0)
	if _, err := plain.DirtyLog(0, pages); err == nil {
		t.Error("a slot without KVM_MEM_LOG_DIRTY_PAGES gave a dirty log")
	}
}
