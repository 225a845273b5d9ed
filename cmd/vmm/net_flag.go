package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/govmm/vmm/vmm"
)

// netFlag is the repeatable --net tap=NAME[,mac=MAC][,id=NAME][,queues=N]
// option; each use appends one virtio-net interface.
type netFlag struct{ nets *[]vmm.NetConfig }

func (f netFlag) String() string {
	if f.nets == nil {
		return ""
	}
	var s []string
	for _, n := range *f.nets {
		s = append(s, n.Tap)
	}
	return strings.Join(s, " ")
}

// Set parses one --net value.
func (f netFlag) Set(v string) error {
	n, err := parseNet(v)
	if err != nil {
		return err
	}
	for _, o := range *f.nets {
		if o.Tap == n.Tap {
			return fmt.Errorf("net %q: tap %s used twice", v, n.Tap)
		}
		if n.ID != "" && o.ID == n.ID {
			return fmt.Errorf("net id %q used twice", n.ID)
		}
	}
	*f.nets = append(*f.nets, n)
	return nil
}

// parseNet parses tap=NAME[,mac=MAC][,id=NAME][,queues=N]; a bare NAME
// is accepted as the tap. The MAC must be a unicast Ethernet address;
// without one the guest gets a stable locally administered address derived
// from the id and tap name. queues is the number of queue pairs, 1 (the
// default) to vmm.MaxNetQueues.
func parseNet(v string) (vmm.NetConfig, error) {
	var n vmm.NetConfig
	for i, part := range strings.Split(v, ",") {
		k, val, hasVal := strings.Cut(part, "=")
		switch {
		case k == "tap" && hasVal:
			n.Tap = val
		case k == "mac" && hasVal:
			n.MAC = val
		case k == "id" && hasVal:
			n.ID = val
		case k == "queues" && hasVal:
			q, err := strconv.Atoi(val)
			if err != nil || vmm.CheckNetQueues(int64(q)) != nil {
				return n, fmt.Errorf("net %q: queues=%s: want a number of queue pairs from 1 to %d", v, val, vmm.MaxNetQueues)
			}
			n.Queues = q
		case i == 0 && !hasVal && part != "":
			n.Tap = part
		default:
			return n, fmt.Errorf("net %q: unknown option %q (want tap=NAME[,mac=MAC][,id=NAME][,queues=N])", v, part)
		}
	}
	if n.Tap == "" {
		return n, fmt.Errorf("net %q: no tap=NAME", v)
	}
	if len(n.Tap) > vmm.MaxTapName {
		return n, fmt.Errorf("net %q: tap name longer than %d bytes (IFNAMSIZ)", v, vmm.MaxTapName)
	}
	if n.MAC != "" {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 {
			return n, fmt.Errorf("net %q: %q is not an Ethernet MAC address", v, n.MAC)
		}
		if mac[0]&1 != 0 {
			return n, fmt.Errorf("net %q: %s is a multicast address", v, n.MAC)
		}
		n.MAC = mac.String()
	}
	return n, nil
}
