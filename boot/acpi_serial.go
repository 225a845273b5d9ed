package boot

import "fmt"

// ISASerialPort describes a legacy 16550 UART for the DSDT.
//
// A hardware-reduced ACPI platform has no legacy PIC, so Linux maps no ISA
// interrupts by itself: the UART's IRQ only exists once ACPI describes the
// port as a PNP0501 device with its interrupt in _CRS. Without it the 8250
// driver's request_irq fails and the console works for printk (polled) but
// not for user space (interrupt driven).
type ISASerialPort struct {
	Name string // four-character ACPI name, e.g. "COM1"
	UID  uint64
	Port uint16 // base I/O port, 8 ports
	IRQ  uint8  // ISA IRQ 0-15
}

// Small resource descriptor for an IRQ without flags (ACPI 6.5 §6.4.2.1):
// type 0x04, length 2, followed by a 16-bit mask of IRQs.
const rdIRQNoFlags = 0x22

// uartPortCount is the 16550's register span.
const uartPortCount = 8

func serialCRS(s ISASerialPort) []byte {
	mask := uint16(1) << s.IRQ
	return []byte{
		rdIOPort, rdIODecode16, byte(s.Port), byte(s.Port >> 8), byte(s.Port), byte(s.Port >> 8), 1, uartPortCount,
		rdIRQNoFlags, byte(mask), byte(mask >> 8),
		rdEndTag, 0,
	}
}

// serialAML returns Scope(\_SB) { Device(name) { _HID PNP0501, _UID, _CRS } }.
func serialAML(s ISASerialPort) ([]byte, error) {
	if len(s.Name) != amlNameSegLen {
		return nil, fmt.Errorf("serial port name %q is not four characters", s.Name)
	}
	if s.IRQ > 15 {
		return nil, fmt.Errorf("serial port %s: IRQ %d is not an ISA IRQ", s.Name, s.IRQ)
	}
	hid, err := amlEISAID("PNP0501")
	if err != nil {
		return nil, err
	}
	crs, err := amlBuffer(serialCRS(s))
	if err != nil {
		return nil, err
	}
	terms, err := amlNames([]amlNamedObject{{"_HID", hid}, {"_UID", amlInteger(s.UID)}, {"_CRS", crs}})
	if err != nil {
		return nil, err
	}
	dev, err := amlDevice(s.Name, terms...)
	if err != nil {
		return nil, err
	}
	return amlScope(`\_SB_`, dev)
}

// amlNamedObject is one Name(path, object) term.
type amlNamedObject struct {
	name string
	obj  []byte
}

// amlNames encodes a list of Name terms, as a device body needs.
func amlNames(objs []amlNamedObject) ([][]byte, error) {
	var terms [][]byte
	for _, n := range objs {
		t, err := amlName(n.name, n.obj)
		if err != nil {
			return nil, err
		}
		terms = append(terms, t)
	}
	return terms, nil
}
