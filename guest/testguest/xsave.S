/*
 * The xsave=1 test's instructions (xsave.c drives them).  XSAVE, XRSTOR,
 * XSETBV and XGETBV live only here, in functions named xs_*: build.sh
 * refuses them anywhere else.  On kvm-pvm hosts KVM's instruction emulator
 * cannot execute XSAVE/XRSTOR/XGETBV and the VMM completes them; XSETBV
 * and MOV CR4 are emulated by KVM itself.
 *
 * Every instruction that may fault has a global label xs_insn_* on it and
 * stores its recovery address in xs_fault_fixup first.  The recoverable
 * exception handlers (xs_trap6, xs_trap13, xs_trap14, installed by xsave.c
 * for the duration of the test) record the vector, error code, CR2 and the
 * faulting RIP, then resume at xs_fault_fixup, which is the instruction's
 * function's return.
 *
 * Arguments follow the SysV ABI: mask values arrive in a 64-bit register
 * and are split into EDX:EAX here.
 */
	.text
	.code64

	.macro SET_FIXUP
	leaq	9f(%rip), %r11
	movq	%r11, xs_fault_fixup(%rip)
	.endm

	.macro MASK_FROM reg
	movq	\reg, %rax
	movq	\reg, %rdx
	shrq	$32, %rdx
	.endm

/* void xs_xsetbv(u32 index, u64 value) */
	.globl xs_xsetbv
xs_xsetbv:
	SET_FIXUP
	movl	%edi, %ecx
	MASK_FROM %rsi
	.globl xs_insn_xsetbv
xs_insn_xsetbv:
	xsetbv
9:	ret

/* u64 xs_xgetbv(u32 index) */
	.globl xs_xgetbv
xs_xgetbv:
	SET_FIXUP
	movl	%edi, %ecx
	xorl	%eax, %eax
	xorl	%edx, %edx
	.globl xs_insn_xgetbv
xs_insn_xgetbv:
	xgetbv
9:	shlq	$32, %rdx
	movl	%eax, %eax
	orq	%rdx, %rax
	ret

/* void xs_xrstor64(void *area, u64 mask): 48 0f ae 2f */
	.globl xs_xrstor64
xs_xrstor64:
	SET_FIXUP
	MASK_FROM %rsi
	.globl xs_insn_xrstor64
xs_insn_xrstor64:
	xrstor64 (%rdi)
9:	ret

/* void xs_xsave64(void *area, u64 mask): 48 0f ae 27 */
	.globl xs_xsave64
xs_xsave64:
	SET_FIXUP
	MASK_FROM %rsi
	.globl xs_insn_xsave64
xs_insn_xsave64:
	xsave64	(%rdi)
9:	ret

/* void xs_xsave32(void *area, u64 mask): no REX.W, 32-bit x87 format */
	.globl xs_xsave32
xs_xsave32:
	SET_FIXUP
	MASK_FROM %rsi
	xsave	(%rdi)
9:	ret

/* void xs_xsave64_sib(void *base, u64 index, u64 mask):
 * SIB with index*8 and a negative disp8: area = base + index*8 - 64. */
	.globl xs_xsave64_sib
xs_xsave64_sib:
	SET_FIXUP
	MASK_FROM %rdx
	xsave64	-64(%rdi,%rsi,8)
9:	ret

/* void xs_xrstor64_disp32(void *area_minus_0x1000, u64 mask):
 * base + disp32 with r9 as the base (REX.B). */
	.globl xs_xrstor64_disp32
xs_xrstor64_disp32:
	SET_FIXUP
	MASK_FROM %rsi
	movq	%rdi, %r9
	xrstor64 0x1000(%r9)
9:	ret

/* void xs_xsave64_rip(u64 mask): RIP-relative, into xs_rip_area. */
	.globl xs_xsave64_rip
xs_xsave64_rip:
	SET_FIXUP
	MASK_FROM %rdi
	xsave64	xs_rip_area(%rip)
9:	ret

/* void xs_xsave64_gs(u64 offset, u64 mask): GS segment override,
 * area = GS.base + offset (the caller sets IA32_GS_BASE). */
	.globl xs_xsave64_gs
xs_xsave64_gs:
	SET_FIXUP
	MASK_FROM %rsi
	xsave64	%gs:(%rdi)
9:	ret

/* void xs_xsave64_addr32(u32 area, u64 mask): address-size prefix (67),
 * 32-bit effective address. */
	.globl xs_xsave64_addr32
xs_xsave64_addr32:
	SET_FIXUP
	MASK_FROM %rsi
	xsave64	(%edi)
9:	ret

/*
 * Recoverable exception handlers.  Vectors 13 and 14 push an error code,
 * vector 6 does not.  Frame after the error code: RIP, CS, RFLAGS, RSP, SS.
 */
	.globl xs_trap6
xs_trap6:
	pushq	$0
	pushq	$6
	jmp	xs_trap_common
	.globl xs_trap13
xs_trap13:
	pushq	$13
	jmp	xs_trap_common
	.globl xs_trap14
xs_trap14:
	pushq	$14
	jmp	xs_trap_common
xs_trap_common:
	popq	xs_fault_vector(%rip)
	popq	xs_fault_error(%rip)
	pushq	%rax
	movq	%cr2, %rax
	movq	%rax, xs_fault_cr2(%rip)
	movq	8(%rsp), %rax
	movq	%rax, xs_fault_rip(%rip)
	movq	xs_fault_fixup(%rip), %rax
	movq	%rax, 8(%rsp)
	popq	%rax
	iretq

	.data
	.p2align 3
	.globl xs_fault_vector, xs_fault_error, xs_fault_cr2, xs_fault_rip, xs_fault_fixup
xs_fault_vector:	.quad 0
xs_fault_error:		.quad 0
xs_fault_cr2:		.quad 0
xs_fault_rip:		.quad 0
xs_fault_fixup:		.quad 0

	.bss
	.p2align 12
	.globl xs_rip_area
xs_rip_area:
	.skip	4096

	.section .note.GNU-stack, "", @progbits
