// Package boot loads a Linux kernel into guest memory and prepares the boot
// CPU of an x86-64 guest.
//
// Two entry protocols are supported:
//
//   - ProtocolLinux64: a bzImage entered through the 64-bit boot protocol
//     (Linux Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"). The
//     VMM plays the boot loader: it copies the protected-mode kernel to
//     BzImageLoadAddr, fills in the zero page (struct boot_params,
//     Documentation/arch/x86/zero-page.rst), builds identity-mapped page
//     tables and a GDT, and starts the CPU in long mode at startup_64.
//   - ProtocolPVH: an uncompressed ELF vmlinux carrying the
//     XEN_ELFNOTE_PHYS32_ENTRY note (Xen public/elfnote.h and
//     public/arch-x86/hvm/start_info.h, Xen docs/misc/pvh.pandoc). The CPU
//     starts in flat 32-bit protected mode with paging off and EBX pointing
//     at a struct hvm_start_info.
//
// The package also writes the E820/PVH memory map and a minimal set of ACPI
// tables (RSDP, XSDT, FADT, DSDT, MADT, and MCFG with PCI) for a
// hardware-reduced ACPI platform.
//
// All guest memory access goes through *memory.Guest, which bounds-checks
// every access, and every value taken from a kernel image is validated before
// use, so malformed images produce errors, never panics.
//
// # Guest-physical layout
//
//	0x0000_0500  GDT (GDTAddr)
//	0x0000_6000  hvm_start_info, PVH module list and memory map (PVH only)
//	0x0000_7000  zero page / struct boot_params (Linux64 only)
//	0x0000_8ff0  initial stack pointer (BootStackAddr, grows down)
//	0x0000_9000  PML4, PDPT, then four page directories up to 0xEFFF
//	0x0002_0000  kernel command line (up to CmdlineMax bytes)
//	0x0009_fc00  EBDA (reserved)
//	0x000e_0000  ACPI tables (RSDP first) up to 0xFFFFF (reserved)
//	0x0010_0000  kernel (bzImage protected-mode part or ELF segments)
//	...          initrd, as high as allowed in low RAM
//	0xc000_0000  MMIO hole up to 4 GiB (I/O APIC, local APIC, devices)
//	0x1_0000_0000 RAM above 3 GiB is relocated here
//	HighMMIOStart  MMIO above RAM (PCI 64-bit BARs), 1 GiB aligned
package boot

import (
	"fmt"
	"sort"

	"github.com/govmm/vmm/memory"
)

// Guest-physical addresses of the structures this package writes.
const (
	// GDTAddr is where SetupCPU writes the boot GDT.
	GDTAddr = 0x500
	// PVHStartInfoAddr holds struct hvm_start_info followed by the module
	// list and memory map, all within [0x6000, 0x7000).
	PVHStartInfoAddr = 0x6000
	// pvhAreaEnd bounds the PVH start-info area.
	pvhAreaEnd = 0x7000
	// ZeroPageAddr holds struct boot_params (4 KiB).
	ZeroPageAddr = 0x7000
	// BootStackAddr is the initial RSP: top of the free page 0x8000-0x8FFF
	// between the zero page and the page tables, 16-byte aligned. Neither
	// boot protocol requires a stack, but a valid one costs nothing.
	BootStackAddr = 0x8FF0
	// PML4Addr, PDPTAddr and PDAddr hold the identity-mapping page tables
	// (PDAddr is the first of four page directories, 0xB000-0xEFFF).
	PML4Addr = 0x9000
	PDPTAddr = 0xA000
	PDAddr   = 0xB000
	// CmdlineAddr is where the kernel command line is written.
	CmdlineAddr = 0x20000
	// CmdlineMax is the size of our command line buffer, including the NUL.
	CmdlineMax = 0x10000
	// EBDAStart is the start of the (empty) Extended BIOS Data Area, the
	// conventional end of usable low memory on PCs.
	EBDAStart = 0x9FC00
	// legacyVideoStart is the end of conventional memory (640 KiB): the
	// legacy VGA window and option ROM area follow.
	legacyVideoStart = 0xA0000
	// ACPITablesAddr is where the RSDP and ACPI tables live; Linux scans
	// 0xE0000-0xFFFFF for the RSDP (ACPI 6.5 §5.2.5.1).
	ACPITablesAddr = 0xE0000
	// acpiAreaEnd is the end of the BIOS area holding the ACPI tables.
	acpiAreaEnd = 0x100000
	// HighMemStart is the start of memory above 1 MiB.
	HighMemStart = 0x100000
	// BzImageLoadAddr is where the bzImage protected-mode kernel is loaded
	// (boot.rst: "loaded at 0x100000" for bzImage / LOADED_HIGH).
	BzImageLoadAddr = 0x100000
	// MMIOHoleStart and MMIOHoleEnd bound the 32-bit MMIO hole; RAM that
	// would overlap it is moved above 4 GiB.
	MMIOHoleStart = 0xC000_0000
	MMIOHoleEnd   = 1 << 32
	// IOAPICAddr is the I/O APIC register window (Intel 82093AA default).
	IOAPICAddr = 0xFEC0_0000
	// LAPICAddr is the local APIC register window (Intel SDM Vol. 3A
	// §11.4.1, default IA32_APIC_BASE).
	LAPICAddr = 0xFEE0_0000
)

// Memory size limits enforced by ValidateMemSize.
const (
	// MinMemSize is the smallest guest RAM size we accept.
	MinMemSize = 16 << 20
	// MaxMemSize keeps RAM within a 40-bit guest-physical address space,
	// well inside what current x86-64 CPUs and KVM support.
	MaxMemSize = 1 << 40
	// pageSize is the x86 base page size.
	pageSize = 4096
)

// ValidateMemSize reports whether memSize is usable as guest RAM size: at
// least MinMemSize, at most MaxMemSize and a multiple of the page size.
func ValidateMemSize(memSize uint64) error {
	switch {
	case memSize < MinMemSize:
		return fmt.Errorf("memory size %d bytes is below the minimum of %d MiB", memSize, MinMemSize>>20)
	case memSize > MaxMemSize:
		return fmt.Errorf("memory size %d bytes exceeds the maximum of %d GiB", memSize, MaxMemSize>>30)
	case memSize%pageSize != 0:
		return fmt.Errorf("memory size %d bytes is not a multiple of the %d-byte page size", memSize, pageSize)
	}
	return nil
}

// lowMemEnd returns the end of RAM below the MMIO hole.
func lowMemEnd(memSize uint64) uint64 { return min(memSize, MMIOHoleStart) }

// highMemSize returns how much RAM is relocated above 4 GiB.
func highMemSize(memSize uint64) uint64 {
	if memSize <= MMIOHoleStart {
		return 0
	}
	return memSize - MMIOHoleStart
}

// MemoryLayout returns the RAM regions to map for memSize bytes of guest
// RAM: [0, min(memSize, 3 GiB)) and, when memSize exceeds 3 GiB, the rest at
// [4 GiB, 4 GiB + memSize - 3 GiB). memSize is assumed valid (see
// ValidateMemSize).
func MemoryLayout(memSize uint64) []memory.Layout {
	l := []memory.Layout{{GuestAddr: 0, Size: lowMemEnd(memSize)}}
	if hi := highMemSize(memSize); hi > 0 {
		l = append(l, memory.Layout{GuestAddr: MMIOHoleEnd, Size: hi})
	}
	return l
}

// highMMIOAlign aligns the MMIO space above RAM.
const highMMIOAlign = 1 << 30

// HighMMIOStart returns where MMIO above 4 GiB may start for memSize bytes
// of RAM: the first 1 GiB boundary at or above both 4 GiB and the end of
// the RAM relocated there. Nothing in the memory map covers it, so a PCI
// host bridge window placed there clashes with no e820 entry.
func HighMMIOStart(memSize uint64) uint64 {
	end := uint64(MMIOHoleEnd) + highMemSize(memSize)
	return (end + highMMIOAlign - 1) &^ (highMMIOAlign - 1)
}

// E820 address range types (ACPI 6.5 §15.1, Table 15.1 "Address Range
// Types"; the same values are used by struct hvm_memmap_table_entry).
const (
	E820RAM      = 1 // AddressRangeMemory
	E820Reserved = 2 // AddressRangeReserved
	E820ACPI     = 3 // AddressRangeACPI (reclaimable)
	E820NVS      = 4 // AddressRangeNVS
	E820Unusable = 5 // AddressRangeUnusable
)

// E820Entry is one BIOS memory map entry.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// E820Map returns the guest memory map for memSize bytes of RAM laid out by
// MemoryLayout, plus the given reserved ranges (such as a PCI ECAM window in
// the MMIO hole, which Linux checks against the map) in address order. The
// reserved ranges must not overlap RAM.
func E820Map(memSize uint64, reserved ...E820Entry) []E820Entry {
	low := lowMemEnd(memSize)
	m := []E820Entry{
		{Addr: 0, Size: min(EBDAStart, low), Type: E820RAM},
		{Addr: EBDAStart, Size: legacyVideoStart - EBDAStart, Type: E820Reserved},
		{Addr: ACPITablesAddr, Size: acpiAreaEnd - ACPITablesAddr, Type: E820Reserved},
	}
	if low > HighMemStart {
		m = append(m, E820Entry{Addr: HighMemStart, Size: low - HighMemStart, Type: E820RAM})
	}
	if hi := highMemSize(memSize); hi > 0 {
		m = append(m, E820Entry{Addr: MMIOHoleEnd, Size: hi, Type: E820RAM})
	}
	if len(reserved) > 0 {
		m = append(m, reserved...)
		sort.SliceStable(m, func(i, j int) bool { return m[i].Addr < m[j].Addr })
	}
	return m
}
