/* daemon.c - what one kvm-ftd holds, and how requests reach its guests */
#include "daemon.h"

#include <errno.h>
#include <string.h>

#include "decision.h"
#include "definitions.h"
#include "guest.h"
#include "ha.h"
#include "journal.h"
#include "jsontext.h"
#include "log.h"
#include "loopwait.h"
#include "summary.h"

/* Judging rounds remembered for the detector's lateness: 164 s at the default 20 ms. */
#define JUDGE_HISTORY 8192
/* The "detector" request names this many of the main loop's longest waits. */
#define DETECTOR_WAITS_SHOWN 10

typedef struct {
    char *method;
    JsonObject *params;
    guint timeout_ms;
    PeerReplyFunc cb;
    gpointer opaque;
} PendingCall;

/*
 * Our outgoing session to one peer address, and calls waiting for it.  A
 * watched link is kept connected and is one path of failure detection:
 * evidence_us is the last time the kvm-ftd at addr showed it was up (an
 * authenticated session or frame); answered_us the last time only its host's
 * kernel did, which anyone on the path can forge.
 */
typedef struct {
    Daemon *d;
    char *addr;
    PeerConn *conn;
    GQueue pending;
    gboolean watched;
    gint64 evidence_us;
    gint64 answered_us; /* last refusal or close by the peer host's kernel */
    guint reconnect_id;
} PeerLink;

struct Daemon {
    FtConfig *cfg;
    Virt *virt;
    PeerServer *server;
    ControlServer *control;
    GMainLoop *loop;
    GHashTable *guests;   /* name -> FtGuest */
    Definitions *defs;
    gboolean quitting;
    GHashTable *links;    /* address -> PeerLink */
    GPtrArray *sessions;  /* authenticated PeerConn, both directions */
    PeerServer *lan_server;
    Witness *witness;     /* NULL: none configured */
    Ha *ha;
    gboolean pulsing;
    guint judge_id;
    gint64 last_judge_us;
    /*
     * How late each of the latest judging rounds ran (ms past its interval):
     * the main loop's stalls as the failure detector feels them.
     */
    double judge_late_ms[JUDGE_HISTORY];
    gint64 judge_at_us[JUDGE_HISTORY];   /* wall clock, for "since" */
    gboolean judge_skipped[JUDGE_HISTORY];
    guint64 judge_rounds;
};

#define DAEMON_ERROR g_quark_from_static_string("kvmft-daemon-error")

static void pending_free(PendingCall *call)
{
    g_free(call->method);
    json_object_unref(call->params);
    g_free(call);
}

/* What a peer call gets that daemon_free() ends or that comes after it began. */
static GError *shutting_down(void)
{
    return g_error_new(PEER_ERROR, PEER_ERROR_CLOSED, "kvm-ftd is shutting down");
}

static void link_free(PeerLink *link)
{
    PendingCall *call;
    g_autoptr(GError) err = shutting_down();

    while ((call = g_queue_pop_head(&link->pending))) {
        call->cb(NULL, NULL, err, call->opaque);
        pending_free(call);
    }
    if (link->reconnect_id)
        g_source_remove(link->reconnect_id);
    if (link->conn)
        peer_conn_unref(link->conn);
    g_free(link->addr);
    g_free(link);
}

/* ---- peer requests -------------------------------------------------------- */

void daemon_reply_error(PeerConn *conn, guint64 id, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    log_warn(NULL, NULL, "refused request from %s: %s",
             peer_conn_get_peer_host(conn), msg);
    peer_conn_reply_error(conn, id, msg);
}

static gboolean is_int(JsonNode *node, gint64 min)
{
    return JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_INT64 &&
           json_node_get_int(node) >= min;
}

/* What the primary says of its disk copy (all optional): well-formed or refused. */
static gboolean copy_params_valid(JsonObject *params)
{
    JsonNode *sizes = json_object_get_member(params, "disk-bytes");
    JsonNode *wait = json_object_get_member(params, "wait-ms");
    JsonNode *gen = json_object_get_member(params, "generation");

    if (sizes) {
        if (!JSON_NODE_HOLDS_ARRAY(sizes))
            return FALSE;
        for (guint i = 0; i < json_array_get_length(json_node_get_array(sizes)); i++) {
            if (!is_int(json_array_get_element(json_node_get_array(sizes), i), 1))
                return FALSE;
        }
    }
    if (wait && !is_int(wait, 0))
        return FALSE;
    return !gen || json_node_is_uuid(gen);
}

/*
 * Both ends of every replication channel must agree on TLS, or the channels
 * never connect and the protection fails on a timeout that says nothing:
 * the primary says what it runs.  NULL if it agrees (or did not say).
 */
static char *replication_tls_mismatch(Daemon *d, JsonObject *params, const char *sender)
{
    JsonNode *tls = json_object_get_member(params, "replication-tls");
    gboolean theirs;

    if (!tls)
        return NULL;
    if (!JSON_NODE_HOLDS_VALUE(tls) || json_node_get_value_type(tls) != G_TYPE_BOOLEAN)
        return g_strdup("prepare-secondary: replication-tls must be true or false");
    theirs = json_node_get_boolean(tls);
    if (theirs == d->cfg->replication_tls)
        return NULL;
    return g_strdup_printf("the replication channels run %s on %s ([replication] tls = %s) "
                           "but %s on %s (tls = %s): set the same on both hosts",
                           theirs ? "on TLS" : "in clear", sender, theirs ? "yes" : "no",
                           d->cfg->replication_tls ? "on TLS" : "in clear",
                           d->cfg->host_name, d->cfg->replication_tls ? "yes" : "no");
}

static void handle_prepare_secondary(Daemon *d, PeerConn *conn, guint64 id,
                                     JsonObject *params);

/*
 * A request about a guest this host re-attaches to after a restart is
 * answered "restarting": an authenticated answer, so the peer knows this
 * host lives, and asks again (decision.c) rather than act on a guess.
 * TRUE if it was answered so.
 */
static gboolean answered_restarting(Daemon *d, PeerConn *conn, guint64 id, FtGuest *g,
                                    const char *what)
{
    g_autofree char *msg = NULL;

    if (!g || guest_state(g) != GUEST_REATTACHING)
        return FALSE;
    msg = g_strdup_printf("kvm-ftd on %s restarted and is re-attaching to guest '%s': ask "
                          "again", d->cfg->host_name, guest_name(g));
    log_info(guest_name(g), NULL, "'%s' from %s while re-attaching: answered \"restarting\"",
             what, peer_conn_get_peer_host(conn));
    peer_conn_reply_restarting(conn, id, msg);
    return TRUE;
}

/* A prepare-secondary waiting for QEMU's version, or for this host's copy to stop. */
typedef struct {
    Daemon *d;
    PeerConn *conn;
    guint64 id;
    JsonObject *params;
} DeferredPrepare;

static void deferred_prepare_free(gpointer data)
{
    DeferredPrepare *p = data;

    peer_conn_unref(p->conn);
    json_object_unref(p->params);
    g_free(p);
}

static gboolean prepare_after_stop(gpointer data)
{
    DeferredPrepare *p = data;

    if (peer_conn_is_connected(p->conn))
        handle_prepare_secondary(p->d, p->conn, p->id, p->params);
    return G_SOURCE_REMOVE;
}

/* With this host's QEMU version, asked in the libvirt thread. */
static void prepare_with_version(const char *mine, const GError *error, gpointer data)
{
    DeferredPrepare *p = data;
    Daemon *d = p->d;
    PeerConn *conn = p->conn;
    guint64 id = p->id;
    JsonObject *params = p->params;
    const char *xml = json_object_get_string_member(params, "domain-xml");
    const char *primary = json_object_get_string_member(params, "primary");
    const char *sender = peer_conn_get_peer_host(conn);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;
    g_autofree char *why = NULL;
    FtGuest *g;

    if (error) {
        daemon_reply_error(conn, id, "%s", error->message);
        return;
    }
    /* The secondary loads the primary's state: the same QEMU must run both. */
    if (!definitions_same_qemu(d->cfg, json_object_get_string_member(params, "qemu-version"),
                               mine, sender, &err) ||
        !(def = definitions_from_peer(d->defs, xml, sender, &err))) {
        daemon_reply_error(conn, id, "%s", err->message);
        return;
    }
    /* The primary it names must be this host's peer too. */
    why = definitions_pairing_error(d->defs, def, primary);
    if (why) {
        daemon_reply_error(conn, id, "%s", why);
        return;
    }
    g = g_hash_table_lookup(d->guests, def->name);
    if (answered_restarting(d, conn, id, g, "prepare-secondary"))
        return;
    if (g && guest_state(g) == GUEST_STOPPING) {
        /* Its last copy is being destroyed here (seconds at most): then the answer. */
        DeferredPrepare *later = g_new0(DeferredPrepare, 1);

        *later = (DeferredPrepare){ d, peer_conn_ref(conn), id, json_object_ref(params) };
        guest_when_stopped(g, prepare_after_stop, later, deferred_prepare_free);
        return;
    }
    if (g && guest_is_busy(g)) {
        daemon_reply_error(conn, id, "guest '%s' is already %s here as %s", def->name,
                           guest_state_name(guest_state(g)), ft_role_name(guest_role(g)));
        return;
    }
    g = guest_new(d, g_steal_pointer(&def), xml, FT_ROLE_SECONDARY);
    g_hash_table_replace(d->guests, g_strdup(guest_name(g)), g);
    definitions_forget_refusal(d->defs, guest_name(g));
    guest_prepare_secondary(g, conn, id, params);
}

static void handle_prepare_secondary(Daemon *d, PeerConn *conn, guint64 id,
                                     JsonObject *params)
{
    const char *xml = json_object_get_string_member_with_default(params, "domain-xml", NULL);
    const char *primary = json_object_get_string_member_with_default(params, "primary", NULL);
    const char *version = json_object_get_string_member_with_default(params, "qemu-version",
                                                                     NULL);
    g_autofree char *why = NULL;
    DeferredPrepare *p;

    if (!xml || !primary || !version) {
        daemon_reply_error(conn, id, "prepare-secondary needs domain-xml, primary and "
                           "qemu-version");
        return;
    }
    if (!copy_params_valid(params)) {
        daemon_reply_error(conn, id, "prepare-secondary: disk-bytes must be a list of "
                           "positive sizes, wait-ms a number of milliseconds, generation "
                           "a UUID");
        return;
    }
    why = replication_tls_mismatch(d, params, peer_conn_get_peer_host(conn));
    if (why) {
        daemon_reply_error(conn, id, "%s", why);
        return;
    }
    p = g_new0(DeferredPrepare, 1);
    *p = (DeferredPrepare){ d, peer_conn_ref(conn), id, json_object_ref(params) };
    definitions_qemu_version(d->defs, prepare_with_version, p, deferred_prepare_free);
}

/*
 * Whether the host at the other end of conn is the guest's peer: the key
 * is shared, so another host holding it must not steer this guest.
 * Refused (and answered) if not.
 */
static gboolean sent_by_peer_of(Daemon *d, PeerConn *conn, guint64 id, FtGuest *g,
                                const char *method)
{
    const char *sender = peer_conn_get_peer_host(conn);
    const FtHost *peer = ftdef_peer(guest_def(g), d->cfg->host_name);

    if (peer && g_strcmp0(sender, peer->name) == 0)
        return TRUE;
    daemon_reply_error(conn, id, "%s for guest '%s' from %s, which is not its peer (%s)",
                       method, guest_name(g), sender, peer ? peer->name : "none");
    return FALSE;
}

static void handle_stop_secondary(Daemon *d, PeerConn *conn, guint64 id,
                                  JsonObject *params)
{
    const char *name = json_object_get_string_member_with_default(params, "guest", "");
    const char *reason = json_object_get_string_member_with_default(params, "reason",
                                                                    "primary gave up");
    FtGuest *g = g_hash_table_lookup(d->guests, name);
    g_autoptr(JsonNode) ok = json_node_new(JSON_NODE_NULL);
    g_autofree char *why = g_strdup_printf("primary %s: %s",
                                           peer_conn_get_peer_host(conn), reason);

    if (g && (!sent_by_peer_of(d, conn, id, g, "stop-secondary") ||
              answered_restarting(d, conn, id, g, "stop-secondary")))
        return;
    if (g)
        guest_handle(g, GUEST_EV_STOP_ASKED, why);
    peer_conn_reply(conn, id, ok);
}

/* A request about one guest of this host, answered null or with the error of act. */
static void handle_guest_request(Daemon *d, PeerConn *conn, guint64 id, const char *method,
                                 JsonObject *params,
                                 gboolean (*act)(FtGuest *g, JsonObject *params,
                                                 GError **err))
{
    const char *name = json_object_get_string_member_with_default(params, "guest", "");
    FtGuest *g = g_hash_table_lookup(d->guests, name);
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ok = json_node_new(JSON_NODE_NULL);

    if (!g) {
        daemon_reply_error(conn, id, "no guest '%s' on %s", name, d->cfg->host_name);
        return;
    }
    if (!sent_by_peer_of(d, conn, id, g, method) || answered_restarting(d, conn, id, g, method))
        return;
    if (!act(g, params, &err)) {
        daemon_reply_error(conn, id, "%s", err->message);
        return;
    }
    peer_conn_reply(conn, id, ok);
}

static gboolean receive_copy(FtGuest *g, JsonObject *params, GError **err)
{
    (void)params;
    return guest_receive_copy(g, err);
}

static gboolean set_output(FtGuest *g, JsonObject *params, GError **err)
{
    return guest_set_output(g, json_object_get_string_member_with_default(params, "mode", ""),
                            err);
}

/*
 * take-over, secondary-lost or stand-down from the peer (decision.h).  One
 * from another protection of the guest than this host's is refused: the
 * peer hears why.
 */
static void handle_decision(Daemon *d, PeerConn *conn, guint64 id, JsonObject *params)
{
    const char *name = json_object_get_string_member_with_default(params, "guest", "");
    const char *decision = json_object_get_string_member_with_default(params, "decision", "");
    const char *generation = json_object_get_string_member_with_default(params, "generation",
                                                                        NULL);
    FtGuest *g = g_hash_table_lookup(d->guests, name);
    g_autoptr(JsonNode) ok = json_node_new(JSON_NODE_NULL);
    const char *own;

    if (!g) {
        daemon_reply_error(conn, id, "'%s' for guest '%s', which %s does not run", decision,
                           name, d->cfg->host_name);
        return;
    }
    if (!sent_by_peer_of(d, conn, id, g, decision) ||
        answered_restarting(d, conn, id, g, decision))
        return;
    own = guest_generation(g);
    if (generation && own && strcmp(generation, own) != 0) {
        daemon_reply_error(conn, id, "'%s' for guest '%s' belongs to protection %s; %s is "
                           "at %s", decision, name, generation, d->cfg->host_name, own);
        return;
    }
    guest_peer_event(g, peer_conn_get_peer_host(conn), decision, params);
    peer_conn_reply(conn, id, ok);
}

/* What this host runs of a guest: asked by a peer that woke from a stall. */
static void handle_guest_role(Daemon *d, PeerConn *conn, guint64 id, JsonObject *params)
{
    const char *name = json_object_get_string_member_with_default(params, "guest", "");
    FtGuest *g = g_hash_table_lookup(d->guests, name);
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) answer = NULL;

    if (answered_restarting(d, conn, id, g, "guest-role"))
        return;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "role");
    json_builder_add_string_value(b, g && guest_is_busy(g) ? ft_role_name(guest_role(g))
                                                           : "none");
    json_builder_set_member_name(b, "state");
    json_builder_add_string_value(b, guest_state_name(g ? guest_state(g) : GUEST_STOPPED));
    json_builder_end_object(b);
    answer = json_builder_get_root(b);
    peer_conn_reply(conn, id, answer);
}

FtGuest *daemon_find_guest(Daemon *d, const char *name)
{
    return g_hash_table_lookup(d->guests, name);
}

static void on_request(PeerConn *conn, guint64 id, const char *method,
                       JsonObject *params, gpointer opaque)
{
    Daemon *d = opaque;

    if (strcmp(method, "prepare-secondary") == 0)
        handle_prepare_secondary(d, conn, id, params);
    else if (strcmp(method, "stop-secondary") == 0)
        handle_stop_secondary(d, conn, id, params);
    else if (strcmp(method, "receive-copy") == 0)
        handle_guest_request(d, conn, id, method, params, receive_copy);
    else if (strcmp(method, "set-output") == 0)
        handle_guest_request(d, conn, id, method, params, set_output);
    else if (strcmp(method, "guest-role") == 0)
        handle_guest_role(d, conn, id, params);
    else if (strcmp(method, "decision") == 0)
        handle_decision(d, conn, id, params);
    else if (!definitions_peer_request(d->defs, conn, id, method, params))
        daemon_reply_error(conn, id, "unknown request '%s'", method);
}

static void session_up(Daemon *d, PeerConn *conn)
{
    g_ptr_array_add(d->sessions, peer_conn_ref(conn));
    log_info(NULL, NULL, "peer %s connected from %s", peer_conn_get_peer_host(conn),
             peer_conn_get_address(conn));
    definitions_peer_up(d->defs, peer_conn_get_peer_host(conn));
}

static void session_down(Daemon *d, PeerConn *conn, const GError *reason)
{
    if (g_ptr_array_remove(d->sessions, conn))
        log_info(NULL, NULL, "peer %s (%s) disconnected: %s",
                 peer_conn_get_peer_host(conn), peer_conn_get_address(conn),
                 reason ? reason->message : "closed");
}

static void on_server_connected(PeerConn *conn, gpointer opaque)
{
    session_up(opaque, conn);
}

static void on_server_closed(PeerConn *conn, const GError *reason, gpointer opaque)
{
    session_down(opaque, conn, reason);
}

static const PeerCallbacks server_callbacks = {
    .connected = on_server_connected,
    .closed = on_server_closed,
    .request = on_request,
};

static void on_link_connected(PeerConn *conn, gpointer opaque)
{
    PeerLink *link = opaque;
    PendingCall *call;

    link->evidence_us = g_get_monotonic_time();
    session_up(link->d, conn);
    while ((call = g_queue_pop_head(&link->pending))) {
        peer_conn_request(conn, call->method, call->params, call->timeout_ms,
                          call->cb, call->opaque);
        pending_free(call);
    }
}

static void link_connect(PeerLink *link);

static gboolean reconnect(gpointer opaque)
{
    PeerLink *link = opaque;

    link->reconnect_id = 0;
    if (!link->conn)
        link_connect(link);
    return G_SOURCE_REMOVE;
}

static void on_link_closed(PeerConn *conn, const GError *reason, gpointer opaque)
{
    PeerLink *link = opaque;
    PendingCall *call;

    session_down(link->d, conn, reason);
    if (peer_conn_host_answered(conn))
        link->answered_us = g_get_monotonic_time();
    while ((call = g_queue_pop_head(&link->pending))) {
        call->cb(conn, NULL, reason, call->opaque);
        pending_free(call);
    }
    if (link->conn == conn) {
        link->conn = NULL;
        peer_conn_unref(conn);
    }
    /* Retry well inside the detection window, so a refusal keeps counting. */
    if (link->watched && !link->reconnect_id)
        link->reconnect_id = g_timeout_add(link->d->cfg->heartbeat_ms * 2, reconnect, link);
}

static void on_link_request(PeerConn *conn, guint64 id, const char *method,
                            JsonObject *params, gpointer opaque)
{
    PeerLink *link = opaque;

    on_request(conn, id, method, params, link->d);
}

static PeerLink *get_link(Daemon *d, const char *addr);

static const PeerCallbacks link_callbacks = {
    .connected = on_link_connected,
    .closed = on_link_closed,
    .request = on_link_request,
};

void daemon_peer_call(Daemon *d, const char *addr, const char *method,
                      JsonObject *params, guint timeout_ms, PeerReplyFunc cb,
                      gpointer opaque)
{
    PeerLink *link;
    PendingCall *call;

    /*
     * From a callback daemon_free() runs: the links are being freed or
     * gone, so no call starts.
     */
    if (d->quitting) {
        g_autoptr(GError) err = shutting_down();

        cb(NULL, NULL, err, opaque);
        return;
    }
    link = get_link(d, addr);
    if (link->conn && peer_conn_is_connected(link->conn)) {
        peer_conn_request(link->conn, method, params, timeout_ms, cb, opaque);
        return;
    }

    call = g_new0(PendingCall, 1);
    call->method = g_strdup(method);
    call->params = json_object_ref(params);
    call->timeout_ms = timeout_ms;
    call->cb = cb;
    call->opaque = opaque;
    g_queue_push_tail(&link->pending, call);
    if (!link->conn && !link->reconnect_id)
        link_connect(link);
}

static void link_connect(PeerLink *link)
{
    Daemon *d = link->d;
    g_autoptr(GError) err = NULL;
    PendingCall *call;

    link->conn = peer_connect(link->addr, d->cfg->listen_port, d->cfg->key,
                              d->cfg->host_name, d->cfg->peer_timeout_ms,
                              &link_callbacks, link, &err);
    if (!link->conn) {
        while ((call = g_queue_pop_head(&link->pending))) {
            call->cb(NULL, NULL, err, call->opaque);
            pending_free(call);
        }
    }
}

static PeerLink *get_link(Daemon *d, const char *addr)
{
    PeerLink *link = g_hash_table_lookup(d->links, addr);

    if (!link) {
        link = g_new0(PeerLink, 1);
        link->d = d;
        link->addr = g_strdup(addr);
        link->evidence_us = g_get_monotonic_time();
        g_queue_init(&link->pending);
        g_hash_table_insert(d->links, link->addr, link);
    }
    return link;
}

void daemon_watch_peer(Daemon *d, const char *addr)
{
    PeerLink *link;

    if (!addr)
        return;
    link = get_link(d, addr);
    if (!link->watched) {
        link->watched = TRUE;
        /* Detection starts now, not from whenever the link was last used. */
        link->evidence_us = g_get_monotonic_time();
    }
    if (!link->conn && !link->reconnect_id)
        link_connect(link);
}

/*
 * The last authenticated frame from the peer on any session of this path:
 * ours to its address and its own to us.  Each is one TCP stream, and one
 * lost segment can hold everything behind it for TCP's retransmission
 * timeout (200 ms at least, longer than the detection window): two streams
 * stall together far more rarely than one (test_failover lossy-link).
 */
static gint64 path_last_frame_us(Daemon *d, const char *addr)
{
    gint64 last = 0;

    /*
     * Plain string equality, as peer.c's per-source limits use: the peer's
     * addresses are IPv4 dotted quads validated by inet_pton (ftdef.c), the
     * one spelling GLib prints a connecting address in.
     */
    for (guint i = 0; i < d->sessions->len; i++) {
        PeerConn *conn = g_ptr_array_index(d->sessions, i);

        if (peer_conn_is_connected(conn) && g_strcmp0(peer_conn_get_remote_ip(conn), addr) == 0)
            last = MAX(last, peer_conn_get_last_rx_time(conn));
    }
    return last;
}

gint64 daemon_peer_heard_us(Daemon *d, const char *addr)
{
    PeerLink *link = addr ? g_hash_table_lookup(d->links, addr) : NULL;

    if (!link)
        return 0;
    link->evidence_us = MAX(link->evidence_us, path_last_frame_us(d, addr));
    return link->evidence_us;
}

PeerPath daemon_peer_path(Daemon *d, const char *addr, guint windows)
{
    gint64 window = (gint64)config_window_ms(d->cfg) * windows * 1000;
    /*
     * Silence is measured up to the start of the judging round, never to
     * the clock: a round that began on time and then stalled (SIGSTOP, a
     * core taken away) would otherwise count its own stall as the peer's
     * silence, with the peer's frames waiting unread in the sockets -- a
     * woken secondary took over beside the primary that way.  The round
     * after a stall is late: it is skipped, or it judges only once it has
     * read what waits (judge_tick()).
     */
    gint64 now = d->last_judge_us;
    PeerLink *link;

    if (!addr)
        return PEER_PATH_NONE;
    link = g_hash_table_lookup(d->links, addr);
    if (!link)
        return PEER_PATH_SILENT;
    /* A frame, a session coming up, or watching beginning: within the window. */
    if (now - daemon_peer_heard_us(d, addr) <= window)
        return PEER_PATH_ALIVE;
    if (!(link->conn && peer_conn_is_connected(link->conn)) && now - link->answered_us <= window)
        return PEER_PATH_HOST_UP;
    return PEER_PATH_SILENT;
}

const char *peer_path_name(PeerPath path)
{
    switch (path) {
    case PEER_PATH_ALIVE:
        return "alive";
    case PEER_PATH_HOST_UP:
        return "host up, kvm-ftd down";
    case PEER_PATH_SILENT:
        return "silent";
    case PEER_PATH_NONE:
        break;
    }
    return "not configured";
}

gint64 daemon_stalled_ms(Daemon *d)
{
    gint64 late = g_get_monotonic_time() - d->last_judge_us - (gint64)d->cfg->heartbeat_ms * 1000;

    return MAX(late, 0) / 1000;
}

/* What waits unread in every session's socket, read now. */
static void read_waiting_frames(Daemon *d)
{
    g_autoptr(GPtrArray) sessions = g_ptr_array_new_with_free_func(
        (GDestroyNotify)peer_conn_unref);

    /* Reading may close a session, which leaves d->sessions. */
    for (guint i = 0; i < d->sessions->len; i++)
        g_ptr_array_add(sessions, peer_conn_ref(g_ptr_array_index(d->sessions, i)));
    for (guint i = 0; i < sessions->len; i++)
        peer_conn_read_waiting(g_ptr_array_index(sessions, i));
}

/*
 * Every guest judges its peer, after reading what waits in the sockets:
 * frames that came while the main loop was busy are evidence too.  The
 * round runs at high priority: a callback that waits longer than its own
 * interval (a status poll on a QEMU that holds its lock) is ready again
 * the moment it returns, and at a lower priority the round never ran --
 * for a minute, while a QEMU sent its last pass to a secondary that had
 * lost power (test_reprotect secondary-dies-after-switch-over).  When this
 * daemon itself was not scheduled for a while (its heartbeats stopped
 * too), silence proves nothing about the peer, which may have acted on
 * ours: that round is skipped, and the next one judges on fresh input.
 * When the main loop only waited, the heartbeat thread kept beating, and
 * the round judges.
 */
static gboolean judge_tick(gpointer opaque)
{
    Daemon *d = opaque;
    gint64 now = g_get_monotonic_time();
    gint64 late = now - d->last_judge_us - (gint64)d->cfg->heartbeat_ms * 1000;
    const gint64 previous_us = d->last_judge_us;
    const guint slot = (guint)(d->judge_rounds++ % JUDGE_HISTORY);
    GHashTableIter it;
    gpointer value;

    d->last_judge_us = now;
    d->judge_at_us[slot] = g_get_real_time();
    d->judge_late_ms[slot] = MAX(late, 0) / 1000.0;
    d->judge_skipped[slot] = FALSE;
    if (late > (gint64)d->cfg->heartbeat_ms * 1000 * 2) {
        g_autofree char *cause = loopwait_longest_since(previous_us);
        /*
         * What the peer saw: a main loop that only waited kept beating from
         * the heartbeat thread, and nothing needs confirming; a daemon that
         * was stopped did not.
         */
        gint64 unheard_ms = peer_pulse_longest_gap_ms(previous_us);
        gboolean beats_went_on = unheard_ms >= 0 && unheard_ms * 1000 < late / 2;

        log_warn(NULL, NULL, "failure detection ran %" G_GINT64_FORMAT " ms late "
                 "(kvm-ftd %s%s; heartbeats %s): %s", late / 1000,
                 cause ? "waited longest on " : "busy or not scheduled", cause ? cause : "",
                 unheard_ms < 0 ? "not running" : beats_went_on ? "went on" : "stopped too",
                 beats_went_on ? "it judges" : "it skips a round");
        g_hash_table_iter_init(&it, d->guests);
        while (g_hash_table_iter_next(&it, NULL, &value))
            guest_stalled(value, unheard_ms < 0 ? late / 1000 : unheard_ms);
        if (!beats_went_on) {
            d->judge_skipped[slot] = TRUE;
            return G_SOURCE_CONTINUE;
        }
    }
    read_waiting_frames(d);
    d->last_judge_us = g_get_monotonic_time();
    g_hash_table_iter_init(&it, d->guests);
    while (g_hash_table_iter_next(&it, NULL, &value))
        guest_check_peer(value);
    return G_SOURCE_CONTINUE;
}

gboolean daemon_peer_connected(Daemon *d, const char *host)
{
    for (guint i = 0; i < d->sessions->len; i++) {
        PeerConn *conn = g_ptr_array_index(d->sessions, i);

        if (peer_conn_is_connected(conn) &&
            g_strcmp0(peer_conn_get_peer_host(conn), host) == 0)
            return TRUE;
    }
    return FALSE;
}

/* ---- control socket ------------------------------------------------------- */

/* "since-ms" (epoch ms) in microseconds; out of range counts as "all". */
static gint64 request_since_us(JsonObject *request)
{
    gint64 ms = json_object_get_int_member_with_default(request, "since-ms", 0);

    return ms > 0 && ms < G_MAXINT64 / 1000 ? ms * 1000 : 0;
}

static FtGuest *find_guest(Daemon *d, JsonObject *request, GError **err)
{
    const char *name = json_object_get_string_member_with_default(request, "guest", NULL);
    FtGuest *g;

    if (!name) {
        g_set_error(err, DAEMON_ERROR, 0, "this command needs a guest name");
        return NULL;
    }
    g = g_hash_table_lookup(d->guests, name);
    if (!g)
        g_set_error(err, DAEMON_ERROR, 0, "no protected guest '%s' on %s", name,
                    d->cfg->host_name);
    return g;
}

/*
 * How far behind its interval the failure detector ran in its remembered
 * rounds since since_us (wall clock), as the builder's next value.
 */
static void add_detector(Daemon *d, JsonBuilder *b, gint64 since_us, gboolean waits)
{
    const guint kept = (guint)MIN(d->judge_rounds, (guint64)JUDGE_HISTORY);
    g_autofree double *late = g_new(double, kept ? kept : 1);
    guint n = 0, skipped = 0;

    for (guint i = 0; i < kept; i++) {
        if (d->judge_at_us[i] < since_us)
            continue;
        late[n++] = d->judge_late_ms[i];
        skipped += d->judge_skipped[i];
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "interval_ms");
    json_builder_add_int_value(b, d->cfg->heartbeat_ms);
    json_builder_set_member_name(b, "rounds");
    json_builder_add_int_value(b, n);
    json_builder_set_member_name(b, "skipped");
    json_builder_add_int_value(b, skipped);
    json_builder_set_member_name(b, "late_ms");
    summary_add(b, late, n);
    if (waits) {
        json_builder_set_member_name(b, "waits");
        loopwait_add(b, since_us, DETECTOR_WAITS_SHOWN);
    }
    json_builder_end_object(b);
}

static JsonNode *control_detector(Daemon *d, JsonObject *request)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    add_detector(d, b, request_since_us(request), TRUE);
    return json_builder_get_root(b);
}

static JsonNode *control_status(Daemon *d, JsonObject *request, GError **err)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    const char *only = json_object_get_string_member_with_default(request, "guest", NULL);
    GHashTableIter it;
    gpointer value;

    if (json_object_has_member(request, "guest") &&
        !(only && definitions_refusal(d->defs, only)) && !find_guest(d, request, err))
        return NULL;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "host");
    json_builder_add_string_value(b, d->cfg->host_name);
    json_builder_set_member_name(b, "detector");
    add_detector(d, b, 0, FALSE);
    json_builder_set_member_name(b, "witness");
    if (d->witness)
        witness_add_status(d->witness, b);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "guests");
    json_builder_begin_array(b);
    g_hash_table_iter_init(&it, d->guests);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        if (only && strcmp(only, guest_name(value)) != 0)
            continue;
        json_builder_add_value(b, guest_status(value));
    }
    definitions_add_refused(d->defs, b, only, TRUE);
    json_builder_end_array(b);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

/* Whether name may be protected now; else why not, in err. */
static gboolean protect_allowed(Daemon *d, const char *name, GError **err)
{
    FtGuest *g = g_hash_table_lookup(d->guests, name);
    const char *refusal;

    if (g && guest_is_busy(g)) {
        g_set_error(err, DAEMON_ERROR, 0, "guest '%s' is already %s on %s as %s",
                    name, guest_state_name(guest_state(g)), d->cfg->host_name,
                    ft_role_name(guest_role(g)));
        return FALSE;
    }
    refusal = definitions_refusal(d->defs, name);
    if (refusal) {
        g_set_error(err, DAEMON_ERROR, 0, "guest '%s' is refused on %s: %s", name,
                    d->cfg->host_name, refusal);
        return FALSE;
    }
    return TRUE;
}

/* With its definition read (*def is taken if so): protected from now on, or why not. */
static JsonNode *protect_now(Daemon *d, FtDef **def, const char *xml, gboolean started,
                             gboolean active, GError **err)
{
    FtGuest *g;

    /* Asked twice, started or refused while the definition was being read. */
    if (!protect_allowed(d, (*def)->name, err))
        return NULL;
    if (!started && active) {
        g_set_error(err, DAEMON_ERROR, 0, "guest '%s' is already running unprotected; "
                    "protecting a running guest is not supported yet: shut it down, then "
                    "protect it", (*def)->name);
        return NULL;
    }
    g = guest_new(d, g_steal_pointer(def), xml, FT_ROLE_PRIMARY);
    g_hash_table_replace(d->guests, g_strdup(guest_name(g)), g);
    guest_protect(g, started);
    return guest_status(g);
}

/* An ftctl protect whose answer waits for the definition, read in the libvirt thread. */
typedef struct {
    Daemon *d;
    ControlReply *reply;
} ProtectCall;

static void protect_call_free(gpointer data)
{
    ProtectCall *p = data;

    if (p->reply) {
        g_autoptr(GError) e = g_error_new(DAEMON_ERROR, 0, "kvm-ftd is shutting down");

        control_reply_finish(p->reply, NULL, e);
    }
    g_free(p);
}

static void on_protect_read(FtDef *def, char *xml, gboolean active, const GError *error,
                            gpointer data)
{
    ProtectCall *p = data;
    g_autoptr(FtDef) owned = def;
    g_autofree char *text = xml;
    g_autoptr(GError) err = error ? g_error_copy(error) : NULL;
    g_autoptr(JsonNode) result = owned ? protect_now(p->d, &owned, text, FALSE, active, &err)
                                       : NULL;

    control_reply_finish(g_steal_pointer(&p->reply), result, err);
}

static JsonNode *control_protect(Daemon *d, JsonObject *request, GError **err)
{
    const char *name = json_object_get_string_member_with_default(request, "guest", NULL);
    /* From libvirt's qemu hook: `virsh start` launched it, paused. */
    const gboolean started = json_object_get_boolean_member_with_default(request, "started",
                                                                          FALSE);
    g_autofree char *xml = NULL;
    g_autoptr(FtDef) def = NULL;
    const char *bad_name;
    ProtectCall *p;

    if (!name) {
        g_set_error(err, DAEMON_ERROR, 0, "protect needs a guest name");
        return NULL;
    }
    /* --started names a file kvm-ftd reads: the definitions' own rule for guest names. */
    bad_name = ftdef_guest_name_problem(name);
    if (bad_name) {
        g_autofree char *shown = g_strescape(name, NULL);

        g_set_error(err, DAEMON_ERROR, 0, "'%.80s' is not a guest name: it %s", shown,
                    bad_name);
        return NULL;
    }
    if (!protect_allowed(d, name, err))
        return NULL;
    /* libvirt holds the domain until its hook returns: what kvm-ftd kept, not libvirt. */
    if (started) {
        def = definitions_read_started(d->defs, name, &xml, err);
        return def ? protect_now(d, &def, xml, TRUE, TRUE, err) : NULL;
    }
    p = g_new0(ProtectCall, 1);
    p->d = d;
    p->reply = control_server_defer(d->control);
    definitions_read_async(d->defs, name, on_protect_read, p, protect_call_free);
    return NULL;
}

static JsonNode *control_list(Daemon *d)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    GHashTableIter it;
    gpointer value;

    json_builder_begin_array(b);
    g_hash_table_iter_init(&it, d->guests);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        FtGuest *g = value;

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "name");
        json_builder_add_string_value(b, guest_name(g));
        json_builder_set_member_name(b, "role");
        json_builder_add_string_value(b, guest_is_busy(g) ? ft_role_name(guest_role(g))
                                                          : "none");
        json_builder_set_member_name(b, "state");
        json_builder_add_string_value(b, guest_state_name(guest_state(g)));
        json_builder_end_object(b);
    }
    definitions_add_refused(d->defs, b, NULL, FALSE);
    json_builder_end_array(b);
    return json_builder_get_root(b);
}

static JsonNode *on_control(const char *command, JsonObject *request,
                            gpointer opaque, GError **err)
{
    Daemon *d = opaque;

    if (strcmp(command, "list") == 0)
        return control_list(d);
    if (strcmp(command, "status") == 0)
        return control_status(d, request, err);
    if (strcmp(command, "protect") == 0)
        return control_protect(d, request, err);
    if (strcmp(command, "failover") == 0) {
        FtGuest *g = find_guest(d, request, err);

        return g && guest_hand_over(g, err) ? guest_status(g) : NULL;
    }
    if (strcmp(command, "takeover") == 0) {
        FtGuest *g = find_guest(d, request, err);

        if (g && !json_object_get_boolean_member_with_default(request, "force", FALSE)) {
            g_set_error(err, DAEMON_ERROR, 0, "takeover runs this copy of '%s' alone without "
                        "the witness's word: make sure the other copy is stopped, then "
                        "give --force", guest_name(g));
            return NULL;
        }
        return g && guest_force_solo(g, err) ? guest_status(g) : NULL;
    }
    if (strcmp(command, "verify-begin") == 0) {
        FtGuest *g = find_guest(d, request, err);

        return g ? guest_verify_begin(g, err) : NULL;
    }
    if (strcmp(command, "verify-end") == 0) {
        FtGuest *g = find_guest(d, request, err);

        return g && guest_verify_end(g, json_object_get_member(request, "result"),
                                     json_object_get_string_member_with_default(
                                         request, "error", NULL),
                                     err)
                   ? guest_status(g)
                   : NULL;
    }
    if (strcmp(command, "verify-repair") == 0) {
        FtGuest *g = find_guest(d, request, err);

        return g && guest_verify_repair(g, err) ? guest_status(g) : NULL;
    }
    if (strcmp(command, "checkpoints") == 0) {
        FtGuest *g = find_guest(d, request, err);

        return g ? guest_checkpoints(g, request_since_us(request))
                 : NULL;
    }
    if (strcmp(command, "detector") == 0)
        return control_detector(d, request);
    /* kvm-ft-drbd-handler, for an ha guest's DRBD resource. */
    if (strcmp(command, "drbd-handler") == 0)
        return ha_handler_request(d, request, err);
    g_set_error(err, DAEMON_ERROR, 0, "unknown command '%s'", command);
    return NULL;
}

void daemon_broadcast(Daemon *d, JsonNode *event)
{
    if (d->control)
        control_server_broadcast_event(d->control, event);
}

/* ---- lifetime ------------------------------------------------------------- */

/*
 * After a restart (or a crash) of kvm-ftd, its guests are still running:
 * each running FT guest with our QMP socket is taken back as it is, without
 * waiting for its QEMU (guest_reattach()).
 */
static void reattach_guests(Daemon *d)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) names = virt_active_domains(d->virt, &err);

    if (!names) {
        log_warn(NULL, NULL, "cannot look for running guests: %s", err->message);
        return;
    }
    for (guint i = 0; i < names->len; i++) {
        const char *name = g_ptr_array_index(names, i);
        g_autoptr(GError) e = NULL;
        g_autofree char *xml = NULL;
        g_autofree char *path = guest_qmp_socket(d->cfg, name);
        g_autoptr(FtDef) def = NULL;
        FtGuest *g;

        if (!g_file_test(path, G_FILE_TEST_EXISTS) ||
            !(def = definitions_read(d->defs, name, NULL, &xml, &e)))
            continue;
        g = guest_new(d, g_steal_pointer(&def), xml, FT_ROLE_PRIMARY);
        g_hash_table_replace(d->guests, g_strdup(name), g);
        guest_reattach(g);
    }
}

/*
 * Guests whose QEMU went while kvm-ftd was down: their journal says what
 * each copy was, and its peer may be waiting to hear that it is gone (a
 * secondary waits for a primary whose kvm-ftd answers again).
 */
static void reattach_gone_guests(Daemon *d)
{
    g_autoptr(GPtrArray) names = journal_list(d->cfg->state_dir);
    g_autofree char *gone = g_strdup_printf("QEMU on %s exited while kvm-ftd was down",
                                            d->cfg->host_name);

    for (guint i = 0; i < names->len; i++) {
        const char *name = g_ptr_array_index(names, i);
        g_auto(JournalEntry) was = { 0 };
        g_autoptr(GError) e = NULL;
        g_autofree char *xml = NULL;
        g_autoptr(FtDef) def = NULL;
        FtGuest *g;

        if (g_hash_table_contains(d->guests, name) ||
            !journal_read(d->cfg->state_dir, name, &was, NULL) || !guest_journal_ran(&was))
            continue;
        def = definitions_read(d->defs, name, NULL, &xml, &e);
        if (!def) {
            log_warn(name, ft_role_name(was.role), "its journal says %s here, but it is no FT "
                     "guest of this host now: %s", was.state, e->message);
            continue;
        }
        g = guest_new(d, g_steal_pointer(&def), xml, was.role);
        g_hash_table_replace(d->guests, g_strdup(name), g);
        guest_reattach_gone(g, &was, gone);
    }
}

Daemon *daemon_new(FtConfig *cfg, GError **err)
{
    Daemon *d = g_new0(Daemon, 1);

    d->cfg = cfg;
    d->loop = g_main_loop_new(NULL, FALSE);
    d->guests = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                      (GDestroyNotify)guest_free);
    d->links = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                     (GDestroyNotify)link_free);
    d->sessions = g_ptr_array_new_with_free_func((GDestroyNotify)peer_conn_unref);

    /* `virsh start` binds the guests' QMP sockets there without asking us first. */
    if (g_mkdir_with_parents(cfg->run_dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create the run-dir %s: %s", cfg->run_dir, g_strerror(errno));
        goto fail;
    }
    d->virt = virt_open(cfg->libvirt_uri, err);
    if (!d->virt)
        goto fail;
    d->defs = definitions_new(d, d->guests, err);
    if (!d->defs)
        goto fail;
    /* Before looking at the domains: what changes meanwhile is seen again. */
    if (!virt_watch_events(d->virt, definitions_on_virt_event, d->defs, err))
        goto fail;
    /*
     * Nothing here waits for a QEMU: the peer connects as soon as the loop
     * runs, its heartbeats flow, and what it asks about a guest still
     * re-attaching is answered "restarting" (ask again).
     */
    reattach_guests(d);
    reattach_gone_guests(d);
    d->server = peer_server_new(cfg->listen_address, cfg->listen_port, cfg->key,
                                cfg->host_name, &server_callbacks, d, err);
    if (!d->server)
        goto fail;
    if (cfg->lan_address) {
        d->lan_server = peer_server_new(cfg->lan_address, cfg->listen_port, cfg->key,
                                        cfg->host_name, &server_callbacks, d, err);
        if (!d->lan_server)
            goto fail;
    }
    /* Every session carries heartbeats both ways, whatever the main loop is doing. */
    if (!peer_pulse_start(cfg->heartbeat_ms, cfg->rt_priority, err))
        goto fail;
    d->pulsing = TRUE;
    loopwait_init();
    d->last_judge_us = g_get_monotonic_time();
    d->judge_id = g_timeout_add_full(G_PRIORITY_HIGH, cfg->heartbeat_ms, judge_tick, d, NULL);
    d->ha = ha_new(d);
    d->control = control_server_new(cfg->control_socket, on_control, d, err);
    if (!d->control)
        goto fail;
    if (cfg->witness_endpoints && !(d->witness = witness_new(cfg, err)))
        goto fail;
    log_info(NULL, NULL, "kvm-ftd up: peer protocol on %s:%u, control socket %s",
             cfg->listen_address, cfg->listen_port, cfg->control_socket);
    definitions_consider_all(d->defs);
    return d;

fail:
    daemon_free(d);
    return NULL;
}

void daemon_free(Daemon *d)
{
    if (!d)
        return;
    /* Answers still on their way change nothing now. */
    d->quitting = TRUE;
    g_clear_pointer(&d->control, control_server_free);
    /* Its DRBD commands' and claims' callbacks find kvm-ftd quitting. */
    g_clear_pointer(&d->ha, ha_free);
    /*
     * The peer calls end before the guests go.  Freeing the links, then
     * the servers and sessions (whose last reference closes each link's
     * connection), fails every call still waiting or on its way, and each
     * callback holds what made the call: on_secondary_prepared() its
     * FtGuest, a definitions call its Definitions.  So the callbacks run
     * while all of that still exists, and none can start a call on the
     * links being freed (daemon_peer_call()).
     */
    g_hash_table_destroy(d->links);
    decision_cancel_all(d);
    if (d->pulsing)
        peer_pulse_stop();
    if (d->judge_id)
        g_source_remove(d->judge_id);
    g_clear_pointer(&d->server, peer_server_free);
    g_clear_pointer(&d->lan_server, peer_server_free);
    g_ptr_array_free(d->sessions, TRUE);
    g_hash_table_destroy(d->guests);
    g_clear_pointer(&d->defs, definitions_free);
    g_clear_pointer(&d->virt, virt_close);
    /* Last: it lets its requests' callbacks run, when nothing else is left to act. */
    g_clear_pointer(&d->witness, witness_free);
    g_main_loop_unref(d->loop);
    config_free(d->cfg);
    g_free(d);
}

void daemon_run(Daemon *d)
{
    g_main_loop_run(d->loop);
}

void daemon_quit(Daemon *d)
{
    g_main_loop_quit(d->loop);
}

const FtConfig *daemon_config(Daemon *d)
{
    return d->cfg;
}

Witness *daemon_witness(Daemon *d)
{
    return d->witness;
}

Virt *daemon_virt(Daemon *d)
{
    return d->virt;
}

Definitions *daemon_definitions(Daemon *d)
{
    return d->defs;
}

Ha *daemon_ha(Daemon *d)
{
    return d->ha;
}

gboolean daemon_quitting(Daemon *d)
{
    return d->quitting;
}
