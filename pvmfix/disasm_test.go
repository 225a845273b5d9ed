package pvmfix

import (
	"fmt"
	"strings"
	"testing"

	"github.com/govmm/vmm/kvm"
)

func TestFormatCode(t *testing.T) {
	tests := []struct {
		name string
		code []byte
		mode int
		pc   uint64
		want string
	}{
		{"xsave64 and what follows", []byte{0x48, 0x0f, 0xae, 0x27, 0x31, 0xc0}, 64, 0, `code=48 0f ae 27 31 c0 insn="xsave64 (%rdi)"`},
		{"xrstor with SIB and GS", []byte{0x65, 0x0f, 0xae, 0x6c, 0x24, 0xf0}, 64, 0, `code=65 0f ae 6c 24 f0 insn="xrstor %gs:-0x10(%rsp)"`},
		{"popcnt", []byte{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, 64, 0, `code=f3 48 0f b8 c7 insn="popcnt %rdi,%rax"`},
		{"ud2", []byte{0x0f, 0x0b, 0xcc}, 64, 0, `code=0f 0b cc insn="ud2"`},
		{"a branch target from pc", []byte{0xe8, 0x10, 0x00, 0x00, 0x00}, 64, 0xffff_ffff_8100_0000, `code=e8 10 00 00 00 insn="callq 0xffffffff81000015"`},
		{"32-bit mode: 48 is dec", []byte{0x48, 0x0f, 0xae, 0x27}, 32, 0, `code=48 0f ae 27 insn="dec %eax"`},
		{"16-bit mode", []byte{0x89, 0xd8}, 16, 0, `code=89 d8 insn="mov %bx,%ax"`},
		{"undecodable: bytes only", []byte{0x0f, 0x0a, 0x00}, 64, 0, `code=0f 0a 00`},
		{"invalid in 64-bit mode: bytes only", []byte{0x06}, 64, 0, `code=06`},
		{"cut short by an unmapped page: bytes only", []byte{0x48, 0x0f, 0xae}, 64, 0, `code=48 0f ae`},
		{"a prefix alone: bytes only", []byte{0x66}, 64, 0, `code=66`},
		{"nothing", nil, 64, 0, `code=`},
	}
	for _, tt := range tests {
		if got := formatCode(tt.code, tt.mode, tt.pc); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestCodeMode(t *testing.T) {
	long := kvm.Sregs{EFER: eferLMA}
	long.CS.L = 1
	compat := kvm.Sregs{EFER: eferLMA}
	compat.CS.DB = 1
	for _, tt := range []struct {
		sregs kvm.Sregs
		want  int
	}{
		{long, 64}, {compat, 32}, {kvm.Sregs{}, 16},
	} {
		if got := codeMode(tt.sregs); got != tt.want {
			t.Errorf("%+v: mode %d, want %d", tt.sregs.CS, got, tt.want)
		}
	}
}

func TestDescribeCode(t *testing.T) {
	f := newFakeVCPU(t, 0x0f, 0x01, 0xd0, 0x90)
	if got := DescribeCode(f.mem, f.sregs, fakeCode); !strings.HasPrefix(got, "code=0f 01 d0 90 00") || !strings.HasSuffix(got, ` insn="xgetbv"`) || strings.Count(got, " ") != 16 {
		t.Errorf("readable code: %s", got)
	}
	// The last two bytes before a page that is not present.
	f.mem.WriteAt([]byte{0x0f, 0x0b}, 0xa000+pageSize-2)
	if got := DescribeCode(f.mem, f.sregs, fakeAbsent-2); got != `code=0f 0b insn="ud2"` {
		t.Errorf("code up to an absent page: %s", got)
	}
	if got := DescribeCode(f.mem, f.sregs, fakeAbsent); !strings.HasPrefix(got, "code unavailable: ") {
		t.Errorf("code on an absent page: %s", got)
	}
}

// FuzzFormatCode: whatever the guest's bytes, the report has them all,
// and an instruction only when x86asm decodes one.
func FuzzFormatCode(f *testing.F) {
	f.Add([]byte{0x48, 0x0f, 0xae, 0x27}, uint8(64), uint64(0))
	f.Add([]byte{0x62, 0xf1, 0x7c, 0x48, 0x10, 0x04, 0x24}, uint8(64), uint64(1)) // EVEX
	f.Add([]byte{0xc4, 0xe2, 0x79, 0x18, 0x00}, uint8(32), uint64(0))             // VEX
	f.Fuzz(func(t *testing.T, code []byte, m uint8, pc uint64) {
		mode := []int{16, 32, 64}[int(m)%3]
		got := formatCode(code, mode, pc)
		want := fmt.Sprintf("code=% x", code)
		if got != want && !strings.HasPrefix(got, want+` insn="`) {
			t.Fatalf("%q for % x", got, code)
		}
	})
}
