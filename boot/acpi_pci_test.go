package boot

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/internal/testenv"
)

var testPCI = &PCIHostBridge{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000}

// testPCIFull has everything: a 64-bit window, ECAM and INTx routing for
// devices 1 and 2.
var testPCIFull = &PCIHostBridge{
	ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000,
	MMIO64Base: 0x1_0000_0000, MMIO64Size: 0x8_0000_0000,
	ECAMBase: 0xe000_0000,
	INTx: []PCIINTxRoute{
		{Device: 1, Pin: 0, GSI: 17}, {Device: 1, Pin: 1, GSI: 18},
		{Device: 2, Pin: 0, GSI: 18}, {Device: 2, Pin: 3, GSI: 21},
	},
}

// acpiTables writes the tables for cfg and returns them by signature.
func acpiTables(t *testing.T, cfg ACPIConfig) map[string][]byte {
	t.Helper()
	mem := newTestGuest(t, 2*mib)
	addr, err := WriteACPITables(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	rsdp, _ := mem.Slice(addr, rsdpLen)
	xsdt := readTable(t, mem, le.Uint64(rsdp[rsdpXSDTAddress:]), "XSDT")
	tables := map[string][]byte{"XSDT": xsdt}
	for off := sdtHeaderLen; off+8 <= len(xsdt); off += 8 {
		a := le.Uint64(xsdt[off:])
		sig, _ := mem.Slice(a, 4)
		tables[string(sig)] = readTable(t, mem, a, string(sig))
	}
	if f, ok := tables["FACP"]; ok {
		tables["DSDT"] = readTable(t, mem, le.Uint64(f[fadtXDSDT:]), "DSDT")
	}
	return tables
}

// dsdtFor writes the tables for cfg and returns the DSDT.
func dsdtFor(t *testing.T, cfg ACPIConfig) []byte {
	t.Helper()
	mem := newTestGuest(t, 2*mib)
	addr, err := WriteACPITables(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	rsdp, _ := mem.Slice(addr, rsdpLen)
	xsdt := readTable(t, mem, le.Uint64(rsdp[rsdpXSDTAddress:]), "XSDT")
	for off := sdtHeaderLen; off+8 <= len(xsdt); off += 8 {
		a := le.Uint64(xsdt[off:])
		if sig, _ := mem.Slice(a, 4); string(sig) == "FACP" {
			fadt := readTable(t, mem, a, "FACP")
			return readTable(t, mem, le.Uint64(fadt[fadtXDSDT:]), "DSDT")
		}
	}
	t.Fatal("no FADT")
	return nil
}

func TestDSDTPCIHostBridge(t *testing.T) {
	cfg := testACPIConfig
	plain := dsdtFor(t, cfg)
	cfg.PCI = testPCI
	dsdt := dsdtFor(t, cfg)
	if !bytes.HasPrefix(dsdt[sdtHeaderLen:], plain[sdtHeaderLen:]) {
		t.Error("the PCI host bridge changed the existing AML")
	}
	for _, want := range [][]byte{
		[]byte("PCI0"), []byte("_HID"), []byte("_CID"), []byte("_SEG"), []byte("_BBN"), []byte("_UID"), []byte("_CRS"),
		{0x0c, 0x41, 0xd0, 0x0a, 0x08},                   // EISAID("PNP0A08")
		{0x0c, 0x41, 0xd0, 0x0a, 0x03},                   // EISAID("PNP0A03")
		{0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08}, // IO(Decode16, 0xCF8, 0xCF8, 1, 8)
		{0x79, 0x00},
	} {
		if !bytes.Contains(dsdt, want) {
			t.Errorf("DSDT lacks % x", want)
		}
	}
	crs := pciCRS(testPCI)
	// DWordMemory: min, max and length of the window.
	mem := []byte{0x87, 23, 0, 0, 0x0c, 0x01, 0, 0, 0, 0}
	mem = binary.LittleEndian.AppendUint32(mem, 0xc000_0000)
	mem = binary.LittleEndian.AppendUint32(mem, 0xdfff_ffff)
	mem = binary.LittleEndian.AppendUint32(mem, 0)
	mem = binary.LittleEndian.AppendUint32(mem, 0x2000_0000)
	if !bytes.Contains(crs, mem) {
		t.Errorf("_CRS lacks the MMIO window:\n% x", crs)
	}
	if _, err := pciHostBridgeAML(&PCIHostBridge{ConfigPort: 0xcf8, MMIOBase: 0xf000_0000, MMIOSize: 0x2000_0000}); err == nil {
		t.Error("accepted a window past 4 GiB")
	}
}

// TestDSDTPCIDisassembles checks the AML with the ACPICA disassembler when
// it is installed (iasl, from acpica-tools).
func TestDSDTPCIDisassembles(t *testing.T) {
	iasl := testenv.RequireCommand(t, "iasl", "acpica-tools")
	cfg := testACPIConfig
	cfg.PCI = testPCI
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dsdt.dat"), dsdtFor(t, cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(iasl, "-p", filepath.Join(dir, "dsdt"), "-d", filepath.Join(dir, "dsdt.dat")).CombinedOutput()
	if err != nil {
		t.Fatalf("iasl: %v\n%s", err, out)
	}
	dsl, err := os.ReadFile(filepath.Join(dir, "dsdt.dsl"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(dsl)
	for _, want := range []string{
		`Device (PCI0)`, `EisaId ("PNP0A08")`, `EisaId ("PNP0A03")`, `Name (_SEG, Zero)`, `Name (_BBN, Zero)`,
		`WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,`,
		`IO (Decode16,`, `0x0CF8,`,
		`WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,`, `0x0CF7,`, `0x0D00,`,
		`DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,`,
		`0xC0000000,`, `0xDFFFFFFF,`, `0x20000000,`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("disassembly lacks %q:\n%s", want, s)
			break
		}
	}
}

// TestMCFG checks the MCFG table: present only with ECAM, one allocation
// for segment 0, buses 0-0, at the ECAM base.
func TestMCFG(t *testing.T) {
	cfg := testACPIConfig
	cfg.PCI = testPCI
	if _, ok := acpiTables(t, cfg)["MCFG"]; ok {
		t.Error("MCFG without an ECAM window")
	}
	cfg.PCI = testPCIFull
	tables := acpiTables(t, cfg)
	mcfg, ok := tables["MCFG"]
	if !ok {
		t.Fatalf("no MCFG in the XSDT (tables %v)", keys(tables))
	}
	if len(mcfg) != sdtHeaderLen+8+16 || mcfg[sdtRevision] != 1 {
		t.Fatalf("MCFG length %d revision %d, want 60 and 1", len(mcfg), mcfg[sdtRevision])
	}
	le := binary.LittleEndian
	a := mcfg[sdtHeaderLen+8:]
	if base, seg, start, end := le.Uint64(a), le.Uint16(a[8:]), a[10], a[11]; base != 0xe000_0000 || seg != 0 || start != 0 || end != 0 {
		t.Errorf("MCFG allocation base %#x segment %d buses %d-%d", base, seg, start, end)
	}
	for _, sig := range []string{"FACP", "APIC", "DSDT"} {
		if _, ok := tables[sig]; !ok {
			t.Errorf("%s missing next to MCFG", sig)
		}
	}
}

// TestDSDTPCIFull checks the parts the 64-bit window, ECAM and INTx add:
// QWordMemory in PCI0's _CRS, _PRT, and a PNP0C02 device reserving the
// ECAM window.
func TestDSDTPCIFull(t *testing.T) {
	cfg := testACPIConfig
	cfg.PCI = testPCIFull
	dsdt := acpiTables(t, cfg)["DSDT"]
	le := binary.LittleEndian
	q := []byte{0x8a, 43, 0, 0, 0x0c, 0x07}
	for _, v := range []uint64{0, 0x1_0000_0000, 0x8_ffff_ffff, 0, 0x8_0000_0000} {
		q = le.AppendUint64(q, v)
	}
	m32 := []byte{0x86, 9, 0, 1}
	m32 = le.AppendUint32(m32, 0xe000_0000)
	m32 = le.AppendUint32(m32, 1<<20)
	for _, want := range [][]byte{
		q, m32, []byte("_PRT"), []byte("ECAM"),
		{0x0c, 0x41, 0xd0, 0x0c, 0x02}, // EISAID("PNP0C02")
		// Package(){0x1FFFF, One, Zero, 18}
		{0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x01, 0x00, 0x0a, 18},
		// Package(){0x2FFFF, 3, Zero, 21}
		{0x12, 0x0c, 0x04, 0x0c, 0xff, 0xff, 0x02, 0x00, 0x0a, 0x03, 0x00, 0x0a, 21},
	} {
		if !bytes.Contains(dsdt, want) {
			t.Errorf("DSDT lacks % x", want)
		}
	}
	for _, bad := range []*PCIHostBridge{
		{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000, MMIO64Base: 0xf000_0000, MMIO64Size: 1 << 30},
		{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000, ECAMBase: 0xd000_0000},
		{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000, ECAMBase: 0xe000_1000},
		{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000, ECAMBase: 0x1_0000_0000},
		{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000, INTx: []PCIINTxRoute{{Device: 32}}},
		{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000, INTx: []PCIINTxRoute{{Device: 1, Pin: 4}}},
	} {
		if _, err := pciHostBridgeAML(bad); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

// TestACPIPCIFullDisassembles checks the DSDT and MCFG with the ACPICA
// disassembler when it is installed (iasl, from acpica-tools).
func TestACPIPCIFullDisassembles(t *testing.T) {
	iasl := testenv.RequireCommand(t, "iasl", "acpica-tools")
	cfg := testACPIConfig
	cfg.PCI = testPCIFull
	tables := acpiTables(t, cfg)
	for _, tt := range []struct {
		sig  string
		want []string
	}{
		{"DSDT", []string{
			`Device (PCI0)`, `Name (_PRT, Package (0x04)`,
			`0x0001FFFF,`, `0x0002FFFF,`,
			`QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite,`,
			`0x0000000100000000,`, `0x00000008FFFFFFFF,`, `0x0000000800000000,`,
			`Device (ECAM)`, `EisaId ("PNP0C02")`, `Memory32Fixed (ReadWrite,`, `0xE0000000,`, `0x00100000,`,
		}},
		{"MCFG", []string{`Signature : "MCFG"`, `Base Address : 00000000E0000000`, `Segment Group Number : 0000`,
			`Start Bus Number : 00`, `End Bus Number : 00`}},
	} {
		dir := t.TempDir()
		dat := filepath.Join(dir, strings.ToLower(tt.sig)+".dat")
		if err := os.WriteFile(dat, tables[tt.sig], 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(iasl, "-p", filepath.Join(dir, "out"), "-d", dat).CombinedOutput()
		if err != nil {
			t.Fatalf("iasl %s: %v\n%s", tt.sig, err, out)
		}
		dsl, err := os.ReadFile(filepath.Join(dir, "out.dsl"))
		if err != nil {
			t.Fatal(err)
		}
		// Data tables are disassembled with aligned colons; squeeze runs of
		// spaces so the wanted strings need not know the column widths.
		s := strings.Join(strings.Fields(string(dsl)), " ")
		for _, w := range tt.want {
			if !strings.Contains(s, strings.Join(strings.Fields(w), " ")) {
				t.Errorf("%s disassembly lacks %q:\n%s", tt.sig, w, dsl)
				break
			}
		}
	}
}
