package boot

import (
	"encoding/binary"
	"fmt"
)

// PCIHostBridge describes a PCI root bridge for the DSDT: bus 0 reached
// through configuration mechanism #1 and the windows it forwards to its
// devices. There is no ECAM (and so no MCFG): only the 256-byte
// conventional configuration space is reachable.
type PCIHostBridge struct {
	// ConfigPort is the configuration address port (0xCF8); the bridge
	// consumes 8 ports from there (address and data registers).
	ConfigPort uint16
	// MMIOBase and MMIOSize are the 32-bit window BARs are allocated from.
	MMIOBase, MMIOSize uint32
}

// AML resource descriptors (ACPI 6.5 §6.4).
const (
	rdIOPort         = 0x47 // small I/O Port Descriptor, 7 bytes of body (§6.4.2.5)
	rdIODecode16     = 0x01
	rdDWordAddress   = 0x87 // large DWord Address Space Descriptor (§6.4.3.5.2)
	rdWordAddress    = 0x88 // large Word Address Space Descriptor (§6.4.3.5.3)
	rdEndTag         = 0x79 // small End Tag (§6.4.2.9)
	rdDWordBodyLen   = 23
	rdWordBodyLen    = 13
	rdSpaceMemory    = 0
	rdSpaceIO        = 1
	rdSpaceBusNumber = 2
	// General flags: a producer (bit 0 clear) with a fixed minimum and
	// maximum (_MIF bit 2, _MAF bit 3), positive decode.
	rdFlagsProducerFixed = 1<<2 | 1<<3
	rdIOEntireRange      = 3    // I/O type-specific flags: _RNG = ISA and non-ISA
	rdMemReadWrite       = 1    // memory type-specific flags: _RW, non-cacheable
	amlBufferOp          = 0x11 // DefBuffer := BufferOp PkgLength BufferSize ByteList
	pciConfigPortCount   = 8
)

// wordAddress encodes a Word Address Space Descriptor for [min, max].
func wordAddress(space, typeFlags byte, min, max uint16) []byte {
	b := []byte{rdWordAddress, rdWordBodyLen, 0, space, rdFlagsProducerFixed, typeFlags}
	le := binary.LittleEndian
	b = le.AppendUint16(b, 0) // granularity
	b = le.AppendUint16(b, min)
	b = le.AppendUint16(b, max)
	b = le.AppendUint16(b, 0) // translation offset
	return le.AppendUint16(b, max-min+1)
}

// dwordMemory encodes a DWord Address Space Descriptor for memory.
func dwordMemory(base, size uint32) []byte {
	b := []byte{rdDWordAddress, rdDWordBodyLen, 0, rdSpaceMemory, rdFlagsProducerFixed, rdMemReadWrite}
	le := binary.LittleEndian
	b = le.AppendUint32(b, 0) // granularity
	b = le.AppendUint32(b, base)
	b = le.AppendUint32(b, base+size-1)
	b = le.AppendUint32(b, 0) // translation offset
	return le.AppendUint32(b, size)
}

// amlBuffer encodes Buffer(){bytes}.
func amlBuffer(data []byte) ([]byte, error) {
	body := append(amlInteger(uint64(len(data))), data...)
	pl, err := amlPkgLength(len(body))
	if err != nil {
		return nil, err
	}
	return append(append([]byte{amlBufferOp}, pl...), body...), nil
}

// pciCRS returns the host bridge's _CRS resource template: bus 0, the
// configuration ports, all I/O ports except those, and the MMIO window.
func pciCRS(h *PCIHostBridge) []byte {
	var b []byte
	b = append(b, wordAddress(rdSpaceBusNumber, 0, 0, 0)...)
	p := h.ConfigPort
	b = append(b, rdIOPort, rdIODecode16, byte(p), byte(p>>8), byte(p), byte(p>>8), 1, pciConfigPortCount)
	b = append(b, wordAddress(rdSpaceIO, rdIOEntireRange, 0, p-1)...)
	b = append(b, wordAddress(rdSpaceIO, rdIOEntireRange, p+pciConfigPortCount, 0xffff)...)
	b = append(b, dwordMemory(h.MMIOBase, h.MMIOSize)...)
	// End tag with a zero checksum, which means "treat as valid" (§6.4.2.9).
	return append(b, rdEndTag, 0)
}

// pciHostBridgeAML returns Scope(\_SB) { Device(PCI0) { ... } } describing
// h as a PCI Express root bridge compatible with plain PCI (PNP0A08,
// PNP0A03), segment 0, bus 0.
func pciHostBridgeAML(h *PCIHostBridge) ([]byte, error) {
	if h.MMIOSize == 0 || uint64(h.MMIOBase)+uint64(h.MMIOSize) > 1<<32 {
		return nil, fmt.Errorf("PCI MMIO window %#x+%#x does not fit below 4 GiB", h.MMIOBase, h.MMIOSize)
	}
	if h.ConfigPort == 0 || h.ConfigPort > 0xffff-pciConfigPortCount {
		return nil, fmt.Errorf("PCI configuration port %#x is invalid", h.ConfigPort)
	}
	hid, err := amlEISAID("PNP0A08")
	if err != nil {
		return nil, err
	}
	cid, err := amlEISAID("PNP0A03")
	if err != nil {
		return nil, err
	}
	crs, err := amlBuffer(pciCRS(h))
	if err != nil {
		return nil, err
	}
	terms, err := amlNames([]amlNamedObject{
		{"_HID", hid}, {"_CID", cid},
		{"_SEG", amlInteger(0)}, {"_BBN", amlInteger(0)}, {"_UID", amlInteger(0)},
		{"_CRS", crs},
	})
	if err != nil {
		return nil, err
	}
	dev, err := amlDevice("PCI0", terms...)
	if err != nil {
		return nil, err
	}
	return amlScope(`\_SB_`, dev)
}
