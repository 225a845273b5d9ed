/*
 * rng=1: find a virtio entropy device by PCI enumeration and read random
 * bytes from it (virtio 1.2 §5.4).
 *
 * The device is the first modern virtio function with device ID 0x1044
 * (0x1040 + type 4) on bus 0.  The driver negotiates VERSION_1 only (the
 * device has no feature bits of its own, §5.4.3, and no configuration
 * space, §5.4.4), sets up the request queue (0) with 4 entries and posts
 * three requests of device-writable buffers: 16 bytes, 4096 bytes, and a
 * chain of two 16-byte buffers.  No interrupts: it polls the used ring.
 * Each used length must be 1 to the request's size; the bytes must not be
 * mostly zero, and the first two requests must not start alike.
 *
 * Output lines (README.md).
 */
#include "testguest.h"

#include "virtio_pci.h"

#define VIRTIO_RNG_DEVICE 0x1044 /* 0x1040 + device type 4 */

/* split virtqueue (§2.7) */
#define QSZ 4
#define D_NEXT 1
#define D_WRITE 2
#define POLL_LIMIT 50000000

struct rdesc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
} __attribute__((packed));

static struct {
	struct rdesc desc[QSZ] __attribute__((aligned(16)));
	struct {
		u16 flags, idx, ring[QSZ], used_event;
	} __attribute__((packed)) avail __attribute__((aligned(2)));
	struct {
		u16 flags, idx;
		struct {
			u32 id, len;
		} __attribute__((packed)) ring[QSZ];
		u16 avail_event;
	} __attribute__((packed)) used __attribute__((aligned(4)));
} q __attribute__((aligned(4096)));

static u8 small[16], large[4096], pair[2][16];

static void fail(const char *why)
{
	line("rng error ");
	con_puts(why);
	con_puts("\n");
}

static void put_desc(u16 i, void *buf, u32 len, u16 flags, u16 next)
{
	q.desc[i].addr = (u64)buf;
	q.desc[i].len = len;
	q.desc[i].flags = flags;
	q.desc[i].next = next;
}

void rng_test(void)
{
	int dev = virtio_pci_find(VIRTIO_RNG_DEVICE);
	if (dev < 0) {
		fail("no virtio-rng device");
		return;
	}
	struct virtio_regs r;
	if (virtio_pci_regs((u32)dev, &r)) {
		fail("missing virtio capability");
		return;
	}
	u64 offered;
	if (!virtio_negotiate(r.common, VIRTIO_F_VERSION_1, &offered)) {
		fail("feature negotiation");
		return;
	}
	if (offered & 0xffffffull) {
		fail("device feature bits offered");
		return;
	}
	line("rng device=");
	put_dec((u64)dev);
	con_puts("\n");

	/* The request queue (§5.4.2, §4.1.5.1.3). */
	mmio_wr16(r.common + CC_QSELECT, 0);
	if (mmio_rd16(r.common + CC_QSIZE) < QSZ) {
		fail("queue too small");
		return;
	}
	mmio_wr16(r.common + CC_QSIZE, QSZ);
	mmio_wr64(r.common + CC_QDESC, (u64)q.desc);
	mmio_wr64(r.common + CC_QDRIVER, (u64)&q.avail);
	mmio_wr64(r.common + CC_QDEVICE, (u64)&q.used);
	u64 notify = r.notify + (u64)mmio_rd16(r.common + CC_QNOTIFYOFF) * r.notify_mult;
	mmio_wr16(r.common + CC_QENABLE, 1);
	mmio_wr8(r.common + CC_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);

	/* Three requests: heads 0, 1 and 2 (chained to 3). */
	static const u32 size[3] = {sizeof(small), sizeof(large), sizeof(pair)};
	put_desc(0, small, sizeof(small), D_WRITE, 0);
	put_desc(1, large, sizeof(large), D_WRITE, 0);
	put_desc(2, pair[0], sizeof(pair[0]), D_WRITE | D_NEXT, 3);
	put_desc(3, pair[1], sizeof(pair[1]), D_WRITE, 0);
	for (u16 h = 0; h < 3; h++)
		q.avail.ring[h] = h;
	barrier();
	q.avail.idx = 3;
	barrier();
	mmio_wr16(notify, 0);

	u32 got[3] = {0, 0, 0};
	u64 total = 0;
	for (u16 done = 0; done < 3;) {
		u32 i = 0;
		while (*(volatile u16 *)&q.used.idx == done) {
			if (++i > POLL_LIMIT) {
				fail(mmio_rd8(r.common + CC_STATUS) & S_NEEDS_RESET ? "device needs reset" : "timed out");
				return;
			}
		}
		barrier();
		u32 id = q.used.ring[done % QSZ].id, len = q.used.ring[done % QSZ].len;
		done++;
		if (id > 2 || got[id] || len == 0 || len > size[id]) {
			fail("bad used entry");
			return;
		}
		got[id] = len;
		total += len;
	}

	/* About one byte in 256 is zero; random bytes are never mostly zero. */
	u32 zeros = 0;
	for (u32 i = 0; i < got[0]; i++)
		zeros += small[i] == 0;
	for (u32 i = 0; i < got[1]; i++)
		zeros += large[i] == 0;
	for (u32 i = 0; i < got[2]; i++)
		zeros += pair[i / 16][i % 16] == 0;
	u32 same = 0;
	for (u32 i = 0; i < got[0] && i < got[1]; i++)
		same += small[i] == large[i];
	line("rng bytes=");
	put_dec(total);
	con_puts(" requests=3\n");
	if (zeros > total / 2 || (got[0] == sizeof(small) && same == got[0])) {
		fail("bytes not random");
		return;
	}
	line("rng ok\n");
}
