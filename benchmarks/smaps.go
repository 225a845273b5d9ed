package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mapping is one entry of /proc/PID/smaps: the header line and its
// "Key: N kB" fields.
type Mapping struct {
	Start, End uint64
	Perms      string
	Inode      uint64
	Path       string
	KB         map[string]uint64 // Size, Rss, Pss, ... in kB
}

// Anonymous reports whether the mapping is backed by no file. Guest RAM is
// anonymous memory in both vmm and QEMU; [heap] and [stack] are excluded
// because they are the VMM's own.
func (m Mapping) Anonymous() bool {
	return m.Inode == 0 && (m.Path == "" || strings.HasPrefix(m.Path, "[anon"))
}

// ParseSmaps parses the text of /proc/PID/smaps (or smaps_rollup, which is
// one entry with the "[rollup]" path).
func ParseSmaps(r io.Reader) ([]Mapping, error) {
	var out []Mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if text == "" {
			continue
		}
		fields := strings.Fields(text)
		if k, ok := strings.CutSuffix(fields[0], ":"); ok {
			if len(out) == 0 {
				return nil, fmt.Errorf("smaps line %d: field %q before any mapping", line, k)
			}
			if k == "VmFlags" || k == "THPeligible" || k == "ProtectionKey" {
				continue // not sizes
			}
			if len(fields) < 2 {
				return nil, fmt.Errorf("smaps line %d: %q has no value", line, text)
			}
			v, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("smaps line %d: %q: %w", line, text, err)
			}
			out[len(out)-1].KB[k] = v
			continue
		}
		m, err := parseMapHeader(fields)
		if err != nil {
			return nil, fmt.Errorf("smaps line %d: %w", line, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read smaps: %w", err)
	}
	return out, nil
}

// parseMapHeader parses "start-end perms offset dev inode [path]".
func parseMapHeader(f []string) (Mapping, error) {
	if len(f) < 5 {
		return Mapping{}, fmt.Errorf("mapping header %q: too few fields", strings.Join(f, " "))
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return Mapping{}, fmt.Errorf("mapping header: bad range %q", f[0])
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	inode, err3 := strconv.ParseUint(f[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Mapping{}, fmt.Errorf("mapping header %q: bad number", strings.Join(f, " "))
	}
	return Mapping{
		Start: start, End: end, Perms: f[1], Inode: inode,
		Path: strings.Join(f[5:], " "), KB: map[string]uint64{},
	}, nil
}

// MemUsage is a process's memory at one instant, split into guest RAM and
// the rest (the VMM's own overhead), in kB.
type MemUsage struct {
	RSS        uint64 `json:"rss_kb"`
	PSS        uint64 `json:"pss_kb"`
	GuestRSS   uint64 `json:"guest_rss_kb"`
	GuestPSS   uint64 `json:"guest_pss_kb"`
	GuestMaps  int    `json:"guest_mappings"`
	GuestSize  uint64 `json:"guest_mapped_kb"`
	FileRSS    uint64 `json:"file_rss_kb"` // mapped files: the binary, shared libraries
	TotalMaps  int    `json:"mappings"`
	RollupPath string `json:"-"`
}

// OverheadRSS is the resident memory that is not guest RAM.
func (u MemUsage) OverheadRSS() uint64 { return sub(u.RSS, u.GuestRSS) }

// OverheadPSS is the proportional set size that is not guest RAM: shared
// pages (the binary, libraries) count divided by the processes sharing them.
func (u MemUsage) OverheadPSS() uint64 { return sub(u.PSS, u.GuestPSS) }

// AnonOverheadRSS is the resident memory that is neither guest RAM nor a
// mapped file: heap, stacks, device buffers.
func (u MemUsage) AnonOverheadRSS() uint64 { return sub(u.OverheadRSS(), u.FileRSS) }

func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

// GuestMappings picks the guest-RAM mappings: anonymous mappings at least
// 7/8 of the guest's memory size. Guest RAM is one big anonymous mapping
// per region in both VMMs (vmm splits only around the 32-bit PCI hole, QEMU
// may round up), while the VMMs' own anonymous memory (Go heap arenas, glib
// pools, thread stacks) comes in pieces far smaller than a 128 MiB guest.
func GuestMappings(maps []Mapping, guestBytes uint64) []Mapping {
	var out []Mapping
	min := guestBytes / 1024 * 7 / 8
	for _, m := range maps {
		if m.Anonymous() && m.KB["Size"] >= min {
			out = append(out, m)
		}
	}
	return out
}

// Usage combines smaps_rollup totals with the guest-RAM share from smaps.
func Usage(rollup, maps []Mapping, guestBytes uint64) (MemUsage, error) {
	if len(rollup) != 1 {
		return MemUsage{}, fmt.Errorf("smaps_rollup: %d entries, want 1", len(rollup))
	}
	u := MemUsage{RSS: rollup[0].KB["Rss"], PSS: rollup[0].KB["Pss"], TotalMaps: len(maps)}
	for _, m := range maps {
		if m.Inode != 0 {
			u.FileRSS += m.KB["Rss"]
		}
	}
	for _, m := range GuestMappings(maps, guestBytes) {
		u.GuestMaps++
		u.GuestRSS += m.KB["Rss"]
		u.GuestPSS += m.KB["Pss"]
		u.GuestSize += m.KB["Size"]
	}
	if u.GuestMaps == 0 {
		return u, fmt.Errorf("no anonymous mapping of at least 7/8 of %d MiB: guest RAM not found", guestBytes>>20)
	}
	return u, nil
}

// ReadUsage reads /proc/PID/smaps_rollup and /proc/PID/smaps.
func ReadUsage(pid int, guestBytes uint64) (MemUsage, error) {
	rollup, maps, err := readSmaps(pid)
	if err != nil {
		return MemUsage{}, err
	}
	return Usage(rollup, maps, guestBytes)
}

// readSmaps reads and parses /proc/PID/smaps_rollup and /proc/PID/smaps.
func readSmaps(pid int) (rollup, maps []Mapping, err error) {
	read := func(name string) ([]Mapping, error) {
		f, err := os.Open(fmt.Sprintf("/proc/%d/%s", pid, name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		m, err := ParseSmaps(f)
		if err != nil {
			return nil, fmt.Errorf("pid %d %s: %w", pid, name, err)
		}
		return m, nil
	}
	if rollup, err = read("smaps_rollup"); err != nil {
		return nil, nil, err
	}
	if maps, err = read("smaps"); err != nil {
		return nil, nil, err
	}
	return rollup, maps, nil
}
