package virtio

// ReadConfig is a device's Device.ReadConfig over its configuration space
// config: it copies config[off:off+len(data)] into data, and zeroes for the
// bytes past the end of config, which the transport lets a driver read (its
// device-configuration window is larger than any device's structure). The
// caller holds whatever lock guards config.
func ReadConfig(config []byte, off uint64, data []byte) {
	for i := range data {
		if o := off + uint64(i); o < uint64(len(config)) {
			data[i] = config[o]
		} else {
			data[i] = 0
		}
	}
}
