package vmm

import (
	"github.com/govmm/vmm/devices/debugexit"
	"github.com/govmm/vmm/devices/i8042"
	"github.com/govmm/vmm/devices/rtc"
)

// The machine's fixed I/O port map. The ACPI tables and the boot code
// describe the same numbers to the guest.
const (
	com1Port  = 0x3f8 // first PC serial port
	com1IRQ   = 4     // its ISA interrupt
	pmPort    = 0x600 // ACPI sleep control/status and reset registers
	postPort  = 0x80  // POST diagnostic port, used by Linux for I/O delays
	postSize  = 1
	i8042Data = i8042.DataPort
	i8042Cmd  = i8042.CommandPort
	rtcPort   = rtc.Base
	exitPort  = debugexit.DefaultPort
)

// Guest-physical addresses Intel VT reserves inside the 32-bit MMIO hole for
// real-mode emulation (KVM_SET_TSS_ADDR takes three pages, the identity map
// one), below the IOAPIC and out of the way of the PCI window.
const (
	identityMapAddr = 0xfeffc000
	tssAddr         = 0xfeffd000
)
