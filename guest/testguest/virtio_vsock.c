/*
 * vsock=1: find a virtio-vsock device by PCI enumeration and run a tiny
 * echo server on guest port 1234.
 *
 * Like virtio_blk.c, PCI configuration mechanism #1 finds the first modern
 * virtio-vsock function (vendor 0x1af4, device 0x1053 = 0x1040 + type 19)
 * on bus 0 and its vendor capabilities locate the virtio structures
 * (virtio 1.2 §4.1.4).  The driver negotiates VERSION_1 plus
 * VIRTIO_VSOCK_F_STREAM when offered, reads guest_cid (§5.10.4), sets up
 * the rx (0), tx (1) and event (2) queues with 16 entries each, and polls
 * (no interrupts).
 *
 * Echo server (§5.10.6): a REQUEST for port 1234 gets RESPONSE, one
 * connection at a time; REQUESTs for other ports get RST.  RW payloads are
 * echoed back, within the host's credit (buf_alloc - (tx_cnt - fwd_cnt)),
 * and the guest advertises buf_alloc = 16 KiB with fwd_cnt = bytes echoed.
 * CREDIT_REQUEST gets CREDIT_UPDATE.  When the host shuts the connection
 * down (SHUTDOWN or RST), the guest finishes echoing, answers SHUTDOWN
 * with both flags, waits briefly for the host's RST, prints the byte count
 * and a FNV-1a hash of the echoed bytes, and returns.
 *
 * Output lines (README.md).
 */
#include "testguest.h"

#include "virtio_pci.h"

#define VIRTIO_VSOCK_DEVICE 0x1053 /* 0x1040 + device type 19 */

/* feature bits (§6, §5.10.3) */
#define F_VSOCK_STREAM (1ull << 0)
#define F_VERSION_1 (1ull << 32)

/* struct virtio_vsock_hdr (§5.10.6) */
struct vhdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));

#define HDR_SIZE 44
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_BOTH 3
#define HOST_CID 2
#define ECHO_PORT 1234

/* split virtqueue (§2.7) */
#define QSZ 16
#define D_WRITE 2
#define PKT_MAX 4096
#define BUF_ALLOC 16384

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

struct vq {
	struct vdesc desc[QSZ] __attribute__((aligned(16)));
	struct vavail avail __attribute__((aligned(4)));
	struct vused used __attribute__((aligned(4)));
	u64 notify;
	u16 avail_idx, last_used;
};

static struct vq qs[3] __attribute__((aligned(4096)));
static u8 rxbuf[QSZ][HDR_SIZE + PKT_MAX] __attribute__((aligned(8)));
static u8 txbuf[HDR_SIZE + PKT_MAX] __attribute__((aligned(8)));
static u8 evbuf[QSZ][8] __attribute__((aligned(8)));
static u8 echo[BUF_ALLOC];

static u64 common, devcfg, notify_base;
static u32 notify_mult;
static u64 cid;

/* The one connection: idle, open, shut (our SHUTDOWN is out, waiting for
 * the host's RST), done. */
enum { C_IDLE, C_OPEN, C_SHUT, C_DONE };
static int conn, conn_closing;
static u32 peer_port, echo_len, fwd_cnt, tx_cnt, peer_buf_alloc, peer_fwd_cnt;
static u64 echoed;
static u32 fnv;

/* The guest-initiated connection (vsock_connect=PORT): none, requested,
 * established, done. */
#define CLIENT_PORT 4000
enum { K_NONE, K_REQUESTED, K_OPEN, K_DONE };
static int cli, cli_refused, cli_shut;
static u32 cli_peer, cli_fwd, cli_in_len;
static char cli_in[64];

static void fail(const char *why)
{
	line("vsock error ");
	con_puts(why);
	con_puts("\n");
}

static void post(struct vq *q, u16 id)
{
	q->avail.ring[q->avail_idx % QSZ] = id;
	barrier();
	q->avail_idx++;
	q->avail.idx = q->avail_idx;
	barrier();
}

#define POLL_LIMIT 50000000

/* Send one packet and wait until the device has taken it.  0 on success. */
static int tx(u16 op, u32 dst_port, u32 src_port, u32 flags, const u8 *payload, u32 len, u32 fwd)
{
	struct vq *q = &qs[1];
	struct vhdr *h = (struct vhdr *)txbuf;
	h->src_cid = cid;
	h->dst_cid = HOST_CID;
	h->src_port = src_port;
	h->dst_port = dst_port;
	h->len = len;
	h->type = TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = BUF_ALLOC;
	h->fwd_cnt = fwd;
	for (u32 i = 0; i < len; i++)
		txbuf[HDR_SIZE + i] = payload[i];
	q->desc[0].addr = (u64)txbuf;
	q->desc[0].len = HDR_SIZE + len;
	q->desc[0].flags = 0;
	q->desc[0].next = 0;
	post(q, 0);
	mmio_wr16(q->notify, 1);
	for (u32 i = 0; i < POLL_LIMIT; i++) {
		barrier();
		if (*(volatile u16 *)&q->used.idx != q->last_used) {
			q->last_used++;
			return 0;
		}
	}
	fail(mmio_rd8(common + CC_STATUS) & S_NEEDS_RESET ? "device needs reset" : "tx timed out");
	return -1;
}

/* Echo what the host's credit allows. */
static int flush_echo(void)
{
	u32 off = 0;
	while (off < echo_len) {
		u32 in_flight = tx_cnt - peer_fwd_cnt;
		u32 credit = in_flight >= peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
		u32 n = echo_len - off;
		if (n > PKT_MAX)
			n = PKT_MAX;
		if (n > credit)
			n = credit;
		if (n == 0)
			break;
		for (u32 i = 0; i < n; i++) {
			fnv ^= echo[off + i];
			fnv *= 16777619u;
		}
		fwd_cnt += n; /* consumed by the time the header goes out */
		tx_cnt += n;
		echoed += n;
		if (tx(OP_RW, peer_port, ECHO_PORT, 0, echo + off, n, fwd_cnt))
			return -1;
		off += n;
	}
	/* Keep what the host can't take yet at the front. */
	for (u32 i = off; i < echo_len; i++)
		echo[i - off] = echo[i];
	echo_len -= off;
	return 0;
}

/* Handle one packet from the device.  0 to go on. */
static int rx_packet(const u8 *p, u32 n)
{
	const struct vhdr *h = (const struct vhdr *)p;
	if (n < HDR_SIZE || h->len > n - HDR_SIZE || h->dst_cid != cid) {
		fail("bad rx packet");
		return -1;
	}
	if (cli != K_NONE && cli != K_DONE && h->dst_port == CLIENT_PORT && h->src_port == cli_peer) {
		switch (h->op) {
		case OP_RESPONSE:
			if (cli == K_REQUESTED)
				cli = K_OPEN;
			break;
		case OP_RST:
			cli_refused = cli == K_REQUESTED;
			cli = K_DONE;
			break;
		case OP_SHUTDOWN:
			cli_shut = 1;
			break;
		case OP_RW:
			for (u32 i = 0; i < h->len; i++)
				if (cli_in_len < sizeof(cli_in) - 1)
					cli_in[cli_in_len++] = (char)p[HDR_SIZE + i];
			cli_fwd += h->len;
			break;
		}
		return 0;
	}
	int ours = (conn == C_OPEN || conn == C_SHUT) && h->src_port == peer_port && h->dst_port == ECHO_PORT;
	if (ours) {
		peer_buf_alloc = h->buf_alloc;
		peer_fwd_cnt = h->fwd_cnt;
	}
	switch (h->op) {
	case OP_REQUEST:
		if (h->dst_port != ECHO_PORT || conn != C_IDLE) {
			line("vsock refused port=");
			put_dec(h->dst_port);
			con_puts("\n");
			return tx(OP_RST, h->src_port, h->dst_port, 0, 0, 0, 0);
		}
		conn = C_OPEN;
		peer_port = h->src_port;
		peer_buf_alloc = h->buf_alloc;
		peer_fwd_cnt = h->fwd_cnt;
		fwd_cnt = tx_cnt = echo_len = 0;
		echoed = 0;
		fnv = 2166136261u;
		line("vsock accepted port=");
		put_dec(ECHO_PORT);
		con_puts(" peer=");
		put_dec(peer_port);
		con_puts("\n");
		return tx(OP_RESPONSE, peer_port, ECHO_PORT, 0, 0, 0, fwd_cnt);
	case OP_RW:
		if (!ours)
			return tx(OP_RST, h->src_port, h->dst_port, 0, 0, 0, 0);
		if (echo_len + h->len > BUF_ALLOC) {
			fail("host overran the credit");
			return -1;
		}
		for (u32 i = 0; i < h->len; i++)
			echo[echo_len + i] = p[HDR_SIZE + i];
		echo_len += h->len;
		return 0;
	case OP_CREDIT_REQUEST:
		if (ours)
			return tx(OP_CREDIT_UPDATE, peer_port, ECHO_PORT, 0, 0, 0, fwd_cnt);
		return 0;
	case OP_SHUTDOWN:
		if (ours)
			conn_closing = 1;
		return 0;
	case OP_RST:
		if (ours) {
			conn_closing = 1;
			conn = C_DONE;
		}
		return 0;
	case OP_CREDIT_UPDATE:
	case OP_RESPONSE:
		return 0;
	}
	if (!ours)
		return 0;
	return tx(OP_RST, h->src_port, h->dst_port, 0, 0, 0, 0);
}

/* Find the device and bring it to DRIVER_OK.  Returns the PCI device
 * number, or -1. */
static int vsock_init(void)
{
	int dev = virtio_pci_find(VIRTIO_VSOCK_DEVICE);
	if (dev < 0) {
		fail("no virtio-vsock device");
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
	u64 offered;
	if (!virtio_negotiate(common, F_VERSION_1 | F_VSOCK_STREAM, &offered)) {
		fail("feature negotiation");
		return -1;
	}
	cid = (u64)mmio_rd32(devcfg) | (u64)mmio_rd32(devcfg + 4) << 32;

	/* Queues rx, tx, event (§5.10.2, §4.1.5.1.3). */
	for (u16 n = 0; n < 3; n++) {
		struct vq *q = &qs[n];
		mmio_wr16(common + CC_QSELECT, n);
		if (mmio_rd16(common + CC_QSIZE) < QSZ) {
			fail("queue too small");
			return -1;
		}
		mmio_wr16(common + CC_QSIZE, QSZ);
		mmio_wr64(common + CC_QDESC, (u64)q->desc);
		mmio_wr64(common + CC_QDRIVER, (u64)&q->avail);
		mmio_wr64(common + CC_QDEVICE, (u64)&q->used);
		q->notify = notify_base + (u64)mmio_rd16(common + CC_QNOTIFYOFF) * notify_mult;
		mmio_wr16(common + CC_QENABLE, 1);
	}
	mmio_wr8(common + CC_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);

	/* Every rx and event buffer goes to the device. */
	for (u16 i = 0; i < QSZ; i++) {
		qs[0].desc[i].addr = (u64)rxbuf[i];
		qs[0].desc[i].len = HDR_SIZE + PKT_MAX;
		qs[0].desc[i].flags = D_WRITE;
		post(&qs[0], i);
		qs[2].desc[i].addr = (u64)evbuf[i];
		qs[2].desc[i].len = sizeof(evbuf[i]);
		qs[2].desc[i].flags = D_WRITE;
		post(&qs[2], i);
	}
	mmio_wr16(qs[0].notify, 0);
	mmio_wr16(qs[2].notify, 2);
	return (int)dev;
}

/* Handle every packet the device returned.  -1 on error, else whether
 * there were any. */
static int rx_poll(void)
{
	struct vq *q = &qs[0];
	int any = 0;
	barrier();
	while (*(volatile u16 *)&q->used.idx != q->last_used) {
		barrier();
		struct vused_elem e = q->used.ring[q->last_used % QSZ];
		q->last_used++;
		if (e.id >= QSZ || e.len > HDR_SIZE + PKT_MAX) {
			fail("bad used entry");
			return -1;
		}
		if (rx_packet(rxbuf[e.id], e.len))
			return -1;
		post(q, (u16)e.id);
		any = 1;
	}
	if (any)
		mmio_wr16(q->notify, 0);
	return any;
}

/* Poll until *state reaches at least want.  0 when it did. */
static int wait_state(volatile int *state, int want)
{
	for (u32 i = 0; i < POLL_LIMIT; i++) {
		if (*state >= want)
			return 0;
		if (rx_poll() < 0)
			return -1;
	}
	return *state >= want ? 0 : -1;
}

/* vsock_connect=PORT: connect to host port PORT, send a line, print the
 * line the host answers, close. */
static void vsock_client(u32 port)
{
	static const char hello[] = "hello from the guest\n";
	cli_peer = port;
	cli = K_REQUESTED;
	if (tx(OP_REQUEST, port, CLIENT_PORT, 0, 0, 0, 0))
		return;
	if (wait_state(&cli, K_OPEN)) {
		fail("connect timed out");
		return;
	}
	line("vsock connect port=");
	put_dec(port);
	if (cli_refused) {
		con_puts(" refused\n");
		return;
	}
	con_puts(" ok\n");
	if (tx(OP_RW, port, CLIENT_PORT, 0, (const u8 *)hello, sizeof(hello) - 1, cli_fwd))
		return;
	for (u32 i = 0; i < POLL_LIMIT && cli == K_OPEN && !cli_shut; i++) {
		if (cli_in_len && cli_in[cli_in_len - 1] == '\n')
			break;
		if (rx_poll() < 0)
			return;
	}
	if (cli_in_len && cli_in[cli_in_len - 1] == '\n')
		cli_in_len--;
	cli_in[cli_in_len] = 0;
	line("vsock got ");
	con_puts(cli_in);
	con_puts("\n");
	if (cli == K_OPEN) {
		if (tx(OP_SHUTDOWN, port, CLIENT_PORT, SHUTDOWN_BOTH, 0, 0, cli_fwd))
			return;
		if (wait_state(&cli, K_DONE))
			fail("no RST after SHUTDOWN");
	}
}

void vsock_test(void)
{
	int dev = vsock_init();
	if (dev < 0)
		return;
	line("vsock device=");
	put_dec((u64)dev);
	con_puts(" cid=");
	put_dec(cid);
	con_puts("\n");
	line("vsock listening port=");
	put_dec(ECHO_PORT);
	con_puts("\n");

	struct vq *q = &qs[0];
	u64 idle = 0, linger = 0;
	for (;;) {
		barrier();
		if (*(volatile u16 *)&q->used.idx == q->last_used) {
			if (conn_closing && ++linger > 2000000)
				break; /* no RST from the host: done anyway */
			if (++idle > 20ull * POLL_LIMIT) {
				fail("timed out");
				return;
			}
			if ((idle & 0xffff) == 0 && (mmio_rd8(common + CC_STATUS) & S_NEEDS_RESET)) {
				fail("device needs reset");
				return;
			}
			continue;
		}
		idle = 0;
		while (*(volatile u16 *)&q->used.idx != q->last_used) {
			barrier();
			struct vused_elem e = q->used.ring[q->last_used % QSZ];
			q->last_used++;
			if (e.id >= QSZ || e.len > HDR_SIZE + PKT_MAX) {
				fail("bad used entry");
				return;
			}
			if (rx_packet(rxbuf[e.id], e.len))
				return;
			post(q, (u16)e.id);
		}
		mmio_wr16(q->notify, 0);
		if (conn == C_OPEN && flush_echo())
			return;
		if (conn_closing && conn == C_OPEN && echo_len == 0) {
			/* Everything echoed: close our side too. */
			if (tx(OP_SHUTDOWN, peer_port, ECHO_PORT, SHUTDOWN_BOTH, 0, 0, fwd_cnt))
				return;
			conn = C_SHUT;
		}
		if (conn == C_DONE)
			break;
	}
	line("vsock echo bytes=");
	put_dec(echoed);
	con_puts(" fnv=");
	put_hex(fnv);
	con_puts("\n");

	int plen = 0;
	const char *pv = cmdline_value("vsock_connect", &plen);
	if (pv && plen > 0) {
		u32 port = 0;
		for (int i = 0; i < plen && pv[i] >= '0' && pv[i] <= '9'; i++)
			port = port * 10 + (u32)(pv[i] - '0');
		vsock_client(port);
	}
}
