package api

import "github.com/govmm/vmm/vmm"

// Entropy is the body of PUT /entropy and the config file's "entropy"
// section: Firecracker's virtio-rng device (EntropyDeviceConfig).
type Entropy struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// checkEntropy validates an entropy device. The device has no rate
// limiter: a limiter that limits is refused rather than ignored.
func checkEntropy(e Entropy) error {
	return checkRateLimiter("rate_limiter", e.RateLimiter)
}

// SetEntropy is PUT /entropy: the machine gets a virtio-rng device.
func (c *Controller) SetEntropy(e Entropy) error {
	if err := checkEntropy(e); err != nil {
		return err
	}
	if err := c.preBoot(); err != nil {
		return err
	}
	defer c.mu.Unlock()
	c.cfg.Entropy = &vmm.EntropyConfig{}
	c.noteConfiguredLocked("entropy")
	return nil
}

// entropyLocked is the entropy section of GET /vm/config, nil without the
// device.
func (c *Controller) entropyLocked() *Entropy {
	if c.cfg.Entropy == nil {
		return nil
	}
	return &Entropy{}
}
