package boot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/govmm/vmm/memory"
)

// Control register and EFER bits (Intel SDM Vol. 3A §2.5 "Control
// Registers", §2.2.1 "Extended Feature Enable Register").
const (
	CR0PE = 1 << 0  // protection enable
	CR0MP = 1 << 1  // monitor coprocessor
	CR0ET = 1 << 4  // extension type (hard-wired to 1)
	CR0NE = 1 << 5  // numeric error
	CR0PG = 1 << 31 // paging

	CR4PAE = 1 << 5 // physical address extension

	EFERLME = 1 << 8  // IA-32e mode enable
	EFERLMA = 1 << 10 // IA-32e mode active

	// rflagsReserved is RFLAGS bit 1, which always reads as 1 (SDM Vol. 1
	// §3.4.3); IF (bit 9) stays clear as both protocols require.
	rflagsReserved = 1 << 1
)

// GDT layout. Linux's 64-bit boot protocol requires __BOOT_CS = 0x10 and
// __BOOT_DS = 0x18 (boot.rst, "64-bit Boot Protocol"); PVH leaves selectors
// unspecified (Xen docs/misc/pvh.pandoc), so both use the same table.
const (
	gdtCodeIndex = 2
	gdtDataIndex = 3
	gdtTSSIndex  = 4 // 16-byte system descriptor in long mode: slots 4 and 5
	gdtEntries   = 6
	gdtEntrySize = 8

	BootCSSelector = gdtCodeIndex * gdtEntrySize // 0x10
	BootDSSelector = gdtDataIndex * gdtEntrySize // 0x18
	BootTRSelector = gdtTSSIndex * gdtEntrySize  // 0x20
)

// Segment descriptor types (SDM Vol. 3A §3.4.5.1 Table 3-1 for code/data,
// S=1; Table 3-2 for system descriptors, S=0).
const (
	segTypeDataRWA = 0x3  // read/write, accessed
	segTypeCodeXRA = 0xB  // execute/read, accessed
	segTypeTSSBusy = 0xB  // 32-bit TSS (busy); in IA-32e mode: 64-bit TSS (busy)
	tssLimit       = 0x67 // minimal TSS: 104 bytes (SDM Vol. 3A §8.2.1 / §8.7)
	flatLimit      = 0xFFFFFFFF
)

// Page table bits (SDM Vol. 3A §4.5, Tables 4-14/4-15/4-17).
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	ptePageSize = 1 << 7 // PS: the PDE maps a 2 MiB page
	pageSize2M  = 2 << 20
	ptEntries   = 512
	numPDs      = 4 // four page directories map 4 GiB
)

// Segment is a segment register as KVM's struct kvm_segment describes it.
// Limit is byte-granular: a flat 4 GiB segment has Limit 0xFFFFFFFF with
// G=1 (the descriptor in the GDT holds 0xFFFFF in 4 KiB units); a TSS has
// Limit 0x67 with G=0. Type, S, DPL, Present, AVL, L, DB and G are the
// descriptor fields of the same names.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
}

// CPUState is the boot CPU's initial register state. DS is to be loaded
// into DS, ES, FS, GS and SS.
type CPUState struct {
	RIP, RSP, RFLAGS, RSI, RBX uint64
	CR0, CR3, CR4, EFER        uint64
	CS, DS, TR                 Segment
	GDTBase                    uint64
	GDTLimit                   uint16
	IDTBase                    uint64
	IDTLimit                   uint16
}

// descriptor encodes s as an 8-byte GDT entry (SDM Vol. 3A §3.4.5 Figure
// 3-8). The limit is stored in 4 KiB units when G=1.
func (s Segment) descriptor() uint64 {
	limit := uint64(s.Limit)
	if s.G != 0 {
		limit >>= 12
	}
	d := limit & 0xFFFF
	d |= (s.Base & 0xFFFFFF) << 16
	d |= uint64(s.Type&0xF) << 40
	d |= uint64(s.S&1) << 44
	d |= uint64(s.DPL&3) << 45
	d |= uint64(s.Present&1) << 47
	d |= (limit >> 16 & 0xF) << 48
	d |= uint64(s.AVL&1) << 52
	d |= uint64(s.L&1) << 53
	d |= uint64(s.DB&1) << 54
	d |= uint64(s.G&1) << 55
	d |= (s.Base >> 24 & 0xFF) << 56
	return d
}

// SetupCPU writes the GDT (and, for Linux64, the identity-mapping page
// tables) and returns the initial register state for entering k with arg
// (the value returned by WriteBootParams).
func SetupCPU(mem *memory.Guest, k *Kernel, arg uint64) (*CPUState, error) {
	if k == nil {
		return nil, errors.New("boot: setup CPU: no kernel")
	}
	var long bool
	switch k.Protocol {
	case ProtocolLinux64:
		long = true
	case ProtocolPVH:
	default:
		return nil, fmt.Errorf("boot: setup CPU: unknown protocol %v", k.Protocol)
	}
	code := Segment{Limit: flatLimit, Selector: BootCSSelector, Type: segTypeCodeXRA, Present: 1, S: 1, G: 1}
	if long {
		code.L = 1 // 64-bit code: L=1 requires D/B=0
	} else {
		code.DB = 1
	}
	data := Segment{Limit: flatLimit, Selector: BootDSSelector, Type: segTypeDataRWA, Present: 1, S: 1, DB: 1, G: 1}
	tr := Segment{Limit: tssLimit, Selector: BootTRSelector, Type: segTypeTSSBusy, Present: 1}

	gdt := make([]byte, gdtEntries*gdtEntrySize)
	le := binary.LittleEndian
	le.PutUint64(gdt[gdtCodeIndex*gdtEntrySize:], code.descriptor())
	le.PutUint64(gdt[gdtDataIndex*gdtEntrySize:], data.descriptor())
	// The TSS descriptor's upper 8 bytes (base 63:32, long mode) stay 0.
	le.PutUint64(gdt[gdtTSSIndex*gdtEntrySize:], tr.descriptor())
	if err := mem.WriteAt(gdt, GDTAddr); err != nil {
		return nil, fmt.Errorf("boot: write GDT at %#x: %w", GDTAddr, err)
	}

	s := &CPUState{
		RIP:      k.Entry,
		RSP:      BootStackAddr,
		RFLAGS:   rflagsReserved,
		CS:       code,
		DS:       data,
		TR:       tr,
		GDTBase:  GDTAddr,
		GDTLimit: uint16(len(gdt) - 1),
		// No IDT: interrupts stay disabled until the kernel installs one.
	}
	if !long {
		// PVH: flat 32-bit protected mode, paging off (pvh.pandoc).
		s.CR0 = CR0PE | CR0ET
		s.RBX = arg
		return s, nil
	}
	if err := writePageTables(mem); err != nil {
		return nil, err
	}
	s.CR0 = CR0PE | CR0MP | CR0ET | CR0NE | CR0PG
	s.CR3 = PML4Addr
	s.CR4 = CR4PAE
	s.EFER = EFERLME | EFERLMA
	s.RSI = arg
	return s, nil
}

// writePageTables identity-maps [0, 4 GiB) with 2 MiB pages: PML4[0] ->
// PDPT, PDPT[0..3] -> the four page directories at PDAddr.
func writePageTables(mem *memory.Guest) error {
	le := binary.LittleEndian
	const tableSize = ptEntries * 8
	pml4 := make([]byte, tableSize)
	le.PutUint64(pml4, PDPTAddr|ptePresent|pteWritable)
	pdpt := make([]byte, tableSize)
	pds := make([]byte, numPDs*tableSize)
	for i := range numPDs {
		le.PutUint64(pdpt[i*8:], uint64(PDAddr+i*tableSize)|ptePresent|pteWritable)
	}
	for i := range numPDs * ptEntries {
		le.PutUint64(pds[i*8:], uint64(i)*pageSize2M|ptePresent|pteWritable|ptePageSize)
	}
	for _, t := range []struct {
		addr uint64
		b    []byte
	}{{PML4Addr, pml4}, {PDPTAddr, pdpt}, {PDAddr, pds}} {
		if err := mem.WriteAt(t.b, t.addr); err != nil {
			return fmt.Errorf("boot: write page tables at %#x: %w", t.addr, err)
		}
	}
	return nil
}
