package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	firecracker "github.com/firecracker-microvm/firecracker-go-sdk"

	"github.com/govmm/vmm/api"
	"github.com/govmm/vmm/api/client"
	"github.com/govmm/vmm/snapshot"
	"github.com/govmm/vmm/vmm"
)

// The test guest's snap=1 mode (guest/testguest/README.md).
const (
	snapSectors = 8 // what a line "r" reads and hashes
	snapExit    = 7 // exit=7 on its command line, once a line "q" ends the mode
	// snapDiskSize is the snapshotted guest's disk: 128 sectors.
	snapDiskSize = 64 << 10
	snapMemMiB   = 64
	snapCPUs     = 2
	// snapClones restore one snapshot at once (issue 13: 8 clones).
	snapClones = 8
	// sigkillStatus is Wait's status for a vmm killed with SIGKILL.
	sigkillStatus = 128 + int(syscall.SIGKILL)
)

var (
	snapReadyRe = regexp.MustCompile(`testguest: snap ready low=0x([0-9a-f]+) high=0x([0-9a-f]+) bytes=\d+`)
	snapCountRe = regexp.MustCompile(`testguest: snap count=(\d+) pattern=(ok|BAD at=0x[0-9a-f]+)`)
	snapDiskRe  = regexp.MustCompile(`testguest: (?:snap blk sectors=(\d+) fnv=0x([0-9a-f]+) irqs=(\d+)|(blk error [^\r\n]*|snap blk none))`)
	snapEndRe   = regexp.MustCompile(`testguest: snap end`)
)

// ref returns a pointer to a copy of v, for the API's optional fields.
func ref[T any](v T) *T { return &v }

// expectCount waits for the guest's next count line after off and checks
// it is want with the memory pattern intact.
func expectCount(t *testing.T, v *VM, off, want int) int {
	t.Helper()
	m, off := v.WaitFor(snapCountRe, off, testGuestTimeout)
	if m[1] != strconv.Itoa(want) || m[2] != "ok" {
		t.Fatalf("guest says count=%s pattern=%s, want count=%d pattern=ok", m[1], m[2], want)
	}
	return off
}

// expectDisk waits for the guest's next disk line after off and checks it
// read the sectors the host file holds, each completion interrupting it.
func expectDisk(t *testing.T, v *VM, off int, want uint32) int {
	t.Helper()
	m, off := v.WaitFor(snapDiskRe, off, testGuestTimeout)
	if m[4] != "" {
		t.Fatalf("guest disk read: %s", m[4])
	}
	if got := fmt.Sprintf("sectors=%s fnv=0x%s irqs=%s", m[1], m[2], m[3]); got != snapDiskLine(want) {
		t.Fatalf("guest read %s, want %s (the host file's first %d sectors, an MSI-X interrupt for each)", got, snapDiskLine(want), snapSectors)
	}
	return off
}

// snapDiskLine is what the guest prints after "r" for a disk whose first
// sectors hash to h.
func snapDiskLine(h uint32) string {
	return fmt.Sprintf("sectors=%d fnv=%#x irqs=%d", snapSectors, h, snapSectors)
}

// diskHash is the FNV-1a hash of the first snapSectors sectors of path, as
// the guest computes it.
func diskHash(t *testing.T, path string) uint32 {
	t.Helper()
	h := fnv.New32a()
	h.Write([]byte(readPrefix(t, path, snapSectors*512)))
	return h.Sum32()
}

func fileSum(t *testing.T, path string) [sha256.Size]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// createSnapshot is PUT /snapshot/create of a full snapshot.
func createSnapshot(ctx context.Context, c *client.Client, state, mem string) error {
	return c.Do(ctx, http.MethodPut, "/snapshot/create", api.SnapshotCreateParams{
		SnapshotType: ref(api.SnapshotFull), SnapshotPath: &state, MemFilePath: &mem,
	}, nil)
}

// loadSnapshot is PUT /snapshot/load from a memory file, with the vsock
// device moved to vsockUDS unless it is empty.
func loadSnapshot(ctx context.Context, c *client.Client, state, mem, vsockUDS string, resume bool) error {
	p := api.SnapshotLoadParams{
		SnapshotPath: &state,
		MemBackend:   &api.MemoryBackend{BackendType: ref(api.MemBackendFile), BackendPath: &mem},
		ResumeVM:     &resume,
	}
	if vsockUDS != "" {
		p.VsockOverride = &api.VsockOverride{UDSPath: &vsockUDS}
	}
	return c.Do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// testGuestSnapshot is the snapshot TestSnapshotTestGuest takes once and
// every subtest restores.
type testGuestSnapshot struct {
	state, mem string // the state file and the memory file
	disk       string // its read-only drive
	diskHash   uint32 // diskHash of the drive
	vsock      string // the vsock device's socket when it was taken
	count      int    // the guest's count in the snapshot
}

// sums fingerprints the snapshot's files: no restore may change them.
func (s *testGuestSnapshot) sums(t *testing.T) [2][sha256.Size]byte {
	t.Helper()
	return [2][sha256.Size]byte{fileSum(t, s.state), fileSum(t, s.mem)}
}

// takeTestGuestSnapshot boots the test guest in snap=1 mode through the
// API, with 2 vCPUs, a read-only drive (clones share it: a writable image
// is locked by the one VM that writes it), a vsock device and an entropy
// device; types two lines (the second reads the disk); pauses the guest,
// snapshots it and kills vmm with SIGKILL.
func takeTestGuestSnapshot(t *testing.T) *testGuestSnapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testGuestTimeout)
	defer cancel()
	dir := t.TempDir()
	sockDir := apiDir(t)
	s := &testGuestSnapshot{
		state: filepath.Join(dir, "vm.state"), mem: filepath.Join(dir, "vm.mem"),
		disk: filepath.Join(dir, "disk.img"), vsock: filepath.Join(sockDir, "v.sock"),
	}
	disk := make([]byte, snapDiskSize)
	rand.Read(disk)
	if err := os.WriteFile(s.disk, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	s.diskHash = diskHash(t, s.disk)

	sock := filepath.Join(sockDir, "api.sock")
	v := Start(t, "--api-sock", sock, "--debug-exit")
	c := apiClient(t, sock)
	for _, step := range []struct {
		what string
		do   func() error
	}{
		{"boot source", func() error {
			return c.PutBootSource(ctx, filepath.Join(shared.testGuest, "testguest.elf"), "", fmt.Sprintf("snap=1 exit=%d", snapExit))
		}},
		{"machine config", func() error { return c.PutMachineConfig(ctx, snapCPUs, snapMemMiB) }},
		{"drive", func() error {
			return c.PutDrive(ctx, api.Drive{DriveID: ref("disk"), PathOnHost: &s.disk, IsRootDevice: ref(false), IsReadOnly: ref(true)})
		}},
		{"vsock", func() error { return c.PutVsock(ctx, 3, s.vsock) }},
		{"entropy", func() error { return c.Do(ctx, http.MethodPut, "/entropy", api.Entropy{}, nil) }},
		{"start", func() error { return c.Start(ctx) }},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
	}
	_, off := v.WaitFor(regexp.MustCompile(`testguest: blk device=\d+ capacity=\d+ ro=1 msix=1`), 0, testGuestTimeout)
	m, off := v.WaitFor(snapReadyRe, off, testGuestTimeout)
	if m[2] == "0" {
		t.Fatalf("the guest has no pattern at the top of RAM: %s", m[0])
	}
	v.Type("a\r")
	off = expectCount(t, v, off, 1)
	v.Type("r\r")
	off = expectCount(t, v, off, 2)
	expectDisk(t, v, off, s.diskHash)
	s.count = 2

	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := createSnapshot(ctx, c, s.state, s.mem); err != nil {
		t.Fatalf("PUT /snapshot/create: %v", err)
	}
	t.Logf("snapshot taken in %v", time.Since(start).Round(time.Millisecond))
	expectState(t, c, api.StatePaused)

	// The memory file is guest RAM, sparse: the guest touched little of it.
	var st syscall.Stat_t
	if err := syscall.Stat(s.mem, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != snapMemMiB<<20 || st.Blocks*512 > st.Size/4 {
		t.Errorf("memory file: %d bytes, %d allocated; want %d bytes, mostly holes", st.Size, st.Blocks*512, snapMemMiB<<20)
	}

	v.Signal(syscall.SIGKILL)
	if code := v.Wait(time.Minute); code != sigkillStatus {
		t.Fatalf("vmm exit status %d after SIGKILL, want %d", code, sigkillStatus)
	}
	return s
}

// TestSnapshotTestGuest boots the test guest once (snap=1: a counter and a
// memory pattern in RAM, the disk read on request), snapshots it through
// the API at count 2 and kills that vmm. Each subtest restores the one
// snapshot in new vmm processes, and each restored guest must continue at
// count 3 with its pattern intact and read the disk's data through the
// restored virtio-blk queue and MSI-X route. No restore may change the
// snapshot's files (guest RAM is mapped MAP_PRIVATE).
func TestSnapshotTestGuest(t *testing.T) {
	requireKVM(t)
	s := takeTestGuestSnapshot(t)
	sums := s.sums(t)

	t.Run("api", func(t *testing.T) { testRestoreAPI(t, s) })
	t.Run("cli", func(t *testing.T) { testRestoreCLI(t, s) })
	t.Run("cli paused", func(t *testing.T) { testRestoreCLIPaused(t, s) })
	t.Run("sdk", func(t *testing.T) { testRestoreSDK(t, s) })
	t.Run("damaged", func(t *testing.T) { testRestoreDamaged(t, s) })
	t.Run("clones", func(t *testing.T) { testRestoreClones(t, s) })

	if s.sums(t) != sums {
		t.Errorf("a restore changed the snapshot's files")
	}
}

// testRestoreAPI: a new vmm with only --api-sock loads the snapshot with
// PUT /snapshot/load (resume_vm), reports the snapshot's machine, refuses a
// second load, and runs the guest on to its exit status.
func testRestoreAPI(t *testing.T, s *testGuestSnapshot) {
	ctx := context.Background()
	sock := filepath.Join(apiDir(t), "api.sock")
	v := Start(t, "--api-sock", sock)
	c := apiClient(t, sock)
	expectState(t, c, api.StateNotStarted)
	start := time.Now()
	if err := loadSnapshot(ctx, c, s.state, s.mem, "", true); err != nil {
		t.Fatalf("PUT /snapshot/load: %v", err)
	}
	t.Logf("loaded and resumed in %v", time.Since(start).Round(time.Millisecond))
	expectState(t, c, api.StateRunning)
	cfg, err := c.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if mc := cfg.MachineConfig; mc == nil || deref64(mc.VCPUCount) != snapCPUs || deref64(mc.MemSizeMiB) != snapMemMiB {
		t.Errorf("machine config after the load: %+v, want %d vCPUs and %d MiB", mc, snapCPUs, snapMemMiB)
	}
	if len(cfg.Drives) != 1 || deref(cfg.Drives[0].PathOnHost) != s.disk || cfg.Drives[0].IsReadOnly == nil || !*cfg.Drives[0].IsReadOnly {
		t.Errorf("drives after the load: %+v, want the snapshot's read-only %s", cfg.Drives, s.disk)
	}
	if cfg.Vsock == nil || deref(cfg.Vsock.UDSPath) != s.vsock || cfg.Entropy == nil {
		t.Errorf("vsock %+v, entropy %+v after the load: want the snapshot's devices", cfg.Vsock, cfg.Entropy)
	}
	if err := loadSnapshot(ctx, c, s.state, s.mem, "", true); !client.IsStatus(err, http.StatusBadRequest) {
		t.Errorf("a second PUT /snapshot/load: %v, want a 400", err)
	}

	v.Type("r\r")
	off := expectCount(t, v, 0, s.count+1)
	off = expectDisk(t, v, off, s.diskHash)
	v.Type("\r")
	off = expectCount(t, v, off, s.count+2)
	v.Type("q\r")
	v.WaitFor(snapEndRe, off, testGuestTimeout)
	if code := v.Wait(testGuestTimeout); code != snapExit {
		t.Errorf("exit status %d, want the guest's %d", code, snapExit)
	}
	requireGone(t, sock)
}

// waitState polls GET / until the instance is in state want.
func waitState(t *testing.T, c *client.Client, want string) {
	t.Helper()
	deadline := time.Now().Add(testGuestTimeout)
	for {
		info, err := c.InstanceInfo(context.Background())
		if err == nil && info.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance state %q (%v), want %q", info.State, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func deref64(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// testRestoreCLI: `vmm --restore STATE --mem-file MEM --resume` runs the
// guest on from the snapshot, console and exit status included.
func testRestoreCLI(t *testing.T, s *testGuestSnapshot) {
	v := Start(t, "--restore", s.state, "--mem-file", s.mem, "--resume")
	v.Type("r\r")
	off := expectCount(t, v, 0, s.count+1)
	off = expectDisk(t, v, off, s.diskHash)
	v.Type("q\r")
	v.WaitFor(snapEndRe, off, testGuestTimeout)
	if code := v.Wait(testGuestTimeout); code != snapExit {
		t.Errorf("exit status %d, want the guest's %d", code, snapExit)
	}
}

// testRestoreCLIPaused: without --resume the restored guest stays paused
// (input waits) until PATCH /vm Resumed.
func testRestoreCLIPaused(t *testing.T, s *testGuestSnapshot) {
	ctx := context.Background()
	sock := filepath.Join(apiDir(t), "api.sock")
	v := Start(t, "--restore", s.state, "--mem-file", s.mem, "--api-sock", sock)
	c := apiClient(t, sock)
	// The API serves while the snapshot loads: "Not started" until then.
	waitState(t, c, api.StatePaused)
	v.Type("a\r")
	time.Sleep(300 * time.Millisecond)
	if strings.Contains(v.Output(), "snap count=") {
		t.Fatalf("the guest ran before it was resumed:\n%s", v.Output())
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, c, api.StateRunning)
	off := expectCount(t, v, 0, s.count+1)
	v.Type("q\r")
	v.WaitFor(snapEndRe, off, testGuestTimeout)
	if code := v.Wait(testGuestTimeout); code != snapExit {
		t.Errorf("exit status %d, want the guest's %d", code, snapExit)
	}
	requireGone(t, sock)
}

// testRestoreSDK: the unmodified Firecracker Go SDK (v1.0.0) loads the
// snapshot with its snapshot option (firecracker.WithSnapshot: its own
// handler list, the deprecated mem_file_path), resumes it, and takes a
// snapshot of its own with Machine.CreateSnapshot, which `vmm --restore`
// then runs on from there.
func testRestoreSDK(t *testing.T, s *testGuestSnapshot) {
	dir := apiDir(t)
	sock := filepath.Join(dir, "fc.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*testGuestTimeout)
	defer cancel()
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdinW.Close()
	var out, stderr syncBuffer
	cmd := firecracker.VMCommandBuilder{}.
		WithBin(shared.vmm).
		WithSocketPath(sock).
		AddArgs("--id", "sdk-snap", "--no-seccomp").
		WithStdin(stdinR).WithStdout(&out).WithStderr(&stderr).
		Build(ctx)
	cfg := firecracker.Config{
		SocketPath:  sock,
		VMID:        "sdk-snap",
		LogPath:     filepath.Join(dir, "vmm.log"),
		LogLevel:    "Debug",
		MetricsPath: filepath.Join(dir, "metrics"),
	}
	m, err := firecracker.NewMachine(ctx, cfg, firecracker.WithProcessRunner(cmd),
		firecracker.WithSnapshot(s.mem, s.state, func(c *firecracker.SnapshotConfig) { c.ResumeVM = true }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.StopVMM()
		if t.Failed() {
			t.Logf("console:\n%s\nstderr:\n%s", out.String(), stderr.String())
		}
	})
	if err := m.Start(ctx); err != nil {
		t.Fatalf("SDK Start with WithSnapshot: %v", err)
	}
	info, err := m.DescribeInstanceInfo(ctx)
	if err != nil || firecracker.StringValue(info.State) != api.StateRunning {
		t.Fatalf("after the SDK's load: %+v %v, want Running", info, err)
	}
	write := func(s string) {
		t.Helper()
		if _, err := stdinW.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	write("r\r")
	waitForOutput(t, &out, fmt.Sprintf("testguest: snap count=%d pattern=ok", s.count+1))
	waitForOutput(t, &out, "testguest: snap blk "+snapDiskLine(s.diskHash))

	state2, mem2 := filepath.Join(t.TempDir(), "sdk.state"), filepath.Join(t.TempDir(), "sdk.mem")
	if err := m.PauseVM(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateSnapshot(ctx, mem2, state2); err != nil {
		t.Fatalf("SDK CreateSnapshot: %v", err)
	}
	if err := m.ResumeVM(ctx); err != nil {
		t.Fatal(err)
	}
	write("q\r")
	waitForOutput(t, &out, "testguest: snap end")
	err = m.Wait(ctx)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != snapExit {
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != snapExit {
			t.Fatalf("SDK Wait: %v, want exit status %d", err, snapExit)
		}
	}
	if log, err := os.ReadFile(cfg.LogPath); err != nil || !strings.Contains(string(log), "microVM restored") || !strings.Contains(string(log), "snapshot created") {
		t.Errorf("log file from PUT /logger: %q %v; want the load and the create", log, err)
	}
	requireGone(t, sock)

	// The SDK's snapshot was taken at count s.count+1.
	v := Start(t, "--restore", state2, "--mem-file", mem2, "--resume")
	v.Type("\r")
	off := expectCount(t, v, 0, s.count+2)
	v.Type("q\r")
	v.WaitFor(snapEndRe, off, testGuestTimeout)
	if code := v.Wait(testGuestTimeout); code != snapExit {
		t.Errorf("exit status %d, want the guest's %d", code, snapExit)
	}
}

// Offsets in a state file's header (package snapshot's doc comment).
const (
	snapFileVersionOff   = 8
	snapFileHeaderCRCOff = 24
	snapFileTrailer      = 8
)

var snapCRCTable = crc64.MakeTable(crc64.ECMA)

// withFormatVersion is a state file of another format version: the header
// says so and its checksum holds, so it is not damage.
func withFormatVersion(raw []byte, version uint32) []byte {
	b := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(b[snapFileVersionOff:], version)
	binary.LittleEndian.PutUint64(b[snapFileHeaderCRCOff:], crc64.Checksum(b[:snapFileHeaderCRCOff], snapCRCTable))
	return b
}

// withVMMVersion is a state file written by another vmm release: the
// version in its meta changed, same length, and the file checksum
// recomputed.
func withVMMVersion(t *testing.T, raw []byte, version string) []byte {
	t.Helper()
	old := []byte(fmt.Sprintf("%q:%q", "vmm_version", vmm.Version))
	if len(version) != len(vmm.Version) || bytes.Count(raw, old) != 1 {
		t.Fatalf("state file has %d copies of %s (or %q is not as long as %q)", bytes.Count(raw, old), old, version, vmm.Version)
	}
	b := bytes.Replace(raw, old, []byte(fmt.Sprintf("%q:%q", "vmm_version", version)), 1)
	end := len(b) - snapFileTrailer
	binary.LittleEndian.PutUint64(b[end:], crc64.Checksum(b[:end], snapCRCTable))
	return b
}

// otherRelease is a version with another major number than v.
func otherRelease(v string) string {
	if v[0] == '9' {
		return "8" + v[1:]
	}
	return "9" + v[1:]
}

// testRestoreDamaged: state files cut short, with a bit flipped, of another
// format version or vmm release, no snapshot at all, and a memory file
// shorter than the guest's RAM, are each refused with the reason: PUT
// /snapshot/load answers 400 and the instance stays "Not started" (and
// loads the good snapshot afterwards), `vmm --restore` prints one line and
// exits 1, and no file changes.
func testRestoreDamaged(t *testing.T, s *testGuestSnapshot) {
	ctx := context.Background()
	dir := t.TempDir()
	raw, err := os.ReadFile(s.state)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(raw)
	flipped[len(flipped)/2] ^= 0x08
	shortMem := filepath.Join(dir, "short.mem")
	copyPrefix(t, s.mem, shortMem, snapMemMiB<<20-4096)

	type variant struct {
		name       string
		state, mem string
		want       string // in the refusal
	}
	var variants []variant
	for _, f := range []struct {
		name string
		data []byte
		want string
	}{
		{"truncated", raw[:len(raw)-100], "truncated"},
		{"bit flipped", flipped, "checksum mismatch"},
		{"other format version", withFormatVersion(raw, snapshot.FormatVersion+1),
			fmt.Sprintf("unsupported version: snapshot format version %d", snapshot.FormatVersion+1)},
		{"other vmm release", withVMMVersion(t, raw, otherRelease(vmm.Version)), "unsupported version: written by vmm"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(f.name, " ", "-")+".state")
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		variants = append(variants, variant{f.name, p, s.mem, f.want})
	}
	variants = append(variants,
		variant{"not a snapshot", s.disk, s.mem, "not a vmm snapshot"},
		variant{"short memory file", s.state, shortMem, "RAM layout"})
	sums := map[string][sha256.Size]byte{}
	for _, v := range variants {
		sums[v.state], sums[v.mem] = fileSum(t, v.state), fileSum(t, v.mem)
	}

	sock := filepath.Join(apiDir(t), "api.sock")
	v := Start(t, "--api-sock", sock)
	c := apiClient(t, sock)
	for _, tt := range variants {
		err := loadSnapshot(ctx, c, tt.state, tt.mem, "", true)
		var apiErr *client.Error
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || !strings.Contains(apiErr.Message, tt.want) {
			t.Errorf("%s: PUT /snapshot/load: %v, want a 400 with %q", tt.name, err, tt.want)
		}
		expectState(t, c, api.StateNotStarted)

		code, stdout, stderr := runVMM(t, time.Minute, "--restore", tt.state, "--mem-file", tt.mem, "--resume")
		if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.want) || stdout != "" {
			t.Errorf("%s: vmm --restore: exit %d, stderr %q, stdout %q; want 1 and one line with %q", tt.name, code, stderr, stdout, tt.want)
		}
	}
	for p, sum := range sums {
		if fileSum(t, p) != sum {
			t.Errorf("%s changed", p)
		}
	}

	// Nothing of the refused loads is left: the good snapshot loads.
	if err := loadSnapshot(ctx, c, s.state, s.mem, "", true); err != nil {
		t.Fatalf("PUT /snapshot/load of the good snapshot after the refusals: %v", err)
	}
	v.Type("\r")
	off := expectCount(t, v, 0, s.count+1)
	v.Type("q\r")
	v.WaitFor(snapEndRe, off, testGuestTimeout)
	if code := v.Wait(testGuestTimeout); code != snapExit {
		t.Errorf("exit status %d, want the guest's %d", code, snapExit)
	}
}

// copyPrefix writes the first n bytes of src to dst.
func copyPrefix(t *testing.T, src, dst string, n int64) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(out, in, n); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// testRestoreClones: snapClones vmm processes, each with its own API
// socket, load the one snapshot at once, each moving the vsock device to
// its own socket (vsock_override); every clone's guest carries on from the
// snapshot and reads the shared read-only disk, and every clone serves its
// own vsock socket.
func testRestoreClones(t *testing.T, s *testGuestSnapshot) {
	dir := apiDir(t)
	type clone struct {
		v         *VM
		sock, uds string
	}
	clones := make([]clone, snapClones)
	for i := range clones {
		cl := &clones[i]
		cl.sock, cl.uds = filepath.Join(dir, fmt.Sprintf("api%d.sock", i)), filepath.Join(dir, fmt.Sprintf("v%d.sock", i))
		cl.v = Start(t, "--api-sock", cl.sock)
	}
	start := time.Now()
	errs := make([]error, len(clones))
	var wg sync.WaitGroup
	for i, cl := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), testGuestTimeout)
			defer cancel()
			c := client.New(cl.sock)
			if err := c.WaitReady(ctx); err != nil {
				errs[i] = err
				return
			}
			errs[i] = loadSnapshot(ctx, c, s.state, s.mem, cl.uds, true)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("clone %d: PUT /snapshot/load: %v", i, err)
		}
	}
	t.Logf("%d clones loaded and resumed in %v", len(clones), time.Since(start).Round(time.Millisecond))

	// All are running; they read the disk one after the other, so that
	// no clone's bounded waits in the guest race the others for the CPU.
	offs := make([]int, len(clones))
	for i, cl := range clones {
		cl.v.Type("r\r")
		offs[i] = expectCount(t, cl.v, 0, s.count+1)
		offs[i] = expectDisk(t, cl.v, offs[i], s.diskHash)
		cfg, err := client.New(cl.sock).VMConfig(context.Background())
		if err != nil || cfg.Vsock == nil || deref(cfg.Vsock.UDSPath) != cl.uds {
			t.Errorf("clone %d: vsock %+v (%v), want it on %s", i, cfg.Vsock, err, cl.uds)
		}
		conn, err := net.DialTimeout("unix", cl.uds, 10*time.Second)
		if err != nil {
			t.Errorf("clone %d: its vsock socket: %v", i, err)
		} else {
			conn.Close()
		}
	}
	for _, cl := range clones {
		cl.v.Type("q\r")
	}
	for i, cl := range clones {
		cl.v.WaitFor(snapEndRe, offs[i], testGuestTimeout)
		if code := cl.v.Wait(testGuestTimeout); code != snapExit {
			t.Errorf("clone %d: exit status %d, want the guest's %d", i, code, snapExit)
		}
	}
}

// snapshotLinuxGuest is TestLinuxGuest's snapshot step. It leaves state in
// the running guest (a file in tmpfs, the uptime so far, an open connection
// to the agent, which the snapshot resets), pauses the guest and snapshots
// it through the API socket c, kills vmm with SIGKILL, and restores the
// snapshot in a new vmm process with --restore --resume, in the same
// network namespace (the same tap), on the same disks and vsock socket.
// The file must be there, the uptime must have carried on (not restarted,
// not ahead of the host's clock), and the agent must take a new
// connection. It returns the restored VM and the offset of
// its console output after these checks: every later step runs against it.
func snapshotLinuxGuest(t *testing.T, ns *netNS, g *linuxGuestDisks, v *VM, c *client.Client, off int) (*VM, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	v.Type("echo tmpfs-$((6*7)) > /tmp/snap.txt && grep ' /tmp ' /proc/mounts && echo saved-$((7*7))\r")
	_, off = v.WaitFor(regexp.MustCompile(`(?s)tmpfs /tmp tmpfs .*?saved-49`), off, 5*time.Minute)
	uptimeRe := regexp.MustCompile(`(\d+\.\d+) \d+\.\d+\r?\n`)
	sent := time.Now() // before the guest reads its uptime
	v.Type("cat /proc/uptime\r")
	m, _ := v.WaitFor(uptimeRe, off, 5*time.Minute) // v's output ends here: v is killed below
	before, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	agent := dialAgent(t, ctx, g.vsock)
	defer agent.Close()
	if err := agent.Ping(ctx); err != nil {
		t.Fatalf("agent before the snapshot: %v", err)
	}

	dir := t.TempDir()
	state, mem := filepath.Join(dir, "linux.state"), filepath.Join(dir, "linux.mem")
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := createSnapshot(ctx, c, state, mem); err != nil {
		t.Fatalf("PUT /snapshot/create: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(mem, &st); err == nil {
		t.Logf("snapshot taken in %v; memory file %d MiB, %d MiB allocated", time.Since(start).Round(time.Millisecond), st.Size>>20, st.Blocks*512>>20)
	}
	saved := time.Now()
	v.Signal(syscall.SIGKILL)
	if code := v.Wait(time.Minute); code != sigkillStatus {
		t.Fatalf("vmm exit status %d after SIGKILL, want %d", code, sigkillStatus)
	}

	start = time.Now()
	r := StartInNS(t, ns, "--restore", state, "--mem-file", mem, "--resume")
	r.Type("cat /tmp/snap.txt && cat /proc/uptime && echo restored-$((8*8))\r")
	m, off = r.WaitFor(regexp.MustCompile(`(?s)tmpfs-42\r?\n.*?(\d+\.\d+) \d+\.\d+\r?\n.*?restored-64`), 0, 5*time.Minute)
	t.Logf("restored guest answered after %v", time.Since(start).Round(time.Millisecond))
	after, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	// The guest's clock carries on: not restarted, and not ahead of the
	// host's (/proc/uptime has two decimals: 0.01 s of rounding each way).
	elapsed := time.Since(sent).Seconds()
	if after < before || after > before+elapsed+0.02 {
		t.Errorf("uptime %.2f s before the snapshot, %.2f s after the restore %.1f s later: want it to carry on, by at most the time in between", before, after, elapsed)
	}
	t.Logf("guest uptime advanced %.2f s over %.2f s, of which %.2f s between the snapshot and the restore", after-before, elapsed, start.Sub(saved).Seconds())
	agent2 := dialAgent(t, ctx, g.vsock)
	defer agent2.Close()
	if err := agent2.Ping(ctx); err != nil {
		t.Errorf("agent after the restore: %v", err)
	}
	return r, off
}
