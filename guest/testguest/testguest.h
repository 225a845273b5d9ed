/*
 * Declarations shared between main.c and the optional test modules
 * (virtio_blk.c): console output and command-line lookup.
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

#endif
