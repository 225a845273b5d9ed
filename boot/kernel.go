package boot

import (
	"errors"
	"fmt"

	"github.com/govmm/vmm/memory"
)

// Protocol is the way the guest kernel is entered.
type Protocol int

const (
	// ProtocolLinux64 is a bzImage entered through the Linux 64-bit boot
	// protocol.
	ProtocolLinux64 Protocol = iota + 1
	// ProtocolPVH is an ELF vmlinux entered at its XEN_ELFNOTE_PHYS32_ENTRY
	// in 32-bit protected mode.
	ProtocolPVH
)

func (p Protocol) String() string {
	switch p {
	case ProtocolLinux64:
		return "linux64"
	case ProtocolPVH:
		return "pvh"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// Kernel describes a kernel loaded into guest memory.
type Kernel struct {
	Protocol Protocol
	// Entry is the guest-physical entry point: startup_64 (load address +
	// 0x200) for Linux64, the PVH 32-bit entry for PVH.
	Entry uint64
	// Header is the bzImage setup header; nil for PVH.
	Header *SetupHeader
	// LoadAddr and LoadEnd bound the guest memory the kernel occupies,
	// including (for bzImage) the init_size bytes it needs to decompress
	// and run, so nothing else is placed there.
	LoadAddr, LoadEnd uint64
	// InitrdAddrMax is the highest byte address an initrd may occupy.
	InitrdAddrMax uint64
	// CmdlineMax is the longest command line the kernel accepts, in bytes
	// including the terminating NUL.
	CmdlineMax int
}

// LoadKernel loads a kernel image into guest memory: an ELF vmlinux with a
// PVH entry note, or a bzImage with a 64-bit entry point.
func LoadKernel(mem *memory.Guest, image []byte) (*Kernel, error) {
	if isELF(image) {
		k, err := loadELF(mem, image)
		if err != nil {
			return nil, fmt.Errorf("boot: load kernel: %w", err)
		}
		return k, nil
	}
	h, err := ParseSetupHeader(image)
	if errors.Is(err, errNotBzImage) {
		return nil, fmt.Errorf("boot: load kernel: the file is neither a bzImage nor an ELF vmlinux (%v)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("boot: load kernel: %w", err)
	}
	k, err := loadBzImage(mem, image, h)
	if err != nil {
		return nil, fmt.Errorf("boot: load kernel: %w", err)
	}
	return k, nil
}

// loadBzImage copies the protected-mode part of a parsed bzImage to
// BzImageLoadAddr.
func loadBzImage(mem *memory.Guest, image []byte, h *SetupHeader) (*Kernel, error) {
	pm := image[h.SetupSize():] // ParseSetupHeader checked the length
	k := &Kernel{
		Protocol:      ProtocolLinux64,
		Entry:         BzImageLoadAddr + startup64Offset,
		Header:        h,
		LoadAddr:      BzImageLoadAddr,
		InitrdAddrMax: uint64(h.InitrdAddrMax),
		CmdlineMax:    int(min(uint64(h.CmdlineSize)+1, CmdlineMax)),
	}
	// The kernel decompresses to and runs at its runtime address: the load
	// address rounded up to kernel_alignment when relocatable, but never
	// below pref_address (LOAD_PHYSICAL_ADDR); it needs init_size bytes
	// there (boot.rst: init_size, pref_address, kernel_alignment).
	run := uint64(BzImageLoadAddr)
	if a := uint64(h.KernelAlignment); h.RelocatableKernel != 0 && a != 0 && a&(a-1) == 0 && a <= MMIOHoleStart {
		run = (run + a - 1) &^ (a - 1)
	}
	if h.PrefAddress > run {
		run = h.PrefAddress
	}
	end := uint64(BzImageLoadAddr) + uint64(len(pm))
	if run > MaxMemSize+MMIOHoleEnd {
		return nil, fmt.Errorf("bzImage: pref_address %#x is beyond any guest RAM", h.PrefAddress)
	}
	k.LoadEnd = max(end, run+uint64(h.InitSize))
	if !mem.Contains(k.LoadAddr, k.LoadEnd-k.LoadAddr) {
		return nil, fmt.Errorf("bzImage: kernel needs guest RAM [%#x, %#x) (image %d bytes, init_size %#x at %#x) but it is not all present",
			k.LoadAddr, k.LoadEnd, len(pm), h.InitSize, run)
	}
	if err := mem.WriteAt(pm, BzImageLoadAddr); err != nil {
		return nil, fmt.Errorf("bzImage: copy %d-byte kernel to %#x: %w", len(pm), BzImageLoadAddr, err)
	}
	return k, nil
}

// LoadInitrd copies initrd to the highest page-aligned guest address that
// keeps it within the kernel's InitrdAddrMax and below the end of low RAM
// (the MMIO hole or the end of memory), above the kernel's LoadEnd. It
// returns the address.
func LoadInitrd(mem *memory.Guest, k *Kernel, memSize uint64, initrd []byte) (uint64, error) {
	if k == nil {
		return 0, errors.New("boot: load initrd: no kernel")
	}
	size := uint64(len(initrd))
	if size == 0 {
		return 0, errors.New("boot: load initrd: initrd is empty")
	}
	limit := lowMemEnd(memSize)
	if k.InitrdAddrMax < limit { // InitrdAddrMax+1 may overflow; compare first
		limit = k.InitrdAddrMax + 1
	}
	floor := (k.LoadEnd + pageSize - 1) &^ (pageSize - 1)
	if k.LoadEnd > ^uint64(0)-pageSize {
		floor = ^uint64(0)
	}
	if size > limit || (limit-size)&^(pageSize-1) < floor {
		return 0, fmt.Errorf("boot: load initrd: %d-byte initrd does not fit between the kernel end %#x and the highest allowed address %#x (%d bytes free)",
			size, floor, limit, subOrZero(limit, floor))
	}
	addr := (limit - size) &^ (pageSize - 1)
	if err := mem.WriteAt(initrd, addr); err != nil {
		return 0, fmt.Errorf("boot: load initrd at %#x: %w", addr, err)
	}
	return addr, nil
}

func subOrZero(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}
