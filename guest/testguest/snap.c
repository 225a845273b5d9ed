/*
 * snap=1: state that must survive the host's snapshot, a kill of the VMM
 * and a restore in a new VMM process.
 *
 * The guest writes a pattern into two 64 KiB regions of RAM: one just past
 * its own image (the start of the VMM's memory file), one ending at the top
 * of the highest RAM below 4 GiB (the end of that file).  One page in four
 * of each is written with zeros, which the VMM's memory file keeps as holes.
 * It brings up the first virtio-blk device, if any (virtio_blk.c), turns
 * on COM1's receive interrupt (IRQ 4 through the I/O APIC) and prints
 * "snap ready".  Then every line read from COM1 increments a counter kept
 * in RAM, checks both regions and prints both; a line "r" also reads and
 * hashes the disk's first sectors, "q" ends the test.  Between input bytes
 * the vCPU halts (many restored clones idle at once cost no CPU), so a
 * restored guest also needs the UART, the I/O APIC and the local APIC to
 * deliver the next byte's interrupt.  A restored guest continues the count
 * where the snapshot left it.
 *
 * Output lines (README.md).
 */
#include "testguest.h"

#define SNAP_REGION 0x10000ull /* bytes per region, a multiple of the page */
#define SNAP_PAGE 0x1000ull
#define SNAP_ZERO_EVERY 4 /* pages with index % 4 == 3 hold zeros */
#define SNAP_SECTORS 8    /* read by "r" */
#define SNAP_LINE_MAX 200
/* The pattern: the word's address times 2^64 / golden ratio, XORed with
 * "snapshot", so every word differs and none is zero where it matters. */
#define SNAP_MUL 0x9e3779b97f4a7c15ull
#define SNAP_XOR 0x736e617073686f74ull

/* The 8259 PICs' data ports: a write outside the initialization sequence
 * is OCW1, the interrupt mask (8259A datasheet). */
#define PIC1_DATA 0x21
#define PIC2_DATA 0xa1
#define PIC_MASK_ALL 0xff

/* COM1's interrupt enable register and its received-data interrupt; its
 * ISA IRQ, the I/O APIC input with no MADT override (ACPI 6.5 §5.2.12.5). */
#define COM1_IER 0x3f9
#define UART_IER_RDA 0x01
#define COM1_GSI 4

static inline void snap_outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

extern char _end[]; /* linker.ld: end of the image, .bss and stack */

static u64 snap_low, snap_high; /* region bases; snap_high 0 if none */
static u64 snap_count;
static int snap_after_cr; /* the last line ended with '\r' */

static u64 snap_word(u64 addr, u64 base)
{
	if (((addr - base) / SNAP_PAGE) % SNAP_ZERO_EVERY == SNAP_ZERO_EVERY - 1)
		return 0;
	return (addr * SNAP_MUL) ^ SNAP_XOR;
}

static void snap_fill(u64 base)
{
	for (u64 a = base; a < base + SNAP_REGION; a += 8)
		*(volatile u64 *)a = snap_word(a, base);
}

/* The first address whose word is not the pattern's, or 0. */
static u64 snap_check(u64 base)
{
	for (u64 a = base; a < base + SNAP_REGION; a += 8)
		if (*(volatile u64 *)a != snap_word(a, base))
			return a;
	return 0;
}

/* The next byte from COM1: halt until COM1's interrupt when there is none.
 * sti holds interrupts off for one more instruction, so an interrupt that
 * came after the check wakes hlt instead of slipping in before it. */
static u8 snap_getc(void)
{
	for (;;) {
		int c = con_trygetc();
		if (c >= 0)
			return (u8)c;
		__asm__ volatile("sti; hlt; cli" : : : "memory");
	}
}

/* Read one line from COM1 into buf (at most SNAP_LINE_MAX bytes, the rest
 * dropped) and return its length.  "\r\n" ends one line, not two. */
static int snap_read_line(char *buf)
{
	int n = 0;
	for (;;) {
		u8 c = snap_getc();
		if (c == '\n' && n == 0 && snap_after_cr) {
			snap_after_cr = 0;
			continue;
		}
		if (c == '\r' || c == '\n') {
			snap_after_cr = c == '\r';
			return n;
		}
		snap_after_cr = 0;
		if (n < SNAP_LINE_MAX)
			buf[n++] = (char)c;
	}
}

static void snap_read_disk(int disk)
{
	u32 hash = 0, irqs = 0;
	if (!disk) {
		line("snap blk none\n");
		return;
	}
	if (blk_read_hash(SNAP_SECTORS, &hash, &irqs) < 0)
		return;
	line("snap blk sectors=");
	put_dec(SNAP_SECTORS);
	con_puts(" fnv=");
	put_hex(hash);
	con_puts(" irqs=");
	put_dec(irqs);
	con_puts("\n");
}

void snap_test(void)
{
	char buf[SNAP_LINE_MAX];
	snap_low = ((u64)_end + SNAP_REGION - 1) & ~(SNAP_REGION - 1);
	if (ram_top_low < snap_low + SNAP_REGION) {
		line("snap error no room\n");
		return;
	}
	u64 high = (ram_top_low - SNAP_REGION) & ~(SNAP_PAGE - 1);
	snap_high = high >= snap_low + SNAP_REGION ? high : 0;
	/* Only the disk's MSI-X vector and COM1 through the I/O APIC may
	 * interrupt: a BIOS (QEMU's) leaves the PIT ticking into the PIC. */
	snap_outb(PIC1_DATA, PIC_MASK_ALL);
	snap_outb(PIC2_DATA, PIC_MASK_ALL);
	snap_fill(snap_low);
	if (snap_high)
		snap_fill(snap_high);
	int disk = blk_open() == 0;
	/* COM1's received-data interrupt: IRQ 4, edge-triggered and active
	 * high as ISA interrupts are, to vector 0x43 on APIC ID 0 (fixed,
	 * physical). */
	irq_setup();
	ioapic_write(IOAPIC_REDTBL + 2 * COM1_GSI + 1, 0);
	ioapic_write(IOAPIC_REDTBL + 2 * COM1_GSI, SERIAL_VECTOR);
	snap_outb(COM1_IER, UART_IER_RDA);
	line("snap ready low=");
	put_hex(snap_low);
	con_puts(" high=");
	put_hex(snap_high);
	con_puts(" bytes=");
	put_dec(SNAP_REGION);
	con_puts("\n");

	for (;;) {
		int n = snap_read_line(buf);
		snap_count++;
		u64 bad = snap_check(snap_low);
		if (!bad && snap_high)
			bad = snap_check(snap_high);
		line("snap count=");
		put_dec(snap_count);
		if (bad) {
			con_puts(" pattern=BAD at=");
			put_hex(bad);
		} else {
			con_puts(" pattern=ok");
		}
		con_puts("\n");
		if (n == 1 && buf[0] == 'r')
			snap_read_disk(disk);
		if (n == 1 && buf[0] == 'q') {
			line("snap end\n");
			return;
		}
	}
}
