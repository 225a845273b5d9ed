package containerd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/govmm/vmm/vmm"
)

// ConfigEnv names the shim's config file when set in containerd's
// environment (shims inherit it); otherwise DefaultConfigPath is read if
// it exists.
const ConfigEnv = "VMM_SHIM_CONFIG"

// DefaultConfigPath is the shim's config file when ConfigEnv is unset.
const DefaultConfigPath = "/etc/vmm/containerd-shim.json"

// maxConfigSize bounds the config file: it is a handful of paths and numbers.
const maxConfigSize = 64 << 10

// Defaults for Config fields left zero.
const (
	DefaultMemMiB       = 256
	DefaultCPUs         = 1
	DefaultUpperSizeMiB = 1024
	DefaultBootTimeout  = 2 * time.Minute
	DefaultRootDir      = "/var/lib/vmm/containerd"
	DefaultRunDir       = "/run/vmm-shim"
	// DefaultSpareDrives and DefaultSpareWritableDrives let a pod's VM
	// take two more containers of a few layers each.
	DefaultSpareDrives         = 8
	DefaultSpareWritableDrives = 2
)

// Config is the shim's config file (JSON). Every field is optional: the
// defaults fit `make install`, which puts vmm beside the shim and the
// default guest in ../share/vmm.
type Config struct {
	// VMM is the vmm binary (default: "vmm" beside the shim).
	VMM string `json:"vmm,omitempty"`
	// Kernel and Initrd boot the guest (default: vmlinux and
	// initramfs.cpio in ../share/vmm beside the shim); the initramfs
	// must start vmm-agent.
	Kernel string `json:"kernel,omitempty"`
	Initrd string `json:"initrd,omitempty"`
	// Cmdline is the guest kernel command line (default vmm's).
	Cmdline string `json:"cmdline,omitempty"`
	// MemMiB and CPUs size a VM whose pod asks for nothing.
	MemMiB int64 `json:"mem_mib,omitempty"`
	CPUs   int64 `json:"vcpus,omitempty"`
	// UpperSizeMiB is the size of each container's writable disk (a
	// sparse file: only what the container writes takes space).
	UpperSizeMiB int64 `json:"upper_size_mib,omitempty"`
	// BootTimeout bounds the wait for the guest agent ("2m").
	BootTimeout Duration `json:"boot_timeout,omitempty"`
	// RootDir keeps the layer image cache and the containers' writable
	// disks.
	RootDir string `json:"root_dir,omitempty"`
	// RunDir keeps the shims' sockets and each VM's API and vsock
	// sockets; Unix socket paths are short, so keep it short.
	RunDir string `json:"run_dir,omitempty"`
	// SpareDrives is how many placeholder drives a pod's VM boots with
	// for its later containers' disks (DefaultSpareDrives; 0 for none),
	// SpareWritableDrives how many of them are writable: a container
	// needs one for its writable disk, and read-only ones for the
	// layers no container of the pod has attached yet. The VM's drive
	// limit (26 in all) caps them.
	SpareDrives         *int `json:"spare_drives,omitempty"`
	SpareWritableDrives *int `json:"spare_writable_drives,omitempty"`
}

func (c *Config) spareDrives() int {
	if c.SpareDrives == nil {
		return DefaultSpareDrives
	}
	return *c.SpareDrives
}

func (c *Config) spareWritableDrives() int {
	if c.SpareWritableDrives == nil {
		return min(DefaultSpareWritableDrives, c.spareDrives())
	}
	return *c.SpareWritableDrives
}

// Duration is a time.Duration written as "90s" in JSON.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// LoadConfig reads the config file named by ConfigEnv, or
// DefaultConfigPath if that exists, and fills in the defaults; exe is the
// shim's own path, from which the installed defaults are found.
func LoadConfig(exe string) (*Config, error) {
	path, must := os.Getenv(ConfigEnv), true
	if path == "" {
		path, must = DefaultConfigPath, false
	}
	cfg := &Config{}
	f, err := os.Open(path)
	switch {
	case err == nil:
		defer f.Close()
		cfg, err = ParseConfig(f)
		if err != nil {
			return nil, fmt.Errorf("shim config %s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist) && !must:
	default:
		return nil, fmt.Errorf("shim config: %w", err)
	}
	cfg.fill(exe)
	return cfg, nil
}

// ParseConfig decodes a config file, refusing unknown fields (a typo
// must not silently fall back to a default) and values out of range.
func ParseConfig(r io.Reader) (*Config, error) {
	dec := json.NewDecoder(io.LimitReader(r, maxConfigSize))
	dec.DisallowUnknownFields()
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	if cfg.MemMiB != 0 {
		if err := vmm.CheckMemMiB(cfg.MemMiB); err != nil {
			return nil, fmt.Errorf("mem_mib: %w", err)
		}
	}
	if cfg.CPUs != 0 {
		if err := vmm.CheckCPUs(cfg.CPUs); err != nil {
			return nil, fmt.Errorf("vcpus: %w", err)
		}
	}
	if cfg.UpperSizeMiB < 0 || cfg.UpperSizeMiB > maxUpperSizeMiB {
		return nil, fmt.Errorf("upper_size_mib %d: want 1 to %d", cfg.UpperSizeMiB, maxUpperSizeMiB)
	}
	if n := cfg.spareDrives(); n < 0 || n >= vmm.MaxDrives {
		return nil, fmt.Errorf("spare_drives %d: want 0 to %d", n, vmm.MaxDrives-1)
	}
	if n := cfg.spareWritableDrives(); n < 0 || n > cfg.spareDrives() {
		return nil, fmt.Errorf("spare_writable_drives %d: want 0 to spare_drives (%d)", n, cfg.spareDrives())
	}
	for _, p := range []struct{ name, path string }{
		{"vmm", cfg.VMM}, {"kernel", cfg.Kernel}, {"initrd", cfg.Initrd}, {"root_dir", cfg.RootDir}, {"run_dir", cfg.RunDir},
	} {
		if p.path != "" && !filepath.IsAbs(p.path) {
			return nil, fmt.Errorf("%s %q: want an absolute path", p.name, p.path)
		}
	}
	return &cfg, nil
}

// maxUpperSizeMiB bounds a container's writable disk (1 TiB).
const maxUpperSizeMiB = 1 << 20

func (c *Config) fill(exe string) {
	bin := filepath.Dir(exe)
	share := filepath.Join(filepath.Dir(bin), "share", "vmm")
	if c.VMM == "" {
		c.VMM = filepath.Join(bin, "vmm")
	}
	if c.Kernel == "" {
		c.Kernel = filepath.Join(share, "vmlinux")
	}
	if c.Initrd == "" {
		c.Initrd = filepath.Join(share, "initramfs.cpio")
	}
	if c.Cmdline == "" {
		c.Cmdline = vmm.DefaultCmdline
	}
	if c.MemMiB == 0 {
		c.MemMiB = DefaultMemMiB
	}
	if c.CPUs == 0 {
		c.CPUs = DefaultCPUs
	}
	if c.UpperSizeMiB == 0 {
		c.UpperSizeMiB = DefaultUpperSizeMiB
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = Duration(DefaultBootTimeout)
	}
	if c.RootDir == "" {
		c.RootDir = DefaultRootDir
	}
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir
	}
}

// checkGuest reports a missing kernel, initrd or vmm binary, phrased for
// whoever reads containerd's error.
func (c *Config) checkGuest() error {
	for _, f := range []struct{ what, path string }{{"vmm binary", c.VMM}, {"guest kernel", c.Kernel}, {"guest initramfs", c.Initrd}} {
		st, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("%s: %w (set it in the shim config %s or $%s)", f.what, err, DefaultConfigPath, ConfigEnv)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s %s is not a regular file", f.what, f.path)
		}
	}
	return nil
}
