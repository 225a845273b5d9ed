package main

import (
	"slices"
	"testing"
)

func TestParseFlagsSuites(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr bool
	}{
		{"default is every suite", nil, allSuites(), false},
		{"new suites by name", []string{"-suites", "api,run,exec"}, []string{"api", "run", "exec"}, false},
		{"spaces and empties", []string{"-suites", " api, ,exec"}, []string{"api", "exec"}, false},
		{"unknown suite", []string{"-suites", "api,bogus"}, nil, true},
		{"zero run reps", []string{"-run-reps", "0"}, nil, true},
		{"zero exec reps", []string{"-exec-reps", "0"}, nil, true},
		{"zero API requests", []string{"-api-requests", "0"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseFlags(%q) error = %v, wantErr %v", tt.args, err, tt.wantErr)
			}
			if err == nil && !slices.Equal(c.suites, tt.want) {
				t.Errorf("suites = %q, want %q", c.suites, tt.want)
			}
		})
	}
}

func TestParseFlagsCounts(t *testing.T) {
	c, err := parseFlags([]string{"-run-reps", "2", "-exec-reps", "25", "-api-requests", "1500"})
	if err != nil {
		t.Fatal(err)
	}
	if c.runReps != 2 || c.execReps != 25 || c.apiRequests != 1500 {
		t.Errorf("run-reps %d, exec-reps %d, api-requests %d; want 2, 25, 1500", c.runReps, c.execReps, c.apiRequests)
	}
	c, err = parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.execReps < 20 || c.apiRequests < 1000 {
		t.Errorf("defaults: exec-reps %d, api-requests %d; want at least 20 and 1000", c.execReps, c.apiRequests)
	}
}

func TestDefaultRunReps(t *testing.T) {
	for _, tt := range []struct {
		pvm  bool
		want int
	}{{true, 3}, {false, 10}} {
		if got := defaultRunReps(tt.pvm); got != tt.want {
			t.Errorf("defaultRunReps(%v) = %d, want %d", tt.pvm, got, tt.want)
		}
	}
}

func TestSuiteOrdersCoverEverySuite(t *testing.T) {
	all, run := slices.Clone(allSuites()), slices.Clone(runOrder())
	slices.Sort(all)
	slices.Sort(run)
	if !slices.Equal(all, run) {
		t.Errorf("allSuites %q and runOrder %q differ", allSuites(), runOrder())
	}
}
