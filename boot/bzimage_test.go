package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/govmm/vmm/memory"
)

// bzOpts describes a synthetic bzImage.
type bzOpts struct {
	setupSects  uint8
	version     uint16
	loadflags   uint8
	xloadflags  uint16
	initrdMax   uint32
	cmdlineSize uint32
	prefAddr    uint64
	initSize    uint32
	kernAlign   uint32
	pmSize      int
	syssize     uint32 // 0: derived from pmSize
}

func defaultBz() bzOpts {
	return bzOpts{
		setupSects:  4,
		version:     0x020f,
		loadflags:   loadedHigh,
		xloadflags:  xlfKernel64 | xlfCanBeLoadedAbove4G,
		initrdMax:   0x7fffffff,
		cmdlineSize: 2047,
		prefAddr:    0x1000000,
		initSize:    0x200000,
		kernAlign:   0x200000,
		pmSize:      0x3000,
	}
}

func makeBzImage(o bzOpts) []byte {
	sects := int(o.setupSects)
	if sects == 0 {
		sects = defaultSetupSects
	}
	img := make([]byte, (sects+1)*sectorSize+o.pmSize)
	le := binary.LittleEndian
	img[hdrSetupSects] = o.setupSects
	sys := o.syssize
	if sys == 0 {
		sys = uint32((o.pmSize + 15) / 16)
	}
	le.PutUint32(img[hdrSyssize:], sys)
	le.PutUint16(img[hdrBootFlag:], bootFlagValue)
	img[hdrJump] = 0xEB // JMP short
	img[hdrJump+1] = byte(hdrFieldsEnd - hdrMagic)
	copy(img[hdrMagic:], "HdrS")
	le.PutUint16(img[hdrVersion:], o.version)
	img[hdrLoadflags] = o.loadflags
	le.PutUint32(img[hdrCode32Start:], BzImageLoadAddr)
	le.PutUint32(img[hdrInitrdAddrMax:], o.initrdMax)
	le.PutUint32(img[hdrKernelAlignment:], o.kernAlign)
	img[hdrRelocatable] = 1
	le.PutUint16(img[hdrXloadflags:], o.xloadflags)
	le.PutUint32(img[hdrCmdlineSize:], o.cmdlineSize)
	le.PutUint64(img[hdrPrefAddress:], o.prefAddr)
	le.PutUint32(img[hdrInitSize:], o.initSize)
	pm := img[(sects+1)*sectorSize:]
	for i := range pm {
		pm[i] = byte(i*7 + 1)
	}
	return img
}

func newTestGuest(t testing.TB, size int) *memory.Guest {
	t.Helper()
	g, err := memory.FromRegions(memory.Region{GuestAddr: 0, Host: make([]byte, size)})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestParseSetupHeader(t *testing.T) {
	good := makeBzImage(defaultBz())
	with := func(f func(*bzOpts)) []byte {
		o := defaultBz()
		f(&o)
		return makeBzImage(o)
	}
	patch := func(off int, b ...byte) []byte {
		img := bytes.Clone(good)
		copy(img[off:], b)
		return img
	}
	tests := []struct {
		name    string
		image   []byte
		wantErr string // "" for success
	}{
		{"valid", good, ""},
		{"setup_sects 0 means 4", with(func(o *bzOpts) { o.setupSects = 0 }), ""},
		{"empty", nil, "too short"},
		{"truncated header", good[:0x250], "too short"},
		{"garbage", bytes.Repeat([]byte{0x5a}, 4096), "boot_flag"},
		{"bad boot_flag", patch(hdrBootFlag, 0x55, 0xAB), "boot_flag"},
		{"bad magic", patch(hdrMagic, 'H', 'd', 'r', 'X'), "magic"},
		{"protocol 2.04", with(func(o *bzOpts) { o.version = 0x0204 }), "boot protocol 2.04 is older than 2.06"},
		{"protocol 2.10", with(func(o *bzOpts) { o.version = 0x020a }), "no 64-bit entry point"},
		{"missing XLF_KERNEL_64", with(func(o *bzOpts) { o.xloadflags = xlfCanBeLoadedAbove4G }), "XLF_KERNEL_64"},
		{"not loaded high", with(func(o *bzOpts) { o.loadflags = 0 }), "LOADED_HIGH"},
		{"truncated setup", good[:3*sectorSize], "truncated"},
		{"no protected-mode part", good[:5*sectorSize], "truncated"},
		{"syssize beyond file", with(func(o *bzOpts) { o.syssize = 0x1000 }), "syssize"},
		{"syssize zero", patch(hdrSyssize, 0, 0, 0, 0), "syssize is 0"},
		{"header too short", patch(hdrJump+1, 0x40), "setup header ends at 0x242"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseSetupHeader(tt.image)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseSetupHeader: %v", err)
				}
				if h.Version != 0x020f || h.SetupSects != 4 || h.CmdlineSize != 2047 || h.InitrdAddrMax != 0x7fffffff {
					t.Errorf("header = %+v", h)
				}
				if want := tt.image[hdrStart:hdrFieldsEnd]; !bytes.Equal(h.Raw, want) {
					t.Errorf("Raw is %d bytes, want the %d header bytes", len(h.Raw), len(want))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseSetupHeader error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadKernelBzImage(t *testing.T) {
	img := makeBzImage(defaultBz())
	mem := newTestGuest(t, 32*mib)
	k, err := LoadKernel(mem, img)
	if err != nil {
		t.Fatal(err)
	}
	if k.Protocol != ProtocolLinux64 || k.Entry != 0x100200 || k.LoadAddr != BzImageLoadAddr || k.Header == nil {
		t.Errorf("kernel = %+v", k)
	}
	if want := uint64(0x1000000 + 0x200000); k.LoadEnd != want {
		t.Errorf("LoadEnd = %#x, want pref_address+init_size %#x", k.LoadEnd, want)
	}
	if k.CmdlineMax != 2048 || k.InitrdAddrMax != 0x7fffffff {
		t.Errorf("CmdlineMax = %d, InitrdAddrMax = %#x", k.CmdlineMax, k.InitrdAddrMax)
	}
	got := make([]byte, 0x3000)
	if err := mem.ReadAt(got, BzImageLoadAddr); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img[5*sectorSize:]) {
		t.Error("protected-mode kernel not copied to 0x100000")
	}

	// Not enough RAM for init_size at pref_address.
	if _, err := LoadKernel(newTestGuest(t, 16*mib), img); err == nil || !strings.Contains(err.Error(), "guest RAM") {
		t.Errorf("LoadKernel in 16 MiB: err = %v, want a guest RAM error", err)
	}
	// Neither format.
	if _, err := LoadKernel(mem, []byte("hello, world")); err == nil || !strings.Contains(err.Error(), "neither a bzImage nor an ELF") {
		t.Errorf("LoadKernel(garbage): err = %v", err)
	}
	// A bzImage with a bad version reports the header problem.
	o := defaultBz()
	o.version = 0x0204
	if _, err := LoadKernel(mem, makeBzImage(o)); err == nil || !strings.Contains(err.Error(), "2.04") {
		t.Errorf("LoadKernel(2.04): err = %v", err)
	}
}

func TestZeroPage(t *testing.T) {
	img := makeBzImage(defaultBz())
	mem := newTestGuest(t, 64*mib)
	k, err := LoadKernel(mem, img)
	if err != nil {
		t.Fatal(err)
	}
	const memSize = 64 * mib
	p := Params{Cmdline: "console=ttyS0 root=/dev/vda", MemSize: memSize, InitrdAddr: 0x3000000, InitrdSize: 0x12345, RSDPAddr: 0xE0000}
	arg, err := WriteBootParams(mem, k, p)
	if err != nil {
		t.Fatal(err)
	}
	if arg != ZeroPageAddr {
		t.Fatalf("arg = %#x, want %#x", arg, ZeroPageAddr)
	}
	zp := make([]byte, zeroPageSize)
	if err := mem.ReadAt(zp, ZeroPageAddr); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	// Fields we do not change are the image's header bytes.
	if !bytes.Equal(zp[0x1f1:0x210], img[0x1f1:0x210]) || !bytes.Equal(zp[0x22c:0x26c], img[0x22c:0x26c]) {
		t.Error("setup header not copied to 0x1f1")
	}
	checks := []struct {
		name string
		off  int
		size int
		want uint64
	}{
		{"acpi_rsdp_addr", 0x070, 8, 0xE0000},
		{"ext_ramdisk_image", 0x0c0, 4, 0},
		{"ext_ramdisk_size", 0x0c4, 4, 0},
		{"ext_cmd_line_ptr", 0x0c8, 4, 0},
		{"e820_entries", 0x1e8, 1, 4},
		{"boot_flag", 0x1fe, 2, 0xAA55},
		{"header magic", 0x202, 4, 0x53726448},
		{"version", 0x206, 2, 0x020f},
		{"type_of_loader", 0x210, 1, 0xFF},
		{"loadflags", 0x211, 1, loadedHigh | canUseHeap},
		{"ramdisk_image", 0x218, 4, 0x3000000},
		{"ramdisk_size", 0x21c, 4, 0x12345},
		{"heap_end_ptr", 0x224, 2, 0xFE00},
		{"cmd_line_ptr", 0x228, 4, CmdlineAddr},
		{"e820[0].size", 0x2d0 + 8, 8, 0x9FC00},
		{"e820[1].addr", 0x2d0 + 20, 8, 0x9FC00},
		{"e820[1].type", 0x2d0 + 20 + 16, 4, E820Reserved},
		{"e820[3].addr", 0x2d0 + 60, 8, 0x100000},
		{"e820[3].size", 0x2d0 + 60 + 8, 8, memSize - 0x100000},
		{"e820[3].type", 0x2d0 + 60 + 16, 4, E820RAM},
		{"e820[4] empty", 0x2d0 + 80, 8, 0},
	}
	for _, c := range checks {
		var got uint64
		switch c.size {
		case 1:
			got = uint64(zp[c.off])
		case 2:
			got = uint64(le.Uint16(zp[c.off:]))
		case 4:
			got = uint64(le.Uint32(zp[c.off:]))
		case 8:
			got = le.Uint64(zp[c.off:])
		}
		if got != c.want {
			t.Errorf("%s at %#x = %#x, want %#x", c.name, c.off, got, c.want)
		}
	}
	cl := make([]byte, len(p.Cmdline)+1)
	if err := mem.ReadAt(cl, CmdlineAddr); err != nil {
		t.Fatal(err)
	}
	if string(cl) != p.Cmdline+"\x00" {
		t.Errorf("command line = %q", cl)
	}

	// acpi_rsdp_addr is only written for protocol 2.14+.
	o := defaultBz()
	o.version = 0x020c
	o.xloadflags = xlfKernel64
	k2, err := LoadKernel(mem, makeBzImage(o))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteBootParams(mem, k2, p); err != nil {
		t.Fatal(err)
	}
	if v, _ := mem.Uint64(ZeroPageAddr + 0x070); v != 0 {
		t.Errorf("acpi_rsdp_addr = %#x for protocol 2.12, want 0", v)
	}

	// Initrd above 4 GiB goes into the ext_ fields.
	p.InitrdAddr, p.InitrdSize = 0x1_2345_6000, 0x2_0000_0010
	if _, err := WriteBootParams(mem, k, p); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off  uint64
		want uint32
	}{{0x218, 0x2345_6000}, {0x0c0, 1}, {0x21c, 0x10}, {0x0c4, 2}} {
		if v, _ := mem.Uint32(ZeroPageAddr + c.off); v != c.want {
			t.Errorf("zero page %#x = %#x, want %#x", c.off, v, c.want)
		}
	}
	if _, err := WriteBootParams(mem, k2, p); err == nil || !strings.Contains(err.Error(), "XLF_CAN_BE_LOADED_ABOVE_4G") {
		t.Errorf("initrd above 4 GiB without XLF_CAN_BE_LOADED_ABOVE_4G: err = %v", err)
	}
}

func TestCmdlineLimits(t *testing.T) {
	mem := newTestGuest(t, 32*mib)
	k, err := LoadKernel(mem, makeBzImage(defaultBz())) // cmdline_size 2047
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cmdline string
		ok      bool
	}{
		{"empty", "", true},
		{"at limit", strings.Repeat("a", 2047), true},
		{"over limit", strings.Repeat("a", 2048), false},
		{"NUL", "a\x00b", false},
	}
	for _, tt := range tests {
		_, err := WriteBootParams(mem, k, Params{Cmdline: tt.cmdline, MemSize: 32 * mib})
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestLoadInitrd(t *testing.T) {
	const memSize = 64 * mib
	mem := newTestGuest(t, memSize)
	kern := func(max uint64) *Kernel {
		return &Kernel{Protocol: ProtocolLinux64, LoadAddr: BzImageLoadAddr, LoadEnd: 0x1200000, InitrdAddrMax: max}
	}
	tests := []struct {
		name     string
		k        *Kernel
		memSize  uint64
		size     int
		wantAddr uint64
		wantErr  string
	}{
		{"end of RAM", kern(0x7fffffff), memSize, 0x1000, memSize - 0x1000, ""},
		{"unaligned size", kern(0x7fffffff), memSize, 0x1001, memSize - 0x2000, ""},
		{"initrd_addr_max", kern(0x2ffffff), memSize, 0x1000, 0x3000000 - 0x1000, ""},
		{"unaligned initrd_addr_max", kern(0x2fff7fe), memSize, 0x1000, 0x2ffe000, ""},
		{"exactly fits", kern(0x7fffffff), memSize, memSize - 0x1200000, 0x1200000, ""},
		{"too big", kern(0x7fffffff), memSize, memSize - 0x1200000 + 1, 0, "does not fit"},
		{"too big for max", kern(0x1ffffff), memSize, 0x1000000, 0, "does not fit"},
		{"larger than memory", kern(^uint64(0)), memSize, 2 * memSize, 0, "does not fit"},
		{"empty", kern(0x7fffffff), memSize, 0, 0, "empty"},
		{"nil kernel", nil, memSize, 1, 0, "no kernel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			initrd := bytes.Repeat([]byte{0xA5}, tt.size)
			addr, err := LoadInitrd(mem, tt.k, tt.memSize, initrd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if addr != tt.wantAddr {
				t.Errorf("addr = %#x, want %#x", addr, tt.wantAddr)
			}
			got := make([]byte, tt.size)
			if err := mem.ReadAt(got, addr); err != nil || !bytes.Equal(got, initrd) {
				t.Errorf("initrd not at %#x (%v)", addr, err)
			}
		})
	}
	// memSize beyond the mapped RAM: the write fails cleanly.
	if _, err := LoadInitrd(mem, kern(0xffffffff), 128*mib, []byte{1}); !errors.Is(err, memory.ErrOutOfRange) {
		t.Errorf("initrd beyond mapped RAM: err = %v, want ErrOutOfRange", err)
	}
}
