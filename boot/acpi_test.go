package boot

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/govmm/vmm/memory"
)

var testACPIConfig = ACPIConfig{
	NumCPUs:          4,
	SleepControlPort: 0x3c0,
	SleepStatusPort:  0x3c1,
	ResetPort:        0x3c2,
	ResetValue:       0x1,
	S5SleepType:      5,
}

// findRSDP scans the BIOS area on 16-byte boundaries like an OS does
// (ACPI 6.5 §5.2.5.1).
func findRSDP(t *testing.T, mem *memory.Guest) uint64 {
	t.Helper()
	area, err := mem.Slice(0xE0000, 0x20000)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off+rsdpLen <= len(area); off += 16 {
		r := area[off : off+rsdpLen]
		if string(r[:8]) == "RSD PTR " && sum(r[:20]) == 0 && sum(r) == 0 {
			return 0xE0000 + uint64(off)
		}
	}
	t.Fatal("no RSDP in 0xE0000-0xFFFFF")
	return 0
}

func sum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return s
}

// readTable reads a whole ACPI table at addr and checks its checksum and
// signature.
func readTable(t *testing.T, mem *memory.Guest, addr uint64, sig string) []byte {
	t.Helper()
	n, err := mem.Uint32(addr + 4)
	if err != nil {
		t.Fatal(err)
	}
	tb := make([]byte, n)
	if err := mem.ReadAt(tb, addr); err != nil {
		t.Fatalf("%s at %#x: %v", sig, addr, err)
	}
	if string(tb[:4]) != sig {
		t.Fatalf("table at %#x is %q, want %q", addr, tb[:4], sig)
	}
	if sum(tb) != 0 {
		t.Errorf("%s checksum: bytes sum to %#x, want 0", sig, sum(tb))
	}
	if string(tb[sdtOEMID:sdtOEMID+6]) != "GOVMM " {
		t.Errorf("%s OEM ID = %q", sig, tb[sdtOEMID:sdtOEMID+6])
	}
	return tb
}

func TestWriteACPITables(t *testing.T) {
	le := binary.LittleEndian
	for _, ncpu := range []int{1, 4, MaxACPICPUs} {
		cfg := testACPIConfig
		cfg.NumCPUs = ncpu
		mem := newTestGuest(t, 2*mib)
		addr, err := WriteACPITables(mem, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := findRSDP(t, mem); got != addr {
			t.Fatalf("RSDP found at %#x, WriteACPITables returned %#x", got, addr)
		}
		rsdp, _ := mem.Slice(addr, rsdpLen)
		if rsdp[rsdpRevisionOff] != 2 || le.Uint32(rsdp[rsdpLength:]) != rsdpLen || string(rsdp[rsdpOEMID:rsdpOEMID+6]) != "GOVMM " {
			t.Errorf("RSDP = % x", rsdp)
		}
		xsdt := readTable(t, mem, le.Uint64(rsdp[rsdpXSDTAddress:]), "XSDT")
		tables := map[string][]byte{}
		for off := sdtHeaderLen; off+8 <= len(xsdt); off += 8 {
			a := le.Uint64(xsdt[off:])
			sig, _ := mem.Slice(a, 4)
			tables[string(sig)] = readTable(t, mem, a, string(sig))
		}
		if len(tables) != 2 || tables["FACP"] == nil || tables["APIC"] == nil {
			t.Fatalf("XSDT lists %d tables: %v", len(tables), keys(tables))
		}

		fadt := tables["FACP"]
		if len(fadt) != 276 || fadt[sdtRevision] != 6 || fadt[fadtMinorVersion] != 5 {
			t.Errorf("FADT length %d revision %d.%d", len(fadt), fadt[sdtRevision], fadt[fadtMinorVersion])
		}
		if f := le.Uint32(fadt[fadtFlags:]); f != 1<<20|1<<10 {
			t.Errorf("FADT flags = %#x", f)
		}
		if ba := le.Uint16(fadt[fadtIAPCBootArch:]); ba != 1<<2 { // no VGA; CMOS RTC present
			t.Errorf("IAPC_BOOT_ARCH = %#x", ba)
		}
		gas := func(off int, port uint64) {
			want := []byte{1, 8, 0, 1}
			want = le.AppendUint64(want, port)
			if got := fadt[off : off+12]; !bytes.Equal(got, want) {
				t.Errorf("GAS at FADT+%d = % x, want % x", off, got, want)
			}
		}
		gas(fadtResetReg, 0x3c2)
		gas(fadtSleepControl, 0x3c0)
		gas(fadtSleepStatus, 0x3c1)
		if fadt[fadtResetValue] != 1 {
			t.Errorf("RESET_VALUE = %d", fadt[fadtResetValue])
		}
		if string(fadt[fadtHypervisorID:fadtHypervisorID+8]) != "GOVMM\x00\x00\x00" {
			t.Errorf("hypervisor vendor = %q", fadt[fadtHypervisorID:])
		}
		if le.Uint32(fadt[40:]) != 0 {
			t.Error("32-bit DSDT field set alongside X_DSDT")
		}
		dsdt := readTable(t, mem, le.Uint64(fadt[fadtXDSDT:]), "DSDT")
		s5 := []byte{0x08, '\\', '_', 'S', '5', '_', 0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00}
		if !bytes.Equal(dsdt[sdtHeaderLen:], s5) {
			t.Errorf("DSDT AML = % x, want % x", dsdt[sdtHeaderLen:], s5)
		}

		madt := tables["APIC"]
		if le.Uint32(madt[madtLocalAPICAddr:]) != LAPICAddr || le.Uint32(madt[madtFlags:]) != 1 {
			t.Errorf("MADT header = % x", madt[36:44])
		}
		var lapics, ioapics, isos, nmis int
		for off := madtHeaderLen; off < len(madt); {
			typ, n := madt[off], int(madt[off+1])
			if n < 2 || off+n > len(madt) {
				t.Fatalf("MADT entry at %d has length %d", off, n)
			}
			e := madt[off : off+n]
			switch typ {
			case 0:
				if n != 8 || int(e[2]) != lapics || int(e[3]) != lapics || le.Uint32(e[4:]) != 1 {
					t.Errorf("LAPIC entry %d = % x", lapics, e)
				}
				lapics++
			case 1:
				if n != 12 || int(e[2]) != ncpu || le.Uint32(e[4:]) != IOAPICAddr || le.Uint32(e[8:]) != 0 {
					t.Errorf("IOAPIC entry = % x", e)
				}
				ioapics++
			case 2:
				if n != 10 || e[2] != 0 || e[3] != 0 || le.Uint32(e[4:]) != 2 || le.Uint16(e[8:]) != 0 {
					t.Errorf("ISO entry = % x", e)
				}
				isos++
			case 4:
				if n != 6 || e[2] != 0xFF || le.Uint16(e[3:]) != 0 || e[5] != 1 {
					t.Errorf("LAPIC NMI entry = % x", e)
				}
				nmis++
			default:
				t.Errorf("unexpected MADT entry type %d", typ)
			}
			off += n
		}
		if lapics != ncpu || ioapics != 1 || isos != 1 || nmis != 1 {
			t.Errorf("MADT has %d LAPIC, %d IOAPIC, %d ISO, %d NMI entries; want %d,1,1,1", lapics, ioapics, isos, nmis, ncpu)
		}
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	return k
}

func TestWriteACPITablesErrors(t *testing.T) {
	mem := newTestGuest(t, 2*mib)
	for _, n := range []int{0, -1, MaxACPICPUs + 1} {
		cfg := testACPIConfig
		cfg.NumCPUs = n
		if _, err := WriteACPITables(mem, cfg); err == nil {
			t.Errorf("NumCPUs %d accepted", n)
		}
	}
	small := newTestGuest(t, 0x80000) // RAM ends below the ACPI area
	if _, err := WriteACPITables(small, testACPIConfig); err == nil {
		t.Error("tables written outside RAM")
	}
}

func TestACPINoResetNoSleep(t *testing.T) {
	mem := newTestGuest(t, 2*mib)
	addr, err := WriteACPITables(mem, ACPIConfig{NumCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	x, _ := mem.Uint64(addr + rsdpXSDTAddress)
	fadtAddr, _ := mem.Uint64(x + sdtHeaderLen)
	fadt := readTable(t, mem, fadtAddr, "FACP")
	if f := binary.LittleEndian.Uint32(fadt[fadtFlags:]); f != 1<<20 {
		t.Errorf("flags = %#x, want only HW_REDUCED_ACPI", f)
	}
	if !bytes.Equal(fadt[fadtSleepControl:fadtSleepControl+24], make([]byte, 24)) {
		t.Error("sleep registers present with port 0")
	}
}

func TestAMLPkgLength(t *testing.T) {
	tests := []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3F}},
		{63, []byte{0x41, 0x04}},                    // 65 = 0x041
		{4093, []byte{0x4F, 0xFF}},                  // 4095 = 0xFFF
		{4094, []byte{0x81, 0x00, 0x01}},            // 4097 = 0x1001
		{1<<20 - 4, []byte{0x8F, 0xFF, 0xFF}},       // 0xFFFFF
		{1<<20 - 3, []byte{0xC1, 0x00, 0x00, 0x01}}, // 0x100001
	}
	for _, tt := range tests {
		got, err := amlPkgLength(tt.n)
		if err != nil || !bytes.Equal(got, tt.want) {
			t.Errorf("amlPkgLength(%d) = % x, %v; want % x", tt.n, got, err, tt.want)
		}
	}
	if _, err := amlPkgLength(1 << 28); err == nil {
		t.Error("oversized package accepted")
	}
}

func TestAMLNameString(t *testing.T) {
	tests := []struct {
		path string
		want []byte
		ok   bool
	}{
		{`\_S5_`, []byte(`\_S5_`), true},
		{`_SB_`, []byte(`_SB_`), true},
		{`\_SB_.PCI0`, append([]byte{'\\', 0x2E}, "_SB_PCI0"...), true},
		{`\_SB_.PCI0._CRS`, append([]byte{'\\', 0x2F, 3}, "_SB_PCI0_CRS"...), true},
		{`\_S5`, nil, false},
		{``, nil, false},
		{`\`, nil, false},
		{`_sb_`, nil, false},
		{`0ABC`, nil, false},
		{`_SB_X`, nil, false},
	}
	for _, tt := range tests {
		got, err := amlNameString(tt.path)
		if (err == nil) != tt.ok || !bytes.Equal(got, tt.want) {
			t.Errorf("amlNameString(%q) = % x, %v", tt.path, got, err)
		}
	}
}

func TestAMLInteger(t *testing.T) {
	tests := []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{5, []byte{0x0A, 0x05}},
		{0x1234, []byte{0x0B, 0x34, 0x12}},
		{0xFEC00000, []byte{0x0C, 0x00, 0x00, 0xC0, 0xFE}},
		{1 << 32, []byte{0x0E, 0, 0, 0, 0, 1, 0, 0, 0}},
	}
	for _, tt := range tests {
		if got := amlInteger(tt.v); !bytes.Equal(got, tt.want) {
			t.Errorf("amlInteger(%#x) = % x, want % x", tt.v, got, tt.want)
		}
	}
}

func TestAMLEISAID(t *testing.T) {
	tests := []struct {
		id   string
		want uint32
		ok   bool
	}{
		{"PNP0A03", 0x030AD041, true}, // PCI host bridge
		{"PNP0A08", 0x080AD041, true}, // PCI Express host bridge
		{"PNP0C0F", 0x0F0CD041, true},
		{"PNP0A0", 0, false},
		{"pnp0A03", 0, false},
		{"PNP0A0G", 0, false},
	}
	for _, tt := range tests {
		got, err := amlEISAID(tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("amlEISAID(%q) err = %v", tt.id, err)
			continue
		}
		if tt.ok && !bytes.Equal(got, amlInteger(uint64(tt.want))) {
			t.Errorf("amlEISAID(%q) = % x, want %#x", tt.id, got, tt.want)
		}
	}
}

func TestAMLDevice(t *testing.T) {
	hid, err := amlEISAID("PNP0A03")
	if err != nil {
		t.Fatal(err)
	}
	name, err := amlName("_HID", hid)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := amlDevice("PCI0", name)
	if err != nil {
		t.Fatal(err)
	}
	scope, err := amlScope(`\_SB_`, dev)
	if err != nil {
		t.Fatal(err)
	}
	// Scope (\_SB) { Device (PCI0) { Name (_HID, EisaId ("PNP0A03")) } }
	want := []byte{
		0x10, 0x17, '\\', '_', 'S', 'B', '_',
		0x5B, 0x82, 0x0F, 'P', 'C', 'I', '0',
		0x08, '_', 'H', 'I', 'D', 0x0C, 0x41, 0xD0, 0x0A, 0x03,
	}
	if !bytes.Equal(scope, want) {
		t.Errorf("AML = % x\nwant  % x", scope, want)
	}
}
