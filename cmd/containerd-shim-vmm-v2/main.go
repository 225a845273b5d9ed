// Command containerd-shim-vmm-v2 is vmm's containerd runtime shim
// (runtime io.containerd.vmm.v2): containerd runs it to start a microVM
// per sandbox and the sandbox's containers inside it. See package
// shim/containerd.
package main

import (
	"os"

	"github.com/govmm/vmm/shim/containerd"
)

func main() {
	os.Exit(containerd.Main(os.Args[1:], os.Stdout, os.Stderr))
}
