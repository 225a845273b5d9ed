package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/govmm/vmm/kvm"
)

// testguestCmdline is what both VMMs pass to the test guest: exit with
// status 0 right after its report, and skip the int3 check, which QEMU
// cannot run on kvm-pvm (vmm completes the int3 itself, QEMU's vCPU dies).
const testguestCmdline = "exit=0 int3=0"

// echoCmdline stops the test guest at its "ready>" prompt until a line
// arrives: the idle state the memory measurements use.
const echoCmdline = "echo=1 exit=0 int3=0"

// qemuCPU is QEMU's CPU model here: with plain -cpu host, QEMU 7.2 aborts
// on kvm-pvm setting MSR 0x10a (IA32_ARCH_CAPABILITIES), which the host
// refuses.
const qemuCPU = "host,-arch-capabilities"

// qemuLinuxCPU also drops cmpxchg16b, as guest/kernel/README.md does for
// QEMU; on kvm-pvm the guest sees the host's CPUID anyway, so the masking
// that counts is the kernel command line both VMMs share.
const qemuLinuxCPU = "host,-cx16,-arch-capabilities"

func (b *bench) memArg() string { return strconv.Itoa(b.cfg.memMiB) + "M" }

// vmmTestguest runs the test guest with the test exit device.
func (b *bench) vmmTestguest(cmdline string) []string {
	return []string{b.vmm, "--kernel", b.testguest, "--debug-exit", "--mem", b.memArg(), "--cmdline", cmdline}
}

// qemuTestguest is the closest QEMU equivalent: microvm (no firmware
// tables beyond what the test guest needs, no PCI scan), PVH boot of the
// same ELF, the serial port on stdio and isa-debug-exit at the same port.
func (b *bench) qemuTestguest(cmdline string, extra ...string) []string {
	argv := []string{b.qemu, "-M", "microvm", "-enable-kvm", "-cpu", qemuCPU, "-smp", "1", "-m", strconv.Itoa(b.cfg.memMiB),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", b.testguest, "-append", cmdline}
	return append(argv, extra...)
}

// vmmLinux boots the default guest with vmm's default command line; vmm
// adds its kvm-pvm options itself.
func (b *bench) vmmLinux() []string { return b.vmmLinuxKernel(b.vmlinux) }

// vmmLinuxKernel is vmmLinux with another image of the same kernel.
func (b *bench) vmmLinuxKernel(kernel string) []string {
	return []string{b.vmm, "--kernel", kernel, "--initrd", b.initrd, "--mem", b.memArg()}
}

// qemuLinux boots the same kernel and initramfs with the command line vmm
// ended up giving its guest (so the same CPU-feature masking), plus
// `noxsave` on kvm-pvm hosts (qemuCmdline).
func (b *bench) qemuLinux(cmdline string) []string { return b.qemuLinuxKernel(cmdline, b.vmlinux) }

// qemuLinuxKernel is qemuLinux with another image of the same kernel.
func (b *bench) qemuLinuxKernel(cmdline, kernel string) []string {
	cmdline = qemuCmdline(cmdline)
	return []string{b.qemu, "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", qemuLinuxCPU, "-smp", "1", "-m", strconv.Itoa(b.cfg.memMiB),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
		"-kernel", kernel, "-initrd", b.initrd, "-append", cmdline}
}

// qemuExitStatus is what QEMU's isa-debug-exit makes of the guest's status.
func qemuExitStatus(guest int) int { return guest<<1 | 1 }

// checkExit turns an unexpected exit status into an error.
func checkExit(name string, got, want int) error {
	if got != want {
		return fmt.Errorf("%s exited with status %d, want %d", name, got, want)
	}
	return nil
}

// qemuCmdline adapts vmm's effective guest command line for QEMU. On
// kvm-pvm vmm completes the XSAVE/XRSTOR instructions KVM's emulator cannot
// run, so its guest kernel keeps XSAVE; QEMU does not, and its guest dies at
// the first XRSTOR unless told `noxsave`.
func qemuCmdline(cmdline string) string {
	if kvm.IsPVM() && !strings.Contains(" "+cmdline+" ", " noxsave ") {
		return cmdline + " noxsave"
	}
	return cmdline
}
