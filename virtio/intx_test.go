package virtio_test

import (
	"testing"
	"time"

	"github.com/govmm/vmm/devices/pci"
	"github.com/govmm/vmm/virtio"
	"github.com/govmm/vmm/virtio/virtiotest"
)

// waitINTx waits for the pin to be asserted.
func (r *rig) waitINTx() {
	r.t.Helper()
	select {
	case <-r.intx.up:
	case <-time.After(5 * time.Second):
		r.t.Fatal("INTx never asserted")
	}
}

// drainINTx forgets earlier assertions.
func (r *rig) drainINTx() {
	for {
		select {
		case <-r.intx.up:
		default:
			return
		}
	}
}

// intStatus returns the PCI Status register's Interrupt Status bit.
func (r *rig) intStatus() bool { return r.cfgRead(6, 2)&pci.StatusInterrupt != 0 }

// TestPCIINTx runs the transport without MSI-X (§4.1.5.3-4): used buffers
// and configuration changes set the ISR and assert INTA#, the pin stays
// asserted (a resample after EOI re-raises it) until the driver reads the
// ISR, and MSI-X, INTx Disable and a reset silence it.
func TestPCIINTx(t *testing.T) {
	r := newRig(t)
	r.noMSIX = true
	r.enumerate()
	if pin, line := r.cfgRead(0x3d, 1), r.cfgRead(0x3c, 1); pin != 1 || line != 17 || r.intx.gsi != 17 {
		t.Fatalf("Interrupt Pin %d Line %d (GSI %d), want INTA# on GSI 17 for device 1", pin, line, r.intx.gsi)
	}
	r.setup(virtio.FeatureVersion1 | 1<<3)
	cc, isr := r.capOff(1), r.capOff(3)
	if r.intx.asserted() || r.intStatus() {
		t.Fatal("pin asserted before any notification")
	}

	buf := r.drv.Alloc(64, 8)
	r.drv.Post(r.drv.Chain(virtiotest.Buf{Addr: buf, Len: 64, Write: true}))
	r.kick(true)
	r.waitINTx()
	if _, ok := r.drv.PopUsed(); !ok {
		t.Fatal("no used buffer")
	}
	// Until the ISR is read, every resample finds the pin asserted.
	for range 3 {
		if !r.intx.asserted() {
			t.Fatal("pin dropped before the ISR was read")
		}
	}
	if !r.intStatus() {
		t.Error("Interrupt Status clear while the pin is asserted")
	}
	select {
	case v := <-r.msi.signals:
		t.Fatalf("MSI-X vector %d signalled with MSI-X off", v)
	default:
	}
	if v := r.rd(isr, 1); v != 1 {
		t.Errorf("ISR %#x, want the queue bit", v)
	}
	if r.intx.asserted() || r.intStatus() {
		t.Error("pin still asserted after the ISR read")
	}

	// INTx Disable: the condition shows in Status, the pin stays quiet.
	r.cfgWrite(4, 2, pci.CommandMemory|pci.CommandBusMaster|pci.CommandINTxDisable)
	before := r.intx.count()
	r.drv.Post(r.drv.Chain(virtiotest.Buf{Addr: buf, Len: 8, Write: true}))
	r.kick(true)
	if r.intx.asserted() || r.intx.count() != before || !r.intStatus() {
		t.Errorf("INTx disabled: asserted %v, %d assertions, status %v", r.intx.asserted(), r.intx.count()-before, r.intStatus())
	}
	r.drainINTx()
	r.cfgWrite(4, 2, pci.CommandMemory|pci.CommandBusMaster)
	r.waitINTx()
	if !r.intx.asserted() {
		t.Error("pin not asserted once INTx is enabled again")
	}

	// MSI-X turned on with the ISR still set: the pin goes quiet.
	r.cfgWrite(uint32(r.msix)+2, 2, 0x8000)
	if r.intx.asserted() || r.intStatus() {
		t.Error("pin asserted with MSI-X enabled")
	}
	r.cfgWrite(uint32(r.msix)+2, 2, 0)
	if !r.intx.asserted() {
		t.Error("pin not asserted again with MSI-X off and the ISR set")
	}
	r.drv.PopUsed()
	r.rd(isr, 1)

	// A device failure: DEVICE_NEEDS_RESET, ISR bit 1, the pin.
	r.drainINTx()
	r.drv.PutDesc(r.drv.Desc, 5, 0xdead_0000, 16, 0, 0)
	r.drv.Post(5)
	r.kick(false)
	r.waitINTx()
	if st := r.rd(cc+ccStatus, 1); st&virtio.StatusDeviceNeedsReset == 0 {
		t.Fatalf("status %#x, want DEVICE_NEEDS_RESET", st)
	}
	// A reset clears the ISR, which deasserts the pin.
	r.wr(cc+ccStatus, 1, 0)
	if r.intx.asserted() || r.rd(isr, 1) != 0 {
		t.Error("pin or ISR still set after reset")
	}
}
