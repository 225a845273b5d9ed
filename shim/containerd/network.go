package containerd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/guest/agent/protocol"
	"github.com/govmm/vmm/shim"
)

// A pod's VM is networked as Kata's "tcfilter" model does it: the VMM
// runs inside the pod's network namespace, where CNI left an interface
// (eth0) with the pod's address; a tap beside it carries the guest's
// virtio-net, and tc ingress filters redirect every frame arriving on
// one interface out of the other (mirred egress redirect). The guest's
// NIC takes the CNI interface's MAC and, through the agent, its
// addresses, MTU and routes, so to the network the guest is the pod.
//
// The VMM must run in the namespace because a tap is found by name in
// the namespace of whoever opens /dev/net/tun: vmm attaches to the tap by
// name, and vmm cannot be handed a descriptor. Its API and vsock sockets
// are filesystem Unix sockets, which work across network namespaces.

// podTap is the tap's name in the pod's namespace; the namespace is the
// pod's own, so the name cannot collide with another sandbox's.
const podTap = "vmmtap0"

// guestIfaceID is the interface id in vmm's API.
const guestIfaceID = "eth0"

// maxPodLinks bounds the walks over the pod namespace's interfaces and
// routes: CNI leaves a handful.
const (
	maxPodLinks  = 256
	maxPodRoutes = 1024
)

// podNetNS returns the network namespace path of the OCI spec: a CRI
// pod's, made by CNI. A spec without one (a new, empty namespace, or the
// host's) gives the VM no NIC.
func podNetNS(spec *specs.Spec) (string, error) {
	if spec.Linux == nil {
		return "", nil
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace || ns.Path == "" {
			continue
		}
		if !filepath.IsAbs(ns.Path) {
			return "", fmt.Errorf("network namespace path %q is not absolute", ns.Path)
		}
		// The shim's own namespace is the host's: a tap there would take
		// every frame the host's interface receives.
		if same, err := sameFile(ns.Path, "/proc/self/ns/net"); err == nil && same {
			return "", fmt.Errorf("network namespace %s is the host's own, not a pod's", ns.Path)
		}
		return ns.Path, nil
	}
	return "", nil
}

// sameFile reports whether a and b name the same file (for namespaces:
// the same namespace).
func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// podNetwork is a sandbox's network set up on the host.
type podNetwork struct {
	netns string // the pod's network namespace path
	cni   string // the CNI interface, whose MAC the guest takes
	mac   net.HardwareAddr
	// guest is what the agent configures.
	guest protocol.ConfigureNetworkRequest
}

// apiInterface is the VM's NIC in vmm's API: the tap, with the CNI
// interface's MAC.
func (p *podNetwork) apiInterface() (id, tap, mac string) {
	return guestIfaceID, podTap, p.mac.String()
}

// inNetNS runs fn on an OS thread that has joined the network namespace
// at path; whatever fn creates or forks there lives in that namespace.
// fn runs on its own goroutine locked to the thread, which is moved back
// afterwards; if that fails the thread is left locked, so the Go runtime
// ends it rather than run other goroutines in the pod's namespace (and a
// child forked from it gets its parent-death signal).
func inNetNS(path string, fn func() error) error {
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("the thread's network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("joining network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving network namespace %s: %w", path, err))
			return // still locked: the thread ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// netnsLauncher starts the VMM inside a pod's network namespace. It
// relies on the wrapped Launcher starting the process before Launch
// returns, on the calling goroutine (shim.ExecLauncher does).
type netnsLauncher struct {
	Launcher
	netns string
}

// Launch implements Launcher.
func (l netnsLauncher) Launch(ctx context.Context, spec shim.LaunchSpec) (vm shim.VMM, err error) {
	err = inNetNS(l.netns, func() error {
		vm, err = l.Launcher.Launch(ctx, spec)
		return err
	})
	if err != nil && vm != nil {
		vm.Stop(stopGrace)
		return nil, err
	}
	return vm, err
}

// nsHandle opens a netlink handle in the namespace at path.
func nsHandle(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return h, nil
}

// setupPodNetwork makes the tap in the pod's namespace and joins it to the
// CNI interface both ways; on failure nothing it made is left. A tap and
// redirects left by a shim that died before its delete ran are removed
// first; a tap a VMM still holds means another sandbox uses the
// namespace, which is refused.
func setupPodNetwork(path string) (_ *podNetwork, err error) {
	if err := checkTapFree(path); err != nil {
		return nil, err
	}
	if err := teardownPodNetwork(path); err != nil {
		return nil, fmt.Errorf("removing a previous sandbox's network: %w", err)
	}
	h, err := nsHandle(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	cni, err := cniLink(h)
	if err != nil {
		return nil, err
	}
	pn := &podNetwork{netns: path, cni: cni.Attrs().Name, mac: cni.Attrs().HardwareAddr}
	if pn.guest, err = guestNetwork(h, cni); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if terr := teardownPodNetwork(path); terr != nil {
				err = errors.Join(err, terr)
			}
		}
	}()
	if err := inNetNS(path, func() error { return createTap(podTap) }); err != nil {
		return nil, err
	}
	tap, err := h.LinkByName(podTap)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", podTap, err)
	}
	if err := h.LinkSetMTU(tap, cni.Attrs().MTU); err != nil {
		return nil, fmt.Errorf("tap %s: MTU %d: %w", podTap, cni.Attrs().MTU, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return nil, fmt.Errorf("tap %s: up: %w", podTap, err)
	}
	if err := redirect(h, tap, cni); err != nil {
		return nil, err
	}
	if err := redirect(h, cni, tap); err != nil {
		return nil, err
	}
	return pn, nil
}

// podTapIn opens a netlink handle in the namespace at path and finds our
// tap there. Without a tap it returns a nil handle and tap, and no error;
// with one, the caller closes the handle.
func podTapIn(path string) (*netlink.Handle, netlink.Link, error) {
	h, err := nsHandle(path)
	if err != nil {
		return nil, nil, err
	}
	tap, err := h.LinkByName(podTap)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		h.Close()
		return nil, nil, nil
	}
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("tap %s: %w", podTap, err)
	}
	return h, tap, nil
}

// checkTapFree fails if the namespace at path has a tap of ours that a
// process holds: a tap's carrier is on exactly while a descriptor is
// attached to it (drivers/net/tun.c, tun_attach and tun_detach).
func checkTapFree(path string) error {
	h, tap, err := podTapIn(path)
	if err != nil || tap == nil {
		return err
	}
	defer h.Close()
	if tap.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
		return fmt.Errorf("network namespace %s: tap %s is in use by another sandbox's VMM", path, podTap)
	}
	return nil
}

// cniLink finds the interface CNI made: the one that is not loopback and
// has an IPv4 address, or eth0 among several.
func cniLink(h *netlink.Handle) (netlink.Link, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing the pod's interfaces: %w", err)
	}
	if len(links) > maxPodLinks {
		return nil, fmt.Errorf("%d interfaces in the pod: at most %d", len(links), maxPodLinks)
	}
	var found []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.Name == podTap || len(a.HardwareAddr) != 6 {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		if len(addrs) > 0 {
			found = append(found, l)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0:
		return nil, errors.New("the pod's network namespace has no interface with an IPv4 address")
	}
	for _, l := range found {
		if l.Attrs().Name == "eth0" {
			return l, nil
		}
	}
	return nil, fmt.Errorf("the pod's network namespace has %d interfaces with IPv4 addresses and none is eth0", len(found))
}

// guestNetwork is the CNI interface's configuration for the guest: its
// IPv4 addresses and MTU, and the main table's IPv4 routes through it
// other than those the kernel derives from the addresses (link routes
// first, so a gateway is reachable before a route uses it).
func guestNetwork(h *netlink.Handle, cni netlink.Link) (protocol.ConfigureNetworkRequest, error) {
	mac := cni.Attrs().HardwareAddr.String()
	itf := protocol.NetInterface{MAC: mac, MTU: cni.Attrs().MTU}
	addrs, err := h.AddrList(cni, netlink.FAMILY_V4)
	if err != nil {
		return protocol.ConfigureNetworkRequest{}, fmt.Errorf("addresses of %s: %w", cni.Attrs().Name, err)
	}
	for _, a := range addrs {
		itf.Addresses = append(itf.Addresses, a.IPNet.String())
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{LinkIndex: cni.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return protocol.ConfigureNetworkRequest{}, fmt.Errorf("routes of %s: %w", cni.Attrs().Name, err)
	}
	if len(routes) > maxPodRoutes {
		return protocol.ConfigureNetworkRequest{}, fmt.Errorf("%d routes in the pod: at most %d", len(routes), maxPodRoutes)
	}
	var out []protocol.NetRoute
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || (r.Dst == nil && r.Gw == nil) {
			continue
		}
		nr := protocol.NetRoute{MAC: mac}
		if r.Dst != nil && !(r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
			nr.Dest = r.Dst.String()
		}
		if r.Gw != nil {
			nr.Gateway = r.Gw.String()
		}
		out = append(out, nr)
	}
	slices.SortStableFunc(out, func(a, b protocol.NetRoute) int {
		switch {
		case a.Gateway == "" && b.Gateway != "":
			return -1
		case a.Gateway != "" && b.Gateway == "":
			return 1
		}
		return 0
	})
	req := protocol.ConfigureNetworkRequest{Interfaces: []protocol.NetInterface{itf}, Routes: out}
	if err := req.Validate(); err != nil {
		return req, fmt.Errorf("the pod's network: %w", err)
	}
	return req, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// createTap makes a persistent tap in the calling thread's network
// namespace, in the mode vmm's virtio-net attaches with (one queue,
// virtio-net headers).
func createTap(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("creating tap %s: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("creating tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("creating tap %s: TUNSETIFF: %w", name, err)
	}
	// Persistent: it outlives this descriptor until vmm attaches, and
	// teardownPodNetwork deletes it.
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("creating tap %s: TUNSETPERSIST: %w", name, err)
	}
	return nil
}

// ingressParent is the ingress qdisc's handle, ffff: (TC_H_INGRESS's
// major, include/uapi/linux/pkt_sched.h), the parent of its filters.
const ingressParent = 0xffff << 16

// redirect sends every frame arriving on from out of to: an ingress qdisc
// on from with a match-all u32 filter whose mirred action redirects to
// to's egress and steals the frame from from's own stack.
func redirect(h *netlink.Handle, from, to netlink.Link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: ingressParent}}
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: ingressParent, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := h.FilterAdd(f); err != nil {
		// Teardown finds qdiscs by their filter: one without it would
		// stay behind.
		if derr := h.QdiscDel(q); derr != nil {
			err = errors.Join(err, fmt.Errorf("removing the ingress qdisc again: %w", derr))
		}
		return fmt.Errorf("redirect filter %s -> %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// teardownPodNetwork removes what setupPodNetwork made in the namespace at
// path: the ingress qdisc (and with it the filter) of every interface
// that redirects to the tap, then the tap. It needs no record of the
// setup, so the delete subcommand can run it after the shim died, and
// does nothing if the namespace or the tap is gone.
func teardownPodNetwork(path string) error {
	h, tap, err := podTapIn(path)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil || tap == nil {
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("listing the pod's interfaces: %w", err)
	}
	if len(links) > maxPodLinks {
		return fmt.Errorf("%d interfaces in the pod: at most %d", len(links), maxPodLinks)
	}
	var errs []error
	for _, l := range links {
		if l.Attrs().Index == tap.Attrs().Index {
			continue
		}
		ours, err := redirectsTo(h, l, tap.Attrs().Index)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ours {
			continue
		}
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: ingressParent}}
		if err := h.QdiscDel(q); err != nil {
			errs = append(errs, fmt.Errorf("removing the ingress qdisc of %s: %w", l.Attrs().Name, err))
		}
	}
	// The tap's own qdisc and filter go with it. It stays while another
	// interface's filter may still redirect to it: teardown finds those
	// filters by the tap, and one left pointing at a deleted tap would
	// drop the pod's traffic with nothing left to find it by.
	if len(errs) > 0 {
		return errors.Join(append(errs, fmt.Errorf("tap %s kept for a later teardown", podTap))...)
	}
	if err := h.LinkDel(tap); err != nil {
		errs = append(errs, fmt.Errorf("removing tap %s: %w", podTap, err))
	}
	return errors.Join(errs...)
}

// redirectsTo reports whether an ingress filter of l redirects to the
// interface with index to.
func redirectsTo(h *netlink.Handle, l netlink.Link, to int) (bool, error) {
	filters, err := h.FilterList(l, ingressParent)
	if err != nil {
		// No ingress qdisc: nothing of ours.
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("filters of %s: %w", l.Attrs().Name, err)
	}
	for _, f := range filters {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.Ifindex == to {
				return true, nil
			}
		}
	}
	return false, nil
}
