package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Setup header offsets within the bzImage file and within the zero page
// (they coincide). Linux Documentation/arch/x86/boot.rst, "The Real-Mode
// Kernel Header".
const (
	hdrStart            = 0x1f1 // setup_sects: start of struct setup_header
	hdrSetupSects       = 0x1f1 // u8  setup_sects
	hdrSyssize          = 0x1f4 // u32 syssize (protocol 2.04+), 16-byte paragraphs
	hdrBootFlag         = 0x1fe // u16 boot_flag, 0xAA55
	hdrJump             = 0x200 // u16 jump; its second byte gives the header end
	hdrMagic            = 0x202 // u32 header, "HdrS"
	hdrVersion          = 0x206 // u16 version
	hdrTypeOfLoader     = 0x210 // u8  type_of_loader
	hdrLoadflags        = 0x211 // u8  loadflags
	hdrCode32Start      = 0x214 // u32 code32_start
	hdrRamdiskImage     = 0x218 // u32 ramdisk_image
	hdrRamdiskSize      = 0x21c // u32 ramdisk_size
	hdrHeapEndPtr       = 0x224 // u16 heap_end_ptr
	hdrCmdLinePtr       = 0x228 // u32 cmd_line_ptr
	hdrInitrdAddrMax    = 0x22c // u32 initrd_addr_max
	hdrKernelAlignment  = 0x230 // u32 kernel_alignment
	hdrRelocatable      = 0x234 // u8  relocatable_kernel
	hdrMinAlignment     = 0x235 // u8  min_alignment
	hdrXloadflags       = 0x236 // u16 xloadflags
	hdrCmdlineSize      = 0x238 // u32 cmdline_size
	hdrHardwareSubarch  = 0x23c // u32 hardware_subarch
	hdrPayloadOffset    = 0x248 // u32 payload_offset
	hdrPayloadLength    = 0x24c // u32 payload_length
	hdrPrefAddress      = 0x258 // u64 pref_address
	hdrInitSize         = 0x260 // u32 init_size
	hdrHandoverOffset   = 0x264 // u32 handover_offset
	hdrKernelInfoOffset = 0x268 // u32 kernel_info_offset (2.15+)
	// hdrFieldsEnd is the end of the last field we read.
	hdrFieldsEnd = 0x26c
	// hdrMaxEnd is where struct boot_params' field after the setup header
	// (edd_mbr_sig_buffer) starts (zero-page.rst); the header copied into
	// the zero page never extends past it.
	hdrMaxEnd = 0x290
)

// Setup header values (boot.rst).
const (
	bootFlagValue = 0xAA55     // boot_flag
	hdrMagicValue = 0x53726448 // "HdrS" read little-endian
	// sectorSize is the unit of setup_sects.
	sectorSize = 512
	// defaultSetupSects is used when setup_sects is 0 ("If this field is
	// 0, the real value is 4").
	defaultSetupSects = 4
	// paragraphSize is the unit of syssize.
	paragraphSize = 16
	// crcSlack: the build tool pads syssize to whole paragraphs, so it may
	// cover up to 15 bytes past the end of the file.
	crcSlack = paragraphSize - 1

	// Protocol versions (major<<8 | minor).
	protoMin      = 0x0206 // oldest we accept: has cmdline_size
	protoKernel64 = 0x020c // 2.12: xloadflags with XLF_KERNEL_64
	protoRSDP     = 0x020e // 2.14: acpi_rsdp_addr in boot_params

	// loadflags bits.
	loadedHigh = 1 << 0 // LOADED_HIGH: protected-mode code loaded at 0x100000
	canUseHeap = 1 << 7 // CAN_USE_HEAP: heap_end_ptr is valid

	// xloadflags bits.
	xlfKernel64           = 1 << 0 // XLF_KERNEL_64: 64-bit entry at +0x200
	xlfCanBeLoadedAbove4G = 1 << 1 // XLF_CAN_BE_LOADED_ABOVE_4G

	// startup64Offset: "the 64-bit entry point is at offset 0x200 from the
	// start of the loaded 64-bit kernel" (boot.rst, 64-bit Boot Protocol).
	startup64Offset = 0x200
)

// SetupHeader is the part of a bzImage's real-mode header the VMM needs.
// Field names follow boot.rst.
type SetupHeader struct {
	SetupSects        uint8  // number of 512-byte setup sectors (0 already replaced by 4)
	Syssize           uint32 // protected-mode size in 16-byte paragraphs
	Version           uint16 // boot protocol version, major<<8 | minor
	Loadflags         uint8
	Code32Start       uint32
	InitrdAddrMax     uint32 // highest address the initrd may occupy (last byte)
	KernelAlignment   uint32
	RelocatableKernel uint8
	Xloadflags        uint16
	CmdlineSize       uint32 // max command line length, excluding the NUL
	PrefAddress       uint64
	InitSize          uint32 // memory the kernel needs from its runtime start
	HandoverOffset    uint32

	// Raw is the header as found in the image, from offset 0x1f1 to the
	// end given by the jump instruction at 0x200 (capped at the zero
	// page's header area), to be copied into the zero page at 0x1f1.
	Raw []byte
}

// VersionString formats Version as "major.minor".
func (h *SetupHeader) VersionString() string { return protoString(h.Version) }

func protoString(v uint16) string { return fmt.Sprintf("%d.%02d", v>>8, v&0xff) }

// SetupSize returns the size in bytes of the real-mode part (boot sector
// plus setup sectors); the protected-mode kernel starts at this file offset.
func (h *SetupHeader) SetupSize() uint64 { return (uint64(h.SetupSects) + 1) * sectorSize }

// errNotBzImage marks images that lack the bzImage signatures, so LoadKernel
// can say "neither bzImage nor ELF" rather than a header detail.
var errNotBzImage = errors.New("not a bzImage")

// ParseSetupHeader parses and validates the setup header of a bzImage that
// is to be entered through the 64-bit boot protocol.
func ParseSetupHeader(image []byte) (*SetupHeader, error) {
	if len(image) < hdrFieldsEnd {
		return nil, fmt.Errorf("bzImage: file is %d bytes, too short to hold a setup header (%d bytes needed): %w",
			len(image), hdrFieldsEnd, errNotBzImage)
	}
	le := binary.LittleEndian
	if f := le.Uint16(image[hdrBootFlag:]); f != bootFlagValue {
		return nil, fmt.Errorf("bzImage: boot_flag at %#x is %#04x, want %#04x: %w", hdrBootFlag, f, bootFlagValue, errNotBzImage)
	}
	if m := le.Uint32(image[hdrMagic:]); m != hdrMagicValue {
		return nil, fmt.Errorf("bzImage: header magic at %#x is %q, want \"HdrS\": %w", hdrMagic, image[hdrMagic:hdrMagic+4], errNotBzImage)
	}
	h := &SetupHeader{
		SetupSects:        image[hdrSetupSects],
		Syssize:           le.Uint32(image[hdrSyssize:]),
		Version:           le.Uint16(image[hdrVersion:]),
		Loadflags:         image[hdrLoadflags],
		Code32Start:       le.Uint32(image[hdrCode32Start:]),
		InitrdAddrMax:     le.Uint32(image[hdrInitrdAddrMax:]),
		KernelAlignment:   le.Uint32(image[hdrKernelAlignment:]),
		RelocatableKernel: image[hdrRelocatable],
		Xloadflags:        le.Uint16(image[hdrXloadflags:]),
		CmdlineSize:       le.Uint32(image[hdrCmdlineSize:]),
		PrefAddress:       le.Uint64(image[hdrPrefAddress:]),
		InitSize:          le.Uint32(image[hdrInitSize:]),
		HandoverOffset:    le.Uint32(image[hdrHandoverOffset:]),
	}
	if h.SetupSects == 0 {
		h.SetupSects = defaultSetupSects
	}
	if h.Version < protoMin {
		return nil, fmt.Errorf("bzImage: boot protocol %s is older than %s", protoString(h.Version), protoString(protoMin))
	}
	if h.Version < protoKernel64 {
		return nil, fmt.Errorf("bzImage: boot protocol %s has no 64-bit entry point (needs %s or newer with XLF_KERNEL_64)",
			protoString(h.Version), protoString(protoKernel64))
	}
	if h.Xloadflags&xlfKernel64 == 0 {
		return nil, fmt.Errorf("bzImage: xloadflags %#x lack XLF_KERNEL_64: the kernel has no 64-bit entry point", h.Xloadflags)
	}
	if h.Loadflags&loadedHigh == 0 {
		return nil, errors.New("bzImage: LOADED_HIGH is clear: zImage kernels loaded at 0x10000 are not supported")
	}
	// The header ends at 0x202 plus the byte at 0x201 (the short jump's
	// displacement), boot.rst "Details of Header Fields".
	// Every field we parse up to init_size (protocol 2.10) must be inside
	// it; later fields are copied only if the header has them.
	end := hdrMagic + int(image[hdrJump+1])
	if end < hdrInitSize+4 {
		return nil, fmt.Errorf("bzImage: setup header ends at %#x, before init_size at %#x required by protocol %s",
			end, hdrInitSize, protoString(h.Version))
	}
	end = min(end, hdrMaxEnd)
	setup := h.SetupSize()
	if uint64(len(image)) < setup {
		return nil, fmt.Errorf("bzImage: truncated: %d setup sectors need %d bytes but the file has %d", h.SetupSects, setup, len(image))
	}
	if uint64(end) > setup {
		end = int(setup)
	}
	h.Raw = append([]byte(nil), image[hdrStart:end]...)
	pm := uint64(len(image)) - setup
	if pm == 0 {
		return nil, errors.New("bzImage: truncated: no protected-mode kernel after the setup sectors")
	}
	if h.Syssize == 0 {
		return nil, errors.New("bzImage: syssize is 0")
	}
	if need := uint64(h.Syssize) * paragraphSize; need > pm+crcSlack {
		return nil, fmt.Errorf("bzImage: truncated: syssize says %d bytes of protected-mode kernel but the file holds %d", need, pm)
	}
	return h, nil
}
