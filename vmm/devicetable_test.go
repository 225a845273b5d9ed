package vmm

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/govmm/vmm/devices"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/blk"
)

// TestDeviceTable checks that every kind of device alone gets a PCI bus
// (so a new row can't be forgotten by hasPCI), that a Config asking for
// one kind configures no other, and the slot order.
func TestDeviceTable(t *testing.T) {
	only := map[string]Config{
		"virtio-blk":   {Drives: []DriveConfig{{Path: "x"}}},
		"virtio-net":   {Nets: []NetConfig{{Tap: "t0"}}},
		"virtio-vsock": {Vsock: &VsockConfig{GuestCID: 3, UDSPath: "v"}},
		"virtio-rng":   {Entropy: &EntropyConfig{}},
	}
	if hasPCI(Config{MemSize: 128 << 20}) {
		t.Error("a machine without devices gets a PCI bus")
	}
	var names []string
	for _, k := range virtioKinds {
		names = append(names, k.name)
		cfg, ok := only[k.name]
		if !ok {
			t.Errorf("%s: no test configuration for this row", k.name)
			continue
		}
		if !hasPCI(cfg) {
			t.Errorf("%s alone gets no PCI bus", k.name)
		}
		for _, other := range virtioKinds {
			if got := other.configured(&cfg); got != (other.name == k.name) {
				t.Errorf("a config with only %s: %s configured = %v", k.name, other.name, got)
			}
		}
		if k.class == 0 || k.open == nil {
			t.Errorf("%s: class %#x, open %v", k.name, k.class, k.open != nil)
		}
	}
	if got, want := fmt.Sprint(names), "[virtio-blk virtio-net virtio-vsock virtio-rng]"; got != want {
		t.Errorf("slot order %s, want %s", got, want)
	}
}

// TestAttachVirtio attaches devices without KVM (no vCPU, no ioeventfd
// until a guest maps a BAR) and checks the functions on the bus, in slot
// order with their virtio device IDs and classes, and the close order:
// each transport before its back end.
func TestAttachVirtio(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	uds := filepath.Join(dir, "v.sock")
	m := &Machine{
		cfg: Config{MemSize: 128 << 20, CPUs: 1, Drives: []DriveConfig{{ID: "d0", Path: img}},
			Vsock: &VsockConfig{GuestCID: 3, UDSPath: uds}, Entropy: &EntropyConfig{}},
		log:  slog.New(slog.DiscardHandler),
		mmio: devices.NewBus("mmio"),
	}
	st := &pciState{
		bus:    pci.NewBusWith(pci.BusConfig{MMIO: m.mmio, Mem32Start: pciMMIOStart, Mem32End: pciMMIOEnd}),
		msi:    fakeMSI{},
		drives: map[string]*blk.Block{},
	}
	m.pci = st
	if err := m.attachVirtio(st, ioEventRegistrar{}); err != nil {
		m.closePCI()
		t.Fatal(err)
	}
	for i, want := range []struct {
		typ   uint16
		class uint32
	}{{virtio.TypeBlock, pci.ClassStorageOther}, {virtio.TypeVsock, pciClassCommunicationOther}, {4, pciClassUnassigned}} {
		slot := uint32(i + 1) // slot 0 is the host bridge
		var id, class [4]byte
		st.bus.ConfigRead(0, slot, 0, pci.RegVendorID, id[:])
		st.bus.ConfigRead(0, slot, 0, pci.RegRevisionID, class[:]) // then the class code
		if dev := binary.LittleEndian.Uint16(id[2:]); binary.LittleEndian.Uint16(id[:]) != virtio.PCIVendorID || dev != 0x1040+want.typ {
			t.Errorf("slot %d: vendor:device %x, want virtio type %d", slot, id, want.typ)
		}
		if got := binary.LittleEndian.Uint32(class[:]) >> 8; got != want.class {
			t.Errorf("slot %d: class %#06x, want %#06x", slot, got, want.class)
		}
	}
	var kinds []string
	for _, c := range st.closers {
		kinds = append(kinds, fmt.Sprintf("%T", c))
	}
	if got, want := fmt.Sprint(kinds), "[*virtio.PCI *blk.Block *virtio.PCI *vsock.Device *virtio.PCI]"; got != want {
		t.Errorf("close order %s, want %s", got, want)
	}
	if m.pci.drives["d0"] == nil {
		t.Error("drive d0 is not registered for UpdateDrive")
	}
	if err := m.closePCI(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(uds); !os.IsNotExist(err) {
		t.Errorf("vsock socket left behind after close: %v", err)
	}
	b, err := blk.Open(blk.Config{ID: "after", Path: img})
	if err != nil {
		t.Fatalf("image still locked after close: %v", err)
	}
	b.Close()
}

// fakeMSI hands out MSI routes that go nowhere.
type fakeMSI struct{}

func (fakeMSI) NewMSIRoute() (pci.MSIRoute, error)  { return fakeMSI{}, nil }
func (fakeMSI) Update(uint32, uint32, uint32) error { return nil }
func (fakeMSI) Signal() error                       { return nil }
func (fakeMSI) Close() error                        { return nil }
