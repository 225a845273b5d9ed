package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sparseFile makes a file of size bytes with only data written at the
// given offsets (one 4 KiB page each).
func sparseFile(t *testing.T, size int64, offsets ...int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mem")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for i := range page {
		page[i] = 0xa5
	}
	for _, off := range offsets {
		if _, err := f.WriteAt(page, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileSpaceSparse(t *testing.T) {
	const size = 64 << 20
	p := sparseFile(t, size, 0, 32<<20)
	apparent, allocated, err := fileSpace(p)
	if err != nil {
		t.Fatal(err)
	}
	if apparent != size {
		t.Errorf("apparent size %d, want %d", apparent, size)
	}
	// Two pages written: at least 8 KiB allocated, and far less than the
	// whole file (file systems may allocate a little more than written).
	if allocated < 8192 || allocated >= size/4 {
		t.Errorf("allocated %d bytes for two written pages of a %d-byte sparse file", allocated, int64(size))
	}
}

func TestFileSpaceDense(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state")
	data := make([]byte, 10000)
	for i := range data {
		data[i] = byte(i)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	apparent, allocated, err := fileSpace(p)
	if err != nil {
		t.Fatal(err)
	}
	if apparent != int64(len(data)) || allocated < apparent {
		t.Errorf("fileSpace = %d, %d; want %d and at least as much allocated", apparent, allocated, len(data))
	}
}

func TestFilesSpace(t *testing.T) {
	a := sparseFile(t, 1<<20, 0)
	b := sparseFile(t, 2<<20, 4096)
	ap, al, err := filesSpace(a, b)
	if err != nil {
		t.Fatal(err)
	}
	a1, l1, _ := fileSpace(a)
	a2, l2, _ := fileSpace(b)
	if ap != a1+a2 || al != l1+l2 || ap != 3<<20 {
		t.Errorf("filesSpace = %d, %d; want %d, %d", ap, al, a1+a2, l1+l2)
	}
	if _, _, err := filesSpace(a, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("filesSpace of a missing file succeeded")
	}
}

func TestStatMemFile(t *testing.T) {
	p := sparseFile(t, 1<<20, 0)
	id, err := statMemFile(p)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := st.Sys().(*syscall.Stat_t).Ino; id.inode != want || id.base != "mem" {
		t.Errorf("statMemFile = %+v, want inode %d and base mem", id, want)
	}
	if _, err := statMemFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("statMemFile of a missing file succeeded")
	}
}

// cloneSmaps is a restored vmm's smaps: the binary, guest RAM mapped from
// the memory file in two pieces (around the 32-bit hole), another file
// that happens to have the same inode on another device, and heap.
const cloneSmaps = `00400000-00800000 r-xp 00000000 08:01 1234                               /usr/bin/vmm
Size:               4096 kB
Rss:                2048 kB
Pss:                 100 kB
7f0000000000-7f0008000000 rw-p 00000000 08:01 777                        /tmp/vmm-bench-1/snap-tg-vmm-2/vmm.mem
Size:             131072 kB
Rss:                 900 kB
Pss:                 150 kB
7f1000000000-7f1000100000 rw-p 08000000 08:01 777                        /tmp/vmm-bench-1/snap-tg-vmm-2/vmm.mem (deleted)
Size:               1024 kB
Rss:                  40 kB
Pss:                  40 kB
7f2000000000-7f2000100000 r--p 00000000 00:05 777                        /usr/lib/other.so
Size:               1024 kB
Rss:                 500 kB
Pss:                 500 kB
7f3000000000-7f3004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:                3000 kB
Pss:                3000 kB
`

// qemuCloneSmaps is a restored QEMU's: guest RAM is anonymous.
const qemuCloneSmaps = `55d000000000-55d000800000 r-xp 00000000 08:01 99                         /usr/bin/qemu-system-x86_64
Size:               8192 kB
Rss:                6000 kB
Pss:                3000 kB
7f0000000000-7f0008200000 rw-p 00000000 00:00 0 
Size:             133120 kB
Rss:                1200 kB
Pss:                1200 kB
`

const cloneRollup = `00400000-7ffd00021000 ---p 00000000 00:00 0                          [rollup]
Rss:                6488 kB
Pss:                3790 kB
`

func TestClonePSS(t *testing.T) {
	parse := func(s string) []Mapping {
		m, err := ParseSmaps(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	rollup := parse(cloneRollup)
	mem := &memFileID{inode: 777, base: "vmm.mem"}
	tests := []struct {
		name         string
		maps         string
		mem          *memFileID
		total, guest uint64
		wantErr      string
	}{
		{"vmm: the memory file's mappings", cloneSmaps, mem, 3790, 190, ""},
		{"QEMU: anonymous guest RAM", qemuCloneSmaps, nil, 3790, 1200, ""},
		{"vmm: memory file not mapped", qemuCloneSmaps, mem, 3790, 0, "no mapping of the memory file"},
		{"QEMU: no guest RAM", cloneSmaps[:strings.Index(cloneSmaps, "7f0000000000")], nil, 3790, 0, "guest RAM not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			total, guest, err := clonePSS(rollup, parse(tt.maps), tt.mem, 128<<20)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || total != tt.total || guest != tt.guest {
				t.Errorf("clonePSS = %d, %d, %v; want %d, %d", total, guest, err, tt.total, tt.guest)
			}
		})
	}
	if _, _, err := clonePSS(nil, parse(cloneSmaps), mem, 128<<20); err == nil {
		t.Error("clonePSS accepted a missing rollup")
	}
}

func TestSummarizeBatch(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name    string
		outs    []cloneOutcome
		want    batchSummary
		wantErr string
	}{
		{"answers only", []cloneOutcome{{answered: 30 * ms}, {answered: 50 * ms}, {answered: 40 * ms}},
			batchSummary{allAnswered: 50 * ms}, ""},
		{"answers, agents and memory", []cloneOutcome{
			{answered: 30 * ms, agent: 35 * ms, pss: 2048, guestPSS: 1024},
			{answered: 20 * ms, agent: 60 * ms, pss: 4096, guestPSS: 2048}},
			batchSummary{allAnswered: 30 * ms, allAgents: 60 * ms, pssMiB: 3, guestPSSMiB: 1.5, haveAgents: true, haveMemory: true}, ""},
		{"memory only", []cloneOutcome{{pss: 1024}, {pss: 3072}},
			batchSummary{pssMiB: 2, haveMemory: true}, ""},
		{"a clone failed", []cloneOutcome{{answered: ms}, {err: errors.New("boom")}}, batchSummary{}, "clone 2: boom"},
		{"an agent missing", []cloneOutcome{{answered: ms, agent: ms}, {answered: ms}}, batchSummary{}, "agents"},
		{"memory of some clones", []cloneOutcome{{pss: 1}, {}}, batchSummary{}, "memory read for 1 of 2"},
		{"empty", nil, batchSummary{}, "no clones"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := summarizeBatch(tt.outs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("summarizeBatch = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestPSSRatio(t *testing.T) {
	if r, ok := pssRatio(10, []float64{30, 40, 50}); !ok || r != 0.25 {
		t.Errorf("pssRatio(10, median 40) = %v, %v; want 0.25", r, ok)
	}
	for _, booted := range [][]float64{nil, {0}} {
		if _, ok := pssRatio(10, booted); ok {
			t.Errorf("pssRatio with booted %v gave a ratio", booted)
		}
	}
}

func TestTargetVerdict(t *testing.T) {
	tests := []struct {
		vs    []float64
		limit float64
		want  string
	}{
		{[]float64{4, 5, 30}, 10, "met"},
		{[]float64{10}, 10, "met"},
		{[]float64{9, 12, 15}, 10, "not met"},
		{nil, 10, "not measured"},
	}
	for _, tt := range tests {
		if got := targetVerdict(tt.vs, tt.limit); got != tt.want {
			t.Errorf("targetVerdict(%v, %v) = %q, want %q", tt.vs, tt.limit, got, tt.want)
		}
	}
	m := &Metric{Target: "≤ 1 s", Values: map[string][]float64{implVMM: {1500}, implQEMU: {1}}}
	judgeTarget(m, 1000)
	if m.Target != "≤ 1 s: not met" {
		t.Errorf("judged target %q; the verdict is on vmm's samples, not QEMU's", m.Target)
	}
}

func TestParseMemAvailable(t *testing.T) {
	tests := []struct {
		text    string
		want    uint64
		wantErr bool
	}{
		{"MemTotal:       16303412 kB\nMemFree:          531256 kB\nMemAvailable:   10212400 kB\nBuffers: 1 kB\n", 10212400, false},
		{"MemTotal:       16303412 kB\n", 0, true},
		{"MemAvailable:   lots kB\n", 0, true},
		{"MemAvailable:   12 MB\n", 0, true},
	}
	for _, tt := range tests {
		got, err := parseMemAvailable(strings.NewReader(tt.text))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseMemAvailable(%q) = %d, %v; want %d, error %v", tt.text, got, err, tt.want, tt.wantErr)
		}
	}
}

func FuzzParseMemAvailable(f *testing.F) {
	f.Add("MemAvailable:   10212400 kB\n")
	f.Add("MemTotal: 1 kB\nMemAvailable: 18446744073709551615 kB\n")
	f.Add("MemAvailable:\n")
	f.Fuzz(func(t *testing.T, text string) {
		v, err := parseMemAvailable(strings.NewReader(text))
		if err != nil && v != 0 {
			t.Errorf("error %v with value %d", err, v)
		}
	})
}

func TestBatchFits(t *testing.T) {
	tests := []struct {
		n, mib int
		avail  uint64
		want   bool
	}{
		{32, 128, 8 << 20, true},  // 4 GiB of 8 GiB available
		{32, 128, 7 << 20, false}, // more than half of 7 GiB
		{1, 128, 256 << 10, true},
		{1, 128, 255 << 10, false},
	}
	for _, tt := range tests {
		if got := batchFits(tt.n, tt.mib, tt.avail); got != tt.want {
			t.Errorf("batchFits(%d, %d, %d) = %v, want %v", tt.n, tt.mib, tt.avail, got, tt.want)
		}
	}
}

func TestParseCounts(t *testing.T) {
	c, err := parseFlags([]string{"-clones", "1, 4,32"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.clones) != 3 || c.clones[0] != 1 || c.clones[1] != 4 || c.clones[2] != 32 {
		t.Errorf("clones = %v, want [1 4 32]", c.clones)
	}
	for _, bad := range []string{"0", "1,x", ""} {
		if _, err := parseFlags([]string{"-clones", bad}); err == nil {
			t.Errorf("-clones %q accepted", bad)
		}
	}
}
