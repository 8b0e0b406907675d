/* diskcompare.c - reading two copies of a disk over NBD and comparing them */
#include "diskcompare.h"

#include <string.h>
#include <gio/gio.h>
#include <libnbd.h>

#include "timeouts.h"

#define COMPARE_CHUNK (1u << 20)
/* A block that differs may have a guest write under way to one copy: read again. */
#define COMPARE_RETRIES 5

typedef struct {
    struct nbd_handle *own;  /* the primary's copy */
    struct nbd_handle *peer; /* the secondary's */
} Pair;

static gboolean nbd_failed(GError **err, const char *what)
{
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "%s: %s", what, nbd_get_error());
    return FALSE;
}

static struct nbd_handle *open_uri(const char *uri, GError **err)
{
    struct nbd_handle *h = nbd_create();

    if (!h) {
        nbd_failed(err, uri);
        return NULL;
    }
    /* The URIs are kvm-ftd's own (verify.h): a peer's names the replication key's file. */
    if (nbd_set_uri_allow_local_file(h, true) < 0 || nbd_connect_uri(h, uri) < 0) {
        nbd_failed(err, uri);
        nbd_close(h);
        return NULL;
    }
    return h;
}

/* libnbd's own reads wait forever on a peer that vanished: a deadline of ours. */
static gboolean read_at(struct nbd_handle *h, const char *who, void *buf, gsize len,
                        guint64 offset, GError **err)
{
    gint64 deadline = g_get_monotonic_time() + COMPARE_READ_TIMEOUT_MS * 1000;
    int64_t cookie = nbd_aio_pread(h, buf, len, offset, NBD_NULL_COMPLETION, 0);
    int done;

    if (cookie < 0)
        return nbd_failed(err, who);
    while ((done = nbd_aio_command_completed(h, cookie)) == 0) {
        gint64 left = (deadline - g_get_monotonic_time()) / 1000;

        if (left <= 0) {
            g_set_error(err, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "%s: no answer to a read within %d ms", who, COMPARE_READ_TIMEOUT_MS);
            return FALSE;
        }
        if (nbd_poll(h, (int)MIN(left, 1000)) < 0)
            return nbd_failed(err, who);
    }
    return done > 0 || nbd_failed(err, who);
}

static gboolean read_both(Pair *p, guint8 *a, guint8 *b, gsize len, guint64 offset,
                          GError **err)
{
    return read_at(p->own, "the primary's copy", a, len, offset, err) &&
           read_at(p->peer, "the secondary's copy", b, len, offset, err);
}

static void add_range(DiskCompare *c, guint64 offset, guint64 len)
{
    guint n = c->ranges->len;
    guint64 *last = n ? &g_array_index(c->ranges, guint64, n - 1) : NULL;

    c->differing += len;
    if (last && last[-1] + last[0] == offset) {
        last[0] += len;
        return;
    }
    if (n < 2 * DISK_COMPARE_RANGES_MAX) {
        g_array_append_val(c->ranges, offset);
        g_array_append_val(c->ranges, len);
    }
}

/* The block differed: does it still, read again a few times? */
static gboolean block_differs(Pair *p, guint64 offset, gsize len, gboolean *differs,
                              GError **err)
{
    g_autofree guint8 *a = g_malloc(len);
    g_autofree guint8 *b = g_malloc(len);

    for (int i = 0; i < COMPARE_RETRIES; i++) {
        g_usleep(COMPARE_RETRY_MS * 1000);
        if (!read_both(p, a, b, len, offset, err))
            return FALSE;
        if (memcmp(a, b, len) == 0) {
            *differs = FALSE;
            return TRUE;
        }
    }
    *differs = TRUE;
    return TRUE;
}

static gboolean compare_all(Pair *p, const char *target, DiskCompareProgress progress,
                            gpointer opaque, DiskCompare *c, GError **err)
{
    g_autofree guint8 *a = g_malloc(COMPARE_CHUNK);
    g_autofree guint8 *b = g_malloc(COMPARE_CHUNK);
    int64_t own_size = nbd_get_size(p->own), peer_size = nbd_get_size(p->peer);
    gint64 shown = 0;

    if (own_size < 0 || peer_size < 0)
        return nbd_failed(err, target);
    c->bytes = (guint64)own_size;
    if (peer_size != own_size) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "%s: the copies' sizes differ "
                    "(primary %" G_GINT64_FORMAT ", secondary %" G_GINT64_FORMAT " bytes)",
                    target, own_size, peer_size);
        return FALSE;
    }
    for (c->done = 0; c->done < c->bytes;) {
        gsize len = (gsize)MIN((guint64)COMPARE_CHUNK, c->bytes - c->done);

        if (!read_both(p, a, b, len, c->done, err))
            return FALSE;
        for (gsize at = 0; memcmp(a, b, len) != 0 && at < len; at += DISK_COMPARE_BLOCK) {
            gsize n = MIN(DISK_COMPARE_BLOCK, len - at);
            gboolean differs = FALSE;

            if (memcmp(a + at, b + at, n) == 0)
                continue;
            if (!block_differs(p, c->done + at, n, &differs, err))
                return FALSE;
            if (differs)
                add_range(c, c->done + at, n);
        }
        c->done += len;
        if (progress && (g_get_monotonic_time() - shown > G_USEC_PER_SEC ||
                         c->done == c->bytes)) {
            progress(target, c, opaque);
            shown = g_get_monotonic_time();
        }
    }
    return TRUE;
}

gboolean disk_compare(const char *target, const char *own_uri, const char *peer_uri,
                      DiskCompareProgress progress, gpointer opaque, DiskCompare *c,
                      GError **err)
{
    Pair p = { NULL, NULL };
    gboolean ok;

    memset(c, 0, sizeof *c);
    c->ranges = g_array_new(FALSE, FALSE, sizeof(guint64));
    ok = (p.own = open_uri(own_uri, err)) && (p.peer = open_uri(peer_uri, err)) &&
         compare_all(&p, target, progress, opaque, c, err);
    if (p.own)
        nbd_close(p.own);
    if (p.peer)
        nbd_close(p.peer);
    return ok;
}

void disk_compare_clear(DiskCompare *c)
{
    if (c->ranges)
        g_array_unref(c->ranges);
    memset(c, 0, sizeof *c);
}

void disk_compare_add_json(JsonBuilder *b, const DiskCompare *c)
{
    json_builder_set_member_name(b, "bytes");
    json_builder_add_int_value(b, (gint64)c->bytes);
    json_builder_set_member_name(b, "differing_bytes");
    json_builder_add_int_value(b, (gint64)c->differing);
    json_builder_set_member_name(b, "ranges");
    json_builder_begin_array(b);
    for (guint i = 0; i + 1 < c->ranges->len; i += 2) {
        json_builder_begin_array(b);
        json_builder_add_int_value(b, (gint64)g_array_index(c->ranges, guint64, i));
        json_builder_add_int_value(b, (gint64)g_array_index(c->ranges, guint64, i + 1));
        json_builder_end_array(b);
    }
    json_builder_end_array(b);
}
