/*
 * Constants shared between the assembly entry code (entry.S, bzimage.S)
 * and the C part (main.c) of the test guest.
 */
#ifndef TESTGUEST_DEFS_H
#define TESTGUEST_DEFS_H

/* Physical address the image is linked at and loaded to (both paths). */
#define IMAGE_BASE 0x100000
/* Offset of the 64-bit Linux boot protocol entry inside the loaded image
 * (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL": startup_64 is at
 * the protected-mode kernel load address + 0x200). */
#define LINUX64_ENTRY_OFFSET 0x200

/* Which entry path was taken; passed to kmain() in %edi. */
#define BOOT_PVH 1
#define BOOT_LINUX64 2

/* Our own GDT layout.  0x10/0x18 match Linux's __BOOT_CS/__BOOT_DS so the
 * selectors the VMM hands us on the 64-bit Linux path stay meaningful. */
#define SEL_CODE32 0x08
#define SEL_CODE64 0x10
#define SEL_DATA 0x18

/* Control register / MSR bits (Intel SDM vol. 3, 2.5 and 2.2.1). */
#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100

/* Page-table entry bits (Intel SDM vol. 3, 4.5). */
#define PTE_PRESENT 0x001
#define PTE_WRITE 0x002
#define PTE_PS 0x080 /* 2 MiB page in a page-directory entry */

/* Size of the boot stack. */
#define STACK_SIZE 0x4000

/* Number of IDT vectors we install (the architectural exceptions). */
#define NR_EXCEPTION_VECTORS 32
/* Each exception stub is padded to this many bytes so the C code can
 * compute stub addresses as exc_stubs + vector * EXC_STUB_SIZE. */
#define EXC_STUB_SIZE 16

#endif
