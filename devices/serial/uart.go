// Package serial emulates a 16550A UART (the PC's COM ports) well enough for
// Linux's 8250 driver to use it with interrupts in both directions: received
// bytes raise "data available", and the transmitter, which empties at once,
// raises "THR empty" after every write.
package serial

import (
	"io"
	"sync"

	"github.com/govmm/vmm/devices"
)

// Register offsets from the port base (16550A datasheet, "Register
// Summary"). Offsets 0 and 1 are the divisor latch when LCR.DLAB is set.
const (
	RBR = 0 // receive buffer (read)
	THR = 0 // transmit holding (write)
	IER = 1 // interrupt enable
	IIR = 2 // interrupt identification (read)
	FCR = 2 // FIFO control (write)
	LCR = 3 // line control
	MCR = 4 // modem control
	LSR = 5 // line status
	MSR = 6 // modem status
	SCR = 7 // scratch
	DLL = 0 // divisor latch low (DLAB=1)
	DLM = 1 // divisor latch high (DLAB=1)

	// PortCount is the number of I/O ports a UART occupies.
	PortCount = 8
)

// Register bits.
const (
	ierRDA  = 0x01 // received data available
	ierTHRE = 0x02 // transmitter holding register empty
	ierRLS  = 0x04 // receiver line status
	ierMS   = 0x08 // modem status
	ierMask = 0x0f

	iirNone    = 0x01 // no interrupt pending
	iirTHRE    = 0x02
	iirRDA     = 0x04
	iirFIFOsOn = 0xc0 // both FIFO-enabled bits (16550A)

	fcrEnable  = 0x01
	fcrClearRX = 0x02

	lcrDLAB = 0x80

	mcrDTR      = 0x01
	mcrRTS      = 0x02
	mcrOUT1     = 0x04
	mcrOUT2     = 0x08
	mcrLoopback = 0x10
	mcrMask     = 0x1f // bits 5-7 read as zero on a 16550A

	lsrDR   = 0x01 // data ready
	lsrTHRE = 0x20 // THR empty
	lsrTEMT = 0x40 // transmitter empty

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80

	// rxCapacity bounds buffered input; a writer to Input blocks beyond it
	// rather than dropping characters.
	rxCapacity = 4096
)

// UART is one 16550A. It implements devices.Device.
type UART struct {
	mu      sync.Mutex
	rxSpace *sync.Cond // signalled when the guest drains RX or on Close
	irq     devices.Interrupt
	out     *asyncWriter

	ier, lcr, mcr, scr, fcr byte
	dll, dlm                byte
	rx                      []byte
	threPending             bool // THRE interrupt latched, cleared by reading IIR or writing THR
	irqHigh                 bool
	closed                  bool
}

// New returns a UART that sends guest output to out (through a buffer, so
// a slow terminal never stalls a vCPU for long) and signals irq.
func New(irq devices.Interrupt, out io.Writer) *UART {
	u := &UART{irq: irq, mcr: mcrOUT2, dll: 12 /* 9600 baud */}
	u.rxSpace = sync.NewCond(&u.mu)
	if out != nil {
		u.out = newAsyncWriter(out)
	}
	return u
}

// Close stops output (after flushing it) and releases blocked input writers.
func (u *UART) Close() error {
	u.mu.Lock()
	u.closed = true
	u.rxSpace.Broadcast()
	u.mu.Unlock()
	if u.out != nil {
		return u.out.Close()
	}
	return nil
}

// Flush waits until buffered output reached the writer.
func (u *UART) Flush() {
	if u.out != nil {
		u.out.Flush()
	}
}

// QueueInput queues host input for the guest, blocking while the receive buffer
// is full. It returns io.ErrClosedPipe once the UART is closed.
func (u *UART) QueueInput(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for len(p) > 0 {
		for !u.closed && len(u.rx) >= rxCapacity {
			u.rxSpace.Wait()
		}
		if u.closed {
			return n, io.ErrClosedPipe
		}
		k := min(len(p), rxCapacity-len(u.rx))
		u.rx = append(u.rx, p[:k]...)
		p = p[k:]
		n += k
		u.updateIRQ()
	}
	return n, nil
}

// Input returns an io.Writer view of QueueInput.
func (u *UART) Input() io.Writer { return inputWriter{u} }

type inputWriter struct{ u *UART }

func (w inputWriter) Write(p []byte) (int, error) { return w.u.QueueInput(p) }

// Read implements devices.Device.
func (u *UART) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) != 1 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	data[0] = u.readReg(offset)
}

// Write implements devices.Device.
func (u *UART) Write(offset uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	u.mu.Lock()
	out := u.writeReg(offset, data[0])
	u.mu.Unlock()
	if out >= 0 && u.out != nil {
		u.out.put(byte(out))
	}
}

func (u *UART) dlab() bool { return u.lcr&lcrDLAB != 0 }

func (u *UART) readReg(offset uint64) byte {
	switch offset {
	case RBR:
		if u.dlab() {
			return u.dll
		}
		if len(u.rx) == 0 {
			return 0
		}
		b := u.rx[0]
		u.rx = u.rx[1:]
		if len(u.rx) == 0 {
			u.rx = nil // let the backing array go
		}
		u.rxSpace.Broadcast()
		u.updateIRQ()
		return b
	case IER:
		if u.dlab() {
			return u.dlm
		}
		return u.ier
	case IIR:
		v := u.iir()
		// Reading IIR while THRE is the reported source clears it (16550A).
		if v&0x0f == iirTHRE {
			u.threPending = false
			u.updateIRQ()
		}
		if u.fcr&fcrEnable != 0 {
			v |= iirFIFOsOn
		}
		return v
	case LCR:
		return u.lcr
	case MCR:
		return u.mcr
	case LSR:
		v := byte(lsrTHRE | lsrTEMT)
		if len(u.rx) > 0 {
			v |= lsrDR
		}
		return v
	case MSR:
		if u.mcr&mcrLoopback != 0 {
			// In loopback the modem outputs feed the modem inputs; Linux's
			// 8250 probe checks exactly this mapping.
			var v byte
			if u.mcr&mcrDTR != 0 {
				v |= msrDSR
			}
			if u.mcr&mcrRTS != 0 {
				v |= msrCTS
			}
			if u.mcr&mcrOUT1 != 0 {
				v |= msrRI
			}
			if u.mcr&mcrOUT2 != 0 {
				v |= msrDCD
			}
			return v
		}
		return msrDCD | msrDSR | msrCTS
	case SCR:
		return u.scr
	}
	return 0
}

// writeReg returns the byte to transmit, or -1.
func (u *UART) writeReg(offset uint64, v byte) int {
	switch offset {
	case THR:
		if u.dlab() {
			u.dll = v
			return -1
		}
		if u.mcr&mcrLoopback != 0 {
			if len(u.rx) < rxCapacity {
				u.rx = append(u.rx, v)
			}
			u.updateIRQ()
			return -1
		}
		// The byte leaves at once, so THR is empty again: drop the line and
		// raise it again so an edge-triggered controller sees a new edge.
		u.threPending = false
		u.updateIRQ()
		u.threPending = true
		u.updateIRQ()
		return int(v)
	case IER:
		if u.dlab() {
			u.dlm = v
			return -1
		}
		old := u.ier
		u.ier = v & ierMask
		// Enabling the THRE interrupt with THR empty raises it at once.
		if u.ier&ierTHRE != 0 && old&ierTHRE == 0 {
			u.threPending = true
		}
		u.updateIRQ()
	case FCR:
		u.fcr = v
		if v&fcrClearRX != 0 {
			u.rx = nil
			u.rxSpace.Broadcast()
			u.updateIRQ()
		}
	case LCR:
		u.lcr = v
	case MCR:
		u.mcr = v & mcrMask
	case SCR:
		u.scr = v
	}
	return -1
}

// iir returns the highest-priority pending interrupt (16550A: line status >
// received data > THR empty > modem status).
func (u *UART) iir() byte { return interruptSource(u.ier, len(u.rx) > 0, u.threPending) }

// interruptSource is IIR's source field for the given interrupt enables,
// received data and latched THR-empty interrupt.
func interruptSource(ier byte, dataReady, threPending bool) byte {
	if ier&ierRDA != 0 && dataReady {
		return iirRDA
	}
	if ier&ierTHRE != 0 && threPending {
		return iirTHRE
	}
	return iirNone
}

func (u *UART) updateIRQ() {
	high := u.iir() != iirNone
	if high == u.irqHigh || u.irq == nil {
		u.irqHigh = high
		return
	}
	u.irqHigh = high
	// A failed injection can only mean the VM is being torn down.
	_ = u.irq.SetLevel(high)
}
