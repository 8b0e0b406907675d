/* engine.c - drives QEMU's COLO checkpointing engine over QMP */
#include "engine.h"

#include <string.h>

#include "domxml.h"
#include "ft.h"
#include "log.h"
#include "timeouts.h"
#include "tlspsk.h"

/* libvirt's name for the guest's first (and only supported) NIC backend. */
#define GUEST_NETDEV "hostnet0"
/* libvirt's name for the domain's first <iothreads> thread. */
#define COMPARE_IOTHREAD "iothread1"
/* The secondary's filter that maps TCP sequence numbers to the primary's. */
#define REWRITER "rew0"
/* QEMU's TLS credentials of the channels between the hosts (tlspsk.h). */
#define TLS_SERVER "kvmft-tls-server"
#define TLS_CLIENT "kvmft-tls-client"
/*
 * GnuTLS's default order, with ChaCha20 moved last.  A TLS 1.3 external
 * PSK is bound to SHA-256, which rules out AES-256-GCM-SHA384, and NORMAL
 * lists ChaCha20 before AES-128-GCM: the pair chose ChaCha20 (0.5 GB/s
 * here) over AES-128-GCM (5.9 GB/s with AES-NI, gnutls-cli
 * --benchmark-ciphers), and a dirtying guest's checkpoints took 6 times
 * as long as in clear.
 */
#define TLS_PRIORITY "NORMAL:-CHACHA20-POLY1305:+CHACHA20-POLY1305"
/* The first sync's rate: the link's, not QEMU's cautious default. */
#define SYNC_BANDWIDTH (10LL << 30)

JsonNode *engine_query(Qmp *q, const EngineLink *link, const char *command, JsonObject *args,
                       GError **err)
{
    JsonNode *ret = qmp_call(q, command, args, link->timeout_ms, err);

    if (args)
        json_object_unref(args);
    if (!ret)
        g_prefix_error(err, "%s: ", command);
    return ret;
}

gboolean engine_run(Qmp *q, const EngineLink *link, const char *command, JsonObject *args,
                    GError **err)
{
    g_autoptr(JsonNode) ret = engine_query(q, link, command, args, err);

    return ret != NULL;
}

static JsonObject *inet_addr(const char *host, guint port)
{
    JsonObject *data = json_object_new();
    JsonObject *addr = json_object_new();
    g_autofree char *port_s = g_strdup_printf("%u", port);

    json_object_set_string_member(data, "host", host);
    json_object_set_string_member(data, "port", port_s);
    json_object_set_string_member(addr, "type", "inet");
    json_object_set_object_member(addr, "data", data);
    return addr;
}

JsonObject *engine_unix_addr(const char *path)
{
    JsonObject *data = json_object_new();
    JsonObject *addr = json_object_new();

    json_object_set_string_member(data, "path", path);
    json_object_set_string_member(addr, "type", "unix");
    json_object_set_object_member(addr, "data", data);
    return addr;
}

static JsonObject *chardev_at(const char *id, JsonObject *addr /* taken */, gboolean server)
{
    JsonObject *args = json_object_new();
    JsonObject *backend = json_object_new();
    JsonObject *data = json_object_new();

    json_object_set_object_member(data, "addr", addr);
    json_object_set_boolean_member(data, "server", server);
    if (server)
        json_object_set_boolean_member(data, "wait", FALSE);
    else
        json_object_set_int_member(data, "reconnect", CHANNEL_RECONNECT_S);
    json_object_set_string_member(backend, "type", "socket");
    json_object_set_object_member(backend, "data", data);
    json_object_set_string_member(args, "id", id);
    json_object_set_object_member(args, "backend", backend);
    return args;
}

static const char *tls_creds(const EngineLink *link, gboolean server)
{
    if (!link->tls_dir)
        return NULL;
    return server ? TLS_SERVER : TLS_CLIENT;
}

const char *engine_tls_client(const EngineLink *link)
{
    return tls_creds(link, FALSE);
}

/* A COLO channel between the hosts: on TLS unless the configuration says no. */
static JsonObject *link_chardev(const EngineLink *link, const char *id, const char *host,
                                guint port, gboolean server)
{
    JsonObject *args = chardev_at(id, inet_addr(host, port), server);
    const char *creds = tls_creds(link, server);

    if (creds)
        json_object_set_string_member(
            json_object_get_object_member(
                json_object_get_object_member(args, "backend"), "data"),
            "tls-creds", creds);
    return args;
}

/* The migration stream's credentials; "" (in clear) also undoes an earlier role's. */
static JsonObject *migration_tls(const EngineLink *link, gboolean server)
{
    const char *creds = tls_creds(link, server);
    JsonObject *params = json_object_new();

    json_object_set_string_member(params, "tls-creds", creds ? creds : "");
    return params;
}

/*
 * The primary's channels between its own filters and colo-compare: a unix
 * socket in kvm-ftd's 0700 run dir, where no other local user can connect
 * first and read or inject the guest's packets (a loopback port would let
 * anyone).
 */
static JsonObject *local_chardev(const EngineLink *link, const char *id, const char *channel,
                                 gboolean server)
{
    g_autofree char *file = g_strdup_printf("%s.%s", link->def->name, channel);
    g_autofree char *path = g_build_filename(link->run_dir, file, NULL);

    return chardev_at(id, engine_unix_addr(path), server);
}

/* libvirt opens the tap with a virtio-net header: every filter must expect it. */
static JsonObject *net_object(const char *type, const char *id)
{
    JsonObject *args = json_object_new();

    json_object_set_string_member(args, "qom-type", type);
    json_object_set_string_member(args, "id", id);
    json_object_set_string_member(args, "netdev", GUEST_NETDEV);
    json_object_set_boolean_member(args, "vnet_hdr_support", TRUE);
    return args;
}

static JsonObject *filter(const char *type, const char *id, const char *queue,
                          const char *dir, const char *chardev)
{
    JsonObject *args = net_object(type, id);

    json_object_set_string_member(args, "queue", queue);
    if (dir)
        json_object_set_string_member(args, dir, chardev);
    return args;
}

/*
 * A primary that was a secondary keeps its filter-rewriter for good: the
 * guest's TCP connections from then carry the sequence numbers it maps.
 * The primary's filters must see packets as the guest sends them, so they
 * go in front of it.
 */
static JsonObject *primary_filter(const char *type, const char *id, const char *queue,
                                  const char *dir, const char *chardev,
                                  gboolean before_rewriter)
{
    JsonObject *args = filter(type, id, queue, dir, chardev);

    if (before_rewriter) {
        json_object_set_string_member(args, "insert", "before");
        json_object_set_string_member(args, "position", "id=" REWRITER);
    }
    return args;
}

static gboolean has_object(Qmp *q, const EngineLink *link, const char *id,
                           gboolean *found, GError **err)
{
    g_autoptr(JsonNode) ret = engine_query(q, link, "qom-list", engine_arg("path", "/objects"),
                                           err);
    JsonArray *props;

    if (!ret)
        return FALSE;
    *found = FALSE;
    props = JSON_NODE_HOLDS_ARRAY(ret) ? json_node_get_array(ret) : NULL;
    for (guint i = 0; props && i < json_array_get_length(props); i++) {
        JsonObject *p = json_array_get_object_element(props, i);

        if (p && g_strcmp0(json_object_get_string_member_with_default(p, "name", ""), id) == 0)
            *found = TRUE;
    }
    return TRUE;
}

static gboolean add_creds(Qmp *q, const EngineLink *link, const char *id,
                          const char *endpoint, GError **err)
{
    JsonObject *args;
    gboolean found;

    if (!has_object(q, link, id, &found, err))
        return FALSE;
    if (found)
        return TRUE;
    args = json_object_new();
    json_object_set_string_member(args, "qom-type", "tls-creds-psk");
    json_object_set_string_member(args, "id", id);
    json_object_set_string_member(args, "endpoint", endpoint);
    json_object_set_string_member(args, "dir", link->tls_dir);
    json_object_set_string_member(args, "priority", TLS_PRIORITY);
    if (strcmp(endpoint, "client") == 0)
        json_object_set_string_member(args, "username", TLSPSK_USERNAME);
    return engine_run(q, link, "object-add", args, err);
}

gboolean engine_add_tls_creds(Qmp *q, const EngineLink *link, GError **err)
{
    return !link->tls_dir || (add_creds(q, link, TLS_SERVER, "server", err) &&
                              add_creds(q, link, TLS_CLIENT, "client", err));
}

static JsonObject *colo_capability(void)
{
    JsonObject *args = json_object_new();
    JsonArray *caps = json_array_new();
    JsonObject *cap = json_object_new();

    json_object_set_string_member(cap, "capability", "x-colo");
    json_object_set_boolean_member(cap, "state", TRUE);
    json_array_add_object_element(caps, cap);
    json_object_set_array_member(args, "capabilities", caps);
    return args;
}

static JsonObject *uri_arg(const char *host, guint port)
{
    JsonObject *args = json_object_new();
    g_autofree char *uri = g_strdup_printf("tcp:%s:%u", host, port);

    json_object_set_string_member(args, "uri", uri);
    return args;
}

static JsonObject *null_chardev(const char *id)
{
    JsonObject *args = json_object_new();
    JsonObject *backend = json_object_new();

    json_object_set_string_member(backend, "type", "null");
    json_object_set_object_member(backend, "data", json_object_new());
    json_object_set_string_member(args, "id", id);
    json_object_set_object_member(args, "backend", backend);
    return args;
}

/*
 * Where the secondary's guest output goes: to the primary's colo-compare
 * (filter f2), or, in passive mode, nowhere (f2p) -- the primary releases
 * its own output at each checkpoint without comparing, and the secondary's
 * must never leave.  In auto mode both exist and one of them is on.
 */
#define TO_COMPARE "f2"
#define TO_SINK "f2p"

static gboolean needs_sink(const EngineLink *link)
{
    return link->def->output_mode != FTDEF_OUTPUT_COMPARE;
}

static gboolean add_output_filters(Qmp *q, const EngineLink *link, GError **err)
{
    JsonObject *to_sink;

    if (link->def->output_mode != FTDEF_OUTPUT_PASSIVE &&
        !engine_run(q, link, "object-add",
                    filter("filter-redirector", TO_COMPARE, "rx", "outdev", "red1"), err))
        return FALSE;
    if (!needs_sink(link))
        return TRUE;
    to_sink = filter("filter-redirector", TO_SINK, "rx", "outdev", "sink0");
    /* auto starts in compare */
    if (link->def->output_mode == FTDEF_OUTPUT_AUTO)
        json_object_set_string_member(to_sink, "status", "off");
    return engine_run(q, link, "object-add", to_sink, err);
}

/* qom-set PATH PROPERTY to value (taken). */
static gboolean qom_set(Qmp *q, const EngineLink *link, const char *path, const char *property,
                        JsonNode *value, GError **err)
{
    JsonObject *args = json_object_new();

    json_object_set_string_member(args, "path", path);
    json_object_set_string_member(args, "property", property);
    json_object_set_member(args, "value", value);
    return engine_run(q, link, "qom-set", args, err);
}

static gboolean set_filter_status(Qmp *q, const EngineLink *link, const char *id,
                                  gboolean on, GError **err)
{
    return qom_set(q, link, id, "status", json_node_init_string(json_node_alloc(),
                                                                on ? "on" : "off"), err);
}

gboolean engine_secondary_set_output(Qmp *q, const EngineLink *link, FtOutputMode mode,
                                     GError **err)
{
    const char *on = mode == FTDEF_OUTPUT_PASSIVE ? TO_SINK : TO_COMPARE;
    const char *off = mode == FTDEF_OUTPUT_PASSIVE ? TO_COMPARE : TO_SINK;

    /* The one turned on first: no packet ever passes both and reaches the LAN. */
    return set_filter_status(q, link, on, TRUE, err) &&
           set_filter_status(q, link, off, FALSE, err);
}

/*
 * colo-compare's wait for the secondary's copy of a reply: in compare mode
 * it follows the secondary's measured lag between a floor and
 * compare-timeout-ms (ftdef.h); in passive mode it is the fixed epoch.
 * The scan for expired replies runs five times per shortest wait, which
 * bounds the wait at 1.2 times its value.
 */
typedef struct {
    guint timeout_ms;
    guint min_timeout_ms; /* 0: fixed */
    guint scan_ms;
} CompareWait;

static CompareWait compare_wait(const EngineLink *link, FtOutputMode mode)
{
    CompareWait w;

    if (mode == FTDEF_OUTPUT_PASSIVE) {
        w.timeout_ms = link->def->output_mode == FTDEF_OUTPUT_PASSIVE
                           ? link->def->compare_timeout_ms
                           : FTDEF_PASSIVE_EPOCH_DEFAULT;
        w.min_timeout_ms = 0;
    } else {
        w.timeout_ms = link->def->compare_timeout_ms;
        w.min_timeout_ms = MIN(FTDEF_COMPARE_WAIT_FLOOR, w.timeout_ms);
    }
    w.scan_ms = MAX(1, (w.min_timeout_ms ? w.min_timeout_ms : w.timeout_ms) / 5);
    return w;
}

static void set_compare_wait(JsonObject *compare, CompareWait w)
{
    json_object_set_int_member(compare, "compare_timeout", w.timeout_ms);
    json_object_set_int_member(compare, "min_compare_timeout", w.min_timeout_ms);
    json_object_set_int_member(compare, "expired_scan_cycle", w.scan_ms);
}

static gboolean qom_set_uint(Qmp *q, const EngineLink *link, const char *path,
                             const char *property, guint value, GError **err)
{
    return qom_set(q, link, path, property, json_node_init_int(json_node_alloc(), value), err);
}

/* A number colo-compare reports; absent from a QEMU without the patch named. */
static gboolean compare_number(Qmp *q, const EngineLink *link, const char *property,
                               const char *patch, gint64 *value, GError **err)
{
    JsonObject *args = engine_arg("path", "comp0");
    g_autoptr(JsonNode) ret = NULL;

    json_object_set_string_member(args, "property", property);
    ret = engine_query(q, link, "qom-get", args, err);
    if (!ret)
        return FALSE;
    if (!JSON_NODE_HOLDS_VALUE(ret) || json_node_get_value_type(ret) != G_TYPE_INT64) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "colo-compare's %s is not a number "
                    "(a QEMU without qemu-patches %s?)", property, patch);
        return FALSE;
    }
    *value = json_node_get_int(ret);
    return TRUE;
}

gboolean engine_primary_lag(Qmp *q, const EngineLink *link, gint64 *lag_ms, GError **err)
{
    return compare_number(q, link, "lag_timeout", "0009", lag_ms, err);
}

gboolean engine_primary_forced(Qmp *q, const EngineLink *link, gint64 *difference,
                               gint64 *expired, GError **err)
{
    return compare_number(q, link, "difference_checkpoints", "0010", difference, err) &&
           compare_number(q, link, "expired_checkpoints", "0010", expired, err);
}

gboolean engine_primary_set_output(Qmp *q, const EngineLink *link, FtOutputMode mode,
                                   GError **err)
{
    CompareWait w = compare_wait(link, mode);

    return qom_set_uint(q, link, "comp0", "min_compare_timeout", w.min_timeout_ms, err) &&
           qom_set_uint(q, link, "comp0", "compare_timeout", w.timeout_ms, err) &&
           qom_set_uint(q, link, "comp0", "expired_scan_cycle", w.scan_ms, err);
}

gboolean engine_secondary_setup(Qmp *q, const EngineLink *link, GError **err)
{
    const guint base = link->def->port_base;
    const char *pri = link->primary_addr;
    const char *sec = link->secondary_addr;
    const char *server_creds = tls_creds(link, TRUE);
    JsonObject *nbd;

    if (!engine_add_tls_creds(q, link, err) ||
        (needs_sink(link) && !engine_run(q, link, "chardev-add", null_chardev("sink0"), err)))
        return FALSE;
    if (!engine_run(q, link, "chardev-add",
                    link_chardev(link, "red0", pri, base + FT_PORT_MIRROR, FALSE), err) ||
        !engine_run(q, link, "chardev-add",
                    link_chardev(link, "red1", pri, base + FT_PORT_COMPARE, FALSE), err) ||
        !engine_run(q, link, "object-add",
                    filter("filter-redirector", "f1", "tx", "indev", "red0"), err) ||
        !add_output_filters(q, link, err) ||
        !engine_run(q, link, "object-add",
                    filter("filter-rewriter", REWRITER, "all", NULL, NULL), err) ||
        !engine_run(q, link, "migrate-set-capabilities", colo_capability(), err))
        return FALSE;

    nbd = json_object_new();
    json_object_set_object_member(nbd, "addr", inet_addr(sec, base + FT_PORT_NBD));
    if (server_creds)
        json_object_set_string_member(nbd, "tls-creds", server_creds);
    if (!engine_run(q, link, "nbd-server-start", nbd, err))
        return FALSE;
    for (guint i = 0; i < link->def->disks->len; i++) {
        JsonObject *args = json_object_new();
        g_autofree char *parent = domxml_parent_node(i);

        json_object_set_string_member(args, "device", parent);
        json_object_set_boolean_member(args, "writable", TRUE);
        if (!engine_run(q, link, "nbd-server-add", args, err))
            return FALSE;
    }
    return engine_run(q, link, "migrate-set-parameters", migration_tls(link, TRUE), err) &&
           engine_run(q, link, "migrate-incoming", uri_arg(sec, base + FT_PORT_MIGRATION), err);
}

static JsonObject *hmp_args(const char *line)
{
    JsonObject *args = json_object_new();

    json_object_set_string_member(args, "command-line", line);
    return args;
}

/*
 * HMP reports failure as text, not as a QMP error: it becomes a command
 * error ("what: text"), so "already gone" reads as it does from QMP.
 */
static gboolean hmp_output_ok(JsonNode *out, const char *what, GError **err)
{
    const char *text = JSON_NODE_HOLDS_VALUE(out) ? json_node_get_string(out) : NULL;

    if (text && *text) {
        g_autofree char *msg = g_strstrip(g_strdup(text));

        g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "%s: %s", what, msg);
        return FALSE;
    }
    return TRUE;
}

static gboolean hmp(Qmp *q, const EngineLink *link, const char *what, const char *line,
                    GError **err)
{
    g_autoptr(JsonObject) args = hmp_args(line);
    g_autoptr(JsonNode) out = qmp_call(q, "human-monitor-command", args, link->timeout_ms, err);

    if (!out) {
        g_prefix_error(err, "%s: ", what);
        return FALSE;
    }
    return hmp_output_ok(out, what, err);
}

/* ---- commands not waited for -------------------------------------------- */

typedef struct {
    char *command;
    JsonObject *args;
} SequenceStep;

struct EngineSequence {
    GQueue steps;           /* of SequenceStep *, the one under way first */
    guint timeout_ms;
    EngineDoneFunc done;
    gpointer opaque;
    GDestroyNotify destroy;
};

static void sequence_step_free(SequenceStep *step)
{
    g_free(step->command);
    if (step->args)
        json_object_unref(step->args);
    g_free(step);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC(SequenceStep, sequence_step_free)

EngineSequence *engine_sequence_new(void)
{
    EngineSequence *seq = g_new0(EngineSequence, 1);

    g_queue_init(&seq->steps);
    return seq;
}

void engine_sequence_add(EngineSequence *seq, const char *command, JsonObject *args)
{
    SequenceStep *step = g_new0(SequenceStep, 1);

    step->command = g_strdup(command);
    step->args = args;
    g_queue_push_tail(&seq->steps, step);
}

static void sequence_free(EngineSequence *seq)
{
    g_queue_clear_full(&seq->steps, (GDestroyNotify)sequence_step_free);
    g_free(seq);
}

/* The connection went first: the caller's data goes without an answer. */
static void sequence_drop(gpointer opaque)
{
    EngineSequence *seq = opaque;

    if (seq->destroy)
        seq->destroy(seq->opaque);
    sequence_free(seq);
}

static void sequence_reply(Qmp *q, JsonNode *result, const GError *error, gpointer opaque);

static gboolean sequence_send(EngineSequence *seq, Qmp *q, GError **err)
{
    SequenceStep *step = g_queue_peek_head(&seq->steps);

    return qmp_call_async(q, step->command, step->args, seq->timeout_ms, sequence_reply, seq,
                          sequence_drop, err);
}

static void sequence_reply(Qmp *q, JsonNode *result, const GError *error, gpointer opaque)
{
    EngineSequence *seq = opaque;
    g_autoptr(SequenceStep) step = g_queue_pop_head(&seq->steps);
    g_autoptr(GError) err = error ? g_error_copy(error) : NULL;

    if (!err && strcmp(step->command, "human-monitor-command") == 0)
        hmp_output_ok(result, json_object_get_string_member(step->args, "command-line"), &err);
    if (!err && !g_queue_is_empty(&seq->steps) && sequence_send(seq, q, &err))
        return;
    seq->done(err, seq->opaque);
    sequence_free(seq);
}

gboolean engine_sequence_run(EngineSequence *seq, Qmp *q, const EngineLink *link,
                             EngineDoneFunc done, gpointer opaque, GDestroyNotify destroy,
                             GError **err)
{
    g_return_val_if_fail(!g_queue_is_empty(&seq->steps), FALSE);
    seq->timeout_ms = link->timeout_ms;
    seq->done = done;
    seq->opaque = opaque;
    seq->destroy = destroy;
    if (sequence_send(seq, q, err))
        return TRUE;
    sequence_free(seq);
    return FALSE;
}

/*
 * The replication child has no QMP command in 7.2 other than HMP's
 * drive_add, which opens its NBD connection at once.
 */
gboolean engine_primary_connect_replication(Qmp *q, const EngineLink *link, EngineDoneFunc done,
                                            gpointer opaque, GDestroyNotify destroy,
                                            GError **err)
{
    EngineSequence *seq = engine_sequence_new();
    const char *creds = engine_tls_client(link);
    g_autofree char *tls = creds ? g_strdup_printf(",file.tls-creds=%s", creds) : NULL;

    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *parent = domxml_parent_node(i);
        g_autofree char *line = g_strdup_printf(
            "drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,"
            "file.host=%s,file.port=%u,file.export=%s,file.open-timeout=%u,"
            "node-name=replication%u,file.node-name=nbd%u%s",
            link->secondary_addr, link->def->port_base + FT_PORT_NBD, parent,
            NBD_OPEN_TIMEOUT_S, i, i, tls ? tls : "");

        engine_sequence_add(seq, "human-monitor-command", hmp_args(line));
    }
    return engine_sequence_run(seq, q, link, done, opaque, destroy, err);
}

static gboolean attach_replication(Qmp *q, const EngineLink *link, guint index, GError **err)
{
    g_autofree char *quorum = domxml_quorum_node(index);
    g_autofree char *node = g_strdup_printf("replication%u", index);
    JsonObject *change = json_object_new();

    json_object_set_string_member(change, "parent", quorum);
    json_object_set_string_member(change, "node", node);
    return engine_run(q, link, "x-blockdev-change", change, err);
}

static gboolean chardev_connected(JsonArray *devs, const char *label)
{
    for (guint i = 0; i < json_array_get_length(devs); i++) {
        JsonObject *dev = json_array_get_object_element(devs, i);

        if (dev && g_strcmp0(json_object_get_string_member_with_default(dev, "label", ""),
                             label) == 0)
            return !g_str_has_prefix(json_object_get_string_member_with_default(
                                         dev, "filename", "disconnected:"),
                                     "disconnected:");
    }
    return FALSE;
}

/*
 * COLO must not start before the secondary's filters are connected to the
 * primary's mirror and compare channels: until then colo-compare has
 * nothing to compare with, holds every reply until a checkpoint, and the
 * secondary's guest misses the packets that the primary's received.
 */
gboolean engine_primary_channels_connected(Qmp *q, const EngineLink *link, gint64 deadline_us,
                                           gboolean *connected, GError **err)
{
    g_autoptr(JsonNode) ret = qmp_call(q, "query-chardev", NULL, link->timeout_ms, err);

    if (!ret)
        return FALSE;
    *connected = JSON_NODE_HOLDS_ARRAY(ret) &&
                 chardev_connected(json_node_get_array(ret), "mirror0") &&
                 chardev_connected(json_node_get_array(ret), "compare1");
    if (!*connected && g_get_monotonic_time() > deadline_us) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT,
                    "the secondary's COLO channels did not connect to ports "
                    "%u and %u within %d ms (firewall on the dedicated link?)",
                    link->def->port_base + FT_PORT_MIRROR,
                    link->def->port_base + FT_PORT_COMPARE, CHANNEL_CONNECT_TIMEOUT_MS);
        return FALSE;
    }
    return TRUE;
}

gboolean engine_primary_open_channels(Qmp *q, const EngineLink *link, GError **err)
{
    const guint base = link->def->port_base;
    const char *pri = link->primary_addr;

    return engine_add_tls_creds(q, link, err) &&
           engine_run(q, link, "chardev-add",
                      link_chardev(link, "mirror0", pri, base + FT_PORT_MIRROR, TRUE), err) &&
           engine_run(q, link, "chardev-add",
                      link_chardev(link, "compare1", pri, base + FT_PORT_COMPARE, TRUE), err) &&
           engine_run(q, link, "chardev-add",
                      local_chardev(link, "compare0", "colo-in", TRUE), err) &&
           engine_run(q, link, "chardev-add",
                      local_chardev(link, "compare0-0", "colo-in", FALSE), err) &&
           engine_run(q, link, "chardev-add",
                      local_chardev(link, "compare_out", "colo-out", TRUE), err) &&
           engine_run(q, link, "chardev-add",
                      local_chardev(link, "compare_out0", "colo-out", FALSE), err);
}

/*
 * From the first of these on, the guest's output waits in colo-compare for
 * the first checkpoint: nothing slow may come between them and it.
 */
static gboolean add_filters(Qmp *q, const EngineLink *link, GError **err)
{
    JsonObject *compare;
    gboolean rewriter;

    if (!has_object(q, link, REWRITER, &rewriter, err))
        return FALSE;
    if (!engine_run(q, link, "object-add",
                    primary_filter("filter-mirror", "m0", "tx", "outdev", "mirror0", rewriter),
                    err) ||
        !engine_run(q, link, "object-add",
                    primary_filter("filter-redirector", "redire0", "rx", "indev", "compare_out",
                                   rewriter), err) ||
        !engine_run(q, link, "object-add",
                    primary_filter("filter-redirector", "redire1", "rx", "outdev", "compare0",
                                   rewriter), err))
        return FALSE;

    compare = net_object("colo-compare", "comp0");
    json_object_remove_member(compare, "netdev");
    json_object_set_string_member(compare, "primary_in", "compare0-0");
    json_object_set_string_member(compare, "secondary_in", "compare1");
    json_object_set_string_member(compare, "outdev", "compare_out0");
    json_object_set_string_member(compare, "iothread", COMPARE_IOTHREAD);
    /* auto starts in compare */
    set_compare_wait(compare, compare_wait(link, link->def->output_mode == FTDEF_OUTPUT_PASSIVE
                                                     ? FTDEF_OUTPUT_PASSIVE
                                                     : FTDEF_OUTPUT_COMPARE));
    return engine_run(q, link, "object-add", compare, err);
}

static JsonObject *capabilities(gboolean pause)
{
    JsonObject *args = colo_capability();
    JsonArray *caps = json_object_get_array_member(args, "capabilities");
    JsonObject *cap = json_object_new();

    json_object_set_string_member(cap, "capability", "pause-before-switchover");
    json_object_set_boolean_member(cap, "state", pause);
    json_array_add_object_element(caps, cap);
    /* The pause is announced by a MIGRATION event. */
    cap = json_object_new();
    json_object_set_string_member(cap, "capability", "events");
    json_object_set_boolean_member(cap, "state", pause);
    json_array_add_object_element(caps, cap);
    return args;
}

/* The first sync: a precopy that becomes COLO's first checkpoint. */
static gboolean start_sync(Qmp *q, const EngineLink *link, gboolean pause, GError **err)
{
    JsonObject *params = migration_tls(link, FALSE);

    for (guint i = 0; i < link->def->disks->len; i++) {
        if (!attach_replication(q, link, i, err)) {
            json_object_unref(params);
            return FALSE;
        }
    }
    json_object_set_int_member(params, "x-checkpoint-delay",
                               link->def->checkpoint_interval_ms);
    /* QEMU's default of 128 MiB/s would make the first sync take seconds. */
    json_object_set_int_member(params, "max-bandwidth", SYNC_BANDWIDTH);
    return engine_run(q, link, "migrate-set-capabilities", capabilities(pause), err) &&
           engine_run(q, link, "migrate-set-parameters", params, err) &&
           engine_run(q, link, "migrate",
                      uri_arg(link->secondary_addr, link->def->port_base + FT_PORT_MIGRATION), err);
}

EngineCheckpointCause engine_checkpoint_cause(gint64 prev_stop_us, gint64 stop_us,
                                              guint interval_ms)
{
    gint64 early_ms = MIN((gint64)interval_ms / 4, PERIODIC_EARLY_MS);

    if (!prev_stop_us || stop_us <= prev_stop_us)
        return ENGINE_CHECKPOINT_PERIODIC;
    return (stop_us - prev_stop_us) / 1000 < (gint64)interval_ms - early_ms
               ? ENGINE_CHECKPOINT_FORCED
               : ENGINE_CHECKPOINT_PERIODIC;
}

gboolean engine_primary_setup(Qmp *q, const EngineLink *link, GError **err)
{
    return add_filters(q, link, err) && start_sync(q, link, FALSE, err);
}

gboolean engine_primary_setup_live(Qmp *q, const EngineLink *link, GError **err)
{
    return start_sync(q, link, TRUE, err);
}

gboolean engine_primary_switch_over(Qmp *q, const EngineLink *link, GError **err)
{
    g_autoptr(JsonObject) args = json_object_new();

    json_object_set_string_member(args, "state", "pre-switchover");
    return add_filters(q, link, err) && qmp_send(q, "migrate-continue", args, err);
}

gboolean engine_set_checkpoint_interval(Qmp *q, const EngineLink *link, guint interval_ms,
                                        GError **err)
{
    JsonObject *params = json_object_new();

    json_object_set_int_member(params, "x-checkpoint-delay", interval_ms);
    return engine_run(q, link, "migrate-set-parameters", params, err);
}

gboolean engine_colo_status(Qmp *q, guint timeout_ms, char **mode,
                            char **reason, GError **err)
{
    g_autoptr(JsonNode) ret = qmp_call(q, "query-colo-status", NULL, timeout_ms, err);

    return ret && engine_colo_status_parse(ret, mode, reason, err);
}

gboolean engine_colo_status_parse(JsonNode *ret, char **mode, char **reason, GError **err)
{
    JsonObject *obj;

    if (!JSON_NODE_HOLDS_OBJECT(ret)) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "query-colo-status: unexpected reply");
        return FALSE;
    }
    obj = json_node_get_object(ret);
    *mode = g_strdup(json_object_get_string_member_with_default(obj, "mode", "none"));
    *reason = g_strdup(json_object_get_string_member_with_default(obj, "reason", ""));
    return TRUE;
}

/* One string member of a query's answer (an object); dflt if it has none. */
static char *answer_string(JsonNode *ret, const char *command, const char *member,
                           const char *dflt, GError **err)
{
    if (!JSON_NODE_HOLDS_OBJECT(ret)) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL, "%s: unexpected reply", command);
        return NULL;
    }
    return g_strdup(json_object_get_string_member_with_default(json_node_get_object(ret),
                                                               member, dflt));
}

static char *query_string(Qmp *q, const char *command, const char *member, const char *dflt,
                          guint timeout_ms, GError **err)
{
    g_autoptr(JsonNode) ret = qmp_call(q, command, NULL, timeout_ms, err);

    return ret ? answer_string(ret, command, member, dflt, err) : NULL;
}

char *engine_migration_status_parse(JsonNode *answer, GError **err)
{
    return answer_string(answer, "query-migrate", "status", "none", err);
}

char *engine_run_state(Qmp *q, guint timeout_ms, GError **err)
{
    return query_string(q, "query-status", "status", "unknown", timeout_ms, err);
}

char *engine_run_state_parse(JsonNode *answer, GError **err)
{
    return answer_string(answer, "query-status", "status", "unknown", err);
}

JsonObject *engine_arg(const char *key, const char *value)
{
    JsonObject *args = json_object_new();

    json_object_set_string_member(args, key, value);
    return args;
}

/*
 * Teardown steps tolerate what is already gone: a failover runs again
 * after kvm-ftd's restart.  QEMU then says "... not found", "... does not
 * have child ...", or (nbd-server-stop) "NBD server not running".
 */
static gboolean already_gone(const GError *e)
{
    return qmp_error_is_class(e, "DeviceNotFound") ||
           (e->code == QMP_ERROR_COMMAND &&
            (strstr(e->message, "not found") || strstr(e->message, "does not have child") ||
             strstr(e->message, "NBD server not running")));
}

static gboolean run_gone_ok(Qmp *q, const EngineLink *link, const char *command,
                            JsonObject *args, GError **err)
{
    g_autoptr(GError) e = NULL;

    if (engine_run(q, link, command, args, &e) || already_gone(e))
        return TRUE;
    g_propagate_error(err, g_steal_pointer(&e));
    return FALSE;
}

static gboolean hmp_gone_ok(Qmp *q, const EngineLink *link, const char *what,
                            const char *line, GError **err)
{
    g_autoptr(GError) e = NULL;

    if (hmp(q, link, what, line, &e) || already_gone(e))
        return TRUE;
    g_propagate_error(err, g_steal_pointer(&e));
    return FALSE;
}

/* QEMU may have left COLO on its own already (COLO_EXIT): that is the goal. */
static gboolean leave_colo(Qmp *q, const EngineLink *link, GError **err)
{
    g_autoptr(GError) e = NULL;

    if (engine_run(q, link, "x-colo-lost-heartbeat", NULL, &e))
        return TRUE;
    /* Not in COLO, or (a copy that was never a secondary) COLO never set up. */
    if (e->code == QMP_ERROR_COMMAND &&
        (strstr(e->message, "COLO mode") || strstr(e->message, "not enabled")))
        return TRUE;
    g_propagate_error(err, g_steal_pointer(&e));
    return FALSE;
}

static JsonObject *yank_instance(const char *type, const char *key, const char *id)
{
    JsonObject *inst = json_object_new();

    json_object_set_string_member(inst, "type", type);
    if (key)
        json_object_set_string_member(inst, key, id);
    return inst;
}

/*
 * Out of band, so it runs even while QEMU's main loop is blocked: a peer
 * that lost power sends no RST, and whichever thread reads from it would
 * wait for ever -- on the secondary, the COLO thread reading a checkpoint
 * with the BQL held, so no ordinary QMP command would run either.
 */
static gboolean yank(Qmp *q, const EngineLink *link, JsonArray *instances, GError **err)
{
    g_autoptr(JsonArray) all = instances;
    gboolean ok = TRUE;

    /*
     * One instance per call: QEMU refuses a whole yank for one instance it
     * does not know (a migration not started yet, a node already gone), and
     * that must not leave the others connected.  What does not exist has
     * nothing to cut.
     */
    for (guint i = 0; i < json_array_get_length(all); i++) {
        g_autoptr(JsonObject) args = json_object_new();
        g_autoptr(JsonNode) ret = NULL;
        g_autoptr(GError) e = NULL;
        JsonArray *one = json_array_new();

        json_array_add_element(one, json_node_copy(json_array_get_element(all, i)));
        json_object_set_array_member(args, "instances", one);
        ret = qmp_call_oob(q, "yank", args, link->timeout_ms, &e);
        if (ret || qmp_error_is_class(e, "DeviceNotFound"))
            continue;
        if (ok)
            g_propagate_prefixed_error(err, g_steal_pointer(&e), "yank: ");
        ok = FALSE;
    }
    return ok;
}

void engine_yank_node(Qmp *q, const EngineLink *link, const char *node)
{
    JsonArray *instances = json_array_new();

    json_array_add_object_element(instances, yank_instance("block-node", "node-name", node));
    /* A node without a connection is no yank instance: nothing to cut. */
    yank(q, link, instances, NULL);
}

static const char *const primary_chardevs[] = {
    "mirror0", "compare1", "compare0", "compare0-0", "compare_out", "compare_out0",
};

static gboolean yank_secondary_channels(Qmp *q, const EngineLink *link, GError **err)
{
    JsonArray *instances = json_array_new();

    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *nbd = g_strdup_printf("nbd%u", i);

        json_array_add_object_element(instances,
                                      yank_instance("block-node", "node-name", nbd));
    }
    json_array_add_object_element(instances, yank_instance("migration", NULL, NULL));
    json_array_add_object_element(instances, yank_instance("chardev", "id", "mirror0"));
    json_array_add_object_element(instances, yank_instance("chardev", "id", "compare1"));
    return yank(q, link, instances, err);
}

static gboolean yank_primary_channels(Qmp *q, const EngineLink *link, GError **err)
{
    JsonArray *instances = json_array_new();

    json_array_add_object_element(instances, yank_instance("migration", NULL, NULL));
    json_array_add_object_element(instances, yank_instance("chardev", "id", "red0"));
    json_array_add_object_element(instances, yank_instance("chardev", "id", "red1"));
    return yank(q, link, instances, err);
}

/*
 * The guest's MAC address now lives behind another switch port: until the
 * guest itself sends a frame, switches deliver its traffic to the dead
 * host's port.  QEMU announces it (RARP/gratuitous ARP) at once and a few
 * times after, as after a live migration.  A failed announcement costs
 * time, not correctness: reported, not fatal.
 */
static void announce(Qmp *q, const EngineLink *link)
{
    g_autoptr(GError) e = NULL;
    JsonObject *args = json_object_new();

    json_object_set_int_member(args, "initial", 0);
    json_object_set_int_member(args, "max", 200);
    json_object_set_int_member(args, "rounds", 4);
    json_object_set_int_member(args, "step", 50);
    if (!engine_run(q, link, "announce-self", args, &e))
        log_warn(link->def->name, "secondary", "announcing the guest on the network: %s",
                 e->message);
}

void engine_secondary_cut(Qmp *q, const EngineLink *link)
{
    g_autoptr(GError) yank_err = NULL;

    /*
     * COLO's incoming side keeps the checkpoint it is reading in a cache:
     * cutting it short leaves the guest at the last complete checkpoint.
     */
    if (!yank_primary_channels(q, link, &yank_err))
        log_warn(link->def->name, "secondary", "%s (continuing)", yank_err->message);
}

gboolean engine_secondary_takeover(Qmp *q, const EngineLink *link, GError **err)
{
    /*
     * The guest's output stops going to the primary before COLO ends: on
     * failover the rewriter sends on what the guest sent since that
     * checkpoint (qemu-patches 0011), and it must reach the network.
     */
    if (!run_gone_ok(q, link, "nbd-server-stop", NULL, err) ||
        (link->def->output_mode != FTDEF_OUTPUT_PASSIVE &&
         !run_gone_ok(q, link, "object-del", engine_arg("id", TO_COMPARE), err)) ||
        (needs_sink(link) &&
         !run_gone_ok(q, link, "object-del", engine_arg("id", TO_SINK), err)) ||
        !run_gone_ok(q, link, "object-del", engine_arg("id", "f1"), err) ||
        !leave_colo(q, link, err) ||
        !run_gone_ok(q, link, "chardev-remove", engine_arg("id", "red1"), err) ||
        !run_gone_ok(q, link, "chardev-remove", engine_arg("id", "red0"), err) ||
        (needs_sink(link) &&
         !run_gone_ok(q, link, "chardev-remove", engine_arg("id", "sink0"), err)))
        return FALSE;
    announce(q, link);
    return TRUE;
}

void engine_primary_cut(Qmp *q, const EngineLink *link)
{
    g_autoptr(GError) yank_err = NULL;

    /* What could not be cut is reported; the steps after it may still work. */
    if (!yank_secondary_channels(q, link, &yank_err))
        log_warn(link->def->name, "primary", "%s (continuing)", yank_err->message);
}

gboolean engine_primary_drop_secondary(Qmp *q, const EngineLink *link, GError **err)
{
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *quorum = domxml_quorum_node(i);
        g_autofree char *line = g_strdup_printf("drive_del replication%u", i);
        JsonObject *change = json_object_new();

        json_object_set_string_member(change, "parent", quorum);
        json_object_set_string_member(change, "child", "children.1");
        if (!run_gone_ok(q, link, "x-blockdev-change", change, err) ||
            !hmp_gone_ok(q, link, line, line, err))
            return FALSE;
    }
    if (!run_gone_ok(q, link, "object-del", engine_arg("id", "comp0"), err) ||
        !run_gone_ok(q, link, "object-del", engine_arg("id", "m0"), err) ||
        !run_gone_ok(q, link, "object-del", engine_arg("id", "redire0"), err) ||
        !run_gone_ok(q, link, "object-del", engine_arg("id", "redire1"), err) ||
        !leave_colo(q, link, err))
        return FALSE;
    /* Re-protection adds them anew. */
    for (guint i = 0; i < G_N_ELEMENTS(primary_chardevs); i++) {
        if (!run_gone_ok(q, link, "chardev-remove", engine_arg("id", primary_chardevs[i]), err))
            return FALSE;
    }
    return TRUE;
}

gboolean engine_cancel_first_sync(Qmp *q, const EngineLink *link, GError **err)
{
    return engine_run(q, link, "migrate_cancel", NULL, err);
}

