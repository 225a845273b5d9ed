/*
 * The xsave=1 test: XSAVE, XRSTOR and XGETBV in ring 0 (README.md,
 * "xsave=1").  On kvm-pvm hosts these instructions are completed by the
 * VMM (pvmfix/xsave.go); on VT-x/AMD-V hosts the CPU runs them, and the
 * results must be the same.
 *
 * The C code itself must stay free of FP/SIMD instructions: register state
 * moves only through XRSTOR and XSAVE (xsave.S), and every buffer is
 * filled and compared with integer code.
 */
#include "testguest.h"

/* xsave.S */
void xs_xsetbv(u32 index, u64 value);
u64 xs_xgetbv(u32 index);
void xs_xrstor64(void *area, u64 mask);
void xs_xsave64(void *area, u64 mask);
void xs_xsave32(void *area, u64 mask);
void xs_xsave64_sib(void *base, u64 index, u64 mask);
void xs_xrstor64_disp32(void *area_minus_0x1000, u64 mask);
void xs_xsave64_rip(u64 mask);
void xs_xsave64_gs(u64 offset, u64 mask);
void xs_xsave64_addr32(u32 area, u64 mask);
void xs_trap6(void), xs_trap13(void), xs_trap14(void);
extern char xs_insn_xsave64[], xs_insn_xrstor64[], xs_insn_xgetbv[], xs_insn_xsetbv[];
extern volatile u64 xs_fault_vector, xs_fault_error, xs_fault_cr2, xs_fault_rip;
extern u8 xs_rip_area[4096];

#define CR0_WP (1ull << 16)
#define CR4_OSFXSR (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)
#define CR4_LA57 (1ull << 12)
#define CR4_OSXSAVE (1ull << 18)
#define CPUID1_ECX_XSAVE (1u << 26)
#define MSR_GS_BASE 0xc0000101

#define XFEATURE_X87 0
#define XFEATURE_SSE 1
#define XFEATURE_AVX 2
#define XFEATURE_OPMASK 5
#define XFEATURE_ZMM_HI256 6
#define XFEATURE_HI16_ZMM 7
#define XMASK(i) (1ull << (i))
#define XMASK_AVX512 (XMASK(XFEATURE_OPMASK) | XMASK(XFEATURE_ZMM_HI256) | XMASK(XFEATURE_HI16_ZMM))

/* Standard-format XSAVE area layout (Intel SDM vol. 1 §13.4). */
#define XS_FCW 0
#define XS_FTW 4
#define XS_MXCSR 24
#define XS_ST0 32
#define XS_XMM0 160
#define XS_HEADER 512
#define XS_XSTATE_BV 512
#define XS_XCOMP_BV 520
#define XS_AREA_MAX 4096

#define NO_FAULT 0xff
#define VECTOR_UD 6
#define VECTOR_GP 13
#define VECTOR_PF 14
#define PF_W 0x2
#define PF_P 0x1

#define PTE_P 0x1ull
#define PTE_W 0x2ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull
#define PTE_ADDR 0x000ffffffffff000ull

static inline void cpuid(u32 leaf, u32 sub, u32 r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static inline u64 read_cr0(void) { u64 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline u64 read_cr3(void) { u64 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline u64 read_cr4(void) { u64 v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr0(u64 v) { __asm__ volatile("mov %0, %%cr0" : : "r"(v) : "memory"); }
static inline void write_cr3(u64 v) { __asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }
static inline void write_cr4(u64 v) { __asm__ volatile("mov %0, %%cr4" : : "r"(v) : "memory"); }
static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}

/* ---- recoverable exceptions ---- */

struct gate {
	u16 off_lo, sel;
	u8 ist, attr;
	u16 off_mid;
	u32 off_hi, rsvd;
} __attribute__((packed));

struct dtr {
	u16 limit;
	u64 base;
} __attribute__((packed));

#define XS_IDT_ENTRIES 32
static struct gate xs_idt[XS_IDT_ENTRIES] __attribute__((aligned(16)));
static struct dtr saved_idt;

static void set_trap(int vec, void (*h)(void), u16 sel)
{
	u64 a = (u64)h;
	xs_idt[vec].off_lo = (u16)a;
	xs_idt[vec].sel = sel;
	xs_idt[vec].ist = 0;
	xs_idt[vec].attr = 0x8e;
	xs_idt[vec].off_mid = (u16)(a >> 16);
	xs_idt[vec].off_hi = (u32)(a >> 32);
	xs_idt[vec].rsvd = 0;
}

/* Copy main.c's exception gates and catch #UD, #GP and #PF ourselves. */
static void traps_install(void)
{
	struct dtr p;
	__asm__ volatile("sidt %0" : "=m"(saved_idt));
	const struct gate *g = (const struct gate *)saved_idt.base;
	u32 n = (saved_idt.limit + 1u) / sizeof(struct gate);
	for (u32 i = 0; i < n && i < XS_IDT_ENTRIES; i++)
		xs_idt[i] = g[i];
	set_trap(VECTOR_UD, xs_trap6, g[0].sel);
	set_trap(VECTOR_GP, xs_trap13, g[0].sel);
	set_trap(VECTOR_PF, xs_trap14, g[0].sel);
	p.limit = sizeof(xs_idt) - 1;
	p.base = (u64)xs_idt;
	__asm__ volatile("lidt %0" : : "m"(p) : "memory");
}

static void traps_remove(void)
{
	__asm__ volatile("lidt %0" : : "m"(saved_idt) : "memory");
}

static void fault_reset(void)
{
	xs_fault_vector = NO_FAULT;
	xs_fault_error = 0;
	xs_fault_cr2 = 0;
	xs_fault_rip = 0;
}

/* ---- buffers and patterns ---- */

static u8 area_a[XS_AREA_MAX] __attribute__((aligned(64)));
static u8 area_b[XS_AREA_MAX] __attribute__((aligned(64)));
static u8 area_c[XS_AREA_MAX] __attribute__((aligned(64)));
/* Two pages: an area placed so that it crosses the page boundary. */
static u8 area_x[2 * 4096] __attribute__((aligned(4096)));
/* The #PF test's page table and the pages it maps. */
static u64 pf_table[512] __attribute__((aligned(4096)));
static u8 pf_pages[2 * 4096] __attribute__((aligned(4096)));

static u64 xcr0;
static u32 comp_off[8], comp_size[8];
static int failures;

static void fill(u8 *p, u32 n, u8 v)
{
	for (u32 i = 0; i < n; i++)
		p[i] = v;
}

static void copy(u8 *d, const u8 *s, u32 n)
{
	for (u32 i = 0; i < n; i++)
		d[i] = s[i];
}

static u64 rd64(const u8 *p)
{
	u64 v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void wr64(u8 *p, u64 v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (u8)(v >> (8 * i));
}

static void wr16(u8 *p, u16 v)
{
	p[0] = (u8)v;
	p[1] = (u8)(v >> 8);
}

/* A full XSAVE image for xcr0 with recognisable, architecturally valid
 * contents in every component; seed varies them. */
static void make_pattern(u8 *a, u8 seed)
{
	fill(a, XS_AREA_MAX, 0);
	/* x87: FCW (round down, all exceptions masked), every register
	 * valid (abridged tag 0xff) holding a normal extended-precision
	 * number. FOP/FIP/FDP stay 0: AMD CPUs save them only with an x87
	 * exception pending. */
	wr16(a + XS_FCW, 0x077f);
	a[XS_FTW] = 0xff;
	for (int r = 0; r < 8; r++) {
		u8 *st = a + XS_ST0 + 16 * r;
		wr64(st, 0x8000000000000000ull | (u64)(seed + r) << 8 | 0x5a);
		wr16(st + 8, (u16)(0x3fff + r + seed));
	}
	/* MXCSR: round down, all exceptions masked. */
	a[XS_MXCSR] = 0x80;
	a[XS_MXCSR + 1] = 0x3f;
	for (u32 i = 0; i < 256; i++)
		a[XS_XMM0 + i] = (u8)(i * 3 + seed + 1);
	for (int c = 2; c < 8; c++) {
		if (!(xcr0 & XMASK(c)))
			continue;
		for (u32 i = 0; i < comp_size[c]; i++)
			a[comp_off[c] + i] = (u8)(i * 7 + c * 31 + seed + 1);
	}
	wr64(a + XS_XSTATE_BV, xcr0);
}

/* Compare what XSAVE wrote (got) with the image XRSTOR loaded (want) for
 * the components in mask: x87 control and data registers (not the 6
 * reserved bytes of each 16-byte register slot), MXCSR, XMM, and the
 * extended components. Returns the first differing offset, or -1. */
static int compare_state(const u8 *got, const u8 *want, u64 mask)
{
	if (mask & XMASK(XFEATURE_X87)) {
		for (u32 i = 0; i < 24; i++)
			if (i != 5 && got[i] != want[i])
				return (int)i;
		for (int r = 0; r < 8; r++)
			for (u32 i = 0; i < 10; i++)
				if (got[XS_ST0 + 16 * r + i] != want[XS_ST0 + 16 * r + i])
					return XS_ST0 + 16 * r + (int)i;
	}
	if (mask & (XMASK(XFEATURE_SSE) | XMASK(XFEATURE_AVX)))
		for (u32 i = XS_MXCSR; i < XS_MXCSR + 4; i++)
			if (got[i] != want[i])
				return (int)i;
	if (mask & XMASK(XFEATURE_SSE))
		for (u32 i = XS_XMM0; i < XS_XMM0 + 256; i++)
			if (got[i] != want[i])
				return (int)i;
	for (int c = 2; c < 8; c++) {
		if (!(mask & xcr0 & XMASK(c)))
			continue;
		for (u32 i = comp_off[c]; i < comp_off[c] + comp_size[c]; i++)
			if (got[i] != want[i])
				return (int)i;
	}
	return -1;
}

static void result(const char *name, int at)
{
	line("xsave ");
	con_puts(name);
	if (at < 0) {
		con_puts(" ok\n");
		return;
	}
	failures++;
	con_puts(" mismatch at=");
	put_dec((u64)at);
	con_puts("\n");
}

static void fault_result(const char *name, u64 vector, u64 error, u64 cr2, u64 rip)
{
	line("xsave ");
	con_puts(name);
	if (xs_fault_vector == vector && xs_fault_error == error &&
	    (vector != VECTOR_PF || xs_fault_cr2 == cr2) && (!rip || xs_fault_rip == rip)) {
		con_puts(" ok\n");
		return;
	}
	failures++;
	con_puts(" got vector=");
	put_dec(xs_fault_vector);
	con_puts(" error=");
	put_hex(xs_fault_error);
	con_puts(" cr2=");
	put_hex(xs_fault_cr2);
	con_puts(" rip=");
	put_hex(xs_fault_rip);
	con_puts("\n");
}

static void fail(const char *why)
{
	failures++;
	line("xsave error ");
	con_puts(why);
	con_puts("\n");
}

/* ---- the tests ---- */

/* XRSTOR a pattern, XSAVE it back through several encodings. */
static void test_roundtrip(void)
{
	make_pattern(area_a, 0);
	xs_xrstor64(area_a, ~0ull);
	fill(area_b, XS_AREA_MAX, 0xee);
	wr64(area_b + XS_XSTATE_BV, 0);
	wr64(area_b + XS_XCOMP_BV, 0);
	xs_xsave64(area_b, ~0ull);
	int at = compare_state(area_b, area_a, xcr0);
	if (at < 0 && (rd64(area_b + XS_XSTATE_BV) & xcr0) != xcr0)
		at = XS_XSTATE_BV;
	result("roundtrip", at);

	/* The same state through other operand forms. */
	fill(area_c, XS_AREA_MAX, 0);
	xs_xsave64_sib(area_c + 64 - 8 * 5, 5, ~0ull); /* base + 5*8 - 64 */
	at = compare_state(area_c, area_a, xcr0);
	result("form sib", at);

	fill(xs_rip_area, XS_AREA_MAX, 0);
	xs_xsave64_rip(~0ull);
	at = compare_state(xs_rip_area, area_a, xcr0);
	result("form rip", at);

	fill(area_c, XS_AREA_MAX, 0);
	wrmsr(MSR_GS_BASE, (u64)area_c - 0x40);
	xs_xsave64_gs(0x40, ~0ull);
	wrmsr(MSR_GS_BASE, 0);
	at = compare_state(area_c, area_a, xcr0);
	result("form gs", at);

	fill(area_c, XS_AREA_MAX, 0);
	xs_xsave64_addr32((u32)(u64)area_c, ~0ull);
	at = compare_state(area_c, area_a, xcr0);
	result("form addr32", at);

	/* XSAVE without REX.W: the 32-bit x87 layout, identical here since
	 * FIP/FDP are 0. */
	fill(area_c, XS_AREA_MAX, 0);
	xs_xsave32(area_c, ~0ull);
	at = compare_state(area_c, area_a, xcr0);
	result("form 32", at);

	/* An area crossing a page boundary (header on the second page). */
	u8 *x = area_x + 4096 - 512;
	fill(x, XS_AREA_MAX, 0);
	xs_xsave64(x, ~0ull);
	at = compare_state(x, area_a, xcr0);
	result("cross", at);

	/* XRSTOR from the crossing area with a new pattern, via base+disp32. */
	make_pattern(area_c, 9);
	copy(x, area_c, XS_AREA_MAX);
	xs_xrstor64_disp32((void *)((u64)x - 0x1000), ~0ull);
	fill(area_b, XS_AREA_MAX, 0);
	xs_xsave64(area_b, ~0ull);
	result("cross restore", compare_state(area_b, area_c, xcr0));
}

/* Partial requested-feature bitmaps on both instructions. */
static void test_partial(void)
{
	make_pattern(area_a, 0);
	xs_xrstor64(area_a, ~0ull);

	/* XSAVE of AVX only: writes the AVX component, MXCSR (RFBM[2]) and
	 * XSTATE_BV[2]; x87, XMM and the other XSTATE_BV bits stay. */
	fill(area_c, XS_AREA_MAX, 0xcc);
	wr64(area_c + XS_XSTATE_BV, 0);
	wr64(area_c + XS_XCOMP_BV, 0);
	xs_xsave64(area_c, XMASK(XFEATURE_AVX));
	int at = compare_state(area_c, area_a, XMASK(XFEATURE_AVX));
	for (u32 i = 0; at < 0 && i < 512; i++) {
		if (i >= XS_MXCSR && i < XS_MXCSR + 8)
			continue;
		if (area_c[i] != 0xcc)
			at = (int)i;
	}
	if (at < 0 && rd64(area_c + XS_XSTATE_BV) != XMASK(XFEATURE_AVX))
		at = XS_XSTATE_BV;
	result("partial save", at);

	/* XRSTOR of x87 only from a different pattern: x87 changes, the
	 * rest keeps the first pattern. */
	make_pattern(area_b, 0x40);
	xs_xrstor64(area_b, XMASK(XFEATURE_X87));
	fill(area_c, XS_AREA_MAX, 0);
	xs_xsave64(area_c, ~0ull);
	at = compare_state(area_c, area_b, XMASK(XFEATURE_X87));
	if (at < 0)
		at = compare_state(area_c, area_a, xcr0 & ~XMASK(XFEATURE_X87));
	result("partial restore", at);
}

/* XRSTOR with XSTATE_BV[AVX] = 0 initializes the upper YMM halves. */
static void test_init(void)
{
	make_pattern(area_a, 3);
	xs_xrstor64(area_a, ~0ull);
	wr64(area_a + XS_XSTATE_BV, xcr0 & ~XMASK(XFEATURE_AVX));
	xs_xrstor64(area_a, ~0ull);
	fill(area_b, XS_AREA_MAX, 0xee);
	wr64(area_b + XS_XSTATE_BV, 0);
	wr64(area_b + XS_XCOMP_BV, 0);
	xs_xsave64(area_b, ~0ull);
	int at = compare_state(area_b, area_a, xcr0 & ~XMASK(XFEATURE_AVX));
	for (u32 i = comp_off[XFEATURE_AVX]; at < 0 && i < comp_off[XFEATURE_AVX] + comp_size[XFEATURE_AVX]; i++)
		if (area_b[i] != 0)
			at = (int)i;
	line("xsave init bv=");
	put_hex(rd64(area_b + XS_XSTATE_BV));
	con_puts("\n");
	result("init", at);
}

/* Conditions that must raise #GP(0), with RIP left on the instruction. */
static void test_gp(void)
{
	struct {
		const char *name;
		u32 off;
		u64 val;
	} cases[] = {
		{"gp xcomp_bv", XS_XCOMP_BV, 1},
		{"gp xstate_bv", XS_XSTATE_BV, 0},
		{"gp reserved", XS_HEADER + 16, 1},
		{"gp mxcsr", XS_MXCSR, 0x80001f80},
	};
	/* XSTATE_BV with a bit XCR0 lacks: MPX (3) is never enabled here. */
	cases[1].val = xcr0 | XMASK(3);
	for (u32 k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		make_pattern(area_a, 0);
		if (cases[k].off == XS_MXCSR) {
			for (int i = 0; i < 4; i++)
				area_a[XS_MXCSR + i] = (u8)(cases[k].val >> (8 * i));
		} else {
			wr64(area_a + cases[k].off, cases[k].val);
		}
		fault_reset();
		xs_xrstor64(area_a, ~0ull);
		fault_result(cases[k].name, VECTOR_GP, 0, 0, (u64)xs_insn_xrstor64);
	}
	fault_reset();
	xs_xsave64(area_a + 16, ~0ull);
	fault_result("gp align", VECTOR_GP, 0, 0, (u64)xs_insn_xsave64);
	fault_reset();
	(void)xs_xgetbv(2);
	fault_result("gp xgetbv", VECTOR_GP, 0, 0, (u64)xs_insn_xgetbv);
}

/* #PF: map a page table of our own at a free 2 MiB slot of the identity
 * map: page 0 writable, page 1 not present, page 2 read-only. */
#define PF_VA 0x3fe00000ull

static void test_pf(void)
{
	u64 cr4 = read_cr4();
	if (cr4 & CR4_LA57) {
		line("xsave pf skipped la57\n");
		return;
	}
	u64 *pml4 = (u64 *)(read_cr3() & PTE_ADDR);
	if (!(pml4[0] & PTE_P)) {
		line("xsave pf skipped pml4\n");
		return;
	}
	u64 *pdpt = (u64 *)(pml4[0] & PTE_ADDR);
	if (!(pdpt[0] & PTE_P) || (pdpt[0] & PTE_PS)) {
		line("xsave pf skipped pdpt\n");
		return;
	}
	u64 *pd = (u64 *)(pdpt[0] & PTE_ADDR);
	u32 slot = (u32)(PF_VA >> 21) & 511;
	u64 saved_pde = pd[slot];
	fill((u8 *)pf_table, sizeof(pf_table), 0);
	pf_table[0] = (u64)pf_pages | PTE_P | PTE_W;
	pf_table[1] = 0;
	pf_table[2] = ((u64)pf_pages + 4096) | PTE_P; /* read-only */
	pd[slot] = (u64)pf_table | PTE_P | PTE_W;
	write_cr0(read_cr0() | CR0_WP);
	write_cr3(read_cr3());

	u8 *va = (u8 *)PF_VA;
	make_pattern(area_a, 0);
	xs_xrstor64(area_a, ~0ull);

	/* Mapped and writable: XSAVE lands in pf_pages and sets A and D. */
	fill(pf_pages, 4096, 0);
	fault_reset();
	xs_xsave64(va, ~0ull);
	int at = xs_fault_vector != NO_FAULT ? 0 : compare_state(pf_pages, area_a, xcr0);
	if (at < 0 && (pf_table[0] & (PTE_A | PTE_D)) != (PTE_A | PTE_D))
		at = 4096;
	result("pf mapped", at);

	/* Header on the not-present page: write fault, not present. */
	fault_reset();
	xs_xsave64(va + 4096 - 512, ~0ull);
	fault_result("pf save", VECTOR_PF, PF_W, PF_VA + 4096, (u64)xs_insn_xsave64);

	/* Read-only page with CR0.WP: write fault, protection. */
	fault_reset();
	xs_xsave64(va + 2 * 4096, ~0ull);
	fault_result("pf readonly", VECTOR_PF, PF_W | PF_P, PF_VA + 2 * 4096, (u64)xs_insn_xsave64);

	/* XRSTOR reading the not-present page: read fault. */
	fault_reset();
	xs_xrstor64(va + 4096 - 512, ~0ull);
	fault_result("pf restore", VECTOR_PF, 0, PF_VA + 4096, (u64)xs_insn_xrstor64);

	/* XRSTOR from the read-only page works (a read). */
	copy(pf_pages + 4096, area_a, XS_AREA_MAX);
	fault_reset();
	xs_xrstor64(va + 2 * 4096, ~0ull);
	result("pf readonly restore", xs_fault_vector != NO_FAULT ? 0 : -1);

	pd[slot] = saved_pde;
	write_cr3(read_cr3());
}

void xsave_test(void)
{
	u32 r[4];
	cpuid(1, 0, r);
	if (!(r[2] & CPUID1_ECX_XSAVE)) {
		line("xsave unsupported\n");
		return;
	}
	cpuid(0xd, 0, r);
	u64 supported = r[0] | (u64)r[3] << 32;
	xcr0 = XMASK(XFEATURE_X87) | XMASK(XFEATURE_SSE) | XMASK(XFEATURE_AVX);
	if ((supported & XMASK_AVX512) == XMASK_AVX512)
		xcr0 |= XMASK_AVX512;
	if ((supported & xcr0) != xcr0) {
		fail("no AVX state");
		return;
	}
	for (int c = 2; c < 8; c++) {
		if (!(xcr0 & XMASK(c)))
			continue;
		cpuid(0xd, (u32)c, r);
		comp_size[c] = r[0];
		comp_off[c] = r[1];
		if (comp_off[c] < XS_HEADER + 64 || comp_off[c] + comp_size[c] > XS_AREA_MAX) {
			fail("component outside 4 KiB");
			return;
		}
	}

	traps_install();
	fault_reset();
	write_cr4(read_cr4() | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE);
	if (xs_fault_vector != NO_FAULT || !(read_cr4() & CR4_OSXSAVE)) {
		fail("cr4");
		traps_remove();
		return;
	}
	fault_reset();
	xs_xsetbv(0, xcr0);
	if (xs_fault_vector != NO_FAULT) {
		line("xsave error xsetbv vector=");
		put_dec(xs_fault_vector);
		con_puts("\n");
		failures++;
		traps_remove();
		return;
	}
	cpuid(0xd, 0, r);
	line("xsave xcr0=");
	put_hex(xcr0);
	con_puts(" size=");
	put_dec(r[1]);
	con_puts("\n");

	fault_reset();
	u64 got = xs_xgetbv(0);
	if (xs_fault_vector != NO_FAULT || got != xcr0) {
		line("xsave xgetbv mismatch got=");
		put_hex(got);
		con_puts("\n");
		failures++;
	} else {
		line("xsave xgetbv ok\n");
	}
	cpuid(0xd, 1, r);
	if (r[0] & (1u << 2)) { /* XGETBV with ECX=1 */
		fault_reset();
		got = xs_xgetbv(1);
		if (xs_fault_vector != NO_FAULT || (got & ~xcr0)) {
			line("xsave xgetbv1 bad value=");
			put_hex(got);
			con_puts("\n");
			failures++;
		} else {
			line("xsave xgetbv1 ok\n");
		}
	}

	test_roundtrip();
	test_partial();
	test_init();
	test_gp();
	test_pf();

	traps_remove();
	line(failures ? "xsave result fail\n" : "xsave result pass\n");
}
