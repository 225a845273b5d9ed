package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/internal/testenv"
)

// testNetNS makes a network namespace for the test, removed when it ends,
// and returns its name and a netlink handle in it.
func testNetNS(t *testing.T) (string, *netlink.Handle) {
	t.Helper()
	testenv.RequireRoot(t, "creating network namespaces")
	testenv.RequireCommand(t, "ip", "iproute2")
	name := fmt.Sprintf("vmmagent-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return name, h
}

func ipIn(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %q: %v\n%s", args, err, out)
	}
}

// TestApplyNetwork configures a veth in a namespace the test made as the
// agent configures the guest's virtio-net NIC: the pod's address, MTU, a
// route to a gateway outside the subnet (as CNI's ptp plugin makes) and
// the default route through it.
func TestApplyNetwork(t *testing.T) {
	ns, h := testNetNS(t)
	const mac = "02:00:0a:58:00:05"
	ipIn(t, ns, "link", "add", "vmmg0", "address", mac, "type", "veth", "peer", "name", "vmmg1")
	ipIn(t, ns, "link", "set", "vmmg1", "up")
	req := protocol.ConfigureNetworkRequest{
		Interfaces: []protocol.NetInterface{{MAC: mac, MTU: 1400, Addresses: []string{"10.88.0.5/24"}}},
		Routes: []protocol.NetRoute{
			{MAC: mac, Dest: "10.99.0.1/32"},
			{MAC: mac, Gateway: "10.99.0.1"},
			{MAC: mac, Dest: "10.1.0.0/16", Gateway: "10.88.0.1"},
		},
	}
	if err := req.Validate(); err != nil {
		t.Fatal(err)
	}
	// Twice: a second request replaces what the first made.
	for range 2 {
		if err := applyNetwork(h, req); err != nil {
			t.Fatal(err)
		}
	}
	l, err := h.LinkByName("vmmg0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("vmmg0: MTU %d, flags %v; want 1400, up", l.Attrs().MTU, l.Attrs().Flags)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.88.0.5/24" {
		t.Errorf("addresses %v, want 10.88.0.5/24", addrs)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("lo is down")
	}
	routes, err := h.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"0.0.0.0/0 via 10.99.0.1": false, "10.1.0.0/16 via 10.88.0.1": false, "10.99.0.1/32 via <nil>": false}
	for _, r := range routes {
		dst := "0.0.0.0/0"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		key := fmt.Sprintf("%s via %v", dst, r.Gw)
		if _, ok := want[key]; ok {
			want[key] = true
		}
	}
	for k, found := range want {
		if !found {
			t.Errorf("route %s missing from %v", k, routes)
		}
	}
}

func TestApplyNetworkUnknownMAC(t *testing.T) {
	_, h := testNetNS(t)
	req := protocol.ConfigureNetworkRequest{Interfaces: []protocol.NetInterface{{MAC: "02:00:00:00:00:77"}}}
	if err := applyNetwork(h, req); !protocol.IsCode(err, protocol.CodeNotFound) {
		t.Errorf("applyNetwork = %v, want %s", err, protocol.CodeNotFound)
	}
}
