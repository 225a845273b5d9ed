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

/* virtio_blk.c: the blk=1 test, and blk=watch (a drive swapped by the
 * host). */
void blk_test(void);
void blk_watch(void);

/* virtio_net.c: the net=1 test, and net=mq (multi-queue, control
 * queue). */
void net_test(void);
void net_mq_test(void);

/* virtio_vsock.c: the vsock=1 test. */
void vsock_test(void);

#endif
