/*
 * Declarations shared between main.c and the optional test modules
 * (virtio_*.c, xsave.c, snap.c): console output, command-line lookup and
 * the test entry points.
 */
#ifndef TESTGUEST_H
#define TESTGUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

/* Start an output line: "testguest: " + s (main.c). */
void line(const char *s);
void con_puts(const char *s);
void put_hex(u64 v);
void put_dec(u64 v);
/* The next byte from COM1, or -1 if none has arrived (main.c). */
int con_trygetc(void);
/* Value of "key=value" on the command line (last wins), or 0. */
const char *cmdline_value(const char *key, int *len);
int value_is(const char *v, int len, const char *want);

/* Identity-map [pa, pa+len) above the boot mapping of the first 4 GiB,
 * e.g. a 64-bit BAR; 0 or -1 (main.c). */
int map_identity(u64 pa, u64 len);
/* The ACPI table with signature sig ("MCFG"), or 0 (main.c). */
u64 acpi_find_table(const char *sig);

/* virtio_blk.c: the blk=1 test, blk=watch (a drive swapped by the
 * host), and blk=intx (INTx instead of MSI-X). */
void blk_test(void);
void blk_watch(void);
void blk_intx_test(void);

/* virtio_blk.c, for snap=1: bring up the first virtio-blk device (0, or
 * -1 after a "blk error" line), and read and FNV-1a-hash sectors 0..n-1,
 * counting completion interrupts (0, or -1 after a "blk error" line). */
int blk_open(void);
int blk_read_hash(u32 n, u32 *hash, u32 *irqs);

/* virtio_net.c: the net=1 test, and net=mq (multi-queue, control
 * queue). */
void net_test(void);
void net_mq_test(void);

/* virtio_vsock.c: the vsock=1 test. */
void vsock_test(void);

/* virtio_rng.c: the rng=1 test. */
void rng_test(void);

/* xsave.c: the xsave=1 test (XSAVE, XRSTOR, XGETBV in ring 0). */
void xsave_test(void);

/* virtio_blk.c: switch to the IDT with the interrupt tests' vectors (0x40
 * blk queue, 0x41 blk config, 0x42 blk INTx, 0x43 COM1, each counting
 * into the variable below and EOIing) and software-enable the local APIC;
 * write an I/O APIC register. */
void irq_setup(void);
extern volatile u32 serial_irqs;
#define SERIAL_VECTOR 0x43
void ioapic_write(u32 reg, u32 v);
/* I/O APIC (82093AA) redirection entries: entry n is registers 0x10 + 2n
 * (low: vector, trigger, mask) and 0x11 + 2n (high: destination). */
#define IOAPIC_REDTBL 0x10
#define IOAPIC_LEVEL (1u << 15)
#define IOAPIC_MASKED (1u << 16)

/* The end of the highest RAM in the memory map below 4 GiB (main.c). */
extern u64 ram_top_low;

/* snap.c: the snap=1 test (state across a snapshot and restore). */
void snap_test(void);

#endif
