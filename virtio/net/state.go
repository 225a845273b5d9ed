package net

import (
	"fmt"
	stdnet "net"
)

// StateVersion is the version of State this code writes and restores.
const StateVersion = 1

// State is an interface as plain data, to save and rebuild it (a
// snapshot). The backends (tap queues) are not in it: Restore takes new
// ones, QueuePairs of them. The queues themselves are the transport's
// state (virtio.PCIState).
type State struct {
	Version int
	ID      string
	// MAC is the configured address, which a device reset returns to.
	MAC        string
	QueueSize  uint16
	QueuePairs int // max_virtqueue_pairs
	// Run is what the driver set while the device ran; nil when it was
	// not running.
	Run *RunState `json:",omitempty"`
}

// RunState is what the driver sets through the control queue (§5.1.6.5),
// which a device reset forgets.
type RunState struct {
	ActivePairs int    // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
	MAC         string // VIRTIO_NET_CTRL_MAC_ADDR_SET: the address in the configuration space
	// VIRTIO_NET_CTRL_RX and VIRTIO_NET_CTRL_MAC_TABLE_SET.
	Promisc, AllMulti          bool
	UnicastMACs, MulticastMACs []string `json:",omitempty"`
	// Offloads are the guest receive offloads in effect, as feature bits
	// (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET).
	Offloads uint64
}

// State returns the interface's state. Taken from a running device, Run
// is what the control queue had set by then; taken while the transport
// has the device paused, it is what the device kept to resume with.
func (n *Net) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return State{
		Version: StateVersion, ID: n.cfg.ID, MAC: n.cfg.MAC.String(), QueueSize: n.cfg.QueueSize,
		QueuePairs: len(n.pairs), Run: n.runStateLocked(),
	}
}

// runStateLocked returns the run-time state now: the running device's, or
// the one kept for resuming, or nil.
func (n *Net) runStateLocked() *RunState {
	rs := n.run
	if rs == nil {
		if n.resume == nil {
			return nil
		}
		r := *n.resume
		return &r
	}
	r := &RunState{ActivePairs: n.ActivePairs()}
	rs.ctrl.mu.Lock()
	r.Promisc, r.AllMulti, r.Offloads = rs.ctrl.promisc, rs.ctrl.allmulti, rs.ctrl.offloads
	for _, m := range rs.ctrl.uc {
		r.UnicastMACs = append(r.UnicastMACs, m.String())
	}
	for _, m := range rs.ctrl.mc {
		r.MulticastMACs = append(r.MulticastMACs, m.String())
	}
	rs.ctrl.mu.Unlock()
	n.cfgMu.Lock()
	r.MAC = stdnet.HardwareAddr(n.config[cfgMAC : cfgMAC+6]).String()
	n.cfgMu.Unlock()
	return r
}

// Suspend implements virtio.Suspender: the control queue's settings
// survive the Reset that pauses the device, for the Activate that resumes
// it. They are taken in that Reset, once the loops stopped, not now: the
// control queue may still complete a command the driver posted before its
// vCPUs stopped, and the driver has been told it took effect.
func (n *Net) Suspend() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.run != nil {
		n.suspending = true
	}
}

// Restore makes the interface st describes, sending and receiving through
// backends as New does (QueuePairs of them). Its control queue settings
// come back when the transport restores the device.
func Restore(st State, backends ...Backend) (*Net, error) {
	if st.Version != StateVersion {
		return nil, fmt.Errorf("virtio-net %s: restore: state version %d, this build restores %d", st.ID, st.Version, StateVersion)
	}
	if len(backends) != st.QueuePairs {
		return nil, fmt.Errorf("virtio-net %s: restore: %d backends for %d queue pairs", st.ID, len(backends), st.QueuePairs)
	}
	mac, err := stdnet.ParseMAC(st.MAC)
	if err != nil {
		return nil, fmt.Errorf("virtio-net %s: restore: %w", st.ID, err)
	}
	n, err := New(Config{ID: st.ID, MAC: mac, QueueSize: st.QueueSize}, backends...)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if st.Run != nil {
		r := *st.Run
		n.resume = &r
	}
	return n, nil
}

// takeUpLocked applies the run-time state kept by Suspend or Restore when
// Activate resumes the device, before its loops start; a fresh Activate
// drops it. Settings the negotiated features or the queues can't carry
// are refused.
func (n *Net) takeUpLocked(rs *runState) error {
	r := n.resume
	n.resume = nil
	if r == nil || !rs.a.Resumed {
		return nil
	}
	wrap := func(err error) error { return fmt.Errorf("virtio-net %s: resume: %w", n.cfg.ID, err) }
	mac, err := parseUnicast(r.MAC)
	if err != nil {
		return wrap(err)
	}
	if r.ActivePairs < 1 || r.ActivePairs > rs.pairs {
		return wrap(fmt.Errorf("%d active queue pairs, the driver's layout has %d", r.ActivePairs, rs.pairs))
	}
	for i := range r.ActivePairs {
		if rs.a.Queues[rxQueueOf(i)] == nil || rs.a.Queues[txQueueOf(i)] == nil {
			return wrap(fmt.Errorf("queue pair %d is active but not enabled", i))
		}
	}
	offered := rs.features & guestOffloadFeatures
	if extra := r.Offloads &^ offered; extra != 0 {
		return wrap(fmt.Errorf("offloads %#x were not negotiated", extra))
	}
	var uc, mc []stdnet.HardwareAddr
	for _, tbl := range []struct {
		in  []string
		out *[]stdnet.HardwareAddr
	}{{r.UnicastMACs, &uc}, {r.MulticastMACs, &mc}} {
		for _, s := range tbl.in {
			m, err := stdnet.ParseMAC(s)
			if err != nil || len(m) != 6 {
				return wrap(fmt.Errorf("MAC filter entry %q", s))
			}
			*tbl.out = append(*tbl.out, m)
		}
	}
	if r.Offloads != offered {
		if err := n.pairs[0].be.SetOffload(tunOffloads(r.Offloads)); err != nil {
			return wrap(err)
		}
	}
	if err := n.setPairs(r.ActivePairs); err != nil {
		return wrap(err)
	}
	n.setMAC(mac, false)
	rs.ctrl.mu.Lock()
	rs.ctrl.promisc, rs.ctrl.allmulti, rs.ctrl.offloads = r.Promisc, r.AllMulti, r.Offloads
	rs.ctrl.uc, rs.ctrl.mc = uc, mc
	rs.ctrl.mu.Unlock()
	return nil
}

// parseUnicast parses a unicast 6-byte MAC address.
func parseUnicast(s string) (stdnet.HardwareAddr, error) {
	m, err := stdnet.ParseMAC(s)
	if err != nil {
		return nil, err
	}
	if len(m) != 6 || m[0]&1 != 0 {
		return nil, fmt.Errorf("MAC %s is not a unicast Ethernet address", s)
	}
	return m, nil
}
