package main

import "testing"

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"qemu", "-append", "console=ttyS0 panic=1", "", "it's"})
	want := `qemu -append 'console=ttyS0 panic=1' '' 'it'\''s'`
	if got != want {
		t.Errorf("shellQuote = %s, want %s", got, want)
	}
}
