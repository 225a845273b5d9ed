/* Port and MMIO access, PCI configuration access (mechanism #1) and the
 * virtio 1.x modern PCI transport's register layout, shared by the test
 * guest's virtio drivers.  Needs testguest.h (types) first. */
#ifndef VIRTIO_PCI_H
#define VIRTIO_PCI_H

/* ---- port and MMIO access ---- */

static inline void out32(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline void out16(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 in32(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u8 mmio_rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_rd32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_wr8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_wr16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_wr64(u64 a, u64 v)
{
	mmio_wr32(a, (u32)v);
	mmio_wr32(a + 4, (u32)(v >> 32));
}

#define barrier() __asm__ volatile("" : : : "memory")

/* ---- PCI (PCI Local Bus 3.0 §3.2.2.3.2, §6) ---- */

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define PCI_ENABLE 0x80000000u
#define PCI_COMMAND 0x04
#define PCI_CMD_MEM 0x2
#define PCI_CMD_MASTER 0x4
#define PCI_STATUS 0x06
#define PCI_STATUS_CAPS 0x10
#define PCI_STATUS_INT 0x08 /* Interrupt Status: INTx# asserted */
#define PCI_BAR0 0x10
#define PCI_BAR_MEM64 0x4 /* memory BAR type 10b: the next BAR is the upper half */
#define PCI_BAR_PREFETCH 0x8
#define PCI_CAP_PTR 0x34
#define PCI_INT_LINE 0x3c
#define PCI_INT_PIN 0x3d
#define PCI_CAP_VENDOR 0x09
#define BELOW_4G 0x100000000ull

static inline u32 pci_rd32(u32 dev, u32 reg)
{
	out32(PCI_ADDR, PCI_ENABLE | dev << 11 | (reg & 0xfc));
	return in32(PCI_DATA);
}

static inline u8 pci_rd8(u32 dev, u32 reg) { return (u8)(pci_rd32(dev, reg) >> (8 * (reg & 3))); }
static inline u16 pci_rd16(u32 dev, u32 reg) { return (u16)(pci_rd32(dev, reg) >> (8 * (reg & 2))); }

static inline void pci_wr16(u32 dev, u32 reg, u16 v)
{
	out32(PCI_ADDR, PCI_ENABLE | dev << 11 | (reg & 0xfc));
	out16((u16)(PCI_DATA + (reg & 2)), v);
}

static inline void pci_wr32(u32 dev, u32 reg, u32 v)
{
	out32(PCI_ADDR, PCI_ENABLE | dev << 11 | (reg & 0xfc));
	out32(PCI_DATA, v);
}

/* Base address of memory BAR bar, both halves of a 64-bit one.  A BAR
 * above 4 GiB (the VMM puts 64-bit prefetchable BARs there) is mapped
 * first: the 2 MiB page holding its base, which covers the whole of any
 * BAR up to 2 MiB (BARs are naturally aligned).  0 if it can't be. */
static inline u64 pci_bar(u32 dev, u32 bar)
{
	u32 lo = pci_rd32(dev, PCI_BAR0 + 4 * bar);
	u64 a = lo & ~0xfull;
	if ((lo & 0x6) == PCI_BAR_MEM64)
		a |= (u64)pci_rd32(dev, PCI_BAR0 + 4 * (bar + 1)) << 32;
	if (a >= BELOW_4G && map_identity(a, 1) < 0)
		return 0;
	return a;
}

/* The configuration offset of the first capability with the given ID in
 * dev's capability list (PCI 3.0 §6.7), or 0 if it has none. */
static inline u32 pci_find_cap(u32 dev, u8 id)
{
	if (!(pci_rd16(dev, PCI_STATUS) & PCI_STATUS_CAPS))
		return 0;
	u32 cap = pci_rd8(dev, PCI_CAP_PTR) & 0xfc;
	for (int guard = 0; cap && guard < 48; guard++) {
		if (pci_rd8(dev, cap) == id)
			return cap;
		cap = pci_rd8(dev, cap + 1) & 0xfc;
	}
	return 0;
}

/* Size memory BAR bar as an OS does (PCI 3.0 §6.2.5.1): with memory
 * decoding off, write all ones to its register, and to the upper half of
 * a 64-bit BAR, read the size mask back, then put the address back.
 * Returns the size (0 if the BAR is not implemented). */
static inline u64 pci_bar_size(u32 dev, u32 bar)
{
	u32 reg = PCI_BAR0 + 4 * bar;
	u16 cmd = pci_rd16(dev, PCI_COMMAND);
	pci_wr16(dev, PCI_COMMAND, cmd & (u16)~PCI_CMD_MEM);
	u32 lo = pci_rd32(dev, reg), hi = 0;
	int is64 = (lo & 0x6) == PCI_BAR_MEM64;
	if (is64)
		hi = pci_rd32(dev, reg + 4);
	pci_wr32(dev, reg, 0xffffffffu);
	if (is64)
		pci_wr32(dev, reg + 4, 0xffffffffu);
	u64 mask = pci_rd32(dev, reg) & ~0xfull;
	if (is64)
		mask |= (u64)pci_rd32(dev, reg + 4) << 32;
	else if (mask)
		mask |= 0xffffffff00000000ull;
	pci_wr32(dev, reg, lo);
	if (is64)
		pci_wr32(dev, reg + 4, hi);
	pci_wr16(dev, PCI_COMMAND, cmd);
	return mask ? ~mask + 1 : 0;
}

/* ---- virtio (virtio 1.2) ---- */

#define VIRTIO_VENDOR 0x1af4

/* struct virtio_pci_cap cfg_type (§4.1.4) */
#define VCAP_COMMON 1
#define VCAP_NOTIFY 2
#define VCAP_ISR 3
#define VCAP_DEVICE 4

/* ISR status bits (§4.1.4.5): reading the byte clears it */
#define ISR_QUEUE 1
#define ISR_CONFIG 2

/* struct virtio_pci_common_cfg (§4.1.4.3) */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_GFSELECT 0x08
#define CC_GF 0x0c
#define CC_MSIX 0x10 /* config_msix_vector */
#define CC_STATUS 0x14
#define CC_CFGGEN 0x15 /* config_generation */
#define CC_QSELECT 0x16
#define CC_QSIZE 0x18
#define CC_QENABLE 0x1c
#define CC_QNOTIFYOFF 0x1e
#define CC_QDESC 0x20
#define CC_QDRIVER 0x28
#define CC_QDEVICE 0x30

/* device status (§2.1) */
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 64

/* feature bits (§6) */
#define VIRTIO_F_VERSION_1 (1ull << 32)

/* ---- discovery and initialization (§4.1.4, §3.1.1) ---- */

/* The PCI device number of the first function on bus 0 with the virtio
 * vendor ID and the given device ID (0x1040 + virtio device type), or -1. */
static inline int virtio_pci_find(u16 device)
{
	for (u32 dev = 0; dev < 32; dev++) {
		u32 id = pci_rd32(dev, 0);
		if ((id & 0xffff) == VIRTIO_VENDOR && (id >> 16) == device)
			return (int)dev;
	}
	return -1;
}

/* Where a modern virtio function's structures are: the addresses its
 * vendor capabilities point to. */
struct virtio_regs {
	u64 common, notify, isr, devcfg;
	u32 notify_mult;
};

/* Fill r from dev's vendor capabilities (the first of each type) and turn
 * on memory decoding and bus mastering.  0, or -1 when the common or
 * notify structure is missing. */
static inline int virtio_pci_regs(u32 dev, struct virtio_regs *r)
{
	*r = (struct virtio_regs){0};
	if (!(pci_rd16(dev, PCI_STATUS) & PCI_STATUS_CAPS))
		return -1;
	u32 cap = pci_rd8(dev, PCI_CAP_PTR) & 0xfc;
	for (int guard = 0; cap && guard < 48; guard++) {
		if (pci_rd8(dev, cap) == PCI_CAP_VENDOR) {
			u8 type = pci_rd8(dev, cap + 3);
			u64 a = pci_bar(dev, pci_rd8(dev, cap + 4)) + pci_rd32(dev, cap + 8);
			if (type == VCAP_COMMON && !r->common)
				r->common = a;
			else if (type == VCAP_NOTIFY && !r->notify) {
				r->notify = a;
				r->notify_mult = pci_rd32(dev, cap + 16);
			} else if (type == VCAP_ISR && !r->isr)
				r->isr = a;
			else if (type == VCAP_DEVICE && !r->devcfg)
				r->devcfg = a;
		}
		cap = pci_rd8(dev, cap + 1) & 0xfc;
	}
	if (!r->common || !r->notify)
		return -1;
	pci_wr16(dev, PCI_COMMAND, pci_rd16(dev, PCI_COMMAND) | PCI_CMD_MEM | PCI_CMD_MASTER);
	return 0;
}

/* Reset the device and run the initialization sequence up to FEATURES_OK
 * (§3.1.1 steps 1-6) with the offered features in want, which must
 * include VERSION_1.  *offered gets what the device offered.  The
 * negotiated features, or 0 if the device refused them. */
static inline u64 virtio_negotiate(u64 common, u64 want, u64 *offered)
{
	mmio_wr8(common + CC_STATUS, 0);
	for (int i = 0; i < 1000 && mmio_rd8(common + CC_STATUS); i++)
		;
	mmio_wr8(common + CC_STATUS, S_ACK);
	mmio_wr8(common + CC_STATUS, S_ACK | S_DRIVER);
	mmio_wr32(common + CC_DFSELECT, 0);
	u64 dev = mmio_rd32(common + CC_DF);
	mmio_wr32(common + CC_DFSELECT, 1);
	dev |= (u64)mmio_rd32(common + CC_DF) << 32;
	*offered = dev;
	u64 features = dev & want;
	mmio_wr32(common + CC_GFSELECT, 0);
	mmio_wr32(common + CC_GF, (u32)features);
	mmio_wr32(common + CC_GFSELECT, 1);
	mmio_wr32(common + CC_GF, (u32)(features >> 32));
	mmio_wr8(common + CC_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(features & VIRTIO_F_VERSION_1) || !(mmio_rd8(common + CC_STATUS) & S_FEATURES_OK))
		return 0;
	return features;
}

#endif
