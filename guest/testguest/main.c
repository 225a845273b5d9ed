/*
 * testguest: a tiny freestanding x86-64 guest for the vmm integration tests.
 *
 * Entered from entry.S in 64-bit mode with our own GDT and stack, on either
 * the Xen PVH path (info = struct hvm_start_info) or the Linux 64-bit boot
 * protocol path (info = struct boot_params).  It reports what it sees on
 * COM1, one "testguest: ..." line per fact (formats in README.md are a
 * contract with the Go tests), then performs the action requested on the
 * command line.
 *
 * Build constraints (see build.sh): no SSE/x87, no red zone, no builtins,
 * no libc.  Every instruction may go through KVM's instruction emulator on
 * the target host, so the code sticks to plain integer instructions and
 * port I/O and keeps loops short.
 */
#include "defs.h"
#include "testguest.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

_Static_assert(sizeof(u64) == 8, "u64");
_Static_assert(sizeof(void *) == 8, "64-bit only");

/* ------------------------------------------------------------------ */
/* Port I/O                                                           */

static inline void outb(u16 port, u8 val)
{
	__asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline void outl(u16 port, u32 val)
{
	__asm__ volatile("outl %0, %1" : : "a"(val), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 val;
	__asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
	return val;
}

/* ------------------------------------------------------------------ */
/* Physical memory access (identity mapped: first 4 GiB at least)     */

/* Anything we dereference must lie below this (our page tables, and the
 * minimum the VMM promises on the 64-bit Linux path). */
#define IDENTITY_MAP_LIMIT 0x100000000ULL

typedef u32 __attribute__((aligned(1), may_alias)) u32_unaligned;
typedef u64 __attribute__((aligned(1), may_alias)) u64_unaligned;

static u8 rd8(u64 pa) { return *(const volatile u8 *)pa; }
static u32 rd32(u64 pa) { return *(const volatile u32_unaligned *)pa; }
static u64 rd64(u64 pa) { return *(const volatile u64_unaligned *)pa; }

/* Touching this raises #GP (bits 63:47 not a sign extension). */
#define NONCANONICAL_ADDRESS 0x8000000000000000ULL

/* Is [pa, pa+len) safely readable through the identity map? */
static int phys_ok(u64 pa, u64 len)
{
	return pa != 0 && pa < IDENTITY_MAP_LIMIT && len <= IDENTITY_MAP_LIMIT - pa;
}

/* ------------------------------------------------------------------ */
/* Identity mapping above 4 GiB (64-bit PCI BARs)                      */

/* Page-table pages for mappings added at run time (never freed). */
#define MAP_POOL_PAGES 8
#define MAP_PTE_ADDR 0x000ffffffffff000ULL
#define MAP_LARGE_PAGE 0x200000ULL
static u64 map_pool[MAP_POOL_PAGES][512] __attribute__((aligned(4096)));
static int map_pool_used;

/* The table an entry points to, installing a zeroed one if it is empty.
 * Tables are reached through their physical addresses, so they must lie
 * in the first 4 GiB (ours in .bss, the VMM's at 0x9000 do). */
static u64 *map_table(u64 *entry)
{
	if (!(*entry & PTE_PRESENT)) {
		if (map_pool_used == MAP_POOL_PAGES)
			return 0;
		*entry = (u64)map_pool[map_pool_used++] | PTE_PRESENT | PTE_WRITE;
	}
	return (u64 *)(*entry & MAP_PTE_ADDR);
}

/* Identity-map [pa, pa+len) with 2 MiB pages in the live page tables
 * (ours on the PVH path, the VMM's on the 64-bit Linux path), leaving
 * existing mappings alone.  Returns 0, or -1 when out of table pages. */
int map_identity(u64 pa, u64 len)
{
	u64 cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	u64 *pml4 = (u64 *)(cr3 & MAP_PTE_ADDR);
	for (u64 a = pa & ~(MAP_LARGE_PAGE - 1); a < pa + len; a += MAP_LARGE_PAGE) {
		u64 *pdpt = map_table(&pml4[(a >> 39) & 511]);
		if (!pdpt)
			return -1;
		u64 *e3 = &pdpt[(a >> 30) & 511];
		if ((*e3 & PTE_PRESENT) && (*e3 & PTE_PS))
			continue; /* a 1 GiB page covers it */
		u64 *pd = map_table(e3);
		if (!pd)
			return -1;
		u64 *e2 = &pd[(a >> 21) & 511];
		if (!(*e2 & PTE_PRESENT))
			*e2 = a | PTE_PRESENT | PTE_WRITE | PTE_PS;
	}
	/* Flush the TLB (no stale "not present" entries are cached on x86,
	 * but reloading CR3 costs nothing here). */
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
	return 0;
}

/* The compiler may emit calls to these; simple loops, no string insns.
 * (build.sh passes -fno-tree-loop-distribute-patterns so these loops are
 * not turned back into calls to themselves.) */
void *memset(void *dst, int c, unsigned long n)
{
	u8 *d = dst;
	while (n--)
		*d++ = (u8)c;
	return dst;
}

void *memcpy(void *dst, const void *src, unsigned long n)
{
	u8 *d = dst;
	const u8 *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

/* ------------------------------------------------------------------ */
/* COM1: 16550 UART                                                   */

#define COM1_BASE 0x3f8
#define UART_RBR 0 /* receive buffer (read, DLAB=0) */
#define UART_THR 0 /* transmit holding (write, DLAB=0) */
#define UART_DLL 0 /* divisor latch low (DLAB=1) */
#define UART_IER 1 /* interrupt enable (DLAB=0) */
#define UART_DLM 1 /* divisor latch high (DLAB=1) */
#define UART_FCR 2 /* FIFO control (write) */
#define UART_LCR 3 /* line control */
#define UART_MCR 4 /* modem control */
#define UART_LSR 5 /* line status */

#define LCR_8N1 0x03  /* 8 data bits, no parity, 1 stop bit */
#define LCR_DLAB 0x80 /* divisor latch access */
#define FCR_ENABLE_CLEAR 0x07 /* enable FIFOs, clear RX and TX FIFOs */
#define MCR_DTR_RTS_OUT2 0x0b
#define LSR_DR 0x01   /* data ready */
#define LSR_THRE 0x20 /* transmit holding register empty */
#define UART_DIVISOR_115200 1 /* 1.8432 MHz / 16 / 115200 */

/* Bounded THRE wait: if the VMM's UART never reports THRE we still make
 * progress (each poll is a VM exit, so this is plenty). */
#define THRE_POLL_LIMIT 100000

static int at_line_start = 1;

static void serial_init(void)
{
	outb(COM1_BASE + UART_IER, 0x00); /* no interrupts: we poll */
	outb(COM1_BASE + UART_LCR, LCR_DLAB);
	outb(COM1_BASE + UART_DLL, UART_DIVISOR_115200 & 0xff);
	outb(COM1_BASE + UART_DLM, UART_DIVISOR_115200 >> 8);
	outb(COM1_BASE + UART_LCR, LCR_8N1);
	outb(COM1_BASE + UART_FCR, FCR_ENABLE_CLEAR);
	outb(COM1_BASE + UART_MCR, MCR_DTR_RTS_OUT2);
}

static void serial_write_raw(u8 c)
{
	for (int i = 0; i < THRE_POLL_LIMIT; i++)
		if (inb(COM1_BASE + UART_LSR) & LSR_THRE)
			break;
	outb(COM1_BASE + UART_THR, c);
}

static void con_putc(char c)
{
	if (c == '\n')
		serial_write_raw('\r');
	serial_write_raw((u8)c);
	at_line_start = (c == '\n');
}

void con_puts(const char *s)
{
	while (*s)
		con_putc(*s++);
}

/* Start an output line: "testguest: ". */
void line(const char *s)
{
	if (!at_line_start)
		con_putc('\n');
	con_puts("testguest: ");
	con_puts(s);
}

/* Lowercase hex, "0x" prefix, no leading zeros ("0x0" for zero). */
void put_hex(u64 v)
{
	char buf[16];
	int n = 0;
	con_puts("0x");
	do {
		buf[n++] = "0123456789abcdef"[v & 0xf];
		v >>= 4;
	} while (v);
	while (n)
		con_putc(buf[--n]);
}

void put_dec(u64 v)
{
	char buf[20];
	int n = 0;
	do {
		buf[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		con_putc(buf[--n]);
}

static u8 serial_getc(void)
{
	while (!(inb(COM1_BASE + UART_LSR) & LSR_DR))
		;
	return inb(COM1_BASE + UART_RBR);
}

int con_trygetc(void)
{
	if (!(inb(COM1_BASE + UART_LSR) & LSR_DR))
		return -1;
	return inb(COM1_BASE + UART_RBR);
}

/* ------------------------------------------------------------------ */
/* Exits                                                              */

/* The VMM's test exit device: a 32-bit write of N ends the VMM with exit
 * status N (QEMU's isa-debug-exit exits with (N << 1) | 1). */
#define EXIT_PORT 0xf4
#define EXIT_STATUS_EXCEPTION 99
#define EXIT_STATUS_BAD_OPTION 98
#define EXIT_STATUS_BAD_BOOT_INFO 97

/* ACPI hardware-reduced sleep control register (ACPI 6.x, 4.8.3.7) at the
 * VMM's fixed port: SLP_TYP in bits 4:2, SLP_EN is bit 5. */
#define ACPI_SLEEP_CONTROL_PORT 0x600
#define ACPI_SLP_TYP_SHIFT 2
#define ACPI_SLP_TYP_S5 5
#define ACPI_SLP_EN (1 << 5)
/* ACPI reset register (FADT RESET_REG) at the VMM's fixed port. */
#define ACPI_RESET_PORT 0x604
#define ACPI_RESET_VALUE 0x01
/* i8042 keyboard controller command port: 0xfe pulses the CPU reset line. */
#define I8042_COMMAND_PORT 0x64
#define I8042_CMD_PULSE_RESET 0xfe

static void __attribute__((noreturn)) halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void __attribute__((noreturn)) exit_with(u32 status)
{
	outl(EXIT_PORT, status);
	halt_forever();
}

/* ------------------------------------------------------------------ */
/* IDT and exceptions                                                 */

struct idt_gate {
	u16 offset_low;
	u16 selector;
	u8 ist;
	u8 type_attr;
	u16 offset_mid;
	u32 offset_high;
	u32 reserved;
} __attribute__((packed));
_Static_assert(sizeof(struct idt_gate) == 16, "64-bit IDT gate is 16 bytes");

/* Present, DPL 0, 64-bit interrupt gate (type 0xe): IF is cleared on entry. */
#define IDT_INTERRUPT_GATE 0x8e
#define VECTOR_BREAKPOINT 3

struct descriptor_ptr {
	u16 limit;
	u64 base;
} __attribute__((packed));

extern char exc_stubs[];  /* entry.S: NR_EXCEPTION_VECTORS stubs */
extern char int3_handler[]; /* entry.S: counts and iretq's */
volatile u32 int3_hits;   /* incremented by int3_handler */

static struct idt_gate idt[NR_EXCEPTION_VECTORS] __attribute__((aligned(16)));

static void set_gate(int vec, u64 handler)
{
	idt[vec].offset_low = (u16)handler;
	idt[vec].selector = SEL_CODE64;
	idt[vec].ist = 0;
	idt[vec].type_attr = IDT_INTERRUPT_GATE;
	idt[vec].offset_mid = (u16)(handler >> 16);
	idt[vec].offset_high = (u32)(handler >> 32);
	idt[vec].reserved = 0;
}

static void idt_init(void)
{
	struct descriptor_ptr p;
	for (int v = 0; v < NR_EXCEPTION_VECTORS; v++)
		set_gate(v, (u64)exc_stubs + (u64)v * EXC_STUB_SIZE);
	set_gate(VECTOR_BREAKPOINT, (u64)int3_handler);
	/* Vectors above 31 lie beyond the limit and would raise #GP, which
	 * our vector-13 stub reports. */
	p.limit = sizeof(idt) - 1;
	p.base = (u64)idt;
	__asm__ volatile("lidt %0" : : "m"(p) : "memory");
}

/* Called from exc_common in entry.S for every vector except 3. */
void __attribute__((noreturn)) exception_handler(u64 vec, u64 rip, u64 err)
{
	line("exception ");
	put_dec(vec);
	con_puts(" rip=");
	put_hex(rip);
	con_puts("\n");
	(void)err;
	exit_with(EXIT_STATUS_EXCEPTION);
}

/* ------------------------------------------------------------------ */
/* Boot information                                                   */

/* Xen public/arch-x86/hvm/start_info.h */
#define HVM_START_MAGIC_VALUE 0x336ec578
struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	/* version >= 1 */
	u64 memmap_paddr;
	u32 memmap_entries;
	u32 reserved;
} __attribute__((packed));
_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info");
#define HVM_MEMMAP_ENTRY_SIZE 24 /* u64 addr, u64 size, u32 type, u32 rsvd */

/* struct boot_params offsets (Documentation/arch/x86/zero-page.rst and
 * boot.rst). */
#define BP_ACPI_RSDP_ADDR 0x070   /* u64, protocol 2.14+ */
#define BP_EXT_CMD_LINE_PTR 0x0c8 /* u32, high half of cmd_line_ptr */
#define BP_E820_ENTRIES 0x1e8     /* u8 */
#define BP_CMD_LINE_PTR 0x228     /* u32 (setup header) */
#define BP_E820_TABLE 0x2d0       /* struct boot_e820_entry[128] */
#define BP_SIZE 0x1000
#define E820_MAX_ENTRIES_ZEROPAGE 128
#define E820_ENTRY_SIZE 20 /* packed: u64 addr, u64 size, u32 type */
#define E820_TYPE_RAM 1

#define CMDLINE_MAX 4096
static char cmdline[CMDLINE_MAX];

static void copy_cmdline(u64 pa)
{
	int n = 0;
	if (phys_ok(pa, 1)) {
		while (n < CMDLINE_MAX - 1 && phys_ok(pa + n, 1)) {
			char c = (char)rd8(pa + n);
			if (!c)
				break;
			cmdline[n++] = c;
		}
	}
	cmdline[n] = 0;
}

static u64 ram_total;
/* The end of the highest RAM entry below IDENTITY_MAP_LIMIT (snap.c). */
u64 ram_top_low;

static void report_mem_entry(u64 addr, u64 size, u32 type)
{
	line("e820 addr=");
	put_hex(addr);
	con_puts(" size=");
	put_hex(size);
	con_puts(" type=");
	put_dec(type);
	con_puts("\n");
	if (type == E820_TYPE_RAM)
		ram_total += size;
	if (type == E820_TYPE_RAM && addr < IDENTITY_MAP_LIMIT && size <= IDENTITY_MAP_LIMIT - addr &&
	    addr + size > ram_top_low)
		ram_top_low = addr + size;
}

/* Memory map from a table of entries of the given stride (addr, size and
 * type at offsets 0, 8, 16 in both the PVH and the e820 layouts). */
static void report_mem_table(u64 table, u32 count, u32 stride)
{
	for (u32 i = 0; i < count; i++) {
		u64 e = table + (u64)i * stride;
		report_mem_entry(rd64(e), rd64(e + 8), rd32(e + 16));
	}
}

/* ------------------------------------------------------------------ */
/* ACPI: count CPUs in the MADT (ACPI 6.x, 5.2.5 RSDP, 5.2.7 RSDT,     */
/* 5.2.8 XSDT, 5.2.12 MADT)                                           */

#define RSDP_SCAN_START 0xe0000
#define RSDP_SCAN_END 0x100000
#define RSDP_V1_LENGTH 20
#define RSDP_REVISION 15
#define RSDP_RSDT_ADDRESS 16
#define RSDP_LENGTH 20
#define RSDP_XSDT_ADDRESS 24
#define RSDP_V2_MIN_LENGTH 36

#define SDT_HEADER_LENGTH 36
#define SDT_LENGTH 4
#define SDT_MAX_LENGTH 0x100000 /* sanity bound */

#define MADT_ENTRIES 44 /* after header + local APIC address + flags */
#define MADT_TYPE_LOCAL_APIC 0
#define MADT_TYPE_LOCAL_X2APIC 9
#define MADT_LOCAL_APIC_FLAGS 4   /* u32 in the type-0 entry */
#define MADT_LOCAL_X2APIC_FLAGS 8 /* u32 in the type-9 entry */
#define MADT_LAPIC_ENABLED 0x1

static int sig_eq(u64 pa, const char *sig, int n)
{
	for (int i = 0; i < n; i++)
		if (rd8(pa + i) != (u8)sig[i])
			return 0;
	return 1;
}

static int checksum_ok(u64 pa, u32 len)
{
	u8 sum = 0;
	for (u32 i = 0; i < len; i++)
		sum += rd8(pa + i);
	return sum == 0;
}

static int rsdp_valid(u64 pa)
{
	if (!phys_ok(pa, RSDP_V2_MIN_LENGTH) || !sig_eq(pa, "RSD PTR ", 8))
		return 0;
	if (!checksum_ok(pa, RSDP_V1_LENGTH))
		return 0;
	if (rd8(pa + RSDP_REVISION) >= 2) {
		u32 len = rd32(pa + RSDP_LENGTH);
		if (len < RSDP_V2_MIN_LENGTH || len > 0x1000 || !checksum_ok(pa, len))
			return 0;
	}
	return 1;
}

static u64 find_rsdp(u64 hint)
{
	if (hint && rsdp_valid(hint))
		return hint;
	for (u64 pa = RSDP_SCAN_START; pa < RSDP_SCAN_END; pa += 16)
		if (rd8(pa) == 'R' && rsdp_valid(pa))
			return pa;
	return 0;
}

/* Length of a valid SDT at pa, or 0. */
static u32 sdt_valid(u64 pa)
{
	if (!phys_ok(pa, SDT_HEADER_LENGTH))
		return 0;
	u32 len = rd32(pa + SDT_LENGTH);
	if (len < SDT_HEADER_LENGTH || len > SDT_MAX_LENGTH || !phys_ok(pa, len))
		return 0;
	return checksum_ok(pa, len) ? len : 0;
}

/* The RSDP count_cpus found, for acpi_find_table. */
static u64 acpi_rsdp;

/* Returns the CPU count, or -1 after printing "acpi error <why>". */
static int count_cpus(u64 rsdp_hint)
{
	u64 rsdp = find_rsdp(rsdp_hint);
	if (!rsdp) {
		line("acpi error no RSDP\n");
		return -1;
	}
	acpi_rsdp = rsdp;

	u64 root;
	u32 entry_size;
	const char *root_name;
	if (rd8(rsdp + RSDP_REVISION) >= 2 && rd64(rsdp + RSDP_XSDT_ADDRESS)) {
		root = rd64(rsdp + RSDP_XSDT_ADDRESS);
		entry_size = 8;
		root_name = "XSDT";
	} else {
		root = rd32(rsdp + RSDP_RSDT_ADDRESS);
		entry_size = 4;
		root_name = "RSDT";
	}
	u32 root_len = sdt_valid(root);
	if (!root_len || !sig_eq(root, root_name, 4)) {
		line("acpi error bad ");
		con_puts(root_name);
		con_puts("\n");
		return -1;
	}

	u64 madt = 0;
	u32 madt_len = 0;
	for (u32 off = SDT_HEADER_LENGTH; off + entry_size <= root_len; off += entry_size) {
		u64 t = entry_size == 8 ? rd64(root + off) : rd32(root + off);
		if (phys_ok(t, SDT_HEADER_LENGTH) && sig_eq(t, "APIC", 4)) {
			madt = t;
			madt_len = sdt_valid(t);
			break;
		}
	}
	if (!madt) {
		line("acpi error no MADT\n");
		return -1;
	}
	if (madt_len < MADT_ENTRIES) {
		line("acpi error bad MADT checksum\n");
		return -1;
	}

	int cpus = 0;
	u32 off = MADT_ENTRIES;
	while (off + 2 <= madt_len) {
		u8 type = rd8(madt + off);
		u8 elen = rd8(madt + off + 1);
		if (elen < 2 || off + elen > madt_len) {
			line("acpi error bad MADT entry\n");
			return -1;
		}
		if (type == MADT_TYPE_LOCAL_APIC && elen >= 8 &&
		    (rd32(madt + off + MADT_LOCAL_APIC_FLAGS) & MADT_LAPIC_ENABLED))
			cpus++;
		else if (type == MADT_TYPE_LOCAL_X2APIC && elen >= 16 &&
			 (rd32(madt + off + MADT_LOCAL_X2APIC_FLAGS) & MADT_LAPIC_ENABLED))
			cpus++;
		off += elen;
	}
	return cpus;
}

/* The first valid table with signature sig (4 characters) in the XSDT
 * (or RSDT) of the RSDP found at boot, or 0. */
u64 acpi_find_table(const char *sig)
{
	u64 rsdp = acpi_rsdp;
	if (!rsdp)
		return 0;
	u64 root;
	u32 entry_size;
	if (rd8(rsdp + RSDP_REVISION) >= 2 && rd64(rsdp + RSDP_XSDT_ADDRESS)) {
		root = rd64(rsdp + RSDP_XSDT_ADDRESS);
		entry_size = 8;
	} else {
		root = rd32(rsdp + RSDP_RSDT_ADDRESS);
		entry_size = 4;
	}
	u32 root_len = sdt_valid(root);
	for (u32 off = SDT_HEADER_LENGTH; root_len && off + entry_size <= root_len; off += entry_size) {
		u64 t = entry_size == 8 ? rd64(root + off) : rd32(root + off);
		if (sdt_valid(t) && sig_eq(t, sig, 4))
			return t;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Command line                                                       */

/* Find the value of "key=value" among space-separated tokens; the last
 * occurrence wins.  Returns its start and length in *len, or 0. */
const char *cmdline_value(const char *key, int *len)
{
	const char *found = 0;
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p)
			break;
		const char *tok = p;
		while (*p && *p != ' ' && *p != '\t')
			p++;
		const char *k = key, *t = tok;
		while (*k && t < p && *t == *k) {
			k++;
			t++;
		}
		if (!*k && t < p && *t == '=') {
			found = t + 1;
			*len = (int)(p - found);
		}
	}
	return found;
}

int value_is(const char *v, int len, const char *want)
{
	int i = 0;
	for (; i < len; i++)
		if (want[i] != v[i])
			return 0;
	return want[i] == 0;
}

static void put_n(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		con_putc(s[i]);
}

#define ECHO_MAX 200

static void echo_test(void)
{
	char buf[ECHO_MAX + 1];
	int n = 0;
	line("ready>\n");
	while (n < ECHO_MAX) {
		char c = (char)serial_getc();
		if (c == '\r' || c == '\n')
			break;
		buf[n++] = c;
	}
	buf[n] = 0;
	line("echo ");
	con_puts(buf);
	con_puts("\n");
}

static void __attribute__((noreturn)) do_action(void)
{
	int alen = 0, elen = 0;
	const char *action = cmdline_value("action", &alen);
	const char *exitv = cmdline_value("exit", &elen);

	u32 status = 0;
	if (exitv) {
		int ok = elen > 0 && elen <= 3;
		status = 0;
		for (int i = 0; ok && i < elen; i++) {
			if (exitv[i] < '0' || exitv[i] > '9')
				ok = 0;
			else
				status = status * 10 + (u32)(exitv[i] - '0');
		}
		if (!ok || status > 255) {
			line("bad option exit=");
			put_n(exitv, elen);
			con_puts("\n");
			exit_with(EXIT_STATUS_BAD_OPTION);
		}
	}

	if (action && value_is(action, alen, "poweroff")) {
		line("done\n");
		outb(ACPI_SLEEP_CONTROL_PORT,
		     (ACPI_SLP_TYP_S5 << ACPI_SLP_TYP_SHIFT) | ACPI_SLP_EN);
	} else if (action && value_is(action, alen, "reboot")) {
		line("done\n");
		outb(I8042_COMMAND_PORT, I8042_CMD_PULSE_RESET);
	} else if (action && value_is(action, alen, "acpi-reset")) {
		line("done\n");
		outb(ACPI_RESET_PORT, ACPI_RESET_VALUE);
	} else if (action && !value_is(action, alen, "exit")) {
		line("bad option action=");
		put_n(action, alen);
		con_puts("\n");
		exit_with(EXIT_STATUS_BAD_OPTION);
	} else {
		line("done\n");
		outl(EXIT_PORT, status);
	}
	halt_forever();
}

/* ------------------------------------------------------------------ */

void __attribute__((noreturn)) kmain(u32 kind, u64 info)
{
	serial_init();
	idt_init();

	u64 rsdp_hint = 0;
	if (kind == BOOT_PVH) {
		line("boot=pvh\n");
		if (!phys_ok(info, sizeof(struct hvm_start_info)) ||
		    rd32(info) != HVM_START_MAGIC_VALUE) {
			line("pvh error bad start_info at ");
			put_hex(info);
			con_puts("\n");
			exit_with(EXIT_STATUS_BAD_BOOT_INFO);
		}
		const struct hvm_start_info *si = (const struct hvm_start_info *)info;
		copy_cmdline(si->cmdline_paddr);
		line("cmdline=");
		con_puts(cmdline);
		con_puts("\n");
		if (si->version >= 1 && phys_ok(si->memmap_paddr, (u64)si->memmap_entries * HVM_MEMMAP_ENTRY_SIZE))
			report_mem_table(si->memmap_paddr, si->memmap_entries, HVM_MEMMAP_ENTRY_SIZE);
		else
			line("memmap error no memmap in start_info\n");
		rsdp_hint = si->rsdp_paddr;
	} else {
		line("boot=linux64\n");
		if (!phys_ok(info, BP_SIZE)) {
			line("linux error bad boot_params at ");
			put_hex(info);
			con_puts("\n");
			exit_with(EXIT_STATUS_BAD_BOOT_INFO);
		}
		copy_cmdline(rd32(info + BP_CMD_LINE_PTR) |
			     ((u64)rd32(info + BP_EXT_CMD_LINE_PTR) << 32));
		line("cmdline=");
		con_puts(cmdline);
		con_puts("\n");
		u32 n = rd8(info + BP_E820_ENTRIES);
		if (n > E820_MAX_ENTRIES_ZEROPAGE)
			n = E820_MAX_ENTRIES_ZEROPAGE;
		if (n == 0)
			line("memmap error no e820 entries in boot_params\n");
		report_mem_table(info + BP_E820_TABLE, n, E820_ENTRY_SIZE);
		rsdp_hint = rd64(info + BP_ACPI_RSDP_ADDR);
	}
	line("ram=");
	put_dec(ram_total);
	con_puts("\n");

	int cpus = count_cpus(rsdp_hint);
	line("cpus=");
	put_dec(cpus < 0 ? 0 : (u64)cpus);
	con_puts("\n");

	/* int3=0 skips the check (for hosts/VMMs that cannot deliver #BP). */
	int ilen = 0;
	const char *int3 = cmdline_value("int3", &ilen);
	if (int3 && value_is(int3, ilen, "0")) {
		line("int3 skipped\n");
	} else {
		__asm__ volatile("int3" : : : "memory");
		line(int3_hits == 1 ? "int3 ok\n" : "int3 missed\n");
	}

	int elen = 0;
	const char *echo = cmdline_value("echo", &elen);
	if (echo && value_is(echo, elen, "1"))
		echo_test();

	/* blk=1: PCI + virtio-blk test; blk=watch: wait for the host to swap
	 * the disk; blk=intx: one read completed by INTx through the I/O APIC
	 * instead of MSI-X (virtio_blk.c). */
	int blen = 0;
	const char *blk = cmdline_value("blk", &blen);
	if (blk && value_is(blk, blen, "1"))
		blk_test();
	if (blk && value_is(blk, blen, "watch"))
		blk_watch();
	if (blk && value_is(blk, blen, "intx"))
		blk_intx_test();

	/* net=1: PCI + virtio-net test; net=mq: the same through the last
	 * queue pair of a multi-queue device (virtio_net.c). */
	int nlen = 0;
	const char *net = cmdline_value("net", &nlen);
	if (net && value_is(net, nlen, "1"))
		net_test();
	if (net && value_is(net, nlen, "mq"))
		net_mq_test();

	/* vsock=1: PCI + virtio-vsock echo server (virtio_vsock.c). */
	int vlen = 0;
	const char *vs = cmdline_value("vsock", &vlen);
	if (vs && value_is(vs, vlen, "1"))
		vsock_test();

	/* rng=1: PCI + virtio-rng, read random bytes (virtio_rng.c). */
	int rlen = 0;
	const char *rng = cmdline_value("rng", &rlen);
	if (rng && value_is(rng, rlen, "1"))
		rng_test();

	/* xsave=1: XSAVE/XRSTOR/XGETBV in ring 0, completed by the VMM on
	 * kvm-pvm hosts (xsave.c). */
	int xlen = 0;
	const char *xs = cmdline_value("xsave", &xlen);
	if (xs && value_is(xs, xlen, "1"))
		xsave_test();

	/* snap=1: a counter and a memory pattern that must survive the host's
	 * snapshot and restore, and the disk read on request (snap.c). */
	int slen = 0;
	const char *snap = cmdline_value("snap", &slen);
	if (snap && value_is(snap, slen, "1"))
		snap_test();

	/* fault=ud: prove that unexpected exceptions are reported (vector 6,
	 * exit status 99).  fault=gp: read a non-canonical address (#GP,
	 * vector 13). */
	int flen = 0;
	const char *fault = cmdline_value("fault", &flen);
	if (fault && value_is(fault, flen, "ud"))
		__asm__ volatile("ud2");
	if (fault && value_is(fault, flen, "gp"))
		(void)rd8(NONCANONICAL_ADDRESS);

	do_action();
}
