package main

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The guest side of the iperf3 and fio suites: Debian's own iperf3 and
// fio binaries, the shared libraries they load, a static busybox and a
// start script, on an ext4 image the guest mounts read-only. The same image
// serves both VMMs, so both guests run byte-identical programs.

// Guest network of the io suites: the host end of the tap and the guest.
const (
	ioHostIP  = "10.200.0.1"
	ioGuestIP = "10.200.0.2"
	ioPrefix  = 24
	ioTap     = "vbtap0"
	// ioToolsMount is where the guest mounts the tools image; the start
	// script and the library paths below refer to it.
	ioToolsMount = "/tools"
)

// Lines the guest's start script prints on the console.
const (
	ioReadyLine = "io-tools: ready"
	ioDataLine  = "io-tools: data-disk="
	ioFailLine  = "io-tools: failed"
)

// ioTools names the host programs copied into the tools image.
type ioTools struct {
	iperf3, fio, busybox string
}

// findIOTools looks the programs up on the host; the error says how to
// install what is missing.
func findIOTools() (ioTools, error) {
	var t ioTools
	var missing []string
	for _, p := range []struct {
		name string
		dst  *string
	}{{"iperf3", &t.iperf3}, {"fio", &t.fio}} {
		path, err := exec.LookPath(p.name)
		if err != nil {
			missing = append(missing, p.name)
			continue
		}
		*p.dst = path
	}
	for _, c := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if isStaticELF(c) {
			t.busybox = c
			break
		}
	}
	if t.busybox == "" {
		missing = append(missing, "busybox-static")
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("missing %s (benchmarks/install-tools.sh installs them: apt-get install %s)",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	return t, nil
}

// isStaticELF reports whether path is an ELF executable with no program
// interpreter, i.e. one that runs without the guest having a libc.
func isStaticELF(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// sharedLibraries returns the absolute paths ldd lists for binary: the
// libraries it loads and the program interpreter.
func sharedLibraries(binary string) ([]string, error) {
	out, err := exec.Command("ldd", binary).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", binary, err)
	}
	return parseLdd(out), nil
}

// parseLdd extracts the library paths from ldd's output: "name => /path
// (addr)" lines and the interpreter's "/path (addr)" line; vDSO lines have
// no path.
func parseLdd(out []byte) []string {
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i, w := range f {
			if strings.HasPrefix(w, "/") && (i == 0 || f[i-1] == "=>") {
				libs = append(libs, w)
				break
			}
		}
	}
	return libs
}

// buildToolsImage stages the tools under dir and writes them to image with
// mkfs.ext4 -d. It returns the library directories the start script passes
// to the dynamic loader.
func buildToolsImage(t ioTools, dir, image string) error {
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		return err
	}
	var libDirs []string
	interp := ""
	for _, bin := range []string{t.iperf3, t.fio} {
		if err := copyFileTo(bin, filepath.Join(root, "bin", filepath.Base(bin))); err != nil {
			return err
		}
		libs, err := sharedLibraries(bin)
		if err != nil {
			return err
		}
		for _, lib := range libs {
			if err := copyFileTo(lib, filepath.Join(root, lib)); err != nil {
				return err
			}
			if strings.Contains(filepath.Base(lib), "ld-linux") {
				interp = lib
			} else if d := filepath.Dir(lib); !slices.Contains(libDirs, d) {
				libDirs = append(libDirs, d)
			}
		}
	}
	if interp == "" {
		return fmt.Errorf("ldd named no program interpreter for %s", t.fio)
	}
	if err := copyFileTo(t.busybox, filepath.Join(root, "bin", "busybox")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "run.sh"), []byte(ioStartScript(interp, libDirs)), 0o755); err != nil {
		return err
	}
	var size int64
	err := filepath.Walk(root, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			size += fi.Size()
		}
		return err
	})
	if err != nil {
		return err
	}
	mb := size*5/4>>20 + 32
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, image, fmt.Sprintf("%dM", mb)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 -d %s: %v: %s", root, err, bytes.TrimSpace(out))
	}
	return nil
}

func copyFileTo(from, to string) error {
	data, err := os.ReadFile(from) // follows symlinks, as the loader does
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}

// ioMountCommand is typed at the guest's shell: mount whichever disk holds
// the tools (the data disk has no file system, so its mount fails) and run
// the start script with the image's busybox.
func ioMountCommand() string {
	return fmt.Sprintf("mkdir -p %[1]s; for d in /dev/vda /dev/vdb; do mount -t ext4 -o ro $d %[1]s && break; done; %[1]s/bin/busybox sh %[1]s/run.sh\n",
		ioToolsMount)
}

// ioStartScript configures the guest for the benchmarks and starts the
// iperf3 and fio servers; the host drives every test from its side
// (iperf3 -c, fio --client), so the guest prints only its readiness and the
// data disk's name. Programs run through the image's loader and libraries:
// the initramfs has no libc.
func ioStartScript(interp string, libDirs []string) string {
	var lp []string
	for _, d := range libDirs {
		lp = append(lp, ioToolsMount+d)
	}
	return fmt.Sprintf(`# Written by the benchmarks (iotools.go); run by the guest's shell.
T=%[1]s
$T/bin/busybox mkdir -p /tmp/bb && $T/bin/busybox --install -s /tmp/bb
export PATH=/tmp/bb:$PATH
run() { $T%[2]s --library-path %[3]s "$@"; }
fail() { echo "%[4]s: $*"; exit 1; }
data=
for b in /sys/block/vd*; do
	n=${b##*/}
	grep -q "^/dev/$n " /proc/mounts || data=/dev/$n
done
[ -n "$data" ] || fail "no data disk"
echo "%[5]s$data"
ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add %[6]s/%[7]d dev eth0 || fail "eth0 address"
# One test per server (-1), restarted for the next: a server that failed or
# died mid-test does not take the rest with it, and its complaints reach
# the console log.
( while :; do run $T/bin/iperf3 -s -1 >/dev/console 2>&1; sleep 1; done ) &
run $T/bin/fio --server --daemonize=/tmp/fio.pid || fail "fio server"
# Loading fio's libraries takes a minute with an emulated guest kernel.
i=0
until netstat -ltn | grep -q ':8765 ' && netstat -ltn | grep -q ':5201 '; do
	i=$((i+1)); [ $i -gt 900 ] && fail "servers not listening"
	sleep 1
done
echo "%[8]s"
`, ioToolsMount, interp, strings.Join(lp, ":"), ioFailLine, ioDataLine, ioGuestIP, ioPrefix, ioReadyLine)
}
