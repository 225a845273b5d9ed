package boot

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/internal/testenv"
)

func TestSerialAML(t *testing.T) {
	com1 := ISASerialPort{Name: "COM1", UID: 1, Port: 0x3f8, IRQ: 4}
	crs := serialCRS(com1)
	want := []byte{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00}
	if string(crs) != string(want) {
		t.Fatalf("_CRS = % x, want % x", crs, want)
	}
	tests := []struct {
		name string
		port ISASerialPort
	}{
		{"long name", ISASerialPort{Name: "SERIAL", Port: 0x3f8, IRQ: 4}},
		{"not ISA IRQ", ISASerialPort{Name: "COM1", Port: 0x3f8, IRQ: 16}},
	}
	for _, tt := range tests {
		if _, err := serialAML(tt.port); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
	cfg := testACPIConfig
	cfg.Serial = []ISASerialPort{com1}
	iasl := testenv.RequireCommand(t, "iasl", "acpica-tools")
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
	for _, want := range []string{`Device (COM1)`, `EisaId ("PNP0501")`, `0x03F8,`, `IRQNoFlags ()`, `{4}`} {
		if !strings.Contains(string(dsl), want) {
			t.Errorf("disassembly lacks %q:\n%s", want, dsl)
			break
		}
	}
}
