/*
 * blk=1: find a virtio-blk device by PCI enumeration and exercise it.
 *
 * PCI configuration mechanism #1 (ports 0xcf8/0xcfc) finds the first
 * modern virtio-blk function (vendor 0x1af4, device 0x1042) on bus 0; its
 * vendor capabilities locate the virtio structures in its BARs (virtio 1.2
 * §4.1.4).  The driver negotiates VERSION_1 plus RO/BLK_SIZE/FLUSH/
 * INDIRECT_DESC/EVENT_IDX when offered, sets up queue 0 with 16 entries and
 * MSI-X vector 0 (-> LAPIC vector 0x40 on CPU 0), and then runs requests
 * one at a time, polling the used ring:
 *
 *   GET_ID, IN sector 0 (with interrupts on: the completion must also
 *   arrive as an MSI-X interrupt), OUT sector 1 through an indirect
 *   descriptor table, IN sector 1 to compare, FLUSH.
 *
 * blk=watch instead reads sector 0, then waits (bounded, timed by the CMOS
 * RTC) for the host to swap the disk's backing file: config_generation
 * changes, ISR bit 1 is set and MSI-X entry 1 (-> vector 0x41), the
 * config_msix_vector, fires; then it reads the new capacity and sector 0.
 *
 * snap=1 (snap.c) brings the device up as for blk=1 and reads and hashes
 * the first sectors on request (blk_open, blk_read_hash), before and after
 * the host snapshots and restores the machine.
 *
 * blk=intx leaves MSI-X off and routes the device's INTA# (the I/O APIC
 * input in its Interrupt Line register) to vector 0x42 as a level-triggered
 * interrupt, then reads sector 0: the first interrupt is EOIed without
 * reading the ISR, so the line must come back; the second reads the ISR,
 * which deasserts it.  (Where KVM acknowledges the interrupt at injection
 * rather than at EOI, as on kvm-pvm hosts, a third, spurious one follows:
 * the line was still asserted when the second was injected.)
 *
 * Output lines (README.md).  Everything is physical == virtual (identity
 * map), and the device sees our .bss buffers by their link addresses.
 */
#include "testguest.h"

/* ---- byte port access (the rest is in virtio_pci.h) ---- */

static inline void out8(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 in8(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

#include "virtio_pci.h"

#define PCI_CAP_MSIX 0x11
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_MASKALL 0x4000
#define VIRTIO_BLK_DEVICE 0x1042 /* 0x1040 + device type 2 */
#define CC_QMSIX 0x1a

/* feature bits (§6, §5.2.3) */
#define F_BLK_RO (1ull << 5)
#define F_BLK_BLK_SIZE (1ull << 6)
#define F_BLK_FLUSH (1ull << 9)
#define F_INDIRECT (1ull << 28)
#define F_EVENT_IDX (1ull << 29)
#define F_VERSION_1 (1ull << 32)

/* virtio-blk requests (§5.2.6) */
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define SECTOR 512

/* split virtqueue (§2.7) */
#define QSZ 16
#define D_NEXT 1
#define D_WRITE 2
#define D_INDIRECT 4

struct vdesc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
} __attribute__((packed));

struct vavail {
	u16 flags;
	u16 idx;
	u16 ring[QSZ];
	u16 used_event;
} __attribute__((packed));

struct vused_elem {
	u32 id;
	u32 len;
} __attribute__((packed));

struct vused {
	u16 flags;
	u16 idx;
	struct vused_elem ring[QSZ];
	u16 avail_event;
} __attribute__((packed));

static struct vdesc desc[QSZ] __attribute__((aligned(4096)));
static struct vavail avail __attribute__((aligned(4096)));
static struct vused used __attribute__((aligned(4096)));
static struct vdesc itable[3] __attribute__((aligned(16)));
static struct {
	u32 type;
	u32 reserved;
	u64 sector;
} __attribute__((packed)) hdr;
static u8 data[SECTOR] __attribute__((aligned(512)));
static volatile u8 status;

static u64 common, notify, devcfg, isr;
static u64 features;
static u16 avail_idx, last_used;
static int blk_use_msix = 1; /* blk=intx: leave MSI-X off */

/* ---- MSI-X interrupt (vector 0x40 through our own, larger IDT) ---- */

#define LAPIC_BASE 0xfee00000ull
#define LAPIC_SVR 0x0f0
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS 0xff
#define BLK_VECTOR 0x40
#define BLK_CFG_VECTOR 0x41 /* blk=watch: configuration changes */
#define BLK_INTX_VECTOR 0x42 /* blk=intx: INTA# through the I/O APIC */
#define MSI_ADDR_CPU0 0xfee00000u /* destination APIC ID 0, physical */
#define MSIX_TABLE_SIZE_MASK 0x7ff
#define NO_VECTOR 0xffff

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

static struct gate idt2[SERIAL_VECTOR + 1] __attribute__((aligned(16)));
volatile u32 blk_irqs, blk_cfg_irqs, serial_irqs;
extern char blk_irq_entry[], blk_cfg_irq_entry[], blk_intx_entry[], serial_irq_entry[];

/* Count the interrupt, EOI the local APIC, return. */
__asm__(".text\n"
	".globl blk_irq_entry\n"
	"blk_irq_entry:\n"
	"	pushq %rax\n"
	"	incl blk_irqs(%rip)\n"
	"	movabsq $0xfee000b0, %rax\n"
	"	movl $0, (%rax)\n"
	"	popq %rax\n"
	"	iretq\n"
	".globl serial_irq_entry\n"
	"serial_irq_entry:\n"
	"	pushq %rax\n"
	"	incl serial_irqs(%rip)\n"
	"	movabsq $0xfee000b0, %rax\n"
	"	movl $0, (%rax)\n"
	"	popq %rax\n"
	"	iretq\n"
	".globl blk_cfg_irq_entry\n"
	"blk_cfg_irq_entry:\n"
	"	pushq %rax\n"
	"	incl blk_cfg_irqs(%rip)\n"
	"	movabsq $0xfee000b0, %rax\n"
	"	movl $0, (%rax)\n"
	"	popq %rax\n"
	"	iretq\n"
	/* INTx: the C handler, with the caller-saved registers saved (nine
	 * pushes after the 40-byte frame keep the call 16-byte aligned). */
	".globl blk_intx_entry\n"
	"blk_intx_entry:\n"
	"	pushq %rax\n"
	"	pushq %rcx\n"
	"	pushq %rdx\n"
	"	pushq %rsi\n"
	"	pushq %rdi\n"
	"	pushq %r8\n"
	"	pushq %r9\n"
	"	pushq %r10\n"
	"	pushq %r11\n"
	"	call blk_intx_irq\n"
	"	popq %r11\n"
	"	popq %r10\n"
	"	popq %r9\n"
	"	popq %r8\n"
	"	popq %rdi\n"
	"	popq %rsi\n"
	"	popq %rdx\n"
	"	popq %rcx\n"
	"	popq %rax\n"
	"	iretq\n");

static void set_gate2(int vec, u64 h, u16 sel)
{
	struct gate *v = &idt2[vec];
	v->off_lo = (u16)h;
	v->sel = sel;
	v->ist = 0;
	v->attr = 0x8e; /* present, DPL 0, interrupt gate */
	v->off_mid = (u16)(h >> 16);
	v->off_hi = (u32)(h >> 32);
	v->rsvd = 0;
}

/* Copy main.c's 32 exception gates into a table that also has our vectors
 * (gates 32..0x3f stay not-present) and switch to it; software-enable the
 * local APIC.  Also snap.c's, for COM1's interrupt. */
void irq_setup(void)
{
	struct dtr old, p;
	__asm__ volatile("sidt %0" : "=m"(old));
	const struct gate *g = (const struct gate *)old.base;
	if (g == idt2)
		return; /* already ours */
	u32 n = (old.limit + 1u) / sizeof(struct gate);
	for (u32 i = 0; i < n && i < BLK_VECTOR; i++)
		idt2[i] = g[i];
	set_gate2(BLK_VECTOR, (u64)blk_irq_entry, g[0].sel);
	set_gate2(BLK_CFG_VECTOR, (u64)blk_cfg_irq_entry, g[0].sel);
	set_gate2(BLK_INTX_VECTOR, (u64)blk_intx_entry, g[0].sel);
	set_gate2(SERIAL_VECTOR, (u64)serial_irq_entry, g[0].sel);
	p.limit = sizeof(idt2) - 1;
	p.base = (u64)idt2;
	__asm__ volatile("lidt %0" : : "m"(p) : "memory");
	/* The local APIC drops fixed interrupts while software-disabled. */
	mmio_wr32(LAPIC_BASE + LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS);
}

/* ---- driver ---- */

static void fail(const char *why)
{
	line("blk error ");
	con_puts(why);
	con_puts("\n");
}

static void put_hexbytes(const u8 *p, int n)
{
	for (int i = 0; i < n; i++) {
		con_puts((const char[]){"0123456789abcdef"[p[i] >> 4], "0123456789abcdef"[p[i] & 15], 0});
	}
}

#define POLL_LIMIT 50000000

/* Run one request (desc 0 = header, 1 = data if len, 2 = status; or one
 * indirect descriptor pointing at the same three in itable).  Returns the
 * status byte, or -1 on timeout / bad used entry. */
static int request(u32 type, u64 sector, u32 len, int device_writes, int indirect)
{
	struct vdesc chain[3];
	int n = 0;
	hdr.type = type;
	hdr.reserved = 0;
	hdr.sector = sector;
	status = 0xff;
	chain[n].addr = (u64)&hdr;
	chain[n].len = sizeof(hdr);
	chain[n].flags = D_NEXT;
	n++;
	if (len) {
		chain[n].addr = (u64)data;
		chain[n].len = len;
		chain[n].flags = D_NEXT | (device_writes ? D_WRITE : 0);
		n++;
	}
	chain[n].addr = (u64)&status;
	chain[n].len = 1;
	chain[n].flags = D_WRITE;
	n++;
	for (int i = 0; i < n; i++)
		chain[i].next = (u16)(i + 1);
	if (indirect) {
		for (int i = 0; i < n; i++)
			itable[i] = chain[i];
		desc[0].addr = (u64)itable;
		desc[0].len = (u32)(n * sizeof(struct vdesc));
		desc[0].flags = D_INDIRECT;
		desc[0].next = 0;
	} else {
		for (int i = 0; i < n; i++)
			desc[i] = chain[i];
	}
	/* EVENT_IDX: ask for an interrupt once the used index passes ours. */
	avail.used_event = last_used;
	avail.ring[avail_idx % QSZ] = 0;
	barrier();
	avail_idx++;
	avail.idx = avail_idx;
	barrier();
	mmio_wr16(notify, 0);
	for (u32 i = 0; i < POLL_LIMIT; i++) {
		barrier();
		if (*(volatile u16 *)&used.idx != last_used)
			break;
	}
	barrier();
	if (*(volatile u16 *)&used.idx == last_used) {
		if (mmio_rd8(common + CC_STATUS) & S_NEEDS_RESET)
			fail("device needs reset");
		else
			fail("request timed out");
		return -1;
	}
	struct vused_elem e = used.ring[last_used % QSZ];
	last_used++;
	if (e.id != 0) {
		fail("bad used entry");
		return -1;
	}
	return status;
}

/* Find the device and bring it to DRIVER_OK.  Returns the PCI device
 * number, or -1.  With cfg_msix non-null, configuration changes get MSI-X
 * table entry 1 (-> vector 0x41); *cfg_msix says whether the device took
 * it. */
static int blk_init(int *msix, int *cfg_msix)
{
	int found = virtio_pci_find(VIRTIO_BLK_DEVICE);
	if (found < 0) {
		fail("no virtio-blk device");
		return -1;
	}
	u32 dev = (u32)found;
	struct virtio_regs r;
	if (virtio_pci_regs(dev, &r) || !r.devcfg || !r.isr) {
		fail("missing virtio capability");
		return -1;
	}
	common = r.common;
	devcfg = r.devcfg;
	isr = r.isr;
	u64 notify_base = r.notify, msix_table = 0;
	u32 notify_mult = r.notify_mult;
	/* The MSI-X table: BIR in the low 3 bits of its dword (PCI 3.0 §6.8.2). */
	u32 msix_cap = pci_find_cap(dev, PCI_CAP_MSIX);
	if (msix_cap) {
		u32 t = pci_rd32(dev, msix_cap + 4);
		msix_table = pci_bar(dev, t & 7) + (t & ~7u);
	}
	u64 offered;
	features = virtio_negotiate(common, F_VERSION_1 | F_BLK_RO | F_BLK_BLK_SIZE | F_BLK_FLUSH | F_INDIRECT | F_EVENT_IDX, &offered);
	if (!features) {
		fail("feature negotiation");
		return -1;
	}

	/* MSI-X: table entry 0 -> vector 0x40 on CPU 0, then enable. */
	*msix = 0;
	if (cfg_msix)
		*cfg_msix = 0;
	if (!blk_use_msix)
		msix_cap = 0;
	if (msix_cap) {
		mmio_wr32(msix_table + 0, MSI_ADDR_CPU0);
		mmio_wr32(msix_table + 4, 0);
		mmio_wr32(msix_table + 8, BLK_VECTOR);
		mmio_wr32(msix_table + 12, 0); /* unmasked */
		u16 ctrl = pci_rd16(dev, msix_cap + 2);
		if (cfg_msix && (ctrl & MSIX_TABLE_SIZE_MASK) >= 1) {
			mmio_wr32(msix_table + 16 + 0, MSI_ADDR_CPU0);
			mmio_wr32(msix_table + 16 + 4, 0);
			mmio_wr32(msix_table + 16 + 8, BLK_CFG_VECTOR);
			mmio_wr32(msix_table + 16 + 12, 0);
		}
		pci_wr16(dev, msix_cap + 2, (ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_MASKALL);
		if (cfg_msix && (ctrl & MSIX_TABLE_SIZE_MASK) >= 1) {
			/* The device reads back NO_VECTOR if it refuses. */
			mmio_wr16(common + CC_MSIX, 1);
			*cfg_msix = mmio_rd16(common + CC_MSIX) == 1;
		}
	}

	/* Queue 0 (§4.1.5.1.3). */
	mmio_wr16(common + CC_QSELECT, 0);
	u16 max = mmio_rd16(common + CC_QSIZE);
	if (max < QSZ) {
		fail("queue too small");
		return -1;
	}
	mmio_wr16(common + CC_QSIZE, QSZ);
	if (msix_cap) {
		mmio_wr16(common + CC_QMSIX, 0);
		*msix = mmio_rd16(common + CC_QMSIX) == 0;
	}
	mmio_wr64(common + CC_QDESC, (u64)desc);
	mmio_wr64(common + CC_QDRIVER, (u64)&avail);
	mmio_wr64(common + CC_QDEVICE, (u64)&used);
	notify = notify_base + (u64)mmio_rd16(common + CC_QNOTIFYOFF) * notify_mult;
	mmio_wr16(common + CC_QENABLE, 1);
	mmio_wr8(common + CC_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	return (int)dev;
}

/* Capacity, read consistently: retried while config_generation moves
 * under the two 32-bit reads (§2.5.1).  *gen gets the generation. */
static u64 read_capacity(u8 *gen)
{
	u8 g0, g1;
	u64 c;
	int tries = 0;
	do {
		g0 = mmio_rd8(common + CC_CFGGEN);
		c = (u64)mmio_rd32(devcfg) | (u64)mmio_rd32(devcfg + 4) << 32;
		g1 = mmio_rd8(common + CC_CFGGEN);
	} while (g0 != g1 && ++tries < 100);
	if (gen)
		*gen = g1;
	return c;
}

static void report_device(int dev, u64 capacity, int msix)
{
	line("blk device=");
	put_dec((u64)dev);
	con_puts(" capacity=");
	put_dec(capacity);
	con_puts(" ro=");
	put_dec((features & F_BLK_RO) ? 1 : 0);
	con_puts(" msix=");
	put_dec((u64)msix);
	con_puts("\n");
}

/* "blk bar0=<hex> size=<hex> 64bit=<0|1>": where the VMM put the BAR
 * with the virtio structures, sized through both halves. */
static void report_bar(int dev)
{
	u32 lo = pci_rd32((u32)dev, PCI_BAR0);
	u64 size = pci_bar_size((u32)dev, 0);
	line("blk bar0=");
	put_hex(pci_bar((u32)dev, 0));
	con_puts(" size=");
	put_hex(size);
	con_puts(" 64bit=");
	put_dec((lo & 0x6) == PCI_BAR_MEM64 ? 1 : 0);
	con_puts(" prefetch=");
	put_dec((lo & PCI_BAR_PREFETCH) ? 1 : 0);
	con_puts("\n");
}

/* MCFG (PCI Firmware 3.x §4.1.2): after the 36-byte header and 8 reserved
 * bytes, allocations of base (u64), segment (u16), start and end bus. */
#define MCFG_ALLOC 44
#define MCFG_ALLOC_LEN 16
#define ECAM_FN_SHIFT 12
#define ECAM_DEV_SHIFT 15

/* "blk ecam base=<hex> match=<0|1> ext=<hex> fn1=<hex>": find bus 0's ECAM
 * window through MCFG and read the device's configuration space through
 * it: the 256 conventional bytes must equal what mechanism #1 reads;
 * register 0x100 (extended space) and function 1 read as all ones. */
static void report_ecam(int dev)
{
	u64 mcfg = acpi_find_table("MCFG");
	if (!mcfg || mmio_rd32(mcfg + 4) < MCFG_ALLOC + MCFG_ALLOC_LEN) {
		line("blk ecam none\n");
		return;
	}
	u64 base = mmio_rd32(mcfg + MCFG_ALLOC) | (u64)mmio_rd32(mcfg + MCFG_ALLOC + 4) << 32;
	u8 start = mmio_rd8(mcfg + MCFG_ALLOC + 10);
	if (start != 0 || base >= BELOW_4G) {
		line("blk ecam unusable\n");
		return;
	}
	u64 fa = base + ((u64)dev << ECAM_DEV_SHIFT);
	int match = 1;
	for (u32 reg = 0; reg < 256; reg += 4)
		if (mmio_rd32(fa + reg) != pci_rd32((u32)dev, reg))
			match = 0;
	/* Byte and word reads through ECAM, too. */
	if (mmio_rd16(fa + 2) != pci_rd16((u32)dev, 2) || mmio_rd8(fa + PCI_INT_PIN) != pci_rd8((u32)dev, PCI_INT_PIN))
		match = 0;
	line("blk ecam base=");
	put_hex(base);
	con_puts(" match=");
	put_dec((u64)match);
	con_puts(" ext=");
	put_hex(mmio_rd32(fa + 0x100));
	con_puts(" fn1=");
	put_hex(mmio_rd32(fa + (1u << ECAM_FN_SHIFT)));
	con_puts("\n");
}

void blk_test(void)
{
	int msix = 0;
	int dev = blk_init(&msix, 0);
	if (dev < 0)
		return;
	report_bar(dev);
	report_ecam(dev);
	report_device(dev, read_capacity(0), msix);

	/* GET_ID: 20 bytes, NUL-padded. */
	for (int i = 0; i < SECTOR; i++)
		data[i] = 0;
	if (request(T_GET_ID, 0, 20, 1, 0) == BLK_S_OK) {
		data[20] = 0;
		line("blk id ");
		con_puts((const char *)data);
		con_puts("\n");
	}

	/* Sector 0, completed by an MSI-X interrupt as well. */
	u32 irqs_before = blk_irqs;
	if (msix) {
		irq_setup();
		__asm__ volatile("sti");
	}
	int st = request(T_IN, 0, SECTOR, 1, 0);
	if (st != BLK_S_OK) {
		__asm__ volatile("cli");
		if (st >= 0)
			fail("read status");
		return;
	}
	if (msix) {
		for (u32 i = 0; i < POLL_LIMIT && blk_irqs == irqs_before; i++)
			barrier();
		__asm__ volatile("cli");
		line(blk_irqs != irqs_before ? "blk irq ok\n" : "blk irq missed\n");
	}
	line("blk read ok ");
	put_hexbytes(data, 16);
	con_puts("\n");

	/* Sector 1 through an indirect table (when negotiated). */
	for (int i = 0; i < SECTOR; i++)
		data[i] = (u8)(i ^ 0xa5);
	st = request(T_OUT, 1, SECTOR, 0, (features & F_INDIRECT) != 0);
	if (st == BLK_S_OK) {
		line("blk write ok\n");
		for (int i = 0; i < SECTOR; i++)
			data[i] = 0;
		if (request(T_IN, 1, SECTOR, 1, 0) == BLK_S_OK) {
			int same = 1;
			for (int i = 0; i < SECTOR; i++)
				if (data[i] != (u8)(i ^ 0xa5))
					same = 0;
			line(same ? "blk readback ok\n" : "blk readback mismatch\n");
		}
	} else if (st == BLK_S_IOERR) {
		line("blk write refused\n");
	} else if (st >= 0) {
		fail("write status");
	}

	if (features & F_BLK_FLUSH) {
		st = request(T_FLUSH, 0, 0, 0, 0);
		if (st == BLK_S_OK)
			line("blk flush ok\n");
		else if (st >= 0)
			fail("flush status");
	}
}

/* ---- snap=1: the disk of a guest that is snapshotted and restored ---- */

/* FNV-1a, 32 bits. */
#define FNV_OFFSET 2166136261u
#define FNV_PRIME 16777619u

static int snap_msix; /* queue 0 has MSI-X entry 0 (-> vector 0x40) */

/* Bring up the first virtio-blk device as for blk=1 and print its
 * "blk device=" line.  Returns 0, or -1 after a "blk error" line. */
int blk_open(void)
{
	int dev = blk_init(&snap_msix, 0);
	if (dev < 0)
		return -1;
	report_device(dev, read_capacity(0), snap_msix);
	return 0;
}

/* Read sectors 0..n-1 one request at a time (through the queue indices
 * and the MSI-X route a restore put back) and hash them.  Interrupts are
 * on only while a request is in flight; *irqs counts the requests whose
 * completion interrupt arrived.  Returns 0, or -1 after a "blk error"
 * line. */
int blk_read_hash(u32 n, u32 *hash, u32 *irqs)
{
	u32 h = FNV_OFFSET, got = 0;
	if (snap_msix)
		irq_setup();
	for (u32 s = 0; s < n; s++) {
		u32 before = blk_irqs;
		if (snap_msix)
			__asm__ volatile("sti");
		int st = request(T_IN, s, SECTOR, 1, 0);
		if (st != BLK_S_OK) {
			__asm__ volatile("cli");
			if (st >= 0)
				fail("read status");
			return -1;
		}
		if (snap_msix) {
			for (u32 i = 0; i < POLL_LIMIT && blk_irqs == before; i++)
				barrier();
			__asm__ volatile("cli");
			if (blk_irqs != before)
				got++;
		}
		for (int i = 0; i < SECTOR; i++)
			h = (h ^ data[i]) * FNV_PRIME;
	}
	*hash = h;
	*irqs = got;
	return 0;
}

/* ---- blk=watch ---- */

/* CMOS RTC seconds (MC146818 register 0, BCD): the wait's clock. */
#define RTC_INDEX 0x70
#define RTC_DATA 0x71
#define RTC_SECONDS 0x00

static u8 rtc_seconds(void)
{
	out8(RTC_INDEX, RTC_SECONDS);
	return in8(RTC_DATA);
}

#define WATCH_SECS_DEFAULT 60
#define WATCH_SECS_MAX 3600
/* Bounds the wait should the RTC never tick: far more polls than 60 s
 * take on any host (each is several VM exits). */
#define WATCH_SPIN_LIMIT 200000000ull

/* blk_watch_secs=N, or the default. */
static u32 watch_secs(void)
{
	int len = 0;
	const char *v = cmdline_value("blk_watch_secs", &len);
	if (!v || len < 1 || len > 4)
		return WATCH_SECS_DEFAULT;
	u32 n = 0;
	for (int i = 0; i < len; i++) {
		if (v[i] < '0' || v[i] > '9')
			return WATCH_SECS_DEFAULT;
		n = n * 10 + (u32)(v[i] - '0');
	}
	return n == 0 || n > WATCH_SECS_MAX ? WATCH_SECS_DEFAULT : n;
}

/* Read sector 0 and print "blk watch <what> capacity=<dec> data=<hex16>".
 * Returns 0, or -1 after printing why. */
static int watch_report(const char *what)
{
	u64 capacity = read_capacity(0);
	int st = request(T_IN, 0, SECTOR, 1, 0);
	if (st != BLK_S_OK) {
		if (st >= 0)
			fail("read status");
		return -1;
	}
	line("blk watch ");
	con_puts(what);
	con_puts(" capacity=");
	put_dec(capacity);
	con_puts(" data=");
	put_hexbytes(data, 16);
	con_puts("\n");
	return 0;
}

void blk_watch(void)
{
	int msix = 0, cfg_msix = 0;
	int dev = blk_init(&msix, &cfg_msix);
	if (dev < 0)
		return;
	u8 gen0;
	report_device(dev, read_capacity(&gen0), msix);
	if (watch_report("before") < 0)
		return;
	(void)mmio_rd8(isr); /* reading clears it: start from nothing */
	u32 cfg_irqs_before = blk_cfg_irqs;
	if (msix) {
		irq_setup();
		__asm__ volatile("sti");
	}
	u32 secs = watch_secs();
	line("blk watch waiting gen=");
	put_dec(gen0);
	con_puts(" secs=");
	put_dec(secs);
	con_puts("\n");

	/* Poll config_generation; a byte 'r' on COM1 asks for a re-read of
	 * sector 0 meanwhile. */
	int changed = 0;
	u8 last = rtc_seconds();
	u32 ticks = 0;
	for (u64 spins = 0; ticks < secs && spins < WATCH_SPIN_LIMIT; spins++) {
		if (mmio_rd8(common + CC_CFGGEN) != gen0) {
			changed = 1;
			break;
		}
		if (con_trygetc() == 'r' && watch_report("reread") < 0) {
			__asm__ volatile("cli");
			return;
		}
		u8 s = rtc_seconds();
		if (s != last) {
			last = s;
			ticks++;
		}
	}
	if (!changed) {
		__asm__ volatile("cli");
		line("blk watch timeout\n");
		return;
	}
	/* The device sets ISR bit 1 before it moves the generation; the
	 * MSI-X message follows. */
	u8 bits = mmio_rd8(isr);
	if (cfg_msix)
		for (u32 i = 0; i < POLL_LIMIT && blk_cfg_irqs == cfg_irqs_before; i++)
			barrier();
	u8 gen1;
	(void)read_capacity(&gen1);
	line("blk watch changed gen=");
	put_dec(gen1);
	con_puts(" isr=");
	put_dec((bits & ISR_CONFIG) ? 1 : 0);
	con_puts(" irq=");
	con_puts(!cfg_msix ? "off" : blk_cfg_irqs != cfg_irqs_before ? "ok" : "missed");
	con_puts("\n");
	watch_report("after");
	__asm__ volatile("cli");
}

/* ---- blk=intx ---- */

/* I/O APIC (82093AA): index and data registers; the redirection entry
 * bits are in testguest.h. */
#define IOAPIC_BASE 0xfec00000ull
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN 0x10
#define IOAPIC_VER 0x01
#define INTX_STORM 16 /* interrupts before the handler gives up */
#define INTX_QUIET_SECS 2

void ioapic_write(u32 reg, u32 v)
{
	mmio_wr32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
	mmio_wr32(IOAPIC_BASE + IOAPIC_WIN, v);
}

static u32 ioapic_read(u32 reg)
{
	mmio_wr32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
	return mmio_rd32(IOAPIC_BASE + IOAPIC_WIN);
}

static volatile u32 intx_irqs;
static volatile u8 intx_isr_bits, intx_status_seen;
static volatile int intx_defer; /* leave the ISR unread on the next interrupt */
static u32 intx_dev, intx_gsi;

void blk_intx_irq(void);

/* Vector 0x42.  The first time, look at the PCI Interrupt Status bit and
 * EOI without reading the ISR: the device still asserts INTA#, so the
 * interrupt must come again.  After that, read the ISR (which deasserts
 * the pin) and EOI.  A storm masks the entry so the test can end. */
void blk_intx_irq(void)
{
	intx_irqs++;
	if (intx_defer) {
		intx_defer = 0;
		intx_status_seen = (pci_rd16(intx_dev, PCI_STATUS) & PCI_STATUS_INT) ? 1 : 0;
	} else {
		intx_isr_bits |= mmio_rd8(isr);
	}
	if (intx_irqs >= INTX_STORM)
		ioapic_write(IOAPIC_REDTBL + 2 * intx_gsi, BLK_INTX_VECTOR | IOAPIC_LEVEL | IOAPIC_MASKED);
	mmio_wr32(LAPIC_BASE + 0xb0, 0);
}

void blk_intx_test(void)
{
	int msix = 0;
	blk_use_msix = 0;
	int dev = blk_init(&msix, 0);
	if (dev < 0)
		return;
	report_device(dev, read_capacity(0), msix);
	intx_dev = (u32)dev;
	u32 pin = pci_rd8(intx_dev, PCI_INT_PIN);
	intx_gsi = pci_rd8(intx_dev, PCI_INT_LINE);
	u32 pins = ((ioapic_read(IOAPIC_VER) >> 16) & 0xff) + 1;
	line("blk intx pin=");
	put_dec(pin);
	con_puts(" line=");
	put_dec(intx_gsi);
	con_puts(" vector=");
	put_hex(BLK_INTX_VECTOR);
	con_puts("\n");
	if (pin != 1 || intx_gsi >= pins) {
		fail("no INTx route");
		return;
	}
	(void)mmio_rd8(isr); /* start from a clear ISR */
	irq_setup();
	intx_defer = 1;
	/* Fixed delivery to APIC ID 0 (physical), level-triggered, active
	 * high, unmasked. */
	ioapic_write(IOAPIC_REDTBL + 2 * intx_gsi + 1, 0);
	ioapic_write(IOAPIC_REDTBL + 2 * intx_gsi, BLK_INTX_VECTOR | IOAPIC_LEVEL);
	__asm__ volatile("sti");
	int st = request(T_IN, 0, SECTOR, 1, 0);
	if (st == BLK_S_OK) {
		for (u32 i = 0; i < POLL_LIMIT && intx_irqs < 2; i++)
			barrier();
		/* The ISR is read now: no further interrupt may come. */
		u8 last = rtc_seconds();
		u32 ticks = 0;
		for (u64 spins = 0; ticks < INTX_QUIET_SECS && spins < WATCH_SPIN_LIMIT; spins++) {
			u8 s = rtc_seconds();
			if (s != last) {
				last = s;
				ticks++;
			}
		}
	}
	__asm__ volatile("cli");
	ioapic_write(IOAPIC_REDTBL + 2 * intx_gsi, BLK_INTX_VECTOR | IOAPIC_LEVEL | IOAPIC_MASKED);
	if (st != BLK_S_OK) {
		if (st >= 0)
			fail("read status");
		return;
	}
	line("blk intx irqs=");
	put_dec(intx_irqs);
	con_puts(" isr=");
	put_dec((intx_isr_bits & ISR_QUEUE) ? 1 : 0);
	con_puts(" status=");
	put_dec(intx_status_seen);
	con_puts(" after=");
	put_dec((pci_rd16(intx_dev, PCI_STATUS) & PCI_STATUS_INT) ? 1 : 0);
	con_puts("\n");
	line("blk read ok ");
	put_hexbytes(data, 16);
	con_puts("\n");
}
