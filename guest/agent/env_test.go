package main

import (
	"os"
	"slices"
	"testing"
)

func TestWithDefaults(t *testing.T) {
	tests := []struct {
		name    string
		godebug string // agent's own GODEBUG, "" for unset
		env     []string
		want    []string
	}{
		{"empty", "", nil, []string{"PATH=" + defaultPath}},
		{"own PATH kept", "", []string{"PATH=/x"}, []string{"PATH=/x"}},
		{"GODEBUG inherited", "cpu.avx=off", []string{"A=b"}, []string{"A=b", "PATH=" + defaultPath, "GODEBUG=cpu.avx=off"}},
		{"process GODEBUG wins", "cpu.avx=off", []string{"GODEBUG=x=1", "PATH=/y"}, []string{"GODEBUG=x=1", "PATH=/y"}},
	}
	t.Run("GLIBC_TUNABLES inherited", func(t *testing.T) {
		t.Setenv("GODEBUG", "")
		unsetenv(t, "GODEBUG")
		t.Setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX2")
		want := []string{"PATH=/z", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"}
		if got := withDefaults([]string{"PATH=/z"}); !slices.Equal(got, want) {
			t.Errorf("withDefaults = %q, want %q", got, want)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GLIBC_TUNABLES", "")
			unsetenv(t, "GLIBC_TUNABLES")
			if tt.godebug != "" {
				t.Setenv("GODEBUG", tt.godebug)
			} else {
				t.Setenv("GODEBUG", "")
				unsetenv(t, "GODEBUG")
			}
			if got := withDefaults(tt.env); !slices.Equal(got, tt.want) {
				t.Errorf("withDefaults(%q) = %q, want %q", tt.env, got, tt.want)
			}
		})
	}
}

// unsetenv removes name for the rest of the test; t.Setenv before it
// restores the old value afterwards.
func unsetenv(t *testing.T, name string) {
	t.Helper()
	if err := os.Unsetenv(name); err != nil {
		t.Fatal(err)
	}
}
