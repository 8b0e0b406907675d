/* nbdprobe.c - whether the peer's NBD server answers, asked without QEMU */
#include "nbdprobe.h"

#include <string.h>
#include <gio/gio.h>

/* NBD's newstyle negotiation (the NBD protocol document): the server speaks first. */
#define NBD_MAGIC "NBDMAGIC"
#define NBD_OPTS_MAGIC "IHAVEOPT"
#define NBD_GREETING_BYTES 18 /* NBDMAGIC, IHAVEOPT, 16-bit handshake flags */
#define NBD_FLAG_C_FIXED_NEWSTYLE 1u
#define NBD_OPT_ABORT 2u

typedef struct {
    GSocketClient *client;
    GSocketConnection *conn;
    GCancellable *cancel;
    guint timer;
    char *where;
    guint8 greeting[NBD_GREETING_BYTES];
    guint8 goodbye[4 + 8 + 4 + 4];
    NbdProbeDone done;
    gpointer opaque;
} Probe;

static void finish(Probe *p, GError *error)
{
    if (p->timer)
        g_source_remove(p->timer);
    if (p->conn)
        g_io_stream_close(G_IO_STREAM(p->conn), NULL, NULL);
    p->done(error, p->opaque);
    g_clear_error(&error);
    g_clear_object(&p->conn);
    g_clear_object(&p->client);
    g_clear_object(&p->cancel);
    g_free(p->where);
    g_free(p);
}

/* Whatever step it is in: the cancelled step's callback finishes the probe. */
static gboolean timed_out(gpointer opaque)
{
    Probe *p = opaque;

    p->timer = 0;
    g_cancellable_cancel(p->cancel);
    return G_SOURCE_REMOVE;
}

static GError *failed(Probe *p, const char *step, GError *cause)
{
    GError *e = g_error_new(G_IO_ERROR,
                            g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_CANCELLED)
                                ? G_IO_ERROR_TIMED_OUT
                                : cause->code,
                            "%s: %s", p->where,
                            g_error_matches(cause, G_IO_ERROR, G_IO_ERROR_CANCELLED)
                                ? step
                                : cause->message);
    g_error_free(cause);
    return e;
}

static void on_goodbye(GObject *src, GAsyncResult *res, gpointer opaque)
{
    Probe *p = opaque;
    GError *err = NULL;

    /* The greeting proved the server; the goodbye only spares its log. */
    if (!g_output_stream_write_all_finish(G_OUTPUT_STREAM(src), res, NULL, &err))
        g_clear_error(&err);
    finish(p, NULL);
}

static void on_greeting(GObject *src, GAsyncResult *res, gpointer opaque)
{
    Probe *p = opaque;
    GError *err = NULL;
    gsize got = 0;

    if (!g_input_stream_read_all_finish(G_INPUT_STREAM(src), res, &got, &err)) {
        finish(p, failed(p, "no NBD greeting in time", err));
        return;
    }
    if (got < NBD_GREETING_BYTES || memcmp(p->greeting, NBD_MAGIC, 8) != 0 ||
        memcmp(p->greeting + 8, NBD_OPTS_MAGIC, 8) != 0) {
        finish(p, g_error_new(G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                              "%s: %s", p->where, got < NBD_GREETING_BYTES
                                                      ? "closed before its NBD greeting"
                                                      : "not an NBD server"));
        return;
    }
    /* Client flags, then the option that ends the negotiation. */
    guint32 flags = g_htonl(NBD_FLAG_C_FIXED_NEWSTYLE);
    guint32 opt = g_htonl(NBD_OPT_ABORT);
    guint32 len = 0;

    memcpy(p->goodbye, &flags, 4);
    memcpy(p->goodbye + 4, NBD_OPTS_MAGIC, 8);
    memcpy(p->goodbye + 12, &opt, 4);
    memcpy(p->goodbye + 16, &len, 4);
    g_output_stream_write_all_async(g_io_stream_get_output_stream(G_IO_STREAM(p->conn)),
                                    p->goodbye, sizeof p->goodbye, G_PRIORITY_DEFAULT,
                                    p->cancel, on_goodbye, p);
}

static void on_connected(GObject *src, GAsyncResult *res, gpointer opaque)
{
    Probe *p = opaque;
    GError *err = NULL;

    p->conn = g_socket_client_connect_to_host_finish(G_SOCKET_CLIENT(src), res, &err);
    if (!p->conn) {
        finish(p, failed(p, "no connection in time", err));
        return;
    }
    g_input_stream_read_all_async(g_io_stream_get_input_stream(G_IO_STREAM(p->conn)),
                                  p->greeting, sizeof p->greeting, G_PRIORITY_DEFAULT,
                                  p->cancel, on_greeting, p);
}

void nbd_probe(const char *host, guint16 port, guint timeout_ms, NbdProbeDone done,
               gpointer opaque)
{
    Probe *p = g_new0(Probe, 1);

    p->done = done;
    p->opaque = opaque;
    p->where = g_strdup_printf("NBD server %s:%u", host, port);
    p->cancel = g_cancellable_new();
    p->client = g_socket_client_new();
    /* Never a proxy: the peer is on the dedicated link. */
    g_socket_client_set_enable_proxy(p->client, FALSE);
    p->timer = g_timeout_add(timeout_ms, timed_out, p);
    g_socket_client_connect_to_host_async(p->client, host, port, p->cancel, on_connected, p);
}
