package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/govmm/vmm/vmm"
)

// vsockFlag is the --vsock cid=N,uds=PATH[,id=NAME] option: the
// virtio-vsock device, bridged to host Unix sockets as in Firecracker's
// hybrid vsock.
type vsockFlag struct{ vsock **vmm.VsockConfig }

func (f vsockFlag) String() string {
	if f.vsock == nil || *f.vsock == nil {
		return ""
	}
	return fmt.Sprintf("cid=%d,uds=%s", (*f.vsock).GuestCID, (*f.vsock).UDSPath)
}

// Set parses the one --vsock value.
func (f vsockFlag) Set(v string) error {
	if *f.vsock != nil {
		return fmt.Errorf("vsock given twice: a VM has one vsock device")
	}
	c, err := parseVsock(v)
	if err != nil {
		return err
	}
	*f.vsock = &c
	return nil
}

// parseVsock parses cid=N,uds=PATH[,id=NAME].
func parseVsock(v string) (vmm.VsockConfig, error) {
	var c vmm.VsockConfig
	hasCID := false
	for _, part := range strings.Split(v, ",") {
		k, val, hasVal := strings.Cut(part, "=")
		switch {
		case k == "cid" && hasVal:
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil || vmm.CheckGuestCID(int64(n)) != nil {
				return c, fmt.Errorf("vsock %q: cid %q is not a guest CID (%d to %d)", v, val, vmm.MinGuestCID, vmm.MaxGuestCID)
			}
			c.GuestCID, hasCID = uint32(n), true
		case k == "uds" && hasVal && val != "":
			c.UDSPath = val
		case k == "id" && hasVal:
			c.ID = val
		default:
			return c, fmt.Errorf("vsock %q: unknown option %q (want cid=N,uds=PATH[,id=NAME])", v, part)
		}
	}
	if !hasCID || c.UDSPath == "" {
		return c, fmt.Errorf("vsock %q: want cid=N,uds=PATH", v)
	}
	return c, nil
}
