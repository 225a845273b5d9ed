package protocol

import (
	"fmt"
	"net"
	"net/netip"
)

// MethodConfigureNetwork gives the guest its pod's addresses and routes
// (ConfigureNetworkRequest). The host sends it once, before any
// container runs.
const MethodConfigureNetwork = "ConfigureNetwork"

// ConfigureNetworkRequest configures the guest's network interfaces, found
// by MAC address, and then its routes. What the request names is added or
// replaced; nothing else is removed.
type ConfigureNetworkRequest struct {
	Interfaces []NetInterface `json:"interfaces"`
	// Routes are applied in order after every interface is up, so a route
	// through a gateway must follow the link route that reaches it.
	Routes []NetRoute `json:"routes,omitempty"`
}

// NetInterface is one guest NIC's configuration.
type NetInterface struct {
	// MAC identifies the NIC (the guest_mac the host gave it).
	MAC string `json:"mac"`
	// MTU is set when nonzero.
	MTU int `json:"mtu,omitempty"`
	// Addresses are IPv4 or IPv6 prefixes, address and length
	// ("10.88.0.5/16").
	Addresses []string `json:"addresses,omitempty"`
}

// NetRoute is one route through the NIC with address MAC.
type NetRoute struct {
	MAC string `json:"mac"`
	// Dest is a prefix ("10.1.0.0/16"); empty is the default route.
	Dest string `json:"dest,omitempty"`
	// Gateway is the next hop; empty for a route on the link itself.
	Gateway string `json:"gateway,omitempty"`
}

// Bounds of a ConfigureNetworkRequest: a pod has one CNI interface with a
// handful of addresses and routes.
const (
	MaxNetInterfaces = 8
	MaxNetAddresses  = 32
	MaxNetRoutes     = 128
	// MinMTU and MaxMTU bound NetInterface.MTU: IPv4's minimum (RFC 791,
	// 68) and the largest an Ethernet-like device takes (IP_MAX_MTU,
	// include/net/ip.h).
	MinMTU = 68
	MaxMTU = 0xffff
)

// Validate checks every field, so the agent acts on a request only if
// all of it is well formed.
func (r ConfigureNetworkRequest) Validate() error {
	if len(r.Interfaces) > MaxNetInterfaces {
		return Errorf(CodeInvalidArgument, "%d interfaces: at most %d", len(r.Interfaces), MaxNetInterfaces)
	}
	if len(r.Routes) > MaxNetRoutes {
		return Errorf(CodeInvalidArgument, "%d routes: at most %d", len(r.Routes), MaxNetRoutes)
	}
	macs := make(map[string]bool, len(r.Interfaces))
	for i, itf := range r.Interfaces {
		mac, err := ParseMAC(itf.MAC)
		if err != nil {
			return Errorf(CodeInvalidArgument, "interface %d: %v", i, err)
		}
		if macs[mac.String()] {
			return Errorf(CodeInvalidArgument, "interface %d: MAC %s given twice", i, mac)
		}
		macs[mac.String()] = true
		if itf.MTU != 0 && (itf.MTU < MinMTU || itf.MTU > MaxMTU) {
			return Errorf(CodeInvalidArgument, "interface %s: MTU %d outside %d..%d", mac, itf.MTU, MinMTU, MaxMTU)
		}
		if len(itf.Addresses) > MaxNetAddresses {
			return Errorf(CodeInvalidArgument, "interface %s: %d addresses: at most %d", mac, len(itf.Addresses), MaxNetAddresses)
		}
		for _, a := range itf.Addresses {
			if _, err := netip.ParsePrefix(a); err != nil {
				return Errorf(CodeInvalidArgument, "interface %s: address: %v", mac, err)
			}
		}
	}
	for i, rt := range r.Routes {
		mac, err := ParseMAC(rt.MAC)
		if err != nil {
			return Errorf(CodeInvalidArgument, "route %d: %v", i, err)
		}
		if !macs[mac.String()] {
			return Errorf(CodeInvalidArgument, "route %d: no interface with MAC %s in the request", i, mac)
		}
		if rt.Dest == "" && rt.Gateway == "" {
			return Errorf(CodeInvalidArgument, "route %d: a default route needs a gateway", i)
		}
		var dest netip.Prefix
		if rt.Dest != "" {
			if dest, err = netip.ParsePrefix(rt.Dest); err != nil {
				return Errorf(CodeInvalidArgument, "route %d: destination: %v", i, err)
			}
		}
		if rt.Gateway != "" {
			gw, err := netip.ParseAddr(rt.Gateway)
			if err != nil {
				return Errorf(CodeInvalidArgument, "route %d: gateway: %v", i, err)
			}
			if gw.Zone() != "" {
				return Errorf(CodeInvalidArgument, "route %d: gateway %s has a zone", i, rt.Gateway)
			}
			if dest.IsValid() && dest.Addr().Is4() != gw.Is4() {
				return Errorf(CodeInvalidArgument, "route %d: destination %s and gateway %s are of different families", i, rt.Dest, rt.Gateway)
			}
		}
	}
	return nil
}

// ParseMAC parses a 48-bit Ethernet address ("02:00:00:00:00:01").
func ParseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("MAC %q: %w", s, err)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("MAC %q: want a 48-bit Ethernet address", s)
	}
	return mac, nil
}
