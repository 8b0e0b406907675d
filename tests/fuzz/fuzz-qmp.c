/*
 * fuzz-qmp.c - libFuzzer harness of the QMP client's line reader
 *
 * Input: the bytes QEMU sends on its QMP socket, from the greeting on.  A
 * thread of the harness plays QEMU: it accepts on a unix socket of this
 * process's temporary directory, writes the input, and shuts its side for
 * writing (EOF once the input is read).  qmp_connect() reads the greeting
 * and sends qmp_capabilities (id 1): a line such as {"return": {}} answers
 * it.  After that the client is attached to the main loop: each event
 * (up to four) is answered with one more command (ids 2, 3, ...:
 * query-status, an out-of-band yank, a command with the event's name as an
 * argument), whose replies come from the rest of the input.
 */
#include "fuzz-common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "qmp.h"

#define CALL_TIMEOUT_MS 5000
#define MAX_CALLS 4
#define HANG_LIMIT_US (10 * G_USEC_PER_SEC)

enum { QEMU_IDLE, QEMU_GO, QEMU_RELEASE };

/* The fake QEMU: one connection per input. */
static struct {
    GMutex lock;
    GCond cond;
    int state;
    const guint8 *data;
    gsize size;
    int listen_fd;
    char *path;
} qemu;

static gpointer qemu_main(gpointer unused)
{
    (void)unused;
    for (;;) {
        int fd = accept4(qemu.listen_fd, NULL, NULL, SOCK_CLOEXEC);
        const guint8 *p;
        gsize left;

        if (fd < 0) {
            if (errno == EINTR)
                continue;
            perror("fuzz-qmp: accept");
            abort();
        }
        g_mutex_lock(&qemu.lock);
        while (qemu.state == QEMU_IDLE)
            g_cond_wait(&qemu.cond, &qemu.lock);
        p = qemu.data;
        left = qemu.size;
        g_mutex_unlock(&qemu.lock);

        /* Blocks while the client does not read; fails once it hung up. */
        while (left > 0) {
            ssize_t n = send(fd, p, left, MSG_NOSIGNAL);

            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            p += n;
            left -= (gsize)n;
        }
        shutdown(fd, SHUT_WR);

        g_mutex_lock(&qemu.lock);
        while (qemu.state != QEMU_RELEASE)
            g_cond_wait(&qemu.cond, &qemu.lock);
        close(fd);
        qemu.state = QEMU_IDLE;
        g_cond_broadcast(&qemu.cond);
        g_mutex_unlock(&qemu.lock);
    }
    return NULL;
}

static void qemu_start(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    if (qemu.path)
        return;
    qemu.path = g_build_filename(fuzz_tmpdir(), "qmp.sock", NULL);
    g_assert(strlen(qemu.path) < sizeof(sa.sun_path));
    strcpy(sa.sun_path, qemu.path);
    qemu.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (qemu.listen_fd < 0 || bind(qemu.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(qemu.listen_fd, 4) < 0) {
        perror("fuzz-qmp: listen");
        abort();
    }
    g_thread_unref(g_thread_new("fake-qemu", qemu_main, NULL));
}

typedef struct {
    Qmp *q;
    gboolean closed;
    guint calls;
} State;

static void on_event(Qmp *q, const char *event, JsonObject *data, gint64 timestamp_us,
                     gpointer opaque)
{
    State *st = opaque;
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonNode) ret = NULL;

    g_assert(event);
    g_assert(timestamp_us >= -1);
    if (data)
        (void)json_object_get_size(data);
    if (st->calls >= MAX_CALLS)
        return;
    switch (st->calls++ % 3) {
    case 0:
        ret = qmp_call(q, "query-status", NULL, CALL_TIMEOUT_MS, &e);
        break;
    case 1: {
        g_autoptr(JsonObject) args = json_object_new();

        json_object_set_array_member(args, "instances", json_array_new());
        ret = qmp_call_oob(q, "yank", args, CALL_TIMEOUT_MS, &e);
        break;
    }
    default: {
        g_autoptr(JsonObject) args = json_object_new();

        json_object_set_string_member(args, "command-line", event);
        json_object_set_int_member(args, "cpu-index", 0);
        ret = qmp_call(q, "human-monitor-command", args, CALL_TIMEOUT_MS, &e);
        break;
    }
    }
    /* qmp.h: the "return" value, or NULL with err set. */
    g_assert((ret != NULL) != (e != NULL));
    if (e) {
        g_assert(e->domain == QMP_ERROR);
        (void)qmp_error_is_class(e, "GenericError");
    }
}

static void on_closed(Qmp *q, const GError *reason, gpointer opaque)
{
    State *st = opaque;

    (void)q;
    g_assert(reason && reason->domain == QMP_ERROR);
    g_assert(!st->closed);
    st->closed = TRUE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GError) e = NULL;
    State st = { 0 };
    gint64 start;

    fuzz_init();
    qemu_start();

    g_mutex_lock(&qemu.lock);
    qemu.data = data;
    qemu.size = size;
    qemu.state = QEMU_GO;
    g_cond_broadcast(&qemu.cond);
    g_mutex_unlock(&qemu.lock);

    st.q = qmp_connect(qemu.path, CALL_TIMEOUT_MS, &e);
    g_assert((st.q != NULL) != (e != NULL));
    if (st.q) {
        g_assert(qmp_version(st.q) != NULL);
        qmp_set_handlers(st.q, on_event, on_closed, &st);
        qmp_attach(st.q, NULL);
        /* Until the client has read everything up to QEMU's EOF. */
        start = g_get_monotonic_time();
        while (!st.closed) {
            g_main_context_iteration(NULL, TRUE);
            if (g_get_monotonic_time() - start > HANG_LIMIT_US) {
                fprintf(stderr, "fuzz-qmp: no end of the connection after 10 s\n");
                abort();
            }
        }
        g_assert(!qmp_is_open(st.q));
        qmp_free(st.q);
        fuzz_drain_context(NULL);
    } else {
        g_assert(e->domain == QMP_ERROR);
    }

    g_mutex_lock(&qemu.lock);
    qemu.state = QEMU_RELEASE;
    g_cond_broadcast(&qemu.cond);
    start = g_get_monotonic_time();
    while (qemu.state != QEMU_IDLE) {
        if (!g_cond_wait_until(&qemu.cond, &qemu.lock, start + HANG_LIMIT_US)) {
            fprintf(stderr, "fuzz-qmp: the fake QEMU never got the connection\n");
            abort();
        }
    }
    g_mutex_unlock(&qemu.lock);
    return 0;
}
