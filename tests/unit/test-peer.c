/* test-peer.c - peer protocol: framing, handshake, sessions over real sockets */
#include "log.h"
#include "peer.h"
#include "wait.h"
#include "run-suite.h"

#include <check.h>
#include <gio/gio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char psk_text[] = "0123456789abcdef-test-psk-0123456789";
static const char bad_psk_text[] = "0123456789abcdef-WRONG-psk-012345678";

static GBytes *key_good(void)
{
    return g_bytes_new_static(psk_text, strlen(psk_text));
}

static GBytes *key_bad(void)
{
    return g_bytes_new_static(bad_psk_text, strlen(bad_psk_text));
}

static JsonObject *sample_payload(void)
{
    JsonObject *o = json_object_new();
    JsonObject *inner = json_object_new();

    json_object_set_int_member(inner, "x", 42);
    json_object_set_string_member(o, "s", "h\xc3\xa9llo \"quoted\" [not nested]");
    json_object_set_object_member(o, "inner", inner);
    json_object_set_boolean_member(o, "b", TRUE);
    return o;
}

static GBytes *encode_ok(PeerMsgType type, guint64 seq, JsonObject *o, GBytes *key)
{
    g_autoptr(GError) e = NULL;
    GBytes *b = peer_frame_encode(type, seq, o, key, &e);

    ck_assert_msg(b != NULL, "encode failed: %s", e ? e->message : "?");
    return b;
}

/* A frame with arbitrary payload bytes and a correct MAC: tests what comes after the MAC. */
static GBytes *raw_frame(guint16 version, guint16 type, guint64 seq, const void *payload,
                         gsize plen, GBytes *key)
{
    guint8 *buf = g_malloc(20 + plen + 32);
    gsize klen, dlen = 32;
    const guint8 *k = g_bytes_get_data(key, &klen);
    GHmac *h;

    memcpy(buf, "KFT1", 4);
    buf[4] = version >> 8;
    buf[5] = version & 0xff;
    buf[6] = type >> 8;
    buf[7] = type & 0xff;
    for (int i = 0; i < 8; i++)
        buf[8 + i] = (guint8)(seq >> (56 - 8 * i));
    buf[16] = (guint8)(plen >> 24);
    buf[17] = (guint8)(plen >> 16);
    buf[18] = (guint8)(plen >> 8);
    buf[19] = (guint8)plen;
    memcpy(buf + 20, payload, plen);
    h = g_hmac_new(G_CHECKSUM_SHA256, k, klen);
    g_hmac_update(h, buf, (gssize)(20 + plen));
    g_hmac_get_digest(h, buf + 20 + plen, &dlen);
    g_hmac_unref(h);
    return g_bytes_new_take(buf, 20 + plen + 32);
}

static PeerDecodeStatus decode(GBytes *b, GBytes *key, guint64 last, PeerFrame *f,
                               gsize *used, GError **e)
{
    gsize len;
    const guint8 *d = g_bytes_get_data(b, &len);

    return peer_frame_decode(d, len, key, last, f, used, e);
}

static void assert_decode_error(GBytes *b, GBytes *key, guint64 last, int code,
                                const char *substr)
{
    PeerFrame f;
    gsize used = 99;
    g_autoptr(GError) e = NULL;

    ck_assert_int_eq(decode(b, key, last, &f, &used, &e), PEER_DECODE_ERROR);
    ck_assert_ptr_nonnull(e);
    ck_assert_msg(g_error_matches(e, PEER_ERROR, code), "want code %d, got %d (%s)", code,
                  e->code, e->message);
    if (substr)
        ck_assert_msg(strstr(e->message, substr), "'%s' not in '%s'", substr, e->message);
    ck_assert_ptr_null(f.payload);
    ck_assert_uint_eq(used, 0);
}

/* ---- framing --------------------------------------------------------------- */

START_TEST(test_frame_roundtrip)
{
    g_autoptr(GBytes) key = key_good();
    g_autoptr(JsonObject) o = sample_payload();
    g_autoptr(GBytes) b1 = encode_ok(PEER_MSG_REQUEST, 7, o, key);
    g_autoptr(GBytes) b2 = encode_ok(PEER_MSG_HEARTBEAT, 8, o, key);
    g_autoptr(GByteArray) both = g_byte_array_new();
    gsize len1;
    const guint8 *d1 = g_bytes_get_data(b1, &len1);
    PeerFrame f;
    gsize used;
    g_autoptr(GError) e = NULL;

    ck_assert_mem_eq(d1, "KFT1\x00\x01\x00\x03", 8);
    ck_assert_uint_eq(d1[15], 7);
    ck_assert_uint_eq(len1, 20 + ((guint)d1[18] << 8 | d1[19]) + 32);

    g_byte_array_append(both, d1, len1);
    g_byte_array_append(both, g_bytes_get_data(b2, NULL), g_bytes_get_size(b2));

    ck_assert_int_eq(peer_frame_decode(both->data, both->len, key, 6, &f, &used, &e),
                     PEER_DECODE_OK);
    ck_assert_uint_eq(used, len1);
    ck_assert_int_eq(f.type, PEER_MSG_REQUEST);
    ck_assert_uint_eq(f.seq, 7);
    ck_assert_str_eq(json_object_get_string_member(f.payload, "s"),
                     "h\xc3\xa9llo \"quoted\" [not nested]");
    ck_assert_int_eq(json_object_get_int_member(
                         json_object_get_object_member(f.payload, "inner"), "x"), 42);
    ck_assert(json_object_get_boolean_member(f.payload, "b"));
    peer_frame_clear(&f);

    ck_assert_int_eq(peer_frame_decode(both->data + used, both->len - used, key, 7, &f,
                                       &used, &e), PEER_DECODE_OK);
    ck_assert_int_eq(f.type, PEER_MSG_HEARTBEAT);
    ck_assert_uint_eq(f.seq, 8);
    ck_assert_uint_eq(used, g_bytes_get_size(b2));
    peer_frame_clear(&f);
    ck_assert_ptr_null(e);
}
END_TEST

START_TEST(test_frame_truncated)
{
    g_autoptr(GBytes) key = key_good();
    g_autoptr(JsonObject) o = sample_payload();
    g_autoptr(GBytes) b = encode_ok(PEER_MSG_EVENT, 1, o, key);
    gsize len;
    const guint8 *d = g_bytes_get_data(b, &len);

    for (gsize n = 0; n < len; n++) {
        /* A private copy of exactly n bytes, so ASan catches any over-read. */
        g_autofree guint8 *copy = g_memdup2(d, n ? n : 1);
        PeerFrame f;
        gsize used = 99;
        g_autoptr(GError) e = NULL;

        ck_assert_msg(peer_frame_decode(copy, n, key, 0, &f, &used, &e) ==
                          PEER_DECODE_NEED_MORE, "offset %zu not NEED_MORE", n);
        ck_assert_ptr_null(e);
        ck_assert_ptr_null(f.payload);
        ck_assert_uint_eq(used, 0);
    }
}
END_TEST

START_TEST(test_frame_oversized)
{
    g_autoptr(GBytes) key = key_good();
    static const guint32 lens[] = { PEER_FRAME_MAX_PAYLOAD + 1, 0x7fffffff, 0xffffffff };
    g_autoptr(JsonObject) big = json_object_new();
    g_autofree char *blob = g_malloc(PEER_FRAME_MAX_PAYLOAD + 1);
    g_autoptr(GError) e = NULL;

    for (gsize i = 0; i < G_N_ELEMENTS(lens); i++) {
        /* Only the 20 header bytes: the error must not wait for the payload. */
        guint8 hdr[20] = { 'K', 'F', 'T', '1', 0, 1, 0, PEER_MSG_EVENT, 0, 0, 0, 0, 0, 0, 0, 1 };
        g_autoptr(GBytes) b = NULL;

        hdr[16] = lens[i] >> 24;
        hdr[17] = (lens[i] >> 16) & 0xff;
        hdr[18] = (lens[i] >> 8) & 0xff;
        hdr[19] = lens[i] & 0xff;
        b = g_bytes_new(hdr, sizeof(hdr));
        assert_decode_error(b, key, 0, PEER_ERROR_BAD_FRAME, "exceeds");
    }

    /* Exactly the limit is fine for the header check (needs more bytes). */
    {
        guint8 hdr[20] = { 'K', 'F', 'T', '1', 0, 1, 0, PEER_MSG_EVENT, 0, 0, 0, 0, 0, 0, 0, 1,
                           0, 0x10, 0, 0 };
        PeerFrame f;
        gsize used;

        ck_assert_int_eq(peer_frame_decode(hdr, sizeof(hdr), key, 0, &f, &used, &e),
                         PEER_DECODE_NEED_MORE);
    }

    memset(blob, 'a', PEER_FRAME_MAX_PAYLOAD);
    blob[PEER_FRAME_MAX_PAYLOAD] = '\0';
    json_object_set_string_member(big, "blob", blob);
    ck_assert_ptr_null(peer_frame_encode(PEER_MSG_EVENT, 1, big, key, &e));
    ck_assert(g_error_matches(e, PEER_ERROR, PEER_ERROR_BAD_FRAME));
}
END_TEST

START_TEST(test_frame_wrong_key)
{
    g_autoptr(GBytes) good = key_good();
    g_autoptr(GBytes) bad = key_bad();
    g_autoptr(JsonObject) o = sample_payload();
    g_autoptr(GBytes) b = encode_ok(PEER_MSG_HELLO, 1, o, bad);

    assert_decode_error(b, good, 0, PEER_ERROR_BAD_MAC, "bad MAC");
}
END_TEST

START_TEST(test_frame_bitflip)
{
    g_autoptr(GBytes) key = key_good();
    g_autoptr(JsonObject) o = json_object_new();
    g_autoptr(GBytes) b = NULL;
    gsize len;
    const guint8 *d;

    json_object_set_string_member(o, "m", "ping");
    b = encode_ok(PEER_MSG_REQUEST, 3, o, key);
    d = g_bytes_get_data(b, &len);
    /* Every bit of seq, payload and MAC is covered by the MAC. */
    for (gsize i = 8; i < len; i++) {
        if (i >= 16 && i < 20)
            continue; /* length: changes framing, tested elsewhere */
        for (int bit = 0; bit < 8; bit++) {
            g_autofree guint8 *copy = g_memdup2(d, len);
            g_autoptr(GBytes) t = NULL;

            copy[i] ^= (guint8)(1u << bit);
            t = g_bytes_new(copy, len);
            assert_decode_error(t, key, 0, PEER_ERROR_BAD_MAC, NULL);
        }
    }
}
END_TEST

START_TEST(test_frame_replay)
{
    g_autoptr(GBytes) key = key_good();
    g_autoptr(JsonObject) o = sample_payload();
    g_autoptr(GBytes) b = encode_ok(PEER_MSG_EVENT, 5, o, key);
    PeerFrame f;
    gsize used;
    g_autoptr(GError) e = NULL;

    assert_decode_error(b, key, 5, PEER_ERROR_BAD_SEQ, "replayed");
    assert_decode_error(b, key, 9, PEER_ERROR_BAD_SEQ, NULL);
    assert_decode_error(b, key, G_MAXUINT64, PEER_ERROR_BAD_SEQ, NULL);
    /* A relay that drops a frame (a decision) and passes the next is caught. */
    assert_decode_error(b, key, 3, PEER_ERROR_BAD_SEQ, "frames dropped");
    ck_assert_int_eq(decode(b, key, 4, &f, &used, &e), PEER_DECODE_OK);
    peer_frame_clear(&f);
}
END_TEST

START_TEST(test_frame_bad_header)
{
    g_autoptr(GBytes) key = key_good();
    static const char obj[] = "{\"a\":1}";
    g_autoptr(GBytes) good = raw_frame(1, PEER_MSG_EVENT, 1, obj, strlen(obj), key);
    static const guint16 bad_types[] = { 0, 7, 0x100, 0xffff };
    gsize len;
    const guint8 *d = g_bytes_get_data(good, &len);

    /* Bad magic is caught from the very first byte. */
    {
        guint8 one = 'X';
        PeerFrame f;
        gsize used;
        g_autoptr(GError) e = NULL;

        ck_assert_int_eq(peer_frame_decode(&one, 1, key, 0, &f, &used, &e),
                         PEER_DECODE_ERROR);
        ck_assert(g_error_matches(e, PEER_ERROR, PEER_ERROR_BAD_FRAME));
        ck_assert(strstr(e->message, "magic"));
    }
    for (int i = 0; i < 4; i++) {
        g_autofree guint8 *copy = g_memdup2(d, len);
        g_autoptr(GBytes) t = NULL;

        copy[i] ^= 0x20;
        t = g_bytes_new(copy, len);
        assert_decode_error(t, key, 0, PEER_ERROR_BAD_FRAME, "magic");
    }
    {
        g_autoptr(GBytes) v0 = raw_frame(0, PEER_MSG_EVENT, 1, obj, strlen(obj), key);
        g_autoptr(GBytes) v2 = raw_frame(2, PEER_MSG_EVENT, 1, obj, strlen(obj), key);

        assert_decode_error(v0, key, 0, PEER_ERROR_BAD_VERSION, "version 0");
        assert_decode_error(v2, key, 0, PEER_ERROR_BAD_VERSION, "version 2");
    }
    for (gsize i = 0; i < G_N_ELEMENTS(bad_types); i++) {
        g_autoptr(GBytes) t = raw_frame(1, bad_types[i], 1, obj, strlen(obj), key);

        assert_decode_error(t, key, 0, PEER_ERROR_BAD_FRAME, "unknown message type");
    }
}
END_TEST

START_TEST(test_frame_not_object)
{
    g_autoptr(GBytes) key = key_good();
    GString *deep = g_string_new("{\"a\":");
    static const char *const bad[] = {
        "[1,2]", "\"str\"", "42", "null", "true", "", " ", "{", "{\"a\":1", "{\"a\":1}}",
        "{\"a\":1} x", "{'a':1}", "{\"a\":1 /* c */}", "{\"a\":\"\xff\"}",
        "{\"a\":\"x\"", "{\"a\":tru}",
    };

    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GBytes) t = raw_frame(1, PEER_MSG_EVENT, 1, bad[i], strlen(bad[i]), key);

        assert_decode_error(t, key, 0, PEER_ERROR_BAD_FRAME, "not a JSON object");
    }
    {
        /* Embedded NUL. */
        static const char nul[] = "{\"a\":\"x\0y\"}";
        g_autoptr(GBytes) t = raw_frame(1, PEER_MSG_EVENT, 1, nul, sizeof(nul) - 1, key);

        assert_decode_error(t, key, 0, PEER_ERROR_BAD_FRAME, "not a JSON object");
    }
    /* Nesting that would recurse deeply in the parser is refused... */
    for (int i = 0; i < 100000; i++)
        g_string_append_c(deep, '[');
    {
        g_autoptr(GBytes) t = raw_frame(1, PEER_MSG_EVENT, 1, deep->str, deep->len, key);

        assert_decode_error(t, key, 0, PEER_ERROR_BAD_FRAME, "not a JSON object");
    }
    g_string_free(deep, TRUE);
    /* ...reasonable nesting is not. */
    {
        static const char ok[] = "{\"a\":[[[{\"b\":[1,2,{\"c\":null}]}]]],\"d\":-1.5e3}";
        g_autoptr(GBytes) t = raw_frame(1, PEER_MSG_EVENT, 1, ok, strlen(ok), key);
        PeerFrame f;
        gsize used;
        g_autoptr(GError) e = NULL;

        ck_assert_int_eq(decode(t, key, 0, &f, &used, &e), PEER_DECODE_OK);
        peer_frame_clear(&f);
    }
}
END_TEST

/* ---- main loop helpers ---------------------------------------------------------- */

static void spin(guint ms)
{
    WAIT_FOR(FALSE, ms);
}

typedef struct {
    int connected;
    int closed;
    int requests;
    int events;
    int heartbeats;
    GError *closed_reason;
    PeerConn *conn; /* first connection seen; a reference */
    char *last_event;
    gint64 last_event_x;
} Side;

typedef struct {
    int calls;
    JsonNode *result;
    GError *error;
    gint64 t_us;
} ReplyBox;

typedef struct {
    PeerConn *conn;
    guint64 id;
} Deferred;

static struct {
    char *log_path;
    GBytes *psk;
    PeerServer *server;
    guint16 port;
    Side srv;
    Side cli;
    PeerConn *client;
    guint64 never_id; /* the request the server is sitting on */
} env;

static void on_connected(PeerConn *c, gpointer opaque)
{
    Side *s = opaque;

    s->connected++;
    ck_assert(peer_conn_is_connected(c));
    if (!s->conn)
        s->conn = peer_conn_ref(c);
}

static void on_closed(PeerConn *c, const GError *reason, gpointer opaque)
{
    Side *s = opaque;

    (void)c;
    s->closed++;
    g_clear_error(&s->closed_reason);
    s->closed_reason = reason ? g_error_copy(reason) : NULL;
}

static gboolean deferred_reply_cb(gpointer data)
{
    Deferred *d = data;
    g_autoptr(JsonNode) n = json_node_new(JSON_NODE_OBJECT);
    g_autoptr(JsonObject) o = json_object_new();

    json_object_set_boolean_member(o, "late", TRUE);
    json_node_set_object(n, o);
    ck_assert(peer_conn_reply(d->conn, d->id, n));
    peer_conn_unref(d->conn);
    g_free(d);
    return G_SOURCE_REMOVE;
}

static void on_request(PeerConn *c, guint64 id, const char *method, JsonObject *params,
                       gpointer opaque)
{
    Side *s = opaque;

    s->requests++;
    if (!strcmp(method, "echo")) {
        g_autoptr(JsonNode) n = json_node_new(JSON_NODE_OBJECT);
        g_autoptr(JsonObject) o = json_object_new();

        json_object_set_object_member(o, "echo", json_object_ref(params));
        json_node_set_object(n, o);
        ck_assert(peer_conn_reply(c, id, n));
        ck_assert(!peer_conn_reply(c, id, n)); /* only once */
    } else if (!strcmp(method, "fail")) {
        ck_assert(peer_conn_reply_error(c, id, "disk /dev/vdb is not replicated"));
    } else if (!strcmp(method, "later")) {
        Deferred *d = g_new0(Deferred, 1);

        d->conn = peer_conn_ref(c);
        d->id = id;
        g_timeout_add(300, deferred_reply_cb, d);
    } else if (!strcmp(method, "never")) {
        env.never_id = id;
    } else {
        ck_abort_msg("unexpected method %s", method);
    }
}

static void on_event(PeerConn *c, const char *name, JsonObject *data, gpointer opaque)
{
    Side *s = opaque;

    (void)c;
    s->events++;
    g_free(s->last_event);
    s->last_event = g_strdup(name);
    s->last_event_x = json_object_has_member(data, "x")
                          ? json_object_get_int_member(data, "x") : -1;
}

static void on_heartbeat(PeerConn *c, JsonObject *data, gpointer opaque)
{
    Side *s = opaque;

    (void)c;
    (void)data;
    s->heartbeats++;
}

static const PeerCallbacks cbs = {
    .connected = on_connected,
    .closed = on_closed,
    .request = on_request,
    .event = on_event,
    .heartbeat = on_heartbeat,
};

static void reply_cb(PeerConn *c, JsonNode *result, const GError *error, gpointer opaque)
{
    ReplyBox *box = opaque;

    (void)c;
    box->calls++;
    box->t_us = g_get_monotonic_time();
    ck_assert((result == NULL) != (error == NULL));
    if (result)
        box->result = json_node_copy(result);
    if (error)
        box->error = g_error_copy(error);
}

static void reply_box_clear(ReplyBox *box)
{
    g_clear_pointer(&box->result, json_node_unref);
    g_clear_error(&box->error);
    memset(box, 0, sizeof(*box));
}

static gboolean log_contains(const char *needle)
{
    g_autofree char *text = NULL;

    if (!g_file_get_contents(env.log_path, &text, NULL, NULL))
        return FALSE;
    return strstr(text, needle) != NULL;
}

static void side_clear(Side *s)
{
    g_clear_error(&s->closed_reason);
    g_clear_pointer(&s->conn, peer_conn_unref);
    g_clear_pointer(&s->last_event, g_free);
    memset(s, 0, sizeof(*s));
}

static void setup(void)
{
    g_autoptr(GError) e = NULL;
    int fd;

    memset(&env, 0, sizeof(env));
    fd = g_file_open_tmp("test-peer-XXXXXX.log", &env.log_path, &e);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert(log_open(env.log_path, NULL));
    log_set_verbose(TRUE);
    env.psk = key_good();
    env.server = peer_server_new("127.0.0.1", 0, env.psk, "hostB", &cbs, &env.srv, &e);
    ck_assert_msg(env.server != NULL, "%s", e ? e->message : "?");
    env.port = peer_server_get_port(env.server);
    ck_assert_uint_ne(env.port, 0);
}

static void teardown(void)
{
    g_clear_pointer(&env.client, peer_conn_unref);
    side_clear(&env.cli);
    g_clear_pointer(&env.server, peer_server_free);
    side_clear(&env.srv);
    spin(50); /* let cancelled async connects report back and free their state */
    g_bytes_unref(env.psk);
    unlink(env.log_path);
    g_free(env.log_path);
}

static PeerConn *connect_to(guint16 port, GBytes *key, Side *side, guint timeout_ms)
{
    g_autoptr(GError) e = NULL;
    PeerConn *c = peer_connect("127.0.0.1", port, key, "hostA", timeout_ms, &cbs, side, &e);

    ck_assert_msg(c != NULL, "%s", e ? e->message : "?");
    return c;
}

static void connect_good_client(void)
{
    env.client = connect_to(env.port, env.psk, &env.cli, 5000);
    WAIT_FOR(env.cli.connected == 1 && env.srv.connected == 1, 5000);
    ck_assert_int_eq(env.cli.connected, 1);
    ck_assert_int_eq(env.srv.connected, 1);
}

static void echo_round_trip(PeerConn *c)
{
    ReplyBox box = { 0 };
    g_autoptr(JsonObject) params = json_object_new();
    JsonObject *echo;

    json_object_set_int_member(params, "x", 42);
    ck_assert_uint_ne(peer_conn_request(c, "echo", params, 5000, reply_cb, &box), 0);
    WAIT_FOR(box.calls > 0, 5000);
    ck_assert_int_eq(box.calls, 1);
    ck_assert_msg(box.error == NULL, "%s", box.error ? box.error->message : "");
    ck_assert(JSON_NODE_HOLDS_OBJECT(box.result));
    echo = json_object_get_object_member(json_node_get_object(box.result), "echo");
    ck_assert_ptr_nonnull(echo);
    ck_assert_int_eq(json_object_get_int_member(echo, "x"), 42);
    reply_box_clear(&box);
}

/* ---- raw sockets: a peer that does not follow the protocol ------------------------ */

static GSocket *raw_connect(guint16 port)
{
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(lo, port);
    GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, NULL);

    ck_assert_ptr_nonnull(s);
    ck_assert(g_socket_connect(s, sa, NULL, NULL));
    return s;
}

/* A connection from another loopback address, as another host on the LAN would make. */
#define MAX_SILENT 10

static GSocket *raw_connect_from(const char *source, guint16 port)
{
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GInetAddress) src = g_inet_address_new_from_string(source);
    g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(lo, port);
    g_autoptr(GSocketAddress) from = g_inet_socket_address_new(src, 0);
    GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, NULL);

    ck_assert_ptr_nonnull(s);
    ck_assert(g_socket_bind(s, from, FALSE, NULL));
    ck_assert(g_socket_connect(s, sa, NULL, NULL));
    return s;
}

static void raw_send(GSocket *s, const void *buf, gsize len)
{
    gsize off = 0;

    while (off < len) {
        gssize n = g_socket_send_with_blocking(s, (const char *)buf + off, len - off, TRUE,
                                               NULL, NULL);

        ck_assert_int_gt(n, 0);
        off += (gsize)n;
    }
}

/* Drains what the server sent into sink; TRUE once the server hung up. */
static gboolean raw_eof(GSocket *s, GByteArray *sink)
{
    for (;;) {
        char buf[4096];
        g_autoptr(GError) e = NULL;
        gssize n = g_socket_receive_with_blocking(s, buf, sizeof(buf), FALSE, NULL, &e);

        if (n == 0)
            return TRUE;
        if (n < 0)
            return !g_error_matches(e, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK);
        if (sink)
            g_byte_array_append(sink, (guint8 *)buf, (guint)n);
    }
}

/* Splits a captured byte stream into frames by their headers. */
static GPtrArray *split_frames(const guint8 *d, gsize len)
{
    GPtrArray *frames = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    gsize off = 0;

    while (off + 20 <= len) {
        gsize flen = 20 + ((gsize)d[off + 16] << 24 | (gsize)d[off + 17] << 16 |
                           (gsize)d[off + 18] << 8 | d[off + 19]) + 32;

        ck_assert_uint_le(off + flen, len);
        g_ptr_array_add(frames, g_bytes_new(d + off, flen));
        off += flen;
    }
    ck_assert_uint_eq(off, len);
    return frames;
}

/* ---- a man in the middle that records, replays and stalls ------------------------- */

typedef struct {
    GSocket *listener;
    GSource *lsrc;
    guint16 port;
    guint16 target;
    GSocket *a; /* client side */
    GSocket *b; /* server side */
    GSource *asrc;
    GSource *bsrc;
    GByteArray *c2s;
    GByteArray *s2c;
} Proxy;

static void proxy_shut(Proxy *p)
{
    if (p->asrc) {
        g_source_destroy(p->asrc);
        g_clear_pointer(&p->asrc, g_source_unref);
    }
    if (p->bsrc) {
        g_source_destroy(p->bsrc);
        g_clear_pointer(&p->bsrc, g_source_unref);
    }
    g_clear_object(&p->a);
    g_clear_object(&p->b);
}

static gboolean proxy_pump(GSocket *from, GIOCondition cond, gpointer data)
{
    Proxy *p = data;
    gboolean c2s = from == p->a;
    GSocket *to = c2s ? p->b : p->a;
    char buf[65536];
    g_autoptr(GError) e = NULL;
    gssize n = g_socket_receive_with_blocking(from, buf, sizeof(buf), FALSE, NULL, &e);

    (void)cond;
    if (n < 0 && g_error_matches(e, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        return G_SOURCE_CONTINUE;
    if (n <= 0) {
        /* Sources are destroyed below; keep this one alive until we return. */
        proxy_shut(p);
        return G_SOURCE_REMOVE;
    }
    g_byte_array_append(c2s ? p->c2s : p->s2c, (guint8 *)buf, (guint)n);
    raw_send(to, buf, (gsize)n);
    return G_SOURCE_CONTINUE;
}

static GSource *watch(GSocket *s, GSocketSourceFunc fn, gpointer data)
{
    GSource *src = g_socket_create_source(s, G_IO_IN, NULL);

    g_source_set_callback(src, G_SOURCE_FUNC(fn), data, NULL);
    g_source_attach(src, NULL);
    return src;
}

static gboolean proxy_accept(GSocket *l, GIOCondition cond, gpointer data)
{
    Proxy *p = data;

    (void)cond;
    p->a = g_socket_accept(l, NULL, NULL);
    if (!p->a)
        return G_SOURCE_CONTINUE;
    p->b = raw_connect(p->target);
    p->asrc = watch(p->a, proxy_pump, p);
    p->bsrc = watch(p->b, proxy_pump, p);
    g_clear_pointer(&p->lsrc, g_source_unref);
    return G_SOURCE_REMOVE; /* one connection per proxy */
}

static Proxy *proxy_new(guint16 target)
{
    Proxy *p = g_new0(Proxy, 1);
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(lo, 0);
    g_autoptr(GSocketAddress) bound = NULL;

    p->target = target;
    p->c2s = g_byte_array_new();
    p->s2c = g_byte_array_new();
    p->listener = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                               G_SOCKET_PROTOCOL_TCP, NULL);
    ck_assert(g_socket_bind(p->listener, sa, TRUE, NULL));
    ck_assert(g_socket_listen(p->listener, NULL));
    g_socket_set_blocking(p->listener, FALSE);
    bound = g_socket_get_local_address(p->listener, NULL);
    p->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    p->lsrc = watch(p->listener, proxy_accept, p);
    return p;
}

static void proxy_free(Proxy *p)
{
    proxy_shut(p);
    if (p->lsrc) {
        g_source_destroy(p->lsrc);
        g_source_unref(p->lsrc);
    }
    g_object_unref(p->listener);
    g_byte_array_unref(p->c2s);
    g_byte_array_unref(p->s2c);
    g_free(p);
}

/* ---- sessions over real sockets ----------------------------------------------------- */

START_TEST(test_session_request_reply)
{
    ReplyBox box = { 0 };
    g_autoptr(JsonObject) ev = json_object_new();
    g_autoptr(JsonObject) params = json_object_new();

    connect_good_client();
    ck_assert_str_eq(peer_conn_get_peer_host(env.client), "hostB");
    ck_assert_str_eq(peer_conn_get_peer_host(env.srv.conn), "hostA");
    ck_assert(g_str_has_prefix(peer_conn_get_address(env.client), "127.0.0.1:"));
    ck_assert_int_gt(peer_conn_get_last_rx_time(env.client), 0);
    ck_assert(log_contains("(hostB): session established"));

    echo_round_trip(env.client);

    /* Errors answered by the peer come back as PEER_ERROR_REMOTE with its text. */
    ck_assert_uint_ne(peer_conn_request(env.client, "fail", NULL, 5000, reply_cb, &box), 0);
    WAIT_FOR(box.calls > 0, 5000);
    ck_assert_int_eq(box.calls, 1);
    ck_assert(g_error_matches(box.error, PEER_ERROR, PEER_ERROR_REMOTE));
    ck_assert_str_eq(box.error->message, "disk /dev/vdb is not replicated");
    reply_box_clear(&box);

    /* The listening side can make requests too. */
    echo_round_trip(env.srv.conn);
    ck_assert_int_eq(env.cli.requests, 1);

    /* One-way messages. */
    json_object_set_int_member(ev, "x", 7);
    ck_assert(peer_conn_send_event(env.client, "guest-state", ev));
    ck_assert(peer_conn_send_heartbeat(env.srv.conn, NULL));
    int hb0 = env.cli.heartbeats;
    WAIT_FOR(env.srv.events == 1 && env.cli.heartbeats > hb0, 5000);
    ck_assert_int_eq(env.srv.events, 1);
    ck_assert_str_eq(env.srv.last_event, "guest-state");
    ck_assert_int_eq(env.srv.last_event_x, 7);
    ck_assert_int_eq(env.cli.heartbeats, hb0 + 1);

    /* Closing: each side hears about it exactly once; pending requests fail with IO. */
    ck_assert_uint_ne(peer_conn_request(env.client, "never", params, 5000, reply_cb, &box), 0);
    WAIT_FOR(env.never_id != 0, 5000);
    peer_conn_close(env.srv.conn);
    ck_assert_int_eq(env.srv.closed, 1);
    ck_assert(g_error_matches(env.srv.closed_reason, PEER_ERROR, PEER_ERROR_CLOSED));
    WAIT_FOR(env.cli.closed == 1 && box.calls == 1, 5000);
    ck_assert_int_eq(box.calls, 1);
    ck_assert(g_error_matches(box.error, PEER_ERROR, PEER_ERROR_IO));
    ck_assert(g_error_matches(env.cli.closed_reason, PEER_ERROR, PEER_ERROR_IO));
    ck_assert(!peer_conn_is_connected(env.client));
    ck_assert_str_eq(peer_conn_get_peer_host(env.client), "hostB");
    ck_assert(!peer_conn_reply(env.srv.conn, env.never_id, NULL));
    ck_assert(!peer_conn_send_event(env.client, "x", NULL));
    peer_conn_close(env.client);
    spin(100);
    ck_assert_int_eq(env.cli.closed, 1);
    ck_assert_int_eq(env.srv.closed, 1);
    reply_box_clear(&box);

    /* Requests on a closed connection still get exactly one (asynchronous) answer. */
    ck_assert_uint_eq(peer_conn_request(env.client, "echo", NULL, 1000, reply_cb, &box), 0);
    ck_assert_int_eq(box.calls, 0);
    WAIT_FOR(box.calls > 0, 1000);
    ck_assert_int_eq(box.calls, 1);
    ck_assert(g_error_matches(box.error, PEER_ERROR, PEER_ERROR_IO));
    reply_box_clear(&box);
}
END_TEST

START_TEST(test_delayed_reply)
{
    ReplyBox box = { 0 };
    gint64 t0;

    connect_good_client();
    t0 = g_get_monotonic_time();
    ck_assert_uint_ne(peer_conn_request(env.client, "later", NULL, 5000, reply_cb, &box), 0);
    WAIT_FOR(box.calls > 0, 5000);
    ck_assert_int_eq(box.calls, 1);
    ck_assert_msg(box.error == NULL, "%s", box.error ? box.error->message : "");
    ck_assert(json_object_get_boolean_member(json_node_get_object(box.result), "late"));
    ck_assert_int_ge(box.t_us - t0, 250 * 1000);
    reply_box_clear(&box);
    ck_assert(peer_conn_is_connected(env.client));
}
END_TEST

START_TEST(test_request_timeout)
{
    ReplyBox box = { 0 };
    gint64 t0;
    int hb0;

    connect_good_client();
    t0 = g_get_monotonic_time();
    ck_assert_uint_ne(peer_conn_request(env.client, "never", NULL, 300, reply_cb, &box), 0);
    WAIT_FOR(box.calls > 0, 5000);
    ck_assert_int_eq(box.calls, 1);
    ck_assert(g_error_matches(box.error, PEER_ERROR, PEER_ERROR_TIMEOUT));
    ck_assert_int_ge(box.t_us - t0, 300 * 1000);
    ck_assert_int_lt(box.t_us - t0, 2000 * 1000);

    /* A late answer is dropped quietly; the session carries on. */
    ck_assert(peer_conn_reply(env.srv.conn, env.never_id, NULL));
    hb0 = env.srv.heartbeats;
    ck_assert(peer_conn_send_heartbeat(env.client, NULL));
    WAIT_FOR(env.srv.heartbeats > hb0, 5000);
    ck_assert_int_eq(box.calls, 1);
    ck_assert(peer_conn_is_connected(env.client));
    ck_assert_int_eq(env.cli.closed, 0);
    reply_box_clear(&box);
    echo_round_trip(env.client);
}
END_TEST

START_TEST(test_wrong_key_refused)
{
    g_autoptr(GBytes) bad = key_bad();
    Side side = { 0 };
    PeerConn *c = connect_to(env.port, bad, &side, 5000);

    WAIT_FOR(side.closed > 0, 5000);
    ck_assert_int_eq(side.closed, 1);
    ck_assert_int_eq(side.connected, 0);
    ck_assert(g_error_matches(side.closed_reason, PEER_ERROR, PEER_ERROR_REFUSED));
    ck_assert_int_eq(env.srv.connected, 0);
    ck_assert_int_eq(env.srv.closed, 0);
    ck_assert(log_contains("peer 127.0.0.1:"));
    ck_assert(log_contains("refused: bad MAC (wrong key?)"));
    peer_conn_unref(c);
    side_clear(&side);

    /* The server still serves a client that holds the key. */
    connect_good_client();
    echo_round_trip(env.client);
}
END_TEST

/*
 * A session relayed back to its own host: the "peer" announces this host's
 * own name.  Refused in the handshake.
 */
START_TEST(test_self_relay_refused)
{
    g_autoptr(GError) e = NULL;
    Side side = { 0 };
    PeerConn *c = peer_connect("127.0.0.1", env.port, env.psk, "hostB", 5000, &cbs, &side, &e);

    ck_assert_msg(c != NULL, "%s", e ? e->message : "?");
    WAIT_FOR(side.closed > 0, 5000);
    ck_assert_int_eq(side.connected, 0);
    ck_assert_int_eq(env.srv.connected, 0);
    ck_assert_msg(log_contains("calls itself hostB, this host's own name"),
                  "the server did not refuse a HELLO in its own name");
    peer_conn_unref(c);
    side_clear(&side);
}
END_TEST

static void expect_hangup(const void *data, gsize len, const char *log_needle)
{
    g_autoptr(GSocket) s = raw_connect(env.port);
    gint64 t0 = g_get_monotonic_time();

    raw_send(s, data, len);
    WAIT_FOR(raw_eof(s, NULL), 3000);
    ck_assert_msg(raw_eof(s, NULL), "server kept a connection that sent %s", log_needle);
    /* Refused at once, not by the 5 s handshake timeout. */
    ck_assert_int_lt(g_get_monotonic_time() - t0, 2000 * 1000);
    ck_assert_msg(log_contains(log_needle), "log lacks '%s'", log_needle);
}

START_TEST(test_garbage_refused)
{
    guint8 junk[4096];
    guint8 hdr[20] = { 'K', 'F', 'T', '1', 0, 1, 0, PEER_MSG_HELLO, 0, 0, 0, 0, 0, 0, 0, 1,
                       0, 0, 0, 100 };
    g_autoptr(GByteArray) forged = g_byte_array_new();
    g_autoptr(GBytes) key = key_good();
    g_autoptr(JsonObject) o = json_object_new();
    g_autoptr(GBytes) request = NULL;

    for (gsize i = 0; i < sizeof(junk); i++)
        junk[i] = (guint8)g_random_int();
    junk[0] = 'X';
    expect_hangup(junk, sizeof(junk), "refused: bad magic");

    /* A plausible header followed by random bytes: the MAC does not match. */
    g_byte_array_append(forged, hdr, sizeof(hdr));
    g_byte_array_append(forged, junk, 100 + 32);
    expect_hangup(forged->data, forged->len, "refused: bad MAC (wrong key?)");

    /* A header announcing 4 GiB: refused without waiting for the bytes. */
    memset(hdr + 16, 0xff, 4);
    expect_hangup(hdr, sizeof(hdr), "exceeds");

    /* A correctly keyed frame of the wrong kind is still not a handshake. */
    json_object_set_string_member(o, "method", "echo");
    request = encode_ok(PEER_MSG_REQUEST, 1, o, key);
    expect_hangup(g_bytes_get_data(request, NULL), g_bytes_get_size(request),
                  "refused: expected HELLO, got REQUEST");

    ck_assert_int_eq(env.srv.connected, 0);
    ck_assert_int_eq(env.srv.requests, 0);

    connect_good_client();
    echo_round_trip(env.client);
}
END_TEST

START_TEST(test_replayed_hello)
{
    Proxy *p = proxy_new(env.port);
    g_autoptr(GPtrArray) c2s = NULL;
    g_autoptr(GPtrArray) s2c = NULL;
    g_autoptr(GSocket) raw = NULL;
    g_autoptr(GByteArray) answer = g_byte_array_new();
    PeerFrame w1, w2;
    gsize used;
    g_autoptr(GError) e = NULL;

    /* Session 1, recorded by the man in the middle. */
    env.client = connect_to(p->port, env.psk, &env.cli, 5000);
    WAIT_FOR(env.cli.connected == 1 && env.srv.connected == 1, 5000);
    ck_assert_int_eq(env.srv.connected, 1);
    echo_round_trip(env.client);
    ck_assert_int_eq(env.srv.requests, 1);
    c2s = split_frames(p->c2s->data, p->c2s->len);
    s2c = split_frames(p->s2c->data, p->s2c->len);
    ck_assert_uint_ge(c2s->len, 3); /* HELLO, key confirmation, REQUEST */
    ck_assert_int_eq(decode(g_ptr_array_index(s2c, 0), env.psk, 0, &w1, &used, &e),
                     PEER_DECODE_OK);
    ck_assert_int_eq(w1.type, PEER_MSG_WELCOME);

    /* Session 2: the attacker replays the HELLO, then the rest of session 1. */
    raw = raw_connect(env.port);
    raw_send(raw, g_bytes_get_data(g_ptr_array_index(c2s, 0), NULL),
             g_bytes_get_size(g_ptr_array_index(c2s, 0)));
    WAIT_FOR(raw_eof(raw, answer) || answer->len > 0, 3000);
    spin(50);
    ck_assert(!raw_eof(raw, answer));
    used = g_bytes_get_size(g_ptr_array_index(c2s, 0));
    raw_send(raw, p->c2s->data + used, p->c2s->len - used);
    WAIT_FOR(raw_eof(raw, answer), 3000);
    ck_assert(raw_eof(raw, answer));
    ck_assert(log_contains("refused: bad MAC on the first session frame"));

    /* The server did answer the HELLO, but with a fresh nonce... */
    ck_assert_uint_gt(answer->len, 20);
    ck_assert_int_eq(peer_frame_decode(answer->data, answer->len, env.psk, 0, &w2, &used, &e),
                     PEER_DECODE_OK);
    ck_assert_int_eq(w2.type, PEER_MSG_WELCOME);
    ck_assert_str_ne(json_object_get_string_member(w1.payload, "nonce"),
                     json_object_get_string_member(w2.payload, "nonce"));
    /* ...so the replayed session frames did not verify: no session, no request. */
    ck_assert_int_eq(env.srv.connected, 1);
    ck_assert_int_eq(env.srv.requests, 1);
    ck_assert_int_eq(env.srv.closed, 0);
    peer_frame_clear(&w1);
    peer_frame_clear(&w2);

    /* The original session is unaffected. */
    echo_round_trip(env.client);
    proxy_free(p);
}
END_TEST

START_TEST(test_replay_in_session)
{
    Proxy *p = proxy_new(env.port);
    g_autoptr(GPtrArray) c2s = NULL;
    GBytes *last;

    env.client = connect_to(p->port, env.psk, &env.cli, 5000);
    WAIT_FOR(env.cli.connected == 1 && env.srv.connected == 1, 5000);
    echo_round_trip(env.client);
    c2s = split_frames(p->c2s->data, p->c2s->len);
    last = g_ptr_array_index(c2s, c2s->len - 1);

    /* The man in the middle sends the REQUEST again. */
    raw_send(p->b, g_bytes_get_data(last, NULL), g_bytes_get_size(last));
    WAIT_FOR(env.srv.closed == 1 && env.cli.closed == 1, 5000);
    ck_assert_int_eq(env.srv.closed, 1);
    ck_assert(g_error_matches(env.srv.closed_reason, PEER_ERROR, PEER_ERROR_BAD_SEQ));
    ck_assert_int_eq(env.srv.requests, 1);
    ck_assert_int_eq(env.cli.closed, 1);
    ck_assert(log_contains("(hostA): closing connection: REQUEST with seq"));
    spin(50);
    ck_assert_int_eq(env.srv.closed, 1);
    ck_assert_int_eq(env.cli.closed, 1);
    proxy_free(p);
}
END_TEST

START_TEST(test_garbage_in_session)
{
    Proxy *p = proxy_new(env.port);
    guint8 junk[256];

    env.client = connect_to(p->port, env.psk, &env.cli, 5000);
    WAIT_FOR(env.cli.connected == 1 && env.srv.connected == 1, 5000);
    /* Authenticated peers get no more slack than strangers. */
    for (gsize i = 0; i < sizeof(junk); i++)
        junk[i] = (guint8)g_random_int();
    memcpy(junk, "KFT1\x00\x01\x00\x05", 8);
    junk[16] = junk[17] = junk[18] = 0;
    junk[19] = 100;
    raw_send(p->b, junk, sizeof(junk));
    WAIT_FOR(env.srv.closed == 1 && env.cli.closed == 1, 5000);
    ck_assert(g_error_matches(env.srv.closed_reason, PEER_ERROR, PEER_ERROR_BAD_MAC));
    ck_assert_int_eq(env.cli.closed, 1);
    ck_assert(log_contains("(hostA): closing connection: bad MAC"));
    proxy_free(p);

    /* And the server goes on serving. */
    side_clear(&env.cli);
    side_clear(&env.srv);
    g_clear_pointer(&env.client, peer_conn_unref);
    connect_good_client();
    echo_round_trip(env.client);
}
END_TEST

START_TEST(test_handshake_timeouts)
{
    g_autoptr(GSocket) silent = NULL;
    g_autoptr(GSocket) mute_listener = NULL;
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(lo, 0);
    g_autoptr(GSocketAddress) bound = NULL;
    Side side = { 0 };
    PeerConn *c;
    gint64 t0;

    /* A client that connects and says nothing is dropped by the server. */
    peer_server_set_handshake_timeout(env.server, 200);
    silent = raw_connect(env.port);
    t0 = g_get_monotonic_time();
    WAIT_FOR(raw_eof(silent, NULL), 3000);
    ck_assert(raw_eof(silent, NULL));
    ck_assert_int_ge(g_get_monotonic_time() - t0, 150 * 1000);
    ck_assert(log_contains("refused: handshake not completed within 200 ms"));

    /* A server that accepts TCP but never answers: the client gives up in time. */
    mute_listener = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                                 G_SOCKET_PROTOCOL_TCP, NULL);
    ck_assert(g_socket_bind(mute_listener, sa, TRUE, NULL));
    ck_assert(g_socket_listen(mute_listener, NULL));
    bound = g_socket_get_local_address(mute_listener, NULL);
    t0 = g_get_monotonic_time();
    c = connect_to(g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound)), env.psk,
                   &side, 300);
    WAIT_FOR(side.closed > 0, 5000);
    ck_assert_int_eq(side.closed, 1);
    ck_assert_int_eq(side.connected, 0);
    ck_assert(g_error_matches(side.closed_reason, PEER_ERROR, PEER_ERROR_TIMEOUT));
    /* Silence is not an answer: failure detection must not see this host as up. */
    ck_assert(!peer_conn_host_answered(c));
    ck_assert_int_ge(g_get_monotonic_time() - t0, 300 * 1000);
    ck_assert_int_lt(g_get_monotonic_time() - t0, 2000 * 1000);
    peer_conn_unref(c);
    side_clear(&side);
}
END_TEST

/*
 * Another host on the LAN opens silent connections to take every handshake
 * slot: it gets two, and the real peer still gets in.
 */
START_TEST(test_handshake_slots_per_source)
{
    GSocket *silent[MAX_SILENT];
    guint held = 0;

    for (guint i = 0; i < MAX_SILENT; i++)
        silent[i] = raw_connect_from("127.0.0.2", env.port);
    /* Let the server take them all, then see which it hung up on. */
    {
        int never = 0;

        WAIT_FOR(never, 300);
    }
    for (guint i = 0; i < MAX_SILENT; i++)
        held += !raw_eof(silent[i], NULL);
    ck_assert_msg(held == 2, "%u of %d silent connections from one address held", held,
                  MAX_SILENT);
    ck_assert(log_contains("connections already in handshake from 127.0.0.2"));
    connect_good_client();
    echo_round_trip(env.client);
    for (guint i = 0; i < MAX_SILENT; i++)
        g_object_unref(silent[i]);
}
END_TEST

START_TEST(test_connect_refused)
{
    Side side = { 0 };
    guint16 port = env.port;
    PeerConn *c;

    /* Nothing listens there any more. */
    g_clear_pointer(&env.server, peer_server_free);
    c = connect_to(port, env.psk, &side, 5000);
    WAIT_FOR(side.closed > 0, 5000);
    ck_assert_int_eq(side.closed, 1);
    ck_assert_int_eq(side.connected, 0);
    ck_assert(g_error_matches(side.closed_reason, PEER_ERROR, PEER_ERROR_IO));
    /* A refusal comes from the peer host's kernel: the host is up. */
    ck_assert(peer_conn_host_answered(c));
    peer_conn_unref(c);
    side_clear(&side);
}
END_TEST

START_TEST(test_send_queue_capped)
{
    Proxy *p = proxy_new(env.port);
    g_autoptr(JsonObject) data = json_object_new();
    g_autofree char *blob = g_malloc(512 * 1024 + 1);
    int sent = 0;

    env.client = connect_to(p->port, env.psk, &env.cli, 5000);
    WAIT_FOR(env.cli.connected == 1 && env.srv.connected == 1, 5000);

    /* The peer stops reading (here: the link in between stalls). */
    g_source_destroy(p->asrc);
    g_clear_pointer(&p->asrc, g_source_unref);

    memset(blob, 'z', 512 * 1024);
    blob[512 * 1024] = '\0';
    json_object_set_string_member(data, "blob", blob);
    while (sent < 400 && env.cli.closed == 0) {
        if (!peer_conn_send_event(env.client, "bulk", data))
            break;
        sent++;
        while (g_main_context_iteration(NULL, FALSE))
            ;
    }
    WAIT_FOR(env.cli.closed == 1, 5000);
    ck_assert_int_eq(env.cli.closed, 1);
    ck_assert_msg(sent < 400, "queue never filled");
    ck_assert_int_gt(sent, PEER_SEND_QUEUE_MAX / (512 * 1024));
    ck_assert(g_error_matches(env.cli.closed_reason, PEER_ERROR, PEER_ERROR_IO));
    ck_assert(strstr(env.cli.closed_reason->message, "not reading"));
    proxy_free(p);
    WAIT_FOR(env.srv.closed == 1, 5000);
    ck_assert_int_eq(env.srv.closed, 1);
}
END_TEST

static void close_from_connected(PeerConn *c, gpointer opaque)
{
    on_connected(c, opaque);
    peer_conn_close(c);
}

START_TEST(test_lifecycle_edges)
{
    ReplyBox box = { 0 };
    PeerCallbacks closing = cbs;
    Side side = { 0 };
    g_autoptr(GError) e = NULL;
    g_autoptr(GBytes) short_key = g_bytes_new_static("short", 5);
    PeerConn *c;

    /* Bad arguments fail synchronously. */
    ck_assert_ptr_null(peer_connect("127.0.0.1", env.port, short_key, "hostA", 1000, &cbs,
                                    &side, &e));
    ck_assert_ptr_nonnull(e);
    g_clear_error(&e);
    ck_assert_ptr_null(peer_connect("127.0.0.1", env.port, env.psk, "bad host", 1000, &cbs,
                                    &side, &e));
    g_clear_error(&e);
    ck_assert_ptr_null(peer_server_new("not-an-ip", 0, env.psk, "h", &cbs, NULL, &e));
    g_clear_error(&e);

    /* Closing from inside `connected`: exactly one `closed`, no crash. */
    closing.connected = close_from_connected;
    c = peer_connect("127.0.0.1", env.port, env.psk, "hostA", 5000, &closing, &side, &e);
    ck_assert_ptr_nonnull(c);
    WAIT_FOR(side.closed > 0 && env.srv.closed > 0, 5000);
    spin(50);
    ck_assert_int_eq(side.connected, 1);
    ck_assert_int_eq(side.closed, 1);
    ck_assert_int_eq(env.srv.closed, 1);
    peer_conn_unref(c);
    side_clear(&side);
    side_clear(&env.srv);

    /* Releasing an open connection with a request in flight: the request fails, no `closed`. */
    c = connect_to(env.port, env.psk, &side, 5000);
    WAIT_FOR(side.connected == 1 && env.srv.connected == 1, 5000);
    ck_assert_uint_ne(peer_conn_request(c, "never", NULL, 5000, reply_cb, &box), 0);
    g_clear_pointer(&side.conn, peer_conn_unref);
    peer_conn_unref(c);
    ck_assert_int_eq(box.calls, 1);
    ck_assert(g_error_matches(box.error, PEER_ERROR, PEER_ERROR_IO));
    ck_assert_int_eq(side.closed, 0);
    WAIT_FOR(env.srv.closed == 1, 5000);
    ck_assert_int_eq(env.srv.closed, 1);
    reply_box_clear(&box);
    side_clear(&side);
    side_clear(&env.srv);

    /* Freeing the server closes its sessions; the client notices. */
    connect_good_client();
    peer_server_free(g_steal_pointer(&env.server));
    ck_assert_int_eq(env.srv.closed, 1);
    ck_assert(g_error_matches(env.srv.closed_reason, PEER_ERROR, PEER_ERROR_CLOSED));
    WAIT_FOR(env.cli.closed == 1, 5000);
    ck_assert_int_eq(env.cli.closed, 1);
}
END_TEST

START_TEST(test_ipv6)
{
    g_autoptr(GError) e = NULL;
    PeerServer *server6 = peer_server_new("::1", 0, env.psk, "hostB", &cbs, &env.srv, &e);

    if (!server6)
        return; /* no IPv6 loopback on this machine */
    env.client = peer_connect("::1", peer_server_get_port(server6), env.psk, "hostA", 5000,
                              &cbs, &env.cli, &e);
    WAIT_FOR(env.cli.connected == 1 && env.srv.connected == 1, 5000);
    ck_assert_int_eq(env.cli.connected, 1);
    ck_assert(g_str_has_prefix(peer_conn_get_address(env.client), "[::1]:"));
    ck_assert(g_str_has_prefix(peer_conn_get_address(env.srv.conn), "[::1]:"));
    echo_round_trip(env.client);
    peer_server_free(server6);
    WAIT_FOR(env.cli.closed == 1, 5000);
    ck_assert_int_eq(env.cli.closed, 1);
}
END_TEST

/* A main loop that waits (on QEMU, on libvirt) must not stop the heartbeats. */
START_TEST(test_pulse_beats_while_loop_waits)
{
    gint64 before_start, waited_from;
    int hb0;

    connect_good_client();
    ck_assert_int_eq(peer_pulse_longest_gap_ms(0), -1);
    before_start = g_get_monotonic_time();
    g_usleep(200 * 1000);
    ck_assert(peer_pulse_start(10, 0, NULL));
    hb0 = env.srv.heartbeats;
    waited_from = g_get_monotonic_time();
    g_usleep(300 * 1000); /* the main context does not run */
    /* The loop waited; the heartbeats went on, which is what the peer saw. */
    ck_assert_int_lt(peer_pulse_longest_gap_ms(waited_from), 150);
    /* Before the thread started, nothing beat: that counts as silence. */
    ck_assert_int_ge(peer_pulse_longest_gap_ms(before_start), 200);
    peer_pulse_stop();
    ck_assert_int_eq(peer_pulse_longest_gap_ms(0), -1);
    spin(200);
    /* ~30 beats went out while the loop waited; allow for a slow, loaded machine. */
    ck_assert_int_ge(env.srv.heartbeats - hb0, 15);
    ck_assert_int_eq(env.srv.closed, 0);
    ck_assert_int_eq(env.cli.closed, 0);
    echo_round_trip(env.client);
}
END_TEST

/* Frames from the main loop and beats from the pulse thread never interleave. */
START_TEST(test_pulse_and_loop_share_the_stream)
{
    g_autoptr(JsonObject) ev = json_object_new();
    g_autofree char *pad = g_strnfill(3000, 'x');
    const int n = 400;

    connect_good_client();
    json_object_set_string_member(ev, "pad", pad);
    ck_assert(peer_pulse_start(1, 0, NULL));
    for (int i = 0; i < n; i++) {
        ck_assert(peer_conn_send_event(env.client, "bulk", ev));
        if (i % 50 == 0)
            spin(5);
    }
    WAIT_FOR(env.srv.events == n, 10000);
    peer_pulse_stop();
    ck_assert_int_eq(env.srv.events, n);
    ck_assert_int_eq(env.srv.closed, 0);
    ck_assert_int_gt(env.srv.heartbeats, 0);
}
END_TEST

static Suite *peer_suite(void)
{
    Suite *s = suite_create("peer");
    TCase *frame = tcase_create("framing");
    TCase *net = tcase_create("sessions");

    tcase_add_test(frame, test_frame_roundtrip);
    tcase_add_test(frame, test_frame_truncated);
    tcase_add_test(frame, test_frame_oversized);
    tcase_add_test(frame, test_frame_wrong_key);
    tcase_add_test(frame, test_frame_bitflip);
    tcase_add_test(frame, test_frame_replay);
    tcase_add_test(frame, test_frame_bad_header);
    tcase_add_test(frame, test_frame_not_object);
    suite_add_tcase(s, frame);

    tcase_add_checked_fixture(net, setup, teardown);
    tcase_set_timeout(net, 30);
    tcase_add_test(net, test_session_request_reply);
    tcase_add_test(net, test_delayed_reply);
    tcase_add_test(net, test_request_timeout);
    tcase_add_test(net, test_wrong_key_refused);
    tcase_add_test(net, test_garbage_refused);
    tcase_add_test(net, test_replayed_hello);
    tcase_add_test(net, test_self_relay_refused);
    tcase_add_test(net, test_handshake_slots_per_source);
    tcase_add_test(net, test_replay_in_session);
    tcase_add_test(net, test_garbage_in_session);
    tcase_add_test(net, test_handshake_timeouts);
    tcase_add_test(net, test_connect_refused);
    tcase_add_test(net, test_send_queue_capped);
    tcase_add_test(net, test_lifecycle_edges);
    tcase_add_test(net, test_ipv6);
    tcase_add_test(net, test_pulse_beats_while_loop_waits);
    tcase_add_test(net, test_pulse_and_loop_share_the_stream);
    suite_add_tcase(s, net);
    return s;
}

int main(void)
{
    return run_suite(peer_suite());
}
