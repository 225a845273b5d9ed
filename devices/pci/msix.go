package pci

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// MSI-X capability layout (§6.8.2): after ID and next pointer come Message
// Control (u16), Table Offset/BIR (u32) and PBA Offset/BIR (u32).
const (
	msixControl        = 2
	msixTableOffset    = 4
	msixPBAOffset      = 8
	msixCapBodyLen     = 10 // bytes after ID and next pointer
	msixControlEnable  = 1 << 15
	msixControlMaskAll = 1 << 14
	// MSIXEntrySize is the size of one table entry: Message Address,
	// Message Upper Address, Message Data, Vector Control (§6.8.2.6-9).
	MSIXEntrySize    = 16
	msixVectorMasked = 1 << 0
	// MaxMSIXVectors is the architectural limit (table size field + 1).
	MaxMSIXVectors = 2048
)

// MSIRoute delivers one MSI message to the guest. The machine implements it
// with a GSI routed to the message and an eventfd bound to that GSI by
// irqfd, so Signal never needs a vCPU.
type MSIRoute interface {
	// Update points the route at a new message.
	Update(addrLo, addrHi, data uint32) error
	// Signal sends the message.
	Signal() error
	Close() error
}

// MSIAllocator makes MSI routes, one per vector.
type MSIAllocator interface {
	NewMSIRoute() (MSIRoute, error)
}

type msixEntry struct {
	addrLo, addrHi, data, control uint32
	dirty                         bool // message changed since the route was programmed
}

// MSIX is a function's MSI-X capability with its table and pending-bit
// array, which live in one of the function's memory BARs.
type MSIX struct {
	cfg     *ConfigSpace
	capOff  int
	mu      sync.Mutex
	entries []msixEntry
	pending []uint64 // PBA, one bit per vector
	routes  []MSIRoute
	enabled bool
	maskAll bool
	errs    func(error)
}

// AddMSIX adds an MSI-X capability with n vectors to cfg. The table lives
// at tableOff and the PBA at pbaOff inside BAR bar; the function's BAR
// handler forwards accesses there to ReadTable/WriteTable/ReadPBA. onErr
// receives failures to program or signal a route (it may be nil).
func AddMSIX(cfg *ConfigSpace, bar int, tableOff, pbaOff uint64, n int, alloc MSIAllocator, onErr func(error)) (*MSIX, error) {
	if n < 1 || n > MaxMSIXVectors {
		return nil, fmt.Errorf("pci %s: %d MSI-X vectors is outside 1..%d", cfg.name, n, MaxMSIXVectors)
	}
	if tableOff%8 != 0 || pbaOff%8 != 0 {
		return nil, fmt.Errorf("pci %s: MSI-X table and PBA must be 8-byte aligned", cfg.name)
	}
	body := make([]byte, msixCapBodyLen)
	le := binary.LittleEndian
	le.PutUint16(body[0:], uint16(n-1))
	le.PutUint32(body[2:], uint32(tableOff)|uint32(bar))
	le.PutUint32(body[6:], uint32(pbaOff)|uint32(bar))
	writable := make([]byte, msixCapBodyLen)
	writable[1] = (msixControlEnable | msixControlMaskAll) >> 8
	off, err := cfg.AddCapability(CapMSIX, body, writable)
	if err != nil {
		return nil, err
	}
	m := &MSIX{cfg: cfg, capOff: off, entries: make([]msixEntry, n), pending: make([]uint64, (n+63)/64), errs: onErr}
	for i := range m.entries {
		// Every vector starts masked (§6.8.2.9).
		m.entries[i].control = msixVectorMasked
	}
	for range n {
		r, err := alloc.NewMSIRoute()
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("pci %s: MSI-X route: %w", cfg.name, err)
		}
		m.routes = append(m.routes, r)
	}
	cfg.OnWrite(off+msixControl, 2, m.controlWritten)
	cfg.msix = m
	return m, nil
}

// Vectors returns the table size.
func (m *MSIX) Vectors() int { return len(m.entries) }

// Enabled reports whether the guest turned MSI-X on.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enabled
}

// controlWritten runs under the config lock after Message Control changed.
// With MSI-X on, the function's INTx# pin is quiet (§6.8.2).
func (m *MSIX) controlWritten() {
	ctl := m.cfg.Uint16Locked(m.capOff + msixControl)
	m.mu.Lock()
	m.enabled = ctl&msixControlEnable != 0
	m.maskAll = ctl&msixControlMaskAll != 0
	for i := range m.entries {
		m.deliverPendingLocked(i)
	}
	enabled := m.enabled
	m.mu.Unlock()
	if m.cfg.msixOn.Swap(enabled) != enabled && m.cfg.intx != nil {
		m.cfg.intx.msixChanged()
	}
}

// Close releases the routes.
func (m *MSIX) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first error
	for _, r := range m.routes {
		if err := r.Close(); err != nil && first == nil {
			first = err
		}
	}
	m.routes = nil
	return first
}

func (m *MSIX) maskedLocked(i int) bool {
	return !m.enabled || m.maskAll || m.entries[i].control&msixVectorMasked != 0
}

func (m *MSIX) report(err error) {
	if err != nil && m.errs != nil {
		m.errs(err)
	}
}

// fireLocked programs the route if the message changed, then signals it.
func (m *MSIX) fireLocked(i int) {
	if i >= len(m.routes) {
		return
	}
	e := &m.entries[i]
	if e.dirty {
		if err := m.routes[i].Update(e.addrLo, e.addrHi, e.data); err != nil {
			m.report(fmt.Errorf("pci %s: MSI-X vector %d: %w", m.cfg.name, i, err))
			return
		}
		e.dirty = false
	}
	m.report(m.routes[i].Signal())
}

// deliverPendingLocked sends vector i if it is pending and now unmasked.
func (m *MSIX) deliverPendingLocked(i int) {
	if m.pending[i/64]&(1<<(i%64)) == 0 || m.maskedLocked(i) {
		return
	}
	m.pending[i/64] &^= 1 << (i % 64)
	m.fireLocked(i)
}

// Notify raises vector vec: sent now if unmasked, else remembered in the
// PBA and sent on unmask (§6.8.2.10). An out-of-range vector is ignored.
func (m *MSIX) Notify(vec uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := int(vec)
	if i >= len(m.entries) {
		return
	}
	if m.maskedLocked(i) {
		m.pending[i/64] |= 1 << (i % 64)
		return
	}
	m.fireLocked(i)
}

// ReadTable serves a guest read at off inside the table.
func (m *MSIX) ReadTable(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var buf [8]byte
	for i := range data {
		o := off + uint64(i)
		idx := o / MSIXEntrySize
		if idx >= uint64(len(m.entries)) {
			data[i] = 0xff
			continue
		}
		e := &m.entries[idx]
		field := (o % MSIXEntrySize) / 4
		v := [4]uint32{e.addrLo, e.addrHi, e.data, e.control}[field]
		binary.LittleEndian.PutUint32(buf[:], v)
		data[i] = buf[o%4]
	}
}

// WriteTable serves a guest write at off inside the table.
func (m *MSIX) WriteTable(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	touched := map[uint64]bool{}
	for i := range data {
		o := off + uint64(i)
		idx := o / MSIXEntrySize
		if idx >= uint64(len(m.entries)) {
			continue
		}
		e := &m.entries[idx]
		shift := 8 * (o % 4)
		set := func(p *uint32) { *p = *p&^(0xff<<shift) | uint32(data[i])<<shift }
		switch (o % MSIXEntrySize) / 4 {
		case 0:
			set(&e.addrLo)
			e.dirty = true
		case 1:
			set(&e.addrHi)
			e.dirty = true
		case 2:
			set(&e.data)
			e.dirty = true
		case 3:
			set(&e.control)
			// Only the mask bit is defined; the rest is reserved.
			e.control &= msixVectorMasked
		}
		touched[idx] = true
	}
	for idx := range touched {
		m.deliverPendingLocked(int(idx))
	}
}

// ReadPBA serves a guest read at off inside the pending-bit array.
func (m *MSIX) ReadPBA(off uint64, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		w := o / 8
		if w >= uint64(len(m.pending)) {
			data[i] = 0
			continue
		}
		data[i] = byte(m.pending[w] >> (8 * (o % 8)))
	}
}

// TableSize returns the table's size in bytes.
func (m *MSIX) TableSize() uint64 { return uint64(len(m.entries)) * MSIXEntrySize }

// PBASize returns the PBA's size in bytes (whole qwords, §6.8.2.10).
func (m *MSIX) PBASize() uint64 { return uint64(len(m.pending)) * 8 }
