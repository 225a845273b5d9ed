package jailer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// CgroupRoot is where the cgroup v2 hierarchy is mounted.
const CgroupRoot = "/sys/fs/cgroup"

// CgroupV2Available reports nil when CgroupRoot is a cgroup v2 mount, or
// why not.
func CgroupV2Available() error {
	var st unix.Statfs_t
	if err := unix.Statfs(CgroupRoot, &st); err != nil {
		return fmt.Errorf("cgroup v2: %w", err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("cgroup v2: %s is not a cgroup2 mount (a cgroup v1 or hybrid host); the jailer supports only cgroup v2", CgroupRoot)
	}
	return nil
}

// makeCgroup creates the VM's cgroup, enables the controllers its files
// need in every ancestor (cgroup v2 only offers a controller's files in a
// child whose parent lists it in cgroup.subtree_control), writes the files
// and returns the cgroup directory opened, for CLONE_INTO_CGROUP.
func makeCgroup(c *Config) (*os.File, error) {
	if err := CgroupV2Available(); err != nil {
		return nil, err
	}
	rel := c.CgroupPath()
	dir := filepath.Join(CgroupRoot, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	controllers := map[string]bool{}
	for _, f := range c.Cgroups {
		ctrl, _, _ := strings.Cut(f.Name, ".")
		controllers[ctrl] = true
	}
	// The ancestors from the root down to the VM's cgroup's parent.
	parts := strings.Split(rel, string(filepath.Separator))
	for ctrl := range controllers {
		if ctrl == "cgroup" { // the core files need no controller
			continue
		}
		anc := CgroupRoot
		for _, p := range parts {
			if err := os.WriteFile(filepath.Join(anc, "cgroup.subtree_control"), []byte("+"+ctrl), 0); err != nil {
				return nil, fmt.Errorf("cgroup: enabling controller %s in %s: %w", ctrl, anc, err)
			}
			anc = filepath.Join(anc, p)
		}
	}
	for _, f := range c.Cgroups {
		if err := os.WriteFile(filepath.Join(dir, f.Name), []byte(f.Value), 0); err != nil {
			return nil, fmt.Errorf("cgroup: writing %s=%s: %w", f.Name, f.Value, err)
		}
	}
	fd, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return fd, nil
}

// errNotDir is why an existing jail path is refused.
var errNotDir = errors.New("exists and is not a directory")
