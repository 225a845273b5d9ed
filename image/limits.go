package image

import (
	"errors"
	"fmt"
	"io"
)

// Default caps on what building one image may unpack. A layer is
// untrusted input: a few KiB of gzip or one sparse tar header can stand
// for terabytes.
const (
	DefaultMaxUnpacked = 16 << 30
	DefaultMaxEntries  = 1 << 21
)

// ErrTooLarge reports that an image went past MaxUnpacked or MaxEntries.
var ErrTooLarge = errors.New("image is larger than the unpacking cap")

// limits counts what a build has unpacked against its caps. File sizes
// (holes included) and entries add up over all layers; each pass over a
// decompressed stream is capped on its own, so a bomb that is not even a
// tar (read to its end to check its checksum) stops too.
type limits struct {
	maxBytes, maxEntries int64
	bytes, entries       int64
}

func newLimits(maxBytes, maxEntries int64) *limits {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxUnpacked
	}
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	return &limits{maxBytes: maxBytes, maxEntries: maxEntries}
}

func (l *limits) tooManyBytes() error {
	return fmt.Errorf("%w: more than %d bytes (%d MiB) unpacked (MaxUnpacked)", ErrTooLarge, l.maxBytes, l.maxBytes>>20)
}

// entry charges one tar entry of size bytes.
func (l *limits) entry(name string, size int64) error {
	l.entries++
	if l.entries > l.maxEntries {
		return fmt.Errorf("%w: more than %d entries (MaxEntries)", ErrTooLarge, l.maxEntries)
	}
	if size < 0 || size > l.maxBytes-l.bytes {
		return fmt.Errorf("entry %s (%d bytes): %w", name, size, l.tooManyBytes())
	}
	l.bytes += size
	return nil
}

// capReader fails once more than left bytes have been read through it.
type capReader struct {
	r    io.Reader
	left int64
	l    *limits
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		// One byte more tells a stream that ends exactly at the cap
		// from one that goes on.
		var one [1]byte
		if n, _ := c.r.Read(one[:]); n == 0 {
			return 0, io.EOF
		}
		return 0, c.l.tooManyBytes()
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}
