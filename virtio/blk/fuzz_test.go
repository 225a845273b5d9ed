package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/govmm/vmm/virtio/virtiotest"
)

// fuzzBufLens are the buffer lengths a layout byte picks from: odd sizes
// around the header, the segment and the sector, and whole sectors.
var fuzzBufLens = [8]uint32{1, 7, headerLen, segmentLen + 1, SectorSize - 1, SectorSize, 2 * SectorSize, 8 * SectorSize}

// fuzzMaxBufs bounds a request's descriptors.
const fuzzMaxBufs = 8

// FuzzRequest frames arbitrary requests (header fields, payload, and a
// descriptor layout: each layout byte is one buffer, bit 7 writable, bits
// 0-2 its length from fuzzBufLens, bit 3 an indirect chain) and runs them
// through parse and execute against a temp image, writable and read-only.
// A chain the queue accepts either parses or fails as errMalformed;
// execute answers a known status, writes no more than the writable bytes,
// never grows the image, reads back what the image holds, and leaves a
// read-only image untouched.
func FuzzRequest(f *testing.F) {
	rw, err := Open(Config{ID: "fuzz", Path: newImage(f), Engine: EngineSync})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { rw.Close() })
	roPath := newImage(f)
	ro, err := Open(Config{ID: "fuzz-ro", Path: roPath, ReadOnly: true, Engine: EngineSync})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ro.Close() })
	roImage, err := os.ReadFile(roPath)
	if err != nil {
		f.Fatal(err)
	}
	const size = testSectors * SectorSize
	discard := slog.New(slog.DiscardHandler)
	// What every input reuses, reset between inputs: the guest RAM and
	// queue (1 MiB of RAM per input was most of an execution), the
	// pattern the writable area starts as, and a buffer and descriptor
	// to read the read-only image back.
	d, err := virtiotest.NewDriver(1<<20, 16)
	if err != nil {
		f.Fatal(err)
	}
	const area = fuzzMaxBufs * 8 * SectorSize
	fill := bytes.Repeat([]byte{0xa5}, area)
	roFile, err := os.Open(roPath)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { roFile.Close() })
	roNow := make([]byte, len(roImage)+1)

	// Seeds: the layouts a Linux driver uses for each type.
	plain := []byte{2, 5, 0x80}    // header, one sector out, status
	read := []byte{2, 0x85, 0x80}  // header, one sector in, status
	seg := []byte{3, 0x80}         // header, 17 bytes (a segment and one more), status
	split := []byte{1, 1, 6, 0x87} // header over two buffers, data out, status at the end of data in
	indirect := []byte{0x0a, 0x85, 0x80}
	f.Add(uint32(typeIn), uint64(3), read, []byte{}, uint8(0xff))
	f.Add(uint32(typeOut), uint64(testSectors-1), plain, bytes.Repeat([]byte{0x5a}, SectorSize), uint8(0xff))
	f.Add(uint32(typeOut), uint64(testSectors), plain, []byte{}, uint8(0xff))
	f.Add(uint32(typeFlush), uint64(0), []byte{2, 0x80}, []byte{}, uint8(0xff))
	f.Add(uint32(typeGetID), uint64(0), []byte{2, 0x83}, []byte{}, uint8(0xff))
	f.Add(uint32(typeDiscard), uint64(0), seg, segment(4, 8, 0), uint8(0xff))
	f.Add(uint32(typeWriteZeroes), uint64(0), seg, segment(8, 4, segmentFlagUnmap), uint8(0xff))
	f.Add(uint32(typeWriteZeroes), uint64(0), seg, segment(1<<60, 4, 0), uint8(0))
	f.Add(uint32(typeIn), uint64(1), split, []byte{}, uint8(0xff))
	f.Add(uint32(typeIn), uint64(1), indirect, []byte{}, uint8(0xff))
	f.Add(uint32(99), uint64(0), []byte{0x80}, []byte{}, uint8(0xff))

	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, layout, payload []byte, feat uint8) {
		if len(layout) == 0 || len(layout) > fuzzMaxBufs {
			return
		}
		features := uint64(0)
		if feat&1 != 0 {
			features |= FeatureDiscard
		}
		if feat&2 != 0 {
			features |= FeatureWriteZeroes
		}
		d.Reset()
		q, err := d.Queue(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The readable buffers cut one contiguous area (header, then
		// payload), the writable ones another, so the header lands in
		// whatever the layout makes of it.
		out, in := d.Alloc(area, 8), d.Alloc(area, 8)
		hdr := make([]byte, headerLen, headerLen+len(payload))
		binary.LittleEndian.PutUint32(hdr[0:], typ)
		binary.LittleEndian.PutUint64(hdr[8:], sector)
		d.Write(out, append(hdr, payload[:min(len(payload), area-headerLen)]...))
		d.Write(in, fill)
		var bufs []virtiotest.Buf
		var outOff, inOff uint64
		indirect := false
		for _, l := range layout {
			n := fuzzBufLens[l&7]
			indirect = indirect || l&8 != 0
			if l&0x80 != 0 {
				bufs = append(bufs, virtiotest.Buf{Addr: in + inOff, Len: n, Write: true})
				inOff += uint64(n)
			} else {
				bufs = append(bufs, virtiotest.Buf{Addr: out + outOff, Len: n})
				outOff += uint64(n)
			}
		}
		if indirect {
			d.Post(d.IndirectChain(bufs...))
		} else {
			d.Post(d.Chain(bufs...))
		}
		c, ok, err := q.Pop()
		if err != nil || !ok {
			return // a layout the queue refuses (writable before readable) never reaches parse
		}
		for _, b := range []*Block{rw, ro} {
			var r request
			if err := parse(d.Mem, &c, &r); err != nil {
				if !errors.Is(err, errMalformed) {
					t.Fatalf("parse: undocumented error %v", err)
				}
				if c.ReadLen >= headerLen && c.WriteLen >= 1 {
					t.Fatalf("parse refused a chain with %d readable and %d writable bytes: %v", c.ReadLen, c.WriteLen, err)
				}
				return
			}
			if r.in.Len()+1 != c.WriteLen || r.out.Len()+headerLen != c.ReadLen {
				t.Fatalf("parsed %d out and %d in bytes from a chain of %d readable, %d writable", r.out.Len(), r.in.Len(), c.ReadLen, c.WriteLen)
			}
			status, written := b.execute(&r, features, discard)
			if status != StatusOK && status != StatusIOErr && status != StatusUnsupp {
				t.Fatalf("status %d", status)
			}
			if written < 1 || uint64(written) > c.WriteLen {
				t.Fatalf("reported %d bytes written into %d writable", written, c.WriteLen)
			}
			if typ == typeIn && status == StatusOK {
				got := make([]byte, r.in.Len())
				r.in.CopyOut(got, 0)
				want := make([]byte, len(got))
				if _, err := b.file.ReadAt(want, int64(sector*SectorSize)); err != nil {
					t.Fatalf("reading the image back at sector %d: %v", sector, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("IN of sector %d returned other bytes than the image holds", sector)
				}
			}
			r.release()
			fi, err := b.file.Stat()
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != size {
				t.Fatalf("type %d at sector %d resized the image to %d bytes", typ, sector, fi.Size())
			}
		}
		// One byte more than the image: a read-only image that grew
		// reads back longer.
		if n, err := roFile.ReadAt(roNow, 0); (err != nil && err != io.EOF) || !bytes.Equal(roNow[:n], roImage) {
			t.Fatalf("type %d at sector %d changed the read-only image (%v)", typ, sector, err)
		}
	})
}
