package snapshot

import (
	"encoding/binary"
	"errors"
	"hash/crc64"
	"reflect"
	"runtime"
	"slices"
	"testing"
)

// fuzzAllocSlack is what one read may allocate beyond a multiple of the
// input: the decoder's fixed buffers and whatever the fuzzing machinery
// allocates meanwhile.
const fuzzAllocSlack = 1 << 20

func FuzzRead(f *testing.F) {
	good, metaLen := sampleFile(f)
	f.Add(good)
	f.Add(good[:headerSize])
	f.Add(good[:headerSize+metaLen])
	f.Add(good[:len(good)-1])
	f.Add(append(slices.Clone(good), '\n'))
	flipped := slices.Clone(good)
	flipped[headerSize+metaLen+2] ^= 0x10
	f.Add(flipped)
	if v2, err := encode(FormatVersion+1, sampleMeta(), []byte("{}")); err == nil {
		f.Add(v2)
	}
	if odd, err := encode(FormatVersion, sampleMeta(), []byte(`{"regs":[1e400],"devs":{"a":-1}}`)); err == nil {
		f.Add(odd)
	}
	f.Add([]byte(Magic))
	f.Add([]byte{})
	f.Add([]byte("{}"))

	host := sampleHost()
	known := []error{ErrNotSnapshot, ErrTruncated, ErrChecksum, ErrVersion, ErrIncompatible, ErrMalformed, ErrTooLarge}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkRead(t, data, host, known)
		// The same bytes with the checksums made right, so the fuzzer
		// gets past them to the lengths, the meta and the state.
		if len(data) >= headerSize+trailerSize {
			fixed := slices.Clone(data)
			binary.LittleEndian.PutUint64(fixed[offHeaderCRC:], crc64.Checksum(fixed[:offHeaderCRC], crcTable))
			end := len(fixed) - trailerSize
			binary.LittleEndian.PutUint64(fixed[end:], crc64.Checksum(fixed[:end], crcTable))
			checkRead(t, fixed, host, known)
		}
	})
}

func checkRead(t *testing.T, data []byte, host Host, known []error) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var st testState
	m, err := readBytes(data, host, &st)
	runtime.ReadMemStats(&after)
	// No allocation follows a length field beyond the bytes present.
	if n := after.TotalAlloc - before.TotalAlloc; n > fuzzAllocSlack+64*uint64(len(data)) {
		t.Fatalf("%d-byte input allocated %d bytes", len(data), n)
	}
	if err != nil {
		if !slices.ContainsFunc(known, func(e error) bool { return errors.Is(err, e) }) {
			t.Fatalf("error %v wraps none of the package's errors", err)
		}
		return
	}
	if m.FormatVersion != FormatVersion || m.CompatibleWith(host) != nil {
		t.Fatalf("accepted %+v, which host %+v cannot restore", m, host)
	}
	// What was accepted re-encodes to a file that reads back the same.
	_, body, err := parse(data)
	if err != nil {
		t.Fatalf("readBytes accepted what parse refuses: %v", err)
	}
	again, err := encode(FormatVersion, m, body)
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	var st2 testState
	m2, err := readBytes(again, host, &st2)
	if err != nil || !reflect.DeepEqual(st2, st) || !m2.Created.Equal(m.Created) || m2.VMMVersion != m.VMMVersion {
		t.Fatalf("re-encoded file reads back %+v %+v, %v; want %+v %+v", m2, st2, err, m, st)
	}
}
