package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/govmm/vmm/memory"
)

// struct boot_params ("zero page") layout, Linux
// Documentation/arch/x86/zero-page.rst; setup header fields are at the same
// offsets as in the bzImage (see bzimage.go).
const (
	zeroPageSize      = 0x1000
	zpACPIRSDPAddr    = 0x070 // u64 acpi_rsdp_addr (protocol 2.14+)
	zpExtRamdiskImage = 0x0c0 // u32 ext_ramdisk_image: ramdisk_image bits 63:32
	zpExtRamdiskSize  = 0x0c4 // u32 ext_ramdisk_size: ramdisk_size bits 63:32
	zpExtCmdLinePtr   = 0x0c8 // u32 ext_cmd_line_ptr: cmd_line_ptr bits 63:32
	zpE820Entries     = 0x1e8 // u8  e820_entries
	zpE820Table       = 0x2d0 // struct boot_e820_entry e820_table[128]
	zpE820MaxEntries  = 128   // E820_MAX_ENTRIES_ZEROPAGE
	zpE820EntrySize   = 20    // packed {u64 addr; u64 size; u32 type}
	typeOfLoaderUndef = 0xFF  // type_of_loader: boot loader without an assigned ID (boot.rst)
	// heapEndPtr: heap_end_ptr is "the offset of the end of the setup
	// stack/heap, minus 0x0200"; 0xFE00 gives setup the whole 64 KiB
	// real-mode segment (boot.rst, "heap_end_ptr" and the sample boot
	// configuration). The 64-bit entry skips setup, so this only keeps the
	// header self-consistent.
	heapEndPtr = 0xFE00
)

// struct hvm_start_info and friends, Xen public/arch-x86/hvm/start_info.h.
const (
	hvmStartMagic       = 0x336ec578 // XEN_HVM_START_MAGIC_VALUE
	hvmStartVersion     = 1          // version 1 adds the memory map
	hvmStartInfoSize    = 56         // sizeof(struct hvm_start_info), version 1
	hvmModlistEntrySize = 32         // sizeof(struct hvm_modlist_entry)
	hvmMemmapEntrySize  = 24         // sizeof(struct hvm_memmap_table_entry)

	// struct hvm_start_info field offsets.
	hsiMagic         = 0  // u32 magic
	hsiVersion       = 4  // u32 version
	hsiFlags         = 8  // u32 flags
	hsiNrModules     = 12 // u32 nr_modules
	hsiModlistPaddr  = 16 // u64 modlist_paddr
	hsiCmdlinePaddr  = 24 // u64 cmdline_paddr
	hsiRSDPPaddr     = 32 // u64 rsdp_paddr
	hsiMemmapPaddr   = 40 // u64 memmap_paddr
	hsiMemmapEntries = 48 // u32 memmap_entries

	// struct hvm_modlist_entry field offsets.
	hmlPaddr = 0 // u64 paddr
	hmlSize  = 8 // u64 size

	// struct hvm_memmap_table_entry field offsets.
	hmmAddr = 0  // u64 addr
	hmmSize = 8  // u64 size
	hmmType = 16 // u32 type
)

// Params are the run-time boot parameters handed to the kernel.
type Params struct {
	Cmdline    string
	MemSize    uint64
	InitrdAddr uint64 // 0 with InitrdSize 0 for no initrd
	InitrdSize uint64
	RSDPAddr   uint64 // 0 if there are no ACPI tables
	// Reserved are extra reserved ranges for the memory map, outside RAM
	// (e.g. the PCI ECAM window).
	Reserved []E820Entry
}

// WriteBootParams writes the command line and the protocol's boot
// information structure and returns the value for the entry register: the
// zero page address (RSI) for Linux64, the hvm_start_info address (EBX) for
// PVH.
func WriteBootParams(mem *memory.Guest, k *Kernel, p Params) (uint64, error) {
	if k == nil {
		return 0, errors.New("boot: write boot params: no kernel")
	}
	if err := writeCmdline(mem, k, p.Cmdline); err != nil {
		return 0, err
	}
	if p.InitrdSize != 0 && p.InitrdAddr+p.InitrdSize < p.InitrdAddr {
		return 0, fmt.Errorf("boot: write boot params: initrd [%#x, +%#x) overflows", p.InitrdAddr, p.InitrdSize)
	}
	switch k.Protocol {
	case ProtocolLinux64:
		return writeZeroPage(mem, k, p)
	case ProtocolPVH:
		return writeStartInfo(mem, p)
	}
	return 0, fmt.Errorf("boot: write boot params: unknown protocol %v", k.Protocol)
}

func writeCmdline(mem *memory.Guest, k *Kernel, cmdline string) error {
	if strings.IndexByte(cmdline, 0) >= 0 {
		return errors.New("boot: command line contains a NUL byte")
	}
	limit := min(k.CmdlineMax, CmdlineMax)
	if len(cmdline)+1 > limit {
		return fmt.Errorf("boot: command line is %d bytes but the kernel accepts at most %d (including the NUL)", len(cmdline)+1, limit)
	}
	buf := make([]byte, len(cmdline)+1)
	copy(buf, cmdline)
	if err := mem.WriteAt(buf, CmdlineAddr); err != nil {
		return fmt.Errorf("boot: write command line at %#x: %w", CmdlineAddr, err)
	}
	return nil
}

// writeZeroPage fills struct boot_params at ZeroPageAddr.
func writeZeroPage(mem *memory.Guest, k *Kernel, p Params) (uint64, error) {
	h := k.Header
	if h == nil {
		return 0, errors.New("boot: write zero page: kernel has no setup header")
	}
	zp := make([]byte, zeroPageSize)
	le := binary.LittleEndian
	if len(h.Raw) > hdrMaxEnd-hdrStart {
		return 0, fmt.Errorf("boot: write zero page: setup header is %d bytes, more than the zero page holds", len(h.Raw))
	}
	copy(zp[hdrStart:], h.Raw)
	zp[hdrTypeOfLoader] = typeOfLoaderUndef
	zp[hdrLoadflags] |= canUseHeap // LOADED_HIGH comes from the image and is kept
	le.PutUint16(zp[hdrHeapEndPtr:], heapEndPtr)
	le.PutUint32(zp[hdrCmdLinePtr:], uint32(CmdlineAddr))
	le.PutUint32(zp[zpExtCmdLinePtr:], uint32(uint64(CmdlineAddr)>>32))
	le.PutUint32(zp[hdrRamdiskImage:], uint32(p.InitrdAddr))
	le.PutUint32(zp[zpExtRamdiskImage:], uint32(p.InitrdAddr>>32))
	le.PutUint32(zp[hdrRamdiskSize:], uint32(p.InitrdSize))
	le.PutUint32(zp[zpExtRamdiskSize:], uint32(p.InitrdSize>>32))
	if p.RSDPAddr != 0 && h.Version >= protoRSDP {
		le.PutUint64(zp[zpACPIRSDPAddr:], p.RSDPAddr)
	}
	if p.InitrdSize != 0 && p.InitrdAddr+p.InitrdSize > MMIOHoleEnd && h.Xloadflags&xlfCanBeLoadedAbove4G == 0 {
		return 0, fmt.Errorf("boot: write zero page: initrd [%#x, %#x) extends above 4 GiB but the kernel lacks XLF_CAN_BE_LOADED_ABOVE_4G",
			p.InitrdAddr, p.InitrdAddr+p.InitrdSize)
	}
	e820 := E820Map(p.MemSize, p.Reserved...)
	if len(e820) > zpE820MaxEntries {
		return 0, fmt.Errorf("boot: write zero page: %d e820 entries exceed the %d the zero page holds", len(e820), zpE820MaxEntries)
	}
	zp[zpE820Entries] = uint8(len(e820))
	for i, e := range e820 {
		b := zp[zpE820Table+i*zpE820EntrySize:]
		le.PutUint64(b[0:], e.Addr)
		le.PutUint64(b[8:], e.Size)
		le.PutUint32(b[16:], e.Type)
	}
	if err := mem.WriteAt(zp, ZeroPageAddr); err != nil {
		return 0, fmt.Errorf("boot: write zero page at %#x: %w", ZeroPageAddr, err)
	}
	return ZeroPageAddr, nil
}

// writeStartInfo fills struct hvm_start_info at PVHStartInfoAddr, followed
// by the module list (the initrd, if any) and the memory map.
func writeStartInfo(mem *memory.Guest, p Params) (uint64, error) {
	le := binary.LittleEndian
	e820 := E820Map(p.MemSize, p.Reserved...)
	nmod := 0
	if p.InitrdSize != 0 {
		nmod = 1
	}
	modOff := hvmStartInfoSize
	mapOff := modOff + nmod*hvmModlistEntrySize
	size := mapOff + len(e820)*hvmMemmapEntrySize
	if PVHStartInfoAddr+size > pvhAreaEnd {
		return 0, fmt.Errorf("boot: write PVH start info: %d bytes do not fit below %#x", size, pvhAreaEnd)
	}
	b := make([]byte, size)
	le.PutUint32(b[hsiMagic:], hvmStartMagic)
	le.PutUint32(b[hsiVersion:], hvmStartVersion)
	le.PutUint32(b[hsiFlags:], 0)
	le.PutUint32(b[hsiNrModules:], uint32(nmod))
	if nmod > 0 {
		le.PutUint64(b[hsiModlistPaddr:], PVHStartInfoAddr+uint64(modOff))
		le.PutUint64(b[modOff+hmlPaddr:], p.InitrdAddr)
		le.PutUint64(b[modOff+hmlSize:], p.InitrdSize)
		// cmdline_paddr and reserved stay 0: the module has no command line.
	}
	le.PutUint64(b[hsiCmdlinePaddr:], CmdlineAddr)
	le.PutUint64(b[hsiRSDPPaddr:], p.RSDPAddr)
	le.PutUint64(b[hsiMemmapPaddr:], PVHStartInfoAddr+uint64(mapOff))
	le.PutUint32(b[hsiMemmapEntries:], uint32(len(e820)))
	for i, e := range e820 {
		m := b[mapOff+i*hvmMemmapEntrySize:]
		le.PutUint64(m[hmmAddr:], e.Addr)
		le.PutUint64(m[hmmSize:], e.Size)
		le.PutUint32(m[hmmType:], e.Type)
	}
	if err := mem.WriteAt(b, PVHStartInfoAddr); err != nil {
		return 0, fmt.Errorf("boot: write PVH start info at %#x: %w", PVHStartInfoAddr, err)
	}
	return PVHStartInfoAddr, nil
}
