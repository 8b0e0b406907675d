/* test-nbdprobe.c - the probe of a peer's NBD server, against servers on loopback */
#include <check.h>
#include <string.h>
#include <gio/gio.h>

#include "nbdprobe.h"
#include "run-suite.h"
#include "wait.h"

typedef struct {
    gboolean done;
    GError *error;
    gint64 took_ms;
    gint64 started;
} Outcome;

static void on_done(const GError *error, gpointer opaque)
{
    Outcome *o = opaque;

    o->done = TRUE;
    o->error = error ? g_error_copy(error) : NULL;
    o->took_ms = (g_get_monotonic_time() - o->started) / 1000;
}

static void probe(guint16 port, guint timeout_ms, Outcome *o)
{
    memset(o, 0, sizeof *o);
    o->started = g_get_monotonic_time();
    nbd_probe("127.0.0.1", port, timeout_ms, on_done, o);
    WAIT_FOR(o->done, timeout_ms + 5000);
    ck_assert_msg(o->done, "the probe never called back");
}

/* A listener on a free loopback port; greeting NULL: it accepts and says nothing. */
typedef struct {
    GSocketService *service;
    guint16 port;
    const char *greeting;
    gsize greeting_len;
    guint8 heard[64];
    gsize heard_len;
    GSocketConnection *held;
} Server;

static void on_heard(GObject *src, GAsyncResult *res, gpointer opaque)
{
    Server *s = opaque;

    g_input_stream_read_all_finish(G_INPUT_STREAM(src), res, &s->heard_len, NULL);
}

static gboolean on_incoming(GSocketService *service, GSocketConnection *conn, GObject *source,
                            gpointer opaque)
{
    Server *s = opaque;

    (void)service;
    (void)source;
    g_set_object(&s->held, conn);
    if (!s->greeting)
        return TRUE;
    g_output_stream_write_all(g_io_stream_get_output_stream(G_IO_STREAM(conn)), s->greeting,
                              s->greeting_len, NULL, NULL, NULL);
    g_input_stream_read_all_async(g_io_stream_get_input_stream(G_IO_STREAM(conn)), s->heard,
                                  20, G_PRIORITY_DEFAULT, NULL, on_heard, s);
    return TRUE;
}

static void serve(Server *s, const char *greeting, gsize len)
{
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) any = g_inet_socket_address_new(lo, 0);
    g_autoptr(GSocketAddress) bound = NULL;

    memset(s, 0, sizeof *s);
    s->greeting = greeting;
    s->greeting_len = len;
    s->service = g_socket_service_new();
    ck_assert(g_socket_listener_add_address(G_SOCKET_LISTENER(s->service), any,
                                            G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL,
                                            &bound, NULL));
    s->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    g_signal_connect(s->service, "incoming", G_CALLBACK(on_incoming), s);
    g_socket_service_start(s->service);
}

static void unserve(Server *s)
{
    g_socket_service_stop(s->service);
    g_socket_listener_close(G_SOCKET_LISTENER(s->service));
    g_clear_object(&s->held);
    g_clear_object(&s->service);
}

/* NBDMAGIC, IHAVEOPT, handshake flags (fixed newstyle, no zeroes): what QEMU sends first. */
static const char nbd_greeting[] = "NBDMAGICIHAVEOPT\x00\x03";

START_TEST(nbd_server_greets_and_is_left_cleanly)
{
    Server s;
    Outcome o;
    static const guint8 abort_opt[20] = { 0, 0, 0, 1, 'I', 'H', 'A', 'V', 'E', 'O',
                                          'P', 'T', 0, 0, 0, 2, 0, 0, 0, 0 };

    serve(&s, nbd_greeting, 18);
    probe(s.port, 2000, &o);
    ck_assert_msg(o.error == NULL, "%s", o.error ? o.error->message : "");
    /* It left with NBD_OPT_ABORT, so that QEMU logs no failed negotiation. */
    WAIT_FOR(s.heard_len == sizeof abort_opt, 2000);
    ck_assert_uint_eq(s.heard_len, sizeof abort_opt);
    ck_assert(memcmp(s.heard, abort_opt, sizeof abort_opt) == 0);
    unserve(&s);
}
END_TEST

START_TEST(silent_server_times_out_in_time)
{
    Server s;
    Outcome o;

    serve(&s, NULL, 0);
    probe(s.port, 300, &o);
    ck_assert(g_error_matches(o.error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT));
    ck_assert_msg(strstr(o.error->message, "no NBD greeting"), "%s", o.error->message);
    ck_assert_int_ge(o.took_ms, 250);
    ck_assert_int_lt(o.took_ms, 1500);
    g_error_free(o.error);
    unserve(&s);
}
END_TEST

START_TEST(other_server_is_not_taken_for_nbd)
{
    Server s;
    Outcome o;

    serve(&s, "SSH-2.0-OpenSSH_9.2p1\r\n", 23);
    probe(s.port, 2000, &o);
    ck_assert(g_error_matches(o.error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA));
    ck_assert_msg(strstr(o.error->message, "not an NBD server"), "%s", o.error->message);
    g_error_free(o.error);
    unserve(&s);
}
END_TEST

START_TEST(closed_port_fails_at_once)
{
    Server s;
    Outcome o;
    guint16 port;

    serve(&s, NULL, 0);
    port = s.port;
    unserve(&s);
    probe(port, 5000, &o);
    ck_assert(o.error != NULL);
    ck_assert(!g_error_matches(o.error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT));
    ck_assert_msg(strstr(o.error->message, "127.0.0.1"), "%s", o.error->message);
    ck_assert_int_lt(o.took_ms, 1000);
    g_error_free(o.error);
}
END_TEST

static Suite *nbdprobe_suite(void)
{
    Suite *s = suite_create("nbdprobe");
    TCase *t = tcase_create("probe");

    tcase_add_test(t, nbd_server_greets_and_is_left_cleanly);
    tcase_add_test(t, silent_server_times_out_in_time);
    tcase_add_test(t, other_server_is_not_taken_for_nbd);
    tcase_add_test(t, closed_port_fails_at_once);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return run_suite(nbdprobe_suite());
}
