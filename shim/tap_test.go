package shim

import (
	"fmt"
	"net"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/govmm/vmm/internal/testenv"
)

func TestMissingTaps(t *testing.T) {
	if got := missingTaps([]string{"lo", "vmmnosuch0"}); !slices.Equal(got, []string{"vmmnosuch0"}) {
		t.Errorf("missingTaps = %q", got)
	}
	if err := deleteTap("vmmnosuch0"); err != nil {
		t.Errorf("deleting a tap that is not there: %v", err)
	}
}

// TestDeleteTap makes a persistent tap, as a VMM that created one and
// died might leave, and checks deleteTap removes it. It needs
// CAP_NET_ADMIN.
func TestDeleteTap(t *testing.T) {
	name := fmt.Sprintf("vmmshim%d", os.Getpid()%100000)
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		testenv.Skipf(t, "no /dev/net/tun: %v", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		testenv.Skipf(t, "cannot create a tap (needs CAP_NET_ADMIN): %v", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		unix.Close(fd)
		testenv.Skipf(t, "cannot make the tap persistent: %v", err)
	}
	unix.Close(fd)
	if _, err := net.InterfaceByName(name); err != nil {
		t.Fatalf("persistent tap %s not there: %v", name, err)
	}
	if err := deleteTap(name); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(name); err == nil {
		t.Errorf("tap %s still there after deleteTap", name)
	}
}
