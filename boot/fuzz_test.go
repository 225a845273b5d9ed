package boot

import (
	"testing"
)

func FuzzParseSetupHeader(f *testing.F) {
	o := defaultBz()
	o.pmSize = 0x100
	good := makeBzImage(o)
	f.Add(good)
	f.Add(good[:0x300])
	f.Add(good[:5*sectorSize])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, image []byte) {
		h, err := ParseSetupHeader(image)
		if err != nil {
			return
		}
		if h.Version < protoKernel64 || h.Xloadflags&xlfKernel64 == 0 {
			t.Fatalf("accepted header without 64-bit entry: %+v", h)
		}
		if len(h.Raw) > hdrMaxEnd-hdrStart || h.SetupSize() >= uint64(len(image)) {
			t.Fatalf("inconsistent header: raw %d bytes, setup %d of %d", len(h.Raw), h.SetupSize(), len(image))
		}
	})
}

func FuzzLoadKernel(f *testing.F) {
	small := defaultBz()
	small.pmSize = 0x100
	f.Add(makeBzImage(small))
	f.Add(makeELF(defaultELF(4)))
	f.Add(makeELF(defaultELF(8)))
	noteSection := defaultELF(8)
	noteSection.notesSection = true
	f.Add(makeELF(noteSection))
	f.Add(makeELF(defaultELF(0)))
	f.Add([]byte("\x7fELF"))
	f.Add([]byte("garbage"))
	const memSize = 32 * mib
	mem := newTestGuest(f, memSize)
	f.Fuzz(func(t *testing.T, image []byte) {
		k, err := LoadKernel(mem, image)
		if err != nil {
			return
		}
		if k.LoadEnd < k.LoadAddr || k.Entry < k.LoadAddr {
			t.Fatalf("inconsistent kernel %+v", k)
		}
		// A kernel that loaded must be bootable through the rest of the API
		// without panics.
		if addr, err := LoadInitrd(mem, k, memSize, []byte("initrd")); err == nil {
			if addr < k.LoadEnd || addr+6 > memSize {
				t.Fatalf("initrd at %#x overlaps kernel end %#x or RAM end", addr, k.LoadEnd)
			}
		}
		arg, err := WriteBootParams(mem, k, Params{Cmdline: "console=ttyS0", MemSize: memSize})
		if err != nil {
			return // e.g. cmdline_size 0
		}
		if _, err := SetupCPU(mem, k, arg); err != nil {
			t.Fatalf("SetupCPU: %v", err)
		}
	})
}
