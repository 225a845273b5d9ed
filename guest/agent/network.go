package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// maxGuestLinks bounds the walk over the guest's interfaces: a VM has a
// handful of NICs.
const maxGuestLinks = 256

// configureNetwork serves ConfigureNetwork in the agent's own network
// namespace, which the containers share.
func (s *session) configureNetwork(_ context.Context, _ *protocol.Conn, req protocol.ConfigureNetworkRequest) (any, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "netlink: %v", err)
	}
	defer h.Close()
	if err := applyNetwork(h, req); err != nil {
		return nil, err
	}
	return protocol.Empty{}, nil
}

// applyNetwork brings up the loopback interface, then configures each NIC
// of a validated req and adds its routes, through h (the namespace h was
// opened in).
func applyNetwork(h *netlink.Handle, req protocol.ConfigureNetworkRequest) error {
	links, err := h.LinkList()
	if err != nil {
		return protocol.Errorf(protocol.CodeInternal, "listing interfaces: %v", err)
	}
	if len(links) > maxGuestLinks {
		return protocol.Errorf(protocol.CodeInternal, "%d interfaces: at most %d", len(links), maxGuestLinks)
	}
	byMAC := func(s string) (netlink.Link, error) {
		mac, err := protocol.ParseMAC(s)
		if err != nil {
			return nil, protocol.Errorf(protocol.CodeInvalidArgument, "%v", err)
		}
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, mac) {
				return l, nil
			}
		}
		return nil, protocol.Errorf(protocol.CodeNotFound, "no interface has MAC %s", mac)
	}
	// Containers in the pod talk to each other over localhost.
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			if err := h.LinkSetUp(l); err != nil {
				return protocol.Errorf(protocol.CodeInternal, "bringing up %s: %v", l.Attrs().Name, err)
			}
		}
	}
	for _, itf := range req.Interfaces {
		l, err := byMAC(itf.MAC)
		if err != nil {
			return err
		}
		name := l.Attrs().Name
		if itf.MTU != 0 {
			if err := h.LinkSetMTU(l, itf.MTU); err != nil {
				return protocol.Errorf(protocol.CodeInternal, "%s: MTU %d: %v", name, itf.MTU, err)
			}
		}
		for _, a := range itf.Addresses {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				return protocol.Errorf(protocol.CodeInvalidArgument, "%s: address %q: %v", name, a, err)
			}
			if err := h.AddrReplace(l, addr); err != nil {
				return protocol.Errorf(protocol.CodeInternal, "%s: adding %s: %v", name, a, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return protocol.Errorf(protocol.CodeInternal, "bringing up %s: %v", name, err)
		}
	}
	for i, rt := range req.Routes {
		l, err := byMAC(rt.MAC)
		if err != nil {
			return err
		}
		r, err := netlinkRoute(l.Attrs().Index, rt)
		if err != nil {
			return protocol.Errorf(protocol.CodeInvalidArgument, "route %d: %v", i, err)
		}
		if err := h.RouteReplace(r); err != nil {
			return protocol.Errorf(protocol.CodeInternal, "route %d (%s via %q dev %s): %v", i, r.Dst, rt.Gateway, l.Attrs().Name, err)
		}
	}
	return nil
}

// netlinkRoute turns a validated NetRoute into a main-table route on the
// link with index link.
func netlinkRoute(link int, rt protocol.NetRoute) (*netlink.Route, error) {
	r := &netlink.Route{LinkIndex: link, Scope: netlink.SCOPE_UNIVERSE}
	var gw netip.Addr
	if rt.Gateway != "" {
		var err error
		if gw, err = netip.ParseAddr(rt.Gateway); err != nil {
			return nil, err
		}
		r.Gw = net.IP(gw.AsSlice())
	}
	if rt.Dest != "" {
		p, err := netip.ParsePrefix(rt.Dest)
		if err != nil {
			return nil, err
		}
		p = p.Masked()
		r.Dst = &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	} else {
		if !gw.IsValid() {
			return nil, errors.New("a default route needs a gateway")
		}
		// The default route of the gateway's family.
		bits := gw.BitLen()
		r.Dst = &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
	}
	if r.Gw == nil {
		// Directly on the link: the kernel resolves the destination
		// with neighbour discovery, as for a CNI plugin's route to its
		// gateway.
		r.Scope = netlink.SCOPE_LINK
	}
	if r.Gw != nil && r.Dst.IP.To4() == nil != (r.Gw.To4() == nil) {
		return nil, fmt.Errorf("destination %s and gateway %s are of different families", r.Dst, r.Gw)
	}
	return r, nil
}
