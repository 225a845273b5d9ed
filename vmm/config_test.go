package vmm

import "testing"

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"128M", 128 << 20, false},
		{"128", 128 << 20, false},
		{"512MiB", 512 << 20, false},
		{"512mb", 512 << 20, false},
		{"1G", 1 << 30, false},
		{"1GiB", 1 << 30, false},
		{"6g", 6 << 30, false},
		{"65536K", 64 << 20, false},
		{"1T", 1 << 40, false},
		{"", 0, true},
		{"M", 0, true},
		{"12X", 0, true},
		{"-5M", 0, true},
		{"1.5G", 0, true},
		{"99999999999999999999M", 0, true},
		{"17179869184T", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Kernel: "k", MemSize: 128 << 20, CPUs: 1}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"no kernel", func(c *Config) { c.Kernel = "" }},
		{"tiny memory", func(c *Config) { c.MemSize = 1 << 20 }},
		{"unaligned memory", func(c *Config) { c.MemSize = 128<<20 + 1 }},
		{"zero cpus", func(c *Config) { c.CPUs = 0 }},
		{"too many cpus", func(c *Config) { c.CPUs = 1000 }},
		{"huge memory", func(c *Config) { c.MemSize = MaxMemSize + 4096 }},
		{"too many drives", func(c *Config) { c.Drives = make([]DriveConfig, MaxDrives+1) }},
		{"too many queues", func(c *Config) { c.Nets = []NetConfig{{Tap: "t0", Queues: MaxNetQueues + 1}} }},
		{"bad MAC", func(c *Config) { c.Nets = []NetConfig{{Tap: "t0", MAC: "zz"}} }},
		{"reserved CID", func(c *Config) { c.Vsock = &VsockConfig{GuestCID: 2, UDSPath: "v.sock"} }},
	}
	for _, tt := range tests {
		c := ok
		tt.mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", tt.name, c)
		}
	}
}
