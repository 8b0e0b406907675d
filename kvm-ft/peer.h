/*
 * peer.h - the protocol between the two kvm-ftd daemons over the dedicated link
 *
 * Every byte that arrives from the link is decoded and validated in one
 * place (peer_frame_decode()); nothing above this module ever sees an
 * unauthenticated, out-of-order or malformed message.
 *
 * Frame (all integers big-endian):
 *
 *   magic "KFT1" u32 | version u16 | type u16 | seq u64 | length u32
 *   payload: a UTF-8 JSON object, `length` bytes, at most 1 MiB
 *   HMAC-SHA256(key, header || payload), 32 bytes
 *
 * Handshake: the connecting side sends HELLO {host, nonce, version} and the
 * listening side answers WELCOME {host, nonce}, both MAC'd with the
 * pre-shared key (PSK).  Each side then derives
 *
 *   session  = HMAC-SHA256(PSK, "kvm-ft session v2" || nonce_client || nonce_server
 *                               || client host NUL || server host NUL)
 *   key_c2s  = HMAC-SHA256(session, "kvm-ft c2s v1")
 *   key_s2c  = HMAC-SHA256(session, "kvm-ft s2c v1")
 *
 * and MACs every later frame with the key of its direction (so a frame
 * cannot be reflected back to its sender), seq restarting at 1 in each
 * direction.  Each side sends one HEARTBEAT right after deriving the keys;
 * a session counts as established only when the peer's first session frame
 * verifies, which proves the peer holds the PSK *and* took part in this
 * exchange: a replayed HELLO or WELCOME never gets that far, because the
 * other side's nonce is fresh.  A HELLO or WELCOME in this host's own name
 * is refused: only a relay of its own session would send one.
 *
 * Everything runs on the GMainContext that is thread-default when the
 * server or connection is created, and never blocks it; only the
 * heartbeats leave from their own thread (peer_pulse_start()).
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#define PEER_ERROR (peer_error_quark())
GQuark peer_error_quark(void);

typedef enum {
    PEER_ERROR_BAD_FRAME,   /* bad magic, unknown type, oversized, not a JSON object */
    PEER_ERROR_BAD_VERSION, /* the other host runs an incompatible kvm-ftd */
    PEER_ERROR_BAD_MAC,     /* wrong key, or tampered with on the wire */
    PEER_ERROR_BAD_SEQ,     /* replayed or reordered frame */
    PEER_ERROR_PROTOCOL,    /* authentic frame that breaks the protocol */
    PEER_ERROR_REFUSED,     /* the peer hung up during the handshake */
    PEER_ERROR_TIMEOUT,     /* handshake or request deadline passed */
    PEER_ERROR_REMOTE,      /* the peer answered a request with an error */
    PEER_ERROR_RESTARTING,  /* the peer's kvm-ftd restarted and is not ready: ask again */
    PEER_ERROR_IO,          /* connection lost, not connected, or send queue full */
    PEER_ERROR_CLOSED,      /* closed by this side (peer_conn_close() etc.) */
} PeerError;

#define PEER_PROTOCOL_VERSION 1
#define PEER_FRAME_HEADER_LEN 20
#define PEER_FRAME_MAC_LEN 32
#define PEER_FRAME_MAX_PAYLOAD (1024 * 1024)

/* A shorter PSK is a configuration mistake, not a key. */
#define PEER_PSK_MIN_LEN 16

/*
 * Bytes queued for a peer that is not reading.  Beyond this the connection
 * is closed: a stuck peer must not make this daemon run out of memory, and
 * for a failure detector a peer that cannot take 8 MiB is as good as gone.
 */
#define PEER_SEND_QUEUE_MAX (8 * 1024 * 1024)

typedef enum {
    PEER_MSG_HELLO = 1,
    PEER_MSG_WELCOME,
    PEER_MSG_REQUEST,
    PEER_MSG_REPLY,
    PEER_MSG_EVENT,
    PEER_MSG_HEARTBEAT,
} PeerMsgType;

const char *peer_msg_type_name(PeerMsgType type);

/* ---- framing: pure functions, no sockets ------------------------------- */

typedef enum {
    PEER_DECODE_OK,
    PEER_DECODE_NEED_MORE,
    PEER_DECODE_ERROR,
} PeerDecodeStatus;

typedef struct {
    PeerMsgType type;
    guint64 seq;
    JsonObject *payload; /* owned; release with peer_frame_clear() */
} PeerFrame;

/* Fails only when the payload does not fit the frame rules (size, UTF-8). */
GBytes *peer_frame_encode(PeerMsgType type, guint64 seq, JsonObject *payload,
                          GBytes *key, GError **err);

/*
 * Decodes the frame at the start of buf.  Errors that the header alone
 * reveals (magic, version, type, length) are reported as soon as those
 * bytes are in, without waiting for a payload that may never come.
 * The MAC is checked before the seq and before the payload is parsed, so
 * no JSON parser ever runs on unauthenticated bytes.  A frame is accepted
 * only if seq == last_seq + 1: nothing replayed, reordered or left out.
 */
PeerDecodeStatus peer_frame_decode(const guint8 *buf, gsize len, GBytes *key,
                                   guint64 last_seq, PeerFrame *frame,
                                   gsize *consumed, GError **err);
void peer_frame_clear(PeerFrame *frame);

/* ---- connections -------------------------------------------------------- */

typedef struct PeerServer PeerServer;
typedef struct PeerConn PeerConn;

/*
 * All callbacks are optional and run from the main context.  `conn` is
 * borrowed for the duration of the call; any peer_conn_* function may be
 * called from inside a callback, including peer_conn_close().  JSON
 * handed to callbacks is borrowed and immutable (sealed): it comes straight
 * from the decoder; ref it to keep it, copy it to change it.
 */
typedef struct {
    /* The session is authenticated; peer_conn_get_peer_host() is valid. */
    void (*connected)(PeerConn *conn, gpointer opaque);
    /*
     * Called exactly once per connection the application has seen (every
     * client connection; server connections that reached `connected`),
     * whatever the cause, including peer_conn_close().  Outstanding
     * requests have already been failed when it runs.
     */
    void (*closed)(PeerConn *conn, const GError *reason, gpointer opaque);
    /*
     * Must be answered, now or later, with peer_conn_reply() or
     * peer_conn_reply_error() (later matters: preparing a secondary takes
     * tens of seconds).  Without a handler, requests are answered with an
     * error.
     */
    void (*request)(PeerConn *conn, guint64 id, const char *method,
                    JsonObject *params, gpointer opaque);
    void (*event)(PeerConn *conn, const char *name, JsonObject *data,
                  gpointer opaque);
    void (*heartbeat)(PeerConn *conn, JsonObject *data, gpointer opaque);
} PeerCallbacks;

/*
 * Exactly one of result / error is set.  result is borrowed (JSON null when
 * the peer replied with null).  Called exactly once per request, never from
 * inside peer_conn_request().
 */
typedef void (*PeerReplyFunc)(PeerConn *conn, JsonNode *result,
                              const GError *error, gpointer opaque);

/*
 * Listens on addr (an IP literal; "0.0.0.0" or "::" for all) and port (0:
 * ephemeral, see peer_server_get_port()).  The server owns its connections:
 * they are borrowed in callbacks; take a peer_conn_ref() to keep one past
 * its `closed` callback.  Refused peers are logged with their address.
 */
PeerServer *peer_server_new(const char *addr, guint16 port, GBytes *psk,
                            const char *my_host, const PeerCallbacks *cb,
                            gpointer opaque, GError **err);
guint16 peer_server_get_port(PeerServer *server);
/* How long an accepted socket may take to complete the handshake (default 5 s). */
void peer_server_set_handshake_timeout(PeerServer *server, guint timeout_ms);
/* Closes every connection (each established one gets its `closed`). */
void peer_server_free(PeerServer *server);

/*
 * Starts connecting; returns at once.  Later exactly one of: `connected`
 * (then `closed` when the session ends), or `closed` alone (connect failed,
 * refused, or no session within timeout_ms → PEER_ERROR_TIMEOUT).  addr may
 * be a host name or an IP literal.  Fails synchronously only on bad
 * arguments.  The caller owns the returned reference.
 */
PeerConn *peer_connect(const char *addr, guint16 port, GBytes *psk,
                       const char *my_host, guint timeout_ms,
                       const PeerCallbacks *cb, gpointer opaque, GError **err);

PeerConn *peer_conn_ref(PeerConn *conn);
/*
 * Dropping the last reference to an open connection closes it without a
 * `closed` callback (its owner is gone); pending request callbacks still
 * run with PEER_ERROR_IO so their opaque data can be freed.
 */
void peer_conn_unref(PeerConn *conn);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PeerConn, peer_conn_unref)

/*
 * Queued frames go out if the socket takes them without blocking; the rest
 * are dropped (a close must not wait on a peer that may be dead).
 */
void peer_conn_close(PeerConn *conn);

gboolean peer_conn_is_connected(PeerConn *conn);
/*
 * The name the peer announced in HELLO/WELCOME.  Only the PSK vouches for
 * it: any holder of the key can claim any name.  NULL before `connected`;
 * still valid in and after `closed`, for the log line.
 */
const char *peer_conn_get_peer_host(PeerConn *conn);
/* "ip:port" (IPv6: "[ip]:port") of the other end, for log lines. */
const char *peer_conn_get_address(PeerConn *conn);
/*
 * The other end's IP address as configured or as it connected from, without
 * the port: which of the peer's paths (dedicated link, LAN) a session takes.
 */
const char *peer_conn_get_remote_ip(PeerConn *conn);
/*
 * After a close: whether the other host's kernel answered (refused the
 * connection, reset or closed it).  A host that answers is up, whatever
 * happened to its kvm-ftd; a powered-off host never does.
 */
gboolean peer_conn_host_answered(PeerConn *conn);
/* g_get_monotonic_time() of the last authenticated frame: failure detection. */
gint64 peer_conn_get_last_rx_time(PeerConn *conn);
/*
 * Reads and handles, now, what already waits in the connection's socket
 * (a bounded amount): after the main loop was held, the failure detector
 * must see the frames the peer sent meanwhile before it judges.
 */
void peer_conn_read_waiting(PeerConn *conn);

/*
 * Sends REQUEST {"id", "method", "params"}; params is borrowed and may be
 * NULL ({}).  timeout_ms must be > 0: every call to the peer needs a
 * deadline.  Returns the request id, or 0 if it failed at once (not
 * connected, too large): cb still gets the error, from an idle callback.
 */
guint64 peer_conn_request(PeerConn *conn, const char *method,
                          JsonObject *params, guint timeout_ms,
                          PeerReplyFunc cb, gpointer opaque);
/*
 * Answer a request delivered to PeerCallbacks.request.  result is borrowed
 * (NULL sends JSON null).  FALSE if id is not an unanswered request of this
 * connection (already answered, or the connection is gone).
 */
gboolean peer_conn_reply(PeerConn *conn, guint64 id, JsonNode *result);
gboolean peer_conn_reply_error(PeerConn *conn, guint64 id, const char *msg);
/*
 * An error that says "ask again soon": this kvm-ftd restarted and has not
 * re-attached to what the request is about.  The asker gets
 * PEER_ERROR_RESTARTING (REPLY {"id", "error", "restarting": true}).
 */
gboolean peer_conn_reply_restarting(PeerConn *conn, guint64 id, const char *msg);

/* One-way.  data is borrowed, may be NULL.  FALSE if not sent. */
gboolean peer_conn_send_event(PeerConn *conn, const char *name, JsonObject *data);
gboolean peer_conn_send_heartbeat(PeerConn *conn, JsonObject *data);

/*
 * Heartbeats on every established session, every interval_ms, from a
 * thread of their own (at SCHED_RR rt_priority unless 0), so that a main
 * loop that waits on QEMU or libvirt does not look like a dead host.
 * Process-wide; each start needs a stop (the first start's settings hold).
 */
gboolean peer_pulse_start(guint interval_ms, guint rt_priority, GError **err);
void peer_pulse_stop(void);

/*
 * The longest time since since_us (monotonic) that the heartbeat thread
 * did not run, up to now, in ms; -1 if it is not running.  What tells a
 * main loop that only waited (heartbeats went on: the peer saw this host
 * alive) from a daemon that was stopped or not scheduled (the peer may
 * have taken it for dead).
 */
gint64 peer_pulse_longest_gap_ms(gint64 since_us);

/* ---- for tests and fuzzing only (tests/fuzz/fuzz-peer-frame.c) ------------ */

/*
 * A connection without a socket, as one is once TCP is up: a server-side
 * one waits for HELLO, a client-side one for WELCOME (its HELLO nonce is
 * drawn; the HELLO frame itself is not sent).  peer_conn_feed() hands it
 * bytes as if read from the link: they go through peer_frame_decode() and
 * the handshake and session state machine exactly as socket input does.
 * Frames it sends are queued and never leave.  NULL on bad arguments (see
 * peer_connect()).  Release with peer_conn_unref().
 */
PeerConn *peer_conn_new_detached(gboolean is_client, GBytes *psk, const char *my_host,
                                 const PeerCallbacks *cb, gpointer opaque);
void peer_conn_feed(PeerConn *conn, const guint8 *data, gsize len);
/*
 * The key the next incoming frame must be MAC'd with (borrowed, valid until
 * the next feed) and the seq of the last frame accepted: what a peer holding
 * the PSK would use, so a fuzzer can get past the MAC to the JSON.
 */
GBytes *peer_conn_get_recv_key(PeerConn *conn, guint64 *last_seq);
