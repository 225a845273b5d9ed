package main

import (
	"fmt"
	"strconv"

	"github.com/govmm/vmm/vmm"
)

// entropyFlag is the boolean --entropy option: the virtio-rng device,
// Firecracker's entropy device, from which the guest reads the host's
// random bytes (/dev/hwrng in Linux).
type entropyFlag struct{ entropy **vmm.EntropyConfig }

// IsBoolFlag lets --entropy stand alone, as --entropy=true.
func (entropyFlag) IsBoolFlag() bool { return true }

func (f entropyFlag) String() string {
	if f.entropy == nil || *f.entropy == nil {
		return "false"
	}
	return "true"
}

// Set turns the device on or off.
func (f entropyFlag) Set(v string) error {
	on, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("entropy %q: want true or false", v)
	}
	*f.entropy = nil
	if on {
		*f.entropy = &vmm.EntropyConfig{}
	}
	return nil
}
