package boot

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

const (
	testELFPaddr = 0x1000000
	testELFEntry = 0x1000040
	testFilesz   = 0x100
	testMemsz    = 0x300
)

// elfNote encodes one note with 4-byte padding.
func elfNote(name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, uint32(len(name)))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	b = append(b, name...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// elfOpts describes a synthetic ELF64 vmlinux.
type elfOpts struct {
	notes        []byte // note area contents
	notesSection bool   // describe the notes by SHT_NOTE only, not PT_NOTE
	paddr        uint64
	filesz       uint64
	memsz        uint64
	dupLoad      int // extra copies of the PT_LOAD header (overlapping)
}

func pvhNote(descLen int, entry uint64) []byte {
	desc := binary.LittleEndian.AppendUint64(nil, entry)[:descLen]
	return elfNote("Xen\x00", xenElfnotePhys32Entry, desc)
}

func defaultELF(descLen int) elfOpts {
	notes := elfNote("GNU\x00", 3, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) // a build ID first
	notes = append(notes, elfNote("Xen\x00", 6, []byte("linux\x00"))...)  // another Xen note
	if descLen > 0 {
		notes = append(notes, pvhNote(descLen, testELFEntry)...)
	}
	return elfOpts{notes: notes, paddr: testELFPaddr, filesz: testFilesz, memsz: testMemsz}
}

func makeELF(o elfOpts) []byte {
	le := binary.LittleEndian
	const (
		phoff   = elf64EhdrSize
		segOff  = 0x200
		noteOff = 0x300
	)
	img := make([]byte, noteOff+len(o.notes)+2*elf64ShdrSize)
	copy(img, elfMagic)
	img[eiClass] = elfClass64
	img[eiData] = elfData2LSB
	img[6] = 1                // EI_VERSION
	le.PutUint16(img[16:], 2) // ET_EXEC
	le.PutUint16(img[ehMachine:], emX8664)
	le.PutUint32(img[20:], 1) // e_version
	le.PutUint64(img[24:], testELFEntry)
	le.PutUint64(img[ehPhoff:], phoff)
	le.PutUint16(img[52:], elf64EhdrSize)
	le.PutUint16(img[ehPhentsize:], elf64PhdrSize)
	phnum := 2
	if o.notesSection {
		phnum = 1
	}
	phnum += o.dupLoad
	le.PutUint16(img[ehPhnum:], uint16(phnum))
	// PT_LOAD
	ph := img[phoff:]
	le.PutUint32(ph[phType:], ptLoad)
	le.PutUint64(ph[phOffset:], segOff)
	le.PutUint64(ph[16:], 0xffffffff80000000+o.paddr) // p_vaddr
	le.PutUint64(ph[phPaddr:], o.paddr)
	le.PutUint64(ph[phFilesz:], o.filesz)
	le.PutUint64(ph[phMemsz:], o.memsz)
	le.PutUint64(ph[phAlign:], 0x200000)
	for i := uint64(0); i < min(o.filesz, noteOff-segOff); i++ {
		img[segOff+i] = byte(i + 1)
	}
	copy(img[noteOff:], o.notes)
	if o.notesSection {
		shoff := noteOff + len(o.notes)
		le.PutUint64(img[ehShoff:], uint64(shoff))
		le.PutUint16(img[ehShentsize:], elf64ShdrSize)
		le.PutUint16(img[ehShnum:], 2) // null section, then the notes
		sh := img[shoff+elf64ShdrSize:]
		le.PutUint32(sh[shType:], shtNote)
		le.PutUint64(sh[shOffset:], noteOff)
		le.PutUint64(sh[shSize:], uint64(len(o.notes)))
		le.PutUint64(sh[shAddralign:], 4)
	} else {
		ph := img[phoff+elf64PhdrSize:]
		le.PutUint32(ph[phType:], ptNote)
		le.PutUint64(ph[phOffset:], noteOff)
		le.PutUint64(ph[phFilesz:], uint64(len(o.notes)))
		le.PutUint64(ph[phMemsz:], uint64(len(o.notes)))
		le.PutUint64(ph[phAlign:], 4)
	}
	for i := range o.dupLoad { // after the notes' PT_NOTE, if any
		copy(img[phoff+(phnum-1-i)*elf64PhdrSize:], img[phoff:phoff+elf64PhdrSize])
	}
	return img
}

func TestLoadKernelPVH(t *testing.T) {
	noteSection := defaultELF(8)
	noteSection.notesSection = true
	tests := []struct {
		name    string
		image   []byte
		wantErr string
	}{
		{"4-byte desc", makeELF(defaultELF(4)), ""},
		{"8-byte desc", makeELF(defaultELF(8)), ""},
		{"note in section only", makeELF(noteSection), ""},
		{"no PVH note", makeELF(defaultELF(0)), "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y"},
		{"2-byte desc", makeELF(elfOpts{notes: pvhNote(2, testELFEntry), paddr: testELFPaddr, filesz: testFilesz, memsz: testMemsz}), "want 4 or 8"},
		{"entry outside kernel", makeELF(elfOpts{notes: pvhNote(4, 0x5000000), paddr: testELFPaddr, filesz: testFilesz, memsz: testMemsz}), "outside the loaded kernel"},
		{"64-bit entry", makeELF(elfOpts{notes: pvhNote(8, 1<<40), paddr: testELFPaddr, filesz: testFilesz, memsz: testMemsz}), "not a 32-bit address"},
		{"segment below 1 MiB", makeELF(elfOpts{notes: pvhNote(4, 0x7000), paddr: 0x7000, filesz: testFilesz, memsz: testMemsz}), "boot structures"},
		{"segment beyond RAM", makeELF(elfOpts{notes: pvhNote(4, 0x7ff0000), paddr: 0x7ff0000, filesz: testFilesz, memsz: 0x20000}), "does not fit"},
		{"filesz > memsz", makeELF(elfOpts{notes: pvhNote(4, testELFEntry), paddr: testELFPaddr, filesz: testMemsz, memsz: testFilesz}), "exceeds memory size"},
		{"filesz beyond file", makeELF(elfOpts{notes: pvhNote(4, testELFEntry), paddr: testELFPaddr, filesz: 0x100000, memsz: 0x100000}), "outside the"},
		{"truncated note", makeELF(elfOpts{notes: pvhNote(8, testELFEntry)[:16], paddr: testELFPaddr, filesz: testFilesz, memsz: testMemsz}), "overruns"},
		{"overlapping segments", makeELF(func() elfOpts { o := defaultELF(4); o.dupLoad = 1; return o }()), "overlaps"},
		{"ELF32", func() []byte { b := makeELF(defaultELF(4)); b[eiClass] = 1; return b }(), "ELFCLASS64"},
		{"big-endian", func() []byte { b := makeELF(defaultELF(4)); b[eiData] = 2; return b }(), "little-endian"},
		{"not x86-64", func() []byte { b := makeELF(defaultELF(4)); b[ehMachine] = 183; return b }(), "not x86-64"},
		{"truncated header", []byte(elfMagic + "\x02\x01"), "shorter than an ELF64 header"},
		{"phdrs beyond file", makeELF(defaultELF(4))[:0x60], "program header table"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newTestGuest(t, 128*mib)
			// Dirty the bss area to check it gets cleared.
			_ = mem.WriteAt(bytes.Repeat([]byte{0xEE}, testMemsz), testELFPaddr)
			k, err := LoadKernel(mem, tt.image)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Protocol != ProtocolPVH || k.Entry != testELFEntry || k.Header != nil ||
				k.LoadAddr != testELFPaddr || k.LoadEnd != testELFPaddr+testMemsz ||
				k.InitrdAddrMax != MMIOHoleStart-1 || k.CmdlineMax != CmdlineMax {
				t.Errorf("kernel = %+v", k)
			}
			seg := make([]byte, testMemsz)
			if err := mem.ReadAt(seg, testELFPaddr); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(seg[:testFilesz], tt.image[0x200:0x200+testFilesz]) {
				t.Error("segment data not copied to p_paddr")
			}
			if !bytes.Equal(seg[testFilesz:], make([]byte, testMemsz-testFilesz)) {
				t.Error("bss not zeroed")
			}
		})
	}
}

func TestFindPVHEntryAlign8(t *testing.T) {
	le := binary.LittleEndian
	// namesz 4, descsz 8, 8-byte padding: name padded to 8.
	n := le.AppendUint32(nil, 4)
	n = le.AppendUint32(n, 8)
	n = le.AppendUint32(n, xenElfnotePhys32Entry)
	n = append(n, "Xen\x00\x00\x00\x00\x00"...)
	n = le.AppendUint64(n, 0x1234567)
	e, ok, err := findPVHEntry(n, 8)
	if err != nil || !ok || e != 0x1234567 {
		t.Errorf("findPVHEntry = %#x, %v, %v", e, ok, err)
	}
}

func TestPVHStartInfo(t *testing.T) {
	const memSize = 6 * gib
	mem := newTestGuest(t, 128*mib) // only low memory is touched
	k, err := LoadKernel(mem, makeELF(defaultELF(8)))
	if err != nil {
		t.Fatal(err)
	}
	for _, initrd := range []bool{false, true} {
		p := Params{Cmdline: "console=hvc0", MemSize: memSize, RSDPAddr: ACPITablesAddr}
		if initrd {
			p.InitrdAddr, p.InitrdSize = 0x4000000, 0x1234
		}
		arg, err := WriteBootParams(mem, k, p)
		if err != nil {
			t.Fatal(err)
		}
		if arg != PVHStartInfoAddr {
			t.Fatalf("arg = %#x", arg)
		}
		u32 := func(a uint64) uint64 { v, _ := mem.Uint32(a); return uint64(v) }
		u64 := func(a uint64) uint64 { v, _ := mem.Uint64(a); return v }
		const si = PVHStartInfoAddr
		nmod := uint64(0)
		if initrd {
			nmod = 1
		}
		memmap := si + 56 + 32*nmod
		checks := []struct {
			name      string
			got, want uint64
		}{
			{"magic", u32(si + 0), 0x336ec578},
			{"version", u32(si + 4), 1},
			{"nr_modules", u32(si + 12), nmod},
			{"cmdline_paddr", u64(si + 24), CmdlineAddr},
			{"rsdp_paddr", u64(si + 32), ACPITablesAddr},
			{"memmap_paddr", u64(si + 40), memmap},
			{"memmap_entries", u32(si + 48), 5},
			{"memmap[0].size", u64(memmap + 8), 0x9FC00},
			{"memmap[1].type", u32(memmap + 24 + 16), E820Reserved},
			{"memmap[4].addr", u64(memmap + 4*24), 4 * gib},
			{"memmap[4].size", u64(memmap + 4*24 + 8), 3 * gib},
			{"memmap[4].type", u32(memmap + 4*24 + 16), E820RAM},
		}
		if initrd {
			checks = append(checks,
				struct {
					name      string
					got, want uint64
				}{"modlist_paddr", u64(si + 16), si + 56},
				struct {
					name      string
					got, want uint64
				}{"module paddr", u64(si + 56), 0x4000000},
				struct {
					name      string
					got, want uint64
				}{"module size", u64(si + 56 + 8), 0x1234},
			)
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("initrd=%v: %s = %#x, want %#x", initrd, c.name, c.got, c.want)
			}
		}
		cl := make([]byte, 13)
		_ = mem.ReadAt(cl, CmdlineAddr)
		if string(cl) != "console=hvc0\x00" {
			t.Errorf("command line = %q", cl)
		}
	}
}
