package vmm

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/boot"
	"github.com/govmm/vmm/virtio/net"
	"github.com/govmm/vmm/virtio/vsock"
)

// Limits on a machine's shape. Each is defined once: here, or by the
// package whose format imposes it (the memory layout, a device), and named
// here for everyone above vmm. Config.Validate checks them all; the
// command line, the API and the shim check single settings early with the
// Check functions below, each wording the error for its own flag or field
// where it must.
const (
	// MinMemSize and MaxMemSize bound Config.MemSize, in bytes: the
	// guest-physical memory layout's limits.
	MinMemSize = boot.MinMemSize
	MaxMemSize = boot.MaxMemSize
	// MaxCPUs bounds Config.CPUs: APIC IDs 0-253; 254 is the IOAPIC's.
	MaxCPUs = 254
	// MaxDrives bounds Config.Drives: the guest names them vda to vdz in
	// PCI slot order, and the root disk is passed to it by that name.
	MaxDrives = 26
	// MaxNetQueues bounds NetConfig.Queues.
	MaxNetQueues = net.MaxQueuePairs
	// MaxTapName bounds the length of NetConfig.Tap: Linux interface
	// names are at most IFNAMSIZ bytes with the terminating NUL.
	MaxTapName = unix.IFNAMSIZ - 1
	// MinGuestCID and MaxGuestCID bound VsockConfig.GuestCID (0-2 are
	// reserved; the CID fits Linux's 32-bit sockaddr_vm, less
	// VMADDR_CID_ANY).
	MinGuestCID = vsock.MinGuestCID
	MaxGuestCID = vsock.MaxGuestCID
)

// CheckMemSize reports why size bytes can't be a machine's memory: below
// MinMemSize, above MaxMemSize, or not a whole number of pages.
func CheckMemSize(size uint64) error {
	return boot.ValidateMemSize(size)
}

// CheckMemMiB is CheckMemSize for a size in MiB, as Firecracker's
// mem_size_mib and the shim give it; it also refuses sizes that are
// negative or would overflow when converted to bytes.
func CheckMemMiB(mib int64) error {
	if mib < 0 || mib > MaxMemSize>>20 {
		return fmt.Errorf("memory size %d MiB is out of range %d-%d MiB", mib, MinMemSize>>20, MaxMemSize>>20)
	}
	return CheckMemSize(uint64(mib) << 20)
}

// CheckCPUs reports why a machine can't have n vCPUs. A host may allow
// fewer than MaxCPUs; New finds that out from KVM.
func CheckCPUs(n int64) error {
	if n < 1 || n > MaxCPUs {
		return fmt.Errorf("%d vCPUs is out of range 1-%d", n, MaxCPUs)
	}
	return nil
}

// CheckDrives reports why a machine can't have n drives.
func CheckDrives(n int) error {
	if n > MaxDrives {
		return fmt.Errorf("%d drives: at most %d are supported", n, MaxDrives)
	}
	return nil
}

// CheckNetQueues reports why an interface can't have n queue pairs (an
// explicit count; NetConfig.Queues 0 stands for 1).
func CheckNetQueues(n int64) error {
	if n < 1 || n > MaxNetQueues {
		return fmt.Errorf("%d queue pairs is outside 1-%d", n, MaxNetQueues)
	}
	return nil
}

// CheckGuestCID reports why cid can't be a guest's vsock address.
func CheckGuestCID(cid int64) error {
	if cid < MinGuestCID || cid > MaxGuestCID {
		return fmt.Errorf("guest CID %d is out of range %d-%d (0-2 are reserved)", cid, MinGuestCID, MaxGuestCID)
	}
	return nil
}
