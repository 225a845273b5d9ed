package main

import (
	"slices"
	"testing"
)

// TestLinuxKernels: boot-linux boots the vmlinux, and the bzImage when it
// is built, each VMM with the same image; the plan counts every boot.
func TestLinuxKernels(t *testing.T) {
	b := &bench{cfg: config{linuxReps: 3, suites: []string{"boot-linux"}}, vmm: "/bin/vmm", qemu: "/bin/qemu", vmlinux: "/g/vmlinux", initrd: "/g/initramfs.cpio"}
	if ks := b.linuxKernels(); len(ks) != 1 || ks[0].path != "/g/vmlinux" {
		t.Fatalf("without a bzImage: %+v", ks)
	}
	if n := b.plan(); n != 3*2 {
		t.Errorf("plan without a bzImage: %d boots, want 6", n)
	}
	b.bzImage = "/g/bzImage"
	ks := b.linuxKernels()
	if len(ks) != 2 || ks[1].name != "bzImage" || ks[1].path != "/g/bzImage" {
		t.Fatalf("with a bzImage: %+v", ks)
	}
	if n := b.plan(); n != 3*2*2 {
		t.Errorf("plan with a bzImage: %d boots, want 12", n)
	}
	for _, argv := range [][]string{b.vmmLinuxKernel("/g/bzImage"), b.qemuLinuxKernel("console=ttyS0", "/g/bzImage")} {
		i := slices.Index(argv, "/g/bzImage")
		if i < 1 || (argv[i-1] != "--kernel" && argv[i-1] != "-kernel") || !slices.Contains(argv, "/g/initramfs.cpio") {
			t.Errorf("argv %q does not boot the bzImage with the initramfs", argv)
		}
	}
}
