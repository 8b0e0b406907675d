/*
 * fuzz-peer-frame.c - libFuzzer harness of the peer protocol's decoder and handshake
 *
 * Everything the other kvm-ftd sends goes through peer_frame_decode() and
 * the connection's state machine (HELLO/WELCOME, key confirmation, then
 * REQUEST, REPLY, EVENT, HEARTBEAT).  The harness feeds a socketless
 * connection (peer_conn_new_detached()) the way bytes from the link are fed.
 *
 * Input: one mode byte, then the bytes to send.
 *   mode bit 0    0: this side is the server (waits for HELLO); 1: the client
 *                 (HELLO sent, waits for WELCOME)
 *   mode bit 1    raw: the rest goes to the connection as it is (what anyone
 *                 who reaches the port can send: nothing gets past the MAC)
 *   mode bits 2-7 n: fed n bytes at a time (0: a frame at once), to split
 *                 frames the way reads do
 * Otherwise the rest is records separated by "\n--\n", each sent as one
 * frame the way a peer holding the PSK would: MAC'd with the key the
 * connection expects now (the PSK, then the session key derived from the
 * nonces of the records' HELLO/WELCOME) and the next seq, so that the JSON
 * parser, the handshake and the session handlers see the payload.  Record:
 *   ['~'] TYPE PAYLOAD
 *   TYPE  H W Q R E B: HELLO WELCOME REQUEST REPLY EVENT HEARTBEAT; the
 *         lower-case letter: the same with a broken MAC; any other byte:
 *         that raw type number (unknown types are refused)
 *   '~'   the seq of the last frame again (a replay)
 *   PAYLOAD  the frame's JSON text, verbatim
 */
#include "fuzz-common.h"

#include <string.h>

#include "peer.h"

#define MY_HOST "fuzz-self"
#define SEP "\n--\n"

static const char psk_text[] = "fuzz-psk-0123456789abcdef-0123456789";

typedef struct {
    gboolean closed;
    guint replies;
    guint requests_sent;
} State;

static void reply_cb(PeerConn *conn, JsonNode *result, const GError *error, gpointer opaque)
{
    State *st = opaque;

    (void)conn;
    /* peer.h: exactly one of result / error. */
    g_assert((result != NULL) != (error != NULL));
    st->replies++;
}

static void on_connected(PeerConn *conn, gpointer opaque)
{
    State *st = opaque;
    g_autoptr(JsonObject) params = json_object_new();

    g_assert(peer_conn_is_connected(conn));
    g_assert(peer_conn_get_peer_host(conn) != NULL);
    /* Request id 1: a REPLY record with "id": 1 answers it. */
    json_object_set_string_member(params, "guest", "web1");
    /* Answered exactly once, also when it fails at once (then from an idle callback). */
    peer_conn_request(conn, "fuzz.ping", params, 60000, reply_cb, st);
    st->requests_sent++;
    peer_conn_send_event(conn, "fuzz.event", NULL);
    peer_conn_send_heartbeat(conn, NULL);
}

static void on_closed(PeerConn *conn, const GError *reason, gpointer opaque)
{
    State *st = opaque;

    (void)conn;
    (void)reason;
    g_assert(!st->closed);
    st->closed = TRUE;
}

static void on_request(PeerConn *conn, guint64 id, const char *method, JsonObject *params,
                       gpointer opaque)
{
    g_autoptr(JsonNode) result = NULL;

    (void)opaque;
    g_assert(id > 0 && method && params);
    if (g_str_has_prefix(method, "later"))
        return; /* owed until the connection goes */
    if (g_str_has_prefix(method, "error")) {
        peer_conn_reply_error(conn, id, method);
        return;
    }
    result = json_node_init_object(json_node_alloc(), params);
    /* May fail: params that do not fit a frame once re-encoded get an error reply. */
    peer_conn_reply(conn, id, result);
    /* peer.h: answered once only. */
    g_assert(!peer_conn_reply(conn, id, result));
}

static void on_event(PeerConn *conn, const char *name, JsonObject *data, gpointer opaque)
{
    (void)conn;
    (void)opaque;
    g_assert(name && data);
    (void)json_object_get_size(data);
}

static void on_heartbeat(PeerConn *conn, JsonObject *data, gpointer opaque)
{
    (void)conn;
    (void)opaque;
    g_assert(data);
}

static const PeerCallbacks callbacks = {
    .connected = on_connected,
    .closed = on_closed,
    .request = on_request,
    .event = on_event,
    .heartbeat = on_heartbeat,
};

/*
 * The decoder alone, on a buffer of exactly len bytes: the connection's
 * input buffer has slack, in which ASan would not see a read past the end.
 * Decodes frame after frame as conn_process_input() does; returns how many.
 */
static guint decode_exact(const guint8 *data, gsize len, GBytes *key, guint64 last_seq)
{
    g_autofree guint8 *buf = g_memdup2(data, len);
    gsize off = 0;
    guint n = 0;

    while (off < len) {
        PeerFrame f;
        gsize used = 0;
        g_autoptr(GError) e = NULL;
        PeerDecodeStatus st = peer_frame_decode(buf + off, len - off, key, last_seq, &f,
                                                &used, &e);

        /* peer.h: an error says why; a frame is whole, next in sequence, an object. */
        g_assert((st == PEER_DECODE_ERROR) == (e != NULL));
        if (st != PEER_DECODE_OK) {
            g_assert(f.payload == NULL);
            break;
        }
        g_assert(used >= PEER_FRAME_HEADER_LEN + PEER_FRAME_MAC_LEN && used <= len - off);
        g_assert(f.seq == last_seq + 1 && f.payload != NULL);
        last_seq = f.seq;
        off += used;
        n++;
        peer_frame_clear(&f);
    }
    return n;
}

static void feed(PeerConn *conn, const guint8 *p, gsize len, gsize chunk)
{
    if (chunk == 0)
        chunk = len;
    for (gsize off = 0; off < len; off += chunk)
        peer_conn_feed(conn, p + off, MIN(chunk, len - off));
}

static void put32(guint8 *p, guint32 v)
{
    p[0] = (guint8)(v >> 24);
    p[1] = (guint8)(v >> 16);
    p[2] = (guint8)(v >> 8);
    p[3] = (guint8)v;
}

/* One record as the frame a PSK holder would send now (peer.h's layout). */
static void send_record(PeerConn *conn, const guint8 *rec, gsize len, gsize chunk)
{
    static const char types[] = "HWQREB";
    gboolean replay = FALSE, bad_mac = FALSE;
    guint16 type;
    guint64 last_seq, seq;
    GBytes *key = peer_conn_get_recv_key(conn, &last_seq);
    const char *t;
    g_autoptr(GByteArray) frame = g_byte_array_new();
    g_autoptr(GHmac) mac = NULL;
    guint8 hdr[PEER_FRAME_HEADER_LEN], digest[PEER_FRAME_MAC_LEN];
    gsize klen, dlen = sizeof(digest);
    const guint8 *k;

    if (len > 0 && rec[0] == '~') {
        replay = TRUE;
        rec++;
        len--;
    }
    if (len == 0)
        return;
    if (rec[0] && (t = strchr(types, rec[0]))) {
        type = (guint16)(t - types + PEER_MSG_HELLO);
    } else if (rec[0] && (t = strchr(types, g_ascii_toupper(rec[0])))) {
        type = (guint16)(t - types + PEER_MSG_HELLO);
        bad_mac = TRUE;
    } else {
        type = rec[0];
    }
    rec++;
    len--;
    if (len > PEER_FRAME_MAX_PAYLOAD)
        return;
    seq = replay ? last_seq : last_seq + 1;

    memcpy(hdr, "KFT1", 4);
    hdr[4] = 0;
    hdr[5] = PEER_PROTOCOL_VERSION;
    hdr[6] = (guint8)(type >> 8);
    hdr[7] = (guint8)type;
    put32(hdr + 8, (guint32)(seq >> 32));
    put32(hdr + 12, (guint32)seq);
    put32(hdr + 16, (guint32)len);
    k = g_bytes_get_data(key, &klen);
    mac = g_hmac_new(G_CHECKSUM_SHA256, k, klen);
    g_hmac_update(mac, hdr, sizeof(hdr));
    g_hmac_update(mac, rec, (gssize)len);
    g_hmac_get_digest(mac, digest, &dlen);
    if (bad_mac)
        digest[len % sizeof(digest)] ^= 0x01;

    g_byte_array_append(frame, hdr, sizeof(hdr));
    g_byte_array_append(frame, rec, (guint)len);
    g_byte_array_append(frame, digest, sizeof(digest));
    /* One byte short, a frame is never complete. */
    g_assert(decode_exact(frame->data, frame->len - 1, key, last_seq) == 0);
    (void)decode_exact(frame->data, frame->len, key, last_seq);
    feed(conn, frame->data, frame->len, chunk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GBytes) psk = g_bytes_new_static(psk_text, strlen(psk_text));
    State st = { 0 };
    PeerConn *conn;
    gboolean client, raw;
    gsize chunk;

    fuzz_init();
    if (size == 0 || size > 1024 * 1024)
        return 0;
    client = data[0] & 1;
    raw = (data[0] & 2) != 0;
    chunk = data[0] >> 2;
    data++;
    size--;

    conn = peer_conn_new_detached(client, psk, MY_HOST, &callbacks, &st);
    g_assert(conn);
    if (raw) {
        (void)decode_exact(data, size, psk, 0);
        feed(conn, data, size, chunk);
    } else {
        const guint8 *p = data, *end = data + size;

        while (p < end) {
            const guint8 *sep = memmem(p, (gsize)(end - p), SEP, strlen(SEP));
            const guint8 *rec_end = sep ? sep : end;

            send_record(conn, p, (gsize)(rec_end - p), chunk);
            p = sep ? sep + strlen(SEP) : end;
        }
    }
    peer_conn_close(conn);
    /* peer.h: every client connection, and every server one that reached `connected`. */
    g_assert(st.closed || !client);
    peer_conn_unref(conn);
    /* Failures reported from idle callbacks hold references until they ran. */
    fuzz_drain_context(NULL);
    g_assert(st.replies == st.requests_sent);
    return 0;
}
