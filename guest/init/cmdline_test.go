package main

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    []kernelParam
	}{
		{
			name:    "plain",
			cmdline: "console=ttyS0 quiet panic=-1\n",
			want:    []kernelParam{{"console", "ttyS0"}, {"quiet", ""}, {"panic", "-1"}},
		},
		{
			name:    "quoted value",
			cmdline: `vmm.run="/bin/ls -l /" reboot=k`,
			want:    []kernelParam{{"vmm.run", "/bin/ls -l /"}, {"reboot", "k"}},
		},
		{
			name:    "quoted parameter",
			cmdline: `"vmm.run=/bin/echo a  b" x`,
			want:    []kernelParam{{"vmm.run", "/bin/echo a  b"}, {"x", ""}},
		},
		{
			name:    "value containing equals",
			cmdline: "root=PARTUUID=abcd",
			want:    []kernelParam{{"root", "PARTUUID=abcd"}},
		},
		{
			name:    "empty quoted value",
			cmdline: `vmm.run=""`,
			want:    []kernelParam{{"vmm.run", ""}},
		},
		{
			name:    "extra whitespace",
			cmdline: "  a=1 \t b  ",
			want:    []kernelParam{{"a", "1"}, {"b", ""}},
		},
		{
			name:    "empty",
			cmdline: "",
			want:    nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseCmdline(tt.cmdline); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseCmdline(%q) = %q, want %q", tt.cmdline, got, tt.want)
			}
		})
	}
}

func TestProgramFromCmdline(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    []string
		wantErr error
	}{
		{name: "absent", cmdline: "console=ttyS0", want: nil},
		{name: "path", cmdline: "console=ttyS0 vmm.run=/bin/true", want: []string{"/bin/true"}},
		{name: "with arguments", cmdline: `vmm.run="/bin/echo hello world"`, want: []string{"/bin/echo", "hello", "world"}},
		{name: "last wins", cmdline: "vmm.run=/bin/false vmm.run=/bin/true", want: []string{"/bin/true"}},
		{name: "empty", cmdline: "vmm.run=", wantErr: errEmptyRun},
		{name: "similar key ignored", cmdline: "vmm.runner=/bin/false", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := programFromCmdline(parseCmdline(tt.cmdline))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("argv = %q, want %q", got, tt.want)
			}
		})
	}
}
