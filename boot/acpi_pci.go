package boot

import (
	"encoding/binary"
	"fmt"
)

// PCIHostBridge describes a PCI root bridge: bus 0 reached through
// configuration mechanism #1 and, optionally, an ECAM window; the memory
// windows it forwards to its devices; and how its devices' INTx# pins reach
// the I/O APIC. It becomes \_SB.PCI0 in the DSDT and, with ECAM, an MCFG
// table and a motherboard resource device reserving the window.
type PCIHostBridge struct {
	// ConfigPort is the configuration address port (0xCF8); the bridge
	// consumes 8 ports from there (address and data registers).
	ConfigPort uint16
	// MMIOBase and MMIOSize are the 32-bit window BARs are allocated from.
	MMIOBase, MMIOSize uint32
	// MMIO64Base and MMIO64Size are the window above 4 GiB for 64-bit
	// prefetchable BARs; size 0: none.
	MMIO64Base, MMIO64Size uint64
	// ECAMBase is the base of the PCI Express enhanced configuration
	// window of segment 0, bus 0 (PCIECAMBusSize bytes); 0: none. The
	// MCFG table points at it and a PNP0C02 device reserves it, as the
	// PCI Firmware Specification (§4.1.2) asks and Linux checks.
	ECAMBase uint64
	// INTx is the _PRT: the GSI each device's interrupt pin reaches.
	INTx []PCIINTxRoute
}

// PCIINTxRoute is one _PRT entry: pin Pin (0 = INTA#, as _PRT counts) of
// device Device on bus 0 is wired to GSI GSI, an I/O APIC input. ACPI
// takes such hardwired inputs to be level-triggered, active-low (§6.2.13);
// KVM's I/O APIC treats an asserted line as active whatever the polarity
// bit says, so the VMM asserting the line by irqfd matches.
type PCIINTxRoute struct {
	Device, Pin uint8
	GSI         uint32
}

// PCIECAMBusSize is the size of one bus's ECAM area: 32 devices of 8
// functions of 4 KiB.
const PCIECAMBusSize = 1 << 20

// MCFG layout (PCI Firmware Specification 3.x §4.1.2, Table 4-2/4-3): the
// header, 8 reserved bytes, then one 16-byte allocation per segment/bus
// range: base address, segment, start bus, end bus, 4 reserved bytes.
const (
	mcfgRevision      = 1
	mcfgReservedLen   = 8
	mcfgAllocationLen = 16
)

// AML resource descriptors (ACPI 6.5 §6.4).
const (
	rdIOPort         = 0x47 // small I/O Port Descriptor, 7 bytes of body (§6.4.2.5)
	rdIODecode16     = 0x01
	rdDWordAddress   = 0x87 // large DWord Address Space Descriptor (§6.4.3.5.2)
	rdWordAddress    = 0x88 // large Word Address Space Descriptor (§6.4.3.5.3)
	rdQWordAddress   = 0x8a // large QWord Address Space Descriptor (§6.4.3.5.1)
	rdMemory32Fixed  = 0x86 // large 32-Bit Fixed Memory Range Descriptor (§6.4.3.4)
	rdEndTag         = 0x79 // small End Tag (§6.4.2.9)
	rdDWordBodyLen   = 23
	rdWordBodyLen    = 13
	rdQWordBodyLen   = 43
	rdMem32FixedLen  = 9
	rdSpaceMemory    = 0
	rdSpaceIO        = 1
	rdSpaceBusNumber = 2
	// General flags: a producer (bit 0 clear) with a fixed minimum and
	// maximum (_MIF bit 2, _MAF bit 3), positive decode.
	rdFlagsProducerFixed = 1<<2 | 1<<3
	rdIOEntireRange      = 3      // I/O type-specific flags: _RNG = ISA and non-ISA
	rdMemReadWrite       = 1      // memory type-specific flags: _RW, non-cacheable
	rdMemPrefetchable    = 3 << 1 // memory type-specific flags: _MEM = prefetchable
	amlBufferOp          = 0x11   // DefBuffer := BufferOp PkgLength BufferSize ByteList
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

// qwordMemory encodes a QWord Address Space Descriptor for prefetchable
// memory.
func qwordMemory(base, size uint64) []byte {
	b := []byte{rdQWordAddress, rdQWordBodyLen, 0, rdSpaceMemory, rdFlagsProducerFixed, rdMemReadWrite | rdMemPrefetchable}
	le := binary.LittleEndian
	b = le.AppendUint64(b, 0) // granularity
	b = le.AppendUint64(b, base)
	b = le.AppendUint64(b, base+size-1)
	b = le.AppendUint64(b, 0) // translation offset
	return le.AppendUint64(b, size)
}

// memory32Fixed encodes Memory32Fixed(ReadWrite, base, size).
func memory32Fixed(base, size uint32) []byte {
	b := []byte{rdMemory32Fixed, rdMem32FixedLen, 0, rdMemReadWrite}
	b = binary.LittleEndian.AppendUint32(b, base)
	return binary.LittleEndian.AppendUint32(b, size)
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
	if h.MMIO64Size != 0 {
		b = append(b, qwordMemory(h.MMIO64Base, h.MMIO64Size)...)
	}
	// End tag with a zero checksum, which means "treat as valid" (§6.4.2.9).
	return append(b, rdEndTag, 0)
}

// pciPRT returns the _PRT package: Package(){Address, Pin, Zero, GSI} per
// route, Address being the device in the high word and 0xFFFF (any
// function) in the low word (ACPI 6.5 §6.2.13). The Zero source makes the
// last element a GSI.
func pciPRT(routes []PCIINTxRoute) ([]byte, error) {
	var entries [][]byte
	for _, r := range routes {
		e, err := amlPackage(amlInteger(uint64(r.Device)<<16|0xffff), amlInteger(uint64(r.Pin)), amlInteger(0), amlInteger(uint64(r.GSI)))
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	return amlPackage(entries...)
}

// ecamReservationAML returns Device(ECAM) { _HID PNP0C02, _UID, _CRS with
// the ECAM window }: a motherboard resource reserving the MCFG area, which
// Linux requires before it uses ECAM (pci_mmcfg_reserved).
func ecamReservationAML(h *PCIHostBridge) ([]byte, error) {
	hid, err := amlEISAID("PNP0C02")
	if err != nil {
		return nil, err
	}
	crs, err := amlBuffer(append(memory32Fixed(uint32(h.ECAMBase), PCIECAMBusSize), rdEndTag, 0))
	if err != nil {
		return nil, err
	}
	terms, err := amlNames([]amlNamedObject{{"_HID", hid}, {"_UID", amlInteger(1)}, {"_CRS", crs}})
	if err != nil {
		return nil, err
	}
	return amlDevice("ECAM", terms...)
}

// buildMCFG returns the MCFG table for h's ECAM window: segment 0, buses
// 0-0.
func buildMCFG(h *PCIHostBridge) []byte {
	body := make([]byte, mcfgReservedLen, mcfgReservedLen+mcfgAllocationLen)
	le := binary.LittleEndian
	body = le.AppendUint64(body, h.ECAMBase)
	body = le.AppendUint16(body, 0) // PCI segment group
	body = append(body, 0, 0)       // start and end bus
	body = le.AppendUint32(body, 0) // reserved
	return newSDT("MCFG", mcfgRevision, "GVMMMCFG", body)
}

// pciHostBridgeAML returns Scope(\_SB) { Device(PCI0) { ... } } describing
// h as a PCI Express root bridge compatible with plain PCI (PNP0A08,
// PNP0A03), segment 0, bus 0, with its interrupt routing, followed (with
// ECAM) by Device(ECAM) reserving the configuration window.
func pciHostBridgeAML(h *PCIHostBridge) ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
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
	names := []amlNamedObject{
		{"_HID", hid}, {"_CID", cid},
		{"_SEG", amlInteger(0)}, {"_BBN", amlInteger(0)}, {"_UID", amlInteger(0)},
		{"_CRS", crs},
	}
	if len(h.INTx) > 0 {
		prt, err := pciPRT(h.INTx)
		if err != nil {
			return nil, err
		}
		names = append(names, amlNamedObject{"_PRT", prt})
	}
	terms, err := amlNames(names)
	if err != nil {
		return nil, err
	}
	dev, err := amlDevice("PCI0", terms...)
	if err != nil {
		return nil, err
	}
	devs := [][]byte{dev}
	if h.ECAMBase != 0 {
		res, err := ecamReservationAML(h)
		if err != nil {
			return nil, err
		}
		devs = append(devs, res)
	}
	return amlScope(`\_SB_`, devs...)
}

// validate checks the windows: the 32-bit one below 4 GiB, the 64-bit one
// above it, the ECAM window 1 MiB aligned below 4 GiB (Linux ignores MCFG
// areas above 4 GiB from firmware it deems old) and outside the 32-bit
// window, and _PRT entries for real devices and pins.
func (h *PCIHostBridge) validate() error {
	if h.MMIOSize == 0 || uint64(h.MMIOBase)+uint64(h.MMIOSize) > 1<<32 {
		return fmt.Errorf("PCI MMIO window %#x+%#x does not fit below 4 GiB", h.MMIOBase, h.MMIOSize)
	}
	if h.MMIO64Size != 0 && (h.MMIO64Base < 1<<32 || h.MMIO64Base+h.MMIO64Size < h.MMIO64Base) {
		return fmt.Errorf("PCI 64-bit MMIO window %#x+%#x is not above 4 GiB", h.MMIO64Base, h.MMIO64Size)
	}
	if e := h.ECAMBase; e != 0 {
		if e%PCIECAMBusSize != 0 || e+PCIECAMBusSize > 1<<32 {
			return fmt.Errorf("PCI ECAM window at %#x is not 1 MiB aligned below 4 GiB", e)
		}
		if e < uint64(h.MMIOBase)+uint64(h.MMIOSize) && e+PCIECAMBusSize > uint64(h.MMIOBase) {
			return fmt.Errorf("PCI ECAM window at %#x overlaps the MMIO window %#x+%#x", e, h.MMIOBase, h.MMIOSize)
		}
	}
	for _, r := range h.INTx {
		if r.Device >= 32 || r.Pin > 3 {
			return fmt.Errorf("PCI _PRT entry for device %d pin %d is out of range", r.Device, r.Pin)
		}
	}
	return nil
}
