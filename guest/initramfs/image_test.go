package initramfs

import (
	"bytes"
	"go/parser"
	"go/token"
	"path"
	"sort"
	"strconv"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// readArchive parses a newc archive into its records, in order, failing
// the test on malformed input.
func readArchive(t *testing.T, archive []byte) []cpio.Record {
	t.Helper()
	records, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(archive)))
	if err != nil {
		t.Fatalf("reading archive: %v", err)
	}
	return records
}

func recordsByName(records []cpio.Record) map[string]cpio.Record {
	byName := make(map[string]cpio.Record, len(records))
	for _, r := range records {
		byName[r.Name] = r
	}
	return byName
}

func contents(t *testing.T, r cpio.Record) string {
	t.Helper()
	buf := make([]byte, r.FileSize)
	if _, err := r.ReadAt(buf, 0); err != nil && r.FileSize > 0 {
		t.Fatalf("reading %s: %v", r.Name, err)
	}
	return string(buf)
}

func TestImageArchiveLayout(t *testing.T) {
	commands := []string{uRootCore + "ls", uRootCore + "gosh"}
	archive, err := newImage([]byte("init-binary"), []byte("busybox-binary"), commands).archive()
	if err != nil {
		t.Fatalf("archive: %v", err)
	}
	records := readArchive(t, archive)
	byName := recordsByName(records)

	tests := []struct {
		name     string
		mode     uint64 // type and permission bits
		contents string // file contents or symlink target; ignored for others
		rdev     [2]uint64
	}{
		{name: "init", mode: cpio.S_IFREG | 0o755, contents: "init-binary"},
		{name: "bin/bb", mode: cpio.S_IFREG | 0o755, contents: "busybox-binary"},
		{name: "bin/ls", mode: cpio.S_IFLNK | 0o777, contents: "bb"},
		{name: "bin/gosh", mode: cpio.S_IFLNK | 0o777, contents: "bb"},
		{name: "bin/sh", mode: cpio.S_IFLNK | 0o777, contents: "gosh"},
		{name: "sbin", mode: cpio.S_IFLNK | 0o777, contents: "bin"},
		{name: "dev/console", mode: cpio.S_IFCHR | 0o600, rdev: [2]uint64{5, 1}},
		{name: "dev/null", mode: cpio.S_IFCHR | 0o666, rdev: [2]uint64{1, 3}},
		{name: "etc/passwd", mode: cpio.S_IFREG | 0o644, contents: "root:x:0:0:root:/root:/bin/sh\n"},
		{name: "etc/group", mode: cpio.S_IFREG | 0o644, contents: "root:x:0:\n"},
		{name: "etc/hostname", mode: cpio.S_IFREG | 0o644, contents: "vmm-guest\n"},
		{name: "tmp", mode: cpio.S_IFDIR | 0o1777},
		{name: "root", mode: cpio.S_IFDIR | 0o700},
		{name: "proc", mode: cpio.S_IFDIR | 0o555},
		{name: "sys", mode: cpio.S_IFDIR | 0o555},
		{name: "dev", mode: cpio.S_IFDIR | 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := byName[tt.name]
			if !ok {
				t.Fatalf("%s missing from archive", tt.name)
			}
			if r.Mode != tt.mode {
				t.Errorf("mode = %#o, want %#o", r.Mode, tt.mode)
			}
			switch tt.mode & cpio.S_IFMT {
			case cpio.S_IFREG, cpio.S_IFLNK:
				if got := contents(t, r); got != tt.contents {
					t.Errorf("contents = %q, want %q", got, tt.contents)
				}
			case cpio.S_IFCHR:
				if got := [2]uint64{r.Rmajor, r.Rminor}; got != tt.rdev {
					t.Errorf("device = %d:%d, want %d:%d", got[0], got[1], tt.rdev[0], tt.rdev[1])
				}
			}
			if r.UID != 0 || r.GID != 0 || r.MTime != 0 {
				t.Errorf("uid/gid/mtime = %d/%d/%d, want all 0", r.UID, r.GID, r.MTime)
			}
		})
	}
	checkOrdering(t, records)
}

// checkOrdering asserts what the kernel's unpacker relies on: names are
// unique, sorted, and every parent directory comes before its contents;
// inode numbers are distinct so no entries are mistaken for hard links.
func checkOrdering(t *testing.T, records []cpio.Record) {
	t.Helper()
	seen := map[string]bool{".": true}
	inodes := map[uint64]string{}
	var names []string
	for _, r := range records {
		if r.Name == cpio.Trailer {
			continue
		}
		names = append(names, r.Name)
		if seen[r.Name] {
			t.Errorf("%s appears twice", r.Name)
		}
		if parent := path.Dir(r.Name); !seen[parent] {
			t.Errorf("%s comes before its directory %s", r.Name, parent)
		}
		seen[r.Name] = true
		if other, dup := inodes[r.Ino]; dup {
			t.Errorf("%s and %s share inode %d", r.Name, other, r.Ino)
		}
		inodes[r.Ino] = r.Name
	}
	if !sort.StringsAreSorted(names) {
		t.Errorf("entries are not sorted: %v", names)
	}
}

func TestImageArchiveIsDeterministic(t *testing.T) {
	build := func() []byte {
		archive, err := newImage([]byte("init"), []byte("bb"), DefaultCommands()).archive()
		if err != nil {
			t.Fatalf("archive: %v", err)
		}
		return archive
	}
	if !bytes.Equal(build(), build()) {
		t.Error("two archives of the same image differ")
	}
}

func TestImageArchiveRejectsDuplicates(t *testing.T) {
	// A command named like a fixed entry must not silently shadow it.
	commands := []string{uRootCore + "gosh", "example.com/cmds/reboot"}
	if _, err := newImage(nil, nil, commands).archive(); err == nil {
		t.Error("archive with two bin/reboot entries succeeded, want error")
	}
}

func TestDefaultCommandsMatchDepsFile(t *testing.T) {
	file, err := parser.ParseFile(token.NewFileSet(), "commands_deps.go", nil, parser.ImportsOnly)
	if err != nil {
		t.Fatalf("parsing commands_deps.go: %v", err)
	}
	pinned := map[string]bool{}
	for _, imp := range file.Imports {
		importPath, err := strconv.Unquote(imp.Path.Value)
		if err != nil {
			t.Fatalf("import %s: %v", imp.Path.Value, err)
		}
		pinned[importPath] = true
	}
	for _, c := range DefaultCommands() {
		if !pinned[c] {
			t.Errorf("%s is in DefaultCommands but not in commands_deps.go", c)
		}
		delete(pinned, c)
	}
	for c := range pinned {
		t.Errorf("%s is in commands_deps.go but not in DefaultCommands", c)
	}
}

func TestCommandName(t *testing.T) {
	tests := []struct{ importPath, want string }{
		{"github.com/u-root/u-root/cmds/core/ls", "ls"},
		{"gosh", "gosh"},
		{"example.com/a/b/c", "c"},
	}
	for _, tt := range tests {
		if got := commandName(tt.importPath); got != tt.want {
			t.Errorf("commandName(%q) = %q, want %q", tt.importPath, got, tt.want)
		}
	}
}

func TestImageWithAgent(t *testing.T) {
	img := newImage([]byte("init"), []byte("bb"), []string{uRootCore + "gosh"})
	img.addAgent([]byte("agent-binary"))
	archive, err := img.archive()
	if err != nil {
		t.Fatalf("archive: %v", err)
	}
	r, ok := recordsByName(readArchive(t, archive))["bin/vmm-agent"]
	if !ok {
		t.Fatal("bin/vmm-agent missing")
	}
	if r.Mode != cpio.S_IFREG|0o755 || contents(t, r) != "agent-binary" {
		t.Errorf("bin/vmm-agent: mode %o, contents %q", r.Mode, contents(t, r))
	}
}
