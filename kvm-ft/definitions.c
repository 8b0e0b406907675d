/* definitions.c - the FT guests defined in libvirt on this host */
#include "definitions.h"

#include <string.h>

#include <errno.h>
#include <glib/gstdio.h>

#include "domxml.h"
#include "guest.h"
#include "log.h"
#include "resync.h"
#include "status.h"

#define DEFINITIONS_ERROR g_quark_from_static_string("kvmft-definitions-error")

/* A defined FT guest this host does not protect, and why. */
typedef struct {
    char *message;
    char *peer; /* the peer host that refused it or did not answer; NULL: refused here */
} Refusal;

/* A request to the peer about a guest, by name: the guest may be gone when it returns. */
typedef struct {
    Definitions *defs;
    char *guest;
    char *peer;
} PeerCall;

struct Definitions {
    Daemon *d;
    const FtConfig *cfg;
    Virt *virt;
    GHashTable *guests;  /* the daemon's: name -> FtGuest */
    GHashTable *refused; /* name -> Refusal */
    GThreadPool *status_writer;
    GHashTable *asked;   /* name -> the ask (of asks) whose reading decides for it */
    guint asks;
};

static void refusal_free(Refusal *r)
{
    g_free(r->message);
    g_free(r->peer);
    g_free(r);
}

static PeerCall *peer_call_new(Definitions *defs, const char *guest, const char *peer)
{
    PeerCall *call = g_new0(PeerCall, 1);

    call->defs = defs;
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

/* method to the guest's peer, with params (taken); cb gets a PeerCall. */
static void call_peer(Definitions *defs, const char *name, const FtDef *def,
                      const char *method, JsonObject *params, PeerReplyFunc cb)
{
    const FtHost *peer = ftdef_peer(def, defs->cfg->host_name);

    daemon_peer_call(defs->d, peer->link_address, method, params, defs->cfg->peer_timeout_ms,
                     cb, peer_call_new(defs, name, peer->name));
    json_object_unref(params);
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
    Definitions *defs = opaque;
    g_autoptr(GError) err = NULL;

    if (!virt_domain_set_status(defs->virt, w->name, w->xml, &err))
        log_warn(w->name, NULL, "%s", err->message);
    status_write_free(w);
}

/*
 * libvirt makes a metadata write wait for the domain's job lock, which a
 * start, a destroy or any monitor command may hold for seconds: on the
 * main loop that would starve heartbeats.  One writer thread keeps the
 * writes in order.
 */
void definitions_set_status(Definitions *defs, const char *name, const char *state,
                            const char *reason)
{
    StatusWrite *w = g_new0(StatusWrite, 1);

    w->name = g_strdup(name);
    /* Stamped now, when it happened, not when the writer gets to it. */
    w->xml = state ? status_xml(state, reason, g_get_real_time()) : NULL;
    g_thread_pool_push(defs->status_writer, w, NULL);
}

/* ---- reading and checking definitions -------------------------------------- */

/* Touches only the configuration: it also runs in the libvirt thread. */
static char *pairing_error(const FtConfig *cfg, const FtDef *def, const char *host)
{
    const FtHost *peer = ftdef_peer(def, cfg->host_name);

    if (!peer)
        return g_strdup_printf("guest '%s' does not name this host (%s) in <ft:hosts>",
                               def->name, cfg->host_name);
    if (host && strcmp(peer->name, host) != 0)
        return g_strdup_printf("guest '%s' pairs this host with %s, not with %s",
                               def->name, peer->name, host);
    return NULL;
}

char *definitions_pairing_error(Definitions *defs, const FtDef *def, const char *host)
{
    return pairing_error(defs->cfg, def, host);
}

/* The administrator's definition, kept while libvirt holds the derived one. */
static char *original_path(const FtConfig *cfg, const char *name)
{
    g_autofree char *file = g_strdup_printf("%s.xml", name);

    return g_build_filename(cfg->state_dir, file, NULL);
}

/*
 * `virsh start` must start the guest with kvm-ft's plumbing (its disks in
 * COLO's drive chain, kvm-ftd's QMP socket), so the persistent definition
 * becomes the derived primary one; the administrator's stays in the state
 * dir, and kvm-ftd reads that one whenever it reads the definition.
 * libvirt's qemu hook (dist/libvirt-hook-qemu) then has the pair protected
 * before the guest's CPUs run.
 */
/* install_plumbing()'s work in the libvirt thread. */
typedef struct {
    const FtConfig *cfg;
    char *name;
    char *xml;       /* the administrator's definition */
    char *derived;   /* the one `virsh start` is to run */
    gboolean installed;
} Plumbing;

static void plumbing_free(gpointer data)
{
    Plumbing *p = data;

    g_free(p->name);
    g_free(p->xml);
    g_free(p->derived);
    g_free(p);
}

static gboolean install_in_thread(Virt *v, gpointer data, GError **err)
{
    Plumbing *p = data;
    g_autofree char *current = virt_domain_xml(v, p->name, err);
    g_autofree char *path = original_path(p->cfg, p->name);

    if (!current)
        return FALSE;
    if (domxml_is_derived(current))
        return TRUE;
    if (g_mkdir_with_parents(p->cfg->state_dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno), "cannot create %s: %s",
                    p->cfg->state_dir, g_strerror(errno));
        return FALSE;
    }
    p->installed = g_file_set_contents_full(path, p->xml, -1, G_FILE_SET_CONTENTS_CONSISTENT,
                                            0600, err) &&
                   virt_domain_define(v, p->name, p->derived, err);
    return p->installed;
}

static void on_plumbing_installed(gpointer data, const GError *error)
{
    Plumbing *p = data;
    g_autofree char *path = original_path(p->cfg, p->name);

    if (error)
        log_warn(p->name, "none", "cannot install kvm-ft's plumbing in its definition (%s): "
                 "protect it with ftctl protect", error->message);
    else if (p->installed)
        log_info(p->name, "none", "its persistent definition now carries kvm-ft's plumbing "
                 "(the original is kept in %s): virsh start protects it", path);
}

static void install_plumbing(Definitions *defs, const char *name, const char *xml,
                             const FtDef *def)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *qmp = guest_qmp_socket(defs->cfg, name);
    DomxmlPlumbing plumbing = { .qmp_socket = qmp };
    char *derived = domxml_for_role(xml, def, FT_ROLE_PRIMARY, &plumbing, &err);
    Plumbing *p;

    if (!derived) {
        on_plumbing_installed(&(Plumbing){ .cfg = defs->cfg, .name = (char *)name }, err);
        return;
    }
    p = g_new0(Plumbing, 1);
    p->cfg = defs->cfg;
    p->name = g_strdup(name);
    p->xml = g_strdup(xml);
    p->derived = derived;
    virt_run(defs->virt, install_in_thread, on_plumbing_installed, p, plumbing_free);
}

/* What kvm-ft keeps of a guest on this host, for a guest that is gone. */
static void forget_storage(Definitions *defs, const char *name)
{
    g_autofree char *path = original_path(defs->cfg, name);

    guest_remove_overlays(defs->cfg, name);
    /* A guest defined again under this name starts as a new pair. */
    resync_generation_forget(defs->cfg, name);
    if (g_unlink(path) < 0 && errno != ENOENT)
        log_warn(name, "none", "cannot remove %s: %s", path, g_strerror(errno));
}

static char *read_original(const FtConfig *cfg, const char *name, GError **err)
{
    g_autofree char *path = original_path(cfg, name);
    char *original = NULL;

    if (!g_file_get_contents(path, &original, NULL, NULL))
        g_set_error(err, FTDEF_ERROR, FTDEF_ERROR_INVALID,
                    "its definition carries kvm-ft's plumbing but the original it was "
                    "derived from (%s) is gone: define the original again", path);
    return original;
}

/* ha: the ha guests only (definitions_read_ha()); else the guests kvm-ftd runs. */
static FtDef *parse_paired(const FtConfig *cfg, char *text /* taken */, const char *with,
                           gboolean ha, char **xml, GError **err)
{
    g_autofree char *owned = text;
    g_autoptr(FtDef) def = NULL;
    g_autofree char *why = NULL;

    if (!owned || !(def = ftdef_parse(owned, err)))
        return NULL;
    why = pairing_error(cfg, def, with);
    if (why) {
        g_set_error_literal(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, why);
        return NULL;
    }
    /* Issue 18: so far only ftctl drbd-config serves an HA guest; refused, not run. */
    if (!ha && def->level == FTDEF_LEVEL_HA) {
        g_set_error_literal(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, DEFINITIONS_HA_REFUSAL);
        return NULL;
    }
    if (ha && def->level != FTDEF_LEVEL_HA) {
        g_set_error(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, "guest '%s' has protection level "
                    "%s, not ha", def->name, ftdef_level_name(def->level));
        return NULL;
    }
    if (xml)
        *xml = g_steal_pointer(&owned);
    return g_steal_pointer(&def);
}

/*
 * The domain's definition as the administrator wrote it (the original of a
 * derived one).  Touches nothing of Definitions: it also runs in the
 * libvirt thread.
 */
static char *read_definition(Virt *v, const FtConfig *cfg, const char *name, GError **err)
{
    g_autofree char *text = virt_domain_xml(v, name, err);

    if (text && domxml_is_derived(text)) {
        g_autofree char *path = original_path(cfg, name);
        g_autofree char *original = read_original(cfg, name, err);
        g_autofree char *derived = g_steal_pointer(&text);

        if (!original || !(text = domxml_with_ft_metadata_of(original, derived, err)))
            return NULL;
        if (strcmp(text, original) != 0 &&
            !g_file_set_contents_full(path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600,
                                      err))
            return NULL;
    }
    return g_steal_pointer(&text);
}

FtDef *definitions_read(Definitions *defs, const char *name, const char *with, char **xml,
                        GError **err)
{
    return parse_paired(defs->cfg, read_definition(defs->virt, defs->cfg, name, err), with, FALSE,
                        xml, err);
}

FtDef *definitions_read_ha(Definitions *defs, const char *name, GError **err)
{
    return parse_paired(defs->cfg, read_definition(defs->virt, defs->cfg, name, err), NULL, TRUE,
                        NULL, err);
}

FtDef *definitions_read_started(Definitions *defs, const char *name, char **xml,
                                GError **err)
{
    return parse_paired(defs->cfg, read_original(defs->cfg, name, err), NULL, FALSE, xml, err);
}

/*
 * What a peer asks this host to run is vetted here as this host's own
 * administrator would have it: no QEMU arguments of the peer's choosing,
 * no disk outside this host's image root (the secondary creates and
 * exports files at those paths).
 */
static gboolean peer_definition_allowed(Definitions *defs, const FtDef *def,
                                        const char *sender, GError **err)
{
    const char *root = defs->cfg->image_root;
    gsize n = strlen(root);

    /* "/srv/images/" is "/srv/images"; "/" leaves n at 0: every absolute path. */
    while (n > 0 && root[n - 1] == '/')
        n--;
    if (def->qemu_commandline) {
        g_set_error(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, "guest '%s' from %s has "
                    "<qemu:commandline>: %s runs no QEMU arguments chosen by its peer; "
                    "remove it from the definition", def->name, sender,
                    defs->cfg->host_name);
        return FALSE;
    }
    for (guint i = 0; i < def->disks->len; i++) {
        const FtDisk *disk = g_ptr_array_index(def->disks, i);

        if (strncmp(disk->source_path, root, n) != 0 || disk->source_path[n] != '/') {
            g_set_error(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, "guest '%s' from %s: disk "
                        "%s at %s is outside %s's image root %s; keep the guests' images "
                        "there, or set [daemon] image-root in kvm-ftd.conf", def->name,
                        sender, disk->target, disk->source_path, defs->cfg->host_name,
                        root);
            return FALSE;
        }
    }
    return TRUE;
}

FtDef *definitions_from_peer(Definitions *defs, const char *xml, const char *sender,
                             GError **err)
{
    g_autoptr(FtDef) def = ftdef_parse(xml, err);
    g_autofree char *why = NULL;

    if (!def) {
        g_prefix_error(err, "invalid FT guest definition: ");
        return NULL;
    }
    why = definitions_pairing_error(defs, def, sender);
    if (why) {
        g_set_error_literal(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, why);
        return NULL;
    }
    if (!peer_definition_allowed(defs, def, sender, err))
        return NULL;
    return g_steal_pointer(&def);
}

gboolean definitions_same_qemu(const FtConfig *cfg, const char *theirs, const char *mine,
                               const char *sender, GError **err)
{
    if (strcmp(mine, theirs) == 0)
        return TRUE;
    g_set_error(err, DEFINITIONS_ERROR, 0, "QEMU %s on %s but %s on %s: both copies of a "
                "guest must run the same QEMU", theirs, sender, mine, cfg->host_name);
    return FALSE;
}

typedef struct {
    char *version;
    DefinitionsVersionFunc then;
    Definitions *defs;
    gpointer data;
    GDestroyNotify free_data;
} VersionAsk;

static void version_ask_free(gpointer data)
{
    VersionAsk *ask = data;

    if (ask->free_data)
        ask->free_data(ask->data);
    g_free(ask->version);
    g_free(ask);
}

static gboolean version_in_thread(Virt *v, gpointer data, GError **err)
{
    VersionAsk *ask = data;

    ask->version = virt_qemu_version(v, err);
    return ask->version != NULL;
}

static void on_version(gpointer data, const GError *error)
{
    VersionAsk *ask = data;

    if (!daemon_quitting(ask->defs->d))
        ask->then(ask->version, error, ask->data);
}

void definitions_qemu_version(Definitions *defs, DefinitionsVersionFunc then, gpointer data,
                              GDestroyNotify free_data)
{
    VersionAsk *ask = g_new0(VersionAsk, 1);

    ask->defs = defs;
    ask->then = then;
    ask->data = data;
    ask->free_data = free_data;
    virt_run(defs->virt, version_in_thread, on_version, ask, version_ask_free);
}

/* ---- following libvirt's domain events -------------------------------------- */

/*
 * Two guests whose ports overlap cannot both be protected: the second's
 * QEMU cannot listen, and worse, a secondary could take the other guest's
 * replication stream.  The error names the guest that has them.
 */
static gboolean ports_free(Definitions *defs, const FtDef *def, GError **err)
{
    GHashTableIter it;
    gpointer value;

    g_hash_table_iter_init(&it, defs->guests);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        const FtDef *other = guest_def(value);

        if (strcmp(other->name, def->name) == 0 || !ftdef_ports_overlap(def, other))
            continue;
        g_set_error(err, FTDEF_ERROR, FTDEF_ERROR_INVALID,
                    "<ft:ports base='%u'>: its ports %u-%u overlap guest '%s''s %u-%u on %s: "
                    "give each guest its own range", def->port_base, def->port_base,
                    def->port_base + ftdef_port_count(def) - 1, other->name, other->port_base,
                    other->port_base + ftdef_port_count(other) - 1, defs->cfg->host_name);
        return FALSE;
    }
    return TRUE;
}

/* Not to be protected, nothing prepared for it: only the refusal remains. */
static void refuse(Definitions *defs, const char *name, const char *peer, const char *message)
{
    Refusal *r = g_new0(Refusal, 1);

    r->message = g_strdup(message);
    r->peer = g_strdup(peer);
    g_hash_table_remove(defs->guests, name);
    g_hash_table_replace(defs->refused, g_strdup(name), r);
    log_err(name, "none", "refused: %s", message);
    definitions_set_status(defs, name, STATUS_REFUSED, message);
}

/* The name is no kvm-ft guest here any more; TRUE if it was one. */
static gboolean forget(Definitions *defs, const char *name)
{
    gboolean guest = g_hash_table_remove(defs->guests, name);
    gboolean refused = g_hash_table_remove(defs->refused, name);

    return guest || refused;
}

/* For the log: the guest's role here, if kvm-ftd has it. */
static const char *role_here(Definitions *defs, const char *name)
{
    FtGuest *g = g_hash_table_lookup(defs->guests, name);

    return g ? ft_role_name(guest_role(g)) : "none";
}

static void on_peer_metadata(PeerConn *conn, JsonNode *result, const GError *error,
                             gpointer opaque)
{
    PeerCall *call = opaque;
    const char *role = daemon_quitting(call->defs->d) ? "none"
                                                       : role_here(call->defs, call->guest);

    (void)conn;
    if (error)
        log_warn(call->guest, role, "%s kept its copy of the kvm-ft metadata: %s", call->peer,
                 error->message);
    else if (JSON_NODE_HOLDS_OBJECT(result) &&
             json_object_get_boolean_member_with_default(json_node_get_object(result),
                                                         "changed", FALSE))
        log_info(call->guest, role, "%s took the new kvm-ft metadata", call->peer);
    peer_call_free(call);
}

/*
 * `virsh metadata --set` on either host: the peer gets the same <ft:guest>,
 * so that whichever host runs the guest next runs it as the administrator
 * last said.  The peer takes it only if it differs, so the echo of its own
 * change ends there.
 */
static void share_metadata(Definitions *defs, const char *name, const FtDef *def,
                           const char *xml)
{
    JsonObject *params = json_object_new();

    json_object_set_string_member(params, "guest", name);
    json_object_set_string_member(params, "domain-xml", xml);
    call_peer(defs, name, def, "update-metadata", params, on_peer_metadata);
}

static void on_peer_defined(PeerConn *conn, JsonNode *result, const GError *error,
                            gpointer opaque)
{
    PeerCall *call = opaque;
    Definitions *defs = call->defs;
    FtGuest *g = daemon_quitting(defs->d) ? NULL
                                          : g_hash_table_lookup(defs->guests, call->guest);

    (void)conn;
    /* Forgotten, refused or started meanwhile (or quitting): that decided already. */
    if (!g || guest_is_busy(g)) {
        peer_call_free(call);
        return;
    }
    if (error) {
        g_autofree char *msg = g_strdup_printf("peer %s: %s", call->peer, error->message);

        refuse(defs, call->guest, call->peer, msg);
    } else {
        gboolean defined = JSON_NODE_HOLDS_OBJECT(result) &&
                           json_object_get_boolean_member_with_default(
                               json_node_get_object(result), "defined", FALSE);
        g_autofree char *reason = g_strdup_printf("defined here and on %s", call->peer);

        log_info(call->guest, "none", "ready: %s %s", call->peer,
                 defined ? "defined it too" : "has it defined");
        definitions_set_status(defs, call->guest, STATUS_READY, reason);
        install_plumbing(defs, call->guest, guest_domain_xml(g), guest_def(g));
        /* A peer that had it defined keeps its own definition: not its metadata. */
        if (!defined)
            share_metadata(defs, call->guest, guest_def(g), guest_domain_xml(g));
    }
    peer_call_free(call);
}

/* What consider_domain() reads in the libvirt thread. */
typedef struct {
    Definitions *defs; /* for on_domain_read() only: the job touches none of it */
    const FtConfig *cfg;
    char *name;
    guint ask;
    char *text;        /* read_definition()'s, or NULL with read_error */
    GError *read_error;
    gboolean active;
    char *version;     /* virt_qemu_version()'s if not active, or NULL with version_error */
    GError *version_error;
    /* definitions_read_async()'s caller, or NULL: consider_domain()'s */
    DefinitionsReadFunc then;
    gpointer then_data;
    GDestroyNotify then_free;
} DomainRead;

static void domain_read_free(gpointer data)
{
    DomainRead *r = data;

    if (r->then_free)
        r->then_free(r->then_data);
    g_free(r->name);
    g_free(r->text);
    g_clear_error(&r->read_error);
    g_free(r->version);
    g_clear_error(&r->version_error);
    g_free(r);
}

/*
 * libvirt answers a definition's reading only once it has the domain's
 * job lock, which a start, a destroy or a monitor command can hold for
 * seconds: in its thread, not on the loop that judges the peers.
 */
static gboolean read_domain(Virt *v, gpointer data, GError **err)
{
    DomainRead *r = data;
    g_autoptr(GError) e = NULL;

    (void)err;
    r->text = read_definition(v, r->cfg, r->name, &r->read_error);
    if (!r->text)
        return TRUE;
    /* Unknown: as the decision had it before, not active. */
    if (!virt_domain_is_active(v, r->name, &r->active, &e))
        r->active = FALSE;
    /* Only a guest that does not run is defined on the peer, with the version. */
    if (!r->active)
        r->version = virt_qemu_version(v, &r->version_error);
    return TRUE;
}

static void decide_domain(Definitions *defs, DomainRead *r)
{
    const char *name = r->name;
    FtGuest *g = g_hash_table_lookup(defs->guests, name);
    g_autoptr(GError) err = g_steal_pointer(&r->read_error);
    g_autofree char *xml = NULL;
    g_autoptr(FtDef) def = parse_paired(defs->cfg, g_steal_pointer(&r->text), NULL, FALSE, &xml,
                                        &err);
    JsonObject *params;

    if (g && guest_is_busy(g)) {
        g_autofree char *later = NULL;

        if (!def) {
            log_warn(name, ft_role_name(guest_role(g)), "its new definition cannot be "
                     "used (%s); it keeps running as it was", err->message);
            return;
        }
        later = guest_definition_changed(g, def);
        if (later) {
            log_info(name, ft_role_name(guest_role(g)), "definition changed while it "
                     "runs: %s", later);
            definitions_set_status(defs, name, guest_state_name(guest_state(g)), later);
        }
        share_metadata(defs, name, def, xml);
        return;
    }
    if (!def) {
        if (g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT)) {
            if (forget(defs, name)) {
                log_info(name, "none", "no kvm-ft metadata any more: not a kvm-ft guest");
                definitions_set_status(defs, name, NULL, NULL);
            }
        } else if (g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_INVALID)) {
            refuse(defs, name, NULL, err->message);
        } else {
            /* Undefined meanwhile (its event follows), or libvirt failing. */
            log_warn(name, "none", "cannot read its definition: %s", err->message);
        }
        return;
    }
    if (!ports_free(defs, def, &err)) {
        refuse(defs, name, NULL, err->message);
        return;
    }
    g_hash_table_remove(defs->refused, name);
    if (r->active) {
        /* Started outside kvm-ft, or failed and carrying on alone: not ready. */
        log_info(name, "none", "valid, but it runs unprotected: kvm-ftd reads its "
                 "definition again when it is protected");
        return;
    }
    if (!r->version) {
        refuse(defs, name, NULL, r->version_error->message);
        return;
    }
    g = guest_new(defs->d, g_steal_pointer(&def), xml, FT_ROLE_PRIMARY);
    g_hash_table_replace(defs->guests, g_strdup(name), g);
    params = json_object_new();
    json_object_set_string_member(params, "domain-xml", xml);
    json_object_set_string_member(params, "qemu-version", r->version);
    call_peer(defs, name, guest_def(g), "define-guest", params, on_peer_defined);
}

static void on_domain_read(gpointer data, const GError *error)
{
    DomainRead *r = data;
    Definitions *defs = r->defs;

    (void)error;
    /* Asked again, or undefined, since: the newer event decides. */
    if (daemon_quitting(defs->d) ||
        GPOINTER_TO_UINT(g_hash_table_lookup(defs->asked, r->name)) != r->ask)
        return;
    g_hash_table_remove(defs->asked, r->name);
    decide_domain(defs, r);
}

static void on_read_for_caller(gpointer data, const GError *error)
{
    DomainRead *r = data;
    g_autoptr(GError) err = g_steal_pointer(&r->read_error);
    char *xml = NULL;
    FtDef *def;

    (void)error;
    if (daemon_quitting(r->defs->d))
        return;
    def = parse_paired(r->cfg, g_steal_pointer(&r->text), NULL, FALSE, &xml, &err);
    r->then(def, xml, r->active, err, r->then_data);
}

static DomainRead *domain_read_new(Definitions *defs, const char *name)
{
    DomainRead *r = g_new0(DomainRead, 1);

    r->defs = defs;
    r->cfg = defs->cfg;
    r->name = g_strdup(name);
    return r;
}

void definitions_read_async(Definitions *defs, const char *name, DefinitionsReadFunc then,
                            gpointer data, GDestroyNotify free_data)
{
    DomainRead *r = domain_read_new(defs, name);

    r->then = then;
    r->then_data = data;
    r->then_free = free_data;
    virt_run(defs->virt, read_domain, on_read_for_caller, r, domain_read_free);
}

/*
 * A domain was defined, redefined, or its kvm-ft metadata changed (or
 * kvm-ftd starts): an FT guest is validated here, then the peer is asked
 * to define it too; anything wrong, here or there, refuses it.  A guest
 * that runs here keeps running as it is.  Either way the peer gets the
 * metadata.
 */
static void consider_domain(Definitions *defs, const char *name)
{
    DomainRead *r = domain_read_new(defs, name);

    /* 0 is no ask (the table's answer for a name it does not have). */
    if (++defs->asks == 0)
        defs->asks = 1;
    r->ask = defs->asks;
    g_hash_table_replace(defs->asked, g_strdup(name), GUINT_TO_POINTER(r->ask));
    virt_run(defs->virt, read_domain, on_domain_read, r, domain_read_free);
}

void definitions_peer_up(Definitions *defs, const char *host)
{
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    GHashTableIter it;
    gpointer key, value;

    g_hash_table_iter_init(&it, defs->refused);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        Refusal *r = value;

        if (g_strcmp0(r->peer, host) == 0)
            g_ptr_array_add(names, g_strdup(key));
    }
    for (guint i = 0; i < names->len; i++)
        consider_domain(defs, g_ptr_array_index(names, i));
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
static void domain_undefined(Definitions *defs, const char *name)
{
    FtGuest *g = g_hash_table_lookup(defs->guests, name);
    const FtHost *peer;
    JsonObject *params;

    /* What was asked about it before does not decide any more. */
    g_hash_table_remove(defs->asked, name);
    if (!g) {
        g_hash_table_remove(defs->refused, name);
        return;
    }
    if (guest_is_busy(g)) {
        log_warn(name, ft_role_name(guest_role(g)), "undefined in libvirt while it runs "
                 "here as %s: kvm-ftd keeps it as it is", guest_state_name(guest_state(g)));
        return;
    }
    peer = ftdef_peer(guest_def(g), defs->cfg->host_name);
    log_info(name, "none", "undefined: forgotten here; asking %s to undefine its copy",
             peer->name);
    forget_storage(defs, name);
    params = json_object_new();
    json_object_set_string_member(params, "guest", name);
    call_peer(defs, name, guest_def(g), "undefine-guest", params, on_peer_undefined);
    forget(defs, name);
}

void definitions_on_virt_event(const VirtEvent *ev, gpointer opaque)
{
    Definitions *defs = opaque;
    FtGuest *g;

    switch (ev->type) {
    case VIRT_EVENT_DEFINED:
        consider_domain(defs, ev->domain);
        break;
    case VIRT_EVENT_METADATA:
        /* Not our status element: each write of it would come back here. */
        if (ev->nsuri && g_str_has_prefix(ev->nsuri, FTDEF_NS_FAMILY) &&
            strcmp(ev->nsuri, STATUS_NS) != 0)
            consider_domain(defs, ev->domain);
        break;
    case VIRT_EVENT_UNDEFINED:
        domain_undefined(defs, ev->domain);
        break;
    case VIRT_EVENT_STOPPED:
        g = g_hash_table_lookup(defs->guests, ev->domain);
        if (g)
            guest_domain_stopped(g, ev->stopped);
        break;
    }
}

void definitions_consider_all(Definitions *defs)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) names = virt_defined_domains(defs->virt, &err);

    if (!names) {
        log_warn(NULL, NULL, "cannot look for defined guests: %s", err->message);
        return;
    }
    for (guint i = 0; i < names->len; i++) {
        const char *name = g_ptr_array_index(names, i);
        FtGuest *g = g_hash_table_lookup(defs->guests, name);

        /* Re-attached ones carry on as they are. */
        if (!g || !guest_is_busy(g))
            consider_domain(defs, name);
    }
}

/* ---- the peer's requests ---------------------------------------------------- */

/*
 * A peer's request whose libvirt calls run in kvm-ftd's libvirt thread
 * (they wait for the domain's job lock, which a start or a monitor command
 * holds for seconds); it is answered from the main loop.
 */
typedef struct {
    Definitions *defs;   /* on the main loop only */
    const FtConfig *cfg;
    PeerConn *conn;
    guint64 id;
    char *sender;
    char *name;
    char *xml;           /* define-guest's, update-metadata's: the peer's definition */
    char *version;       /* define-guest: the QEMU the peer runs */
    char *text;          /* define-guest: this host's definition once defined */
    gboolean active;     /* define-guest: whether it runs here */
    gboolean defined;    /* define-guest: defined now */
    gboolean absent;     /* undefine-guest: nothing defined here */
    gboolean changed;    /* update-metadata: the settings changed */
} PeerRequest;

static PeerRequest *peer_request_new(Definitions *defs, PeerConn *conn, guint64 id,
                                     const char *name, const char *xml)
{
    PeerRequest *req = g_new0(PeerRequest, 1);

    req->defs = defs;
    req->cfg = defs->cfg;
    req->conn = peer_conn_ref(conn);
    req->id = id;
    req->sender = g_strdup(peer_conn_get_peer_host(conn));
    req->name = g_strdup(name);
    req->xml = g_strdup(xml);
    return req;
}

/* TRUE if the job's answer ends here: kvm-ftd quits, or the job failed (the peer hears why). */
static gboolean peer_request_ended(PeerRequest *req, const GError *error)
{
    if (daemon_quitting(req->defs->d))
        return TRUE;
    if (error)
        daemon_reply_error(req->conn, req->id, "%s", error->message);
    return error != NULL;
}

static void peer_request_free(gpointer data)
{
    PeerRequest *req = data;

    peer_conn_unref(req->conn);
    g_free(req->sender);
    g_free(req->name);
    g_free(req->xml);
    g_free(req->version);
    g_free(req->text);
    g_free(req);
}

/* Refuses, with the reason, a guest this host cannot take now; NULL if it can. */
static char *define_refusal(Definitions *defs, const FtDef *def)
{
    g_autoptr(GError) err = NULL;
    FtGuest *g = g_hash_table_lookup(defs->guests, def->name);
    Refusal *r;

    /* E.g. after a failover the guest runs here alone: not ready over there. */
    if (g && guest_is_busy(g))
        return g_strdup_printf("guest '%s' is %s on %s as %s", def->name,
                               guest_state_name(guest_state(g)), defs->cfg->host_name,
                               ft_role_name(guest_role(g)));
    if (!ports_free(defs, def, &err))
        return g_strdup(err->message);
    r = g_hash_table_lookup(defs->refused, def->name);
    if (r && !r->peer)
        return g_strdup_printf("guest '%s' is refused on %s: %s", def->name,
                               defs->cfg->host_name, r->message);
    return NULL;
}

/*
 * In the libvirt thread: libvirtd's first define may probe QEMU for
 * seconds (4 s seen), and a hung libvirtd holds even the version's call.  Whatever had the name here already must be the
 * same pair's guest, stopped: its definition is read back.
 */
static gboolean define_in_thread(Virt *v, gpointer data, GError **err)
{
    PeerRequest *req = data;
    g_autofree char *mine = virt_qemu_version(v, err);

    /* The secondary loads the primary's state: the same QEMU must run both. */
    if (!mine || !definitions_same_qemu(req->cfg, req->version, mine, req->sender, err) ||
        !virt_domain_define_missing(v, req->name, req->xml, &req->defined, err))
        return FALSE;
    req->text = read_definition(v, req->cfg, req->name, err);
    if (!req->text || !virt_domain_is_active(v, req->name, &req->active, err)) {
        g_prefix_error(err, "the domain '%s' on %s: ", req->name, req->cfg->host_name);
        return FALSE;
    }
    return TRUE;
}

static void on_defined(gpointer data, const GError *error)
{
    PeerRequest *req = data;
    Definitions *defs = req->defs;
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) local = NULL;
    g_autofree char *local_xml = NULL;
    g_autofree char *reason = NULL;
    g_autofree char *refusal = NULL;
    g_autoptr(JsonNode) answer = json_node_new(JSON_NODE_OBJECT);
    JsonObject *result;
    FtGuest *g;

    if (peer_request_ended(req, error))
        return;
    if (req->defined)
        log_info(req->name, "none", "defined at the request of %s", req->sender);
    local = parse_paired(req->cfg, g_steal_pointer(&req->text), req->sender, FALSE,
                         &local_xml, &err);
    if (!local) {
        daemon_reply_error(req->conn, req->id, "the domain '%s' on %s: %s", req->name,
                           defs->cfg->host_name, err->message);
        return;
    }
    if (req->active) {
        daemon_reply_error(req->conn, req->id, "guest '%s' runs on %s, unprotected",
                           req->name, defs->cfg->host_name);
        return;
    }
    /* What changed while libvirt worked. */
    refusal = define_refusal(defs, local);
    if (refusal) {
        daemon_reply_error(req->conn, req->id, "%s", refusal);
        return;
    }
    g_hash_table_remove(defs->refused, local->name);
    g = guest_new(defs->d, g_steal_pointer(&local), local_xml, FT_ROLE_PRIMARY);
    g_hash_table_replace(defs->guests, g_strdup(guest_name(g)), g);
    reason = g_strdup_printf("defined here and on %s", req->sender);
    definitions_set_status(defs, guest_name(g), STATUS_READY, reason);
    install_plumbing(defs, guest_name(g), local_xml, guest_def(g));
    result = json_object_new();
    json_object_set_boolean_member(result, "defined", req->defined);
    json_node_take_object(answer, result);
    peer_conn_reply(req->conn, req->id, answer);
}

/*
 * The peer has a new FT guest: it is defined here too, unless this host
 * cannot run its copy.  Answers {"defined": whether it was defined now}.
 */
static void handle_define_guest(Definitions *defs, PeerConn *conn, guint64 id,
                                JsonObject *params)
{
    const char *xml = json_object_get_string_member_with_default(params, "domain-xml", NULL);
    const char *version = json_object_get_string_member_with_default(params, "qemu-version",
                                                                     NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;
    g_autofree char *refusal = NULL;
    PeerRequest *req;

    if (!xml || !version) {
        daemon_reply_error(conn, id, "define-guest needs domain-xml and qemu-version");
        return;
    }
    def = definitions_from_peer(defs, xml, peer_conn_get_peer_host(conn), &err);
    if (!def) {
        daemon_reply_error(conn, id, "%s", err->message);
        return;
    }
    refusal = define_refusal(defs, def);
    if (refusal) {
        daemon_reply_error(conn, id, "%s", refusal);
        return;
    }
    req = peer_request_new(defs, conn, id, def->name, xml);
    req->version = g_strdup(version);
    virt_run(defs->virt, define_in_thread, on_defined, req, peer_request_free);
}

/* Never a domain that is not this pair's guest. */
static gboolean undefine_in_thread(Virt *v, gpointer data, GError **err)
{
    PeerRequest *req = data;
    g_autoptr(GError) e = NULL;
    g_autoptr(FtDef) def = parse_paired(req->cfg, read_definition(v, req->cfg, req->name, &e),
                                        req->sender, FALSE, NULL, &e);

    if (!def && g_error_matches(e, VIRT_ERROR, VIRT_ERROR_NO_DOMAIN)) {
        req->absent = TRUE;
        return TRUE;
    }
    if (!def) {
        g_propagate_prefixed_error(err, g_steal_pointer(&e), "the domain '%s' on %s: ",
                                   req->name, req->cfg->host_name);
        return FALSE;
    }
    return virt_domain_undefine(v, req->name, err);
}

static void on_undefined(gpointer data, const GError *error)
{
    PeerRequest *req = data;
    Definitions *defs = req->defs;
    FtGuest *g;

    if (peer_request_ended(req, error))
        return;
    g = g_hash_table_lookup(defs->guests, req->name);
    /* Nothing defined here: what a secondary left behind still goes. */
    if (!req->absent || g)
        forget_storage(defs, req->name);
    forget(defs, req->name);
    if (!req->absent)
        log_info(req->name, "none", "undefined at the request of %s, where it was undefined",
                 req->sender);
    peer_conn_reply(req->conn, req->id, NULL);
}

/*
 * The guest was undefined on the peer: its copy here goes too, with its
 * replication overlays; never a running one (libvirt refuses it too).
 */
static void handle_undefine_guest(Definitions *defs, PeerConn *conn, guint64 id,
                                  JsonObject *params)
{
    const char *name = json_object_get_string_member_with_default(params, "guest", NULL);
    FtGuest *g;

    if (!name || ftdef_guest_name_problem(name)) {
        daemon_reply_error(conn, id, "undefine-guest needs a guest's name");
        return;
    }
    g = g_hash_table_lookup(defs->guests, name);
    if (g && guest_is_busy(g)) {
        daemon_reply_error(conn, id, "guest '%s' is %s on %s as %s: not undefining it",
                           name, guest_state_name(guest_state(g)), defs->cfg->host_name,
                           ft_role_name(guest_role(g)));
        return;
    }
    virt_run(defs->virt, undefine_in_thread, on_undefined,
             peer_request_new(defs, conn, id, name, NULL), peer_request_free);
}

static gboolean same_settings(const FtDef *a, const FtDef *b)
{
    return a->checkpoint_interval_ms == b->checkpoint_interval_ms &&
           a->output_mode == b->output_mode && a->compare_timeout_ms == b->compare_timeout_ms;
}

/*
 * The peer's <ft:guest> goes into this host's definition of the same
 * guest, as `virsh metadata --set` would put it; the change then takes the
 * way of a local one (consider_domain).  The peer may change how the pair
 * runs the guest, not which pair or which disks.
 */
static gboolean update_metadata_in_thread(Virt *v, gpointer data, GError **err)
{
    PeerRequest *req = data;
    const char *host = req->cfg->host_name;
    g_autoptr(GError) e = NULL;
    g_autofree char *local_xml = NULL;
    g_autoptr(FtDef) local = parse_paired(req->cfg, read_definition(v, req->cfg, req->name, &e),
                                          req->sender, FALSE, &local_xml, &e);
    g_autoptr(FtDef) wanted = NULL;
    g_autofree char *merged = NULL;
    g_autofree char *element = NULL;
    g_autofree char *why = NULL;

    if (!local) {
        g_propagate_prefixed_error(err, g_steal_pointer(&e), "guest '%s' on %s: ", req->name,
                                   host);
        return FALSE;
    }
    if (!(merged = domxml_with_ft_metadata_of(local_xml, req->xml, &e)) ||
        !(wanted = ftdef_parse(merged, &e))) {
        g_propagate_prefixed_error(err, g_steal_pointer(&e), "guest '%s': %s's kvm-ft "
                                   "metadata: ", req->name, req->sender);
        return FALSE;
    }
    why = pairing_error(req->cfg, wanted, req->sender);
    if (why || !ftdef_same_pair_and_disks(local, wanted)) {
        g_set_error(err, FTDEF_ERROR, FTDEF_ERROR_INVALID, "guest '%s': %s's kvm-ft metadata "
                    "names other hosts, ports or disks than %s's (%s): define the guest "
                    "again on both", req->name, req->sender, host, why ? why : "changed");
        return FALSE;
    }
    req->changed = !same_settings(local, wanted);
    if (req->changed && (!(element = domxml_ft_metadata_element(merged, &e)) ||
                         !virt_domain_set_ft_metadata(v, req->name, element, &e))) {
        g_propagate_prefixed_error(err, g_steal_pointer(&e), "guest '%s' on %s: ", req->name,
                                   host);
        return FALSE;
    }
    return TRUE;
}

static void on_metadata_updated(gpointer data, const GError *error)
{
    PeerRequest *req = data;
    g_autoptr(JsonNode) answer = json_node_new(JSON_NODE_OBJECT);
    JsonObject *result = json_object_new();

    json_node_take_object(answer, result);
    if (peer_request_ended(req, error))
        return;
    if (req->changed)
        log_info(req->name, role_here(req->defs, req->name), "kvm-ft metadata changed on %s: "
                 "taken here too", req->sender);
    json_object_set_boolean_member(result, "changed", req->changed);
    peer_conn_reply(req->conn, req->id, answer);
}

static void handle_update_metadata(Definitions *defs, PeerConn *conn, guint64 id,
                                   JsonObject *params)
{
    const char *name = json_object_get_string_member_with_default(params, "guest", NULL);
    const char *xml = json_object_get_string_member_with_default(params, "domain-xml", NULL);

    if (!name || !xml || ftdef_guest_name_problem(name)) {
        daemon_reply_error(conn, id, "update-metadata needs a guest's name and domain-xml");
        return;
    }
    virt_run(defs->virt, update_metadata_in_thread, on_metadata_updated,
             peer_request_new(defs, conn, id, name, xml), peer_request_free);
}

gboolean definitions_peer_request(Definitions *defs, PeerConn *conn, guint64 id,
                                  const char *method, JsonObject *params)
{
    if (strcmp(method, "define-guest") == 0)
        handle_define_guest(defs, conn, id, params);
    else if (strcmp(method, "undefine-guest") == 0)
        handle_undefine_guest(defs, conn, id, params);
    else if (strcmp(method, "update-metadata") == 0)
        handle_update_metadata(defs, conn, id, params);
    else
        return FALSE;
    return TRUE;
}

/* ---- refusals, for the control socket --------------------------------------- */

const char *definitions_refusal(Definitions *defs, const char *name)
{
    Refusal *r = g_hash_table_lookup(defs->refused, name);

    return r ? r->message : NULL;
}

void definitions_forget_refusal(Definitions *defs, const char *name)
{
    g_hash_table_remove(defs->refused, name);
}

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

void definitions_add_refused(Definitions *defs, JsonBuilder *b, const char *only,
                             gboolean status)
{
    GHashTableIter it;
    gpointer key, value;

    g_hash_table_iter_init(&it, defs->refused);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        if (!only || strcmp(only, key) == 0)
            add_refusal(b, key, value, status);
    }
}

/* ---- lifetime --------------------------------------------------------------- */

Definitions *definitions_new(Daemon *d, GHashTable *guests, GError **err)
{
    Definitions *defs = g_new0(Definitions, 1);

    defs->d = d;
    defs->cfg = daemon_config(d);
    defs->virt = daemon_virt(d);
    defs->guests = guests;
    defs->refused = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                          (GDestroyNotify)refusal_free);
    defs->asked = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    defs->status_writer = g_thread_pool_new(status_writer_run, defs, 1, FALSE, err);
    if (!defs->status_writer) {
        definitions_free(defs);
        return NULL;
    }
    return defs;
}

void definitions_free(Definitions *defs)
{
    if (!defs)
        return;
    g_hash_table_destroy(defs->refused);
    g_hash_table_destroy(defs->asked);
    /* The writes already queued still go out. */
    if (defs->status_writer)
        g_thread_pool_free(defs->status_writer, FALSE, TRUE);
    g_free(defs);
}
