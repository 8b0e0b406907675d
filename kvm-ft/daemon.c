/* daemon.c - what one kvm-ftd holds, and how requests reach its guests */
#include "daemon.h"

#include <string.h>

#include "guest.h"
#include "log.h"
#include "status.h"

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
 * evidence_us is the last time the host at addr showed it was up (a frame
 * from its kvm-ftd, or its kernel refusing or closing a connection).
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

/*
 * A defined FT guest this host does not protect, and why.  A name is
 * either a guest or refused, never both.
 */
typedef struct {
    char *message;
    char *peer; /* the peer host that refused it or did not answer; NULL: refused here */
} Refusal;

/* A request to the peer about a guest, by name: the guest may be gone when it returns. */
typedef struct {
    Daemon *d;
    char *guest;
    char *peer;
} PeerCall;

struct Daemon {
    FtConfig *cfg;
    Virt *virt;
    PeerServer *server;
    ControlServer *control;
    GMainLoop *loop;
    GHashTable *guests;   /* name -> FtGuest */
    GHashTable *refused;  /* name -> Refusal */
    GThreadPool *status_writer;
    gboolean quitting;
    GHashTable *links;    /* address -> PeerLink */
    GPtrArray *sessions;  /* authenticated PeerConn, both directions */
    PeerServer *lan_server;
    guint heartbeat_id;
    guint judge_id;
    gint64 last_judge_us;
};

#define DAEMON_ERROR g_quark_from_static_string("kvmft-daemon-error")

static void refusal_free(Refusal *r)
{
    g_free(r->message);
    g_free(r->peer);
    g_free(r);
}

static PeerCall *peer_call_new(Daemon *d, const char *guest, const char *peer)
{
    PeerCall *call = g_new0(PeerCall, 1);

    call->d = d;
    call->guest = g_strdup(guest);
    call->peer = g_strdup(peer);
    return call;
}

static void peer_call_free(PeerCall *call)
{
    g_free(call->guest);
    g_free(call->peer);
    g_free(call);
}

static void pending_free(PendingCall *call)
{
    g_free(call->method);
    json_object_unref(call->params);
    g_free(call);
}

static void link_free(PeerLink *link)
{
    PendingCall *call;
    g_autoptr(GError) err = g_error_new(PEER_ERROR, PEER_ERROR_CLOSED,
                                        "kvm-ftd is shutting down");

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

/* ---- the status element in libvirt ---------------------------------------- */

typedef struct {
    char *name;
    char *xml; /* NULL: remove the element */
} StatusWrite;

static void status_write_free(StatusWrite *w)
{
    g_free(w->name);
    g_free(w->xml);
    g_free(w);
}

/* In the writer thread. */
static void status_writer_run(gpointer data, gpointer opaque)
{
    StatusWrite *w = data;
    Daemon *d = opaque;
    g_autoptr(GError) err = NULL;

    if (!virt_domain_set_status(d->virt, w->name, w->xml, &err))
        log_warn(w->name, NULL, "%s", err->message);
    status_write_free(w);
}

/*
 * libvirt makes a metadata write wait for the domain's job lock, which a
 * start, a destroy or any monitor command may hold for seconds: on the
 * main loop that would starve heartbeats.  One writer thread keeps the
 * writes in order.
 */
void daemon_set_status(Daemon *d, const char *name, const char *state, const char *reason)
{
    StatusWrite *w = g_new0(StatusWrite, 1);

    w->name = g_strdup(name);
    /* Stamped now, when it happened, not when the writer gets to it. */
    w->xml = state ? status_xml(state, reason, g_get_real_time()) : NULL;
    g_thread_pool_push(d->status_writer, w, NULL);
}

/* ---- FT guests defined in libvirt ----------------------------------------- */

/* NULL if def pairs this host with host (with any host if NULL); else why not. */
static char *pairing_error(Daemon *d, const FtDef *def, const char *host)
{
    const FtHost *peer = ftdef_peer(def, d->cfg->host_name);

    if (!peer)
        return g_strdup_printf("guest '%s' does not name this host (%s) in <ft:hosts>",
                               def->name, d->cfg->host_name);
    if (host && strcmp(peer->name, host) != 0)
        return g_strdup_printf("guest '%s' pairs this host with %s, not with %s",
                               def->name, peer->name, host);
    return NULL;
}

/*
 * The FT guest defined here under that name: its definition (into *xml)
 * must be valid and pair this host with `with` (any host if NULL).
 * Errors: VIRT_ERROR, FTDEF_ERROR (NOT_FT; INVALID, also for the pairing).
 */
static FtDef *read_guest(Daemon *d, const char *name, const char *with, char **xml,
                         GError **err)
{
    g_autofree char *text = virt_domain_xml(d->virt, name, err);
    g_autoptr(FtDef) def = NULL;
    g_autofree char *why = NULL;

    if (!text || !(def = ftdef_parse(text, err)))
        return NULL;
    why = pairing_error(d, def, with);
    if (why) {
        g_set_error_literal(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, why);
        return NULL;
    }
    if (xml)
        *xml = g_steal_pointer(&text);
    return g_steal_pointer(&def);
}

/* Not to be protected, nothing prepared for it: only the refusal remains. */
static void refuse(Daemon *d, const char *name, const char *peer, const char *message)
{
    Refusal *r = g_new0(Refusal, 1);

    r->message = g_strdup(message);
    r->peer = g_strdup(peer);
    g_hash_table_remove(d->guests, name);
    g_hash_table_replace(d->refused, g_strdup(name), r);
    log_err(name, "none", "refused: %s", message);
    daemon_set_status(d, name, STATUS_REFUSED, message);
}

/* The name is no kvm-ft guest here any more; TRUE if it was one. */
static gboolean forget(Daemon *d, const char *name)
{
    gboolean guest = g_hash_table_remove(d->guests, name);
    gboolean refused = g_hash_table_remove(d->refused, name);

    return guest || refused;
}

static void on_peer_defined(PeerConn *conn, JsonNode *result, const GError *error,
                            gpointer opaque)
{
    PeerCall *call = opaque;
    Daemon *d = call->d;
    FtGuest *g = d->quitting ? NULL : g_hash_table_lookup(d->guests, call->guest);

    (void)conn;
    /* Forgotten, refused or started meanwhile (or quitting): that decided already. */
    if (!g || guest_is_busy(g)) {
        peer_call_free(call);
        return;
    }
    if (error) {
        g_autofree char *msg = g_strdup_printf("peer %s: %s", call->peer, error->message);

        refuse(d, call->guest, call->peer, msg);
    } else {
        gboolean defined = JSON_NODE_HOLDS_OBJECT(result) &&
                           json_object_get_boolean_member_with_default(
                               json_node_get_object(result), "defined", FALSE);
        g_autofree char *reason = g_strdup_printf("defined here and on %s", call->peer);

        log_info(call->guest, "none", "ready: %s %s", call->peer,
                 defined ? "defined it too" : "has it defined");
        daemon_set_status(d, call->guest, STATUS_READY, reason);
    }
    peer_call_free(call);
}

/*
 * A domain was defined, redefined, or its kvm-ft metadata changed (or
 * kvm-ftd starts): an FT guest is validated here, then the peer is asked
 * to define it too; anything wrong, here or there, refuses it.  A guest
 * that runs here keeps running as it is.
 */
static void consider_domain(Daemon *d, const char *name)
{
    FtGuest *g = g_hash_table_lookup(d->guests, name);
    g_autoptr(GError) err = NULL;
    g_autofree char *xml = NULL;
    g_autofree char *version = NULL;
    g_autoptr(FtDef) def = NULL;
    gboolean active = FALSE;
    JsonObject *params;
    const FtHost *peer;

    if (g && guest_is_busy(g)) {
        log_info(name, ft_role_name(guest_role(g)), "its definition changed while it "
                 "runs here: kvm-ftd reads it again at the next protect");
        return;
    }
    def = read_guest(d, name, NULL, &xml, &err);
    if (!def) {
        if (g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT)) {
            if (forget(d, name)) {
                log_info(name, "none", "no kvm-ft metadata any more: not a kvm-ft guest");
                daemon_set_status(d, name, NULL, NULL);
            }
        } else if (g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_INVALID)) {
            refuse(d, name, NULL, err->message);
        } else {
            /* Undefined meanwhile (its event follows), or libvirt failing. */
            log_warn(name, "none", "cannot read its definition: %s", err->message);
        }
        return;
    }
    g_hash_table_remove(d->refused, name);
    if (virt_domain_is_active(d->virt, name, &active, &err) && active) {
        /* Started outside kvm-ft, or failed and carrying on alone: not ready. */
        log_info(name, "none", "valid, but it runs unprotected: kvm-ftd reads its "
                 "definition again when it is protected");
        return;
    }
    g_clear_error(&err);
    version = virt_qemu_version(d->virt, &err);
    if (!version) {
        refuse(d, name, NULL, err->message);
        return;
    }
    g = guest_new(d, g_steal_pointer(&def), xml, FT_ROLE_PRIMARY);
    g_hash_table_replace(d->guests, g_strdup(name), g);
    peer = ftdef_peer(guest_def(g), d->cfg->host_name);
    params = json_object_new();
    json_object_set_string_member(params, "domain-xml", xml);
    json_object_set_string_member(params, "qemu-version", version);
    daemon_peer_call(d, peer->link_address, "define-guest", params, d->cfg->peer_timeout_ms,
                     on_peer_defined, peer_call_new(d, name, peer->name));
    json_object_unref(params);
}

/* The peer is back: what it refused or left unanswered gets another go. */
static void reconsider_refused_by(Daemon *d, const char *host)
{
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    GHashTableIter it;
    gpointer key, value;

    g_hash_table_iter_init(&it, d->refused);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        Refusal *r = value;

        if (g_strcmp0(r->peer, host) == 0)
            g_ptr_array_add(names, g_strdup(key));
    }
    for (guint i = 0; i < names->len; i++)
        consider_domain(d, g_ptr_array_index(names, i));
}

static void on_peer_undefined(PeerConn *conn, JsonNode *result, const GError *error,
                              gpointer opaque)
{
    PeerCall *call = opaque;

    (void)conn;
    (void)result;
    if (error)
        log_warn(call->guest, "none", "%s did not undefine its copy: %s", call->peer,
                 error->message);
    else
        log_info(call->guest, "none", "%s undefined its copy", call->peer);
    peer_call_free(call);
}

/* Undefined here: forgotten here, and the peer's copy goes too. */
static void domain_undefined(Daemon *d, const char *name)
{
    FtGuest *g = g_hash_table_lookup(d->guests, name);
    const FtHost *peer;
    JsonObject *params;

    if (!g) {
        g_hash_table_remove(d->refused, name);
        return;
    }
    if (guest_is_busy(g)) {
        log_warn(name, ft_role_name(guest_role(g)), "undefined in libvirt while it runs "
                 "here as %s: kvm-ftd keeps it as it is", guest_state_name(guest_state(g)));
        return;
    }
    peer = ftdef_peer(guest_def(g), d->cfg->host_name);
    log_info(name, "none", "undefined: forgotten here; asking %s to undefine its copy",
             peer->name);
    guest_remove_overlays(d->cfg, name);
    params = json_object_new();
    json_object_set_string_member(params, "guest", name);
    daemon_peer_call(d, peer->link_address, "undefine-guest", params, d->cfg->peer_timeout_ms,
                     on_peer_undefined, peer_call_new(d, name, peer->name));
    json_object_unref(params);
    forget(d, name);
}

static void on_virt_event(const VirtEvent *ev, gpointer opaque)
{
    Daemon *d = opaque;
    FtGuest *g;

    switch (ev->type) {
    case VIRT_EVENT_DEFINED:
        consider_domain(d, ev->domain);
        break;
    case VIRT_EVENT_METADATA:
        /* Not our status element: each write of it would come back here. */
        if (ev->nsuri && g_str_has_prefix(ev->nsuri, FTDEF_NS_FAMILY) &&
            strcmp(ev->nsuri, STATUS_NS) != 0)
            consider_domain(d, ev->domain);
        break;
    case VIRT_EVENT_UNDEFINED:
        domain_undefined(d, ev->domain);
        break;
    case VIRT_EVENT_STOPPED:
        g = g_hash_table_lookup(d->guests, ev->domain);
        if (g)
            guest_domain_stopped(g, ev->stopped);
        break;
    }
}

/* ---- peer requests -------------------------------------------------------- */

static void reply_error(PeerConn *conn, guint64 id, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void reply_error(PeerConn *conn, guint64 id, const char *fmt, ...)
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

static void handle_prepare_secondary(Daemon *d, PeerConn *conn, guint64 id,
                                     JsonObject *params)
{
    const char *xml = json_object_get_string_member_with_default(params, "domain-xml", NULL);
    const char *primary = json_object_get_string_member_with_default(params, "primary", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;
    g_autofree char *why = NULL;
    FtGuest *g;

    if (!xml || !primary) {
        reply_error(conn, id, "prepare-secondary needs domain-xml and primary");
        return;
    }
    def = ftdef_parse(xml, &err);
    if (!def) {
        reply_error(conn, id, "invalid FT guest definition: %s", err->message);
        return;
    }
    why = pairing_error(d, def, primary);
    if (!why && g_strcmp0(peer_conn_get_peer_host(conn), primary) != 0)
        why = pairing_error(d, def, peer_conn_get_peer_host(conn));
    if (why) {
        reply_error(conn, id, "%s", why);
        return;
    }
    g = g_hash_table_lookup(d->guests, def->name);
    if (g && guest_is_busy(g)) {
        reply_error(conn, id, "guest '%s' is already %s here as %s", def->name,
                    guest_state_name(guest_state(g)), ft_role_name(guest_role(g)));
        return;
    }
    g = guest_new(d, g_steal_pointer(&def), xml, FT_ROLE_SECONDARY);
    g_hash_table_replace(d->guests, g_strdup(guest_name(g)), g);
    g_hash_table_remove(d->refused, guest_name(g));
    guest_prepare_secondary(g, conn, id);
}

/*
 * The peer has a new FT guest: it is defined here too, unless this host
 * cannot run its copy.  Answers {"defined": whether it was defined now}.
 */
static void handle_define_guest(Daemon *d, PeerConn *conn, guint64 id,
                                JsonObject *params)
{
    const char *xml = json_object_get_string_member_with_default(params, "domain-xml", NULL);
    const char *version = json_object_get_string_member_with_default(params, "qemu-version",
                                                                     NULL);
    const char *sender = peer_conn_get_peer_host(conn);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;
    g_autoptr(FtDef) local = NULL;
    g_autofree char *local_xml = NULL;
    g_autofree char *why = NULL;
    g_autofree char *mine = NULL;
    g_autofree char *reason = NULL;
    g_autoptr(JsonNode) answer = json_node_new(JSON_NODE_OBJECT);
    JsonObject *result;
    gboolean defined = FALSE;
    gboolean active = FALSE;
    Refusal *r;
    FtGuest *g;

    if (!xml || !version) {
        reply_error(conn, id, "define-guest needs domain-xml and qemu-version");
        return;
    }
    def = ftdef_parse(xml, &err);
    if (!def) {
        reply_error(conn, id, "invalid FT guest definition: %s", err->message);
        return;
    }
    why = pairing_error(d, def, sender);
    if (why) {
        reply_error(conn, id, "%s", why);
        return;
    }
    mine = virt_qemu_version(d->virt, &err);
    if (!mine) {
        reply_error(conn, id, "%s", err->message);
        return;
    }
    if (strcmp(mine, version) != 0) {
        reply_error(conn, id, "QEMU %s on %s but %s on %s: both copies of a guest "
                    "must run the same QEMU", version, sender, mine, d->cfg->host_name);
        return;
    }
    /* E.g. after a failover the guest runs here alone: not ready over there. */
    g = g_hash_table_lookup(d->guests, def->name);
    if (g && guest_is_busy(g)) {
        reply_error(conn, id, "guest '%s' is %s on %s as %s", def->name,
                    guest_state_name(guest_state(g)), d->cfg->host_name,
                    ft_role_name(guest_role(g)));
        return;
    }
    r = g_hash_table_lookup(d->refused, def->name);
    if (r && !r->peer) {
        reply_error(conn, id, "guest '%s' is refused on %s: %s", def->name,
                    d->cfg->host_name, r->message);
        return;
    }
    if (!virt_domain_define_missing(d->virt, def->name, xml, &defined, &err)) {
        reply_error(conn, id, "%s", err->message);
        return;
    }
    if (defined)
        log_info(def->name, "none", "defined at the request of %s", sender);
    /* Whatever had the name here already must be the same pair's guest, stopped. */
    local = read_guest(d, def->name, sender, &local_xml, &err);
    if (!local || !virt_domain_is_active(d->virt, def->name, &active, &err)) {
        reply_error(conn, id, "the domain '%s' on %s: %s", def->name, d->cfg->host_name,
                    err->message);
        return;
    }
    if (active) {
        reply_error(conn, id, "guest '%s' runs on %s, unprotected", def->name,
                    d->cfg->host_name);
        return;
    }
    g_hash_table_remove(d->refused, local->name);
    g = guest_new(d, g_steal_pointer(&local), local_xml, FT_ROLE_PRIMARY);
    g_hash_table_replace(d->guests, g_strdup(guest_name(g)), g);
    reason = g_strdup_printf("defined here and on %s", sender);
    daemon_set_status(d, guest_name(g), STATUS_READY, reason);
    result = json_object_new();
    json_object_set_boolean_member(result, "defined", defined);
    json_node_take_object(answer, result);
    peer_conn_reply(conn, id, answer);
}

/*
 * The guest was undefined on the peer: its copy here goes too, with its
 * replication overlays; never a running one, nor a domain that is not this
 * pair's guest.
 */
static void handle_undefine_guest(Daemon *d, PeerConn *conn, guint64 id,
                                  JsonObject *params)
{
    const char *name = json_object_get_string_member_with_default(params, "guest", NULL);
    const char *sender = peer_conn_get_peer_host(conn);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;
    FtGuest *g;

    if (!name) {
        reply_error(conn, id, "undefine-guest needs guest");
        return;
    }
    g = g_hash_table_lookup(d->guests, name);
    if (g && guest_is_busy(g)) {
        reply_error(conn, id, "guest '%s' is %s on %s as %s: not undefining it", name,
                    guest_state_name(guest_state(g)), d->cfg->host_name,
                    ft_role_name(guest_role(g)));
        return;
    }
    def = read_guest(d, name, sender, NULL, &err);
    if (!def && g_error_matches(err, VIRT_ERROR, VIRT_ERROR_NO_DOMAIN)) {
        /* Nothing defined here; what a secondary left behind still goes. */
        if (g)
            guest_remove_overlays(d->cfg, guest_name(g));
        forget(d, name);
        peer_conn_reply(conn, id, NULL);
        return;
    }
    if (!def) {
        reply_error(conn, id, "the domain '%s' on %s: %s", name, d->cfg->host_name,
                    err->message);
        return;
    }
    g_clear_error(&err);
    if (!virt_domain_undefine(d->virt, def->name, &err)) {
        reply_error(conn, id, "%s", err->message);
        return;
    }
    guest_remove_overlays(d->cfg, def->name);
    forget(d, def->name);
    log_info(def->name, "none", "undefined at the request of %s, where it was undefined",
             sender);
    peer_conn_reply(conn, id, NULL);
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

    if (g && guest_role(g) == FT_ROLE_SECONDARY)
        guest_stop(g, why);
    peer_conn_reply(conn, id, ok);
}

static void on_request(PeerConn *conn, guint64 id, const char *method,
                       JsonObject *params, gpointer opaque)
{
    Daemon *d = opaque;

    if (strcmp(method, "prepare-secondary") == 0)
        handle_prepare_secondary(d, conn, id, params);
    else if (strcmp(method, "stop-secondary") == 0)
        handle_stop_secondary(d, conn, id, params);
    else if (strcmp(method, "define-guest") == 0)
        handle_define_guest(d, conn, id, params);
    else if (strcmp(method, "undefine-guest") == 0)
        handle_undefine_guest(d, conn, id, params);
    else
        reply_error(conn, id, "unknown request '%s'", method);
}

static void session_up(Daemon *d, PeerConn *conn)
{
    g_ptr_array_add(d->sessions, peer_conn_ref(conn));
    log_info(NULL, NULL, "peer %s connected from %s", peer_conn_get_peer_host(conn),
             peer_conn_get_address(conn));
    reconsider_refused_by(d, peer_conn_get_peer_host(conn));
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

static void on_event(PeerConn *conn, const char *name, JsonObject *data, gpointer opaque);

static const PeerCallbacks server_callbacks = {
    .connected = on_server_connected,
    .closed = on_server_closed,
    .request = on_request,
    .event = on_event,
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
        link->answered_us = link->evidence_us = g_get_monotonic_time();
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

static void on_link_event(PeerConn *conn, const char *name, JsonObject *data,
                          gpointer opaque);
static PeerLink *get_link(Daemon *d, const char *addr);

static const PeerCallbacks link_callbacks = {
    .connected = on_link_connected,
    .closed = on_link_closed,
    .request = on_link_request,
    .event = on_link_event,
};

void daemon_peer_call(Daemon *d, const char *addr, const char *method,
                      JsonObject *params, guint timeout_ms, PeerReplyFunc cb,
                      gpointer opaque)
{
    PeerLink *link = get_link(d, addr);
    PendingCall *call;

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

PeerPath daemon_peer_path(Daemon *d, const char *addr, guint windows)
{
    gint64 window = (gint64)d->cfg->heartbeat_ms * d->cfg->miss_count * windows * 1000;
    gint64 now = g_get_monotonic_time();
    PeerLink *link;

    if (!addr)
        return PEER_PATH_NONE;
    link = g_hash_table_lookup(d->links, addr);
    if (!link)
        return PEER_PATH_SILENT;
    if (link->conn && peer_conn_is_connected(link->conn)) {
        link->evidence_us = MAX(link->evidence_us, peer_conn_get_last_rx_time(link->conn));
        if (now - link->evidence_us <= window)
            return PEER_PATH_ALIVE;
        return PEER_PATH_SILENT;
    }
    if (now - link->answered_us <= window)
        return PEER_PATH_HOST_UP;
    /* Still connecting, within the window since watching began. */
    return now - link->evidence_us <= window ? PEER_PATH_ALIVE : PEER_PATH_SILENT;
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

/* Every session carries heartbeats both ways, sent ahead of other work. */
static gboolean heartbeat_tick(gpointer opaque)
{
    Daemon *d = opaque;

    for (guint i = 0; i < d->sessions->len; i++)
        peer_conn_send_heartbeat(g_ptr_array_index(d->sessions, i), NULL);
    return G_SOURCE_CONTINUE;
}

/*
 * Every guest judges its peer, at low priority so that frames already
 * waiting in our sockets are read first.  When this daemon itself was not
 * scheduled for a while, silence proves nothing about the peer: that round
 * is skipped, and the next one judges on fresh input.
 */
static gboolean judge_tick(gpointer opaque)
{
    Daemon *d = opaque;
    gint64 now = g_get_monotonic_time();
    gint64 late = now - d->last_judge_us - (gint64)d->cfg->heartbeat_ms * 1000;
    GHashTableIter it;
    gpointer value;

    d->last_judge_us = now;
    if (late > (gint64)d->cfg->heartbeat_ms * 1000 * 2) {
        log_warn(NULL, NULL, "failure detection ran %" G_GINT64_FORMAT " ms late "
                 "(kvm-ftd busy or not scheduled): it skips a round", late / 1000);
        return G_SOURCE_CONTINUE;
    }
    g_hash_table_iter_init(&it, d->guests);
    while (g_hash_table_iter_next(&it, NULL, &value))
        guest_check_peer(value);
    return G_SOURCE_CONTINUE;
}

/* An event from the peer's kvm-ftd about one of our guests. */
static void on_event(PeerConn *conn, const char *name, JsonObject *data, gpointer opaque)
{
    Daemon *d = opaque;
    const char *guest = data ? json_object_get_string_member_with_default(data, "guest", "")
                             : "";
    FtGuest *g = g_hash_table_lookup(d->guests, guest);

    if (!g) {
        log_warn(NULL, NULL, "event '%s' from %s for unknown guest '%s'", name,
                 peer_conn_get_peer_host(conn), guest);
        return;
    }
    guest_peer_event(g, peer_conn_get_peer_host(conn), name, data);
}

static void on_link_event(PeerConn *conn, const char *name, JsonObject *data,
                          gpointer opaque)
{
    PeerLink *link = opaque;

    on_event(conn, name, data, link->d);
}

void daemon_peer_event(Daemon *d, const char *host, const char *name, JsonObject *data)
{
    /* Any live session to that host will do: the message must get through. */
    for (guint i = 0; i < d->sessions->len; i++) {
        PeerConn *conn = g_ptr_array_index(d->sessions, i);

        if (peer_conn_is_connected(conn) &&
            g_strcmp0(peer_conn_get_peer_host(conn), host) == 0)
            peer_conn_send_event(conn, name, data);
    }
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
 * A refused guest in a list result (name, role, state, error) or, with
 * status, as a GuestStatus (doc/interfaces.md) in which nothing runs.
 */
static void add_refusal(JsonBuilder *b, const char *name, const Refusal *r, gboolean status)
{
    static const char *const nothing[] = {
        "peer", "last_failover", "colo", "checkpoint_interval_ms", "output_mode",
        "last_pause_ms", "pause_ms", "since_last_checkpoint_ms",
    };

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "name");
    json_builder_add_string_value(b, name);
    json_builder_set_member_name(b, "role");
    json_builder_add_string_value(b, "none");
    json_builder_set_member_name(b, "state");
    json_builder_add_string_value(b, STATUS_REFUSED);
    if (status) {
        for (gsize i = 0; i < G_N_ELEMENTS(nothing); i++) {
            json_builder_set_member_name(b, nothing[i]);
            json_builder_add_null_value(b);
        }
        json_builder_set_member_name(b, "qmp");
        json_builder_add_string_value(b, "closed");
        json_builder_set_member_name(b, "checkpoints");
        json_builder_add_int_value(b, 0);
    }
    json_builder_set_member_name(b, "error");
    json_builder_add_string_value(b, r->message);
    json_builder_end_object(b);
}

static JsonNode *control_status(Daemon *d, JsonObject *request, GError **err)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    const char *only = json_object_get_string_member_with_default(request, "guest", NULL);
    GHashTableIter it;
    gpointer key, value;

    if (json_object_has_member(request, "guest") &&
        !(only && g_hash_table_contains(d->refused, only)) && !find_guest(d, request, err))
        return NULL;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "host");
    json_builder_add_string_value(b, d->cfg->host_name);
    json_builder_set_member_name(b, "guests");
    json_builder_begin_array(b);
    g_hash_table_iter_init(&it, d->guests);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        if (only && strcmp(only, guest_name(value)) != 0)
            continue;
        json_builder_add_value(b, guest_status(value));
    }
    g_hash_table_iter_init(&it, d->refused);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        if (!only || strcmp(only, key) == 0)
            add_refusal(b, key, value, TRUE);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

static JsonNode *control_protect(Daemon *d, JsonObject *request, GError **err)
{
    const char *name = json_object_get_string_member_with_default(request, "guest", NULL);
    g_autofree char *xml = NULL;
    g_autoptr(FtDef) def = NULL;
    gboolean active = FALSE;
    Refusal *r;
    FtGuest *g;

    if (!name) {
        g_set_error(err, DAEMON_ERROR, 0, "protect needs a guest name");
        return NULL;
    }
    g = g_hash_table_lookup(d->guests, name);
    if (g && guest_is_busy(g)) {
        g_set_error(err, DAEMON_ERROR, 0, "guest '%s' is already %s on %s as %s",
                    name, guest_state_name(guest_state(g)), d->cfg->host_name,
                    ft_role_name(guest_role(g)));
        return NULL;
    }
    r = g_hash_table_lookup(d->refused, name);
    if (r) {
        g_set_error(err, DAEMON_ERROR, 0, "guest '%s' is refused on %s: %s", name,
                    d->cfg->host_name, r->message);
        return NULL;
    }
    def = read_guest(d, name, NULL, &xml, err);
    if (!def)
        return NULL;
    if (!virt_domain_is_active(d->virt, name, &active, err))
        return NULL;
    if (active) {
        g_set_error(err, DAEMON_ERROR, 0,
                    "guest '%s' is already running unprotected; protecting a "
                    "running guest is not supported yet: shut it down, then protect it",
                    name);
        return NULL;
    }
    g = guest_new(d, g_steal_pointer(&def), xml, FT_ROLE_PRIMARY);
    g_hash_table_replace(d->guests, g_strdup(name), g);
    guest_protect(g);
    return guest_status(g);
}

static JsonNode *control_list(Daemon *d)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    GHashTableIter it;
    gpointer key, value;

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
    g_hash_table_iter_init(&it, d->refused);
    while (g_hash_table_iter_next(&it, &key, &value))
        add_refusal(b, key, value, FALSE);
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
    if (strcmp(command, "checkpoints") == 0) {
        FtGuest *g = find_guest(d, request, err);

        return g ? guest_checkpoints(g, json_object_get_int_member_with_default(
                                            request, "since-ms", 0) * 1000)
                 : NULL;
    }
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
 * each running FT guest with our QMP socket is taken back as it is.
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
            !(def = read_guest(d, name, NULL, &xml, &e)))
            continue;
        g = guest_new(d, g_steal_pointer(&def), xml, FT_ROLE_PRIMARY);
        g_hash_table_replace(d->guests, g_strdup(name), g);
        if (!guest_reattach(g, &e))
            log_err(name, NULL, "cannot re-attach to the running guest: %s", e->message);
    }
}

/* Each FT guest defined here, as if it had just been defined. */
static void consider_defined_domains(Daemon *d)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) names = virt_defined_domains(d->virt, &err);

    if (!names) {
        log_warn(NULL, NULL, "cannot look for defined guests: %s", err->message);
        return;
    }
    for (guint i = 0; i < names->len; i++) {
        const char *name = g_ptr_array_index(names, i);
        FtGuest *g = g_hash_table_lookup(d->guests, name);

        /* Re-attached ones carry on as they are. */
        if (!g || !guest_is_busy(g))
            consider_domain(d, name);
    }
}

Daemon *daemon_new(FtConfig *cfg, GError **err)
{
    Daemon *d = g_new0(Daemon, 1);

    d->cfg = cfg;
    d->loop = g_main_loop_new(NULL, FALSE);
    d->guests = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                      (GDestroyNotify)guest_free);
    d->refused = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                       (GDestroyNotify)refusal_free);
    d->links = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                     (GDestroyNotify)link_free);
    d->sessions = g_ptr_array_new_with_free_func((GDestroyNotify)peer_conn_unref);

    d->virt = virt_open(cfg->libvirt_uri, err);
    if (!d->virt)
        goto fail;
    d->status_writer = g_thread_pool_new(status_writer_run, d, 1, FALSE, err);
    if (!d->status_writer)
        goto fail;
    /* Before looking at the domains: what changes meanwhile is seen again. */
    if (!virt_watch_events(d->virt, on_virt_event, d, err))
        goto fail;
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
    d->heartbeat_id = g_timeout_add_full(G_PRIORITY_HIGH, cfg->heartbeat_ms,
                                         heartbeat_tick, d, NULL);
    d->last_judge_us = g_get_monotonic_time();
    d->judge_id = g_timeout_add_full(G_PRIORITY_LOW, cfg->heartbeat_ms, judge_tick, d, NULL);
    d->control = control_server_new(cfg->control_socket, on_control, d, err);
    if (!d->control)
        goto fail;
    log_info(NULL, NULL, "kvm-ftd up: peer protocol on %s:%u, control socket %s",
             cfg->listen_address, cfg->listen_port, cfg->control_socket);
    reattach_guests(d);
    consider_defined_domains(d);
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
    g_hash_table_destroy(d->guests);
    g_hash_table_destroy(d->links);
    if (d->heartbeat_id)
        g_source_remove(d->heartbeat_id);
    if (d->judge_id)
        g_source_remove(d->judge_id);
    g_clear_pointer(&d->server, peer_server_free);
    g_clear_pointer(&d->lan_server, peer_server_free);
    g_ptr_array_free(d->sessions, TRUE);
    g_hash_table_destroy(d->refused);
    /* The writes already queued still go out. */
    if (d->status_writer)
        g_thread_pool_free(d->status_writer, FALSE, TRUE);
    g_clear_pointer(&d->virt, virt_close);
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

Virt *daemon_virt(Daemon *d)
{
    return d->virt;
}
