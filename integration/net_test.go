package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/testenv"
)

// netNS is a network namespace the test creates for itself, with one tap
// interface at hostIP/24 in it. Traffic never leaves the namespace.
type netNS struct {
	name, tap string
}

const (
	nsHostCIDR = "10.200.0.1/24" // the tap's address; the test guest is 10.200.0.2
	nsTap      = "vmmtap0"
)

// ipCmd runs ip(8) with args and fails the test on error.
func ipCmd(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
	return out
}

// newNetNS creates namespace vmmtest-<pid>-<n> with a tap, removed when
// the test ends (deleting the namespace deletes the tap).
func newNetNS(t *testing.T, n int) *netNS {
	t.Helper()
	return newNetNSTap(t, n, false)
}

// newNetNSTap is newNetNS with a multi-queue tap (`ip tuntap add ... mode
// tap multi_queue`) when multiQueue is set.
func newNetNSTap(t *testing.T, n int, multiQueue bool) *netNS {
	t.Helper()
	requireKVM(t)
	testenv.RequireRoot(t, "creating network namespaces")
	testenv.RequireCommand(t, "ip", "iproute2")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Skip(t, "/dev/net/tun is absent")
	}
	ns := &netNS{name: fmt.Sprintf("vmmtest-%d-%d", os.Getpid(), n), tap: nsTap}
	ipCmd(t, "netns", "add", ns.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns.name, err, out)
		}
	})
	ipCmd(t, "-n", ns.name, "link", "set", "lo", "up")
	tuntap := []string{"-n", ns.name, "tuntap", "add", "dev", ns.tap, "mode", "tap"}
	if multiQueue {
		tuntap = append(tuntap, "multi_queue")
	}
	ipCmd(t, tuntap...)
	ipCmd(t, "-n", ns.name, "addr", "add", nsHostCIDR, "dev", ns.tap)
	ipCmd(t, "-n", ns.name, "link", "set", ns.tap, "up")
	return ns
}

// runVMMInNS is runVMM with vmm running inside ns (so it can open the
// tap there).
func runVMMInNS(t *testing.T, ns *netNS, timeout time.Duration, args ...string) (int, string, string) {
	t.Helper()
	return runCommand(t, []string{"ip", "netns", "exec", ns.name}, timeout, args)
}

// tapCounters returns the packets the tap's host side received from and
// sent to the guest.
func (ns *netNS) tapCounters(t *testing.T) (fromGuest, toGuest uint64) {
	t.Helper()
	out := ipCmd(t, "-j", "-s", "-n", ns.name, "link", "show", "dev", ns.tap)
	var links []struct {
		Stats64 struct {
			RX struct{ Packets uint64 } `json:"rx"`
			TX struct{ Packets uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j -s link: %v\n%s", err, out)
	}
	return links[0].Stats64.RX.Packets, links[0].Stats64.TX.Packets
}

// TestVirtioNet boots the test guest with a virtio-net interface on a tap
// in a private network namespace: the guest finds the device, reads its
// MAC, ARPs for the host and pings it with frames it builds itself. The
// tap's counters show the frames crossed.
func TestVirtioNet(t *testing.T) {
	ns := newNetNS(t, 0)
	const mac = "06:00:0a:c8:00:02"
	code, out, stderr := runVMMInNS(t, ns, testGuestTimeout, "--kernel", filepath.Join(shared.testGuest, "testguest.elf"),
		"--debug-exit", "--net", "tap="+ns.tap+",mac="+mac, "--cmdline", "net=1 exit=5")
	if code != 5 {
		t.Fatalf("exit status %d, want 5\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
	}
	checkLines(t, out, []string{
		"testguest: net device=1 mac=" + mac + " link=1 mrg=1",
	})
	if !regexpLine(out, `^testguest: net arp ok host=([0-9a-f]{2}:){5}[0-9a-f]{2}$`) {
		t.Errorf("console lacks the ARP reply line\nconsole:\n%s", out)
	}
	checkLines(t, out, []string{"testguest: net ping ok"})
	from, to := ns.tapCounters(t)
	if from < 2 || to < 2 {
		t.Errorf("tap counters: %d frames from the guest, %d to it; want at least 2 each (ARP, ICMP)", from, to)
	}
	t.Logf("tap: %d frames from the guest, %d to it", from, to)
}

// TestVirtioNetTapErrors checks what a user sees for a tap that can't be
// opened: one line naming it, before the guest runs.
func TestVirtioNetTapErrors(t *testing.T) {
	ns := newNetNS(t, 1)
	// A tap name that is too long is refused by the flag parser.
	code, _, stderr := runVMMInNS(t, ns, time.Minute, "--kernel", filepath.Join(shared.testGuest, "testguest.elf"),
		"--net", "tap=averyveryverylongtapname")
	if code != 2 {
		t.Errorf("long tap name: status %d, stderr %q; want 2", code, stderr)
	}
	// An existing interface that isn't a tap: TUNSETIFF refuses it.
	ipCmd(t, "-n", ns.name, "link", "add", "vmmveth0", "type", "veth", "peer", "name", "vmmveth1")
	code, _, stderr = runVMMInNS(t, ns, time.Minute, "--kernel", filepath.Join(shared.testGuest, "testguest.elf"),
		"--net", "tap=vmmveth0")
	if code == 0 || !strings.Contains(stderr, "vmmveth0") {
		t.Errorf("non-tap interface: status %d, stderr %q; want failure naming it", code, stderr)
	}
}

// TestVirtioNetMultiQueue boots the test guest with a 4-pair virtio-net
// interface on a multi-queue tap (net=mq): the guest negotiates the
// control queue and multiqueue, reads max_virtqueue_pairs, turns every
// pair on with VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, gets VIRTIO_NET_ERR for an
// unknown class and for one pair too many, then ARPs for and pings the
// host through the last pair. The tap's counters show the frames crossed.
func TestVirtioNetMultiQueue(t *testing.T) {
	ns := newNetNSTap(t, 2, true)
	const mac = "06:00:0a:c8:00:03"
	code, out, stderr := runVMMInNS(t, ns, testGuestTimeout, "--kernel", filepath.Join(shared.testGuest, "testguest.elf"),
		"--debug-exit", "--net", "tap="+ns.tap+",mac="+mac+",queues=4", "--cmdline", "net=mq exit=5")
	if code != 5 {
		t.Fatalf("exit status %d, want 5\nconsole:\n%s\nstderr:\n%s", code, out, stderr)
	}
	checkLines(t, out, []string{
		"testguest: net mq max_pairs=4 num_queues=9",
		"testguest: net device=1 mac=" + mac + " link=1 mrg=1",
		"testguest: net mq pairs_set=4 ack=ok",
		"testguest: net mq bad_class ack=err",
		"testguest: net mq pairs_set=5 ack=err",
	})
	if !regexpLine(out, `^testguest: net arp ok host=([0-9a-f]{2}:){5}[0-9a-f]{2}$`) {
		t.Errorf("console lacks the ARP reply line\nconsole:\n%s", out)
	}
	checkLines(t, out, []string{"testguest: net ping ok"})
	// Replies come on whichever pair the tap steered them to.
	if !regexpLine(out, `^testguest: net mq tx=3 arp_rx=[0-3] ping_rx=[0-3]$`) {
		t.Errorf("console lacks the queue pair line\nconsole:\n%s", out)
	}
	from, to := ns.tapCounters(t)
	if from < 2 || to < 2 {
		t.Errorf("tap counters: %d frames from the guest, %d to it; want at least 2 each (ARP, ICMP)", from, to)
	}
	t.Logf("tap: %d frames from the guest, %d to it", from, to)
}

// TestVirtioNetMultiQueueErrors checks what a user sees for a queue count
// that can't work: a bad value is a usage error, and a tap that wasn't
// created multi-queue is named with a hint, before the guest runs.
func TestVirtioNetMultiQueueErrors(t *testing.T) {
	ns := newNetNS(t, 3)
	kernel := filepath.Join(shared.testGuest, "testguest.elf")
	for _, q := range []string{"0", "17", "many"} {
		code, _, stderr := runVMMInNS(t, ns, time.Minute, "--kernel", kernel, "--net", "tap="+ns.tap+",queues="+q)
		if code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "queues="+q) {
			t.Errorf("queues=%s: status %d, stderr %q; want 2 and one line naming it", q, code, stderr)
		}
	}
	code, _, stderr := runVMMInNS(t, ns, time.Minute, "--kernel", kernel, "--net", "tap="+ns.tap+",queues=2")
	if code == 0 || !strings.Contains(stderr, ns.tap) || !strings.Contains(stderr, "multi_queue") {
		t.Errorf("queues=2 on a single-queue tap: status %d, stderr %q; want failure naming the tap", code, stderr)
	}
}

// regexpLine reports whether some line of out matches re.
func regexpLine(out, re string) bool {
	r := regexp.MustCompile(re)
	for _, l := range strings.Split(strings.ReplaceAll(out, "\r", ""), "\n") {
		if r.MatchString(l) {
			return true
		}
	}
	return false
}
