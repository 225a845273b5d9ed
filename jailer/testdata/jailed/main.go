// Command jailed is what the jailer test runs in its jail: it prints a
// JSON report of what it sees from inside, then waits for its stdin to
// close so that the test can look at it from the host through /proc.
package main

import (
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxProbeFD bounds the fd numbers probed for leaks.
const maxProbeFD = 1024

// Device is a device node as seen in the jail.
type Device struct {
	Major, Minor uint32
	UID, GID     uint32
	Mode         uint32 // permission bits
}

// Report is what the test asserts on.
type Report struct {
	FDs           []int // open fds, probed before Go opens any
	Pid           int
	UID, EUID     int
	GID, EGID     int
	Groups        []int
	NoFileCur     uint64
	NoFileMax     uint64
	Env           []string
	Args          []string
	Root          []string // the names in /
	Devices       map[string]Device
	OtherDevFiles []string // anything else under /dev
	Err           string
}

func main() {
	var r Report
	for fd := 0; fd < maxProbeFD; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			r.FDs = append(r.FDs, fd)
		}
	}
	r.Pid, r.UID, r.EUID, r.GID, r.EGID = os.Getpid(), os.Getuid(), os.Geteuid(), os.Getgid(), os.Getegid()
	r.Groups, _ = os.Getgroups()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		r.NoFileCur, r.NoFileMax = lim.Cur, lim.Max
	}
	r.Env = os.Environ()
	r.Args = os.Args[1:]
	r.Devices = map[string]Device{}
	if ents, err := os.ReadDir("/"); err != nil {
		r.Err = err.Error()
	} else {
		for _, e := range ents {
			r.Root = append(r.Root, e.Name())
		}
	}
	err := filepath.WalkDir("/dev", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR {
			r.OtherDevFiles = append(r.OtherDevFiles, path)
			return nil
		}
		r.Devices[path] = Device{unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Uid, st.Gid, st.Mode & 0o7777}
		return nil
	})
	if err != nil {
		r.Err = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(r)
	io.Copy(io.Discard, os.Stdin)
}
