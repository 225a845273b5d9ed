// Package jailer starts a VMM in a cage, with Firecracker's jailer command
// line: a chroot of its own under <base>/<exec>/<id>/root holding a copy of
// the binary and three device nodes, a private mount namespace, resource
// limits, an optional cgroup v2, network and pid namespace, and no
// privileges (uid and gid dropped) by the time the VMM runs.
//
// Go cannot safely unshare or pivot_root from a process that already runs
// several threads, so the work is split in two stages. Stage 1 (Main) runs
// in the jailer process: it validates the flags, builds the jail directory,
// copies the binary, sets the rlimits and creates the cgroup, then starts
// stage 2 by re-executing its own binary (/proc/self/exe) with
// SysProcAttr.Cloneflags: the kernel creates the new mount (and pid)
// namespace at clone time, and CLONE_INTO_CGROUP places the child in the
// cgroup. Stage 2 then only does what is per-process anyway (mounts,
// pivot_root, mknod, the per-thread setns on its locked thread, dropping
// credentials, which Go applies to all threads) and execs the VMM, which so
// keeps stage 2's pid: pid 1 of the new pid namespace with --new-pid-ns.
package jailer

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultChrootBase is where jails go without --chroot-base-dir, as in
// Firecracker.
const DefaultChrootBase = "/srv/jailer"

// DefaultNoFile is RLIMIT_NOFILE without --resource-limit no-file=N, as in
// Firecracker.
const DefaultNoFile = 2048

// maxIDLen is the longest --id Firecracker accepts.
const maxIDLen = 64

// cgroupV2 is the only --cgroup-version supported.
const cgroupV2 = "2"

// Resource names accepted by --resource-limit.
const (
	limitFsize  = "fsize"
	limitNoFile = "no-file"
)

// Config is a parsed and validated jailer command line.
type Config struct {
	ID            string
	ExecFile      string // the VMM binary on the host
	UID, GID      uint32
	ChrootBase    string
	NetNS         string // a network namespace file to join, or ""
	CgroupVersion string // "" or "2"
	Cgroups       []CgroupFile
	ParentCgroup  string
	Fsize         *uint64 // RLIMIT_FSIZE, nil to leave it
	NoFile        uint64  // RLIMIT_NOFILE
	Daemonize     bool
	NewPIDNS      bool
	Args          []string // after --, for the VMM
}

// CgroupFile is one --cgroup K=V: a file of the cgroup and what to write.
type CgroupFile struct{ Name, Value string }

// Root is the jail's root directory on the host.
func (c *Config) Root() string {
	return filepath.Join(c.ChrootBase, filepath.Base(c.ExecFile), c.ID, "root")
}

// ExecName is the binary's name inside the jail (at its root).
func (c *Config) ExecName() string { return filepath.Base(c.ExecFile) }

// UseCgroup reports whether the VMM gets a cgroup: only when one was asked
// for, so that a host without cgroup v2 can still jail without one.
func (c *Config) UseCgroup() bool {
	return c.CgroupVersion != "" || len(c.Cgroups) > 0 || c.ParentCgroup != ""
}

// CgroupPath is the VMM's cgroup relative to the cgroup v2 root.
func (c *Config) CgroupPath() string {
	parent := c.ParentCgroup
	if parent == "" {
		parent = c.ExecName()
	}
	return filepath.Join(parent, c.ID)
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// rawFlags are the flags as given, before validation.
type rawFlags struct {
	uid, gid         string
	cgroups, rlimits listFlag
}

// flagSet declares the jailer's flags, bound to c and raw.
func flagSet(c *Config, raw *rawFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.ID, "id", "", "unique VM id: letters, digits and '-', at most 64")
	fs.StringVar(&c.ExecFile, "exec-file", "", "the VMM binary to copy into the jail and exec")
	fs.StringVar(&raw.uid, "uid", "", "uid the VMM runs as")
	fs.StringVar(&raw.gid, "gid", "", "gid the VMM runs as")
	fs.StringVar(&c.ChrootBase, "chroot-base-dir", DefaultChrootBase, "where jails are built: <dir>/<exec name>/<id>/root")
	fs.StringVar(&c.NetNS, "netns", "", "network namespace file to join (e.g. /var/run/netns/NAME)")
	fs.StringVar(&c.CgroupVersion, "cgroup-version", "", "cgroup hierarchy version: only 2; with it, --cgroup or --parent-cgroup the VMM gets a cgroup")
	fs.Var(&raw.cgroups, "cgroup", "cgroup file to write, FILE=VALUE (e.g. pids.max=100), repeatable")
	fs.StringVar(&c.ParentCgroup, "parent-cgroup", "", "cgroup under which the VM's cgroup <id> is made (default: the exec file's name)")
	fs.Var(&raw.rlimits, "resource-limit", "fsize=N or no-file=N (default no-file=2048), repeatable")
	fs.BoolVar(&c.Daemonize, "daemonize", false, "setsid and redirect stdio to /dev/null; the jailer returns at once")
	fs.BoolVar(&c.NewPIDNS, "new-pid-ns", false, "exec the VMM as pid 1 of a new pid namespace (its host pid goes to <root>/<exec name>.pid)")
	return fs
}

// PrintUsage writes the jailer's synopsis and flags to w.
func PrintUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: vmm jailer --id ID --exec-file PATH --uid UID --gid GID [flags] [-- VMM-ARGS...]\n\n"+
		"Runs the VMM in a chroot of its own, in a new mount namespace, as UID:GID,\n"+
		"with `--id ID` before VMM-ARGS (as Firecracker's jailer does).\n\nflags:")
	fs := flagSet(&Config{}, &rawFlags{})
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// Parse parses and validates the jailer's arguments (after `jailer`).
func Parse(args []string) (*Config, error) {
	var (
		c   Config
		raw rawFlags
	)
	fs := flagSet(&c, &raw)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.Args = fs.Args()
	c.NoFile = DefaultNoFile
	if err := c.validateID(); err != nil {
		return nil, err
	}
	if c.ExecFile == "" {
		return nil, errors.New("--exec-file is required")
	}
	var err error
	if c.UID, err = parseID("uid", raw.uid); err != nil {
		return nil, err
	}
	if c.GID, err = parseID("gid", raw.gid); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(c.ChrootBase) {
		return nil, fmt.Errorf("--chroot-base-dir %q: not an absolute path", c.ChrootBase)
	}
	switch c.CgroupVersion {
	case "", cgroupV2:
	case "1":
		return nil, errors.New("--cgroup-version 1: cgroup v1 is not supported, only cgroup v2 (--cgroup-version 2)")
	default:
		return nil, fmt.Errorf("--cgroup-version %q: only 2 is supported", c.CgroupVersion)
	}
	for _, kv := range raw.cgroups {
		f, err := parseCgroupFile(kv)
		if err != nil {
			return nil, err
		}
		c.Cgroups = append(c.Cgroups, f)
	}
	if p := c.ParentCgroup; p != "" && (filepath.IsAbs(p) || !filepath.IsLocal(p)) {
		return nil, fmt.Errorf("--parent-cgroup %q: must be a relative path inside the cgroup root", p)
	}
	for _, kv := range raw.rlimits {
		if err := c.parseLimit(kv); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

func (c *Config) validateID() error {
	if c.ID == "" {
		return errors.New("--id is required")
	}
	if len(c.ID) > maxIDLen {
		return fmt.Errorf("--id %q: longer than %d characters", c.ID, maxIDLen)
	}
	for _, r := range c.ID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("--id %q: only letters, digits and '-' are allowed", c.ID)
		}
	}
	return nil
}

func parseID(name, s string) (uint32, error) {
	if s == "" {
		return 0, fmt.Errorf("--%s is required", name)
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: %w", name, s, err)
	}
	return uint32(n), nil
}

// parseCgroupFile parses FILE=VALUE; FILE is a cgroup interface file
// (controller.knob), never a path, so that it can't name a file outside
// the VM's cgroup.
func parseCgroupFile(kv string) (CgroupFile, error) {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" {
		return CgroupFile{}, fmt.Errorf("--cgroup %q: want FILE=VALUE", kv)
	}
	ctrl, _, ok := strings.Cut(k, ".")
	if !ok || ctrl == "" || strings.ContainsRune(k, '/') {
		return CgroupFile{}, fmt.Errorf("--cgroup %q: %q is not a cgroup file like cpu.max", kv, k)
	}
	return CgroupFile{k, v}, nil
}

func (c *Config) parseLimit(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok {
		return fmt.Errorf("--resource-limit %q: want fsize=N or no-file=N", kv)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("--resource-limit %q: %w", kv, err)
	}
	switch k {
	case limitFsize:
		c.Fsize = &n
	case limitNoFile:
		c.NoFile = n
	default:
		return fmt.Errorf("--resource-limit %q: unknown resource %q (want %s or %s)", kv, k, limitFsize, limitNoFile)
	}
	return nil
}
