package shim

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// missingTaps returns the names among taps that are not interfaces yet:
// the VMM will create them, so the shim must make sure they go away.
func missingTaps(taps []string) []string {
	var missing []string
	for _, name := range taps {
		if _, err := net.InterfaceByName(name); err != nil {
			missing = append(missing, name)
		}
	}
	return missing
}

// deleteTap removes a tap the VMM created. The VMM makes its taps
// non-persistent, so they normally vanish with its file descriptor; one
// still present (made persistent meanwhile) is attached to, made
// non-persistent, and released, which deletes it.
func deleteTap(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil // already gone
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("deleting tap %s: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("deleting tap %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("deleting tap %s: TUNSETIFF: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0); err != nil {
		return fmt.Errorf("deleting tap %s: TUNSETPERSIST: %w", name, err)
	}
	return nil
}
