package containerd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/internal/testenv"
	"github.com/govmm/vmm/shim"
)

func TestPodNetNS(t *testing.T) {
	tests := []struct {
		name    string
		spec    specs.Spec
		want    string
		wantErr bool
	}{
		{"no linux section", specs.Spec{}, "", false},
		{"new namespace (ctr run)", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}}}}, "", false},
		{"host network", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.MountNamespace}}}}, "", false},
		{"CRI pod", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"},
			{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1234"}}}}, "/var/run/netns/cni-1234", false},
		{"relative path", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.NetworkNamespace, Path: "netns/x"}}}}, "", true},
		{"the host's own namespace", specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
			{Type: specs.NetworkNamespace, Path: "/proc/self/ns/net"}}}}, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := podNetNS(&tc.spec)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("podNetNS = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// podNS is a pod network namespace as CNI leaves it, made by the test:
// eth0 with an address and a default route, its veth peer in a second
// namespace standing for the host's side.
type podNS struct {
	pod, peer string // namespace names
	path      string // the pod namespace's path, as the OCI spec has it
	eth0MAC   string
}

// Addresses in the test's namespaces (TEST-NET-style private range).
const (
	podCIDR  = "10.77.0.5/24"
	peerCIDR = "10.77.0.1/24"
	peerIP   = "10.77.0.1"
	podMAC   = "02:00:0a:4d:00:05"
	peerMAC  = "02:00:0a:4d:00:01"
)

func newPodNS(t *testing.T) *podNS {
	t.Helper()
	testenv.RequireRoot(t, "creating network namespaces")
	testenv.RequireCommand(t, "ip", "iproute2")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Skip(t, "/dev/net/tun is absent")
	}
	ns := &podNS{pod: fmt.Sprintf("vmmpod-%d", os.Getpid()), peer: fmt.Sprintf("vmmpeer-%d", os.Getpid()), eth0MAC: podMAC}
	for _, n := range []string{ns.pod, ns.peer} {
		ip(t, "netns", "add", n)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", n).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", n, err, out)
			}
		})
	}
	ns.path = filepath.Join("/run/netns", ns.pod)
	if _, err := os.Stat(ns.path); err != nil {
		ns.path = filepath.Join("/var/run/netns", ns.pod)
	}
	ip(t, "-n", ns.pod, "link", "add", "eth0", "address", podMAC, "type", "veth", "peer", "name", "peer0", "address", peerMAC, "netns", ns.peer)
	ip(t, "-n", ns.pod, "addr", "add", podCIDR, "dev", "eth0")
	ip(t, "-n", ns.pod, "link", "set", "lo", "up")
	ip(t, "-n", ns.pod, "link", "set", "eth0", "up")
	ip(t, "-n", ns.pod, "route", "add", "default", "via", peerIP)
	ip(t, "-n", ns.peer, "addr", "add", peerCIDR, "dev", "peer0")
	ip(t, "-n", ns.peer, "link", "set", "peer0", "up")
	return ns
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestSetupPodNetwork(t *testing.T) {
	ns := newPodNS(t)
	pn, err := setupPodNetwork(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	want := protocol.ConfigureNetworkRequest{
		Interfaces: []protocol.NetInterface{{MAC: podMAC, MTU: 1500, Addresses: []string{podCIDR}}},
		Routes:     []protocol.NetRoute{{MAC: podMAC, Gateway: peerIP}},
	}
	if fmt.Sprint(pn.guest) != fmt.Sprint(want) {
		t.Errorf("guest configuration %+v, want %+v", pn.guest, want)
	}
	if id, tap, mac := pn.apiInterface(); id != guestIfaceID || tap != podTap || mac != podMAC {
		t.Errorf("API interface %s %s %s, want %s %s %s", id, tap, mac, guestIfaceID, podTap, podMAC)
	}
	h, err := nsHandle(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	tap, err := h.LinkByName(podTap)
	if err != nil {
		t.Fatalf("no tap in the pod namespace: %v", err)
	}
	if tap.Type() != "tuntap" || tap.Attrs().MTU != 1500 || tap.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap: type %s, MTU %d, flags %v", tap.Type(), tap.Attrs().MTU, tap.Attrs().Flags)
	}
	if _, err := net.InterfaceByName(podTap); err == nil {
		t.Errorf("tap %s is in the test's own namespace", podTap)
	}

	checkRedirect(t, ns)
	checkInUse(t, ns)

	if err := teardownPodNetwork(ns.path); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(podTap); err == nil {
		t.Error("tap still there after teardown")
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	qdiscs, err := h.QdiscList(eth0)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qdiscs {
		if q.Type() == "ingress" {
			t.Errorf("eth0 keeps an ingress qdisc after teardown: %v", q)
		}
	}
	// Idempotent, as the delete subcommand may run after the shim's own
	// teardown; and again possible, for the next sandbox.
	if err := teardownPodNetwork(ns.path); err != nil {
		t.Errorf("second teardown: %v", err)
	}
	if _, err := setupPodNetwork(ns.path); err != nil {
		t.Fatalf("setup after teardown: %v", err)
	}
	// A dead shim's leftovers do not stop the next setup.
	if _, err := setupPodNetwork(ns.path); err != nil {
		t.Fatalf("setup over a previous setup: %v", err)
	}
	checkRedirect(t, ns)
	if err := teardownPodNetwork(ns.path); err != nil {
		t.Fatal(err)
	}
}

// checkRedirect sends a frame into the CNI veth from its peer and reads it
// from the tap, as vmm would, then writes one into the tap, as the guest
// would, and reads it at the peer.
func checkRedirect(t *testing.T, ns *podNS) {
	t.Helper()
	var tapFD int
	err := inNetNS(ns.path, func() error {
		var err error
		tapFD, err = attachTap(podTap)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tapFD)
	var pktFD int
	err = inNetNS(filepath.Join(filepath.Dir(ns.path), ns.peer), func() error {
		var err error
		pktFD, err = packetSocket("peer0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pktFD)

	in := testFrame(t, podMAC, peerMAC, "to the guest")
	if _, err := unix.Write(pktFD, in); err != nil {
		t.Fatalf("sending at the peer: %v", err)
	}
	if err := readFrame(tapFD, in); err != nil {
		t.Errorf("frame from the peer at the tap: %v", err)
	}
	out := testFrame(t, peerMAC, podMAC, "from the guest")
	if _, err := unix.Write(tapFD, out); err != nil {
		t.Fatalf("writing to the tap: %v", err)
	}
	if err := readFrame(pktFD, out); err != nil {
		t.Errorf("frame from the tap at the peer: %v", err)
	}
}

// testEtherType is IEEE 802's local experimental EtherType, which no
// stack in the namespaces answers.
const testEtherType = 0x88b5

func testFrame(t *testing.T, dst, src, payload string) []byte {
	t.Helper()
	d, err := net.ParseMAC(dst)
	if err != nil {
		t.Fatal(err)
	}
	s, err := net.ParseMAC(src)
	if err != nil {
		t.Fatal(err)
	}
	f := append(append(slices.Clone(d), s...), 0, 0)
	binary.BigEndian.PutUint16(f[12:], testEtherType)
	// Padded to Ethernet's minimum frame (without FCS).
	return append(f, []byte(fmt.Sprintf("%-46s", payload))...)
}

// attachTap opens the tap without virtio-net headers, so reads and writes
// are bare frames.
func attachTap(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// packetSocket is a raw AF_PACKET socket bound to the interface name in
// the calling thread's namespace.
func packetSocket(name string) (int, error) {
	itf, err := net.InterfaceByName(name)
	if err != nil {
		return -1, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(htons(testEtherType)))
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(testEtherType), Ifindex: itf.Index}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// readFrame reads fd until the frame want arrives, for at most a few
// seconds and a bounded number of other frames (IPv6 neighbour discovery
// and the like).
func readFrame(fd int, want []byte) error {
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 65536)
	for range 1000 {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
			return err
		}
		n, err := unix.Read(fd, buf)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if bytes.Equal(buf[:n], want) {
			return nil
		}
	}
	return fmt.Errorf("no frame %x within the deadline", want[:16])
}

func TestSetupPodNetworkNoInterface(t *testing.T) {
	ns := newPodNS(t)
	ip(t, "-n", ns.pod, "addr", "flush", "dev", "eth0")
	if _, err := setupPodNetwork(ns.path); err == nil || !strings.Contains(err.Error(), "no interface with an IPv4 address") {
		t.Errorf("setup without an addressed interface: %v", err)
	}
	h, err := nsHandle(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName(podTap); err == nil {
		t.Error("a failed setup left its tap")
	}
}

func TestTeardownPodNetworkGone(t *testing.T) {
	if err := teardownPodNetwork(filepath.Join(t.TempDir(), "no-such-netns")); err != nil {
		t.Errorf("teardown of a namespace that is gone: %v", err)
	}
}

// TestNetnsLauncher checks the VMM process starts in the pod's namespace
// while the shim's threads stay in their own.
func TestNetnsLauncher(t *testing.T) {
	ns := newPodNS(t)
	var st unix.Stat_t
	if err := unix.Stat(ns.path, &st); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	l := netnsLauncher{
		Launcher: shim.ExecLauncher{Path: "/bin/sh", Args: []string{"-c", "readlink /proc/self/ns/net", "sh"}},
		netns:    ns.path,
	}
	vm, err := l.Launch(t.Context(), shim.LaunchSpec{APISock: "unused", Console: &out})
	if err != nil {
		t.Fatal(err)
	}
	<-vm.Done()
	if got, want := strings.TrimSpace(out.String()), fmt.Sprintf("net:[%d]", st.Ino); got != want {
		t.Errorf("the VMM ran in %q, want the pod's %q", got, want)
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	// Every thread of the process is still in the test's namespace.
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		got, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if err == nil && got != self {
			t.Errorf("thread %s is in %s, not the test's %s", task.Name(), got, self)
		}
	}
}

// podLeftovers lists what a pod network left in ns: the tap and ingress
// qdiscs.
func podLeftovers(t *testing.T, ns *podNS) []string {
	t.Helper()
	h, err := nsHandle(ns.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var left []string
	if _, err := h.LinkByName(podTap); err == nil {
		left = append(left, "tap "+podTap)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	qdiscs, err := h.QdiscList(eth0)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qdiscs {
		if q.Type() == "ingress" {
			left = append(left, "ingress qdisc on eth0")
		}
	}
	return left
}

// TestBootMachineNetworkCleanup: a VMM that cannot start, or dies before
// it serves its API, leaves nothing of the pod's network behind.
func TestBootMachineNetworkCleanup(t *testing.T) {
	ns := newPodNS(t)
	for _, tc := range []struct {
		name string
		l    shim.ExecLauncher
		want string
	}{
		{"VMM binary missing", shim.ExecLauncher{Path: filepath.Join(t.TempDir(), "no-vmm")}, "starting the VMM"},
		{"VMM exits", shim.ExecLauncher{Path: "/bin/sh", Args: []string{"-c", "exit 3", "sh"}}, "the VMM exited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logged []string
			_, err := bootMachine(t.Context(), tc.l, machineSpec{
				dir: t.TempDir(), bootTimeout: 10 * time.Second, netns: ns.path,
				logf: func(f string, a ...any) { logged = append(logged, fmt.Sprintf(f, a...)) },
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("bootMachine = %v, want an error saying %q", err, tc.want)
			}
			if left := podLeftovers(t, ns); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
			if len(logged) > 0 {
				t.Errorf("teardown complained: %v", logged)
			}
		})
	}
}

// TestCreatePassesPodNetNS: Create boots the VM with the spec's network
// namespace, and refuses a relative one before making anything.
func TestCreatePassesPodNetNS(t *testing.T) {
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	cfg := &Config{VMM: exe, Kernel: exe, Initrd: exe, UpperSizeMiB: 16, RootDir: filepath.Join(dir, "root"), RunDir: filepath.Join(dir, "run")}
	svc := NewService(ServiceConfig{Config: cfg, Namespace: "ns", SandboxID: "p", Dir: filepath.Join(cfg.RunDir, "p")})
	var got *string
	svc.boot = func(_ context.Context, spec machineSpec) (*machine, error) {
		got = &spec.netns
		return nil, errors.New("no VM in this test")
	}
	withNetNS := func(path string) *specs.Spec {
		return &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}},
			Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: path}}}}
	}
	writeSpec(t, bundle, withNetNS("/var/run/netns/cni-test"))
	if _, err := svc.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "p", Bundle: bundle}); err == nil {
		t.Fatal("Create succeeded without a VM")
	}
	if got == nil || *got != "/var/run/netns/cni-test" {
		t.Errorf("boot got netns %v, want /var/run/netns/cni-test", got)
	}
	got = nil
	writeSpec(t, bundle, withNetNS("netns/rel"))
	_, err := svc.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "p", Bundle: bundle})
	if status.Code(err) != codes.InvalidArgument || got != nil {
		t.Errorf("relative netns: Create = %v (booted: %v), want InvalidArgument before booting", err, got != nil)
	}
}

// TestDeleteAfterDeathTearsDownNetwork: the delete subcommand, run after a
// shim died with its pod network in place, removes the tap and redirects.
func TestDeleteAfterDeathTearsDownNetwork(t *testing.T) {
	ns := newPodNS(t)
	if _, err := setupPodNetwork(ns.path); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	writeSpec(t, bundle, &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"pause"}},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: ns.path}}}})
	cfg := &Config{RootDir: filepath.Join(dir, "root"), RunDir: filepath.Join(dir, "run")}
	if _, err := deleteAfterDeath(&flags{namespace: "k8s.io", id: "sandbox", address: filepath.Join(dir, "containerd.sock"), bundle: bundle}, cfg); err != nil {
		t.Fatal(err)
	}
	if left := podLeftovers(t, ns); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// checkInUse: while a process holds the tap, as a running VMM does, a
// second setup in the namespace is refused and leaves the first alone.
func checkInUse(t *testing.T, ns *podNS) {
	t.Helper()
	var fd int
	if err := inNetNS(ns.path, func() error {
		var err error
		fd, err = attachTap(podTap)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := setupPodNetwork(ns.path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("setup while the tap is held: %v, want it refused", err)
	}
	if left := podLeftovers(t, ns); len(left) != 2 {
		t.Errorf("the refused setup changed the first one's network: %v left", left)
	}
}
