package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/govmm/vmm/guest/agent/protocol"
	"golang.org/x/sys/unix"
)

// cgroupManager makes per-container cgroups under root/parent. The guest
// mounts cgroup v2 at /sys/fs/cgroup; v1 (one hierarchy per controller
// under root) is supported too because hosts that run the tests may still
// bind the memory controller to v1, and the limits must be testable there.
type cgroupManager struct {
	root   string // a cgroup2 mount, or a directory of v1 hierarchies
	parent string // relative path of the agent's cgroup under root
	v2     bool
}

// v1Controllers are the v1 hierarchies a container joins.
var v1Controllers = [...]string{"memory", "cpu"}

func newCgroupManager(root, parent string) (*cgroupManager, error) {
	if parent == "" || filepath.IsAbs(parent) || strings.Contains(parent, "..") {
		return nil, fmt.Errorf("cgroup parent %q: want a relative path with no \"..\" in it", parent)
	}
	m := &cgroupManager{root: root, parent: parent}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		m.v2 = true
		return m, nil
	}
	if _, err := os.Stat(filepath.Join(root, "memory", "cgroup.procs")); err == nil {
		return m, nil
	}
	return nil, fmt.Errorf("no cgroup v2 or v1 memory hierarchy at %s", root)
}

func (m *cgroupManager) version() string {
	if m.v2 {
		return "v2"
	}
	return "v1"
}

// cgroup is one container's cgroup: one directory on v2, one per
// controller on v1.
type cgroup struct {
	v2   bool
	dirs []string
}

// create makes the container's cgroup and applies its limits.
func (m *cgroupManager) create(id string, res protocol.Resources) (*cgroup, error) {
	cg := &cgroup{v2: m.v2}
	if m.v2 {
		if err := m.enableV2Controllers(res); err != nil {
			return nil, err
		}
		cg.dirs = []string{filepath.Join(m.root, m.parent, id)}
	} else {
		for _, c := range v1Controllers {
			if _, err := os.Stat(filepath.Join(m.root, c)); err != nil {
				continue
			}
			cg.dirs = append(cg.dirs, filepath.Join(m.root, c, m.parent, id))
		}
	}
	for _, dir := range cg.dirs {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return nil, fmt.Errorf("creating cgroup parent: %w", err)
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			cg.remove()
			return nil, fmt.Errorf("creating cgroup: %w", err)
		}
	}
	if err := cg.apply(res); err != nil {
		cg.remove()
		return nil, err
	}
	return cg, nil
}

// enableV2Controllers turns on memory and cpu for the agent's subtree: a
// v2 controller's files only appear in a cgroup whose parent enabled it.
func (m *cgroupManager) enableV2Controllers(res protocol.Resources) error {
	available, err := os.ReadFile(filepath.Join(m.root, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("reading cgroup controllers: %w", err)
	}
	var enable []string
	for _, c := range []string{"memory", "cpu", "pids"} {
		if strings.Contains(" "+strings.TrimSpace(string(available))+" ", " "+c+" ") {
			enable = append(enable, "+"+c)
		} else if (c == "memory" && res.MemoryMaxBytes > 0) || (c == "cpu" && res.CPUQuotaMicros > 0) {
			return fmt.Errorf("cgroup v2 controller %s is not available at %s", c, m.root)
		}
	}
	if len(enable) == 0 {
		return os.MkdirAll(filepath.Join(m.root, m.parent), 0o755)
	}
	dir := m.root
	for _, part := range strings.Split(m.parent, "/") {
		if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(enable, " ")); err != nil {
			return err
		}
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating cgroup: %w", err)
		}
	}
	return writeFile(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(enable, " "))
}

func (cg *cgroup) apply(res protocol.Resources) error {
	period := res.CPUPeriodMicros
	if period == 0 {
		period = 100000
	}
	for _, dir := range cg.dirs {
		if cg.v2 {
			if res.MemoryMaxBytes > 0 {
				if err := writeFile(filepath.Join(dir, "memory.max"), strconv.FormatInt(res.MemoryMaxBytes, 10)); err != nil {
					return err
				}
				// Without swap a limit is a limit: no spilling over.
				_ = writeFile(filepath.Join(dir, "memory.swap.max"), "0")
			}
			if res.CPUQuotaMicros > 0 {
				if err := writeFile(filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", res.CPUQuotaMicros, period)); err != nil {
					return err
				}
			}
			continue
		}
		if fileExists(filepath.Join(dir, "memory.limit_in_bytes")) && res.MemoryMaxBytes > 0 {
			if err := writeFile(filepath.Join(dir, "memory.limit_in_bytes"), strconv.FormatInt(res.MemoryMaxBytes, 10)); err != nil {
				return err
			}
		}
		if fileExists(filepath.Join(dir, "cpu.cfs_quota_us")) && res.CPUQuotaMicros > 0 {
			if err := writeFile(filepath.Join(dir, "cpu.cfs_period_us"), strconv.FormatInt(period, 10)); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(dir, "cpu.cfs_quota_us"), strconv.FormatInt(res.CPUQuotaMicros, 10)); err != nil {
				return err
			}
		}
	}
	return nil
}

// path is the cgroup's (first) directory, for reporting.
func (cg *cgroup) path() string {
	if len(cg.dirs) == 0 {
		return ""
	}
	return cg.dirs[0]
}

// openDir returns the v2 directory for clone3's CLONE_INTO_CGROUP, which
// puts a child in the cgroup before it runs a single instruction.
func (cg *cgroup) openDir() (*os.File, error) {
	if !cg.v2 {
		return nil, nil
	}
	f, err := os.OpenFile(cg.dirs[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup: %w", err)
	}
	return f, nil
}

// addProcess moves pid into the cgroup (v1, where clone3 cannot).
func (cg *cgroup) addProcess(pid int) error {
	for _, dir := range cg.dirs {
		if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// killAll kills every process in the cgroup where the kernel can (v2's
// cgroup.kill); it reports whether it could.
func (cg *cgroup) killAll() bool {
	if !cg.v2 {
		return false
	}
	return writeFile(filepath.Join(cg.dirs[0], "cgroup.kill"), "1") == nil
}

// oomKills is how many processes the OOM killer took from the cgroup.
func (cg *cgroup) oomKills() int {
	for _, dir := range cg.dirs {
		name := "memory.oom_control" // v1
		if cg.v2 {
			name = "memory.events"
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n
			}
		}
	}
	return 0
}

// remove deletes the cgroup, retrying while the kernel finishes tearing
// down its last processes (rmdir says EBUSY until then).
func (cg *cgroup) remove() error {
	var errs []error
	for _, dir := range cg.dirs {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dir, err))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// cleanup removes the agent's parent cgroups if no container is left in
// them; rmdir fails harmlessly on a cgroup that is still in use.
func (m *cgroupManager) cleanup() {
	bases := []string{m.root}
	if !m.v2 {
		bases = bases[:0]
		for _, c := range v1Controllers {
			bases = append(bases, filepath.Join(m.root, c))
		}
	}
	for _, base := range bases {
		for rel := m.parent; rel != "." && rel != "/"; rel = filepath.Dir(rel) {
			if unix.Rmdir(filepath.Join(base, rel)) != nil {
				break
			}
		}
	}
}

func writeFile(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, path, err)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
