package net

import (
	"encoding/binary"
	"fmt"
	stdnet "net"
	"sync"

	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio"
)

// The control virtqueue (§5.1.6.5). Each chain is struct virtio_net_ctrl:
// u8 class, u8 command and the command-specific data, all device-readable
// (laid out over any number of descriptors, §2.6.4), then u8 ack, the one
// device-writable byte.
//
// A chain without that shape (fewer than 2 readable bytes, a writable
// part that is not exactly the ack byte, a buffer outside guest RAM) is
// the driver breaking the protocol: the device fails (DEVICE_NEEDS_RESET),
// as for any hostile chain. A well-formed chain carrying a command the
// device doesn't know, one whose feature wasn't negotiated, or data of the
// wrong size or value, gets VIRTIO_NET_ERR.
const (
	ctrlOK  = 0 // VIRTIO_NET_OK
	ctrlErr = 1 // VIRTIO_NET_ERR

	ctrlHdrLen = 2 // class, command

	ctrlClassRx          = 0 // VIRTIO_NET_CTRL_RX
	ctrlRxPromisc        = 0 // VIRTIO_NET_CTRL_RX_PROMISC
	ctrlRxAllMulti       = 1 // VIRTIO_NET_CTRL_RX_ALLMULTI
	ctrlClassMAC         = 1 // VIRTIO_NET_CTRL_MAC
	ctrlMACTableSet      = 0 // VIRTIO_NET_CTRL_MAC_TABLE_SET
	ctrlMACAddrSet       = 1 // VIRTIO_NET_CTRL_MAC_ADDR_SET
	ctrlClassMQ          = 4 // VIRTIO_NET_CTRL_MQ
	ctrlMQPairsSet       = 0 // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
	ctrlClassOffloads    = 5 // VIRTIO_NET_CTRL_GUEST_OFFLOADS
	ctrlGuestOffloadsSet = 0 // VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET

	// maxCtrlData bounds the command-specific data the device reads (a
	// MAC table of about 10,000 addresses); longer commands get
	// VIRTIO_NET_ERR unread.
	maxCtrlData = 64 << 10
)

// guestOffloadFeatures are the receive offloads VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET
// turns on and off, named by their feature bits (§5.1.6.5.6.1).
const guestOffloadFeatures = FeatureGuestCsum | FeatureGuestTSO4 | FeatureGuestTSO6 | FeatureGuestECN | FeatureGuestUFO

// ctrlRequest is one control command read from the guest.
type ctrlRequest struct {
	head       uint16
	class, cmd byte
	data       []byte // command-specific data
	tooLong    bool   // more than maxCtrlData bytes of data: not read
	ack        uint64 // guest address of the ack byte
}

// ctrlState is what the control commands set. The tap delivers every
// frame the host sends it, so the receive mode and the MAC filter tables
// are recorded and acknowledged but filter nothing; §5.1.6.5.2 makes
// filtering a SHOULD, and the guest's stack filters anyway.
type ctrlState struct {
	mu                sync.Mutex
	promisc, allmulti bool
	uc, mc            []stdnet.HardwareAddr
	offloads          uint64 // guest receive offloads in effect
}

// reset is the state after a device reset: promiscuous (what the device
// does), empty tables, every negotiated offload on (§5.1.6.5.6.1).
func (s *ctrlState) reset(features uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.promisc, s.allmulti = true, false
	s.uc, s.mc = nil, nil
	s.offloads = features & guestOffloadFeatures
}

// readCtrl checks the shape of a control chain and copies its command out
// of guest memory. An error (wrapping errMalformed) means the driver broke
// the protocol.
func readCtrl(mem *memory.Guest, c virtio.Chain) (ctrlRequest, error) {
	r := ctrlRequest{head: c.Head}
	if c.ReadLen < ctrlHdrLen || c.WriteLen != 1 {
		return r, fmt.Errorf("%w: control chain head %d has %d readable and %d writable bytes, want at least %d and exactly 1 (the ack)",
			errMalformed, c.Head, c.ReadLen, c.WriteLen, ctrlHdrLen)
	}
	// ParseChain puts writable buffers last and rejects empty ones, so
	// the ack is the last buffer, one byte long.
	r.ack = c.Buffers[len(c.Buffers)-1].Addr
	n := c.ReadLen
	if n > ctrlHdrLen+maxCtrlData {
		n, r.tooLong = ctrlHdrLen, true
	}
	b := make([]byte, n)
	if _, err := c.CopyOut(mem, b, 0); err != nil {
		return r, fmt.Errorf("%w: control chain head %d: %v", errMalformed, c.Head, err)
	}
	r.class, r.cmd, r.data = b[0], b[1], b[ctrlHdrLen:]
	return r, nil
}

// ctrlChain executes the command in c and writes its ack; an error means
// the chain is malformed and the device must fail.
func (n *Net) ctrlChain(rs *runState, mem *memory.Guest, c virtio.Chain) error {
	req, err := readCtrl(mem, c)
	if err != nil {
		return err
	}
	ack, why := n.control(rs, req)
	if ack == ctrlOK {
		rs.log.Debug("virtio-net: control command", "id", n.cfg.ID, "class", req.class, "command", req.cmd)
	} else {
		rs.log.Debug("virtio-net: control command refused", "id", n.cfg.ID, "class", req.class, "command", req.cmd, "reason", why)
	}
	if err := mem.WriteAt([]byte{ack}, req.ack); err != nil {
		return fmt.Errorf("%w: control chain head %d: ack: %v", errMalformed, c.Head, err)
	}
	return nil
}

// control executes one command: VIRTIO_NET_OK, or VIRTIO_NET_ERR and why.
func (n *Net) control(rs *runState, req ctrlRequest) (byte, string) {
	if req.tooLong {
		return ctrlErr, fmt.Sprintf("more than %d bytes of command data", maxCtrlData)
	}
	f, d := rs.features, req.data
	need := func(feature uint64, name string) string {
		if f&feature == 0 {
			return name + " was not negotiated"
		}
		return ""
	}
	type cmd struct{ class, cmd byte }
	switch (cmd{req.class, req.cmd}) {
	case cmd{ctrlClassRx, ctrlRxPromisc}, cmd{ctrlClassRx, ctrlRxAllMulti}:
		// §5.1.6.5.1: one byte, 0 (off) or 1 (on).
		if why := need(FeatureCtrlRx, "VIRTIO_NET_F_CTRL_RX"); why != "" {
			return ctrlErr, why
		}
		if len(d) != 1 || d[0] > 1 {
			return ctrlErr, fmt.Sprintf("receive mode data %x, want one byte 0 or 1", d)
		}
		rs.ctrl.mu.Lock()
		if req.cmd == ctrlRxPromisc {
			rs.ctrl.promisc = d[0] == 1
		} else {
			rs.ctrl.allmulti = d[0] == 1
		}
		rs.ctrl.mu.Unlock()
		return ctrlOK, ""

	case cmd{ctrlClassMAC, ctrlMACTableSet}:
		// §5.1.6.5.2: two struct virtio_net_ctrl_mac (le32 entries, then
		// the addresses), unicast then multicast, and nothing after.
		if why := need(FeatureCtrlRx, "VIRTIO_NET_F_CTRL_RX"); why != "" {
			return ctrlErr, why
		}
		uc, rest, ok := macTable(d)
		if !ok {
			return ctrlErr, "unicast MAC table overruns the command"
		}
		mc, rest, ok := macTable(rest)
		if !ok || len(rest) != 0 {
			return ctrlErr, "multicast MAC table does not end the command"
		}
		rs.ctrl.mu.Lock()
		rs.ctrl.uc, rs.ctrl.mc = uc, mc
		rs.ctrl.mu.Unlock()
		return ctrlOK, ""

	case cmd{ctrlClassMAC, ctrlMACAddrSet}:
		// §5.1.6.5.2: the 6-byte address, reflected in the configuration
		// space before the command is used.
		if why := need(FeatureCtrlMACAddr, "VIRTIO_NET_F_CTRL_MAC_ADDR"); why != "" {
			return ctrlErr, why
		}
		if len(d) != 6 || d[0]&1 != 0 || allZero(d) {
			return ctrlErr, fmt.Sprintf("%x is not a unicast MAC address", d)
		}
		n.setMAC(d, true)
		return ctrlOK, ""

	case cmd{ctrlClassMQ, ctrlMQPairsSet}:
		// §5.1.6.5.5: le16 virtqueue_pairs, 1..max_virtqueue_pairs.
		if why := need(FeatureMQ, "VIRTIO_NET_F_MQ"); why != "" {
			return ctrlErr, why
		}
		if len(d) != 2 {
			return ctrlErr, fmt.Sprintf("%d bytes of virtqueue_pairs, want 2", len(d))
		}
		k := int(binary.LittleEndian.Uint16(d))
		if k < 1 || k > len(n.pairs) {
			return ctrlErr, fmt.Sprintf("%d queue pairs is outside 1..%d", k, len(n.pairs))
		}
		// §5.1.6.5.5: the driver configures the queues before it turns
		// them on.
		for i := range k {
			if rs.a.Queues[rxQueueOf(i)] == nil || rs.a.Queues[txQueueOf(i)] == nil {
				return ctrlErr, fmt.Sprintf("queue pair %d was not enabled", i)
			}
		}
		prev := n.ActivePairs()
		if err := n.setPairs(k); err != nil {
			if err2 := n.setPairs(prev); err2 != nil {
				rs.log.Warn("virtio-net: restoring queue pairs", "id", n.cfg.ID, "pairs", prev, "err", err2)
			}
			return ctrlErr, err.Error()
		}
		return ctrlOK, ""

	case cmd{ctrlClassOffloads, ctrlGuestOffloadsSet}:
		// §5.1.6.5.6.1: le64 offloads, each a negotiated GUEST_* bit.
		if why := need(FeatureCtrlGuestOffloads, "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS"); why != "" {
			return ctrlErr, why
		}
		if len(d) != 8 {
			return ctrlErr, fmt.Sprintf("%d bytes of offloads, want 8", len(d))
		}
		off := binary.LittleEndian.Uint64(d)
		if extra := off &^ (f & guestOffloadFeatures); extra != 0 {
			return ctrlErr, fmt.Sprintf("offloads %#x were not negotiated", extra)
		}
		if err := n.pairs[0].be.SetOffload(tunOffloads(off)); err != nil {
			return ctrlErr, err.Error()
		}
		rs.ctrl.mu.Lock()
		rs.ctrl.offloads = off
		rs.ctrl.mu.Unlock()
		return ctrlOK, ""
	}
	return ctrlErr, "unknown class or command"
}

// macTable splits one struct virtio_net_ctrl_mac off the front of b.
func macTable(b []byte) (macs []stdnet.HardwareAddr, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := uint64(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if n*6 > uint64(len(b)) {
		return nil, nil, false
	}
	for i := range n {
		macs = append(macs, stdnet.HardwareAddr(append([]byte(nil), b[6*i:6*i+6]...)))
	}
	return macs, b[6*n:], true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
