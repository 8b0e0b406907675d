/* ha.c - the HA level's DRBD side: the fence-peer verdict and the handlers' events */
#include "ha.h"

#include <stdarg.h>
#include <string.h>

#include "definitions.h"
#include "drbdcmd.h"
#include "drbdres.h"
#include "jsontext.h"
#include "log.h"
#include "timeouts.h"
#include "virt.h"

G_DEFINE_QUARK(kvmft-ha-error-quark, ha_error)

/* What the operator's log and the event quote of a command's output, at most. */
#define OUTPUT_SHOWN 200

struct Ha {
    Daemon *d;
    DrbdCmd *drbd;
    HaVerdicts *verdicts;
};

/* ---- the verdict table ------------------------------------------------------ */

typedef struct {
    guint64 seq;
    gint64 settled_us; /* 0: under way */
    HaVerdict v;
} Entry;

struct HaVerdicts {
    GHashTable *by_resource; /* resource -> Entry */
    guint64 next_seq;
};

const char *ha_verdict_name(HaVerdictKind kind)
{
    switch (kind) {
    case HA_VERDICT_PENDING:
        return "pending";
    case HA_VERDICT_PEER_FENCED:
        return "peer-fenced";
    case HA_VERDICT_REFUSED:
        return "refused";
    }
    return "refused";
}

void ha_verdict_clear(HaVerdict *v)
{
    g_clear_pointer(&v->guest, g_free);
    g_clear_pointer(&v->reason, g_free);
    g_clear_pointer(&v->owner, g_free);
    g_clear_pointer(&v->generation, g_free);
}

static void entry_free(Entry *e)
{
    ha_verdict_clear(&e->v);
    g_free(e);
}

HaVerdicts *ha_verdicts_new(void)
{
    HaVerdicts *t = g_new0(HaVerdicts, 1);

    t->by_resource = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                           (GDestroyNotify)entry_free);
    return t;
}

void ha_verdicts_free(HaVerdicts *t)
{
    if (!t)
        return;
    g_hash_table_destroy(t->by_resource);
    g_free(t);
}

gboolean ha_verdicts_take(HaVerdicts *t, const char *resource, gint64 now_us, HaVerdict *out)
{
    Entry *e = g_hash_table_lookup(t->by_resource, resource);

    if (!e)
        return FALSE;
    if (!e->settled_us) {
        out->kind = HA_VERDICT_PENDING;
        out->guest = g_strdup(e->v.guest);
        return TRUE;
    }
    if (now_us - e->settled_us > (gint64)HA_VERDICT_KEEP_MS * 1000) {
        g_hash_table_remove(t->by_resource, resource);
        return FALSE;
    }
    /* Once: the next fence-peer decides anew. */
    *out = e->v;
    memset(&e->v, 0, sizeof(e->v));
    g_hash_table_remove(t->by_resource, resource);
    return TRUE;
}

guint64 ha_verdicts_start(HaVerdicts *t, const char *resource, const char *guest)
{
    Entry *e = g_new0(Entry, 1);

    e->seq = ++t->next_seq;
    e->v.kind = HA_VERDICT_PENDING;
    e->v.guest = g_strdup(guest);
    g_hash_table_replace(t->by_resource, g_strdup(resource), e);
    return e->seq;
}

gboolean ha_verdicts_settle(HaVerdicts *t, const char *resource, guint64 seq,
                            HaVerdictKind kind, const char *reason, const char *owner,
                            const char *generation, gint64 now_us)
{
    Entry *e = g_hash_table_lookup(t->by_resource, resource);

    g_return_val_if_fail(kind != HA_VERDICT_PENDING, FALSE);
    if (!e || e->seq != seq || e->settled_us)
        return FALSE;
    e->settled_us = MAX(now_us, 1);
    e->v.kind = kind;
    e->v.reason = g_strdup(reason);
    e->v.owner = g_strdup(owner);
    e->v.generation = g_strdup(generation);
    return TRUE;
}

/* ---- what DRBD says ------------------------------------------------------------- */

gboolean ha_handler_known(const char *handler)
{
    static const char *const known[] = {
        HA_HANDLER_FENCE_PEER, HA_HANDLER_AFTER_RESYNC_TARGET, HA_HANDLER_UNFENCE_PEER,
        HA_HANDLER_SPLIT_BRAIN,
    };

    for (guint i = 0; handler && i < G_N_ELEMENTS(known); i++)
        if (strcmp(handler, known[i]) == 0)
            return TRUE;
    return FALSE;
}

/* The output, cut and escaped so that it stays one line of a message. */
static char *shown_output(const char *output)
{
    g_autofree char *stripped = g_strstrip(g_strdup(output ? output : ""));
    g_autofree char *cut = g_utf8_substring(stripped, 0,
                                            MIN(g_utf8_strlen(stripped, -1), OUTPUT_SHOWN));
    g_autofree char *esc = g_strescape(cut, NULL);

    if (!*esc)
        return g_strdup("no output");
    return g_strdup_printf("'%s%s'", esc, strlen(cut) < strlen(stripped) ? "..." : "");
}

/* "XXXXXXXXXXXXXXXX:hex:...": a line of get-gi. */
static gboolean gi_line(const char *line)
{
    guint n = 0;

    while (g_ascii_isxdigit(line[n]))
        n++;
    if (n != 16 || line[n] != ':')
        return FALSE;
    for (const char *p = line + n; *p; p++)
        if (*p != ':' && !g_ascii_isxdigit(*p))
            return FALSE;
    return line[strlen(line) - 1] != ':';
}

char *ha_generation_from_get_gi(const char *output, GError **err)
{
    g_auto(GStrv) lines = g_strsplit(output ? output : "", "\n", -1);
    g_autofree char *shown = NULL;

    for (guint i = 0; lines[i]; i++) {
        const char *line = g_strstrip(lines[i]);
        guint64 uuid;

        if (!gi_line(line))
            continue;
        /* DRBD marks a primary's current UUID in its lowest bit, and compares without it. */
        uuid = g_ascii_strtoull(line, NULL, 16) & ~(guint64)1;
        if (uuid == 0 || uuid == 4) {
            g_set_error(err, HA_ERROR, HA_ERROR_INVALID, "the resource has no data "
                        "generation yet (current UUID %.16s): nothing to claim", line);
            return NULL;
        }
        return g_strdup_printf("%016" G_GINT64_MODIFIER "X", uuid);
    }
    shown = shown_output(output);
    g_set_error(err, HA_ERROR, HA_ERROR_INVALID, "drbdadm get-gi printed no generation "
                "line (UUID:UUID:...): %s", shown);
    return NULL;
}

char **ha_resource_guests(const char *resource)
{
    g_autoptr(GPtrArray) names = g_ptr_array_new();
    const char *rest = g_str_has_prefix(resource, "kvmft-") ? resource + 6 : NULL;
    gsize n = rest ? strlen(rest) : 0;

    /* From the last '-' back: the longest guest name first. */
    for (gsize i = n; rest && i-- > 1;)
        if (rest[i] == '-' && i + 1 < n)
            g_ptr_array_add(names, g_strndup(rest, i));
    g_ptr_array_add(names, NULL);
    return (char **)g_ptr_array_free(g_steal_pointer(&names), FALSE);
}

/* ---- the guest of a resource ------------------------------------------------------ */

/*
 * The ha guest here one of whose disks is resource (and which), read from
 * libvirt: synchronously, as the other control commands read definitions;
 * a fence-peer reads it once per decision, not per poll.
 */
static FtDef *find_guest(Ha *ha, const char *resource, GError **err)
{
    g_auto(GStrv) names = ha_resource_guests(resource);
    g_autoptr(GString) why = g_string_new(NULL);
    g_autoptr(FtDef) found = NULL;

    for (guint i = 0; names[i]; i++) {
        g_autoptr(GError) e = NULL;
        g_autoptr(FtDef) def = NULL;

        if (ftdef_guest_name_problem(names[i]))
            continue;
        def = definitions_read_ha(daemon_definitions(ha->d), names[i], &e);
        if (!def) {
            if (!g_error_matches(e, VIRT_ERROR, VIRT_ERROR_NO_DOMAIN))
                g_string_append_printf(why, "%sguest '%s': %s", why->len ? "; " : "",
                                       names[i], e->message);
            continue;
        }
        for (guint k = 0; k < def->disks->len; k++) {
            g_autofree char *name = drbdres_resource_name(def, k);

            if (strcmp(name, resource) != 0)
                continue;
            if (found) {
                g_set_error(err, HA_ERROR, HA_ERROR_UNKNOWN, "DRBD resource %s is a disk of "
                            "both guest '%s' and guest '%s': rename one of them", resource,
                            found->name, def->name);
                return NULL;
            }
            found = g_steal_pointer(&def);
            break;
        }
    }
    if (!found)
        g_set_error(err, HA_ERROR, HA_ERROR_UNKNOWN, "no ha guest on this host has DRBD "
                    "resource %s%s%s%s", resource, why->len ? " (" : "", why->str,
                    why->len ? ")" : "");
    return g_steal_pointer(&found);
}

/* ---- reporting ------------------------------------------------------------------------ */

/* {"drbd": {"guest", "resource", "handler"[, "verdict", "reason", "owner", "generation"]}} */
static void broadcast(Ha *ha, const char *guest, const char *resource, const char *handler,
                      const HaVerdict *v)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) event = NULL;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "drbd");
    json_builder_begin_object(b);
    json_add_string_or_null(b, "guest", guest);
    json_add_string_or_null(b, "resource", resource);
    json_add_string_or_null(b, "handler", handler);
    if (v) {
        json_add_string_or_null(b, "verdict", ha_verdict_name(v->kind));
        json_add_string_or_null(b, "reason", v->reason);
        json_add_string_or_null(b, "owner", v->owner);
        json_add_string_or_null(b, "generation", v->generation);
    }
    json_builder_end_object(b);
    json_builder_end_object(b);
    event = json_builder_get_root(b);
    daemon_broadcast(ha->d, event);
}

static JsonNode *verdict_json(const HaVerdict *v)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    json_builder_begin_object(b);
    json_add_string_or_null(b, "verdict", ha_verdict_name(v->kind));
    json_add_string_or_null(b, "reason", v->reason ? v->reason
                                              : "deciding: ask again");
    json_add_string_or_null(b, "owner", v->owner);
    json_add_string_or_null(b, "generation", v->generation);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

/* ---- fence-peer ------------------------------------------------------------------------ */

/* One decision on its way, found again by resource and number when each step returns. */
typedef struct {
    Daemon *d;
    char *resource;
    guint64 seq;
    char *guest;
    char *self;
    char *peer;
    char *generation;
} Decision;

static void decision_free(Decision *dn)
{
    g_free(dn->resource);
    g_free(dn->guest);
    g_free(dn->self);
    g_free(dn->peer);
    g_free(dn->generation);
    g_free(dn);
}

/* The Ha, unless kvm-ftd is on its way out (then the answer changes nothing). */
static Ha *decision_ha(Decision *dn)
{
    return daemon_quitting(dn->d) ? NULL : daemon_ha(dn->d);
}

static void settle(Decision *dn, HaVerdictKind kind, const char *owner, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

/* The decision's end: kept for the handler's next request, logged, broadcast; dn freed. */
static void settle(Decision *dn, HaVerdictKind kind, const char *owner, const char *fmt, ...)
{
    Ha *ha = decision_ha(dn);
    g_autofree char *reason = NULL;
    HaVerdict v = { .kind = kind, .guest = dn->guest, .owner = (char *)owner,
                    .generation = dn->generation };
    va_list ap;

    va_start(ap, fmt);
    reason = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    v.reason = reason;
    if (ha && ha_verdicts_settle(ha->verdicts, dn->resource, dn->seq, kind, reason, owner,
                                 dn->generation, g_get_monotonic_time())) {
        log_msg(kind == HA_VERDICT_PEER_FENCED ? LOG_INFO : LOG_WARN, dn->guest, "none",
                "DRBD %s fence-peer: %s (%s): %s", dn->resource, ha_verdict_name(kind),
                kind == HA_VERDICT_PEER_FENCED ? "DRBD resumes, the peer counts as fenced"
                                               : "DRBD keeps I/O frozen, no promotion",
                reason);
        broadcast(ha, dn->guest, dn->resource, HA_HANDLER_FENCE_PEER, &v);
    }
    decision_free(dn);
}

static void on_claim(const char *owner, const GError *error, gpointer opaque)
{
    Decision *dn = opaque;

    if (error)
        settle(dn, HA_VERDICT_REFUSED, NULL, "the witness did not decide generation %s: %s",
               dn->generation, error->message);
    else if (strcmp(owner, dn->self) == 0)
        settle(dn, HA_VERDICT_PEER_FENCED, owner, "the witness gave generation %s to this "
               "host: %s may not promote onto it", dn->generation, dn->peer);
    else
        settle(dn, HA_VERDICT_REFUSED, owner, "the witness gave generation %s to %s: this "
               "host may not write without it", dn->generation, owner);
}

static void on_get_gi(int status, const char *output, const GError *error, gpointer opaque)
{
    Decision *dn = opaque;
    g_autoptr(GError) e = NULL;
    g_autofree char *shown = NULL;
    g_autofree char *key = NULL;
    g_autofree char *generation = NULL;
    Witness *w;
    Ha *ha = decision_ha(dn);

    if (!ha) {
        decision_free(dn);
        return;
    }
    if (error) {
        settle(dn, HA_VERDICT_REFUSED, NULL, "%s", error->message);
        return;
    }
    if (status != 0) {
        shown = shown_output(output);
        settle(dn, HA_VERDICT_REFUSED, NULL, "drbdadm get-gi %s: exit status %d: %s",
               dn->resource, status, shown);
        return;
    }
    generation = ha_generation_from_get_gi(output, &e);
    if (!generation) {
        settle(dn, HA_VERDICT_REFUSED, NULL, "%s", e->message);
        return;
    }
    dn->generation = g_steal_pointer(&generation);
    w = daemon_witness(ha->d);
    if (!w) {
        settle(dn, HA_VERDICT_REFUSED, NULL, "no witness: a cut link and a dead peer look "
               "the same here");
        return;
    }
    generation = g_strconcat("drbd-", dn->generation, NULL);
    key = witness_key(dn->self, dn->peer, dn->guest, generation);
    witness_claim(w, key, dn->self, on_claim, dn);
}

static JsonNode *fence_peer(Ha *ha, const char *resource, GError **err)
{
    HaVerdict v = { 0 };
    g_autoptr(FtDef) def = NULL;
    const char *args[] = { "get-gi", resource, NULL };
    const char *self = daemon_config(ha->d)->host_name;
    JsonNode *answer;
    Decision *dn;

    if (!ha_verdicts_take(ha->verdicts, resource, g_get_monotonic_time(), &v)) {
        def = find_guest(ha, resource, err);
        if (!def)
            return NULL;
        dn = g_new0(Decision, 1);
        dn->d = ha->d;
        dn->resource = g_strdup(resource);
        dn->guest = g_strdup(def->name);
        dn->self = g_strdup(self);
        dn->peer = g_strdup(ftdef_peer(def, self)->name);
        dn->seq = ha_verdicts_start(ha->verdicts, resource, def->name);
        log_info(def->name, "none", "DRBD %s fence-peer: the peer (%s) is unreachable and "
                 "DRBD holds the resource's I/O: deciding (drbdadm get-gi, then the witness)",
                 resource, dn->peer);
        drbdcmd_run(ha->drbd, args, on_get_gi, dn);
        v.kind = HA_VERDICT_PENDING;
        v.guest = g_strdup(def->name);
    }
    answer = verdict_json(&v);
    ha_verdict_clear(&v);
    return answer;
}

/* ---- the other handlers ------------------------------------------------------------- */

static JsonNode *tell(Ha *ha, const char *handler, const char *resource, GError **err)
{
    g_autoptr(FtDef) def = find_guest(ha, resource, err);

    if (!def)
        return NULL;
    if (strcmp(handler, HA_HANDLER_SPLIT_BRAIN) == 0)
        log_warn(def->name, "none", "DRBD %s split-brain: both copies of the disk changed "
                 "while the hosts were apart; DRBD leaves the resource disconnected until an "
                 "operator decides which copy is the guest's", resource);
    else if (strcmp(handler, HA_HANDLER_AFTER_RESYNC_TARGET) == 0)
        log_info(def->name, "none", "DRBD %s after-resync-target: this host's copy is up to "
                 "date again", resource);
    else
        log_info(def->name, "none", "DRBD %s unfence-peer: the peer's copy is up to date "
                 "again", resource);
    broadcast(ha, def->name, resource, handler, NULL);
    return json_node_new(JSON_NODE_NULL);
}

JsonNode *ha_handler_request(Daemon *d, JsonObject *req, GError **err)
{
    Ha *ha = daemon_ha(d);
    const char *handler = json_object_get_string_member_with_default(req, "handler", NULL);
    const char *resource = json_object_get_string_member_with_default(req, "resource", NULL);
    const char *problem;

    if (!ha_handler_known(handler)) {
        g_autofree char *shown = handler ? g_strescape(handler, NULL) : NULL;

        g_set_error(err, HA_ERROR, HA_ERROR_INVALID, "drbd-handler: %s%.80s%s is not a "
                    "handler kvm-ft answers (fence-peer, after-resync-target, unfence-peer, "
                    "split-brain)", shown ? "'" : "", shown ? shown : "no handler",
                    shown ? "'" : "");
        return NULL;
    }
    if (!resource) {
        g_set_error(err, HA_ERROR, HA_ERROR_INVALID, "drbd-handler: the resource is missing");
        return NULL;
    }
    problem = drbdres_resource_name_problem(resource);
    if (problem) {
        g_autofree char *cut = g_strndup(resource, 80);
        g_autofree char *shown = g_strescape(cut, NULL);

        g_set_error(err, HA_ERROR, HA_ERROR_INVALID, "drbd-handler: resource '%s%s' %s",
                    shown, strlen(resource) > 80 ? "..." : "", problem);
        return NULL;
    }
    if (strcmp(handler, HA_HANDLER_FENCE_PEER) == 0)
        return fence_peer(ha, resource, err);
    return tell(ha, handler, resource, err);
}

/* ---- lifetime ----------------------------------------------------------------------- */

Ha *ha_new(Daemon *d)
{
    Ha *ha = g_new0(Ha, 1);

    ha->d = d;
    ha->drbd = drbdcmd_new(daemon_config(d)->drbd_command_prefix, HA_DRBD_COMMAND_MS);
    ha->verdicts = ha_verdicts_new();
    return ha;
}

void ha_free(Ha *ha)
{
    if (!ha)
        return;
    /* Their callbacks find kvm-ftd quitting and decide nothing. */
    drbdcmd_free(ha->drbd);
    ha_verdicts_free(ha->verdicts);
    g_free(ha);
}
