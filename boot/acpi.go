package boot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/govmm/vmm/memory"
)

// ACPI identification written into every table.
const (
	acpiOEMID           = "GOVMM " // 6 bytes (ACPI 6.5 §5.2.6 OEMID)
	acpiOEMRevision     = 1
	acpiCreatorID       = "GVMM" // 4 bytes, ASL compiler / creator vendor
	acpiCreatorRevision = 1
	// acpiHypervisorVendor is the FADT Hypervisor Vendor Identity
	// (ACPI 6.5 §5.2.9, 8 bytes, NUL padded).
	acpiHypervisorVendor = "GOVMM"
)

// Table layout constants (ACPI 6.5 §5.2).
const (
	rsdpSignature = "RSD PTR "
	rsdpRevision  = 2  // ACPI 2.0+ RSDP with XsdtAddress (§5.2.5.3)
	rsdpV1Len     = 20 // bytes covered by the legacy checksum
	rsdpLen       = 36 // full RSDP length
	// RSDP field offsets (§5.2.5.3 Table 5.3).
	rsdpChecksum    = 8
	rsdpOEMID       = 9
	rsdpRevisionOff = 15
	rsdpLength      = 20
	rsdpXSDTAddress = 24
	rsdpExtChecksum = 32

	// System description table header (§5.2.6 Table 5.4).
	sdtHeaderLen   = 36
	sdtLength      = 4
	sdtRevision    = 8
	sdtChecksum    = 9
	sdtOEMID       = 10
	sdtOEMTableID  = 16
	sdtOEMRevision = 24
	sdtCreatorID   = 28
	sdtCreatorRev  = 32

	// acpiAlign: tables are placed on 16-byte boundaries; the RSDP must
	// be (§5.2.5.1), the others need only natural alignment.
	acpiAlign = 16

	xsdtRevision = 1
	dsdtRevision = 2 // revision >= 2: AML integers are 64-bit (§5.2.11.1)
	madtRevision = 5 // ACPI 6.3+ MADT
	fadtRevision = 6 // FADT major version 6 (ACPI 6.x)
	fadtMinor    = 5 // FADT minor version: ACPI 6.5
	fadtLen      = 276
)

// FADT field offsets (ACPI 6.5 §5.2.9 Table 5.9).
const (
	fadtIAPCBootArch  = 109 // u16 IAPC_BOOT_ARCH
	fadtFlags         = 112 // u32 Flags
	fadtResetReg      = 116 // GAS RESET_REG
	fadtResetValue    = 128 // u8 RESET_VALUE
	fadtMinorVersion  = 131 // u8 FADT Minor Version
	fadtXDSDT         = 140 // u64 X_DSDT
	fadtSleepControl  = 244 // GAS SLEEP_CONTROL_REG
	fadtSleepStatus   = 256 // GAS SLEEP_STATUS_REG
	fadtHypervisorID  = 268 // u64 Hypervisor Vendor Identity
	gasLen            = 12  // Generic Address Structure (§5.2.3.2)
	gasSpaceSystemIO  = 1   // Address Space ID: System I/O
	gasAccessByte     = 1   // Access Size: byte access
	gasBitWidth8      = 8
	fadtResetRegSup   = 1 << 10 // Flags.RESET_REG_SUP
	fadtHWReducedACPI = 1 << 20 // Flags.HW_REDUCED_ACPI
	iapcVGANotPresent = 1 << 2  // IAPC_BOOT_ARCH "VGA Not Present"
)

// MADT constants (ACPI 6.5 §5.2.12).
const (
	madtLocalAPICAddr = 36 // u32 Local Interrupt Controller Address
	madtFlags         = 40 // u32 Flags
	madtHeaderLen     = 44
	madtPCATCompat    = 1 << 0 // Flags.PCAT_COMPAT: dual 8259 present

	madtTypeLocalAPIC = 0 // Processor Local APIC (§5.2.12.2), 8 bytes
	madtTypeIOAPIC    = 1 // I/O APIC (§5.2.12.3), 12 bytes
	madtTypeISO       = 2 // Interrupt Source Override (§5.2.12.5), 10 bytes
	madtTypeLAPICNMI  = 4 // Local APIC NMI (§5.2.12.7), 6 bytes
	madtLocalAPICLen  = 8
	madtIOAPICLen     = 12
	madtISOLen        = 10
	madtLAPICNMILen   = 6
	lapicEnabled      = 1 << 0 // Local APIC Flags.Enabled
	isaBus            = 0      // Interrupt Source Override Bus: ISA
	isaTimerIRQ       = 0      // ISA IRQ 0 (PIT) ...
	isaTimerGSI       = 2      // ... is wired to I/O APIC pin 2
	mpsINTIConforms   = 0      // MPS INTI flags: bus-default polarity/trigger (Table 5.26)
	allProcessors     = 0xFF   // ACPI Processor UID meaning "all processors"
	lint1             = 1      // Local APIC LINT# input carrying NMI
	maxXAPICID        = 0xFE   // 0xFF is the xAPIC broadcast ID
)

// MaxACPICPUs is the most vCPUs WriteACPITables describes: xAPIC IDs are
// 8 bits, 0xFF is the broadcast ID, and the I/O APIC takes ID NumCPUs.
const MaxACPICPUs = maxXAPICID // 254

// ACPIConfig describes the platform the ACPI tables advertise.
type ACPIConfig struct {
	// NumCPUs is the number of vCPUs, 1..MaxACPICPUs; CPU i has APIC ID
	// and ACPI processor UID i, and the I/O APIC gets ID NumCPUs.
	NumCPUs int
	// SleepControlPort and SleepStatusPort are the I/O ports of the
	// hardware-reduced sleep registers; 0 leaves a register absent. To
	// enter S5 Linux writes (S5SleepType<<2)|1<<5 to the control port.
	SleepControlPort, SleepStatusPort uint16
	// ResetPort is the I/O port of the reset register (0: none) and
	// ResetValue the byte written to it to reset the machine.
	ResetPort  uint16
	ResetValue uint8
	// S5SleepType is the SLP_TYP value of \_S5 (soft off).
	S5SleepType uint8
	// PCI, when set, adds a PCI host bridge (\_SB.PCI0) to the DSDT and,
	// if it has an ECAM window, the MCFG table.
	PCI *PCIHostBridge
	// Serial lists legacy UARTs to describe in the DSDT.
	Serial []ISASerialPort
}

// WriteACPITables writes RSDP, XSDT, FADT, DSDT, MADT and (for a PCI host
// bridge with ECAM) MCFG into
// [ACPITablesAddr, 0x100000) and returns the RSDP address.
//
// Every table is built as a byte slice and then laid out, so adding a table
// (e.g. MCFG) means appending it to the XSDT list, and adding devices (e.g.
// a PNP0A03 PCI host bridge with _CRS) means appending AML in dsdtAML.
func WriteACPITables(mem *memory.Guest, cfg ACPIConfig) (uint64, error) {
	if cfg.NumCPUs < 1 || cfg.NumCPUs > MaxACPICPUs {
		return 0, fmt.Errorf("boot: ACPI: %d CPUs is outside 1..%d (xAPIC IDs are 8-bit and the I/O APIC takes the next ID)", cfg.NumCPUs, MaxACPICPUs)
	}
	dsdt, err := buildDSDT(cfg)
	if err != nil {
		return 0, fmt.Errorf("boot: ACPI: %w", err)
	}
	l := acpiLayout{next: ACPITablesAddr + alignUp(rsdpLen, acpiAlign)}
	dsdtAddr := l.place(dsdt)
	xsdtEntries := []uint64{
		l.place(buildFADT(cfg, dsdtAddr)),
		l.place(buildMADT(cfg)),
	}
	if cfg.PCI != nil && cfg.PCI.ECAMBase != 0 {
		xsdtEntries = append(xsdtEntries, l.place(buildMCFG(cfg.PCI)))
	}
	xsdtAddr := l.place(buildXSDT(xsdtEntries))
	l.add(ACPITablesAddr, buildRSDP(xsdtAddr))
	if l.next > acpiAreaEnd {
		return 0, fmt.Errorf("boot: ACPI: tables need %d bytes, more than the %d available at %#x",
			l.next-ACPITablesAddr, acpiAreaEnd-ACPITablesAddr, ACPITablesAddr)
	}
	if err := mem.Zero(ACPITablesAddr, acpiAreaEnd-ACPITablesAddr); err != nil {
		return 0, fmt.Errorf("boot: ACPI: clear table area: %w", err)
	}
	for _, t := range l.tables {
		if err := mem.WriteAt(t.data, t.addr); err != nil {
			return 0, fmt.Errorf("boot: ACPI: write table at %#x: %w", t.addr, err)
		}
	}
	return ACPITablesAddr, nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// acpiLayout assigns guest addresses to finished tables.
type acpiLayout struct {
	next   uint64
	tables []placedTable
}

type placedTable struct {
	addr uint64
	data []byte
}

// place puts t at the next aligned address and returns that address.
func (l *acpiLayout) place(t []byte) uint64 {
	addr := l.next
	l.add(addr, t)
	l.next = alignUp(addr+uint64(len(t)), acpiAlign)
	return addr
}

func (l *acpiLayout) add(addr uint64, t []byte) {
	l.tables = append(l.tables, placedTable{addr, t})
}

// checksum returns the byte that makes b sum to zero (mod 256).
func checksum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return -s
}

// newSDT returns a table with a filled-in header followed by body, with the
// length and checksum set. oemTableID is padded to 8 bytes.
func newSDT(sig string, rev uint8, oemTableID string, body []byte) []byte {
	t := make([]byte, sdtHeaderLen+len(body))
	le := binary.LittleEndian
	copy(t[0:4], sig)
	le.PutUint32(t[sdtLength:], uint32(len(t)))
	t[sdtRevision] = rev
	copy(t[sdtOEMID:sdtOEMID+6], acpiOEMID)
	copy(t[sdtOEMTableID:sdtOEMTableID+8], fmt.Sprintf("%-8s", oemTableID))
	le.PutUint32(t[sdtOEMRevision:], acpiOEMRevision)
	copy(t[sdtCreatorID:sdtCreatorID+4], acpiCreatorID)
	le.PutUint32(t[sdtCreatorRev:], acpiCreatorRevision)
	copy(t[sdtHeaderLen:], body)
	t[sdtChecksum] = checksum(t)
	return t
}

// buildRSDP returns the ACPI 2.0+ Root System Description Pointer.
func buildRSDP(xsdtAddr uint64) []byte {
	r := make([]byte, rsdpLen)
	copy(r, rsdpSignature)
	copy(r[rsdpOEMID:rsdpOEMID+6], acpiOEMID)
	r[rsdpRevisionOff] = rsdpRevision
	// RsdtAddress stays 0: there is no RSDT, revision 2 OSes use the XSDT.
	binary.LittleEndian.PutUint32(r[rsdpLength:], rsdpLen)
	binary.LittleEndian.PutUint64(r[rsdpXSDTAddress:], xsdtAddr)
	r[rsdpChecksum] = checksum(r[:rsdpV1Len])
	r[rsdpExtChecksum] = checksum(r)
	return r
}

// buildXSDT returns an XSDT pointing at the given tables (§5.2.8).
func buildXSDT(entries []uint64) []byte {
	body := make([]byte, 8*len(entries))
	for i, a := range entries {
		binary.LittleEndian.PutUint64(body[8*i:], a)
	}
	return newSDT("XSDT", xsdtRevision, "GVMMXSDT", body)
}

// putGAS writes a Generic Address Structure for an 8-bit System I/O
// register (§5.2.3.2).
func putGAS(b []byte, port uint16) {
	if port == 0 {
		return // all-zero GAS: register not present
	}
	b[0] = gasSpaceSystemIO
	b[1] = gasBitWidth8
	b[2] = 0 // bit offset
	b[3] = gasAccessByte
	binary.LittleEndian.PutUint64(b[4:], uint64(port))
}

// buildFADT returns a hardware-reduced FADT (§5.2.9).
//
// IAPC_BOOT_ARCH advertises no VGA (so Linux skips probing it) but keeps
// the CMOS RTC, which the VMM emulates: a guest without kvmclock (nopv on
// kvm-pvm hosts) reads its wall-clock time there. No legacy LPC/ISA devices
// and no 8042 bit (reboot goes through RESET_REG). MSI stays allowed and
// ASPM is left to the OS.
func buildFADT(cfg ACPIConfig, dsdtAddr uint64) []byte {
	body := make([]byte, fadtLen-sdtHeaderLen)
	f := func(off int) []byte { return body[off-sdtHeaderLen:] }
	le := binary.LittleEndian
	flags := uint32(fadtHWReducedACPI)
	le.PutUint16(f(fadtIAPCBootArch), iapcVGANotPresent)
	if cfg.ResetPort != 0 {
		flags |= fadtResetRegSup
		putGAS(f(fadtResetReg), cfg.ResetPort)
		f(fadtResetValue)[0] = cfg.ResetValue
	}
	le.PutUint32(f(fadtFlags), flags)
	f(fadtMinorVersion)[0] = fadtMinor
	// The 32-bit DSDT field stays 0: X_DSDT supersedes it.
	le.PutUint64(f(fadtXDSDT), dsdtAddr)
	putGAS(f(fadtSleepControl), cfg.SleepControlPort)
	putGAS(f(fadtSleepStatus), cfg.SleepStatusPort)
	copy(f(fadtHypervisorID)[:8], acpiHypervisorVendor)
	return newSDT("FACP", fadtRevision, "GVMMFACP", body)
}

// buildMADT returns the Multiple APIC Description Table (§5.2.12).
func buildMADT(cfg ACPIConfig) []byte {
	le := binary.LittleEndian
	hdr := make([]byte, madtHeaderLen-sdtHeaderLen)
	le.PutUint32(hdr[0:], LAPICAddr)
	le.PutUint32(hdr[4:], madtPCATCompat)
	body := hdr
	for i := range cfg.NumCPUs {
		// Type, Length, ACPI Processor UID, APIC ID, Flags.
		e := []byte{madtTypeLocalAPIC, madtLocalAPICLen, byte(i), byte(i), 0, 0, 0, 0}
		le.PutUint32(e[4:], lapicEnabled)
		body = append(body, e...)
	}
	// Type, Length, I/O APIC ID, Reserved, I/O APIC Address, GSI Base.
	ioapic := []byte{madtTypeIOAPIC, madtIOAPICLen, byte(cfg.NumCPUs), 0, 0, 0, 0, 0, 0, 0, 0, 0}
	le.PutUint32(ioapic[4:], IOAPICAddr)
	le.PutUint32(ioapic[8:], 0)
	body = append(body, ioapic...)
	// Type, Length, Bus, Source, Global System Interrupt, Flags.
	iso := []byte{madtTypeISO, madtISOLen, isaBus, isaTimerIRQ, 0, 0, 0, 0, 0, 0}
	le.PutUint32(iso[4:], isaTimerGSI)
	le.PutUint16(iso[8:], mpsINTIConforms)
	body = append(body, iso...)
	// Type, Length, ACPI Processor UID, Flags, Local APIC LINT#.
	nmi := []byte{madtTypeLAPICNMI, madtLAPICNMILen, allProcessors, 0, 0, lint1}
	le.PutUint16(nmi[3:], mpsINTIConforms)
	body = append(body, nmi...)
	return newSDT("APIC", madtRevision, "GVMMAPIC", body)
}

// buildDSDT returns the Differentiated System Description Table.
func buildDSDT(cfg ACPIConfig) ([]byte, error) {
	aml, err := dsdtAML(cfg)
	if err != nil {
		return nil, err
	}
	return newSDT("DSDT", dsdtRevision, "GVMMDSDT", aml), nil
}

// dsdtAML returns the DSDT's AML definition block. Devices added later go
// here, e.g. a PCI host bridge built with amlScope(`\_SB_`,
// amlDevice("PCI0", amlName("_HID", amlEISAID("PNP0A03")), ...)).
func dsdtAML(cfg ACPIConfig) ([]byte, error) {
	// Name (\_S5, Package () { S5SleepType, 0, 0, 0 })
	// The first element is SLP_TYPa; in a hardware-reduced platform Linux
	// writes (SLP_TYPa << 2) | SLP_EN (bit 5) to SLEEP_CONTROL_REG
	// (ACPI 6.5 §4.8.3.7, §7.4.2.5). For S5SleepType 5 this encodes as
	//   08 5C 5F 53 35 5F 12 07 04 0A 05 00 00 00
	// NameOp \ _S5_ PackageOp PkgLength NumElements BytePrefix 5 Zero Zero Zero
	s5, err := amlPackage(amlInteger(uint64(cfg.S5SleepType)), amlInteger(0), amlInteger(0), amlInteger(0))
	if err != nil {
		return nil, err
	}
	name, err := amlName(`\_S5_`, s5)
	if err != nil {
		return nil, err
	}
	for _, sp := range cfg.Serial {
		dev, err := serialAML(sp)
		if err != nil {
			return nil, err
		}
		name = append(name, dev...)
	}
	if cfg.PCI != nil {
		pci, err := pciHostBridgeAML(cfg.PCI)
		if err != nil {
			return nil, err
		}
		name = append(name, pci...)
	}
	return name, nil
}

// AML encoding (ACPI 6.5 §20.2).
const (
	amlZeroOp       = 0x00 // ZeroOp
	amlOneOp        = 0x01 // OneOp
	amlNameOp       = 0x08 // DefName := NameOp NameString DataRefObject
	amlBytePrefix   = 0x0A
	amlWordPrefix   = 0x0B
	amlDWordPrefix  = 0x0C
	amlQWordPrefix  = 0x0E
	amlPackageOp    = 0x12 // DefPackage := PackageOp PkgLength NumElements PackageElementList
	amlScopeOp      = 0x10 // DefScope := ScopeOp PkgLength NameString TermList
	amlExtOpPrefix  = 0x5B
	amlDeviceOp     = 0x82 // DefDevice := ExtOpPrefix 0x82 PkgLength NameString TermList
	amlRootChar     = '\\'
	amlDualPrefix   = 0x2E
	amlMultiPrefix  = 0x2F
	amlNameSegLen   = 4
	amlMaxPkgLength = 1<<28 - 1 // 4-byte PkgLength holds 28 bits (§20.2.4)
)

// amlInteger encodes v in the shortest ComputationalData form (§20.2.3).
func amlInteger(v uint64) []byte {
	le := binary.LittleEndian
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xFF:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xFFFF:
		return le.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xFFFF_FFFF:
		return le.AppendUint32([]byte{amlDWordPrefix}, uint32(v))
	}
	return le.AppendUint64([]byte{amlQWordPrefix}, v)
}

// amlPkgLength encodes the PkgLength for a body of n bytes following it
// (the encoded length includes the PkgLength bytes themselves, §20.2.4).
func amlPkgLength(n int) ([]byte, error) {
	if n+1 < 1<<6 {
		return []byte{byte(n + 1)}, nil
	}
	for size := 2; size <= 4; size++ {
		total := n + size
		if total < 1<<(4+8*(size-1)) {
			b := make([]byte, size)
			b[0] = byte(size-1)<<6 | byte(total&0xF)
			for i := 1; i < size; i++ {
				b[i] = byte(total >> (4 + 8*(i-1)))
			}
			return b, nil
		}
	}
	return nil, fmt.Errorf("AML package of %d bytes exceeds the %d-byte PkgLength limit", n, amlMaxPkgLength)
}

// amlNameString encodes a path such as `\_S5_` or `\_SB_.PCI0` whose
// segments are exactly four characters (§20.2.2).
func amlNameString(path string) ([]byte, error) {
	var out []byte
	if len(path) > 0 && path[0] == amlRootChar {
		out = append(out, amlRootChar)
		path = path[1:]
	}
	var segs []string
	for len(path) > 0 {
		if len(path) < amlNameSegLen {
			return nil, fmt.Errorf("AML name segment %q is not 4 characters", path)
		}
		segs = append(segs, path[:amlNameSegLen])
		path = path[amlNameSegLen:]
		if len(path) > 0 {
			if path[0] != '.' {
				return nil, fmt.Errorf("AML name segment followed by %q, want '.'", path[0])
			}
			path = path[1:]
		}
	}
	switch {
	case len(segs) == 0:
		return nil, errors.New("AML name is empty")
	case len(segs) == 2:
		out = append(out, amlDualPrefix)
	case len(segs) > 2:
		if len(segs) > 0xFF {
			return nil, errors.New("AML name has too many segments")
		}
		out = append(out, amlMultiPrefix, byte(len(segs)))
	}
	for _, s := range segs {
		for i := range amlNameSegLen {
			c := s[i]
			ok := c == '_' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9'
			if !ok {
				return nil, fmt.Errorf("AML name segment %q has invalid character %q", s, c)
			}
		}
		out = append(out, s...)
	}
	return out, nil
}

// amlName encodes Name(path, obj).
func amlName(path string, obj []byte) ([]byte, error) {
	ns, err := amlNameString(path)
	if err != nil {
		return nil, err
	}
	out := append([]byte{amlNameOp}, ns...)
	return append(out, obj...), nil
}

// amlPackage encodes Package(){elems...}.
func amlPackage(elems ...[]byte) ([]byte, error) {
	if len(elems) > 0xFF {
		return nil, fmt.Errorf("AML package has %d elements, more than 255", len(elems))
	}
	body := []byte{byte(len(elems))}
	for _, e := range elems {
		body = append(body, e...)
	}
	pl, err := amlPkgLength(len(body))
	if err != nil {
		return nil, err
	}
	out := append([]byte{amlPackageOp}, pl...)
	return append(out, body...), nil
}

// amlNamedBlock encodes op PkgLength NameString terms..., the shape of
// DefScope and DefDevice.
func amlNamedBlock(op []byte, path string, terms ...[]byte) ([]byte, error) {
	body, err := amlNameString(path)
	if err != nil {
		return nil, err
	}
	for _, t := range terms {
		body = append(body, t...)
	}
	pl, err := amlPkgLength(len(body))
	if err != nil {
		return nil, err
	}
	out := append(append([]byte(nil), op...), pl...)
	return append(out, body...), nil
}

// amlScope encodes Scope(path){terms...}.
func amlScope(path string, terms ...[]byte) ([]byte, error) {
	return amlNamedBlock([]byte{amlScopeOp}, path, terms...)
}

// amlDevice encodes Device(name){terms...}.
func amlDevice(name string, terms ...[]byte) ([]byte, error) {
	return amlNamedBlock([]byte{amlExtOpPrefix, amlDeviceOp}, name, terms...)
}

// amlEISAID encodes a PNP ID such as "PNP0A03" as the 32-bit compressed
// EISA ID used for _HID/_CID (ACPI 6.5 §19.6.35 EISAID macro): three
// letters of 5 bits each ('A' = 1) and four hex digits, stored so that the
// bytes in memory read vendor-high, vendor-low, product-high, product-low.
func amlEISAID(id string) ([]byte, error) {
	if len(id) != 7 {
		return nil, fmt.Errorf("EISA ID %q is not 7 characters", id)
	}
	var vendor uint16
	for i := range 3 {
		c := id[i]
		if c < 'A' || c > 'Z' {
			return nil, fmt.Errorf("EISA ID %q: vendor must be 3 capital letters", id)
		}
		vendor = vendor<<5 | uint16(c-'A'+1)
	}
	var product uint16
	for i := 3; i < 7; i++ {
		c := id[i]
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return nil, fmt.Errorf("EISA ID %q: product must be 4 hex digits", id)
		}
		product = product<<4 | uint16(v)
	}
	v := uint32(vendor>>8) | uint32(vendor&0xFF)<<8 | uint32(product>>8)<<16 | uint32(product&0xFF)<<24
	return amlInteger(uint64(v)), nil
}
