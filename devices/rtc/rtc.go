// Package rtc emulates the read side of the PC's MC146818 CMOS real-time
// clock, so a guest reads the host's wall-clock time at boot instead of
// spinning on an absent chip.
package rtc

import (
	"sync"
	"time"
)

// Ports: index at 0x70, data at 0x71.
const (
	Base = 0x70
	Size = 2
)

// CMOS register indices (MC146818 datasheet).
const (
	regSeconds    = 0x00
	regMinutes    = 0x02
	regHours      = 0x04
	regWeekday    = 0x06
	regDayOfMonth = 0x07
	regMonth      = 0x08
	regYear       = 0x09
	regA          = 0x0a
	regB          = 0x0b
	regC          = 0x0c
	regD          = 0x0d
	regCentury    = 0x32

	regADivider = 0x26 // 32.768 kHz time base, 1024 Hz rate; UIP clear
	regB24Hour  = 0x02 // 24-hour mode, BCD
	regDValid   = 0x80 // VRT: CMOS contents valid

	indexMask = 0x7f // bit 7 of the index port is the NMI mask

	// CMOSSize is the number of CMOS registers, RAM and clock.
	CMOSSize = 128
)

// RTC is the device.
type RTC struct {
	mu    sync.Mutex
	index byte
	cmos  [CMOSSize]byte
	now   func() time.Time
}

// New returns an RTC reading the host's clock in UTC.
func New() *RTC { return &RTC{now: time.Now} }

func bcd(v int) byte { return byte(v/10<<4 | v%10) }

// Read implements devices.Device.
func (r *RTC) Read(offset uint64, data []byte) {
	clear(data)
	if len(data) != 1 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if offset == 0 {
		data[0] = r.index
		return
	}
	t := r.now().UTC()
	switch r.index {
	case regSeconds:
		data[0] = bcd(t.Second())
	case regMinutes:
		data[0] = bcd(t.Minute())
	case regHours:
		data[0] = bcd(t.Hour())
	case regWeekday:
		data[0] = bcd(int(t.Weekday()) + 1)
	case regDayOfMonth:
		data[0] = bcd(t.Day())
	case regMonth:
		data[0] = bcd(int(t.Month()))
	case regYear:
		data[0] = bcd(t.Year() % 100)
	case regCentury:
		data[0] = bcd(t.Year() / 100)
	case regA:
		data[0] = regADivider
	case regB:
		data[0] = regB24Hour
	case regC:
		data[0] = 0
	case regD:
		data[0] = regDValid
	default:
		data[0] = r.cmos[r.index]
	}
}

// Write implements devices.Device. Time writes are ignored: the guest can't
// set the host's clock.
func (r *RTC) Write(offset uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if offset == 0 {
		r.index = data[0] & indexMask
		return
	}
	if isRAM(r.index) {
		r.cmos[r.index] = data[0]
	}
}
