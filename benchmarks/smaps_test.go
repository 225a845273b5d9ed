package main

import (
	"strings"
	"testing"
)

const sampleSmaps = `00400000-00800000 r-xp 00000000 08:01 1234                               /usr/bin/vmm
Size:               4096 kB
KernelPageSize:        4 kB
Rss:                2048 kB
Pss:                1024 kB
Shared_Clean:       2048 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                 900 kB
Pss:                 900 kB
THPeligible:    1
VmFlags: rd wr mr mw me nr
7f0010000000-7f0014000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:                3000 kB
Pss:                3000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  20 kB
Pss:                  20 kB
`

const sampleRollup = `00400000-7ffd00021000 ---p 00000000 00:00 0                          [rollup]
Rss:                5968 kB
Pss:                4944 kB
Pss_Anon:           3920 kB
`

func TestParseSmaps(t *testing.T) {
	maps, err := ParseSmaps(strings.NewReader(sampleSmaps))
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != 4 {
		t.Fatalf("got %d mappings, want 4", len(maps))
	}
	m := maps[0]
	if m.Start != 0x400000 || m.End != 0x800000 || m.Perms != "r-xp" || m.Inode != 1234 || m.Path != "/usr/bin/vmm" {
		t.Errorf("first header parsed as %+v", m)
	}
	if m.KB["Size"] != 4096 || m.KB["Rss"] != 2048 || m.KB["Pss"] != 1024 {
		t.Errorf("first fields parsed as %v", m.KB)
	}
	if m.Anonymous() || !maps[1].Anonymous() || maps[3].Anonymous() {
		t.Errorf("Anonymous: file %v, anon %v, [stack] %v", m.Anonymous(), maps[1].Anonymous(), maps[3].Anonymous())
	}
}

func TestParseSmapsErrors(t *testing.T) {
	for _, in := range []string{
		"Rss: 4 kB\n",                       // field before a header
		"zz-10 rw-p 0 00:00 0\n",            // bad range
		"10-20 rw-p 0 00:00\n",              // short header
		"10-20 rw-p 0 00:00 0\nRss: x kB\n", // bad value
	} {
		if _, err := ParseSmaps(strings.NewReader(in)); err == nil {
			t.Errorf("ParseSmaps(%q) succeeded, want an error", in)
		}
	}
}

func TestUsage(t *testing.T) {
	maps, err := ParseSmaps(strings.NewReader(sampleSmaps))
	if err != nil {
		t.Fatal(err)
	}
	rollup, err := ParseSmaps(strings.NewReader(sampleRollup))
	if err != nil {
		t.Fatal(err)
	}
	u, err := Usage(rollup, maps, 128<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Only the 128 MiB anonymous mapping is guest RAM; the 64 MiB one (a Go
	// heap arena, say) is overhead.
	if u.GuestMaps != 1 || u.GuestRSS != 900 || u.GuestPSS != 900 || u.GuestSize != 131072 {
		t.Errorf("guest part = %+v", u)
	}
	if u.OverheadRSS() != 5968-900 || u.OverheadPSS() != 4944-900 {
		t.Errorf("overhead RSS %d PSS %d, want %d %d", u.OverheadRSS(), u.OverheadPSS(), 5968-900, 4944-900)
	}
	if u.FileRSS != 2048 || u.AnonOverheadRSS() != 5968-900-2048 {
		t.Errorf("file RSS %d, anonymous overhead %d", u.FileRSS, u.AnonOverheadRSS())
	}
	if _, err := Usage(rollup, maps, 1<<30); err == nil {
		t.Error("Usage with a 1 GiB guest found guest RAM in a 128 MiB mapping")
	}
}
