package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize parses a size given on the command line (--mem, --size) such
// as 128M, 1G, 512MiB, 2GB or a plain number of MiB ("256"), as
// Firecracker's mem_size_mib and QEMU's -m do.
func parseSize(s string) (uint64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q does not start with a number", orig)
	}
	n, err := strconv.ParseUint(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", orig, err)
	}
	var shift uint
	switch strings.ToLower(s[i:]) {
	case "", "m", "mb", "mib":
		shift = 20
	case "k", "kb", "kib":
		shift = 10
	case "g", "gb", "gib":
		shift = 30
	case "t", "tb", "tib":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q (use K, M, G or T)", orig, s[i:])
	}
	if n > (^uint64(0))>>shift {
		return 0, fmt.Errorf("size %q is too large", orig)
	}
	return n << shift, nil
}
