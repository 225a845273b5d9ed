/*
 * bzImage wrapper for testguest (Linux x86 boot protocol 2.15,
 * Documentation/arch/x86/boot.rst).  Assembled by build.sh with
 *   -DINIT_SIZE=<_end - 0x100000>  -DKERNEL_INFO_OFFSET=<kernel_info - 0x100000>
 * and the flat image testguest.bin on the assembler's include path, then
 * linked at 0 and converted to a raw binary.  File layout:
 *
 *   0x0000 - 0x01f0  "boot sector": zeros (it becomes struct boot_params when
 *                    a 16-bit loader runs our setup code in place)
 *   0x01f1 - 0x026b  setup header (field by field below)
 *   0x026c           near jump to the real-mode setup stub
 *   0x1000 - 0x11ff  real-mode setup stub (only for loaders that run the
 *                    16-bit setup code, e.g. QEMU/SeaBIOS; the VMM enters
 *                    the payload at 0x100200 in 64-bit mode instead)
 *   0x1200 - end     protected-mode payload = testguest.bin (objcopy -O
 *                    binary of testguest.elf), loaded at 0x100000,
 *                    padded to 16 bytes
 */
#include "defs.h"

#define SETUP_SECTS 8			/* 512-byte sectors after the boot sector */
#define SETUP_SIZE ((SETUP_SECTS + 1) * 512)
#define SETUP_STUB_OFFSET 0x1000	/* past all of struct boot_params */

#define BOOT_FLAG 0xaa55
#define HDRS_MAGIC 0x53726448		/* "HdrS" */
#define BOOT_PROTOCOL_VERSION 0x020f	/* 2.15 */
#define LOADFLAG_LOADED_HIGH 0x01	/* protected-mode code at 0x100000 */
#define XLF_KERNEL_64 0x0001		/* has the 64-bit entry at +0x200 */
#define VID_MODE_NORMAL 0xffff
#define INITRD_ADDR_MAX 0x7fffffff
#define KERNEL_ALIGNMENT 0x100000	/* not relocatable; loaded at 1 MiB */
#define MIN_ALIGNMENT_LOG2 20
#define CMDLINE_SIZE 4095		/* max length without the NUL */

/* struct boot_params offsets filled in by the real-mode stub. */
#define BP_E820_ENTRIES 0x1e8
#define BP_E820_TABLE 0x2d0
#define E820_MAX_ENTRIES_ZEROPAGE 128
#define E820_ENTRY_SIZE 20
#define SMAP 0x534d4150			/* "SMAP", INT 15h AX=E820h */

#define PORT_SYSTEM_CONTROL_A 0x92	/* bit 1: fast A20 gate, bit 0: reset */
#define BOOT_CS 0x10			/* boot.rst 32-bit protocol selectors */
#define BOOT_DS 0x18

/* Assert that the next field starts at file offset \off. */
	.macro AT off
	.if (. - _start) != \off
	.error "setup header field misplaced"
	.endif
	.endm

	.code16
	.text
	.globl _start
_start:
	/* ---------------- setup header at 0x1f1 ---------------- */
	.fill	0x1f1, 1, 0		/* .fill, not .org, keeps the AT checks constant */
setup_sects:		.byte	SETUP_SECTS
root_flags:		.word	0
syssize:		.long	(payload_end - payload_start) / 16
ram_size:		.word	0
vid_mode:		.word	VID_MODE_NORMAL
root_dev:		.word	0
	AT	0x1fe
boot_flag:		.word	BOOT_FLAG
	AT	0x200
jump:			.byte	0xeb, setup_jump - 1f	/* jmp short */
1:
	AT	0x202
header:			.long	HDRS_MAGIC
version:		.word	BOOT_PROTOCOL_VERSION
realmode_swtch:		.long	0
start_sys_seg:		.word	0
kernel_version:		.word	kernel_version_str - 0x200
type_of_loader:		.byte	0
loadflags:		.byte	LOADFLAG_LOADED_HIGH
setup_move_size:	.word	0
code32_start:		.long	IMAGE_BASE
ramdisk_image:		.long	0
ramdisk_size:		.long	0
bootsect_kludge:	.long	0
heap_end_ptr:		.word	0
ext_loader_ver:		.byte	0
ext_loader_type:	.byte	0
	AT	0x228
cmd_line_ptr:		.long	0
	AT	0x22c
initrd_addr_max:	.long	INITRD_ADDR_MAX
kernel_alignment:	.long	KERNEL_ALIGNMENT
relocatable_kernel:	.byte	0
min_alignment:		.byte	MIN_ALIGNMENT_LOG2
	AT	0x236
xloadflags:		.word	XLF_KERNEL_64
cmdline_size:		.long	CMDLINE_SIZE
hardware_subarch:	.long	0
hardware_subarch_data:	.quad	0
payload_offset:		.long	0
payload_length:		.long	0
setup_data:		.quad	0
	AT	0x258
pref_address:		.quad	IMAGE_BASE
	AT	0x260
init_size:		.long	INIT_SIZE
handover_offset:	.long	0
	AT	0x268
kernel_info_offset:	.long	KERNEL_INFO_OFFSET
	AT	0x26c
setup_jump:
	jmp	setup_main		/* near jump; 0x26c..0x28f is padding */

	/* ---------------- real-mode setup stub ---------------- */
	.org	SETUP_STUB_OFFSET, 0
/*
 * Entered in real mode at CS = setup segment + 0x20, IP = 0 with
 * DS = ES = SS = setup segment (boot.rst, "RUNNING THE KERNEL").  The setup
 * segment's first 4 KiB double as struct boot_params: the loader already
 * filled in the header part (cmd_line_ptr, ...); we add the BIOS E820 map,
 * enter 32-bit protected mode per the 32-bit boot protocol and jump to
 * code32_start (linux32_entry, which goes on to the 64-bit entry).
 */
setup_main:
	cli
	cld
	movw	%ds, %ax
	movw	%ax, %es

	/* E820 memory map via INT 15h AX=E820h into boot_params. */
	xorl	%ebx, %ebx
	movw	$BP_E820_TABLE, %di
	xorw	%bp, %bp
e820_next:
	movl	$0xe820, %eax
	movl	$SMAP, %edx
	movl	$E820_ENTRY_SIZE, %ecx
	int	$0x15
	jc	e820_done
	cmpl	$SMAP, %eax
	jne	e820_done
	incw	%bp
	addw	$E820_ENTRY_SIZE, %di
	cmpw	$E820_MAX_ENTRIES_ZEROPAGE, %bp
	jae	e820_done
	testl	%ebx, %ebx
	jnz	e820_next
e820_done:
	movw	%bp, %ax
	movb	%al, BP_E820_ENTRIES
	cli

	/* Fast A20 gate on (without touching the reset bit). */
	inb	$PORT_SYSTEM_CONTROL_A, %al
	orb	$0x02, %al
	andb	$0xfe, %al
	outb	%al, $PORT_SYSTEM_CONTROL_A

	/* ESI = linear address of boot_params = setup segment * 16. */
	xorl	%esi, %esi
	movw	%ds, %si
	shll	$4, %esi
	/* Patch the GDT base with its linear address and load it. */
	movl	$setup_gdt, %eax
	addl	%esi, %eax
	movl	%eax, setup_gdt_desc + 2
	lgdtl	setup_gdt_desc

	movl	%cr0, %eax
	orl	$CR0_PE, %eax
	movl	%eax, %cr0
	movw	$BOOT_DS, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	ljmpl	$BOOT_CS, $IMAGE_BASE

	.p2align 3
setup_gdt:
	.quad	0
	.quad	0
	.quad	0x00cf9b000000ffff	/* 0x10 __BOOT_CS: 32-bit code, flat */
	.quad	0x00cf93000000ffff	/* 0x18 __BOOT_DS: data, flat */
setup_gdt_end:
setup_gdt_desc:
	.word	setup_gdt_end - setup_gdt - 1
	.long	0			/* patched at run time */

kernel_version_str:
	.asciz	"testguest"

	/* ---------------- protected-mode payload ---------------- */
	.org	SETUP_SIZE, 0
payload_start:
	.incbin	"testguest.bin"
	.p2align 4, 0
payload_end:
