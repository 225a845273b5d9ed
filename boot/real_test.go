package boot

import (
	"os"
	"strings"
	"testing"
)

// TestRealKernel loads real kernel images named by VMM_TEST_KERNELS
// (space-separated paths) through the whole boot preparation; it is skipped
// when the variable is unset.
func TestRealKernel(t *testing.T) {
	paths := os.Getenv("VMM_TEST_KERNELS")
	if paths == "" {
		t.Skip("VMM_TEST_KERNELS not set")
	}
	for _, path := range strings.Fields(paths) {
		t.Run(path, func(t *testing.T) {
			image, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			const memSize = 512 * mib
			mem := newTestGuest(t, memSize)
			k, err := LoadKernel(mem, image)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("protocol %v entry %#x load [%#x, %#x) initrd max %#x cmdline max %d",
				k.Protocol, k.Entry, k.LoadAddr, k.LoadEnd, k.InitrdAddrMax, k.CmdlineMax)
			if k.Header != nil {
				t.Logf("boot protocol %s, xloadflags %#x, init_size %#x, pref_address %#x",
					k.Header.VersionString(), k.Header.Xloadflags, k.Header.InitSize, k.Header.PrefAddress)
			}
			initrd, err := LoadInitrd(mem, k, memSize, make([]byte, 1<<20))
			if err != nil {
				t.Fatal(err)
			}
			rsdp, err := WriteACPITables(mem, ACPIConfig{NumCPUs: 2})
			if err != nil {
				t.Fatal(err)
			}
			arg, err := WriteBootParams(mem, k, Params{Cmdline: "console=ttyS0", MemSize: memSize,
				InitrdAddr: initrd, InitrdSize: 1 << 20, RSDPAddr: rsdp})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := SetupCPU(mem, k, arg); err != nil {
				t.Fatal(err)
			}
		})
	}
}
