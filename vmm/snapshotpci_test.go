package vmm

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/govmm/vmm/devices"
	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio/blk"
)

// pciTestMachine is a machine with a bus and no KVM, as TestAttachVirtio
// builds it.
func pciTestMachine(cfg Config) (*Machine, *pciState) {
	m := &Machine{cfg: cfg, log: slog.New(slog.DiscardHandler), mmio: devices.NewBus("mmio")}
	st := &pciState{
		bus:    pci.NewBusWith(pci.BusConfig{MMIO: m.mmio, Mem32Start: pciMMIOStart, Mem32End: pciMMIOEnd}),
		msi:    fakeMSI{},
		drives: map[string]*blk.Block{},
	}
	m.pci = st
	return m, st
}

// TestPCISnapshotRoundTrip saves the bus and its functions after the
// "guest" programmed them (a BAR moved, Interrupt Line, the address
// register), through JSON, and restores them into a machine built with a
// vsock override: the same functions in the same slots, the same
// configuration space, the new socket.
func TestPCISnapshotRoundTrip(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{MemSize: 128 << 20, CPUs: 1, Drives: []DriveConfig{{ID: "d0", Path: img}},
		Vsock: &VsockConfig{ID: "v", GuestCID: 3, UDSPath: filepath.Join(dir, "a.sock")}, Entropy: &EntropyConfig{}}
	m, st := pciTestMachine(cfg)
	if err := m.attachVirtio(st, ioEventRegistrar{}); err != nil {
		m.closePCI()
		t.Fatal(err)
	}
	// What a driver leaves behind: BAR 0 of slot 1 moved (memory decoding
	// stays off: no KVM here to take the ioeventfds), Interrupt Line, and
	// the address register pointing at slot 2.
	st.bus.ConfigWrite(0, 1, 0, 0x10, []byte{0x00, 0x00, 0x10, 0xc1})
	st.bus.ConfigWrite(0, 1, 0, 0x3c, []byte{11})
	st.bus.AddressPort().Write(0, []byte{0x00, 0x10, 0x00, 0x80})
	snap, err := m.savePCI()
	if err != nil {
		m.closePCI()
		t.Fatal(err)
	}
	var want [3][pci.ConfigSize]byte
	for slot := 1; slot <= 3; slot++ {
		st.bus.ConfigRead(0, uint32(slot), 0, 0, want[slot-1][:])
	}
	if err := m.closePCI(); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var back pciSnapshot
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if n := len(back.Functions); n != 3 {
		t.Fatalf("%d functions saved, want 3", n)
	}

	// The clone gets its own copy of the disk (drive_overrides) and its
	// own socket (vsock_override).
	clone := filepath.Join(dir, "clone.img")
	if err := os.WriteFile(clone, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg2 := cfg
	cfg2.Drives = []DriveConfig{{ID: "d0", Path: clone}}
	cfg2.Vsock = &VsockConfig{ID: "v", GuestCID: 3, UDSPath: filepath.Join(dir, "b.sock")}
	m2, st2 := pciTestMachine(cfg2)
	defer m2.closePCI()
	if err := m2.restoreFunctions(st2, ioEventRegistrar{}, &back); err != nil {
		t.Fatal(err)
	}
	for slot := 1; slot <= 3; slot++ {
		var got [pci.ConfigSize]byte
		st2.bus.ConfigRead(0, uint32(slot), 0, 0, got[:])
		if got != want[slot-1] {
			t.Errorf("slot %d: restored configuration space differs from the saved one", slot)
		}
	}
	addr := make([]byte, 4)
	st2.bus.AddressPort().Read(0, addr)
	if addr[1] != 0x10 || addr[3] != 0x80 {
		t.Errorf("address register % x after restore", addr)
	}
	if _, err := os.Stat(cfg2.Vsock.UDSPath); err != nil {
		t.Errorf("vsock override: %v", err)
	}
	if d := st2.drives["d0"]; d == nil {
		t.Error("restored drive not registered for UpdateDrive")
	} else if d.Path() != clone {
		t.Errorf("restored drive serves %s, want the override %s", d.Path(), clone)
	}
}

// TestPCISnapshotRefused: a snapshot this build can't take back is
// refused with the reason, not half-restored.
func TestPCISnapshotRefused(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{MemSize: 128 << 20, CPUs: 1, Drives: []DriveConfig{{ID: "d0", Path: img}}}
	m, st := pciTestMachine(cfg)
	if err := m.attachVirtio(st, ioEventRegistrar{}); err != nil {
		m.closePCI()
		t.Fatal(err)
	}
	snap, err := m.savePCI()
	m.closePCI()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(s *pciSnapshot)
		want string
	}{
		{"unknown kind", func(s *pciSnapshot) { s.Functions[0].Kind = "virtio-gpu" }, "does not have"},
		{"no device state", func(s *pciSnapshot) { s.Functions[0].Blk = nil }, "no device state"},
		{"other slot", func(s *pciSnapshot) { s.Functions[0].Slot = 5 }, "saved in slot 5"},
		{"image shrank", func(s *pciSnapshot) { b := *s.Functions[0].Blk; b.Sectors++; s.Functions[0].Blk = &b }, "the guest was told 2049"},
		{"reserved address bits", func(s *pciSnapshot) { s.Bus.ConfigAddress = 3 }, "reserved"},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw, _ := json.Marshal(snap)
			var s pciSnapshot
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}
			c.edit(&s)
			m2, st2 := pciTestMachine(cfg)
			defer m2.closePCI()
			err := m2.restoreFunctions(st2, ioEventRegistrar{}, &s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("restore: %v, want an error with %q", err, c.want)
			}
		})
	}
}
