package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/guest/agent/client"
	"github.com/govmm/vmm/guest/agent/protocol"
)

const (
	guestMAC  = "06:00:0a:c8:00:02"
	guestIP   = "10.200.0.2" // on nsHostCIDR's network
	hostIP    = "10.200.0.1"
	agentPort = 1024
	// tcpBytes crosses virtio-net in each direction with a checksum.
	tcpBytes = 32 << 20
	// tcpBytesPVM replaces it on kvm-pvm hosts, where the guest kernel
	// runs in KVM's instruction emulator and its TCP stack handles a few
	// segments a second (measured: 2–9 KB/s).
	tcpBytesPVM = 128 << 10
)

// isKVMPVM reports whether /dev/kvm is kvm-pvm (see README).
func isKVMPVM() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

// linuxGuestDisks are the images and sockets of TestLinuxGuest's VM.
type linuxGuestDisks struct {
	rootfs string // the busybox test image: containers' root (vda)
	data   string // ext4 with hello.txt (vdb)
	raw    string // 1 MiB of zeros (vdc)
	vsock  string // hybrid vsock socket
}

func newLinuxGuestDisks(t *testing.T) *linuxGuestDisks {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (package e2fsprogs; `make deps` installs it)", tool)
		}
	}
	dir := t.TempDir()
	g := &linuxGuestDisks{
		rootfs: filepath.Join(dir, "rootfs.ext4"),
		data:   filepath.Join(dir, "data.ext4"),
		raw:    filepath.Join(dir, "raw.img"),
		vsock:  filepath.Join(dir, "vsock.sock"),
	}
	copyFile(t, filepath.Join(shared.guestDir, "test.ext4"), g.rootfs)
	src := filepath.Join(dir, "data")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, g.data, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if err := os.WriteFile(g.raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return g
}

// debugfsCat reads a file from an ext4 image without mounting it.
func debugfsCat(t *testing.T, image, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, image).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s %s: %v", image, path, err)
	}
	return string(out)
}

func readPrefix(t *testing.T, path string, n int) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(f, buf); err != nil {
		t.Fatal(err)
	}
	return string(buf)
}

// inNetNS runs fn on an OS thread that joined ns's network namespace, so
// the sockets fn creates live there. The thread stays locked and dies
// with the goroutine: no other goroutine ever runs in the namespace.
func inNetNS(ns *netNS, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", ns.name))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// dialAgent connects to the guest agent through the hybrid vsock socket
// uds, retrying for up to 5 minutes: the agent starts with the guest, and
// on slow hosts it may not listen yet when the ready line appears.
func dialAgent(t *testing.T, ctx context.Context, uds string) *client.Client {
	t.Helper()
	start := time.Now()
	for attempt := 0; ; attempt++ {
		nc, err := client.DialHybridVsock(ctx, uds, agentPort)
		if err == nil {
			var c *client.Client
			if c, _, err = client.New(ctx, nc); err == nil {
				t.Logf("agent answered after %v", time.Since(start).Round(time.Second))
				return c
			}
		}
		if attempt == 60 {
			t.Fatalf("agent on vsock port %d: %v", agentPort, err)
		}
		time.Sleep(5 * time.Second)
	}
}

// agentRun runs args in a container through the agent and returns its
// exit status and output. It does not fail the test itself, so it can
// run on any goroutine.
type agentRun func(containerID string, stdin io.Reader, args ...string) (protocol.ExitStatus, string, string, error)

func testAgentInLinuxGuest(t *testing.T, g *linuxGuestDisks, ns *netNS) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c := dialAgent(t, ctx, g.vsock)
	defer c.Close()

	const cid = "main"
	if _, err := c.CreateContainer(ctx, protocol.CreateContainerRequest{
		ID: cid, Rootfs: protocol.Rootfs{Source: "/dev/vda", Type: "ext4"}, Hostname: "box",
	}); err != nil {
		t.Fatalf("create container: %v", err)
	}
	initProc, err := c.StartProcess(ctx, cid, protocol.Process{Args: []string{"sleep", "100000"}}, client.Stdio{})
	if err != nil {
		t.Fatalf("start container init: %v", err)
	}
	var execN atomic.Int32
	run := func(containerID string, stdin io.Reader, args ...string) (protocol.ExitStatus, string, string, error) {
		var stdout, stderr syncBuffer
		id := fmt.Sprintf("exec-%d", execN.Add(1))
		p, err := c.ExecProcess(ctx, containerID, id, protocol.Process{Args: args},
			client.Stdio{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
		if err != nil {
			return protocol.ExitStatus{}, "", "", fmt.Errorf("exec %q: %w", args, err)
		}
		st, err := p.Wait(ctx)
		if err != nil {
			return st, stdout.String(), stderr.String(), fmt.Errorf("wait %q: %w", args, err)
		}
		return st, stdout.String(), stderr.String(), nil
	}

	t.Run("exec", func(t *testing.T) {
		st, out, _, err := run(cid, strings.NewReader("ping\n"), "sh", "-c", `read x; echo "got-$x $(hostname)"; exit 7`)
		if err != nil || st.Code != 7 || out != "got-ping box\n" {
			t.Errorf("exec: status %+v, stdout %q, err %v; want 7 and %q", st, out, err, "got-ping box\n")
		}
	})
	t.Run("net", func(t *testing.T) { testGuestNetwork(t, ns, cid, run) })
	t.Run("memory limit", func(t *testing.T) { testMemoryLimit(t, ctx, c) })

	if err := initProc.Signal(ctx, unix.SIGKILL); err != nil {
		t.Errorf("kill container init: %v", err)
	}
	if st, err := initProc.Wait(ctx); err != nil || st.Signal != int(unix.SIGKILL) {
		t.Errorf("container init: status %+v, err %v; want killed by SIGKILL", st, err)
	}
	if err := c.DestroyContainer(ctx, cid); err != nil {
		t.Errorf("destroy container: %v", err)
	}
}

// testGuestNetwork brings up the guest's interface from a container and
// moves tcpBytes (tcpBytesPVM on kvm-pvm) each way between the guest and the test namespace over
// TCP, checked with SHA-256 on both ends.
func testGuestNetwork(t *testing.T, ns *netNS, cid string, run agentRun) {
	size := tcpBytes
	if isKVMPVM() {
		size = tcpBytesPVM
		t.Logf("NOTE: kvm-pvm host: moving %d KiB each way instead of %d MiB (the guest kernel is emulated)", size>>10, tcpBytes>>20)
	}
	start := time.Now()
	st, out, errOut, err := run(cid, nil, "sh", "-c",
		"ip addr add "+guestIP+"/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 10 "+hostIP)
	if err != nil || st.Code != 0 {
		t.Fatalf("guest network setup: status %+v, err %v\n%s%s", st, err, out, errOut)
	}
	t.Logf("interface up, ping ok after %v", time.Since(start).Round(time.Second))

	// Host to guest: the guest listens, the host connects and sends.
	payload := make([]byte, size)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	type result struct {
		st      protocol.ExitStatus
		out, eo string
		err     error
	}
	res := make(chan result, 1)
	go func() {
		st, out, eo, err := run(cid, nil, "sh", "-c", "nc -l -p 5001 | sha256sum")
		res <- result{st, out, eo, err}
	}()
	start = time.Now()
	var conn net.Conn
	for attempt := 0; ; attempt++ {
		err := inNetNS(ns, func() (err error) {
			conn, err = net.DialTimeout("tcp", guestIP+":5001", 10*time.Second)
			return err
		})
		if err == nil {
			break
		}
		if attempt == 60 {
			t.Fatalf("connecting to the guest: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	// Bounded: a dead guest must fail the test, not hang it.
	conn.SetDeadline(time.Now().Add(10 * time.Minute))
	if _, err := conn.Write(payload); err != nil {
		t.Fatalf("sending to the guest: %v", err)
	}
	conn.Close()
	r := <-res
	if got := strings.Fields(r.out); r.err != nil || r.st.Code != 0 || len(got) == 0 || got[0] != hex.EncodeToString(want[:]) {
		t.Errorf("host→guest: guest sha256 %q (status %+v, stderr %q, err %v), want %x", r.out, r.st, r.eo, r.err, want)
	}
	t.Logf("host→guest %d KiB in %v", size>>10, time.Since(start).Round(time.Second))

	// Guest to host: the host listens, the guest sends random bytes and
	// prints their checksum.
	var ln net.Listener
	if err := inNetNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", hostIP+":5000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Minute))
	got := make(chan [sha256.Size]byte, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Minute))
		h := sha256.New()
		io.CopyN(h, conn, int64(size))
		var sum [sha256.Size]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	}()
	// The payload is made first, so that the transfer is timed alone.
	start = time.Now()
	st, out, errOut, err = run(cid, nil, "sh", "-c", fmt.Sprintf(
		"dd if=/dev/urandom of=/tmp/out.bin bs=65536 count=%d 2>/dev/null && sha256sum /tmp/out.bin", size/65536))
	if f := strings.Fields(out); err != nil || st.Code != 0 || len(f) == 0 {
		t.Fatalf("making the guest's payload: status %+v, stdout %q, stderr %q, err %v", st, out, errOut, err)
	}
	sent := strings.Fields(out)[0]
	t.Logf("guest payload of %d KiB made in %v", size>>10, time.Since(start).Round(time.Second))
	start = time.Now()
	st, _, errOut, err = run(cid, nil, "sh", "-c", "nc "+hostIP+" 5000 < /tmp/out.bin; rm /tmp/out.bin")
	sum, ok := <-got
	if !ok || sent != hex.EncodeToString(sum[:]) {
		t.Errorf("guest→host: host received sha256 %x (ok %v), guest sent %s (nc status %+v, stderr %q, err %v)", sum, ok, sent, st, errOut, err)
	}
	t.Logf("guest→host %d KiB in %v", size>>10, time.Since(start).Round(time.Second))
}

// testMemoryLimit runs a memory hog in a container with a 12 MiB limit:
// the kernel's OOM killer must stop it and the agent must keep serving.
func testMemoryLimit(t *testing.T, ctx context.Context, c *client.Client) {
	const cid = "hog"
	if _, err := c.CreateContainer(ctx, protocol.CreateContainerRequest{
		ID: cid, Rootfs: protocol.Rootfs{Source: "/dev/vda", Type: "ext4"},
		Resources: protocol.Resources{MemoryMaxBytes: 12 << 20},
	}); err != nil {
		t.Fatalf("create container: %v", err)
	}
	defer func() {
		if err := c.DestroyContainer(ctx, cid); err != nil {
			t.Errorf("destroy container: %v", err)
		}
	}()
	var stderr syncBuffer
	// dd's 48 MiB buffer is filled from /dev/zero: 4× the limit (small, since
	// every page is cleared by the guest kernel, emulated on kvm-pvm).
	p, err := c.StartProcess(ctx, cid, protocol.Process{Args: []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"}},
		client.Stdio{Stderr: &stderr})
	if err != nil {
		t.Fatalf("start hog: %v", err)
	}
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("wait hog: %v", err)
	}
	if st.Signal != int(unix.SIGKILL) || !st.OOMKilled {
		t.Errorf("hog: status %+v (stderr %q), want killed by the OOM killer", st, stderr.String())
	}
	if err := c.Ping(ctx); err != nil {
		t.Errorf("agent after the OOM kill: %v", err)
	}
}
