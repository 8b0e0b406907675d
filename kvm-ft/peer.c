/* peer.c - the protocol between the two kvm-ftd daemons over the dedicated link */
#include "peer.h"

#include "jsontext.h"
#include "log.h"
#include "timeouts.h"

#include <errno.h>
#include <gio/gio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#define NONCE_LEN 32
#define KEY_LEN 32
#define HOST_MAX 255
#define NAME_MAX_LEN 128
#define READ_CHUNK (64 * 1024)
#define WAITING_READS_MAX 16
/* Unauthenticated sockets held at once: bounds what a port scan can cost. */
#define MAX_HANDSHAKES 8
/* Of those, from one address: one host cannot keep the real peer out. */
#define MAX_HANDSHAKES_PER_SOURCE 2
/* Refusals are logged at most this many times per window, then counted. */
#define REFUSAL_LOG_BURST 20

static void log_refusal(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Requests the peer may leave us owing: bounds a peer flooding requests. */
#define MAX_INCOMING 256

static const guint8 frame_magic[4] = { 'K', 'F', 'T', '1' };
/* v2: both hosts' names enter the session key. */
static const char session_label[] = "kvm-ft session v2";
static const char c2s_label[] = "kvm-ft c2s v1";
static const char s2c_label[] = "kvm-ft s2c v1";

G_DEFINE_QUARK(kvm-ft-peer-error-quark, peer_error)

static const char *const msg_type_names[] = {
    [PEER_MSG_HELLO] = "HELLO",
    [PEER_MSG_WELCOME] = "WELCOME",
    [PEER_MSG_REQUEST] = "REQUEST",
    [PEER_MSG_REPLY] = "REPLY",
    [PEER_MSG_EVENT] = "EVENT",
    [PEER_MSG_HEARTBEAT] = "HEARTBEAT",
};

static gboolean msg_type_valid(guint type)
{
    return type >= PEER_MSG_HELLO && type <= PEER_MSG_HEARTBEAT;
}

const char *peer_msg_type_name(PeerMsgType type)
{
    return msg_type_valid(type) ? msg_type_names[type] : "unknown";
}

/* ---- crypto helpers (GLib's HMAC; nothing hand-rolled but the compare) -- */

static void hmac_sha256(GBytes *key, const void *a, gsize alen,
                        const void *b, gsize blen, guint8 out[KEY_LEN])
{
    gsize klen;
    const guint8 *k = g_bytes_get_data(key, &klen);
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, k, klen);
    gsize dlen = KEY_LEN;

    g_hmac_update(h, a, (gssize)alen);
    if (blen)
        g_hmac_update(h, b, (gssize)blen);
    g_hmac_get_digest(h, out, &dlen);
    g_hmac_unref(h);
}

/* Time independent of where the first difference is: no MAC oracle. */
static gboolean ct_equal(const guint8 *a, const guint8 *b, gsize len)
{
    volatile guint8 diff = 0;

    for (gsize i = 0; i < len; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

static gboolean random_bytes(guint8 *buf, gsize len, GError **err)
{
    gsize got = 0;

    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            g_set_error(err, PEER_ERROR, PEER_ERROR_IO,
                        "getrandom failed: %s", g_strerror(errno));
            return FALSE;
        }
        got += (gsize)n;
    }
    return TRUE;
}

typedef struct {
    gsize len;
    guint8 data[];
} KeyBuf;

static void key_buf_free(gpointer p)
{
    KeyBuf *kb = p;

    explicit_bzero(kb->data, kb->len);
    g_free(kb);
}

/* Key material is wiped when its last reference goes. */
static GBytes *key_new(const guint8 *data, gsize len)
{
    KeyBuf *kb = g_malloc(sizeof(*kb) + len);

    kb->len = len;
    memcpy(kb->data, data, len);
    return g_bytes_new_with_free_func(kb->data, len, key_buf_free, kb);
}

/*
 * Both names go in: a session is between these two hosts, so one relayed
 * back to its own host, or to a third, derives keys nobody else holds.
 */
static void derive_keys(GBytes *psk, const guint8 *nonce_c, const guint8 *nonce_s,
                        const char *client, const char *server, GBytes **c2s, GBytes **s2c)
{
    g_autoptr(GByteArray) input = g_byte_array_new();
    guint8 session[KEY_LEN], k[KEY_LEN];
    g_autoptr(GBytes) session_key = NULL;

    g_byte_array_append(input, nonce_c, NONCE_LEN);
    g_byte_array_append(input, nonce_s, NONCE_LEN);
    /* Each name with its terminating NUL: "ab"+"c" is not "a"+"bc". */
    g_byte_array_append(input, (const guint8 *)client, strlen(client) + 1);
    g_byte_array_append(input, (const guint8 *)server, strlen(server) + 1);
    hmac_sha256(psk, session_label, strlen(session_label), input->data, input->len, session);
    session_key = key_new(session, KEY_LEN);
    explicit_bzero(session, sizeof(session));

    hmac_sha256(session_key, c2s_label, strlen(c2s_label), NULL, 0, k);
    *c2s = key_new(k, KEY_LEN);
    hmac_sha256(session_key, s2c_label, strlen(s2c_label), NULL, 0, k);
    *s2c = key_new(k, KEY_LEN);
    explicit_bzero(k, sizeof(k));
}

/* ---- framing ------------------------------------------------------------- */

static guint16 rd16(const guint8 *p)
{
    return (guint16)((p[0] << 8) | p[1]);
}

static guint32 rd32(const guint8 *p)
{
    return ((guint32)p[0] << 24) | ((guint32)p[1] << 16) | ((guint32)p[2] << 8) | p[3];
}

static guint64 rd64(const guint8 *p)
{
    return ((guint64)rd32(p) << 32) | rd32(p + 4);
}

static void wr16(guint8 *p, guint16 v)
{
    p[0] = (guint8)(v >> 8);
    p[1] = (guint8)v;
}

static void wr32(guint8 *p, guint32 v)
{
    p[0] = (guint8)(v >> 24);
    p[1] = (guint8)(v >> 16);
    p[2] = (guint8)(v >> 8);
    p[3] = (guint8)v;
}

static void wr64(guint8 *p, guint64 v)
{
    wr32(p, (guint32)(v >> 32));
    wr32(p + 4, (guint32)v);
}

GBytes *peer_frame_encode(PeerMsgType type, guint64 seq, JsonObject *payload,
                          GBytes *key, GError **err)
{
    g_autoptr(JsonNode) root = NULL;
    g_autofree char *text = NULL;
    gsize plen, total;
    guint8 *buf;

    g_return_val_if_fail(msg_type_valid(type), NULL);
    g_return_val_if_fail(payload != NULL, NULL);
    g_return_val_if_fail(key != NULL && g_bytes_get_size(key) > 0, NULL);

    root = json_node_init_object(json_node_alloc(), payload);
    text = json_to_string(root, FALSE);
    plen = strlen(text);
    if (plen > PEER_FRAME_MAX_PAYLOAD) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_FRAME,
                    "%s payload of %zu bytes exceeds the %d byte limit",
                    peer_msg_type_name(type), plen, PEER_FRAME_MAX_PAYLOAD);
        return NULL;
    }
    if (!g_utf8_validate(text, (gssize)plen, NULL) || !json_text_sane(text, plen, JSON_TEXT_MAX_DEPTH)) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_FRAME,
                    "%s payload is not valid UTF-8 JSON", peer_msg_type_name(type));
        return NULL;
    }

    total = PEER_FRAME_HEADER_LEN + plen + PEER_FRAME_MAC_LEN;
    buf = g_malloc(total);
    memcpy(buf, frame_magic, 4);
    wr16(buf + 4, PEER_PROTOCOL_VERSION);
    wr16(buf + 6, (guint16)type);
    wr64(buf + 8, seq);
    wr32(buf + 16, (guint32)plen);
    memcpy(buf + PEER_FRAME_HEADER_LEN, text, plen);
    hmac_sha256(key, buf, PEER_FRAME_HEADER_LEN + plen, NULL, 0,
                buf + PEER_FRAME_HEADER_LEN + plen);
    return g_bytes_new_take(buf, total);
}

PeerDecodeStatus peer_frame_decode(const guint8 *buf, gsize len, GBytes *key,
                                   guint64 last_seq, PeerFrame *frame,
                                   gsize *consumed, GError **err)
{
    guint16 version, type;
    guint32 plen;
    guint64 seq;
    gsize total;
    guint8 mac[PEER_FRAME_MAC_LEN];
    const char *text;
    g_autoptr(JsonParser) parser = NULL;
    JsonNode *root;

    g_return_val_if_fail(buf != NULL || len == 0, PEER_DECODE_ERROR);
    g_return_val_if_fail(key != NULL && g_bytes_get_size(key) > 0, PEER_DECODE_ERROR);
    g_return_val_if_fail(frame != NULL && consumed != NULL, PEER_DECODE_ERROR);

    memset(frame, 0, sizeof(*frame));
    *consumed = 0;

    if (len > 0 && memcmp(buf, frame_magic, MIN(len, sizeof(frame_magic))) != 0) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_FRAME,
                    "bad magic (not a kvm-ft peer?)");
        return PEER_DECODE_ERROR;
    }
    if (len < 6)
        return PEER_DECODE_NEED_MORE;
    version = rd16(buf + 4);
    if (version != PEER_PROTOCOL_VERSION) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_VERSION,
                    "unsupported protocol version %u (this kvm-ftd speaks %u)",
                    version, PEER_PROTOCOL_VERSION);
        return PEER_DECODE_ERROR;
    }
    if (len < 8)
        return PEER_DECODE_NEED_MORE;
    type = rd16(buf + 6);
    if (!msg_type_valid(type)) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_FRAME,
                    "unknown message type %u", type);
        return PEER_DECODE_ERROR;
    }
    if (len < PEER_FRAME_HEADER_LEN)
        return PEER_DECODE_NEED_MORE;
    seq = rd64(buf + 8);
    plen = rd32(buf + 16);
    if (plen > PEER_FRAME_MAX_PAYLOAD) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_FRAME,
                    "%s payload of %u bytes exceeds the %d byte limit",
                    peer_msg_type_name(type), plen, PEER_FRAME_MAX_PAYLOAD);
        return PEER_DECODE_ERROR;
    }
    total = PEER_FRAME_HEADER_LEN + (gsize)plen + PEER_FRAME_MAC_LEN;
    if (len < total)
        return PEER_DECODE_NEED_MORE;

    hmac_sha256(key, buf, PEER_FRAME_HEADER_LEN + plen, NULL, 0, mac);
    if (!ct_equal(mac, buf + PEER_FRAME_HEADER_LEN + plen, sizeof(mac))) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_MAC, "bad MAC");
        return PEER_DECODE_ERROR;
    }
    /* Consecutive: a relay must not drop chosen frames (a decision) and pass the rest. */
    if (seq != last_seq + 1 || last_seq == G_MAXUINT64) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_SEQ,
                    "%s with seq %" G_GUINT64_FORMAT " after seq %" G_GUINT64_FORMAT
                    " (%s)", peer_msg_type_name(type), seq, last_seq,
                    seq <= last_seq ? "replayed or reordered" : "frames dropped");
        return PEER_DECODE_ERROR;
    }

    text = (const char *)buf + PEER_FRAME_HEADER_LEN;
    parser = json_parser_new_immutable();
    if (plen == 0 || !g_utf8_validate(text, plen, NULL) ||
        !json_text_sane(text, plen, JSON_TEXT_MAX_DEPTH) ||
        !json_parser_load_from_data(parser, text, plen, NULL) ||
        !(root = json_parser_get_root(parser)) || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_BAD_FRAME,
                    "%s payload is not a JSON object", peer_msg_type_name(type));
        return PEER_DECODE_ERROR;
    }

    frame->type = type;
    frame->seq = seq;
    frame->payload = json_object_ref(json_node_get_object(root));
    *consumed = total;
    return PEER_DECODE_OK;
}

void peer_frame_clear(PeerFrame *frame)
{
    g_clear_pointer(&frame->payload, json_object_unref);
}

/* ---- payload field helpers ------------------------------------------------ */

static gboolean get_int(JsonObject *o, const char *name, gint64 *out)
{
    JsonNode *n = json_object_get_member(o, name);

    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
        return FALSE;
    *out = json_node_get_int(n);
    return TRUE;
}

static const char *get_string(JsonObject *o, const char *name)
{
    JsonNode *n = json_object_get_member(o, name);

    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
        return NULL;
    return json_node_get_string(n);
}

/* Absent or anything but true: false. */
static gboolean get_bool(JsonObject *o, const char *name)
{
    JsonNode *n = json_object_get_member(o, name);

    return n && JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_BOOLEAN &&
           json_node_get_boolean(n);
}

/* Names end up in log lines: printable ASCII only, no spaces. */
static gboolean name_valid(const char *s, gsize max)
{
    gsize n;

    if (!s)
        return FALSE;
    n = strlen(s);
    if (n == 0 || n > max)
        return FALSE;
    for (gsize i = 0; i < n; i++)
        if (!g_ascii_isgraph(s[i]))
            return FALSE;
    return TRUE;
}

/* NULL (absent) gives an empty object; any other non-object is an error. */
static JsonObject *get_object_or_empty(JsonObject *o, const char *name, gboolean *ok)
{
    JsonNode *n = json_object_get_member(o, name);

    *ok = TRUE;
    if (!n)
        return json_object_new();
    if (!JSON_NODE_HOLDS_OBJECT(n)) {
        *ok = FALSE;
        return NULL;
    }
    return json_object_ref(json_node_get_object(n));
}

static gboolean get_nonce(JsonObject *o, guint8 out[NONCE_LEN])
{
    const char *s = get_string(o, "nonce");
    g_autofree guchar *raw = NULL;
    gsize len = 0;

    if (!s || strlen(s) != 44 || strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                           "abcdefghijklmnopqrstuvwxyz"
                                           "0123456789+/=") != 44)
        return FALSE;
    raw = g_base64_decode(s, &len);
    if (len != NONCE_LEN)
        return FALSE;
    memcpy(out, raw, NONCE_LEN);
    return TRUE;
}

/* ---- connection state ---------------------------------------------------- */

typedef enum {
    CONN_CONNECTING,   /* client: TCP connect in flight */
    CONN_WAIT_HELLO,   /* server: socket accepted, nothing verified */
    CONN_WAIT_WELCOME, /* client: HELLO sent */
    CONN_WAIT_CONFIRM, /* keys derived; waiting for the peer's first session frame */
    CONN_ESTABLISHED,
    CONN_CLOSED,
} ConnState;

typedef struct {
    guint64 id;
    char *method;
    PeerReplyFunc cb;
    gpointer opaque;
    PeerConn *conn; /* weak while in conn->pending; a reference when deferred */
    GSource *timer;
    guint timeout_ms;
    GError *error; /* deferred failure */
} Pending;

typedef struct {
    PeerConn *conn; /* NULL once the connection gave up on this attempt */
    GCancellable *cancel;
} ConnectOp;

typedef struct {
    GSource base;
    PeerConn *conn;
    gpointer tag;
    GIOCondition events;
} ConnSource;

struct PeerConn {
    gint ref;
    ConnState state;
    gboolean authenticated; /* reached CONN_ESTABLISHED at some point */
    gboolean is_client;
    gboolean host_answered; /* set when closed: see peer_conn_host_answered() */
    PeerServer *server; /* weak; server-side connections only */
    GMainContext *ctx;
    PeerCallbacks cb;
    gpointer opaque;

    GBytes *psk;
    char *my_host;
    char *peer_host;
    char *address;
    char *remote_ip;  /* the other end's address without its port: which path it is */

    ConnectOp *connect_op;
    GSocketConnection *sockconn; /* client side: owns sock */
    GSocket *sock;
    ConnSource *io;
    GSource *hs_timer;
    guint hs_timeout_ms;
    GSource *fail_idle;
    GError *fail_error;

    guint8 nonce_client[NONCE_LEN];
    guint8 nonce_server[NONCE_LEN];
    GBytes *recv_key;
    guint64 recv_seq;

    /*
     * The sending side is shared with the pulse thread, which sends this
     * connection's heartbeats once the session is established: the key,
     * the sequence, the queue and every write to the socket are under
     * send_lock.
     */
    GMutex send_lock;
    GBytes *send_key;
    guint64 send_seq;
    GQueue outq;
    gsize out_off;
    gsize out_bytes;
    gboolean pulsing; /* in the pulse thread's list; main thread only */

    GByteArray *inbuf;

    GHashTable *pending;  /* &Pending.id -> Pending */
    GHashTable *incoming; /* gint64* -> itself: requests we still owe an answer */
    guint64 next_id;
    gint64 last_rx_us;
};

struct PeerServer {
    GMainContext *ctx;
    GSocket *listener;
    GSource *listen_src;
    guint16 port;
    GBytes *psk;
    char *my_host;
    PeerCallbacks cb;
    gpointer opaque;
    guint hs_timeout_ms;
    GPtrArray *conns; /* owned references */
};

static void conn_close(PeerConn *conn, const GError *reason);
static void conn_process_input(PeerConn *conn);

static gboolean conn_dead(PeerConn *conn)
{
    return conn->state == CONN_CLOSED || conn->fail_error != NULL;
}

static const char *conn_host(PeerConn *conn)
{
    return conn->peer_host ? conn->peer_host : "?";
}

static void destroy_source(GSource **s)
{
    if (*s) {
        g_source_destroy(*s);
        g_source_unref(*s);
        *s = NULL;
    }
}

static GSource *attach_timeout(PeerConn *conn, guint ms, GSourceFunc fn, gpointer data)
{
    GSource *s = g_timeout_source_new(ms);

    g_source_set_callback(s, fn, data, NULL);
    g_source_attach(s, conn->ctx);
    return s;
}

static PeerConn *conn_new(gboolean is_client, GBytes *psk, const char *my_host,
                          const PeerCallbacks *cb, gpointer opaque)
{
    PeerConn *conn = g_new0(PeerConn, 1);

    conn->ref = 1;
    conn->is_client = is_client;
    conn->ctx = g_main_context_ref_thread_default();
    if (cb)
        conn->cb = *cb;
    conn->opaque = opaque;
    conn->psk = g_bytes_ref(psk);
    conn->my_host = g_strdup(my_host);
    conn->send_key = g_bytes_ref(psk);
    conn->recv_key = g_bytes_ref(psk);
    conn->inbuf = g_byte_array_new();
    g_queue_init(&conn->outq);
    g_mutex_init(&conn->send_lock);
    conn->pending = g_hash_table_new(g_int64_hash, g_int64_equal);
    conn->incoming = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
    conn->next_id = 1;
    return conn;
}

PeerConn *peer_conn_ref(PeerConn *conn)
{
    g_return_val_if_fail(conn != NULL, NULL);
    conn->ref++;
    return conn;
}

static void conn_finalize(PeerConn *conn)
{
    g_hash_table_unref(conn->pending);
    g_hash_table_unref(conn->incoming);
    g_byte_array_unref(conn->inbuf);
    g_bytes_unref(conn->psk);
    g_bytes_unref(conn->send_key);
    g_bytes_unref(conn->recv_key);
    explicit_bzero(conn->nonce_client, sizeof(conn->nonce_client));
    explicit_bzero(conn->nonce_server, sizeof(conn->nonce_server));
    g_free(conn->my_host);
    g_free(conn->peer_host);
    g_free(conn->address);
    g_free(conn->remote_ip);
    g_main_context_unref(conn->ctx);
    g_mutex_clear(&conn->send_lock);
    g_free(conn);
}

void peer_conn_unref(PeerConn *conn)
{
    if (!conn)
        return;
    g_return_if_fail(conn->ref > 0);
    if (conn->ref == 1 && conn->state != CONN_CLOSED) {
        g_autoptr(GError) e = g_error_new(PEER_ERROR, PEER_ERROR_CLOSED,
                                          "connection released by its owner");

        conn->cb.closed = NULL;
        conn_close(conn, e);
    }
    if (--conn->ref == 0)
        conn_finalize(conn);
}

/* ---- socket I/O ------------------------------------------------------------ */

static void conn_update_watch(PeerConn *conn)
{
    GIOCondition want = G_IO_IN;
    gboolean pending;

    if (!conn->io)
        return;
    g_mutex_lock(&conn->send_lock);
    pending = !g_queue_is_empty(&conn->outq);
    g_mutex_unlock(&conn->send_lock);
    if (pending)
        want |= G_IO_OUT;
    if (want != conn->io->events) {
        g_source_modify_unix_fd(&conn->io->base, conn->io->tag, want);
        conn->io->events = want;
    }
}

/*
 * Writes what the socket takes without blocking; send_lock held.  Returns
 * the errno of a failed send, 0 otherwise (the queue may still hold data).
 */
static int conn_flush_locked(PeerConn *conn)
{
    int fd = g_socket_get_fd(conn->sock);

    while (!g_queue_is_empty(&conn->outq)) {
        GBytes *b = g_queue_peek_head(&conn->outq);
        gsize size;
        const guint8 *data = g_bytes_get_data(b, &size);
        ssize_t n = send(fd, data + conn->out_off, size - conn->out_off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : errno;
        }
        conn->out_off += (gsize)n;
        if (conn->out_off == size) {
            g_bytes_unref(g_queue_pop_head(&conn->outq));
            conn->out_bytes -= size;
            conn->out_off = 0;
        }
    }
    return 0;
}

static void conn_flush(PeerConn *conn)
{
    int error;

    g_mutex_lock(&conn->send_lock);
    error = conn_flush_locked(conn);
    g_mutex_unlock(&conn->send_lock);
    if (error) {
        g_autoptr(GError) reason = g_error_new(PEER_ERROR, PEER_ERROR_IO,
                                               "send to %s failed: %s", conn->address,
                                               g_strerror(error));

        if (conn->state == CONN_ESTABLISHED)
            log_warn(NULL, NULL, "peer %s (%s): connection lost: %s",
                     conn->address, conn_host(conn), reason->message);
        conn_close(conn, reason);
        return;
    }
    conn_update_watch(conn);
}

/*
 * A refused connection or a reset/closed session means the other host's
 * kernel answered: the host is up even if no kvm-ftd serves there.  A
 * powered-off host answers nothing, so failure detection tells the two
 * apart by this.
 */
static gboolean host_answered_error(const GError *e)
{
    return e && (g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED) ||
                 g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED) ||
                 g_error_matches(e, G_IO_ERROR, G_IO_ERROR_BROKEN_PIPE));
}

static void conn_read(PeerConn *conn)
{
    guint old = conn->inbuf->len;
    g_autoptr(GError) e = NULL;
    g_autoptr(GError) reason = NULL;
    gssize n;

    g_byte_array_set_size(conn->inbuf, old + READ_CHUNK);
    n = g_socket_receive(conn->sock, (char *)conn->inbuf->data + old, READ_CHUNK,
                         NULL, &e);
    g_byte_array_set_size(conn->inbuf, old + (n > 0 ? (guint)n : 0));

    if (n < 0 && g_error_matches(e, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        return;
    if (n > 0) {
        conn_process_input(conn);
        return;
    }

    /* EOF or error: the peer is gone. */
    conn->host_answered = n == 0 || host_answered_error(e);
    switch (conn->state) {
    case CONN_WAIT_HELLO:
        reason = g_error_new(PEER_ERROR, PEER_ERROR_REFUSED,
                             "connection closed before the handshake completed%s%s",
                             e ? ": " : "", e ? e->message : "");
        log_info(NULL, NULL, "peer %s: %s", conn->address, reason->message);
        break;
    case CONN_WAIT_WELCOME:
    case CONN_WAIT_CONFIRM:
        reason = g_error_new(PEER_ERROR, PEER_ERROR_REFUSED,
                             "%s hung up during the handshake (wrong key? see the "
                             "log on that host)%s%s",
                             conn->address, e ? ": " : "", e ? e->message : "");
        log_refusal("peer %s refused: hung up during the handshake (wrong key? "
                 "see the log on that host)", conn->address);
        break;
    default:
        reason = g_error_new(PEER_ERROR, PEER_ERROR_IO, "connection to %s lost: %s",
                             conn->address, e ? e->message : "closed by peer");
        log_warn(NULL, NULL, "peer %s (%s): %s", conn->address, conn_host(conn),
                 reason->message);
        break;
    }
    conn_close(conn, reason);
}

void peer_conn_read_waiting(PeerConn *conn)
{
    peer_conn_ref(conn);
    /* Each read takes up to READ_CHUNK: a few cover seconds of heartbeats. */
    for (guint reads = 0; reads < WAITING_READS_MAX && conn->io && !conn_dead(conn) &&
                          (g_socket_condition_check(conn->sock, G_IO_IN | G_IO_HUP | G_IO_ERR));
         reads++)
        conn_read(conn);
    peer_conn_unref(conn);
}

static gboolean conn_source_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
    ConnSource *cs = (ConnSource *)src;
    PeerConn *conn = cs->conn;
    GIOCondition rev = g_source_query_unix_fd(src, cs->tag);

    (void)cb;
    (void)data;
    peer_conn_ref(conn);
    if (rev & G_IO_OUT)
        conn_flush(conn);
    if (!conn_dead(conn) && (rev & (G_IO_IN | G_IO_HUP | G_IO_ERR)))
        conn_read(conn);
    peer_conn_unref(conn);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs conn_source_funcs = {
    .dispatch = conn_source_dispatch,
};

static void conn_start_io(PeerConn *conn)
{
    ConnSource *cs = (ConnSource *)g_source_new(&conn_source_funcs, sizeof(ConnSource));

    g_socket_set_blocking(conn->sock, FALSE);
    /* Heartbeats and replies are small and latency-sensitive (see DESIGN.md). */
    g_socket_set_option(conn->sock, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
    cs->conn = conn;
    cs->events = G_IO_IN;
    cs->tag = g_source_add_unix_fd(&cs->base, g_socket_get_fd(conn->sock), G_IO_IN);
    g_source_attach(&cs->base, conn->ctx);
    conn->io = cs;
    conn_update_watch(conn);
}

/* ---- closing ---------------------------------------------------------------- */

static void pending_free(Pending *p)
{
    destroy_source(&p->timer);
    g_clear_error(&p->error);
    g_free(p->method);
    g_free(p);
}

static void pulse_forget(PeerConn *conn);

static void conn_teardown(PeerConn *conn)
{
    pulse_forget(conn);
    if (conn->connect_op) {
        conn->connect_op->conn = NULL;
        g_cancellable_cancel(conn->connect_op->cancel);
        conn->connect_op = NULL;
    }
    if (conn->io) {
        GSource *s = &conn->io->base;

        conn->io = NULL;
        destroy_source(&s);
    }
    destroy_source(&conn->hs_timer);
    destroy_source(&conn->fail_idle);
    g_clear_error(&conn->fail_error);
    if (conn->sock)
        g_socket_close(conn->sock, NULL);
    g_clear_object(&conn->sock);
    g_clear_object(&conn->sockconn);
    g_queue_clear_full(&conn->outq, (GDestroyNotify)g_bytes_unref);
    conn->out_off = conn->out_bytes = 0;
    g_byte_array_set_size(conn->inbuf, 0);
}

static void server_forget(PeerServer *server, PeerConn *conn);

static void conn_close(PeerConn *conn, const GError *reason)
{
    gboolean notify;
    GList *pend;

    if (conn->state == CONN_CLOSED)
        return;
    notify = conn->is_client || conn->state == CONN_ESTABLISHED;
    conn->state = CONN_CLOSED;
    peer_conn_ref(conn);
    conn_teardown(conn);

    pend = g_hash_table_get_values(conn->pending);
    g_hash_table_steal_all(conn->pending);
    for (GList *l = pend; l; l = l->next) {
        Pending *p = l->data;
        g_autoptr(GError) e = g_error_new(PEER_ERROR, PEER_ERROR_IO,
                                          "%s to %s: connection closed: %s", p->method,
                                          conn->address ? conn->address : "peer",
                                          reason ? reason->message : "closed");

        destroy_source(&p->timer);
        p->cb(conn, NULL, e, p->opaque);
        pending_free(p);
    }
    g_list_free(pend);
    g_hash_table_remove_all(conn->incoming);

    if (notify && conn->cb.closed)
        conn->cb.closed(conn, reason, conn->opaque);
    if (conn->server)
        server_forget(conn->server, conn);
    peer_conn_unref(conn);
}

/*
 * A deliberate close hands the kernel what it will take without blocking:
 * a last reply or event, or the key confirmation the peer still needs.
 */
static void conn_flush_best_effort(PeerConn *conn)
{
    if (!conn->sock || conn_dead(conn))
        return;
    g_mutex_lock(&conn->send_lock);
    conn_flush_locked(conn);
    g_mutex_unlock(&conn->send_lock);
}

static void conn_close_local(PeerConn *conn, const GError *reason)
{
    if (conn->state == CONN_CLOSED)
        return;
    if (conn->state == CONN_ESTABLISHED)
        log_info(NULL, NULL, "peer %s (%s): closing connection: %s", conn->address,
                 conn_host(conn), reason->message);
    conn_flush_best_effort(conn);
    conn_close(conn, reason);
}

void peer_conn_close(PeerConn *conn)
{
    g_autoptr(GError) e = NULL;

    g_return_if_fail(conn != NULL);
    e = g_error_new(PEER_ERROR, PEER_ERROR_CLOSED, "connection closed by this host");
    conn_close_local(conn, e);
}

static gboolean conn_fail_idle_cb(gpointer data)
{
    PeerConn *conn = data;
    g_autoptr(GError) e = g_steal_pointer(&conn->fail_error);

    conn_close(conn, e);
    return G_SOURCE_REMOVE;
}

/*
 * Failures found while the application is calling us (e.g. a full send
 * queue inside peer_conn_reply()) close the connection from an idle
 * callback: `closed` never runs inside the caller's own call.  I/O stops at
 * once so nothing more is read from or written to a failed connection.
 */
static void conn_fail_later(PeerConn *conn, GError *reason)
{
    if (conn_dead(conn)) {
        g_error_free(reason);
        return;
    }
    pulse_forget(conn);
    if (conn->io) {
        GSource *s = &conn->io->base;

        conn->io = NULL;
        destroy_source(&s);
    }
    conn->fail_error = reason;
    conn->fail_idle = g_idle_source_new();
    g_source_set_callback(conn->fail_idle, conn_fail_idle_cb, conn, NULL);
    g_source_attach(conn->fail_idle, conn->ctx);
}

/*
 * "peer ... refused" lines, rate-limited: anyone reaching a listener can
 * provoke them, and a real-time daemon must not spend itself logging.
 */
static void log_refusal(const char *fmt, ...)
{
    static gint64 window_start_us;
    static guint logged, suppressed;
    const gint64 now = g_get_monotonic_time();
    g_autofree char *msg = NULL;
    va_list ap;

    if (now - window_start_us >= REFUSAL_LOG_WINDOW_S * G_USEC_PER_SEC) {
        if (suppressed)
            log_warn(NULL, NULL, "%u more peer refusals were not logged in %d s",
                     suppressed, REFUSAL_LOG_WINDOW_S);
        window_start_us = now;
        logged = suppressed = 0;
    }
    if (logged >= REFUSAL_LOG_BURST) {
        suppressed++;
        return;
    }
    logged++;
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    log_warn(NULL, NULL, "%s", msg);
}

/* A frame that must not be: log for the person on call and hang up. */
static void conn_reject(PeerConn *conn, const GError *err)
{
    const char *msg = err->message;

    switch (conn->state) {
    case CONN_WAIT_HELLO:
    case CONN_WAIT_WELCOME:
        if (g_error_matches(err, PEER_ERROR, PEER_ERROR_BAD_MAC))
            msg = "bad MAC (wrong key?)";
        log_refusal("peer %s refused: %s", conn->address, msg);
        break;
    case CONN_WAIT_CONFIRM:
        if (g_error_matches(err, PEER_ERROR, PEER_ERROR_BAD_MAC))
            msg = "bad MAC on the first session frame (replayed handshake?)";
        log_refusal("peer %s refused: %s", conn->address, msg);
        break;
    default:
        log_warn(NULL, NULL, "peer %s (%s): closing connection: %s", conn->address,
                 conn_host(conn), msg);
        break;
    }
    conn_close(conn, err);
}

static void conn_reject_protocol(PeerConn *conn, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void conn_reject_protocol(PeerConn *conn, const char *fmt, ...)
{
    g_autoptr(GError) e = NULL;
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    e = g_error_new_literal(PEER_ERROR, PEER_ERROR_PROTOCOL, msg);
    conn_reject(conn, e);
}

/* ---- the pulse: heartbeats off the main loop ------------------------------------ */

/*
 * A daemon whose main loop waits (a QMP call to a stalled QEMU, libvirt
 * starting a domain) must not look dead to its peer: it is alive, and the
 * peer taking over would make two live copies.  So heartbeats leave from a
 * thread of their own that does nothing else, at real-time priority when
 * the daemon has one.  It also pushes out whatever the main loop queued,
 * so replies already decided do not wait for the loop either.  A
 * heartbeat says "this host and its kvm-ftd are up", no more: decisions
 * still travel as requests the main loop answers.
 */
/* When the thread last ran, over more than any main-loop wait (QMP's longest deadline). */
#define PULSE_KEPT 1024

static struct {
    GMutex lock;         /* the list; taken before any connection's send_lock */
    GPtrArray *conns;    /* established sessions (weak: each leaves in conn_teardown) */
    gint64 beat_us[PULSE_KEPT]; /* monotonic, a ring; under lock */
    guint64 beats;
    GThread *thread;
    gint running;        /* atomic */
    guint users;
    guint interval_ms;
    guint priority;
} pulse;

static void pulse_beat(PeerConn *conn)
{
    g_autoptr(JsonObject) empty = json_object_new();
    GBytes *frame = NULL;

    g_mutex_lock(&conn->send_lock);
    /* A frame half sent by the main loop goes first: frames never interleave. */
    if (conn_flush_locked(conn) == 0 && g_queue_is_empty(&conn->outq) &&
        conn->send_seq < G_MAXUINT64)
        frame = peer_frame_encode(PEER_MSG_HEARTBEAT, conn->send_seq + 1, empty,
                                  conn->send_key, NULL);
    if (frame) {
        conn->send_seq++;
        conn->out_bytes += g_bytes_get_size(frame);
        g_queue_push_tail(&conn->outq, frame);
        /* What the socket does not take now goes at the next beat or main-loop send. */
        conn_flush_locked(conn);
    }
    g_mutex_unlock(&conn->send_lock);
}

static gpointer pulse_main(gpointer data)
{
    struct timespec next;

    (void)data;
    if (pulse.priority) {
        /* Threads do not inherit the daemon's SCHED_RESET_ON_FORK policy. */
        struct sched_param sp = { .sched_priority = (int)pulse.priority };

        if (pthread_setschedparam(pthread_self(), SCHED_RR, &sp) != 0)
            log_warn(NULL, NULL, "heartbeat thread: no real-time priority %u; heartbeats "
                     "may be late on a busy host", pulse.priority);
    }
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (g_atomic_int_get(&pulse.running)) {
        struct timespec now;

        next.tv_nsec += (long)pulse.interval_ms * 1000000L;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        /* Not scheduled for a whole interval: beat now, no burst to catch up. */
        if ((now.tv_sec - next.tv_sec) * 1000000000LL + (now.tv_nsec - next.tv_nsec) >
            (long long)pulse.interval_ms * 1000000LL)
            next = now;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
        g_mutex_lock(&pulse.lock);
        for (guint i = 0; i < pulse.conns->len; i++)
            pulse_beat(g_ptr_array_index(pulse.conns, i));
        pulse.beat_us[pulse.beats++ % PULSE_KEPT] = g_get_monotonic_time();
        g_mutex_unlock(&pulse.lock);
    }
    return NULL;
}

gboolean peer_pulse_start(guint interval_ms, guint rt_priority, GError **err)
{
    g_return_val_if_fail(interval_ms > 0, FALSE);
    g_mutex_lock(&pulse.lock);
    if (!pulse.conns)
        pulse.conns = g_ptr_array_new();
    if (pulse.users++ == 0) {
        pulse.interval_ms = interval_ms;
        pulse.priority = rt_priority;
        g_atomic_int_set(&pulse.running, 1);
        pulse.thread = g_thread_try_new("kvm-ftd-pulse", pulse_main, NULL, err);
        if (!pulse.thread) {
            pulse.users = 0;
            g_atomic_int_set(&pulse.running, 0);
            g_mutex_unlock(&pulse.lock);
            return FALSE;
        }
    }
    g_mutex_unlock(&pulse.lock);
    return TRUE;
}

void peer_pulse_stop(void)
{
    GThread *thread = NULL;

    g_mutex_lock(&pulse.lock);
    if (pulse.users > 0 && --pulse.users == 0) {
        g_atomic_int_set(&pulse.running, 0);
        thread = g_steal_pointer(&pulse.thread);
    }
    g_mutex_unlock(&pulse.lock);
    if (thread)
        g_thread_join(thread);
}

gint64 peer_pulse_longest_gap_ms(gint64 since_us)
{
    gint64 now = g_get_monotonic_time();
    gint64 longest = -1;
    gint64 later = now;

    g_mutex_lock(&pulse.lock);
    if (pulse.users > 0 && pulse.beats > 0) {
        /* Backwards from now, to the first beat at or before since_us. */
        guint64 kept = MIN(pulse.beats, (guint64)PULSE_KEPT);

        longest = 0;
        for (guint64 i = 0; i < kept; i++) {
            gint64 at = pulse.beat_us[(pulse.beats - 1 - i) % PULSE_KEPT];

            longest = MAX(longest, later - at);
            later = at;
            if (at <= since_us)
                break;
        }
        /* The ring does not reach back to since_us: its oldest gap counts from there. */
        if (later > since_us)
            longest = MAX(longest, later - since_us);
    }
    g_mutex_unlock(&pulse.lock);
    return longest < 0 ? -1 : longest / 1000;
}

static void pulse_add(PeerConn *conn)
{
    g_mutex_lock(&pulse.lock);
    if (!pulse.conns)
        pulse.conns = g_ptr_array_new();
    g_ptr_array_add(pulse.conns, conn);
    g_mutex_unlock(&pulse.lock);
    conn->pulsing = TRUE;
}

/* After this the pulse thread never touches conn again. */
static void pulse_forget(PeerConn *conn)
{
    if (!conn->pulsing)
        return;
    g_mutex_lock(&pulse.lock);
    g_ptr_array_remove_fast(pulse.conns, conn);
    g_mutex_unlock(&pulse.lock);
    conn->pulsing = FALSE;
}

/* ---- sending ------------------------------------------------------------------ */

static gboolean conn_send_frame(PeerConn *conn, PeerMsgType type, JsonObject *obj,
                                GError **err)
{
    GBytes *frame;
    gsize size, queued;
    GError *e = NULL;

    if (conn_dead(conn)) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_IO, "not connected to %s",
                    conn->address ? conn->address : "peer");
        return FALSE;
    }
    g_mutex_lock(&conn->send_lock);
    if (conn->send_seq == G_MAXUINT64) {
        g_mutex_unlock(&conn->send_lock);
        conn_fail_later(conn, g_error_new(PEER_ERROR, PEER_ERROR_IO,
                                          "sequence numbers exhausted"));
        g_set_error(err, PEER_ERROR, PEER_ERROR_IO, "sequence numbers exhausted");
        return FALSE;
    }
    frame = peer_frame_encode(type, conn->send_seq + 1, obj, conn->send_key, err);
    if (!frame) {
        g_mutex_unlock(&conn->send_lock);
        return FALSE;
    }
    size = g_bytes_get_size(frame);
    queued = conn->out_bytes;
    if (queued + size <= PEER_SEND_QUEUE_MAX) {
        conn->send_seq++;
        g_queue_push_tail(&conn->outq, frame);
        conn->out_bytes += size;
        frame = NULL;
    }
    g_mutex_unlock(&conn->send_lock);
    if (frame) {
        e = g_error_new(PEER_ERROR, PEER_ERROR_IO,
                        "send queue to %s full (%zu bytes unsent): peer is not reading",
                        conn->address, queued);
        log_warn(NULL, NULL, "peer %s (%s): closing connection: %s", conn->address,
                 conn_host(conn), e->message);
        if (err)
            *err = g_error_copy(e);
        g_bytes_unref(frame);
        conn_fail_later(conn, e);
        return FALSE;
    }
    conn_update_watch(conn);
    return TRUE;
}

/* ---- handshake ------------------------------------------------------------------ */

static gboolean conn_hs_timeout_cb(gpointer data)
{
    PeerConn *conn = data;
    g_autoptr(GError) e = g_error_new(PEER_ERROR, PEER_ERROR_TIMEOUT,
                                      "no authenticated session with %s within %u ms",
                                      conn->address, conn->hs_timeout_ms);

    g_source_unref(g_steal_pointer(&conn->hs_timer));
    if (conn->state == CONN_CONNECTING)
        log_debug(NULL, NULL, "peer %s", e->message);
    else
        log_refusal("peer %s refused: handshake not completed within %u ms",
                 conn->address, conn->hs_timeout_ms);
    conn_close(conn, e);
    return G_SOURCE_REMOVE;
}

static void conn_switch_to_session(PeerConn *conn)
{
    GBytes *c2s, *s2c;

    derive_keys(conn->psk, conn->nonce_client, conn->nonce_server,
                conn->is_client ? conn->my_host : conn->peer_host,
                conn->is_client ? conn->peer_host : conn->my_host, &c2s, &s2c);
    g_bytes_unref(conn->send_key);
    g_bytes_unref(conn->recv_key);
    conn->send_key = conn->is_client ? c2s : s2c;
    conn->recv_key = conn->is_client ? s2c : c2s;
    conn->send_seq = 0;
    conn->recv_seq = 0;
    conn->state = CONN_WAIT_CONFIRM;

    /* Key confirmation: proves to the peer that we derived the same keys. */
    g_autoptr(JsonObject) hb = json_object_new();
    conn_send_frame(conn, PEER_MSG_HEARTBEAT, hb, NULL);
}

static gboolean parse_hello_common(PeerConn *conn, PeerFrame *f, PeerMsgType want,
                                   guint8 nonce[NONCE_LEN])
{
    const char *host;

    if (f->type != want) {
        conn_reject_protocol(conn, "expected %s, got %s", peer_msg_type_name(want),
                             peer_msg_type_name(f->type));
        return FALSE;
    }
    host = get_string(f->payload, "host");
    if (!name_valid(host, HOST_MAX)) {
        conn_reject_protocol(conn, "%s without a valid \"host\"",
                             peer_msg_type_name(want));
        return FALSE;
    }
    /* Only a relay of this host's own connection speaks with its name. */
    if (strcmp(host, conn->my_host) == 0) {
        conn_reject_protocol(conn, "%s from a host that calls itself %s, this host's own "
                             "name: a relay of this host's own session?",
                             peer_msg_type_name(want), host);
        return FALSE;
    }
    if (!get_nonce(f->payload, nonce)) {
        conn_reject_protocol(conn, "%s without a valid \"nonce\"",
                             peer_msg_type_name(want));
        return FALSE;
    }
    g_free(conn->peer_host);
    conn->peer_host = g_strdup(host);
    return TRUE;
}

static void server_on_hello(PeerConn *conn, PeerFrame *f)
{
    gint64 version;
    g_autoptr(JsonObject) welcome = NULL;
    g_autofree char *nonce_b64 = NULL;
    g_autoptr(GError) e = NULL;

    if (!parse_hello_common(conn, f, PEER_MSG_HELLO, conn->nonce_client))
        return;
    if (!get_int(f->payload, "version", &version) || version != PEER_PROTOCOL_VERSION) {
        conn_reject_protocol(conn, "HELLO from %s asks for an unsupported version",
                             conn_host(conn));
        return;
    }
    if (!random_bytes(conn->nonce_server, NONCE_LEN, &e)) {
        conn_reject(conn, e);
        return;
    }
    nonce_b64 = g_base64_encode(conn->nonce_server, NONCE_LEN);
    welcome = json_object_new();
    json_object_set_string_member(welcome, "host", conn->my_host);
    json_object_set_string_member(welcome, "nonce", nonce_b64);
    if (!conn_send_frame(conn, PEER_MSG_WELCOME, welcome, NULL))
        return;
    conn_switch_to_session(conn);
}

static void client_on_welcome(PeerConn *conn, PeerFrame *f)
{
    if (!parse_hello_common(conn, f, PEER_MSG_WELCOME, conn->nonce_server))
        return;
    conn_switch_to_session(conn);
}

static void conn_established(PeerConn *conn)
{
    conn->state = CONN_ESTABLISHED;
    conn->authenticated = TRUE;
    destroy_source(&conn->hs_timer);
    pulse_add(conn);
    log_info(NULL, NULL, "peer %s (%s): session established", conn->address,
             conn_host(conn));
    if (conn->cb.connected)
        conn->cb.connected(conn, conn->opaque);
}

/* ---- session messages -------------------------------------------------------------- */

static void on_request(PeerConn *conn, JsonObject *o)
{
    gint64 id;
    const char *method = get_string(o, "method");
    g_autoptr(JsonObject) params = NULL;
    gboolean ok;

    if (!get_int(o, "id", &id) || id <= 0) {
        conn_reject_protocol(conn, "REQUEST without a valid \"id\"");
        return;
    }
    if (!name_valid(method, NAME_MAX_LEN)) {
        conn_reject_protocol(conn, "REQUEST %" G_GINT64_FORMAT " without a valid \"method\"", id);
        return;
    }
    params = get_object_or_empty(o, "params", &ok);
    if (!ok) {
        conn_reject_protocol(conn, "REQUEST %s: \"params\" is not an object", method);
        return;
    }
    if (g_hash_table_contains(conn->incoming, &id)) {
        conn_reject_protocol(conn, "REQUEST %s reuses the id %" G_GINT64_FORMAT
                             " of an unanswered request", method, id);
        return;
    }
    if (g_hash_table_size(conn->incoming) >= MAX_INCOMING) {
        conn_reject_protocol(conn, "more than %d unanswered requests", MAX_INCOMING);
        return;
    }
    g_hash_table_add(conn->incoming, g_memdup2(&id, sizeof(id)));
    if (conn->cb.request)
        conn->cb.request(conn, (guint64)id, method, params, conn->opaque);
    else
        peer_conn_reply_error(conn, (guint64)id, "this host takes no requests");
}

static void on_reply(PeerConn *conn, JsonObject *o)
{
    gint64 id;
    Pending *p;
    JsonNode *result = json_object_get_member(o, "result");
    JsonNode *error = json_object_get_member(o, "error");
    const char *msg = get_string(o, "error");
    g_autoptr(GError) e = NULL;

    if (!get_int(o, "id", &id) || id <= 0) {
        conn_reject_protocol(conn, "REPLY without a valid \"id\"");
        return;
    }
    if (!result == !error || (error && !msg)) {
        conn_reject_protocol(conn, "REPLY %" G_GINT64_FORMAT " needs either \"result\" "
                             "or a string \"error\"", id);
        return;
    }
    p = g_hash_table_lookup(conn->pending, &id);
    if (!p) {
        /* Most likely the answer to a request that already timed out. */
        log_debug(NULL, NULL, "peer %s (%s): reply to unknown request %" G_GINT64_FORMAT,
                  conn->address, conn_host(conn), id);
        return;
    }
    g_hash_table_steal(conn->pending, &id);
    destroy_source(&p->timer);
    if (error)
        e = g_error_new_literal(PEER_ERROR, get_bool(o, "restarting") ? PEER_ERROR_RESTARTING
                                                                      : PEER_ERROR_REMOTE, msg);
    p->cb(conn, error ? NULL : result, e, p->opaque);
    pending_free(p);
}

static void on_event(PeerConn *conn, JsonObject *o)
{
    const char *name = get_string(o, "name");
    g_autoptr(JsonObject) data = NULL;
    gboolean ok;

    if (!name_valid(name, NAME_MAX_LEN)) {
        conn_reject_protocol(conn, "EVENT without a valid \"name\"");
        return;
    }
    data = get_object_or_empty(o, "data", &ok);
    if (!ok) {
        conn_reject_protocol(conn, "EVENT %s: \"data\" is not an object", name);
        return;
    }
    if (conn->cb.event)
        conn->cb.event(conn, name, data, conn->opaque);
}

static void conn_dispatch(PeerConn *conn, PeerFrame *f)
{
    switch (f->type) {
    case PEER_MSG_REQUEST:
        on_request(conn, f->payload);
        break;
    case PEER_MSG_REPLY:
        on_reply(conn, f->payload);
        break;
    case PEER_MSG_EVENT:
        on_event(conn, f->payload);
        break;
    case PEER_MSG_HEARTBEAT:
        if (conn->cb.heartbeat)
            conn->cb.heartbeat(conn, f->payload, conn->opaque);
        break;
    default:
        conn_reject_protocol(conn, "unexpected %s in an established session",
                             peer_msg_type_name(f->type));
        break;
    }
}

static void conn_handle_frame(PeerConn *conn, PeerFrame *f)
{
    switch (conn->state) {
    case CONN_WAIT_HELLO:
        server_on_hello(conn, f);
        break;
    case CONN_WAIT_WELCOME:
        client_on_welcome(conn, f);
        break;
    case CONN_WAIT_CONFIRM:
        if (f->type == PEER_MSG_HELLO || f->type == PEER_MSG_WELCOME) {
            conn_reject_protocol(conn, "unexpected %s after the handshake",
                                 peer_msg_type_name(f->type));
            break;
        }
        conn_established(conn);
        if (!conn_dead(conn))
            conn_dispatch(conn, f);
        break;
    case CONN_ESTABLISHED:
        conn_dispatch(conn, f);
        break;
    default:
        break;
    }
}

static void conn_process_input(PeerConn *conn)
{
    gsize off = 0;

    while (!conn_dead(conn) && off < conn->inbuf->len) {
        PeerFrame f;
        gsize used;
        g_autoptr(GError) e = NULL;
        PeerDecodeStatus st = peer_frame_decode(conn->inbuf->data + off,
                                                conn->inbuf->len - off, conn->recv_key,
                                                conn->recv_seq, &f, &used, &e);

        if (st == PEER_DECODE_NEED_MORE)
            break;
        if (st == PEER_DECODE_ERROR) {
            conn_reject(conn, e);
            return;
        }
        off += used;
        conn->recv_seq = f.seq;
        conn->last_rx_us = g_get_monotonic_time();
        conn_handle_frame(conn, &f);
        peer_frame_clear(&f);
    }
    if (conn->state != CONN_CLOSED && off > 0)
        g_byte_array_remove_range(conn->inbuf, 0, (guint)off);
}

/* ---- requests and replies --------------------------------------------------------- */

static gboolean request_timeout_cb(gpointer data)
{
    Pending *p = data;
    PeerConn *conn = peer_conn_ref(p->conn);
    g_autoptr(GError) e = g_error_new(PEER_ERROR, PEER_ERROR_TIMEOUT,
                                      "no reply to %s from %s within %u ms", p->method,
                                      conn->address, p->timeout_ms);

    g_hash_table_steal(conn->pending, &p->id);
    g_source_unref(g_steal_pointer(&p->timer));
    p->cb(conn, NULL, e, p->opaque);
    pending_free(p);
    peer_conn_unref(conn);
    return G_SOURCE_REMOVE;
}

static gboolean request_fail_idle_cb(gpointer data)
{
    Pending *p = data;
    PeerConn *conn = p->conn;

    g_source_unref(g_steal_pointer(&p->timer));
    p->cb(conn, NULL, p->error, p->opaque);
    pending_free(p);
    peer_conn_unref(conn);
    return G_SOURCE_REMOVE;
}

guint64 peer_conn_request(PeerConn *conn, const char *method, JsonObject *params,
                          guint timeout_ms, PeerReplyFunc cb, gpointer opaque)
{
    Pending *p;
    g_autoptr(JsonObject) o = NULL;
    g_autoptr(GError) e = NULL;

    g_return_val_if_fail(conn != NULL && method != NULL && cb != NULL, 0);
    g_return_val_if_fail(timeout_ms > 0, 0);

    p = g_new0(Pending, 1);
    p->method = g_strdup(method);
    p->cb = cb;
    p->opaque = opaque;
    p->timeout_ms = timeout_ms;

    if (conn->state != CONN_ESTABLISHED || conn_dead(conn)) {
        g_set_error(&e, PEER_ERROR, PEER_ERROR_IO, "%s: not connected to %s", method,
                    conn->address ? conn->address : "peer");
    } else {
        p->id = conn->next_id++;
        o = json_object_new();
        json_object_set_int_member(o, "id", (gint64)p->id);
        json_object_set_string_member(o, "method", method);
        json_object_set_object_member(o, "params",
                                      params ? json_object_ref(params) : json_object_new());
        conn_send_frame(conn, PEER_MSG_REQUEST, o, &e);
    }
    if (e) {
        p->conn = peer_conn_ref(conn);
        p->error = g_steal_pointer(&e);
        p->timer = g_idle_source_new();
        g_source_set_callback(p->timer, request_fail_idle_cb, p, NULL);
        g_source_attach(p->timer, conn->ctx);
        return 0;
    }
    p->conn = conn;
    p->timer = attach_timeout(conn, timeout_ms, request_timeout_cb, p);
    g_hash_table_insert(conn->pending, &p->id, p);
    return p->id;
}

static gboolean conn_send_reply(PeerConn *conn, guint64 id, JsonNode *result,
                                const char *msg, gboolean restarting)
{
    g_autoptr(JsonObject) o = json_object_new();
    g_autoptr(GError) e = NULL;
    gint64 key = (gint64)id;

    if (!g_hash_table_remove(conn->incoming, &key) || conn_dead(conn))
        return FALSE;
    json_object_set_int_member(o, "id", (gint64)id);
    if (msg)
        json_object_set_string_member(o, "error", msg);
    if (restarting)
        json_object_set_boolean_member(o, "restarting", TRUE);
    if (!msg)
        json_object_set_member(o, "result",
                               result ? json_node_copy(result) : json_node_new(JSON_NODE_NULL));
    if (conn_send_frame(conn, PEER_MSG_REPLY, o, &e))
        return TRUE;
    if (!g_error_matches(e, PEER_ERROR, PEER_ERROR_BAD_FRAME))
        return FALSE;
    /* The answer does not fit a frame: tell the peer rather than let it time out. */
    g_autoptr(JsonObject) err_obj = json_object_new();
    g_autofree char *text = g_strdup_printf("reply not sendable: %s", e->message);
    json_object_set_int_member(err_obj, "id", (gint64)id);
    json_object_set_string_member(err_obj, "error", text);
    conn_send_frame(conn, PEER_MSG_REPLY, err_obj, NULL);
    return FALSE;
}

gboolean peer_conn_reply(PeerConn *conn, guint64 id, JsonNode *result)
{
    g_return_val_if_fail(conn != NULL, FALSE);
    return conn_send_reply(conn, id, result, NULL, FALSE);
}

gboolean peer_conn_reply_error(PeerConn *conn, guint64 id, const char *msg)
{
    g_return_val_if_fail(conn != NULL && msg != NULL, FALSE);
    return conn_send_reply(conn, id, NULL, msg, FALSE);
}

gboolean peer_conn_reply_restarting(PeerConn *conn, guint64 id, const char *msg)
{
    g_return_val_if_fail(conn != NULL && msg != NULL, FALSE);
    return conn_send_reply(conn, id, NULL, msg, TRUE);
}

gboolean peer_conn_send_event(PeerConn *conn, const char *name, JsonObject *data)
{
    g_autoptr(JsonObject) o = NULL;

    g_return_val_if_fail(conn != NULL && name != NULL, FALSE);
    if (conn->state != CONN_ESTABLISHED)
        return FALSE;
    o = json_object_new();
    json_object_set_string_member(o, "name", name);
    json_object_set_object_member(o, "data", data ? json_object_ref(data) : json_object_new());
    return conn_send_frame(conn, PEER_MSG_EVENT, o, NULL);
}

gboolean peer_conn_send_heartbeat(PeerConn *conn, JsonObject *data)
{
    g_autoptr(JsonObject) empty = NULL;

    g_return_val_if_fail(conn != NULL, FALSE);
    if (conn->state != CONN_ESTABLISHED)
        return FALSE;
    if (!data)
        data = empty = json_object_new();
    return conn_send_frame(conn, PEER_MSG_HEARTBEAT, data, NULL);
}

gboolean peer_conn_is_connected(PeerConn *conn)
{
    g_return_val_if_fail(conn != NULL, FALSE);
    return conn->state == CONN_ESTABLISHED && !conn_dead(conn);
}

const char *peer_conn_get_peer_host(PeerConn *conn)
{
    g_return_val_if_fail(conn != NULL, NULL);
    return conn->authenticated ? conn->peer_host : NULL;
}

const char *peer_conn_get_address(PeerConn *conn)
{
    g_return_val_if_fail(conn != NULL, NULL);
    return conn->address;
}

const char *peer_conn_get_remote_ip(PeerConn *conn)
{
    g_return_val_if_fail(conn != NULL, NULL);
    return conn->remote_ip;
}

gboolean peer_conn_host_answered(PeerConn *conn)
{
    g_return_val_if_fail(conn != NULL, FALSE);
    return conn->host_answered;
}

gint64 peer_conn_get_last_rx_time(PeerConn *conn)
{
    g_return_val_if_fail(conn != NULL, 0);
    return conn->last_rx_us;
}

/* ---- setup shared by both ends ----------------------------------------------------- */

static char *source_ip(GSocketAddress *sa)
{
    if (!G_IS_INET_SOCKET_ADDRESS(sa))
        return g_strdup("?");
    return g_inet_address_to_string(g_inet_socket_address_get_address(
        G_INET_SOCKET_ADDRESS(sa)));
}

static char *format_address(GSocketAddress *sa)
{
    GInetAddress *ia;
    g_autofree char *ip = NULL;

    if (!G_IS_INET_SOCKET_ADDRESS(sa))
        return g_strdup("?");
    ia = g_inet_socket_address_get_address(G_INET_SOCKET_ADDRESS(sa));
    ip = g_inet_address_to_string(ia);
    if (g_inet_address_get_family(ia) == G_SOCKET_FAMILY_IPV6)
        return g_strdup_printf("[%s]:%u", ip,
                               g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(sa)));
    return g_strdup_printf("%s:%u", ip,
                           g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(sa)));
}

static gboolean check_args(GBytes *psk, const char *my_host, GError **err)
{
    if (!psk || g_bytes_get_size(psk) < PEER_PSK_MIN_LEN) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_PROTOCOL,
                    "peer key must be at least %d bytes", PEER_PSK_MIN_LEN);
        return FALSE;
    }
    if (!name_valid(my_host, HOST_MAX)) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_PROTOCOL,
                    "host name \"%s\" is not a valid peer name (1-%d printable "
                    "characters, no spaces)", my_host ? my_host : "", HOST_MAX);
        return FALSE;
    }
    return TRUE;
}

/* ---- client ------------------------------------------------------------------------ */

static void client_connected_cb(GObject *src, GAsyncResult *res, gpointer data)
{
    ConnectOp *op = data;
    PeerConn *conn = op->conn;
    g_autoptr(GError) e = NULL;
    g_autoptr(GSocketConnection) sc =
        g_socket_client_connect_finish(G_SOCKET_CLIENT(src), res, &e);
    g_autoptr(GSocketAddress) remote = NULL;
    g_autoptr(JsonObject) hello = NULL;
    g_autofree char *nonce_b64 = NULL;

    g_object_unref(op->cancel);
    g_free(op);
    if (!conn)
        return; /* the connection was closed meanwhile */
    conn->connect_op = NULL;

    if (!sc) {
        g_autoptr(GError) reason = NULL;

        conn->host_answered = host_answered_error(e);
        reason = g_error_new(PEER_ERROR, PEER_ERROR_IO,
                                               "cannot connect to %s: %s",
                                               conn->address, e->message);
        log_debug(NULL, NULL, "peer %s", reason->message);
        conn_close(conn, reason);
        return;
    }
    conn->sockconn = g_steal_pointer(&sc);
    conn->sock = g_object_ref(g_socket_connection_get_socket(conn->sockconn));
    remote = g_socket_get_remote_address(conn->sock, NULL);
    if (remote) {
        g_free(conn->address);
        conn->address = format_address(remote);
    }
    conn->state = CONN_WAIT_WELCOME;
    conn_start_io(conn);

    if (!random_bytes(conn->nonce_client, NONCE_LEN, &e)) {
        conn_close(conn, e);
        return;
    }
    nonce_b64 = g_base64_encode(conn->nonce_client, NONCE_LEN);
    hello = json_object_new();
    json_object_set_string_member(hello, "host", conn->my_host);
    json_object_set_string_member(hello, "nonce", nonce_b64);
    json_object_set_int_member(hello, "version", PEER_PROTOCOL_VERSION);
    conn_send_frame(conn, PEER_MSG_HELLO, hello, NULL);
}

PeerConn *peer_connect(const char *addr, guint16 port, GBytes *psk, const char *my_host,
                       guint timeout_ms, const PeerCallbacks *cb, gpointer opaque,
                       GError **err)
{
    PeerConn *conn;
    g_autoptr(GSocketClient) client = NULL;
    g_autoptr(GSocketConnectable) target = NULL;
    ConnectOp *op;

    g_return_val_if_fail(addr != NULL, NULL);
    if (!check_args(psk, my_host, err))
        return NULL;
    if (timeout_ms == 0) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_PROTOCOL, "connect timeout must be > 0");
        return NULL;
    }

    conn = conn_new(TRUE, psk, my_host, cb, opaque);
    conn->state = CONN_CONNECTING;
    conn->address = strchr(addr, ':') ? g_strdup_printf("[%s]:%u", addr, port)
                                      : g_strdup_printf("%s:%u", addr, port);
    conn->remote_ip = g_strdup(addr);
    conn->hs_timeout_ms = timeout_ms;
    conn->hs_timer = attach_timeout(conn, timeout_ms, conn_hs_timeout_cb, conn);

    op = g_new0(ConnectOp, 1);
    op->conn = conn;
    op->cancel = g_cancellable_new();
    conn->connect_op = op;

    client = g_socket_client_new();
    /* The dedicated link never goes through a proxy, whatever the environment says. */
    g_socket_client_set_enable_proxy(client, FALSE);
    target = g_network_address_new(addr, port);
    g_main_context_push_thread_default(conn->ctx);
    g_socket_client_connect_async(client, target, op->cancel, client_connected_cb, op);
    g_main_context_pop_thread_default(conn->ctx);
    return conn;
}

/* ---- server ------------------------------------------------------------------------ */

static void server_forget(PeerServer *server, PeerConn *conn)
{
    conn->server = NULL;
    if (server->conns)
        g_ptr_array_remove_fast(server->conns, conn); /* drops the server's reference */
}

/* Connections in handshake, from that address only unless it is NULL. */
static guint server_handshaking(PeerServer *server, const char *from)
{
    guint n = 0;

    for (guint i = 0; i < server->conns->len; i++) {
        PeerConn *c = g_ptr_array_index(server->conns, i);

        if (c->state != CONN_ESTABLISHED && c->state != CONN_CLOSED &&
            (!from || g_strcmp0(c->remote_ip, from) == 0))
            n++;
    }
    return n;
}

static gboolean server_incoming_cb(GSocket *listener, GIOCondition cond, gpointer data)
{
    PeerServer *server = data;

    (void)cond;
    for (;;) {
        g_autoptr(GError) e = NULL;
        g_autoptr(GSocket) s = g_socket_accept(listener, NULL, &e);
        g_autoptr(GSocketAddress) remote = NULL;
        g_autofree char *address = NULL;
        g_autofree char *source = NULL;
        PeerConn *conn;

        if (!s) {
            if (!g_error_matches(e, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                log_warn(NULL, NULL, "peer link: accept failed: %s", e->message);
            break;
        }
        remote = g_socket_get_remote_address(s, NULL);
        address = remote ? format_address(remote) : g_strdup("?");
        source = remote ? source_ip(remote) : g_strdup("?");
        if (server_handshaking(server, NULL) >= MAX_HANDSHAKES) {
            log_refusal("peer %s refused: %d connections already in handshake", address,
                        MAX_HANDSHAKES);
            g_socket_close(s, NULL);
            continue;
        }
        if (server_handshaking(server, source) >= MAX_HANDSHAKES_PER_SOURCE) {
            log_refusal("peer %s refused: %d connections already in handshake from %s",
                        address, MAX_HANDSHAKES_PER_SOURCE, source);
            g_socket_close(s, NULL);
            continue;
        }
        log_debug(NULL, NULL, "peer %s: incoming connection", address);

        conn = conn_new(FALSE, server->psk, server->my_host, &server->cb, server->opaque);
        conn->state = CONN_WAIT_HELLO;
        conn->server = server;
        conn->sock = g_steal_pointer(&s);
        conn->address = g_steal_pointer(&address);
        conn->remote_ip = g_steal_pointer(&source);
        conn->hs_timeout_ms = server->hs_timeout_ms;
        conn->hs_timer = attach_timeout(conn, server->hs_timeout_ms, conn_hs_timeout_cb, conn);
        g_ptr_array_add(server->conns, conn);
        conn_start_io(conn);
    }
    return G_SOURCE_CONTINUE;
}

PeerServer *peer_server_new(const char *addr, guint16 port, GBytes *psk,
                            const char *my_host, const PeerCallbacks *cb,
                            gpointer opaque, GError **err)
{
    g_autoptr(GInetAddress) ia = NULL;
    g_autoptr(GSocketAddress) sa = NULL;
    g_autoptr(GSocketAddress) bound = NULL;
    g_autoptr(GSocket) sock = NULL;
    PeerServer *server;

    g_return_val_if_fail(addr != NULL, NULL);
    if (!check_args(psk, my_host, err))
        return NULL;
    ia = g_inet_address_new_from_string(addr);
    if (!ia) {
        g_set_error(err, PEER_ERROR, PEER_ERROR_PROTOCOL,
                    "peer link address \"%s\" is not an IP address", addr);
        return NULL;
    }
    sa = g_inet_socket_address_new(ia, port);
    sock = g_socket_new(g_inet_address_get_family(ia), G_SOCKET_TYPE_STREAM,
                        G_SOCKET_PROTOCOL_TCP, err);
    if (!sock)
        return NULL;
    g_socket_set_blocking(sock, FALSE);
    g_socket_set_listen_backlog(sock, 16);
    if (!g_socket_bind(sock, sa, TRUE, err) || !g_socket_listen(sock, err)) {
        g_prefix_error(err, "cannot listen on %s:%u: ", addr, port);
        return NULL;
    }
    bound = g_socket_get_local_address(sock, err);
    if (!bound)
        return NULL;

    server = g_new0(PeerServer, 1);
    server->ctx = g_main_context_ref_thread_default();
    server->listener = g_steal_pointer(&sock);
    server->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    server->psk = g_bytes_ref(psk);
    server->my_host = g_strdup(my_host);
    if (cb)
        server->cb = *cb;
    server->opaque = opaque;
    server->hs_timeout_ms = PEER_HANDSHAKE_TIMEOUT_MS;
    server->conns = g_ptr_array_new_with_free_func((GDestroyNotify)peer_conn_unref);
    server->listen_src = g_socket_create_source(server->listener, G_IO_IN, NULL);
    g_source_set_callback(server->listen_src, G_SOURCE_FUNC(server_incoming_cb), server,
                          NULL);
    g_source_attach(server->listen_src, server->ctx);
    log_info(NULL, NULL, "peer link: listening on %s:%u", addr, server->port);
    return server;
}

guint16 peer_server_get_port(PeerServer *server)
{
    g_return_val_if_fail(server != NULL, 0);
    return server->port;
}

void peer_server_set_handshake_timeout(PeerServer *server, guint timeout_ms)
{
    g_return_if_fail(server != NULL && timeout_ms > 0);
    server->hs_timeout_ms = timeout_ms;
}

void peer_server_free(PeerServer *server)
{
    GPtrArray *conns;
    g_autoptr(GError) e = NULL;

    if (!server)
        return;
    destroy_source(&server->listen_src);
    g_socket_close(server->listener, NULL);
    g_object_unref(server->listener);

    e = g_error_new(PEER_ERROR, PEER_ERROR_CLOSED, "peer link server shut down");
    conns = g_steal_pointer(&server->conns);
    for (guint i = 0; i < conns->len; i++) {
        PeerConn *c = g_ptr_array_index(conns, i);

        c->server = NULL;
        conn_close_local(c, e);
    }
    g_ptr_array_unref(conns);

    g_bytes_unref(server->psk);
    g_free(server->my_host);
    g_main_context_unref(server->ctx);
    g_free(server);
}

/* ---- for tests and fuzzing only (peer.h) ------------------------------------------ */

PeerConn *peer_conn_new_detached(gboolean is_client, GBytes *psk, const char *my_host,
                                 const PeerCallbacks *cb, gpointer opaque)
{
    PeerConn *conn;

    if (!check_args(psk, my_host, NULL))
        return NULL;
    conn = conn_new(is_client, psk, my_host, cb, opaque);
    conn->address = g_strdup("detached");
    if (is_client) {
        /* As client_connected_cb() leaves it, but for the HELLO frame itself. */
        conn->state = CONN_WAIT_WELCOME;
        if (!random_bytes(conn->nonce_client, NONCE_LEN, NULL)) {
            peer_conn_unref(conn);
            return NULL;
        }
    } else {
        conn->state = CONN_WAIT_HELLO;
    }
    return conn;
}

void peer_conn_feed(PeerConn *conn, const guint8 *data, gsize len)
{
    g_return_if_fail(conn != NULL && conn->sock == NULL && len <= G_MAXUINT);
    /* What conn_source_dispatch() and conn_read() do with bytes from the socket. */
    if (conn_dead(conn) || len == 0)
        return;
    peer_conn_ref(conn);
    g_byte_array_append(conn->inbuf, data, (guint)len);
    conn_process_input(conn);
    peer_conn_unref(conn);
}

GBytes *peer_conn_get_recv_key(PeerConn *conn, guint64 *last_seq)
{
    g_return_val_if_fail(conn != NULL, NULL);
    if (last_seq)
        *last_seq = conn->recv_seq;
    return conn->recv_key;
}
