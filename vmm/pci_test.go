package vmm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/boot"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/memory"
	"github.com/govmm/vmm/virtio/blk"
)

func TestWithDriveRoot(t *testing.T) {
	for _, tt := range []struct {
		cmdline string
		drives  []DriveConfig
		want    string
	}{
		{"console=ttyS0", nil, "console=ttyS0"},
		{"console=ttyS0", []DriveConfig{{Path: "a"}, {Path: "b", Root: true}}, "console=ttyS0 root=/dev/vdb rw"},
		{"console=ttyS0", []DriveConfig{{Path: "a", Root: true, ReadOnly: true, PartUUID: "1234-01"}}, "console=ttyS0 root=PARTUUID=1234-01 ro"},
		{"root=/dev/sda1", []DriveConfig{{Path: "a", Root: true}}, "root=/dev/sda1"},
	} {
		if got := withDriveRoot(tt.cmdline, tt.drives); got != tt.want {
			t.Errorf("withDriveRoot(%q, %+v) = %q, want %q", tt.cmdline, tt.drives, got, tt.want)
		}
	}
}

// TestMachineWithDisk runs the test guest's virtio-blk test in-process and
// checks that Close stops the device and releases the image lock.
func TestMachineWithDisk(t *testing.T) {
	dir := buildTestGuest(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &syncBuf{}
	m, err := New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 2,
		Cmdline: "blk=1 exit=4", DebugExit: true, ConsoleOut: out,
		Drives: []DriveConfig{{ID: "d0", Path: img}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The image is locked while the machine exists.
	if _, err := blk.Open(blk.Config{ID: "other", Path: img}); err == nil || !strings.Contains(err.Error(), "in use by another VM") {
		t.Errorf("second open while the machine holds the image: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := m.Run(ctx)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if e.Kind != ExitDebugPort || e.Status != 4 {
		t.Fatalf("exit %+v\n%s", e, out.String())
	}
	for _, want := range []string{"testguest: blk read ok", "testguest: blk write ok", "testguest: blk flush ok", "testguest: blk irq ok"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out.String())
		}
	}
	b, err := blk.Open(blk.Config{ID: "after", Path: img})
	if err != nil {
		t.Fatalf("image still locked after Close: %v", err)
	}
	b.Close()

	// A missing image fails New with the path in the error.
	_, err = New(Config{
		Kernel: filepath.Join(dir, "testguest.elf"), MemSize: 64 << 20, CPUs: 1,
		Drives: []DriveConfig{{Path: filepath.Join(t.TempDir(), "missing.img")}},
	}, nil)
	if err == nil || !strings.Contains(err.Error(), "missing.img") || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("New with a missing image: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// TestPCIACPI checks what the firmware tables say about PCI against the
// bus: windows that clash with neither RAM nor each other, the ECAM
// window reserved in e820, and a _PRT that is the bus's own routing.
func TestPCIACPI(t *testing.T) {
	if pciACPI(Config{MemSize: 128 << 20}) != nil || pciReserved(Config{MemSize: 128 << 20}) != nil {
		t.Error("PCI described without PCI devices")
	}
	for _, mem := range []uint64{128 << 20, 3 << 30, 6<<30 + 4096} {
		cfg := Config{MemSize: mem, Drives: []DriveConfig{{Path: "x"}}}
		h := pciACPI(cfg)
		if h.ECAMBase != pciECAMBase || h.ECAMBase < uint64(h.MMIOBase)+uint64(h.MMIOSize) || h.ECAMBase+pci.ECAMBusSize > boot.IOAPICAddr {
			t.Errorf("mem %#x: ECAM at %#x, 32-bit window %#x+%#x", mem, h.ECAMBase, h.MMIOBase, h.MMIOSize)
		}
		res := pciReserved(cfg)
		if len(res) != 1 || res[0] != (boot.E820Entry{Addr: pciECAMBase, Size: 1 << 20, Type: boot.E820Reserved}) {
			t.Errorf("mem %#x: reserved %+v", mem, res)
		}
		for _, e := range boot.E820Map(mem, res...) {
			if e.Addr+e.Size > h.MMIO64Base {
				t.Errorf("mem %#x: e820 %+v reaches the 64-bit window at %#x", mem, e, h.MMIO64Base)
			}
			if e.Type == boot.E820RAM && e.Addr < h.ECAMBase+pci.ECAMBusSize && e.Addr+e.Size > h.ECAMBase {
				t.Errorf("mem %#x: RAM %+v overlaps ECAM", mem, e)
			}
		}
		if h.MMIO64Base < 1<<32 || h.MMIO64Base%(1<<30) != 0 || h.MMIO64Base+h.MMIO64Size > 1<<36 {
			t.Errorf("mem %#x: 64-bit window %#x+%#x", mem, h.MMIO64Base, h.MMIO64Size)
		}
		if len(h.INTx) != 31*4 {
			t.Fatalf("%d _PRT entries, want 124", len(h.INTx))
		}
		for _, r := range h.INTx {
			if want := pciINTxRouting.GSI(int(r.Device), int(r.Pin)+1); r.GSI != want || r.GSI < 16 || r.GSI > 23 {
				t.Errorf("_PRT device %d pin %d -> GSI %d, bus routes it to %d", r.Device, r.Pin, r.GSI, want)
			}
		}
		if _, err := boot.WriteACPITables(acpiGuest(t), boot.ACPIConfig{NumCPUs: 1, PCI: h}); err != nil {
			t.Errorf("mem %#x: ACPI tables: %v", mem, err)
		}
	}
}

// acpiGuest returns a small guest memory holding the ACPI area.
func acpiGuest(t *testing.T) *memory.Guest {
	t.Helper()
	g, err := memory.New([]memory.Layout{{GuestAddr: 0, Size: 2 << 20}}, memory.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}
