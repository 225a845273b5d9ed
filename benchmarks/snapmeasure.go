package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The snapshot suite's measurements that need no VM: file sizes, a clone's
// memory, a clone batch's outcome, the targets' verdicts.

// statBlockSize is the unit of stat(2)'s st_blocks: 512 bytes whatever the
// file system's block size (Linux's stat(2), "st_blocks").
const statBlockSize = 512

// fileSpace returns a file's apparent size (st_size) and the bytes its
// allocated blocks take on disk (st_blocks × 512): a sparse memory file is
// as large as guest RAM but allocates only the pages that were written.
func fileSpace(path string) (apparent, allocated int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Size, st.Blocks * statBlockSize, nil
}

// filesSpace is fileSpace summed over files.
func filesSpace(paths ...string) (apparent, allocated int64, err error) {
	for _, p := range paths {
		a, b, err := fileSpace(p)
		if err != nil {
			return 0, 0, err
		}
		apparent += a
		allocated += b
	}
	return apparent, allocated, nil
}

// memFileID names the snapshot memory file as /proc/PID/smaps shows its
// mappings: by inode, and by base name (the path there is the one the
// kernel resolved, which need not be the one the benchmark passed).
type memFileID struct {
	inode uint64
	base  string
}

// statMemFile identifies the memory file at path.
func statMemFile(path string) (memFileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return memFileID{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return memFileID{inode: st.Ino, base: filepath.Base(path)}, nil
}

// clonePSS splits a restored VM's proportional set size (kB): the
// process's total from smaps_rollup, and the part that is guest memory.
// With a memory file (vmm maps it MAP_PRIVATE: unchanged pages are the
// page cache's, shared by every clone, and the pages the guest wrote are
// private copies in the same mappings) that is the Pss of its mappings;
// without one (QEMU reads the snapshot into anonymous memory), the Pss of
// guest RAM's anonymous mappings (GuestMappings).
func clonePSS(rollup, maps []Mapping, mem *memFileID, guestBytes uint64) (total, guest uint64, err error) {
	if len(rollup) != 1 {
		return 0, 0, fmt.Errorf("smaps_rollup: %d entries, want 1", len(rollup))
	}
	total = rollup[0].KB["Pss"]
	if mem == nil {
		gm := GuestMappings(maps, guestBytes)
		if len(gm) == 0 {
			return total, 0, fmt.Errorf("no anonymous mapping of at least 7/8 of %d MiB: guest RAM not found", guestBytes>>20)
		}
		for _, m := range gm {
			guest += m.KB["Pss"]
		}
		return total, guest, nil
	}
	found := false
	for _, m := range maps {
		if m.Inode == mem.inode && filepath.Base(strings.TrimSuffix(m.Path, " (deleted)")) == mem.base {
			found = true
			guest += m.KB["Pss"]
		}
	}
	if !found {
		return total, 0, fmt.Errorf("no mapping of the memory file %s (inode %d): guest RAM not found", mem.base, mem.inode)
	}
	return total, guest, nil
}

// cloneOutcome is what one VM of a clone batch gave: when it answered
// (relative to the batch's start), when its guest agent answered (zero:
// not asked), and its memory once the batch was idle (kB; zero: not read).
type cloneOutcome struct {
	answered, agent time.Duration
	pss, guestPSS   uint64
	err             error
}

// batchSummary condenses a clone batch: the time until the last clone
// answered (and the last agent), and the mean memory per clone in MiB.
type batchSummary struct {
	allAnswered, allAgents time.Duration
	pssMiB, guestPSSMiB    float64
	haveAgents, haveMemory bool
}

// summarizeBatch condenses the outcomes of a batch. Any clone's failure
// fails the batch: "all answered" is meaningless with one missing.
func summarizeBatch(outs []cloneOutcome) (batchSummary, error) {
	var s batchSummary
	if len(outs) == 0 {
		return s, errors.New("no clones")
	}
	var errs []error
	var pss, guest uint64
	mem := 0
	for i, o := range outs {
		if o.err != nil {
			errs = append(errs, fmt.Errorf("clone %d: %w", i+1, o.err))
			continue
		}
		s.allAnswered = max(s.allAnswered, o.answered)
		if o.agent > 0 {
			s.haveAgents = true
			s.allAgents = max(s.allAgents, o.agent)
		}
		if o.pss > 0 {
			mem++
			pss += o.pss
			guest += o.guestPSS
		}
	}
	if len(errs) > 0 {
		return batchSummary{}, errors.Join(errs...)
	}
	if s.haveAgents && slices.ContainsFunc(outs, func(o cloneOutcome) bool { return o.agent == 0 }) {
		return batchSummary{}, errors.New("some clones' agents were not reached")
	}
	if mem > 0 {
		if mem != len(outs) {
			return batchSummary{}, fmt.Errorf("memory read for %d of %d clones", mem, len(outs))
		}
		s.haveMemory = true
		s.pssMiB = float64(pss) / 1024 / float64(mem)
		s.guestPSSMiB = float64(guest) / 1024 / float64(mem)
	}
	return s, nil
}

// pssRatio is a clone's PSS over a booted VM's (the median of the booted
// samples); false when there is nothing to divide by.
func pssRatio(clonePSS float64, booted []float64) (float64, bool) {
	b := Summarize(booted)
	if b.N == 0 || b.Median <= 0 {
		return 0, false
	}
	return clonePSS / b.Median, true
}

// targetVerdict judges vmm's median of vs against an upper limit: "met",
// "not met", or "not measured" without samples.
func targetVerdict(vs []float64, limit float64) string {
	s := Summarize(vs)
	switch {
	case s.N == 0:
		return "not measured"
	case s.Median <= limit:
		return "met"
	default:
		return "not met"
	}
}

// judgeTarget appends to m's target text the verdict on vmm's samples, so
// the table shows it next to the numbers.
func judgeTarget(m *Metric, limit float64) {
	m.Target = fmt.Sprintf("%s: %s", m.Target, targetVerdict(m.Values[implVMM], limit))
}

// parseMemAvailable reads MemAvailable (kB) from /proc/meminfo's text.
func parseMemAvailable(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	for lines := 0; sc.Scan() && lines < 1000; lines++ {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("meminfo: bad MemAvailable line %q", sc.Text())
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("meminfo: MemAvailable: %w", err)
		}
		return v, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("meminfo: %w", err)
	}
	return 0, errors.New("meminfo: no MemAvailable line")
}

// memAvailable is the host's MemAvailable in kB.
func memAvailable() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseMemAvailable(f)
}

// batchFits reports whether n VMs of guestMiB each fit in half the
// memory available (kB), counting every guest page as dirtied: the
// worst case for vmm's clones, the usual one for QEMU's, which copy the
// snapshot's pages into their own memory.
func batchFits(n, guestMiB int, availKB uint64) bool {
	return uint64(n)*uint64(guestMiB)*1024 <= availKB/2
}
