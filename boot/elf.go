package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/govmm/vmm/memory"
)

// ELF64 constants (System V ABI gABI, "ELF Header", "Program Header",
// "Sections", "Note Section"; x86-64 psABI for EM_X86_64).
const (
	elfMagic      = "\x7fELF"
	eiClass       = 4  // e_ident[EI_CLASS]
	eiData        = 5  // e_ident[EI_DATA]
	elfClass64    = 2  // ELFCLASS64
	elfData2LSB   = 1  // ELFDATA2LSB
	emX8664       = 62 // EM_X86_64
	elf64EhdrSize = 64 // sizeof(Elf64_Ehdr)
	elf64PhdrSize = 56 // sizeof(Elf64_Phdr)
	elf64ShdrSize = 64 // sizeof(Elf64_Shdr)

	// Elf64_Ehdr field offsets.
	ehMachine   = 18
	ehPhoff     = 32
	ehShoff     = 40
	ehPhentsize = 54
	ehPhnum     = 56
	ehShentsize = 58
	ehShnum     = 60

	// Elf64_Phdr field offsets.
	phType   = 0
	phOffset = 8
	phPaddr  = 24
	phFilesz = 32
	phMemsz  = 40
	phAlign  = 48

	// Elf64_Shdr field offsets.
	shType      = 4
	shOffset    = 24
	shSize      = 32
	shAddralign = 48

	ptLoad  = 1 // PT_LOAD
	ptNote  = 4 // PT_NOTE
	shtNote = 7 // SHT_NOTE

	// noteHdrSize is namesz, descsz and type, 4 bytes each.
	noteHdrSize = 12

	// xenNoteName is the owner of Xen notes, NUL included (Xen
	// public/elfnote.h).
	xenNoteName = "Xen\x00"
	// maxLoadSegments bounds the PT_LOAD segments we accept (a vmlinux
	// has a handful); together with the no-overlap rule it keeps the work
	// done for hostile images proportional to guest RAM.
	maxLoadSegments = 64
	// maxNoteBytes bounds the note data scanned for the PVH entry (a
	// vmlinux has a few hundred bytes of notes).
	maxNoteBytes = 1 << 20

	// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the physical
	// 32-bit PVH entry point (Xen public/elfnote.h).
	xenElfnotePhys32Entry = 18
)

// errNoPVHNote is returned for ELF kernels without a PVH entry point.
var errNoPVHNote = errors.New("ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y")

// isELF reports whether image starts with the ELF magic.
func isELF(image []byte) bool { return bytes.HasPrefix(image, []byte(elfMagic)) }

// fileRange returns image[off:off+n] or an error if it is not in the file.
func fileRange(image []byte, off, n uint64, what string) ([]byte, error) {
	if off > uint64(len(image)) || n > uint64(len(image))-off {
		return nil, fmt.Errorf("ELF: %s at file offset %#x size %#x lies outside the %d-byte file", what, off, n, len(image))
	}
	return image[off : off+n], nil
}

// loadELF loads an ELF64 x86-64 vmlinux for PVH boot.
func loadELF(mem *memory.Guest, image []byte) (*Kernel, error) {
	le := binary.LittleEndian
	if len(image) < elf64EhdrSize {
		return nil, fmt.Errorf("ELF: file is %d bytes, shorter than an ELF64 header", len(image))
	}
	if image[eiClass] != elfClass64 {
		return nil, fmt.Errorf("ELF: class %d is not ELFCLASS64: only 64-bit vmlinux images are supported", image[eiClass])
	}
	if image[eiData] != elfData2LSB {
		return nil, fmt.Errorf("ELF: data encoding %d is not little-endian", image[eiData])
	}
	if m := le.Uint16(image[ehMachine:]); m != emX8664 {
		return nil, fmt.Errorf("ELF: machine %d is not x86-64 (%d)", m, emX8664)
	}
	phoff := le.Uint64(image[ehPhoff:])
	phentsize := uint64(le.Uint16(image[ehPhentsize:]))
	phnum := uint64(le.Uint16(image[ehPhnum:]))
	if phnum == 0 {
		return nil, errors.New("ELF: no program headers")
	}
	if phentsize < elf64PhdrSize {
		return nil, fmt.Errorf("ELF: program header entry size %d is smaller than %d", phentsize, elf64PhdrSize)
	}
	phdrs, err := fileRange(image, phoff, phentsize*phnum, "program header table")
	if err != nil {
		return nil, err
	}

	// Find the entry note before copying anything, so a kernel without
	// PVH support fails fast.
	var entry uint64
	var found bool
	noteBudget := uint64(maxNoteBytes)
	for i := uint64(0); i < phnum && !found; i++ {
		ph := phdrs[i*phentsize : i*phentsize+elf64PhdrSize]
		if le.Uint32(ph[phType:]) != ptNote {
			continue
		}
		notes, err := fileRange(image, le.Uint64(ph[phOffset:]), le.Uint64(ph[phFilesz:]), fmt.Sprintf("note segment %d", i))
		if err != nil {
			return nil, err
		}
		if err := spendNoteBudget(&noteBudget, notes); err != nil {
			return nil, err
		}
		entry, found, err = findPVHEntry(notes, le.Uint64(ph[phAlign:]))
		if err != nil {
			return nil, err
		}
	}
	if !found {
		entry, found, err = findPVHEntryInSections(image, &noteBudget)
		if err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, errNoPVHNote
	}

	k := &Kernel{Protocol: ProtocolPVH, Entry: entry, CmdlineMax: CmdlineMax, InitrdAddrMax: MMIOHoleStart - 1}
	var segs [][2]uint64 // loaded [start, end) ranges
	for i := uint64(0); i < phnum; i++ {
		ph := phdrs[i*phentsize : i*phentsize+elf64PhdrSize]
		if le.Uint32(ph[phType:]) != ptLoad {
			continue
		}
		off, paddr := le.Uint64(ph[phOffset:]), le.Uint64(ph[phPaddr:])
		filesz, memsz := le.Uint64(ph[phFilesz:]), le.Uint64(ph[phMemsz:])
		if memsz == 0 {
			continue
		}
		if len(segs) == maxLoadSegments {
			return nil, fmt.Errorf("ELF: more than %d loadable segments", maxLoadSegments)
		}
		if paddr+memsz < paddr {
			return nil, fmt.Errorf("ELF: segment %d: address %#x + size %#x overflows", i, paddr, memsz)
		}
		end := paddr + memsz
		for _, s := range segs {
			if paddr < s[1] && s[0] < end {
				return nil, fmt.Errorf("ELF: segment %d [%#x, %#x) overlaps another segment [%#x, %#x)", i, paddr, end, s[0], s[1])
			}
		}
		if err := loadSegment(mem, image, i, off, paddr, filesz, memsz); err != nil {
			return nil, err
		}
		if len(segs) == 0 || paddr < k.LoadAddr {
			k.LoadAddr = paddr
		}
		k.LoadEnd = max(k.LoadEnd, end)
		segs = append(segs, [2]uint64{paddr, end})
	}
	if len(segs) == 0 {
		return nil, errors.New("ELF: no loadable (PT_LOAD) segments")
	}
	if entry < k.LoadAddr || entry >= k.LoadEnd {
		return nil, fmt.Errorf("ELF: PVH entry point %#x lies outside the loaded kernel [%#x, %#x)", entry, k.LoadAddr, k.LoadEnd)
	}
	return k, nil
}

// loadSegment copies one PT_LOAD segment to its physical address and clears
// its bss part.
func loadSegment(mem *memory.Guest, image []byte, i, off, paddr, filesz, memsz uint64) error {
	if filesz > memsz {
		return fmt.Errorf("ELF: segment %d: file size %#x exceeds memory size %#x", i, filesz, memsz)
	}
	if paddr+memsz < paddr {
		return fmt.Errorf("ELF: segment %d: address %#x + size %#x overflows", i, paddr, memsz)
	}
	if paddr < HighMemStart {
		return fmt.Errorf("ELF: segment %d at %#x overlaps the boot structures below %#x", i, paddr, HighMemStart)
	}
	data, err := fileRange(image, off, filesz, fmt.Sprintf("segment %d", i))
	if err != nil {
		return err
	}
	// Check the whole destination first so a failure leaves nothing
	// half-written that the error message does not describe.
	if !mem.Contains(paddr, memsz) {
		return fmt.Errorf("ELF: segment %d [%#x, %#x) does not fit in guest RAM", i, paddr, paddr+memsz)
	}
	if err := mem.WriteAt(data, paddr); err != nil {
		return fmt.Errorf("ELF: segment %d: %w", i, err)
	}
	if err := mem.Zero(paddr+filesz, memsz-filesz); err != nil {
		return fmt.Errorf("ELF: segment %d bss: %w", i, err)
	}
	return nil
}

// findPVHEntryInSections searches SHT_NOTE sections for the PVH entry note,
// for images whose program headers do not cover their notes.
func findPVHEntryInSections(image []byte, budget *uint64) (uint64, bool, error) {
	le := binary.LittleEndian
	shoff := le.Uint64(image[ehShoff:])
	shentsize := uint64(le.Uint16(image[ehShentsize:]))
	shnum := uint64(le.Uint16(image[ehShnum:]))
	if shoff == 0 || shnum == 0 {
		return 0, false, nil
	}
	if shentsize < elf64ShdrSize {
		return 0, false, fmt.Errorf("ELF: section header entry size %d is smaller than %d", shentsize, elf64ShdrSize)
	}
	shdrs, err := fileRange(image, shoff, shentsize*shnum, "section header table")
	if err != nil {
		return 0, false, err
	}
	for i := uint64(0); i < shnum; i++ {
		sh := shdrs[i*shentsize : i*shentsize+elf64ShdrSize]
		if le.Uint32(sh[shType:]) != shtNote {
			continue
		}
		notes, err := fileRange(image, le.Uint64(sh[shOffset:]), le.Uint64(sh[shSize:]), fmt.Sprintf("note section %d", i))
		if err != nil {
			return 0, false, err
		}
		if err := spendNoteBudget(budget, notes); err != nil {
			return 0, false, err
		}
		entry, ok, err := findPVHEntry(notes, le.Uint64(sh[shAddralign:]))
		if err != nil || ok {
			return entry, ok, err
		}
	}
	return 0, false, nil
}

// spendNoteBudget charges a note area against the scanning budget.
func spendNoteBudget(budget *uint64, notes []byte) error {
	if uint64(len(notes)) > *budget {
		return fmt.Errorf("ELF: more than %d bytes of notes", maxNoteBytes)
	}
	*budget -= uint64(len(notes))
	return nil
}

// findPVHEntry walks a note area for XEN_ELFNOTE_PHYS32_ENTRY. Name and
// descriptor are padded to 4 bytes, or to 8 when the area is 8-aligned
// (gABI allows both; Linux emits 4-byte aligned notes).
func findPVHEntry(notes []byte, align uint64) (uint64, bool, error) {
	le := binary.LittleEndian
	pad := uint64(4)
	if align == 8 {
		pad = 8
	}
	roundUp := func(v uint64) uint64 { return (v + pad - 1) &^ (pad - 1) }
	for p := uint64(0); uint64(len(notes))-p >= noteHdrSize; {
		namesz := uint64(le.Uint32(notes[p:]))
		descsz := uint64(le.Uint32(notes[p+4:]))
		typ := le.Uint32(notes[p+8:])
		p += noteHdrSize
		rest := uint64(len(notes)) - p
		// namesz, descsz < 2^32, so the rounded sums cannot overflow.
		if roundUp(namesz) > rest || descsz > rest-roundUp(namesz) {
			return 0, false, fmt.Errorf("ELF: note with name size %d and descriptor size %d overruns its %d-byte note area", namesz, descsz, len(notes))
		}
		name := notes[p : p+namesz]
		desc := notes[p+roundUp(namesz) : p+roundUp(namesz)+descsz]
		if typ == xenElfnotePhys32Entry && string(name) == xenNoteName {
			switch descsz {
			case 4:
				return uint64(le.Uint32(desc)), true, nil
			case 8:
				e := le.Uint64(desc)
				if e > 0xFFFF_FFFF {
					return 0, false, fmt.Errorf("ELF: PVH entry point %#x is not a 32-bit address", e)
				}
				return e, true, nil
			default:
				return 0, false, fmt.Errorf("ELF: XEN_ELFNOTE_PHYS32_ENTRY descriptor is %d bytes, want 4 or 8", descsz)
			}
		}
		adv := roundUp(namesz) + roundUp(descsz)
		if adv > rest {
			break // last note, its padding cut off
		}
		p += adv
	}
	return 0, false, nil
}
