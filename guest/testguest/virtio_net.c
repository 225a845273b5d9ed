/*
 * net=1: find a virtio-net device by PCI enumeration and ping the host.
 *
 * Like virtio_blk.c, PCI configuration mechanism #1 finds the first modern
 * virtio-net function (vendor 0x1af4, device 0x1041) on bus 0 and its
 * vendor capabilities locate the virtio structures (virtio 1.2 §4.1.4).
 * The driver negotiates VERSION_1 plus MAC/STATUS/MRG_RXBUF when offered,
 * reads the MAC from the device configuration (§5.1.4), fills receiveq1
 * (queue 0) with 2 KiB buffers, and sends raw Ethernet frames on
 * transmitq1 (queue 1), every one preceded by a zeroed 12-byte
 * virtio_net_hdr (§5.1.6).  Everything is polled; no interrupts.
 *
 *   ARP request "who has 10.200.0.1, tell 10.200.0.2" -> the reply gives
 *   the host's MAC; ICMP echo request 10.200.0.2 -> 10.200.0.1 -> the echo
 *   reply with the same id, sequence and payload.
 *
 * Frames the guest doesn't care about (IPv6 neighbour discovery and the
 * like from the host) are skipped.  Each exchange is retried a few times.
 *
 * net=mq: the same over a multi-queue device (§5.1.2, §5.1.6.5).  The
 * driver also negotiates CTRL_VQ and MQ (both required), reads
 * max_virtqueue_pairs (N), sets up receiveq1..N and transmitq1..N (queues
 * 2i and 2i+1) and the control queue (2N), turns every pair on with
 * VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (ack must be OK), checks that an unknown
 * command class and VQ_PAIRS_SET N+1 are answered VIRTIO_NET_ERR, then
 * ARPs and pings through transmitqN, taking replies from whichever receive
 * queue the host's tap steered them to.
 * Output lines (README.md).
 */
#include "testguest.h"

#include "virtio_pci.h"

#define VIRTIO_NET_DEVICE 0x1041 /* 0x1040 + device type 1 */

/* feature bits (§6, §5.1.3) */
#define F_NET_MAC (1ull << 5)
#define F_NET_MRG_RXBUF (1ull << 15)
#define F_NET_STATUS (1ull << 16)
#define F_NET_CTRL_VQ (1ull << 17)
#define F_NET_MQ (1ull << 22)
#define F_VERSION_1 (1ull << 32)

/* struct virtio_net_config (§5.1.4) */
#define NCFG_MAC 0
#define NCFG_STATUS 6
#define NCFG_MAX_PAIRS 8
#define NET_S_LINK_UP 1

/* common configuration: num_queues (§4.1.4.3) */
#define CC_NUMQ 0x12

/* control queue (§5.1.6.5): class, command, data, then the ack byte */
#define CTRL_MQ 4
#define CTRL_MQ_VQ_PAIRS_SET 0
#define CTRL_OK 0
#define CTRL_ERR 1

/* net=mq: the most pairs the guest drives, and the receive buffers of
 * every queue after receiveq1 */
#define MAXPAIRS 16
#define MQ_RXBUFS 4

/* struct virtio_net_hdr with num_buffers (§5.1.6) */
#define NET_HDR 12
#define HDR_NUM_BUFFERS 10

#define QSZ 8
#define RXBUF 2048
#define D_WRITE 2

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

/* The split virtqueue's three parts at the alignments §2.7 requires. */
struct vq {
	struct vdesc desc[QSZ] __attribute__((aligned(16)));
	struct vavail avail __attribute__((aligned(2)));
	struct vused used __attribute__((aligned(4)));
	u16 avail_idx, last_used;
	u64 notify;
	u8 (*buf)[RXBUF]; /* receive queues: buffer i is descriptor i */
	u16 nbuf;
};

/* rxqs[i], txqs[i]: pair i.  net=1 uses pair 0 only. */
static struct vq rxqs[MAXPAIRS], txqs[MAXPAIRS], ctrlq;
static u8 rxbuf[QSZ][RXBUF] __attribute__((aligned(64)));
static u8 mqbuf[MAXPAIRS - 1][MQ_RXBUFS][RXBUF] __attribute__((aligned(64)));
static u8 txbuf[NET_HDR + 1514] __attribute__((aligned(64)));
static u64 common, notify_base, devcfg;
static u32 notify_mult;
/* Receive queues polled (pairs on), and the transmit queue in use. */
static u16 rx_pairs = 1;
static struct vq *txq = &txqs[0];
static u8 ctrl_cmd[16];
static volatile u8 ctrl_ack;

static u8 mac[6], host_mac[6];
static u16 arp_rx; /* the pair the ARP reply came on */
static const u8 guest_ip[4] = {10, 200, 0, 2};
static const u8 host_ip[4] = {10, 200, 0, 1};

#define POLL_LIMIT 20000000
#define TRIES 5
#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define PING_ID 0x4d56 /* "MV" */
#define PING_LEN 32	/* ICMP payload bytes */

static void fail(const char *why)
{
	line("net error ");
	con_puts(why);
	con_puts("\n");
}

static void put_mac(const u8 *m)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			con_puts(":");
		con_puts((const char[]){"0123456789abcdef"[m[i] >> 4], "0123456789abcdef"[m[i] & 15], 0});
	}
}

static void put16be(u8 *p, u16 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

static u16 get16be(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }

static int same(const u8 *a, const u8 *b, int n)
{
	for (int i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static void copy(u8 *d, const u8 *s, int n)
{
	for (int i = 0; i < n; i++)
		d[i] = s[i];
}

/* The Internet checksum (RFC 1071) of n bytes. */
static u16 csum(const u8 *p, int n)
{
	u32 s = 0;
	for (int i = 0; i + 1 < n; i += 2)
		s += (u32)(p[i] << 8 | p[i + 1]);
	if (n & 1)
		s += (u32)p[n - 1] << 8;
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (u16)~s;
}

/* Set up queue q (§4.1.5.1.3). */
static int queue_init(u16 q, struct vq *v)
{
	mmio_wr16(common + CC_QSELECT, q);
	if (mmio_rd16(common + CC_QSIZE) < QSZ) {
		fail("queue too small");
		return -1;
	}
	mmio_wr16(common + CC_QSIZE, QSZ);
	mmio_wr64(common + CC_QDESC, (u64)v->desc);
	mmio_wr64(common + CC_QDRIVER, (u64)&v->avail);
	mmio_wr64(common + CC_QDEVICE, (u64)&v->used);
	v->notify = notify_base + (u64)mmio_rd16(common + CC_QNOTIFYOFF) * notify_mult;
	mmio_wr16(common + CC_QENABLE, 1);
	return 0;
}

static void post(struct vq *v, u16 head)
{
	v->avail.ring[v->avail_idx % QSZ] = head;
	barrier();
	v->avail_idx++;
	v->avail.idx = v->avail_idx;
	barrier();
}

static int net_init(int mq)
{
	int dev = virtio_pci_find(VIRTIO_NET_DEVICE);
	if (dev < 0) {
		fail("no virtio-net device");
		return -1;
	}
	struct virtio_regs r;
	if (virtio_pci_regs((u32)dev, &r) || !r.devcfg) {
		fail("missing virtio capability");
		return -1;
	}
	common = r.common;
	notify_base = r.notify;
	notify_mult = r.notify_mult;
	devcfg = r.devcfg;
	u64 want = F_VERSION_1 | F_NET_MAC | F_NET_STATUS | F_NET_MRG_RXBUF;
	if (mq)
		want |= F_NET_CTRL_VQ | F_NET_MQ;
	u64 offered;
	u64 features = virtio_negotiate(common, want, &offered);
	if (!features || !(features & F_NET_MAC)) {
		fail("feature negotiation");
		return -1;
	}
	if (mq && (features & (F_NET_CTRL_VQ | F_NET_MQ)) != (F_NET_CTRL_VQ | F_NET_MQ)) {
		fail("no multiqueue");
		return -1;
	}
	for (int i = 0; i < 6; i++)
		mac[i] = mmio_rd8(devcfg + NCFG_MAC + (u64)i);
	u16 status = (features & F_NET_STATUS) ? mmio_rd16(devcfg + NCFG_STATUS) : NET_S_LINK_UP;

	u16 pairs = 1;
	if (mq) {
		pairs = mmio_rd16(devcfg + NCFG_MAX_PAIRS);
		u16 numq = mmio_rd16(common + CC_NUMQ);
		line("net mq max_pairs=");
		put_dec(pairs);
		con_puts(" num_queues=");
		put_dec(numq);
		con_puts("\n");
		if (pairs < 1 || pairs > MAXPAIRS || numq < 2 * pairs + 1) {
			fail("bad max_virtqueue_pairs");
			return -1;
		}
	}
	/* Every queue of every pair, and the control queue, is set up
	 * before DRIVER_OK (§5.1.6.5.5: before VQ_PAIRS_SET turns them on). */
	for (u16 p = 0; p < pairs; p++) {
		struct vq *rq = &rxqs[p];
		rq->buf = p ? mqbuf[p - 1] : rxbuf;
		rq->nbuf = p ? MQ_RXBUFS : QSZ;
		if (queue_init((u16)(2 * p), rq) || queue_init((u16)(2 * p + 1), &txqs[p]))
			return -1;
		/* Every receive buffer is one device-writable descriptor. */
		for (u16 i = 0; i < rq->nbuf; i++) {
			rq->desc[i].addr = (u64)rq->buf[i];
			rq->desc[i].len = RXBUF;
			rq->desc[i].flags = D_WRITE;
			rq->desc[i].next = 0;
			post(rq, i);
		}
	}
	if (mq && queue_init((u16)(2 * pairs), &ctrlq))
		return -1;
	mmio_wr8(common + CC_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	for (u16 p = 0; p < pairs; p++)
		mmio_wr16(rxqs[p].notify, (u16)(2 * p));

	line("net device=");
	put_dec((u64)dev);
	con_puts(" mac=");
	put_mac(mac);
	con_puts(" link=");
	put_dec(status & NET_S_LINK_UP);
	con_puts(" mrg=");
	put_dec((features & F_NET_MRG_RXBUF) ? 1 : 0);
	con_puts("\n");
	return pairs;
}

/* Send one control command (class, cmd, n bytes of data) and return its
 * ack, or -1 if the device didn't answer. */
static int ctrl_send(u8 class, u8 cmd, const u8 *data, u32 n)
{
	ctrl_cmd[0] = class;
	ctrl_cmd[1] = cmd;
	for (u32 i = 0; i < n; i++)
		ctrl_cmd[2 + i] = data[i];
	ctrl_ack = 0xee;
	ctrlq.desc[0].addr = (u64)ctrl_cmd;
	ctrlq.desc[0].len = 2 + n;
	ctrlq.desc[0].flags = 1; /* NEXT */
	ctrlq.desc[0].next = 1;
	ctrlq.desc[1].addr = (u64)&ctrl_ack;
	ctrlq.desc[1].len = 1;
	ctrlq.desc[1].flags = D_WRITE;
	ctrlq.desc[1].next = 0;
	post(&ctrlq, 0);
	mmio_wr16(ctrlq.notify, 0);
	for (u32 i = 0; i < POLL_LIMIT; i++) {
		barrier();
		if (*(volatile u16 *)&ctrlq.used.idx != ctrlq.last_used) {
			struct vused_elem e = ctrlq.used.ring[ctrlq.last_used % QSZ];
			ctrlq.last_used++;
			if (e.id != 0 || e.len != 1)
				return -1;
			return ctrl_ack;
		}
	}
	return -1;
}

static void put_ack(int ack)
{
	con_puts(ack == CTRL_OK ? "ok" : ack == CTRL_ERR ? "err" : "none");
}

/* VQ_PAIRS_SET n; prints "net mq pairs_set=<n> ack=<ack>". */
static int pairs_set(u16 n)
{
	u8 d[2] = {(u8)n, (u8)(n >> 8)};
	int ack = ctrl_send(CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, d, 2);
	line("net mq pairs_set=");
	put_dec(n);
	con_puts(" ack=");
	put_ack(ack);
	con_puts("\n");
	return ack;
}

/* Send the frame in txbuf + NET_HDR (len bytes) and wait until the device
 * has consumed it. */
static int send(u32 len)
{
	for (int i = 0; i < NET_HDR; i++)
		txbuf[i] = 0;
	if (len < 60) { /* pad to the Ethernet minimum */
		for (u32 i = len; i < 60; i++)
			txbuf[NET_HDR + i] = 0;
		len = 60;
	}
	txq->desc[0].addr = (u64)txbuf;
	txq->desc[0].len = NET_HDR + len;
	txq->desc[0].flags = 0;
	txq->desc[0].next = 0;
	post(txq, 0);
	mmio_wr16(txq->notify, (u16)(2 * (txq - txqs) + 1));
	for (u32 i = 0; i < POLL_LIMIT; i++) {
		barrier();
		if (*(volatile u16 *)&txq->used.idx != txq->last_used) {
			txq->last_used++;
			return 0;
		}
	}
	fail((mmio_rd8(common + CC_STATUS) & S_NEEDS_RESET) ? "device needs reset" : "transmit timed out");
	return -1;
}

/* The receive queue the last frame came from (a pair number). */
static u16 rx_from;

/* Wait for a received frame on any receive queue that is on; returns its
 * buffer index and sets *len to the frame length (without the header) and
 * rx_from to its queue pair, or -1 on timeout.  The caller gives the
 * buffer back with repost(). */
static int receive(u32 *len)
{
	for (u32 i = 0; i < POLL_LIMIT / rx_pairs; i++) {
		barrier();
		for (u16 p = 0; p < rx_pairs; p++) {
			struct vq *rq = &rxqs[p];
			if (*(volatile u16 *)&rq->used.idx == rq->last_used)
				continue;
			struct vused_elem e = rq->used.ring[rq->last_used % QSZ];
			rq->last_used++;
			if (e.id >= rq->nbuf || e.len < NET_HDR || e.len > RXBUF) {
				fail("bad used entry");
				return -2;
			}
			if (rq->buf[e.id][HDR_NUM_BUFFERS] != 1 || rq->buf[e.id][HDR_NUM_BUFFERS + 1] != 0) {
				fail("bad num_buffers");
				return -2;
			}
			*len = e.len - NET_HDR;
			rx_from = p;
			return (int)e.id;
		}
	}
	return -1;
}

static u8 *rx_frame(int id) { return rxqs[rx_from].buf[id]; }

static void repost(int id)
{
	post(&rxqs[rx_from], (u16)id);
	mmio_wr16(rxqs[rx_from].notify, (u16)(2 * rx_from));
}

/* ARP for the host (RFC 826); 1 when the reply came. */
static int arp(void)
{
	u8 *f = txbuf + NET_HDR;
	for (int i = 0; i < 6; i++)
		f[i] = 0xff;
	copy(f + 6, mac, 6);
	put16be(f + 12, ETH_ARP);
	u8 *a = f + 14;
	put16be(a + 0, 1);	/* htype Ethernet */
	put16be(a + 2, ETH_IP); /* ptype IPv4 */
	a[4] = 6;
	a[5] = 4;
	put16be(a + 6, 1); /* request */
	copy(a + 8, mac, 6);
	copy(a + 14, guest_ip, 4);
	for (int i = 0; i < 6; i++)
		a[18 + i] = 0;
	copy(a + 24, host_ip, 4);
	if (send(14 + 28))
		return -1;
	for (;;) {
		u32 len;
		int id = receive(&len);
		if (id < 0)
			return id;
		const u8 *r = rx_frame(id) + NET_HDR;
		int ok = len >= 42 && get16be(r + 12) == ETH_ARP && get16be(r + 14 + 6) == 2 &&
			 same(r + 14 + 14, host_ip, 4) && same(r + 14 + 24, guest_ip, 4) && same(r, mac, 6);
		if (ok)
			copy(host_mac, r + 14 + 8, 6);
		repost(id);
		if (ok)
			return 1;
	}
}

/* ICMP echo (RFC 792) to the host; 1 when the matching reply came. */
static int ping(u16 seq)
{
	u8 *f = txbuf + NET_HDR;
	copy(f, host_mac, 6);
	copy(f + 6, mac, 6);
	put16be(f + 12, ETH_IP);
	u8 *ip = f + 14;
	u16 total = 20 + 8 + PING_LEN;
	ip[0] = 0x45;
	ip[1] = 0;
	put16be(ip + 2, total);
	put16be(ip + 4, seq); /* identification */
	put16be(ip + 6, 0x4000); /* DF */
	ip[8] = 64;		 /* TTL */
	ip[9] = 1;		 /* ICMP */
	put16be(ip + 10, 0);
	copy(ip + 12, guest_ip, 4);
	copy(ip + 16, host_ip, 4);
	put16be(ip + 10, csum(ip, 20));
	u8 *ic = ip + 20;
	ic[0] = 8; /* echo request */
	ic[1] = 0;
	put16be(ic + 2, 0);
	put16be(ic + 4, PING_ID);
	put16be(ic + 6, seq);
	for (int i = 0; i < PING_LEN; i++)
		ic[8 + i] = (u8)(i * 3 + 1);
	put16be(ic + 2, csum(ic, 8 + PING_LEN));
	if (send(14 + total))
		return -1;
	for (;;) {
		u32 len;
		int id = receive(&len);
		if (id < 0)
			return id;
		const u8 *r = rx_frame(id) + NET_HDR;
		const u8 *rip = r + 14, *ric = r + 34;
		int ok = len >= (u32)(14 + total) && get16be(r + 12) == ETH_IP && same(r, mac, 6) &&
			 rip[9] == 1 && same(rip + 12, host_ip, 4) && same(rip + 16, guest_ip, 4) &&
			 csum(rip, 20) == 0 && ric[0] == 0 && get16be(ric + 4) == PING_ID &&
			 get16be(ric + 6) == seq && csum(ric, 8 + PING_LEN) == 0;
		for (int i = 0; ok && i < PING_LEN; i++)
			ok = ric[8 + i] == (u8)(i * 3 + 1);
		repost(id);
		if (ok)
			return 1;
	}
}

/* ARP for and ping the host on the transmit queue in use: 0 on success. */
static int exchange(void)
{
	int r = -1;
	for (int t = 0; t < TRIES && r == -1; t++)
		r = arp();
	if (r != 1) {
		if (r == -1)
			fail("no arp reply");
		return -1;
	}
	line("net arp ok host=");
	put_mac(host_mac);
	con_puts("\n");
	arp_rx = rx_from;
	r = -1;
	for (int t = 0; t < TRIES && r == -1; t++)
		r = ping((u16)(t + 1));
	if (r != 1) {
		if (r == -1)
			fail("no ping reply");
		return -1;
	}
	line("net ping ok\n");
	return 0;
}

void net_test(void)
{
	if (net_init(0) < 0)
		return;
	exchange();
}

/* net=mq */
void net_mq_test(void)
{
	int pairs = net_init(1);
	if (pairs < 0)
		return;
	if (pairs_set((u16)pairs) != CTRL_OK) {
		fail("VQ_PAIRS_SET refused");
		return;
	}
	rx_pairs = (u16)pairs;
	/* An unknown class, and more pairs than the device has: both
	 * VIRTIO_NET_ERR, and the pairs stay as they were. */
	u8 junk[2] = {1, 2};
	int ack = ctrl_send(0x7f, 0, junk, 2);
	line("net mq bad_class ack=");
	put_ack(ack);
	con_puts("\n");
	pairs_set((u16)(pairs + 1));
	txq = &txqs[pairs - 1];
	if (exchange())
		return;
	line("net mq tx=");
	put_dec((u64)(pairs - 1));
	con_puts(" arp_rx=");
	put_dec(arp_rx);
	con_puts(" ping_rx=");
	put_dec(rx_from);
	con_puts("\n");
}
