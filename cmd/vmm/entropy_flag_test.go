package main

import (
	"io"
	"strings"
	"testing"
)

func TestEntropyFlag(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		want    bool
		wantErr string
	}{
		{args: nil, want: false},
		{args: []string{"--entropy"}, want: true},
		{args: []string{"--entropy=true"}, want: true},
		{args: []string{"--entropy", "--entropy=false"}, want: false},
		{args: []string{"--entropy=maybe"}, wantErr: "want true or false"},
	} {
		o, err := parseFlags(append([]string{"--api-sock", "/nonexistent/api.sock"}, tt.args...), io.Discard)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want one containing %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if got := o.cfg.Entropy != nil; got != tt.want {
			t.Errorf("%q: entropy device %v, want %v", tt.args, got, tt.want)
		}
	}
}
