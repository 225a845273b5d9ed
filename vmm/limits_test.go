package vmm

import (
	"strings"
	"testing"
)

func TestCheckLimits(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want string // "" for no error
	}{
		{"mem min", CheckMemSize(MinMemSize), ""},
		{"mem max", CheckMemSize(MaxMemSize), ""},
		{"mem below min", CheckMemSize(MinMemSize - 4096), "below the minimum of 16 MiB"},
		{"mem above max", CheckMemSize(MaxMemSize + 4096), "exceeds the maximum"},
		{"mem unaligned", CheckMemSize(MinMemSize + 1), "page size"},
		{"MiB min", CheckMemMiB(MinMemSize >> 20), ""},
		{"MiB max", CheckMemMiB(MaxMemSize >> 20), ""},
		{"MiB below min", CheckMemMiB(15), "below the minimum of 16 MiB"},
		{"MiB negative", CheckMemMiB(-1), "-1 MiB is out of range 16-1048576 MiB"},
		{"MiB above max", CheckMemMiB(MaxMemSize>>20 + 1), "out of range"},
		{"MiB overflowing", CheckMemMiB(1 << 62), "out of range"},
		{"cpus 1", CheckCPUs(1), ""},
		{"cpus max", CheckCPUs(MaxCPUs), ""},
		{"cpus 0", CheckCPUs(0), "0 vCPUs is out of range 1-254"},
		{"cpus above max", CheckCPUs(MaxCPUs + 1), "out of range"},
		{"drives 0", CheckDrives(0), ""},
		{"drives max", CheckDrives(MaxDrives), ""},
		{"drives above max", CheckDrives(MaxDrives + 1), "27 drives: at most 26"},
		{"queues 1", CheckNetQueues(1), ""},
		{"queues max", CheckNetQueues(MaxNetQueues), ""},
		{"queues 0", CheckNetQueues(0), "0 queue pairs is outside 1-16"},
		{"queues above max", CheckNetQueues(MaxNetQueues + 1), "outside"},
		{"cid min", CheckGuestCID(MinGuestCID), ""},
		{"cid max", CheckGuestCID(MaxGuestCID), ""},
		{"cid host", CheckGuestCID(2), "guest CID 2 is out of range 3-4294967294"},
		{"cid any", CheckGuestCID(MaxGuestCID + 1), "out of range"},
		{"cid negative", CheckGuestCID(-1), "out of range"},
	} {
		switch {
		case tt.want == "" && tt.err != nil:
			t.Errorf("%s: %v", tt.name, tt.err)
		case tt.want != "" && (tt.err == nil || !strings.Contains(tt.err.Error(), tt.want)):
			t.Errorf("%s: error %v, want one containing %q", tt.name, tt.err, tt.want)
		}
	}
}
