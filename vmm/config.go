// Package vmm assembles a virtual machine from a Config (guest memory, KVM
// vCPUs, the boot image and the device model), runs it with one OS thread
// per vCPU, and tears it down deterministically.
package vmm

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/govmm/vmm/virtio/blk"
	"github.com/govmm/vmm/virtio/net"
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
	// SampleRIP, when non-zero, samples each vCPU's instruction pointer at
	// this interval and logs the hottest guest symbols when the VM ends.
	SampleRIP time.Duration
	// HostQuirks overrides detection of the host's KVM flavour (auto when nil).
	HostQuirks *bool
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

// MaxNetQueues bounds NetConfig.Queues.
const MaxNetQueues = net.MaxQueuePairs

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

// Limits on the machine's shape.
const (
	MinMemSize = 16 << 20
	MaxCPUs    = 254 // APIC IDs 0-253; 254 is the IOAPIC's
)

// Validate reports the first problem with c, phrased for a user.
func (c *Config) Validate() error {
	if c.Kernel == "" {
		return fmt.Errorf("no kernel given (use --kernel, or run `make guest` to build the default one)")
	}
	if c.MemSize < MinMemSize {
		return fmt.Errorf("memory size %d bytes is below the minimum of %d MiB", c.MemSize, MinMemSize>>20)
	}
	if c.MemSize%(4<<10) != 0 {
		return fmt.Errorf("memory size %d bytes is not a multiple of 4 KiB", c.MemSize)
	}
	if c.CPUs < 1 || c.CPUs > MaxCPUs {
		return fmt.Errorf("vCPU count %d out of range 1-%d", c.CPUs, MaxCPUs)
	}
	return nil
}

// ParseSize parses a memory size such as 128M, 1G, 512MiB, 2GB or a plain
// number of MiB ("256"), as Firecracker's mem_size_mib and QEMU's -m do.
func ParseSize(s string) (uint64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q does not start with a number", orig)
	}
	n, err := strconv.ParseUint(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", orig, err)
	}
	var shift uint
	switch strings.ToLower(s[i:]) {
	case "", "m", "mb", "mib":
		shift = 20
	case "k", "kb", "kib":
		shift = 10
	case "g", "gb", "gib":
		shift = 30
	case "t", "tb", "tib":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q: unknown unit %q (use K, M, G or T)", orig, s[i:])
	}
	if n > (^uint64(0))>>shift {
		return 0, fmt.Errorf("size %q is too large", orig)
	}
	return n << shift, nil
}
