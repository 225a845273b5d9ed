package initramfs

import (
	"bytes"
	"fmt"
	"path"
	"sort"

	"github.com/u-root/u-root/pkg/cpio"
)

// busyboxPath is where the multi-call binary lives; every command is a
// symlink to it in the same directory.
const busyboxPath = "bin/bb"

// Device numbers the kernel and the shell need before devtmpfs is mounted:
// the kernel opens /dev/console for init's stdio straight from the archive.
const (
	consoleMajor, consoleMinor = 5, 1
	nullMajor, nullMinor       = 1, 3
)

// image is the archive's contents before serialisation.
type image struct {
	entries []cpio.Record
}

// newImage lays out the guest root filesystem. Paths are relative to / as
// newc expects.
func newImage(initBinary, busyboxBinary []byte, commands []string) *image {
	img := &image{}
	for _, dir := range []struct {
		name string
		perm uint64
	}{
		{"bin", 0o755},
		{"dev", 0o755},
		{"dev/pts", 0o755},
		{"etc", 0o755},
		{"proc", 0o555},
		{"root", 0o700},
		{"run", 0o755},
		{"sys", 0o555},
		{"tmp", 0o1777},
		{"usr", 0o755},
		{"var", 0o755},
	} {
		img.add(cpio.Directory(dir.name, dir.perm))
	}

	img.add(cpio.CharDev("dev/console", 0o600, consoleMajor, consoleMinor))
	img.add(cpio.CharDev("dev/null", 0o666, nullMajor, nullMinor))

	img.add(executable("init", initBinary))
	img.add(executable(busyboxPath, busyboxBinary))
	for _, importPath := range commands {
		img.add(cpio.Symlink(path.Join("bin", commandName(importPath)), path.Base(busyboxPath)))
	}
	// The busybox resolves a chain of symlinks down to the last one, so
	// /bin/sh -> gosh -> bb runs gosh.
	img.add(cpio.Symlink("bin/sh", shellCommand))
	// u-root has no reboot command; shutdown knows how.
	img.add(cpio.StaticFile("bin/reboot", "#!/bin/sh\nexec shutdown reboot\n", 0o755))
	img.add(cpio.Symlink("sbin", "bin"))
	img.add(cpio.Symlink("usr/bin", "../bin"))
	img.add(cpio.Symlink("usr/sbin", "../bin"))

	img.add(cpio.StaticFile("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644))
	img.add(cpio.StaticFile("etc/group", "root:x:0:\n", 0o644))
	img.add(cpio.StaticFile("etc/hostname", "vmm-guest\n", 0o644))
	img.add(cpio.StaticFile("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tvmm-guest\n::1\tlocalhost\n", 0o644))
	return img
}

// agentArchivePath is where guest/init looks for the agent.
const agentArchivePath = "bin/vmm-agent"

// addAgent adds the guest agent binary.
func (img *image) addAgent(agentBinary []byte) {
	img.add(executable(agentArchivePath, agentBinary))
}

func executable(name string, contents []byte) cpio.Record {
	return cpio.StaticRecord(contents, cpio.Info{Name: name, Mode: cpio.S_IFREG | 0o755})
}

func (img *image) add(r cpio.Record) {
	img.entries = append(img.entries, r)
}

// archive serialises the image as newc cpio. Entries are sorted by name,
// which also puts every directory before its contents as the kernel
// requires, and carry fixed metadata (owner root, mtime 0, inode numbers
// by position) so the bytes depend only on the contents.
func (img *image) archive() ([]byte, error) {
	records := make([]cpio.Record, len(img.entries))
	copy(records, img.entries)
	sort.Slice(records, func(i, j int) bool { return records[i].Name < records[j].Name })

	for i := range records {
		if i > 0 && records[i].Name == records[i-1].Name {
			return nil, fmt.Errorf("duplicate archive entry %q", records[i].Name)
		}
		records[i] = cpio.MakeReproducible(records[i])
		// Inode numbers only need to be distinct: the kernel treats
		// entries sharing one as hard links.
		records[i].Ino = uint64(i + 1)
		records[i].NLink = 1
		if records[i].Mode&cpio.S_IFMT == cpio.S_IFDIR {
			records[i].NLink = 2
		}
	}

	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, records); err != nil {
		return nil, fmt.Errorf("writing cpio records: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, fmt.Errorf("writing cpio trailer: %w", err)
	}
	return buf.Bytes(), nil
}
