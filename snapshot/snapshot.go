// Package snapshot is the on-disk format of a VM state file: the vCPU,
// VM and device state of a paused microVM (guest RAM goes to a separate
// file, see memory.Guest.Dump), with what a restoring host must offer.
//
// A state file is, all integers little-endian:
//
//	offset  size  field
//	0       8     Magic ("\x89VMSTATE")
//	8       4     format version (FormatVersion)
//	12      4     meta length M (at most MaxMetaSize)
//	16      8     body length B
//	24      8     CRC-64 of bytes [0, 24)
//	32      M     Meta, JSON
//	32+M    B     state, JSON
//	32+M+B  8     CRC-64 of bytes [0, 32+M+B)
//
// The CRC is CRC-64/XZ: the ECMA-182 polynomial, reflected, initial value
// and final XOR all ones, as Go's hash/crc64 computes it with crc64.ECMA.
// The first 32 bytes keep this layout in every format version, so a reader
// can always tell a file of another version from a damaged one: the
// header's own CRC lets a flipped bit in a length or the version read as
// damage (ErrChecksum), not as truncation or as another version.
//
// Versions: a snapshot restores only with the same format version (as
// Firecracker refuses snapshot versions it does not know) and with a vmm of
// the same major.minor release. The state body is vmm's internal device and
// vCPU structs, which may change in any minor release without a format
// bump; patch releases must not change them. Decoding the state refuses
// unknown fields: a field this vmm does not know is state it would drop,
// and a guest resumed with part of its device state lost fails later and
// obscurely, so it is refused now.
//
// CPU: a snapshot taken on another CPU vendor, or whose guest saw a
// feature (CPUID) the restoring host's KVM cannot offer, is refused
// (ErrIncompatible): the guest would fault on an instruction it was told
// it could use, or the vCPU state would not load.
package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FormatVersion is the state-file format this package writes and reads.
// Bump it when the header or Meta changes.
const FormatVersion uint32 = 1

// Magic starts every state file. The high first byte and the letters
// (PNG's trick) tell a state file from text or another binary at a glance.
const Magic = "\x89VMSTATE"

// Limits on what Read accepts, so a hostile or damaged file costs bounded
// memory. Write refuses to produce what Read would refuse.
const (
	// MaxFileSize caps a whole state file (guest RAM is elsewhere).
	MaxFileSize = 64 << 20
	// MaxMetaSize caps the Meta JSON.
	MaxMetaSize = 64 << 10
	// MaxFeatureWords caps Meta.CPUFeatures (FeaturesFromCPUID yields 12).
	MaxFeatureWords = 64
	// maxVendorLen: CPUID leaf 0 holds 12 bytes of vendor string.
	maxVendorLen = 12
	// maxVMMVersionLen bounds a version string quoted in refusals.
	maxVMMVersionLen = 128
)

// File layout offsets (see the package comment).
const (
	offVersion   = 8
	offMetaLen   = 12
	offBodyLen   = 16
	offHeaderCRC = 24
	headerSize   = 32
	trailerSize  = 8
)

// Errors Read and ReadMeta return, wrapped with the path and the detail;
// test them with errors.Is.
var (
	// ErrNotSnapshot: the file does not start with Magic.
	ErrNotSnapshot = errors.New("not a vmm snapshot")
	// ErrTruncated: the file ends before the length its header gives.
	ErrTruncated = errors.New("truncated")
	// ErrChecksum: a CRC-64 does not match; the file is damaged.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrVersion: another format version, or another vmm major.minor.
	ErrVersion = errors.New("unsupported version")
	// ErrIncompatible: this host's CPU cannot run the snapshotted guest.
	ErrIncompatible = errors.New("incompatible with this host")
	// ErrMalformed: the checksums hold but the content does not parse
	// (a writer's bug, not damage).
	ErrMalformed = errors.New("malformed")
	// ErrTooLarge: the file, or its Meta, is above MaxFileSize or
	// MaxMetaSize.
	ErrTooLarge = errors.New("too large")
)

// crcTable is built once and only read.
var crcTable = crc64.MakeTable(crc64.ECMA)

// Meta describes a snapshot: who wrote it and what the guest relied on.
type Meta struct {
	// FormatVersion is the file's format version, from its header; Write
	// always writes the current FormatVersion.
	FormatVersion uint32 `json:"-"`
	// VMMVersion is the vmm release that wrote the file ("0.1.0").
	VMMVersion string `json:"vmm_version"`
	// CPUVendor is the CPUID vendor string of the host the guest ran on.
	CPUVendor string `json:"cpu_vendor"`
	// CPUFeatures are the feature flags the guest's CPUID showed it.
	CPUFeatures CPUFeatures `json:"cpu_features"`
	// MemSize is the guest RAM size in bytes: the memory file's size.
	MemSize uint64 `json:"mem_size"`
	// Created is when the snapshot was taken; Write sets it if zero.
	Created time.Time `json:"created"`
}

// Host describes where a snapshot is being restored.
type Host struct {
	// VMMVersion is this vmm's release.
	VMMVersion string
	// CPUVendor is this host's CPUID vendor string.
	CPUVendor string
	// CPUFeatures is what this host's KVM can offer a guest
	// (KVM_GET_SUPPORTED_CPUID through FeaturesFromCPUID).
	CPUFeatures CPUFeatures
}

// NewHost describes a host from the vmm release and KVM's supported CPUID.
func NewHost(vmmVersion string, supported []CPUIDEntry) Host {
	return Host{VMMVersion: vmmVersion, CPUVendor: VendorFromCPUID(supported), CPUFeatures: FeaturesFromCPUID(supported)}
}

// maxMissingListed bounds the feature names a refusal lists.
const maxMissingListed = 8

// CompatibleWith reports why a guest snapshotted as m cannot resume on h:
// ErrVersion for another format version or vmm major.minor, ErrIncompatible
// for another CPU vendor or a feature the guest saw and h lacks.
func (m Meta) CompatibleWith(h Host) error {
	if m.FormatVersion != FormatVersion {
		return fmt.Errorf("%w: snapshot format version %d, this vmm reads version %d", ErrVersion, m.FormatVersion, FormatVersion)
	}
	if !sameRelease(m.VMMVersion, h.VMMVersion) {
		return fmt.Errorf("%w: written by vmm %q, this is vmm %q; a snapshot restores only on the same major.minor release",
			ErrVersion, m.VMMVersion, h.VMMVersion)
	}
	if m.CPUVendor != h.CPUVendor {
		return fmt.Errorf("%w: snapshot from a %q CPU, this host is %q", ErrIncompatible, m.CPUVendor, h.CPUVendor)
	}
	if missing := h.CPUFeatures.Missing(m.CPUFeatures); len(missing) > 0 {
		list := strings.Join(missing[:min(len(missing), maxMissingListed)], ", ")
		if len(missing) > maxMissingListed {
			list += fmt.Sprintf(" and %d more", len(missing)-maxMissingListed)
		}
		return fmt.Errorf("%w: the guest saw %s, which this host lacks", ErrIncompatible, list)
	}
	return nil
}

// sameRelease reports whether two vmm versions share major.minor. Versions
// that are not "[v]MAJOR.MINOR[...]" (a development build) must be equal.
func sameRelease(a, b string) bool {
	amaj, amin, aok := majorMinor(a)
	bmaj, bmin, bok := majorMinor(b)
	if !aok || !bok {
		return a == b
	}
	return amaj == bmaj && amin == bmin
}

func majorMinor(v string) (major, minor uint64, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.ParseUint(parts[0], 10, 32)
	minor, err2 := strconv.ParseUint(parts[1], 10, 32)
	return major, minor, err1 == nil && err2 == nil
}

func (m Meta) validate() error {
	switch {
	case len(m.CPUVendor) > maxVendorLen:
		return fmt.Errorf("CPU vendor is %d bytes, at most %d", len(m.CPUVendor), maxVendorLen)
	case len(m.VMMVersion) > maxVMMVersionLen:
		return fmt.Errorf("vmm version is %d bytes, at most %d", len(m.VMMVersion), maxVMMVersionLen)
	case len(m.CPUFeatures) > MaxFeatureWords:
		return fmt.Errorf("%d CPU feature words, at most %d", len(m.CPUFeatures), MaxFeatureWords)
	}
	return nil
}

// Write saves meta and state (as JSON) to path atomically (WriteFileAtomic):
// on failure path is as it was, and no temporary file is left.
func Write(path string, meta Meta, state any) error {
	body, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("snapshot %s: encode state: %w", path, err)
	}
	meta.FormatVersion = FormatVersion
	if meta.Created.IsZero() {
		meta.Created = time.Now().UTC()
	}
	b, err := encode(FormatVersion, meta, body)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	return WriteFileAtomic(path, func(f *os.File) error {
		_, err := f.Write(b)
		return err
	})
}

// encode lays out a state file; version is a parameter so tests can write
// other versions.
func encode(version uint32, meta Meta, body []byte) ([]byte, error) {
	if err := meta.validate(); err != nil {
		return nil, err
	}
	mb, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("encode meta: %w", err)
	}
	if len(mb) > MaxMetaSize {
		return nil, fmt.Errorf("%w: meta is %d bytes, at most %d", ErrTooLarge, len(mb), MaxMetaSize)
	}
	total := headerSize + len(mb) + len(body) + trailerSize
	if total > MaxFileSize {
		return nil, fmt.Errorf("%w: state file would be %d bytes, at most %d", ErrTooLarge, total, MaxFileSize)
	}
	b := make([]byte, headerSize, total)
	copy(b, Magic)
	binary.LittleEndian.PutUint32(b[offVersion:], version)
	binary.LittleEndian.PutUint32(b[offMetaLen:], uint32(len(mb)))
	binary.LittleEndian.PutUint64(b[offBodyLen:], uint64(len(body)))
	binary.LittleEndian.PutUint64(b[offHeaderCRC:], crc64.Checksum(b[:offHeaderCRC], crcTable))
	b = append(b, mb...)
	b = append(b, body...)
	return binary.LittleEndian.AppendUint64(b, crc64.Checksum(b, crcTable)), nil
}

// header is the parsed fixed part of a state file.
type header struct {
	version uint32
	metaLen uint32
	bodyLen uint64
}

func (h header) total() int64 {
	return headerSize + int64(h.metaLen) + int64(h.bodyLen) + trailerSize
}

// parseHeader checks the first bytes of a file of size bytes (b holds
// min(size, headerSize) of them). After it, total() is at most MaxFileSize
// and equal to size.
func parseHeader(b []byte, size int64) (header, error) {
	if len(b) < len(Magic) {
		if !strings.HasPrefix(Magic, string(b)) {
			return header{}, fmt.Errorf("%w: starts with %q", ErrNotSnapshot, b)
		}
		return header{}, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrTruncated, size, headerSize)
	}
	if string(b[:len(Magic)]) != Magic {
		return header{}, fmt.Errorf("%w: starts with %q", ErrNotSnapshot, b[:len(Magic)])
	}
	if len(b) < headerSize {
		return header{}, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrTruncated, size, headerSize)
	}
	if want, got := binary.LittleEndian.Uint64(b[offHeaderCRC:]), crc64.Checksum(b[:offHeaderCRC], crcTable); want != got {
		return header{}, fmt.Errorf("%w: header CRC-64 is %#016x, computed %#016x", ErrChecksum, want, got)
	}
	h := header{
		version: binary.LittleEndian.Uint32(b[offVersion:]),
		metaLen: binary.LittleEndian.Uint32(b[offMetaLen:]),
		bodyLen: binary.LittleEndian.Uint64(b[offBodyLen:]),
	}
	if h.version != FormatVersion {
		return h, fmt.Errorf("%w: snapshot format version %d, this vmm reads version %d", ErrVersion, h.version, FormatVersion)
	}
	if h.metaLen > MaxMetaSize {
		return h, fmt.Errorf("%w: meta is %d bytes, at most %d", ErrTooLarge, h.metaLen, MaxMetaSize)
	}
	if h.bodyLen > MaxFileSize {
		return h, fmt.Errorf("%w: state is %d bytes, at most %d", ErrTooLarge, h.bodyLen, MaxFileSize)
	}
	if h.total() > MaxFileSize {
		return h, fmt.Errorf("%w: header gives %d bytes, at most %d", ErrTooLarge, h.total(), MaxFileSize)
	}
	if size < h.total() {
		return h, fmt.Errorf("%w: %d bytes, the header gives %d", ErrTruncated, size, h.total())
	}
	if size > h.total() {
		return h, fmt.Errorf("%w: %d bytes after the checksum", ErrMalformed, size-h.total())
	}
	return h, nil
}

// parse checks a whole state file and returns its Meta and the state JSON
// (aliasing b).
func parse(b []byte) (Meta, []byte, error) {
	if len(b) > MaxFileSize {
		return Meta{}, nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(b), MaxFileSize)
	}
	h, err := parseHeader(b[:min(len(b), headerSize)], int64(len(b)))
	if err != nil {
		return Meta{FormatVersion: h.version}, nil, err
	}
	end := len(b) - trailerSize
	if want, got := binary.LittleEndian.Uint64(b[end:]), crc64.Checksum(b[:end], crcTable); want != got {
		return Meta{FormatVersion: h.version}, nil, fmt.Errorf("%w: CRC-64 is %#016x, computed %#016x", ErrChecksum, want, got)
	}
	metaEnd := headerSize + int(h.metaLen)
	var m Meta
	if err := decodeStrict(b[headerSize:metaEnd], &m); err != nil {
		return Meta{FormatVersion: h.version}, nil, fmt.Errorf("%w: meta: %w", ErrMalformed, err)
	}
	m.FormatVersion = h.version
	if err := m.validate(); err != nil {
		return m, nil, fmt.Errorf("%w: meta: %w", ErrMalformed, err)
	}
	return m, b[metaEnd:end], nil
}

// readBytes is Read after the file is in memory.
func readBytes(b []byte, host Host, state any) (Meta, error) {
	m, body, err := parse(b)
	if err != nil {
		return m, err
	}
	if err := m.CompatibleWith(host); err != nil {
		return m, err
	}
	if err := decodeStrict(body, state); err != nil {
		return m, fmt.Errorf("%w: state: %w", ErrMalformed, err)
	}
	return m, nil
}

// decodeStrict decodes exactly one JSON value with no unknown fields.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// Read loads the state file at path into state (a pointer, as for
// json.Unmarshal) once the file checks out (magic, version, lengths,
// checksums) and its Meta is CompatibleWith host. It returns the Meta,
// also with ErrVersion or ErrIncompatible so a caller can say more.
// Errors name the path and wrap one of the Err values.
func Read(path string, host Host, state any) (Meta, error) {
	b, version, err := load(path)
	if err != nil {
		return Meta{FormatVersion: version}, fmt.Errorf("snapshot %s: %w", path, err)
	}
	m, err := readBytes(b, host, state)
	if err != nil {
		return m, fmt.Errorf("snapshot %s: %w", path, err)
	}
	return m, nil
}

// ReadMeta returns the Meta of the state file at path, checked as Read
// checks it but without a compatibility check or decoding the state: for
// tools that describe snapshots. For another format version the error
// wraps ErrVersion and the Meta holds only FormatVersion.
func ReadMeta(path string) (Meta, error) {
	b, version, err := load(path)
	if err != nil {
		return Meta{FormatVersion: version}, fmt.Errorf("snapshot %s: %w", path, err)
	}
	m, _, err := parse(b)
	if err != nil {
		return m, fmt.Errorf("snapshot %s: %w", path, err)
	}
	return m, nil
}

// load reads a state file whole, after its header checks out, so memory
// use is bounded by MaxFileSize and a file that is not a snapshot costs a
// header read. It returns the header's format version when it got that far.
func load(path string) (b []byte, version uint32, err error) {
	// O_NONBLOCK: a FIFO at path must not block open; it is refused below.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%w: not a regular file (%v)", ErrNotSnapshot, fi.Mode().Type())
	}
	size := fi.Size()
	if size > MaxFileSize {
		return nil, 0, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, size, MaxFileSize)
	}
	var hb [headerSize]byte
	n, err := io.ReadFull(f, hb[:min(size, headerSize)])
	if err != nil {
		return nil, 0, shrank(err)
	}
	h, err := parseHeader(hb[:n], size)
	if err != nil {
		return nil, h.version, err
	}
	b = make([]byte, h.total())
	copy(b, hb[:])
	if _, err := io.ReadFull(f, b[headerSize:]); err != nil {
		return nil, 0, shrank(err)
	}
	if n, _ := f.Read(hb[:1]); n != 0 {
		return nil, 0, fmt.Errorf("%w: grew while being read", ErrMalformed)
	}
	return b, h.version, nil
}

// shrank classifies a short read of a file whose size was just checked.
func shrank(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: the file shrank while being read", ErrTruncated)
	}
	return err
}
