package main

import (
	"errors"
	"fmt"
	"strings"
)

// kernelParam is one parameter of the kernel command line. Value is empty
// for bare flags such as "quiet".
type kernelParam struct {
	Key, Value string
}

// parseCmdline splits /proc/cmdline the way the kernel does: on spaces,
// except inside double quotes, which are removed. Quotes may wrap the value
// (key="a b") or the whole parameter ("key=a b").
func parseCmdline(cmdline string) []kernelParam {
	var params []kernelParam
	var word strings.Builder
	inQuotes, inWord := false, false
	flush := func() {
		if !inWord {
			return
		}
		key, value, _ := strings.Cut(word.String(), "=")
		params = append(params, kernelParam{Key: key, Value: value})
		word.Reset()
		inWord = false
	}
	for _, r := range cmdline {
		switch {
		case r == '"':
			inQuotes = !inQuotes
			inWord = true
		case !inQuotes && (r == ' ' || r == '\t' || r == '\n'):
			flush()
		default:
			word.WriteRune(r)
			inWord = true
		}
	}
	flush()
	return params
}

// lookupParam returns the value of the last occurrence of key, matching the
// kernel's rule that later parameters override earlier ones.
func lookupParam(params []kernelParam, key string) (string, bool) {
	value, found := "", false
	for _, p := range params {
		if p.Key == key {
			value, found = p.Value, true
		}
	}
	return value, found
}

// runParam names the program to run instead of the shell.
const runParam = "vmm.run"

var errEmptyRun = errors.New(runParam + " is empty")

// programFromCmdline returns the argv of vmm.run, or nil when the parameter
// is absent. The value is a path optionally followed by arguments, which
// needs quotes on the kernel command line: vmm.run="/bin/ls -l /".
func programFromCmdline(params []kernelParam) ([]string, error) {
	value, found := lookupParam(params, runParam)
	if !found {
		return nil, nil
	}
	argv := strings.Fields(value)
	if len(argv) == 0 {
		return nil, fmt.Errorf("kernel command line: %w", errEmptyRun)
	}
	return argv, nil
}
