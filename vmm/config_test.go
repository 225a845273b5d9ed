package vmm

import "testing"

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
