// Package testimage lays out the small busybox root filesystem used to
// test containers: Debian's static busybox (package busybox-static) as
// /bin/busybox with a symlink per applet, minimal /etc files, and empty
// /proc, /sys, /dev and /tmp for the agent to mount on. The mktestimage
// command turns it into build/guest/test.ext4.
package testimage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultBusybox is where Debian's busybox-static installs the binary.
const DefaultBusybox = "/bin/busybox"

// FindBusybox returns a static busybox binary: DefaultBusybox, or one on
// PATH. The agent runs it in an empty rootfs, so a dynamically linked one
// would not do.
func FindBusybox() (string, error) {
	for _, candidate := range []string{DefaultBusybox, "/usr/bin/busybox"} {
		if isStatic(candidate) == nil {
			return candidate, nil
		}
	}
	if path, err := exec.LookPath("busybox"); err == nil {
		if err := isStatic(path); err != nil {
			return "", err
		}
		return path, nil
	}
	return "", errors.New("no static busybox: apt-get install busybox-static")
}

// isStatic checks for an ELF without a program interpreter (PT_INTERP),
// which is what makes it runnable in a rootfs with no libc.
func isStatic(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return fmt.Errorf("%s is not an ELF binary", path)
	}
	if bytes.Contains(data[:min(len(data), 4096)], []byte("/lib64/ld-linux")) ||
		bytes.Contains(data[:min(len(data), 4096)], []byte("/lib/ld-linux")) {
		return fmt.Errorf("%s is dynamically linked: install busybox-static", path)
	}
	return nil
}

// Populate lays out the image under dir (which must exist) with the
// busybox binary at busybox.
func Populate(dir, busybox string) error {
	binary, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("reading busybox: %w", err)
	}
	for _, d := range []struct {
		name string
		perm os.FileMode
	}{
		{"bin", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"sys", 0o555},
		{"dev", 0o755}, {"tmp", os.ModeSticky | 0o777}, {"root", 0o700}, {"usr", 0o755},
	} {
		path := filepath.Join(dir, d.name)
		if err := os.Mkdir(path, d.perm); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating /%s: %w", d.name, err)
		}
		// Mkdir is filtered by the umask; the modes are meant exactly.
		if err := os.Chmod(path, d.perm); err != nil {
			return fmt.Errorf("chmod /%s: %w", d.name, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), binary, 0o755); err != nil {
		return fmt.Errorf("writing /bin/busybox: %w", err)
	}
	applets, err := listApplets(busybox)
	if err != nil {
		return err
	}
	for _, name := range applets {
		if name == "busybox" {
			continue
		}
		link := filepath.Join(dir, "bin", name)
		if err := os.Symlink("busybox", link); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("linking /bin/%s: %w", name, err)
		}
	}
	for _, l := range [][2]string{{"bin", "sbin"}, {"../bin", "usr/bin"}, {"../bin", "usr/sbin"}} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("linking /%s: %w", l[1], err)
		}
	}
	files := []struct {
		name, contents string
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		{"etc/group", "root:x:0:\nnogroup:x:65534:\n"},
		{"etc/hostname", "container\n"},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.contents), 0o644); err != nil {
			return fmt.Errorf("writing /%s: %w", f.name, err)
		}
	}
	return nil
}

// listApplets asks busybox which commands it has.
func listApplets(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	var applets []string
	for _, name := range strings.Fields(string(out)) {
		// Applet names are plain words; anything else would be a
		// path we must not create.
		if name != "" && !strings.ContainsAny(name, "/\x00") && name != "." && name != ".." {
			applets = append(applets, name)
		}
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list printed no applets", busybox)
	}
	return applets, nil
}
