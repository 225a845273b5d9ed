package seccomp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/iouring"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/blk"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// childEnv selects a child mode when the test binary re-executes itself,
// so that the filter never lands on the test process.
const childEnv = "VMM_SECCOMP_TEST_CHILD"

// children are the child modes: each installs the filter, then runs.
var children = map[string]func() error{
	"forbidden-ptrace": func() error {
		_, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0, 0, 0, 0)
		return fmt.Errorf("ptrace returned (errno %v)", errno)
	},
	"forbidden-mount": func() error {
		err := unix.Mount("none", "/nonexistent", "tmpfs", 0, "")
		return fmt.Errorf("mount returned: %v", err)
	},
	"forbidden-ioctl": func() error {
		// FIONREAD on a pipe: a harmless request vmm never issues.
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		_, err := unix.IoctlGetInt(p[0], unix.SIOCINQ)
		return fmt.Errorf("SIOCINQ (FIONREAD) returned: %v", err)
	},
	"forbidden-inet-socket": func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		return fmt.Errorf("socket(AF_INET) returned %d, %v", fd, err)
	},
	"status":   childStatus,
	"workload": childWorkload,
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		f, ok := children[mode]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
			os.Exit(3)
		}
		if err := Install(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(4)
		}
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild runs the test binary in child mode and returns its exit state
// and its output.
func runChild(t *testing.T, mode string) (*os.ProcessState, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running child %s: %v", mode, err)
	}
	return cmd.ProcessState, out.String()
}

// skipWithoutSeccomp skips where the kernel has no seccomp filters (or a
// sandbox forbids adding one): then the install itself fails in the child.
func skipWithoutSeccomp(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil || !strings.Contains(string(b), "Seccomp:") {
		t.Skip("kernel without seccomp")
	}
}

func TestForbiddenKilledBySIGSYS(t *testing.T) {
	skipWithoutSeccomp(t)
	for _, mode := range []string{"forbidden-ptrace", "forbidden-mount", "forbidden-ioctl", "forbidden-inet-socket"} {
		t.Run(mode, func(t *testing.T) {
			st, out := runChild(t, mode)
			ws, ok := st.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
				t.Fatalf("child %s: %v, want killed by SIGSYS; output:\n%s", mode, st, out)
			}
		})
	}
}

// childStatus reports the seccomp lines of /proc/self/status.
func childStatus() error {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Seccomp") || strings.HasPrefix(l, "NoNewPrivs") {
			fmt.Println(l)
		}
	}
	return nil
}

func TestStatusShowsFilter(t *testing.T) {
	skipWithoutSeccomp(t)
	st, out := runChild(t, "status")
	if !st.Success() {
		t.Fatalf("child: %v; output:\n%s", st, out)
	}
	if !strings.Contains(out, "Seccomp:\t2\n") {
		t.Errorf("want Seccomp:\\t2 (filter mode); got:\n%s", out)
	}
	if !strings.Contains(out, "NoNewPrivs:\t1\n") {
		t.Errorf("want NoNewPrivs:\\t1; got:\n%s", out)
	}
	var n int
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Seccomp_filters:\t"); ok {
			n, _ = strconv.Atoi(v)
		}
	}
	if n < 1 {
		t.Errorf("want Seccomp_filters >= 1; got:\n%s", out)
	}
}

func TestWorkloadSurvives(t *testing.T) {
	skipWithoutSeccomp(t)
	st, out := runChild(t, "workload")
	if !st.Success() {
		t.Fatalf("child: %v; output:\n%s", st, out)
	}
	for _, step := range workloadSteps {
		if !strings.Contains(out, "ok "+step.name+"\n") {
			t.Errorf("step %s did not report; output:\n%s", step.name, out)
		}
	}
}

// workloadSteps are what vmm does once the filter is on.
var workloadSteps = []struct {
	name string
	run  func() error
}{
	{"runtime", stepRuntime},
	{"files", stepFiles},
	{"socketpair", stepSocketpair},
	{"eventfd", stepEventfd},
	{"iouring", stepIOUring},
	{"http-unix", stepHTTP},
	{"blk-sync", func() error { return stepBlk(blk.EngineSync) }},
	{"blk-async", func() error { return stepBlk(blk.EngineAsync) }},
}

func childWorkload() error {
	for _, s := range workloadSteps {
		if err := s.run(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Printf("ok %s\n", s.name)
	}
	return nil
}

// stepRuntime makes the runtime start threads, collect garbage and run
// timers.
func stepRuntime() error {
	var wg sync.WaitGroup
	sums := make([]int, 200)
	for i := range sums {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 64<<10)
			time.Sleep(time.Millisecond)
			for j := range b {
				sums[i] += int(b[j]) + j%7
			}
		}()
	}
	wg.Wait()
	runtime.GC()
	tm := time.NewTimer(5 * time.Millisecond)
	<-tm.C
	tk := time.NewTicker(time.Millisecond)
	for range 3 {
		<-tk.C
	}
	tk.Stop()
	return nil
}

func stepFiles() error {
	dir, err := os.MkdirTemp("", "seccomp-child")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("hello"), 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("J"), 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	b := make([]byte, 5)
	if _, err := f.ReadAt(b, 0); err != nil || string(b) != "Jello" {
		return fmt.Errorf("read %q, %v", b, err)
	}
	if _, err := f.Stat(); err != nil {
		return err
	}
	return os.Rename(p, p+".2")
}

func stepSocketpair() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer a.Close()
	defer b.Close()
	if _, err := a.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 8)
	n, err := b.Read(buf)
	if err != nil || string(buf[:n]) != "ping" {
		return fmt.Errorf("read %q, %v", buf[:n], err)
	}
	return nil
}

func stepEventfd() error {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 3)
	if _, err := unix.Write(fd, b[:]); err != nil {
		return err
	}
	if _, err := unix.Read(fd, b[:]); err != nil || binary.LittleEndian.Uint64(b[:]) != 3 {
		return fmt.Errorf("read %v, %v", b, err)
	}
	return nil
}

// stepIOUring opens a ring; where the host forbids io_uring (a sandbox's
// own filter) that failure is the host's, not this filter's, so it passes.
func stepIOUring() error {
	r, err := iouring.New(8)
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) {
			return nil
		}
		return err
	}
	return r.Close()
}

func stepHTTP() error {
	dir, err := os.MkdirTemp("", "seccomp-http")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"state":"Running"}`)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://localhost/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(b), "Running") {
		return fmt.Errorf("got %q, %v", b, err)
	}
	return nil
}

// stepBlk reads two sectors through virtio-blk driven by the fake driver.
func stepBlk(engine blk.Engine) error {
	const sectors, queue, headerLen, typeIn = 16, 16, 16, 0
	dir, err := os.MkdirTemp("", "seccomp-blk")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := make([]byte, sectors*blk.SectorSize)
	for i := range img {
		img[i] = byte(i / blk.SectorSize)
	}
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		return err
	}
	b, err := blk.Open(blk.Config{Path: p, QueueSize: queue, Engine: engine})
	if err != nil {
		if engine == blk.EngineAsync && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS)) {
			return nil // the host forbids io_uring, as in stepIOUring
		}
		return err
	}
	defer b.Close()
	ram, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(ram)
	d, err := virtiotest.NewDriverOn(ram, queue)
	if err != nil {
		return err
	}
	features := b.Features() | virtio.FeatureVersion1
	notes := make(chan struct{}, 16)
	q, err := d.Queue(features, func() { notes <- struct{}{} })
	if err != nil {
		return err
	}
	hdr := d.Alloc(headerLen, 8)
	var h [headerLen]byte
	binary.LittleEndian.PutUint32(h[0:], typeIn)
	binary.LittleEndian.PutUint64(h[8:], 3)
	d.Write(hdr, h[:])
	data := d.Alloc(2*blk.SectorSize, 8)
	status := d.Alloc(1, 1)
	d.Write(status, []byte{0xff})
	d.Post(d.Chain(virtiotest.Buf{Addr: hdr, Len: headerLen},
		virtiotest.Buf{Addr: data, Len: 2 * blk.SectorSize, Write: true},
		virtiotest.Buf{Addr: status, Len: 1, Write: true}))
	fails := make(chan error, 1)
	kick := make(chan struct{}, 1)
	if err := b.Activate(&virtio.Activation{Mem: d.Mem, Features: features,
		Queues: []*virtio.Queue{q}, Kicks: []<-chan struct{}{kick},
		Fail: func(err error) { fails <- err }}); err != nil {
		return err
	}
	defer b.Reset()
	kick <- struct{}{}
	if _, ok := d.WaitUsed(10 * time.Second); !ok {
		select {
		case err := <-fails:
			return fmt.Errorf("device failed: %w", err)
		default:
			return errors.New("request did not complete")
		}
	}
	if s := d.Read(status, 1)[0]; s != 0 {
		return fmt.Errorf("status %d", s)
	}
	got := d.Read(data, 2*blk.SectorSize)
	if got[0] != 3 || got[blk.SectorSize] != 4 {
		return fmt.Errorf("read sectors %d,%d, want 3,4", got[0], got[blk.SectorSize])
	}
	return nil
}

// data builds a seccomp_data for the interpreter. The kernel's seccomp
// loads read words in the host's (little-endian) order, golang.org/x/net/bpf's
// in network order, so each 32-bit word is stored big-endian here at the
// offset the kernel would find it: an argument's low half first.
func data(arch, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[offNr:], nr)
	binary.BigEndian.PutUint32(b[offArch:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[offArgs+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[offArgs+8*i+4:], uint32(a>>32))
	}
	return b
}

func TestProgramDecisions(t *testing.T) {
	prog, err := Program()
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("the filter does not assemble: %v", err)
	}
	const (
		allow = unix.SECCOMP_RET_ALLOW
		kill  = unix.SECCOMP_RET_KILL_PROCESS
		x86   = unix.AUDIT_ARCH_X86_64
	)
	kvmRun := uint64(0xae80)
	tests := []struct {
		name string
		in   []byte
		want int
	}{
		{"read", data(x86, unix.SYS_READ), allow},
		{"futex", data(x86, unix.SYS_FUTEX), allow},
		{"io_uring_enter", data(x86, unix.SYS_IO_URING_ENTER), allow},
		{"last listed", data(x86, Syscalls()[len(Syscalls())-1]), allow},
		{"ptrace", data(x86, unix.SYS_PTRACE), kill},
		{"mount", data(x86, unix.SYS_MOUNT), kill},
		{"execve", data(x86, unix.SYS_EXECVE), kill},
		{"seccomp itself", data(x86, unix.SYS_SECCOMP), kill},
		{"i386 arch", data(unix.AUDIT_ARCH_I386, unix.SYS_READ), kill},
		{"x32 read", data(x86, x32ABIBit|unix.SYS_READ), kill},
		{"KVM_RUN", data(x86, unix.SYS_IOCTL, 5, kvmRun), allow},
		{"KVM_RUN, high bits set", data(x86, unix.SYS_IOCTL, 5, 1<<32|kvmRun), allow},
		{"TUNSETIFF", data(x86, unix.SYS_IOCTL, 5, unix.TUNSETIFF), allow},
		{"TCGETS", data(x86, unix.SYS_IOCTL, 0, unix.TCGETS), allow},
		{"TIOCSTI", data(x86, unix.SYS_IOCTL, 0, unix.TIOCSTI), kill},
		{"SIOCINQ (FIONREAD)", data(x86, unix.SYS_IOCTL, 0, unix.SIOCINQ), kill},
		{"socket AF_UNIX", data(x86, unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM), allow},
		{"socket AF_INET", data(x86, unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM), kill},
		{"socket AF_NETLINK", data(x86, unix.SYS_SOCKET, unix.AF_NETLINK, unix.SOCK_RAW), kill},
		{"prctl PR_SET_NAME", data(x86, unix.SYS_PRCTL, unix.PR_SET_NAME), allow},
		{"prctl PR_SET_DUMPABLE", data(x86, unix.SYS_PRCTL, unix.PR_SET_DUMPABLE), kill},
		{"out of table", data(x86, 1000), kill},
	}
	for _, tt := range tests {
		got, err := vm.Run(tt.in)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if uint32(got) != uint32(tt.want) {
			t.Errorf("%s: filter returns %#x, want %#x", tt.name, got, tt.want)
		}
	}
	// Every listed request is allowed, and every listed system call.
	for _, r := range IoctlRequests() {
		if got, _ := vm.Run(data(x86, unix.SYS_IOCTL, 3, uint64(r))); uint32(got) != allow {
			t.Errorf("ioctl %#x: %#x, want allow", r, got)
		}
	}
	for _, nr := range Syscalls() {
		if got, _ := vm.Run(data(x86, nr)); uint32(got) != allow {
			t.Errorf("system call %d: %#x, want allow", nr, got)
		}
	}
}

func TestAssemble(t *testing.T) {
	f, err := Assemble()
	if err != nil {
		t.Fatal(err)
	}
	if len(f) == 0 || len(f) > unix.BPF_MAXINSNS {
		t.Fatalf("%d instructions", len(f))
	}
	// The last instruction kills: nothing falls off the end allowed.
	last := f[len(f)-1]
	if last.Code != unix.BPF_RET|unix.BPF_K || last.K != unix.SECCOMP_RET_KILL_PROCESS {
		t.Errorf("last instruction %+v, want ret KILL_PROCESS", last)
	}
}
