package initramfs

import "path"

// uRootCore is the import path prefix of u-root's core command packages.
const uRootCore = "github.com/u-root/u-root/cmds/core/"

// shellCommand is the busybox command that /bin/sh points at.
const shellCommand = "gosh"

// DefaultCommands returns the Go import paths of the userland commands
// compiled into the guest's busybox binary. Every entry must also be listed
// in commands_deps.go, which keeps their modules in go.mod and go.sum so the
// build works offline from the module cache (a test checks the two agree).
//
// The set aims at what a person or a test poking at a fresh VM reaches for:
// files, processes, mounts, kernel state and basic network setup. Tools
// that pull in TLS and HTTP (wget, netcat: together a third of the binary)
// or are large for what a test VM needs (dhclient, sshd, kexec) are left
// out, because the guest kernel unpacks every byte on slow hosts.
func DefaultCommands() []string {
	names := []string{
		"basename", "cat", "chmod", "cmp", "cp", "date", "dd", "df",
		"dirname", "dmesg", "du", "echo", "false", "find", "free", "gosh",
		"grep", "gzip", "head", "hexdump", "hostname", "id", "insmod", "ip",
		"kill", "ln", "ls", "lsmod", "mkdir", "mkfifo", "mknod", "mktemp",
		"more", "mount", "mv", "pidof", "ping", "poweroff",
		"printenv", "ps", "pwd", "readlink", "realpath", "rm", "rmmod", "seq",
		"shutdown", "sleep", "sort", "strings", "stty", "sync", "tail", "tar",
		"tee", "time", "timeout", "touch", "tr", "true", "tty", "umount",
		"uname", "uniq", "uptime", "wc", "which", "xargs", "yes",
	}
	paths := make([]string, len(names))
	for i, name := range names {
		paths[i] = path.Join(uRootCore, name)
	}
	return paths
}
