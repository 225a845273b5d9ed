// Package vmm assembles a virtual machine from a Config (guest memory, KVM
// vCPUs, the boot image and the device model), runs it with one OS thread
// per vCPU, and tears it down deterministically.
package vmm

import (
	"fmt"
	"io"
	"time"

	"github.com/govmm/vmm/virtio/blk"
)

// Config describes one machine. The command line, the config file and the
// REST API all fill this same struct.
type Config struct {
	Kernel  string // bzImage or ELF vmlinux (PVH)
	Initrd  string // optional
	Cmdline string // kernel command line; DefaultCmdline when empty
	// SystemMap symbolizes guest addresses in diagnostics; found beside
	// Kernel when empty.
	SystemMap string
	MemSize   uint64 // bytes
	CPUs      int

	// Console wiring: guest serial output goes to ConsoleOut, and bytes
	// from ConsoleIn (if any) reach the guest's COM1.
	ConsoleOut io.Writer
	ConsoleIn  io.Reader

	// Drives, Nets, Vsock and Entropy describe virtio devices.
	Drives  []DriveConfig
	Nets    []NetConfig
	Vsock   *VsockConfig
	Entropy *EntropyConfig

	// DebugExit maps the test exit device at port 0xf4.
	DebugExit bool
	// TrackDirtyPages records the pages written since the last snapshot,
	// the guest's in KVM's dirty log and the devices' in guest memory
	// (memory.Options.TrackDirty), so SnapshotDiff can write only those:
	// Firecracker's track_dirty_pages. It costs the guest a write fault
	// on the first write to each page after every snapshot.
	TrackDirtyPages bool
	// SampleRIP, when non-zero, samples each vCPU's instruction pointer at
	// this interval and logs the hottest guest symbols when the VM ends.
	SampleRIP time.Duration
	// HostQuirks overrides detection of the host's KVM flavour (auto when nil).
	HostQuirks *bool
	// OnFirstRun, when set, is called once, on vCPU 0's thread
	// right before it first enters the guest (KVM_RUN): a launcher times
	// its start-up against it. The guest waits while it runs.
	OnFirstRun func()
}

// DriveConfig is one virtio-blk disk backed by a raw image file.
type DriveConfig struct {
	ID       string
	Path     string
	ReadOnly bool
	Root     bool   // the guest's root device (adds root= to the command line)
	PartUUID string // root by partition UUID instead of the whole disk
	// Direct opens the image with O_DIRECT: guest I/O bypasses the host
	// page cache (blk.Config.Direct). The image's file system must
	// support direct I/O (tmpfs does not).
	Direct bool
	// IOEngine is how reads and writes reach the image: IOEngineAsync
	// (io_uring), IOEngineSync (a pool of threads, one system call per
	// request), or, when empty, io_uring where the host allows it.
	IOEngine string
}

// The I/O engines of DriveConfig.IOEngine (Firecracker's io_engine).
const (
	IOEngineSync  = string(blk.EngineSync)
	IOEngineAsync = string(blk.EngineAsync)
)

// NetConfig is one virtio-net interface backed by a tap device.
type NetConfig struct {
	ID  string
	Tap string
	MAC string // the guest's MAC; a stable random one when empty
	// Queues is the number of receive/transmit queue pairs, 1 to
	// MaxNetQueues (0 means 1). More than one opens the tap multi-queue
	// (an existing tap must have been created multi_queue) with one tap
	// queue per pair, and gives the guest VIRTIO_NET_F_MQ and the control
	// queue.
	Queues int
}

// VsockConfig is the virtio-vsock device, bridged to host Unix sockets as
// in Firecracker's hybrid vsock.
type VsockConfig struct {
	ID       string
	GuestCID uint32
	UDSPath  string
}

// EntropyConfig is the virtio-rng device, Firecracker's entropy device:
// the guest reads random bytes from the host's getrandom.
type EntropyConfig struct{}

// DefaultCmdline is the kernel command line used when none is given: the
// serial console, reboot through the keyboard controller (which needs no
// guest driver), and a reboot one second after a panic so a crashed guest
// ends the VMM.
const DefaultCmdline = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

// Validate reports the first problem with c, phrased for a user: a
// missing kernel, or a setting outside the machine's limits (limits.go).
func (c *Config) Validate() error {
	if c.Kernel == "" {
		return fmt.Errorf("no kernel given (use --kernel, or run `make guest` to build the default one)")
	}
	if err := CheckMemSize(c.MemSize); err != nil {
		return err
	}
	if err := CheckCPUs(int64(c.CPUs)); err != nil {
		return err
	}
	if err := CheckDrives(len(c.Drives)); err != nil {
		return err
	}
	if _, err := checkNets(c.Nets); err != nil {
		return err
	}
	if c.Vsock != nil {
		if err := CheckGuestCID(int64(c.Vsock.GuestCID)); err != nil {
			return fmt.Errorf("vsock: %w", err)
		}
	}
	return nil
}
