package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc64"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// CPUID leaf 0 vendor strings as EBX, EDX, ECX.
var (
	intelLeaf0 = CPUIDEntry{Function: 0, EAX: 0xd, EBX: 0x756e6547, EDX: 0x49656e69, ECX: 0x6c65746e} // "GenuineIntel"
	amdLeaf0   = CPUIDEntry{Function: 0, EAX: 0xd, EBX: 0x68747541, EDX: 0x69746e65, ECX: 0x444d4163} // "AuthenticAMD"
)

// Feature bits the tests use.
const (
	bit7EBXAVX2    = 1 << 5
	bit7EBXAVX512F = 1 << 16
	bit1ECXSSE42   = 1 << 20
	bit1ECXAVX     = 1 << 28
)

func cpuidTable(leaf0 CPUIDEntry, leaf7EBX uint32) []CPUIDEntry {
	return []CPUIDEntry{
		leaf0,
		{Function: 1, ECX: bit1ECXSSE42 | bit1ECXAVX, EDX: 1 << 0},
		{Function: 7, Index: 0, EBX: leaf7EBX},
		{Function: 7, Index: 1},
		{Function: 0x80000001, EDX: 1 << 29},
	}
}

type testState struct {
	Name  string            `json:"name"`
	Regs  []uint64          `json:"regs"`
	Devs  map[string]uint32 `json:"devs"`
	Bytes []byte            `json:"bytes"`
}

func sampleState() testState {
	return testState{
		Name:  "vm0",
		Regs:  []uint64{0xffffffff81000000, 0x10, 1 << 63},
		Devs:  map[string]uint32{"serial": 0x3f8, "rtc": 0x70},
		Bytes: bytes.Repeat([]byte{0xde, 0xad}, 100),
	}
}

const testVersion = "0.1.0"

func sampleMeta() Meta {
	cpu := cpuidTable(intelLeaf0, bit7EBXAVX2|bit7EBXAVX512F)
	return Meta{
		VMMVersion:  testVersion,
		CPUVendor:   VendorFromCPUID(cpu),
		CPUFeatures: FeaturesFromCPUID(cpu),
		MemSize:     128 << 20,
		Created:     time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC),
	}
}

func sampleHost() Host {
	return NewHost(testVersion, cpuidTable(intelLeaf0, bit7EBXAVX2|bit7EBXAVX512F))
}

// sampleFile is a valid state file's bytes, with its meta length.
func sampleFile(t testing.TB) ([]byte, int) {
	t.Helper()
	m := sampleMeta()
	m.FormatVersion = FormatVersion
	body := []byte(`{"name":"vm0","regs":[1,2,3],"devs":{"serial":1016},"bytes":null}`)
	b, err := encode(FormatVersion, m, body)
	if err != nil {
		t.Fatal(err)
	}
	return b, int(binary.LittleEndian.Uint32(b[offMetaLen:]))
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.state")
	want := sampleState()
	if err := Write(path, sampleMeta(), want); err != nil {
		t.Fatal(err)
	}
	var got testState
	meta, err := Read(path, sampleHost(), &got)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("state %+v, want %+v", got, want)
	}
	wantMeta := sampleMeta()
	wantMeta.FormatVersion = FormatVersion
	if !meta.Created.Equal(wantMeta.Created) {
		t.Errorf("created %v, want %v", meta.Created, wantMeta.Created)
	}
	meta.Created, wantMeta.Created = time.Time{}, time.Time{}
	if !reflect.DeepEqual(meta, wantMeta) {
		t.Errorf("meta %+v, want %+v", meta, wantMeta)
	}
	if len(meta.CPUFeatures) == 0 {
		t.Error("no CPU features recorded")
	}

	rm, err := ReadMeta(path)
	if err != nil {
		t.Fatal(err)
	}
	rm.Created = time.Time{}
	if !reflect.DeepEqual(rm, wantMeta) {
		t.Errorf("ReadMeta %+v, want %+v", rm, wantMeta)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 (guest state is private)", fi.Mode().Perm())
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"vm.state"}) {
		t.Errorf("directory holds %v, want only vm.state", names)
	}
}

func TestWriteStampsCreated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	m := sampleMeta()
	m.Created = time.Time{}
	before := time.Now()
	if err := Write(path, m, 1); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMeta(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Created.Before(before.Add(-time.Second)) || got.Created.After(time.Now().Add(time.Second)) {
		t.Errorf("created %v, want about %v", got.Created, before)
	}
}

func TestTruncated(t *testing.T) {
	b, metaLen := sampleFile(t)
	host := sampleHost()
	for n := 0; n < len(b); n++ {
		var st testState
		if _, err := readBytes(b[:n], host, &st); !errors.Is(err, ErrTruncated) {
			t.Fatalf("cut at %d of %d: %v, want ErrTruncated", n, len(b), err)
		}
	}
	// One file per part through Read, which checks sizes before reading.
	dir := t.TempDir()
	for _, c := range []struct {
		part string
		n    int
	}{
		{"magic", 3},
		{"header", offBodyLen},
		{"meta", headerSize + metaLen/2},
		{"body", headerSize + metaLen + 5},
		{"checksum", len(b) - 3},
	} {
		path := filepath.Join(dir, c.part)
		if err := os.WriteFile(path, b[:c.n], 0o600); err != nil {
			t.Fatal(err)
		}
		var st testState
		_, err := Read(path, host, &st)
		if !errors.Is(err, ErrTruncated) {
			t.Errorf("cut in the %s: %v, want ErrTruncated", c.part, err)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name %s", err, path)
		}
	}
}

func TestBitFlip(t *testing.T) {
	good, _ := sampleFile(t)
	host := sampleHost()
	b := slices.Clone(good)
	for i := range b {
		for bit := range 8 {
			b[i] ^= 1 << bit
			var st testState
			_, err := readBytes(b, host, &st)
			b[i] ^= 1 << bit
			want := ErrChecksum
			if i < len(Magic) {
				want = ErrNotSnapshot
			}
			if !errors.Is(err, want) {
				t.Fatalf("bit %d of byte %d flipped: %v, want %v", bit, i, err, want)
			}
		}
	}
}

func TestFormatVersion(t *testing.T) {
	m := sampleMeta()
	b, err := encode(FormatVersion+1, m, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "v2.state")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var st testState
	if _, err := Read(path, sampleHost(), &st); !errors.Is(err, ErrVersion) {
		t.Errorf("Read: %v, want ErrVersion", err)
	}
	got, err := ReadMeta(path)
	if !errors.Is(err, ErrVersion) {
		t.Errorf("ReadMeta: %v, want ErrVersion", err)
	}
	if got.FormatVersion != FormatVersion+1 {
		t.Errorf("ReadMeta reports format version %d, want %d", got.FormatVersion, FormatVersion+1)
	}
	m.FormatVersion = FormatVersion + 1
	if err := m.CompatibleWith(sampleHost()); !errors.Is(err, ErrVersion) {
		t.Errorf("CompatibleWith: %v, want ErrVersion", err)
	}
}

func TestVMMVersion(t *testing.T) {
	for _, c := range []struct {
		snap, host string
		ok         bool
	}{
		{"0.1.0", "0.1.0", true},
		{"0.1.0", "0.1.7", true},
		{"v1.2.3", "1.2.0", true},
		{"1.2.3-rc1", "1.2.9", true},
		{"dev", "dev", true},
		{"0.1.0", "0.2.0", false},
		{"1.1.0", "2.1.0", false},
		{"dev", "0.1.0", false},
		{"0.1.0", "", false},
		{"1", "1", true},
		{"1", "1.0.0", false},
	} {
		m := sampleMeta()
		m.FormatVersion = FormatVersion
		m.VMMVersion = c.snap
		h := sampleHost()
		h.VMMVersion = c.host
		err := m.CompatibleWith(h)
		if c.ok && err != nil {
			t.Errorf("snapshot %q on vmm %q: %v", c.snap, c.host, err)
		}
		if !c.ok && !errors.Is(err, ErrVersion) {
			t.Errorf("snapshot %q on vmm %q: %v, want ErrVersion", c.snap, c.host, err)
		}
	}
}

func TestOtherVendor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	if err := Write(path, sampleMeta(), sampleState()); err != nil {
		t.Fatal(err)
	}
	host := NewHost(testVersion, cpuidTable(amdLeaf0, bit7EBXAVX2|bit7EBXAVX512F))
	var st testState
	_, err := Read(path, host, &st)
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("Intel snapshot on AMD: %v, want ErrIncompatible", err)
	}
	for _, s := range []string{"GenuineIntel", "AuthenticAMD", path} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %s", err, s)
		}
	}
	if st.Name != "" {
		t.Error("state decoded although the snapshot was refused")
	}
}

func TestMissingFeature(t *testing.T) {
	m := sampleMeta()
	m.FormatVersion = FormatVersion
	for _, c := range []struct {
		name     string
		hostEBX7 uint32
		want     []string // missing features, none if compatible
	}{
		{"same", bit7EBXAVX2 | bit7EBXAVX512F, nil},
		{"host has more", bit7EBXAVX2 | bit7EBXAVX512F | 1<<6, nil},
		{"no AVX-512", bit7EBXAVX2, []string{"AVX512F"}},
		{"neither", 0, []string{"AVX2", "AVX512F"}},
	} {
		h := NewHost(testVersion, cpuidTable(intelLeaf0, c.hostEBX7))
		err := m.CompatibleWith(h)
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrIncompatible) {
			t.Errorf("%s: %v, want ErrIncompatible", c.name, err)
			continue
		}
		for _, f := range c.want {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s: error %q does not name %s", c.name, err, f)
			}
		}
		if got := h.CPUFeatures.Missing(m.CPUFeatures); !slices.Equal(got, c.want) {
			t.Errorf("%s: missing %v, want %v", c.name, got, c.want)
		}
	}
}

func TestMissingListIsBounded(t *testing.T) {
	m := Meta{FormatVersion: FormatVersion, VMMVersion: testVersion, CPUVendor: "GenuineIntel",
		CPUFeatures: CPUFeatures{{Function: 7, Register: EBX, Bits: ^uint32(0)}}}
	err := m.CompatibleWith(Host{VMMVersion: testVersion, CPUVendor: "GenuineIntel"})
	if !errors.Is(err, ErrIncompatible) {
		t.Fatalf("%v, want ErrIncompatible", err)
	}
	if !strings.Contains(err.Error(), "and 24 more") {
		t.Errorf("error %q does not bound its list to %d names", err, maxMissingListed)
	}
}

func TestWriteFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.state")
	if err := Write(path, sampleMeta(), sampleState()); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	longVendor := sampleMeta()
	longVendor.CPUVendor = strings.Repeat("x", maxVendorLen+1)
	for _, c := range []struct {
		name  string
		write func() error
	}{
		{"unserializable state", func() error { return Write(path, sampleMeta(), make(chan int)) }},
		{"invalid meta", func() error { return Write(path, longVendor, 1) }},
		{"write fails midway", func() error {
			return WriteFileAtomic(path, func(f *os.File) error {
				if _, err := f.Write([]byte("partial")); err != nil {
					return err
				}
				return errors.New("disk on fire")
			})
		}},
	} {
		if err := c.write(); err == nil {
			t.Errorf("%s: no error", c.name)
		}
		now, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(now, old) {
			t.Errorf("%s: the existing file changed", c.name)
		}
		if names := dirNames(t, dir); !slices.Equal(names, []string{"vm.state"}) {
			t.Errorf("%s: directory holds %v, want only vm.state", c.name, names)
		}
	}
}

func TestWriteFailureLeavesNoFile(t *testing.T) {
	dir := t.TempDir()
	// Renaming a file over a non-empty directory fails after the temporary
	// file is complete.
	if err := os.MkdirAll(filepath.Join(dir, "taken", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "taken"), sampleMeta(), 1); err == nil {
		t.Error("Write over a directory succeeded")
	}
	if err := Write(filepath.Join(dir, "missing", "s"), sampleMeta(), 1); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
	if err := Write(filepath.Join(dir, "fresh"), sampleMeta(), make(chan int)); err == nil {
		t.Error("Write of a channel succeeded")
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"taken"}) {
		t.Errorf("directory holds %v, want only taken", names)
	}
}

func TestReplaceExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	if err := Write(path, sampleMeta(), testState{Name: "first"}); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, sampleMeta(), testState{Name: "second"}); err != nil {
		t.Fatal(err)
	}
	var st testState
	if _, err := Read(path, sampleHost(), &st); err != nil || st.Name != "second" {
		t.Errorf("read %q, %v; want the second state", st.Name, err)
	}
}

// corrupt re-encodes a file with the given body (valid checksums).
func withBody(t *testing.T, body string) []byte {
	t.Helper()
	m := sampleMeta()
	b, err := encode(FormatVersion, m, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMalformed(t *testing.T) {
	good, _ := sampleFile(t)
	metaOnly := func(meta string) []byte {
		b := make([]byte, headerSize)
		copy(b, Magic)
		binary.LittleEndian.PutUint32(b[offVersion:], FormatVersion)
		binary.LittleEndian.PutUint32(b[offMetaLen:], uint32(len(meta)))
		binary.LittleEndian.PutUint64(b[offBodyLen:], 2)
		binary.LittleEndian.PutUint64(b[offHeaderCRC:], crc64.Checksum(b[:offHeaderCRC], crcTable))
		b = append(append(b, meta...), "{}"...)
		return binary.LittleEndian.AppendUint64(b, crc64.Checksum(b, crcTable))
	}
	for _, c := range []struct {
		name string
		file []byte
		want error
	}{
		{"unknown state field", withBody(t, `{"name":"x","extra":1}`), ErrMalformed},
		{"two state values", withBody(t, `{"name":"x"} {}`), ErrMalformed},
		{"state not JSON", withBody(t, `{"name":`), ErrMalformed},
		{"wrong state type", withBody(t, `{"regs":"no"}`), ErrMalformed},
		{"trailing byte", append(slices.Clone(good), 0), ErrMalformed},
		{"unknown meta field", metaOnly(`{"vmm_version":"0.1.0","cpu_vendor":"GenuineIntel","surprise":1}`), ErrMalformed},
		{"bad register", metaOnly(`{"vmm_version":"0.1.0","cpu_vendor":"GenuineIntel","cpu_features":[{"function":1,"register":"esp","bits":1}]}`), ErrMalformed},
		{"long vendor", metaOnly(`{"vmm_version":"0.1.0","cpu_vendor":"GenuineIntelX"}`), ErrMalformed},
		{"meta not JSON", metaOnly(`{`), ErrMalformed},
		{"text file", []byte("hello, world\n"), ErrNotSnapshot},
		{"short text", []byte("hi"), ErrNotSnapshot},
		{"empty", nil, ErrTruncated},
	} {
		var st testState
		if _, err := readBytes(c.file, sampleHost(), &st); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestTooLarge(t *testing.T) {
	hdr := func(metaLen uint32, bodyLen uint64) []byte {
		b := make([]byte, headerSize)
		copy(b, Magic)
		binary.LittleEndian.PutUint32(b[offVersion:], FormatVersion)
		binary.LittleEndian.PutUint32(b[offMetaLen:], metaLen)
		binary.LittleEndian.PutUint64(b[offBodyLen:], bodyLen)
		binary.LittleEndian.PutUint64(b[offHeaderCRC:], crc64.Checksum(b[:offHeaderCRC], crcTable))
		return b
	}
	for _, c := range []struct {
		name    string
		metaLen uint32
		bodyLen uint64
	}{
		{"meta", MaxMetaSize + 1, 0},
		{"body", 10, MaxFileSize},
		{"body overflows", 10, ^uint64(0) - 20},
		{"meta and body", MaxMetaSize, MaxFileSize - MaxMetaSize},
	} {
		if _, err := readBytes(hdr(c.metaLen, c.bodyLen), sampleHost(), new(testState)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrTooLarge", c.name, err)
		}
	}

	// A file over the cap is refused from its size, before any read.
	path := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(hdr(2, MaxFileSize)); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxFileSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadMeta(path); !errors.Is(err, ErrTooLarge) {
		t.Errorf("file of MaxFileSize+1 bytes: %v, want ErrTooLarge", err)
	}

	if _, err := encode(FormatVersion, sampleMeta(), make([]byte, MaxFileSize)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("encoding a state of MaxFileSize bytes: %v, want ErrTooLarge", err)
	}
}

func TestReadNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Must return at once, not wait for a writer.
	if _, err := ReadMeta(fifo); !errors.Is(err, ErrNotSnapshot) {
		t.Errorf("FIFO: %v, want ErrNotSnapshot", err)
	}
	if _, err := ReadMeta(dir); !errors.Is(err, ErrNotSnapshot) {
		t.Errorf("directory: %v, want ErrNotSnapshot", err)
	}
	if _, err := ReadMeta(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}

func TestErrorsNamePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(path, []byte("not a snapshot at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Read(path, sampleHost(), new(testState))
	if !errors.Is(err, ErrNotSnapshot) {
		t.Fatalf("%v, want ErrNotSnapshot", err)
	}
	if want := "snapshot " + path + ": not a vmm snapshot: "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q does not start %q", err, want)
	}
}
