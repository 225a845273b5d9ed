package kvm

import (
	"encoding/base64"
	"fmt"
)

// The register images KVM hands over as opaque byte arrays (XSAVE, the
// LAPIC page, the irqchip union) encode as base64 text, so their JSON is a
// string rather than an array of thousands of numbers.

// marshalBlob encodes b as base64 text.
func marshalBlob(b []byte) []byte {
	out := make([]byte, base64.StdEncoding.EncodedLen(len(b)))
	base64.StdEncoding.Encode(out, b)
	return out
}

// unmarshalBlob decodes base64 text into dst, which it must fill exactly:
// a snapshot file is untrusted, and a short image would restore zeros.
func unmarshalBlob(dst, text []byte, what string) error {
	if want := base64.StdEncoding.EncodedLen(len(dst)); len(text) != want {
		return fmt.Errorf("kvm: %s: %d characters of base64, want %d (%d bytes)", what, len(text), want, len(dst))
	}
	buf := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(buf, text)
	if err != nil {
		return fmt.Errorf("kvm: %s: %w", what, err)
	}
	if n != len(dst) {
		return fmt.Errorf("kvm: %s: %d bytes, want %d", what, n, len(dst))
	}
	copy(dst, buf)
	return nil
}

// MarshalText encodes the XSAVE image as base64.
func (x XSAVE) MarshalText() ([]byte, error) { return marshalBlob(x.Region[:]), nil }

// UnmarshalText decodes a base64 XSAVE image of exactly XSAVESize bytes.
func (x *XSAVE) UnmarshalText(text []byte) error {
	return unmarshalBlob(x.Region[:], text, "XSAVE image")
}

// MarshalText encodes the LAPIC register page as base64.
func (l LAPICState) MarshalText() ([]byte, error) { return marshalBlob(l.Regs[:]), nil }

// UnmarshalText decodes a base64 LAPIC register page of exactly 1 KiB.
func (l *LAPICState) UnmarshalText(text []byte) error {
	return unmarshalBlob(l.Regs[:], text, "LAPIC page")
}

// MarshalText encodes the irqchip union as base64.
func (d IRQChipData) MarshalText() ([]byte, error) { return marshalBlob(d[:]), nil }

// UnmarshalText decodes a base64 irqchip union of exactly 512 bytes.
func (d *IRQChipData) UnmarshalText(text []byte) error {
	return unmarshalBlob(d[:], text, "irqchip image")
}
