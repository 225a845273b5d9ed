package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/govmm/vmm/vmm"
)

// linuxReady is the line the guest's /init prints when user space is up
// (guest/init), just before it starts the shell.
const linuxReady = "vmm-guest: ready"

// linuxInit is the kernel's last line before user space: a milestone that
// is recorded even when the ready line never comes.
const linuxInit = "Run /init as init process"

// qemuDead are QEMU's messages for a vCPU that cannot go on; QEMU then
// hangs at 0% CPU instead of exiting, so waiting for the timeout is useless.
func qemuDead() []string {
	return []string{"KVM internal error", "emulation failure", "Assertion"}
}

// linuxKernel is one image of the project's kernel that boot-linux boots.
type linuxKernel struct {
	name string // in the metric's name and the logs
	path string
}

// linuxKernels are the images boot-linux boots: the vmlinux through its
// PVH entry and, when built, the bzImage (LZ4-compressed: its decompressor
// runs in the guest, in KVM's emulator on kvm-pvm hosts).
func (b *bench) linuxKernels() []linuxKernel {
	ks := []linuxKernel{{"vmlinux", b.vmlinux}}
	if b.bzImage != "" {
		ks = append(ks, linuxKernel{"bzImage", b.bzImage})
	}
	return ks
}

func (b *bench) bootLinux(ctx context.Context) *SuiteResult {
	r := &SuiteResult{Name: "boot-linux", Title: "Boot: Linux guest to user space",
		About: fmt.Sprintf("Process start to the guest's `%s` line on the serial console (printed by the guest's /init once "+
			"user space is up), for the project's own kernel (`build/guest/vmlinux`, booted through its PVH entry, and "+
			"`build/guest/bzImage`, the same kernel LZ4-compressed, through the Linux boot protocol) and "+
			"initramfs, %d MiB, one vCPU. Both VMMs get the same kernel command line: vmm's default plus the kvm-pvm "+
			"options vmm adds itself (and, on kvm-pvm, `noxsave` for QEMU, which does not complete XSAVE/XRSTOR as vmm does). On this kvm-pvm host the guest kernel runs in KVM's instruction emulator, so a "+
			"boot takes minutes and these numbers measure that emulator more than either VMM. %d boots each, timeout %v.",
			linuxReady, b.cfg.memMiB, b.cfg.linuxReps, b.cfg.linuxTimeout)}
	kernels := b.linuxKernels()
	if b.vmlinux == "" || b.initrd == "" {
		r.Skipped = fmt.Sprintf("no vmlinux and initramfs.cpio in %s (run `make guest`)", b.cfg.guestDir)
		b.prog.total -= 2 * b.cfg.linuxReps * len(kernels)
		return r
	}
	cmdline, err := b.effectiveCmdline(ctx)
	if err != nil {
		r.Skipped = "could not learn vmm's effective command line: " + err.Error()
		b.prog.total -= 2 * b.cfg.linuxReps * len(kernels)
		return r
	}
	r.note("Effective guest command line (vmm): `" + cmdline + "`")
	if b.qemu == "" {
		r.note("QEMU skipped: " + b.qemuWhy)
	}
	for _, k := range kernels {
		b.bootLinuxKernel(ctx, r, cmdline, k)
	}
	return r
}

// bootLinuxKernel boots one kernel image linuxReps times on each VMM,
// interleaved, into its own rows of r.
func (b *bench) bootLinuxKernel(ctx context.Context, r *SuiteResult, cmdline string, k linuxKernel) {
	suffix := ""
	if k.name != "vmlinux" {
		suffix = " (" + k.name + ")"
	}
	initAt := r.metric("process start → kernel starts /init"+suffix, "s", "time to user space")
	ready := r.metric("process start → "+linuxReady+suffix, "s", "time to user space")
	r.command("vmm"+suffix, b.vmmLinuxKernel(k.path))
	runQEMU := b.qemu != ""
	if runQEMU {
		r.command("QEMU"+suffix, b.qemuLinuxKernel(cmdline, k.path))
	}
	runVMM := true
	for rep := 1; rep <= b.cfg.linuxReps && ctx.Err() == nil; rep++ {
		for _, impl := range impls() {
			argv, run := b.vmmLinuxKernel(k.path), &runVMM
			if impl == implQEMU {
				argv, run = b.qemuLinuxKernel(cmdline, k.path), &runQEMU
			}
			if !*run {
				b.prog.total--
				continue
			}
			b.prog.step("boot-linux: %s %s rep %d/%d (minutes; timeout %v)", impl, k.name, rep, b.cfg.linuxReps, b.cfg.linuxTimeout)
			log := filepath.Join(b.dir, fmt.Sprintf("boot-linux-%s-%s-%d", strings.ToLower(impl), k.name, rep))
			b.prog.say("console log: %s.console.log", log)
			at, initTime, u, err := b.linuxBoot(ctx, impl, argv, log)
			if initTime > 0 {
				initAt.add(impl, initTime.Seconds())
			}
			if err != nil {
				r.failure(fmt.Sprintf("%s %s rep %d: %v", impl, k.name, rep, err))
				// A boot that failed once fails the same way again: don't
				// spend another timeout on it.
				*run = false
				r.note(fmt.Sprintf("%s with the %s was not retried after its failed boot (rep %d).", impl, k.name, rep))
				continue
			}
			ready.add(impl, at.Seconds())
			if u != nil && k.name == "vmlinux" {
				addUsage(b.memoryResult(), "Linux at its shell", impl, *u)
			}
		}
	}
}

// linuxBoot boots one Linux VM to its ready line, reads its memory at the
// shell prompt, and stops it.
func (b *bench) linuxBoot(ctx context.Context, name string, argv []string, log string) (ready, initAt time.Duration, u *MemUsage, err error) {
	p, err := Launch(ctx, ProcSpec{Name: name, Argv: argv, Stdin: true, Timeout: b.cfg.linuxTimeout + time.Minute,
		Marks: []string{linuxReady, linuxInit}, ErrMarks: qemuDead(), LogBase: log})
	if err != nil {
		return 0, 0, nil, err
	}
	defer p.Stop()
	defer func() {
		if m := p.out.mark(linuxInit); isDone(m) {
			initAt = m.at
		}
	}()
	at, err := waitConsole(ctx, p, linuxReady, "", b.cfg.linuxTimeout)
	if err != nil {
		return 0, 0, nil, err
	}
	time.Sleep(2 * idleSettle) // let the shell settle at its prompt
	usage, err := ReadUsage(p.PID(), b.guestBytes())
	if err != nil {
		b.prog.say("%s: memory at the shell prompt: %v", name, err)
		return at, 0, nil, nil
	}
	return at, 0, &usage, nil
}

// waitConsole waits up to d for want on p's console. It gives up early,
// with the last console and stderr lines, when fail (if not empty) appears
// on the console, QEMU reports a dead vCPU (after which it hangs rather
// than exits), the process exits, or ctx ends.
func waitConsole(ctx context.Context, p *Proc, want, fail string, d time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(d)
	for {
		if at, err := p.WaitOutput(want, 2*time.Second); err == nil {
			return at, nil
		}
		if fail != "" && isDone(p.out.mark(fail)) {
			return 0, fmt.Errorf("%s: %q on the console; last console lines:\n%s", p.Name, fail, strings.Join(p.Tail(10), "\n"))
		}
		if dead := p.err.firstSeen(qemuDead()); dead != "" {
			return 0, fmt.Errorf("%s stopped (%q on stderr); last console lines:\n%s\nstderr:\n%s",
				p.Name, dead, strings.Join(p.Tail(10), "\n"), strings.Join(p.StderrTail(12), "\n"))
		}
		select {
		case <-p.exited:
			return 0, fmt.Errorf("%s exited before %q; last console lines:\n%s\nstderr:\n%s",
				p.Name, want, strings.Join(p.Tail(10), "\n"), strings.Join(p.StderrTail(8), "\n"))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("no %q within %v; last console lines:\n%s", want, d, strings.Join(p.Tail(10), "\n"))
		}
	}
}

// effectiveCmdline learns the command line vmm gives a guest by default
// (its default plus the host workarounds it adds) from the test guest,
// which prints its command line verbatim.
func (b *bench) effectiveCmdline(ctx context.Context) (string, error) {
	p, err := b.runToExit(ctx, "vmm", b.vmmTestguest(vmm.DefaultCmdline+" "+testguestCmdline), 0)
	if err != nil {
		return "", err
	}
	for _, l := range p.Tail(200) {
		if rest, ok := strings.CutPrefix(l, "testguest: cmdline="); ok {
			var keep []string
			for _, f := range strings.Fields(rest) {
				if !strings.Contains(" "+testguestCmdline+" ", " "+f+" ") {
					keep = append(keep, f)
				}
			}
			return strings.Join(keep, " "), nil
		}
	}
	return "", fmt.Errorf("the test guest printed no cmdline line")
}
