/*
 * testguest entry code: the two x86 entry paths into the common 64-bit C
 * code (kmain in main.c), the GDT, the static identity page tables, and the
 * exception stubs.
 *
 * Image layout (linked at IMAGE_BASE = 0x100000, see linker.ld):
 *   0x100000  linux32_entry  32-bit Linux boot protocol entry (code32_start).
 *                            Only used when a loader runs our real-mode
 *                            setup stub (e.g. QEMU -kernel testguest.bzimage);
 *                            it switches to long mode and continues at
 *                            linux64_entry.
 *   0x100200  linux64_entry  64-bit Linux boot protocol entry
 *                            (Documentation/arch/x86/boot.rst, "64-bit BOOT
 *                            PROTOCOL"): long mode, identity-mapped, RSI =
 *                            struct boot_params.  ELF e_entry points here.
 *   pvh_entry                Xen PVH entry (XEN_ELFNOTE_PHYS32_ENTRY,
 *                            xen/include/public/arch-x86/hvm/start_info.h):
 *                            32-bit protected mode, paging off, EBX = struct
 *                            hvm_start_info.
 *
 * Only plain integer instructions are used: on the target host every guest
 * ring-0 instruction goes through KVM's instruction emulator.
 */
#include "defs.h"

/* ------------------------------------------------------------------ */
	.section .head, "ax"
	.code32
	.globl linux32_entry
linux32_entry:
	/* Linux 32-bit boot protocol: flat CS/DS/ES/SS, ESI = boot_params. */
	cli
	cld
	movl	$BOOT_LINUX64, %edi
	jmp	common32

	/* boot.rst: the 64-bit entry is at load address + 0x200. */
	.org	LINUX64_ENTRY_OFFSET, 0xcc
	.code64
	.globl linux64_entry
linux64_entry:
	/* Long mode, identity map by the loader, RSI = boot_params.  Nothing
	 * else (GDT, IDT, stack) set up by the loader is relied upon. */
	cli
	cld
	movl	$BOOT_LINUX64, %edi
	jmp	common64

/* ------------------------------------------------------------------ */
	.text
	.code32
	.globl pvh_entry
pvh_entry:
	/* PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
	 * There is no usable stack, so none of the 32-bit code pushes. */
	cli
	cld
	movl	%ebx, %esi
	movl	$BOOT_PVH, %edi

/*
 * Common 32-bit -> 64-bit switch.  In: ESI = boot info pointer, EDI = boot
 * kind.  Loads our GDT, enables PAE + EFER.LME + paging with the static
 * identity map (first 4 GiB, 2 MiB pages), far-jumps into 64-bit code.
 * The absolute addresses below are fine because segments are flat and
 * paging is off (or, after CR0.PG, identity mapped).
 */
common32:
	lgdtl	gdt_desc
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	ljmpl	$SEL_CODE32, $1f
1:
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$(CR0_PG | CR0_PE), %eax
	movl	%eax, %cr0
	ljmpl	$SEL_CODE64, $2f

	.code64
2:
	/* Upper halves of GPRs are undefined after the mode switch. */
	movl	%esi, %esi
	movl	%edi, %edi
	cmpl	$BOOT_PVH, %edi
	je	common64
	/* Came from linux32_entry: run the real 64-bit Linux entry. */
	jmp	linux64_entry

/*
 * Common 64-bit setup.  In: RDI = boot kind, RSI = boot info pointer.
 * Installs our GDT and stack, reloads all segment registers, zeroes .bss and
 * calls kmain(kind, info).  Only RAX/RCX are clobbered before the call.
 */
common64:
	lgdt	gdt_desc(%rip)
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	leaq	stack_top(%rip), %rsp
	/* Reload CS with a far return (portable across Intel and AMD,
	 * unlike a REX.W far jump through memory). */
	pushq	$SEL_CODE64
	leaq	3f(%rip), %rax
	pushq	%rax
	lretq
3:
	/* The flat binary loaded on the Linux path does not contain .bss,
	 * and loaders need not zero it, so clear it ourselves. */
	leaq	__bss_start(%rip), %rax
	leaq	__bss_end(%rip), %rcx
4:	cmpq	%rcx, %rax
	jae	5f
	movq	$0, (%rax)
	addq	$8, %rax
	jmp	4b
5:
	call	kmain
	/* kmain does not return; be safe anyway. */
	.globl halt_forever
halt_forever:
	cli
	hlt
	jmp	halt_forever

/* ------------------------------------------------------------------ */
/*
 * Exception stubs for vectors 0..31, each EXC_STUB_SIZE bytes.  Vectors
 * without a CPU-pushed error code push a dummy 0 so the frame is uniform:
 *   (%rsp) vector, 8(%rsp) error code, 16(%rsp) RIP, 24 CS, 32 RFLAGS, ...
 * Vectors with an error code (Intel SDM vol. 3, table 6-1): 8, 10-14, 17,
 * 21, 29, 30.
 */
	.macro EXC_STUB vec
	.p2align 4, 0xcc
	.if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	/* CPU already pushed an error code */
	.else
	pushq	$0
	.endif
	pushq	$\vec
	jmp	exc_common
	.endm

	.p2align 4, 0xcc
	.globl exc_stubs
exc_stubs:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	EXC_STUB \v
	.endr
	/* Fails to assemble ("attempt to move .org backwards") if any stub
	 * outgrew EXC_STUB_SIZE. */
	.org	exc_stubs + NR_EXCEPTION_VECTORS * EXC_STUB_SIZE, 0xcc

exc_common:
	/* Never returns: report and exit with status 99 (main.c). */
	movq	(%rsp), %rdi		/* vector */
	movq	16(%rsp), %rsi		/* faulting RIP */
	movq	8(%rsp), %rdx		/* error code */
	andq	$-16, %rsp		/* ABI stack alignment for the call */
	call	exception_handler
	jmp	halt_forever

/* Vector 3 (#BP from int3): count the hit and resume after the int3. */
	.globl int3_handler
int3_handler:
	incl	int3_hits(%rip)
	iretq

/* ------------------------------------------------------------------ */
	.data
	.p2align 3
/*
 * GDT.  Accessed bits are preset (type 0x9b/0x93) so loading a selector
 * does not make the CPU (or KVM's emulator) write back to the table.
 */
gdt:
	.quad	0			/* 0x00 null */
	.quad	0x00cf9b000000ffff	/* 0x08 32-bit code, base 0, 4 GiB */
	.quad	0x00af9b000000ffff	/* 0x10 64-bit code (L=1) */
	.quad	0x00cf93000000ffff	/* 0x18 data, base 0, 4 GiB, writable */
gdt_end:
	.p2align 3
	/* The 32-bit lgdt reads only limit + low 4 bytes of the base. */
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt

/*
 * Identity page tables for the first 4 GiB with 2 MiB pages, fully built at
 * assembly time so no loop has to run (slowly) under emulation.  Used by
 * the PVH and 32-bit Linux paths; the 64-bit Linux path keeps the VMM's.
 */
	.section .data.pagetables, "aw"
	.p2align 12
pml4:
	.quad	pdpt + PTE_PRESENT + PTE_WRITE
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x0000 + PTE_PRESENT + PTE_WRITE
	.quad	pd + 0x1000 + PTE_PRESENT + PTE_WRITE
	.quad	pd + 0x2000 + PTE_PRESENT + PTE_WRITE
	.quad	pd + 0x3000 + PTE_PRESENT + PTE_WRITE
	.fill	508, 8, 0
pd:
	.set	pa, 0
	.rept	4 * 512
	.quad	pa + PTE_PRESENT + PTE_WRITE + PTE_PS
	.set	pa, pa + 0x200000
	.endr

/* ------------------------------------------------------------------ */
/*
 * Xen ELF note announcing the PVH entry point (xen/include/public/elfnote.h:
 * XEN_ELFNOTE_PHYS32_ENTRY = 18).  The linker script puts this section into
 * a PT_NOTE segment with 4-byte alignment.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
	.section .note.pvh, "a", @note
	.p2align 2
	.long	4			/* namesz: "Xen\0" */
	.long	4			/* descsz: 32-bit physical address */
	.long	XEN_ELFNOTE_PHYS32_ENTRY
	.asciz	"Xen"
	.long	pvh_entry

/*
 * kernel_info (boot.rst, protocol 2.15), referenced by the setup header's
 * kernel_info_offset relative to the start of the protected-mode payload.
 */
	.section .rodata.kernel_info, "a"
	.p2align 2
	.globl kernel_info
kernel_info:
	.ascii	"LToP"			/* header magic */
	.long	kernel_info_end - kernel_info	/* size */
	.long	kernel_info_end - kernel_info	/* size_total */
	.long	0			/* setup_type_max: we read no setup_data */
kernel_info_end:

/* Boot stack; not part of the loaded file and not zeroed. */
	.section .stack, "aw", @nobits
	.p2align 4
stack_bottom:
	.skip	STACK_SIZE
	.globl stack_top
stack_top:

	.section .note.GNU-stack, "", @progbits
