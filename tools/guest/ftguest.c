/*
 * ftguest: workload helper of the kvm-ft test guest (static; runs in the busybox initramfs).
 *
 *   ftguest counter LOG [PERIOD_MS]  every PERIOD_MS (default 100): print "CNT i" on stdout (the serial
 *                                    console) and append "i\n" to LOG; fsync LOG every 10 ticks.
 *   ftguest seqd PORT                TCP line service: every line received on any connection gets back
 *                                    one line with the next number of a single in-memory sequence
 *                                    (first reply "1"). Deterministic: no time, no randomness.
 *   ftguest ndet PORT                TCP line service, deliberately non-deterministic: every line gets
 *                                    back "<line> <CLOCK_REALTIME ns> <cycle counter>".
 *   ftguest maybe PORT               TCP line service that diverges without differing: every line is
 *                                    echoed back unchanged, or not answered at all, as one bit of the
 *                                    cycle counter says. Two COLO copies decide independently, so one
 *                                    often answers while the other stays silent; their answers, when
 *                                    both give one, are identical.
 *   ftguest writer PORT [DIR]        TCP disk writer on DIR (default /mnt), one connection at a time, one
 *                                    reply line per request line: "write N" (N MiB, 1..48) writes N MiB of
 *                                    fresh pseudo-random data (never the same twice) to a new file
 *                                    DIR/blob-K (K above every blob-K there and every K given before),
 *                                    deleting the oldest blobs first when the disk lacks room, fsyncs the
 *                                    file and DIR, then replies "done N K CRC" (CRC: zlib's crc32 of the
 *                                    blob's bytes, 8 hex digits, so a host can verify the file on any
 *                                    copy of the disk). "free" replies "free BYTES"
 *                                    (statvfs: f_bavail * f_frsize). A bad request or a failure: "err
 *                                    MESSAGE" (a failed write leaves no blob). Replies carry no time and no
 *                                    randomness: both COLO copies give the same ones.
 *                                    "poke N" (1..64) writes N 4 KiB blocks of fresh data with O_DIRECT,
 *                                    each at an offset drawn from the clock, into DIR/scribble (8 MiB,
 *                                    allocated on first use) or, when DIR is a block device, into the
 *                                    device itself (no filesystem, no journal for the writes to wait
 *                                    behind), then fdatasyncs and replies "poked N". A copy of the
 *                                    guest that runs the request again (after a failover) writes other
 *                                    blocks: what the first copy had under way stays only on its disk.
 *   ftguest powerbutton              waits for the ACPI power button (KEY_POWER on /dev/input/event*:
 *                                    `virsh shutdown`), prints "GUEST POWER BUTTON", stops every other
 *                                    process, syncs the disks and powers the guest off.
 *   ftguest busy [N]                 nice 19 CPU loop; prints "W k" after every N iterations.
 *   ftguest dirty MB SLEEP_MS        rewrites one word in every page of an MB-sized buffer per pass,
 *                                    checking the value the previous pass left there; prints
 *                                    "D pass errors" every 100 passes and "DIRTY BAD ..." on a mismatch.
 *   ftguest soak MB                  (x86-64) self-checking loop for COLO secondaries, forever, ~20 ms
 *                                    sleep between passes. Prints "SOAK START mb=MB", then per pass:
 *                                    rewrites a pseudo-random quarter of the 4 KiB pages of an MB
 *                                    buffer and verifies every page against its stored checksum
 *                                    ("SOAK BAD mem pass=P page=I", at most 10 lines a pass); generates
 *                                    machine code into a fresh page, runs it, and re-runs the code of
 *                                    the last 8 passes ("SOAK BAD code pass=P"); a fatal signal prints
 *                                    "SOAK BAD signal=S pass=P". At least 200 ms (CLOCK_MONOTONIC) apart:
 *                                    "SOAK n=PASS bad=TOTAL mono_ms=MONO real_ms=REAL tsc=TSC sum=S"
 *                                    (TOTAL: corrupted pages, each counted once, plus wrong results of
 *                                    generated code); and from a second process, every 50 ms:
 *                                    "SOAK CLK k=K mono_ms=MONO real_ms=REAL tsc=TSC sum=S".  SUM checks
 *                                    the line (tests/integration/test_soak.py: line_sum).
 *
 * Output lines are written with one write(2) each so that concurrent writers to the console do not
 * interleave within a line.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/input.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define LINE_MAX_BYTES 4096          /* longest request line accepted by the line services */
#define OUT_BYTES (64 * 1024)        /* per-connection reply buffer */
#define MAX_CLIENTS 64

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* One line to stdout in a single write. */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    (void)write_all(STDOUT_FILENO, buf, (size_t)n);
}

static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: ftguest counter LOG [PERIOD_MS] | seqd PORT | ndet PORT | maybe PORT | writer PORT [DIR] |"
                    " powerbutton | busy [N] | dirty MB SLEEP_MS | soak MB\n");
    return 2;
}

/* ---- counter ------------------------------------------------------------------------------ */

static void ts_add_ms(struct timespec *t, long ms)
{
    t->tv_sec += ms / 1000;
    t->tv_nsec += (ms % 1000) * 1000000L;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

static int64_t ts_diff_ns(const struct timespec *a, const struct timespec *b)
{
    return ((int64_t)a->tv_sec - b->tv_sec) * 1000000000LL + (a->tv_nsec - b->tv_nsec);
}

static int cmd_counter(int argc, char **argv)
{
    long period = 100;
    if (argc < 3 || argc > 4 || (argc == 4 && parse_long(argv[3], 1, 60000, &period) < 0))
        return usage();
    int fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        say("CNT_ERR open %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    int failing = 0;
    for (uint64_t i = 1;; i++) {
        char line[32];
        int n = snprintf(line, sizeof line, "%" PRIu64 "\n", i);
        say("CNT %" PRIu64 "\n", i);
        if (write_all(fd, line, (size_t)n) < 0 || (i % 10 == 0 && fsync(fd) < 0)) {
            if (!failing)
                say("CNT_ERR %s\n", strerror(errno));
            failing = 1;
        } else {
            failing = 0;
        }
        /* Fixed cadence on absolute deadlines, but never a burst of catch-up ticks: when more than a
         * whole period late (guest paused, clock stepped), start the cadence again from now. */
        ts_add_ms(&next, period);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (ts_diff_ns(&now, &next) > period * 1000000LL)
            next = now;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
    }
}

/* ---- line services (seqd, ndet) ----------------------------------------------------------- */

enum mode { MODE_SEQ, MODE_NDET, MODE_MAYBE };

/*
 * The guest's clock can be as coarse as a jiffy (TCG guests run on
 * refined-jiffies), so two copies often read the same time; the cycle
 * counter follows the host's and never agrees between them.
 */
static unsigned long long cycle_counter(void)
{
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_RAW, &t);
    return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
#endif
}

struct client {
    int fd;
    int eof;
    size_t inlen;
    size_t outlen, outoff;
    char in[LINE_MAX_BYTES];
    char out[OUT_BYTES];
};

static uint64_t sequence; /* the one global sequence of seqd, shared by all connections */

/* Answer every complete line in c->in while the reply buffer has room for the worst case. */
static void consume_lines(struct client *c, enum mode mode)
{
    size_t pos = 0;
    for (;;) {
        char *nl = memchr(c->in + pos, '\n', c->inlen - pos);
        if (!nl || OUT_BYTES - c->outlen < LINE_MAX_BYTES + 32)
            break;
        size_t linelen = (size_t)(nl - (c->in + pos));
        char *o = c->out + c->outlen;
        size_t room = OUT_BYTES - c->outlen;
        int n;
        if (mode == MODE_SEQ) {
            n = snprintf(o, room, "%" PRIu64 "\n", ++sequence);
        } else if (mode == MODE_MAYBE) {
            /* Bit 10: the copies' counters differ by far more than 1024 cycles between
             * requests, so each copy's choice is a coin toss of its own. */
            n = 0;
            if (!((cycle_counter() >> 10) & 1)) {
                memcpy(o, c->in + pos, linelen);
                o[linelen] = '\n';
                n = (int)linelen + 1;
            }
        } else {
            struct timespec t;
            clock_gettime(CLOCK_REALTIME, &t);
            memcpy(o, c->in + pos, linelen);
            n = snprintf(o + linelen, room - linelen, " %lld %llu\n",
                         (long long)t.tv_sec * 1000000000LL + t.tv_nsec, cycle_counter());
            n += (int)linelen;
        }
        c->outlen += (size_t)n;
        pos += linelen + 1;
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->inlen - pos);
        c->inlen -= pos;
    }
}

/* Returns -1 when the connection must be closed. */
static int flush_out(struct client *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        c->outoff += (size_t)w;
    }
    c->outoff = c->outlen = 0;
    return 0;
}

/* Read what is there, answer, send. Returns -1 when the connection must be closed. */
static int service(struct client *c, enum mode mode, int readable)
{
    if (readable && !c->eof && c->inlen < sizeof c->in) {
        ssize_t r = recv(c->fd, c->in + c->inlen, sizeof c->in - c->inlen, MSG_DONTWAIT);
        if (r > 0)
            c->inlen += (size_t)r;
        else if (r == 0)
            c->eof = 1;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
    }
    for (;;) {
        size_t before = c->inlen;
        consume_lines(c, mode);
        if (flush_out(c) < 0)
            return -1;
        if (c->outlen > 0 || c->inlen == before)
            break;
    }
    if (c->inlen == sizeof c->in && !memchr(c->in, '\n', c->inlen))
        return -1; /* line too long */
    if (c->eof && c->outlen == 0)
        return -1; /* peer finished sending and has all its answers; a partial last line is dropped */
    return 0;
}

static int listen_on(long port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
        return -1;
    int one = 1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

static int cmd_serve(int argc, char **argv, enum mode mode)
{
    long port;
    if (argc != 3 || parse_long(argv[2], 1, 65535, &port) < 0)
        return usage();
    signal(SIGPIPE, SIG_IGN);
    int ls = listen_on(port);
    if (ls < 0) {
        say("%s: cannot listen on %ld: %s\n", argv[1], port, strerror(errno));
        return 1;
    }
    static struct client *clients[MAX_CLIENTS];
    int n = 0;
    for (;;) {
        struct pollfd pfd[MAX_CLIENTS + 1];
        for (int i = 0; i < n; i++) {
            struct client *c = clients[i];
            pfd[i].fd = c->fd;
            pfd[i].events = 0;
            pfd[i].revents = 0;
            /* Back-pressure: stop reading while the reply buffer cannot take another line. */
            if (!c->eof && c->inlen < sizeof c->in && OUT_BYTES - c->outlen >= LINE_MAX_BYTES + 32)
                pfd[i].events |= POLLIN;
            if (c->outlen > c->outoff)
                pfd[i].events |= POLLOUT;
        }
        pfd[n].fd = n < MAX_CLIENTS ? ls : -1;
        pfd[n].events = POLLIN;
        pfd[n].revents = 0;
        if (poll(pfd, (nfds_t)n + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            say("%s: poll: %s\n", argv[1], strerror(errno));
            return 1;
        }
        for (int i = n - 1; i >= 0; i--) {
            if (!pfd[i].revents)
                continue;
            struct client *c = clients[i];
            if (service(c, mode, (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0) < 0) {
                close(c->fd);
                free(c);
                clients[i] = clients[--n];
            }
        }
        if (pfd[n].fd >= 0 && (pfd[n].revents & POLLIN)) {
            while (n < MAX_CLIENTS) {
                int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    break;
                struct client *c = calloc(1, sizeof *c);
                if (!c) {
                    close(fd);
                    break;
                }
                int one = 1;
                (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c->fd = fd;
                clients[n++] = c;
            }
        }
    }
}

/* ---- busy, dirty -------------------------------------------------------------------------- */

static int cmd_busy(int argc, char **argv)
{
    long n = 100000000;
    if (argc > 3 || (argc == 3 && parse_long(argv[2], 1, 1L << 40, &n) < 0))
        return usage();
    errno = 0;
    if (nice(19) == -1 && errno != 0)
        say("busy: nice: %s\n", strerror(errno));
    volatile unsigned long x = 0;
    for (unsigned long k = 1;; k++) {
        for (long i = 0; i < n; i++)
            x += (unsigned long)i;
        say("W %lu\n", k);
    }
}

static uint64_t pattern(uint64_t pass, size_t off)
{
    return pass * 0x9E3779B97F4A7C15ULL ^ (uint64_t)off;
}

static int cmd_dirty(int argc, char **argv)
{
    long mb, ms;
    if (argc != 4 || parse_long(argv[2], 1, 65536, &mb) < 0 || parse_long(argv[3], 0, 600000, &ms) < 0)
        return usage();
    const size_t page = 4096, size = (size_t)mb << 20;
    char *buf = malloc(size);
    if (!buf) {
        say("dirty: cannot allocate %ld MiB\n", mb);
        return 1;
    }
    for (size_t off = 0; off < size; off += page)
        *(uint64_t *)(buf + off) = pattern(0, off);
    uint64_t errors = 0;
    for (uint64_t pass = 1;; pass++) {
        for (size_t off = 0; off < size; off += page) {
            uint64_t *w = (uint64_t *)(buf + off);
            if (*w != pattern(pass - 1, off)) {
                if (++errors <= 20)
                    say("DIRTY BAD pass=%" PRIu64 " off=%zu got=%016" PRIx64 " want=%016" PRIx64 "\n",
                        pass, off, *w, pattern(pass - 1, off));
            }
            *w = pattern(pass, off);
        }
        if (pass % 100 == 0)
            say("D %" PRIu64 " errors=%" PRIu64 "\n", pass, errors);
        if (ms > 0) {
            struct timespec t = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
            while (nanosleep(&t, &t) < 0 && errno == EINTR)
                ;
        }
    }
}

/* ---- writer ------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/*
 * Disk writes on demand, for the resynchronisation tests: every "write N" puts N MiB that no copy
 * of the disk has held before into a new file, so that a copy made afterwards has at least N MiB
 * to move, and a test knows how much the guest wrote while it ran alone.
 */
#define MIB (1024 * 1024)
#define WRITER_MAX_MB 48              /* the data disk is 64 MiB: about 51 MiB available to files */
#define WRITER_MARGIN_BYTES (1 * MIB) /* left free beyond each write: extent blocks, the counter log */
#define WRITER_IDLE_S 300             /* a silent connection must not hold the (serial) service forever */
#define WRITER_NONE UINT64_MAX        /* no blob index */

static uint64_t writer_calls;      /* part of every seed: two calls never write the same data */
static uint64_t writer_next;       /* K of the next blob; never reused while the service runs */
static uint64_t writer_buf[MIB / sizeof(uint64_t)];

/* Formats a reply; a long one is cut, but always ends with its newline. */
__attribute__((format(printf, 3, 4))) static void reply_fmt(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    if (n < 0)
        snprintf(buf, size, "err internal\n");
    else if ((size_t)n >= size)
        buf[size - 2] = '\n';
}

/* K of a file named blob-K (K: decimal digits only); -1 for any other name. */
static int blob_index(const char *name, uint64_t *k)
{
    if (strncmp(name, "blob-", 5) != 0 || name[5] < '0' || name[5] > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(name + 5, &end, 10);
    if (errno != 0 || *end != '\0' || v >= WRITER_NONE)
        return -1;
    *k = v;
    return 0;
}

/* The smallest and largest K of the blobs in dir, ignoring `skip`; returns how many, -1 on error.
 * The directory, not memory, is the truth: the guest may have rebooted, the service restarted. */
static long blob_scan(const char *dir, uint64_t skip, uint64_t *oldest, uint64_t *newest)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    long n = 0;
    int err = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            err = errno;
            break;
        }
        uint64_t k;
        if (blob_index(e->d_name, &k) < 0 || k == skip)
            continue;
        if (n == 0 || k < *oldest)
            *oldest = k;
        if (n == 0 || k > *newest)
            *newest = k;
        n++;
    }
    closedir(d);
    if (err) {
        errno = err;
        return -1;
    }
    return n;
}

/* Deletes the oldest blob but `keep`: 0 deleted, 1 none left to delete, -1 error (errno). */
static int blob_delete_oldest(const char *dir, uint64_t keep)
{
    uint64_t oldest = 0, newest = 0;
    long n = blob_scan(dir, keep, &oldest, &newest);
    if (n <= 0)
        return n < 0 ? -1 : 1;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/blob-%" PRIu64, dir, oldest);
    return unlink(path) < 0 && errno != ENOENT ? -1 : 0;
}

static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

/* What a file may still use (statvfs f_bavail: blocks reserved for root stay a safety margin). */
static int free_bytes(const char *dir, uint64_t *out)
{
    struct statvfs s;
    if (statvfs(dir, &s) < 0)
        return -1;
    *out = (uint64_t)s.f_bavail * s.f_frsize;
    return 0;
}

static void fill_random(uint64_t *p, size_t words, uint64_t *state)
{
    uint64_t x = *state;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13; /* xorshift64: x never becomes 0 */
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = x;
    }
    *state = x;
}

/* "write MB": a new blob-K of MB MiB, on disk (file and directory entry) before the reply. */
static void writer_write(const char *dir, long mb, char *reply, size_t size)
{
    const uint64_t need = (uint64_t)mb * MIB + WRITER_MARGIN_BYTES;
    uint64_t avail, oldest = 0, newest = 0;
    int deleted = 0;
    for (;;) {
        if (free_bytes(dir, &avail) < 0) {
            reply_fmt(reply, size, "err statvfs %s: %s\n", dir, strerror(errno));
            return;
        }
        if (avail >= need)
            break;
        int r = blob_delete_oldest(dir, WRITER_NONE);
        if (r != 0) {
            if (r < 0)
                reply_fmt(reply, size, "err deleting an old blob: %s\n", strerror(errno));
            else
                reply_fmt(reply, size, "err no space: %" PRIu64 " bytes free, %" PRIu64 " needed\n",
                          avail, need);
            return;
        }
        deleted = 1;
    }
    /* ext4 hands out freed blocks again only once the deleting transaction is committed. */
    if (deleted && sync_dir(dir) < 0) {
        reply_fmt(reply, size, "err fsync %s: %s\n", dir, strerror(errno));
        return;
    }
    long n = blob_scan(dir, WRITER_NONE, &oldest, &newest);
    if (n < 0) {
        reply_fmt(reply, size, "err reading %s: %s\n", dir, strerror(errno));
        return;
    }
    uint64_t k = writer_next > 0 ? writer_next : 1;
    if (n > 0 && newest >= k)
        k = newest + 1;
    writer_next = k + 1;

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/blob-%" PRIu64, dir, k);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        reply_fmt(reply, size, "err create %s: %s\n", path, strerror(errno));
        return;
    }
    /* Data no earlier call wrote (a counter, as two calls may read the same coarse clock). */
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    uint64_t now_ns = (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
    uint64_t x = splitmix64(++writer_calls ^ splitmix64(now_ns ^ cycle_counter())) | 1;
    const char *what = "write";
    uLong crc = crc32(0L, Z_NULL, 0);
    for (long m = 0; m < mb; m++) {
        fill_random(writer_buf, sizeof writer_buf / sizeof writer_buf[0], &x);
        crc = crc32(crc, (const Bytef *)writer_buf, sizeof writer_buf);
        const char *b = (const char *)writer_buf;
        size_t off = 0;
        while (off < sizeof writer_buf) {
            ssize_t w = write(fd, b + off, sizeof writer_buf - off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                /* The margin fell short (metadata): make room from older blobs and go on. */
                if (errno == ENOSPC && blob_delete_oldest(dir, k) == 0)
                    continue;
                goto fail;
            }
            off += (size_t)w;
        }
    }
    what = "fsync";
    if (fsync(fd) < 0)
        goto fail;
    close(fd);
    fd = -1;
    if (sync_dir(dir) < 0)
        goto fail;
    reply_fmt(reply, size, "done %ld %" PRIu64 " %08lx\n", mb, k, (unsigned long)crc);
    return;

fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    /* No half-written blob left behind: the next write's room and the file list stay right. */
    unlink(path);
    (void)sync_dir(dir);
    reply_fmt(reply, size, "err %s %s: %s\n", what, path, strerror(e));
}

/* ---- poke: small writes where no copy of the guest wrote before -------------------------------- */

#define POKE_FILE_BYTES (8 * MIB)
#define POKE_BLOCK 4096
#define POKE_MAX 64

static uint64_t poke_calls;

/* "poke N": offsets from the clock, so that a copy running the request again picks others. */
static void writer_poke(const char *dir, long n, char *reply, size_t size)
{
    char path[PATH_MAX];
    const char *what = "open";
    void *block = NULL;
    uint64_t region = POKE_FILE_BYTES;
    struct stat st;
    int device = stat(dir, &st) == 0 && S_ISBLK(st.st_mode);
    snprintf(path, sizeof path, device ? "%s" : "%s/scribble", dir);
    int fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC | (device ? 0 : O_CREAT), 0644);
    if (fd < 0)
        goto fail;
    if (device) {
        what = "size";
        if (ioctl(fd, BLKGETSIZE64, &region) < 0)
            goto fail;
    } else {
        what = "allocate";
        int e = posix_fallocate(fd, 0, POKE_FILE_BYTES);
        if (e != 0) {
            errno = e;
            goto fail;
        }
    }
    what = "size";
    if (region < POKE_BLOCK) {
        errno = ENOSPC;
        goto fail;
    }
    what = "allocate a buffer for";
    if (posix_memalign(&block, POKE_BLOCK, POKE_BLOCK) != 0)
        goto fail;
    what = "write";
    for (long i = 0; i < n; i++) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        uint64_t seed = splitmix64(((uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec) ^
                                   cycle_counter() ^ splitmix64(++poke_calls)) | 1;
        off_t at = (off_t)(seed % (region / POKE_BLOCK)) * POKE_BLOCK;
        fill_random(block, POKE_BLOCK / sizeof(uint64_t), &seed);
        ssize_t w = pwrite(fd, block, POKE_BLOCK, at);
        if (w != POKE_BLOCK) {
            if (w >= 0)
                errno = EIO; /* short: O_DIRECT writes whole blocks or fails */
            goto fail;
        }
    }
    what = "fdatasync";
    if (fdatasync(fd) < 0)
        goto fail;
    free(block);
    close(fd);
    reply_fmt(reply, size, "poked %ld\n", n);
    return;

fail:;
    int saved = errno;
    free(block);
    if (fd >= 0)
        close(fd);
    reply_fmt(reply, size, "err %s %s: %s\n", what, path, strerror(saved));
}

/* One request line (without its newline). */
static void writer_request(char *line, size_t len, const char *dir, char *reply, size_t size)
{
    if (memchr(line, '\0', len)) {
        reply_fmt(reply, size, "err NUL byte in request\n");
        return;
    }
    if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
    char *save = NULL;
    char *cmd = strtok_r(line, " \t", &save);
    char *arg = cmd ? strtok_r(NULL, " \t", &save) : NULL;
    char *extra = arg ? strtok_r(NULL, " \t", &save) : NULL;
    long mb;
    uint64_t avail;
    if (!cmd) {
        reply_fmt(reply, size, "err empty request (write N | poke N | free)\n");
    } else if (!strcmp(cmd, "free") && !arg) {
        if (free_bytes(dir, &avail) < 0)
            reply_fmt(reply, size, "err statvfs %s: %s\n", dir, strerror(errno));
        else
            reply_fmt(reply, size, "free %" PRIu64 "\n", avail);
    } else if (!strcmp(cmd, "write")) {
        if (!arg || extra || parse_long(arg, 1, WRITER_MAX_MB, &mb) < 0)
            reply_fmt(reply, size, "err write N: N is MiB, 1..%d\n", WRITER_MAX_MB);
        else
            writer_write(dir, mb, reply, size);
    } else if (!strcmp(cmd, "poke")) {
        if (!arg || extra || parse_long(arg, 1, POKE_MAX, &mb) < 0)
            reply_fmt(reply, size, "err poke N: N is 4 KiB blocks, 1..%d\n", POKE_MAX);
        else
            writer_poke(dir, mb, reply, size);
    } else {
        reply_fmt(reply, size, "err unknown request (write N | poke N | free)\n");
    }
}

/* One connection, request by request, until it closes, fails or idles out. */
static void writer_session(int fd, const char *dir)
{
    char in[LINE_MAX_BYTES];
    size_t len = 0;
    int overlong = 0; /* dropping the rest of a line longer than `in` */
    for (;;) {
        ssize_t r = recv(fd, in + len, sizeof in - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return; /* closed, reset, or silent for WRITER_IDLE_S */
        len += (size_t)r;
        size_t pos = 0;
        char *nl;
        while ((nl = memchr(in + pos, '\n', len - pos)) != NULL) {
            char reply[512];
            *nl = '\0';
            if (overlong) {
                overlong = 0;
                reply_fmt(reply, sizeof reply, "err request line longer than %d bytes\n",
                          LINE_MAX_BYTES - 1);
            } else {
                writer_request(in + pos, (size_t)(nl - (in + pos)), dir, reply, sizeof reply);
            }
            pos = (size_t)(nl - in) + 1;
            if (write_all(fd, reply, strlen(reply)) < 0)
                return;
        }
        memmove(in, in + pos, len - pos);
        len -= pos;
        if (len == sizeof in) {
            overlong = 1;
            len = 0;
        }
    }
}

static int cmd_writer(int argc, char **argv)
{
    long port;
    const char *dir = argc == 4 ? argv[3] : "/mnt";
    if (argc < 3 || argc > 4 || parse_long(argv[2], 1, 65535, &port) < 0 ||
        strlen(dir) > PATH_MAX - 32)
        return usage();
    signal(SIGPIPE, SIG_IGN);
    int ls = listen_on(port);
    if (ls < 0) {
        say("writer: cannot listen on %ld: %s\n", port, strerror(errno));
        return 1;
    }
    /* One connection at a time: writes to one small disk are serial anyway, and the blob indexes
     * and the room made for a write must not race with another connection's write. */
    for (;;) {
        struct pollfd p = { .fd = ls, .events = POLLIN, .revents = 0 };
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            say("writer: poll: %s\n", strerror(errno));
            return 1;
        }
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC); /* blocking, unlike the listening socket */
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
                struct timespec t = { .tv_sec = 0, .tv_nsec = 100 * 1000000L }; /* EMFILE, ENOMEM: no spin */
                nanosleep(&t, NULL);
            }
            continue;
        }
        int one = 1;
        struct timeval idle = { .tv_sec = WRITER_IDLE_S, .tv_usec = 0 };
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle);
        writer_session(fd, dir);
        close(fd);
    }
}

/* ---- soak --------------------------------------------------------------------------------- */

#if defined(__x86_64__)

#define SOAK_PAGE 4096
#define SOAK_WORDS (SOAK_PAGE / sizeof(uint64_t))
#define SOAK_RING 8 /* code pages of the last passes kept alive and re-run */
/* Often enough that a COLO secondary, reset to the primary's state every
 * checkpoint, still prints some status lines of its own between two. */
#define SOAK_STATUS_MS 200
#define SOAK_CLOCK_MS 50

typedef uint64_t (*soak_fn)(uint64_t);

struct soak_code {
    unsigned char *page; /* NULL: empty slot */
    uint64_t pass, k1, k2;
};

static volatile uint64_t soak_pass; /* for the fatal-signal line (one aligned 64-bit store) */

/* 64-bit FNV-1a over words: each step is a bijection of h, so any single changed word changes it. */
static uint64_t soak_hash_step(uint64_t h, uint64_t w)
{
    return (h ^ w) * 0x100000001B3ULL;
}
#define SOAK_HASH_INIT 0xCBF29CE484222325ULL

static uint64_t soak_page_hash(const uint64_t *p)
{
    uint64_t h = SOAK_HASH_INIT;
    for (size_t k = 0; k < SOAK_WORDS; k++)
        h = soak_hash_step(h, p[k]);
    return h;
}

/* Fill page i with content derived from (pass, i); returns its checksum. */
static uint64_t soak_fill(uint64_t *p, uint64_t pass, uint64_t i)
{
    uint64_t x = splitmix64(pass ^ splitmix64(i)) | 1, h = SOAK_HASH_INIT;
    for (size_t k = 0; k < SOAK_WORDS; k++) {
        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        p[k] = x;
        h = soak_hash_step(h, x);
    }
    return h;
}

static size_t put_u64(char *b, uint64_t v)
{
    char t[20];
    size_t n = 0, m = 0;
    do
        t[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n > 0)
        b[m++] = t[--n];
    return m;
}

/* Async-signal-safe: one line, then SA_RESETHAND lets the re-executed fault kill the process. */
static void soak_fatal(int sig)
{
    char b[80];
    size_t n = 0;
    memcpy(b, "SOAK BAD signal=", 16);
    n = 16;
    n += put_u64(b + n, (uint64_t)sig);
    memcpy(b + n, " pass=", 6);
    n += 6;
    n += put_u64(b + n, soak_pass);
    b[n++] = '\n';
    (void)write(STDOUT_FILENO, b, n);
}

/* movabs rax, k1; imul rax, rdi; movabs rdx, k2; add rax, rdx; ret. Rest of the page: int3. */
static unsigned char *soak_make_code(uint64_t k1, uint64_t k2)
{
    unsigned char *p = mmap(NULL, SOAK_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    memset(p, 0xCC, SOAK_PAGE);
    unsigned char *c = p;
    *c++ = 0x48, *c++ = 0xB8;
    memcpy(c, &k1, 8), c += 8;
    *c++ = 0x48, *c++ = 0x0F, *c++ = 0xAF, *c++ = 0xC7;
    *c++ = 0x48, *c++ = 0xBA;
    memcpy(c, &k2, 8), c += 8;
    *c++ = 0x48, *c++ = 0x01, *c++ = 0xD0;
    *c++ = 0xC3;
    __builtin___clear_cache((char *)p, (char *)c);
    if (mprotect(p, SOAK_PAGE, PROT_READ | PROT_EXEC) < 0) {
        munmap(p, SOAK_PAGE);
        return NULL;
    }
    return p;
}

/* Number of inputs for which the code computes something else than x * k1 + k2. */
static unsigned soak_run_code(const struct soak_code *c, uint64_t pass)
{
    const uint64_t in[4] = { 0, 1, pass, splitmix64(pass ^ c->k1) };
    soak_fn f = (soak_fn)(uintptr_t)c->page;
    unsigned bad = 0;
    for (size_t k = 0; k < sizeof in / sizeof in[0]; k++)
        if (f(in[k]) != in[k] * c->k1 + c->k2)
            bad++;
    return bad;
}

static int64_t clock_ms(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/*
 * The guest's clocks on a fixed schedule, in a process of its own: a COLO
 * secondary, reset to the primary's state at every checkpoint, runs the
 * memory passes too slowly to reach many status lines of its own, but
 * wakes up for these.
 */
/*
 * A check value for a status line.  A COLO secondary's console can show a
 * line cut short by a checkpoint and completed by the primary's state
 * (digits of two different lines run together): the host keeps only lines
 * whose sum matches.
 */
static uint64_t line_sum(uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    return splitmix64(a ^ splitmix64(b ^ splitmix64(c ^ splitmix64(d)))) % 1000000007ULL;
}

static void soak_clock(void)
{
    for (uint64_t k = 1;; k++) {
        struct timespec t = { .tv_sec = 0, .tv_nsec = SOAK_CLOCK_MS * 1000000L };
        nanosleep(&t, NULL);
        int64_t mono = clock_ms(CLOCK_MONOTONIC), real = clock_ms(CLOCK_REALTIME);
        uint64_t tsc = __builtin_ia32_rdtsc();

        say("SOAK CLK k=%" PRIu64 " mono_ms=%" PRId64 " real_ms=%" PRId64 " tsc=%" PRIu64
            " sum=%" PRIu64 "\n", k, mono, real, tsc,
            line_sum(k, (uint64_t)mono, (uint64_t)real, tsc));
    }
}

static int cmd_soak(int argc, char **argv)
{
    long mb;
    if (argc != 3 || parse_long(argv[2], 1, 1024, &mb) < 0)
        return usage();
    const size_t npages = (size_t)mb << 20 >> 12;
    uint64_t *buf =
        mmap(NULL, npages * SOAK_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *sums = calloc(npages, sizeof *sums);
    if (buf == MAP_FAILED || !sums) {
        say("soak: cannot allocate %ld MiB: %s\n", mb, strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = soak_fatal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    const int fatal[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP };
    for (size_t k = 0; k < sizeof fatal / sizeof fatal[0]; k++)
        sigaction(fatal[k], &sa, NULL);

    say("SOAK START mb=%ld\n", mb);
    pid_t clock_pid = fork();
    if (clock_pid == 0) {
        soak_clock();
        _exit(1);
    }
    if (clock_pid < 0)
        say("soak: fork: %s\n", strerror(errno));
    for (size_t i = 0; i < npages; i++)
        sums[i] = soak_fill(buf + i * SOAK_WORDS, 0, i);
    struct soak_code ring[SOAK_RING];
    memset(ring, 0, sizeof ring);
    uint64_t bad = 0;
    int64_t last_status = clock_ms(CLOCK_MONOTONIC);
    for (uint64_t pass = 1;; pass++) {
        soak_pass = pass;
        /* 1. memory: rewrite about a quarter of the pages, then verify all of them */
        for (size_t i = 0; i < npages; i++)
            if ((splitmix64(pass * 0xD1B54A32D192ED03ULL ^ i) >> 62) == 0)
                sums[i] = soak_fill(buf + i * SOAK_WORDS, pass, i);
        __asm__ volatile("" ::: "memory"); /* verify what memory holds, not what the compiler knows */
        unsigned shown = 0;
        for (size_t i = 0; i < npages; i++) {
            uint64_t h = soak_page_hash(buf + i * SOAK_WORDS);
            if (h != sums[i]) {
                bad++;
                if (shown++ < 10)
                    say("SOAK BAD mem pass=%" PRIu64 " page=%zu\n", pass, i);
                sums[i] = h; /* count one corruption once, not again on every later pass */
            }
        }
        /* 2. code: a fresh page with per-pass constants, then the code of the last SOAK_RING passes */
        struct soak_code *slot = &ring[pass % SOAK_RING];
        if (slot->page)
            munmap(slot->page, SOAK_PAGE);
        slot->pass = pass;
        slot->k1 = splitmix64(pass ^ 0x5EED0001ULL) | 1;
        slot->k2 = splitmix64(pass ^ 0x5EED0002ULL);
        slot->page = soak_make_code(slot->k1, slot->k2);
        if (!slot->page)
            say("soak: code page: %s\n", strerror(errno));
        unsigned code_bad = 0;
        for (size_t k = 0; k < SOAK_RING; k++) {
            if (!ring[k].page)
                continue;
            unsigned b = soak_run_code(&ring[k], pass);
            if (b) {
                code_bad += b;
                munmap(ring[k].page, SOAK_PAGE); /* count a broken page once */
                ring[k].page = NULL;
            }
        }
        if (code_bad) {
            bad += code_bad;
            say("SOAK BAD code pass=%" PRIu64 "\n", pass);
        }
        /* 3. status, at least SOAK_STATUS_MS apart */
        int64_t mono = clock_ms(CLOCK_MONOTONIC);
        if (mono - last_status >= SOAK_STATUS_MS) {
            last_status = mono;
            int64_t real = clock_ms(CLOCK_REALTIME);
            uint64_t tsc = __builtin_ia32_rdtsc();

            say("SOAK n=%" PRIu64 " bad=%" PRIu64 " mono_ms=%" PRId64 " real_ms=%" PRId64
                " tsc=%" PRIu64 " sum=%" PRIu64 "\n", pass, bad, mono, real, tsc,
                line_sum(pass + bad, (uint64_t)mono, (uint64_t)real, tsc));
        }
        struct timespec t = { .tv_sec = 0, .tv_nsec = 20 * 1000000L };
        while (nanosleep(&t, &t) < 0 && errno == EINTR)
            ;
    }
}

#else

static int cmd_soak(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    say("soak: x86-64 only\n");
    return 1;
}

#endif

/* ---- power button ------------------------------------------------------------------------- */

#define MAX_INPUTS 16

/* The input devices' nodes, once devtmpfs has them (it makes them shortly after the driver). */
static nfds_t open_inputs(struct pollfd *fds)
{
    nfds_t n = 0;

    for (int tries = 0; n == 0 && tries < 50; tries++) {
        for (int i = 0; i < MAX_INPUTS; i++) {
            char path[32];
            int fd;

            snprintf(path, sizeof(path), "/dev/input/event%d", i);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                fds[n].fd = fd;
                fds[n].events = POLLIN;
                n++;
            }
        }
        if (n == 0)
            usleep(100000);
    }
    return n;
}

/*
 * No acpid in the initramfs: the ACPI power button arrives as KEY_POWER on an evdev device.
 * Pressed, the guest stops every other process, syncs and powers off, as a distribution's init
 * would, minus the services.  The stop comes first: the counter appends a line every tick, and a
 * line appended while sync() runs can have its new file size committed to ext4's journal without
 * its data, which the next boot reads as NUL bytes before its BOOT line.
 */
static int cmd_powerbutton(int argc, char **argv)
{
    struct pollfd fds[MAX_INPUTS];
    nfds_t n = open_inputs(fds);

    (void)argc;
    (void)argv;
    if (n == 0) {
        say("powerbutton: no input device\n");
        return 1;
    }
    for (;;) {
        if (poll(fds, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            say("powerbutton: poll: %s\n", strerror(errno));
            return 1;
        }
        for (nfds_t i = 0; i < n; i++) {
            struct input_event ev;

            if (!(fds[i].revents & POLLIN) || read(fds[i].fd, &ev, sizeof(ev)) != sizeof(ev))
                continue;
            if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1) {
                say("GUEST POWER BUTTON\n");
                if (kill(-1, SIGSTOP) < 0)
                    say("powerbutton: stopping the other processes: %s\n", strerror(errno));
                sync();
                reboot(RB_POWER_OFF);
                say("powerbutton: reboot: %s\n", strerror(errno));
                return 1;
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (!strcmp(argv[1], "counter"))
        return cmd_counter(argc, argv);
    if (!strcmp(argv[1], "seqd"))
        return cmd_serve(argc, argv, MODE_SEQ);
    if (!strcmp(argv[1], "ndet"))
        return cmd_serve(argc, argv, MODE_NDET);
    if (!strcmp(argv[1], "maybe"))
        return cmd_serve(argc, argv, MODE_MAYBE);
    if (!strcmp(argv[1], "writer"))
        return cmd_writer(argc, argv);
    if (!strcmp(argv[1], "powerbutton"))
        return cmd_powerbutton(argc, argv);
    if (!strcmp(argv[1], "busy"))
        return cmd_busy(argc, argv);
    if (!strcmp(argv[1], "dirty"))
        return cmd_dirty(argc, argv);
    if (!strcmp(argv[1], "soak"))
        return cmd_soak(argc, argv);
    return usage();
}
