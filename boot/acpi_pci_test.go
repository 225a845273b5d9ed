package boot

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var testPCI = &PCIHostBridge{ConfigPort: 0xcf8, MMIOBase: 0xc000_0000, MMIOSize: 0x2000_0000}

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
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		t.Skip("iasl (acpica-tools) not installed")
	}
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
