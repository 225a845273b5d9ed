// Package debugexit is a test-only device: a guest write to its port ends
// the VMM with the written value as the exit status, so freestanding test
// guests can report a result without a console parser. The VMM maps it only
// when asked (--debug-exit).
package debugexit

// DefaultPort is the conventional I/O port (the one QEMU's isa-debug-exit
// uses by default), 4 bytes wide.
const (
	DefaultPort = 0xf4
	Size        = 4
)

// Device calls onExit with the low byte of any value written to it.
type Device struct {
	onExit func(status int)
}

// New returns the device.
func New(onExit func(status int)) *Device { return &Device{onExit: onExit} }

// Read implements devices.Device.
func (d *Device) Read(offset uint64, data []byte) { clear(data) }

// Write implements devices.Device.
func (d *Device) Write(offset uint64, data []byte) {
	if len(data) == 0 || offset != 0 || d.onExit == nil {
		return
	}
	d.onExit(int(data[0]))
}
