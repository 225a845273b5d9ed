package vsock

import (
	"fmt"
	"log/slog"
	"time"
)

// StateVersion is the version of State this code writes and restores.
const StateVersion = 1

// State is the device as plain data, to save and rebuild it (a snapshot).
// Connections are not in it: they don't survive a snapshot, as with
// Firecracker. Suspend drops them and tells the guest with
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET before the state is taken, so the
// event is in the saved guest memory and a restored guest forgets them
// too. UDSPath is the host's side: a restore may change it (Firecracker's
// vsock_override).
type State struct {
	Version        int
	ID             string
	GuestCID       uint64
	UDSPath        string
	QueueSize      uint16
	ConnectTimeout time.Duration
}

// State returns the device's state.
func (d *Device) State() State {
	return State{
		Version: StateVersion, ID: d.cfg.ID, GuestCID: d.cfg.GuestCID, UDSPath: d.cfg.UDSPath,
		QueueSize: d.cfg.QueueSize, ConnectTimeout: d.cfg.ConnectTimeout,
	}
}

// Restore makes the device st describes, listening on st.UDSPath, as New
// does.
func Restore(st State, log *slog.Logger) (*Device, error) {
	if st.Version != StateVersion {
		return nil, fmt.Errorf("virtio-vsock %s: restore: state version %d, this build restores %d", st.ID, st.Version, StateVersion)
	}
	d, err := New(Config{ID: st.ID, GuestCID: st.GuestCID, UDSPath: st.UDSPath, QueueSize: st.QueueSize, ConnectTimeout: st.ConnectTimeout}, log)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return d, nil
}

// Suspend implements virtio.Suspender: the Reset that pauses the device
// closes every connection, so the guest is told first (TransportReset).
// Without an event buffer from the driver it can't be told; its
// connections then end with RST when it next uses them.
func (d *Device) Suspend() {
	if d.active() == nil {
		return
	}
	if err := d.TransportReset(); err != nil {
		d.log.Warn("virtio-vsock: the guest was not told its connections are gone", "err", err)
	}
}
