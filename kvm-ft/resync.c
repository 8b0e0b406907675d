/* resync.c - bringing a returning peer's disks up to date while the guest runs */
#include "resync.h"

#include <errno.h>
#include <string.h>
#include <glib/gstdio.h>

#include "domxml.h"
#include "ft.h"
#include "log.h"
#include "loopwait.h"
#include "timeouts.h"

#define TRACKING_BITMAP "kvmft-dirty"
/* Made at protection, disabled; enabled when the pair splits (resync_outage_begin). */
#define OUTAGE_BITMAP "kvmft-outage"

static char *mirror_job(guint i)
{
    return g_strdup_printf("kvmft-mirror%u", i);
}

static char *copy_job(guint i)
{
    return g_strdup_printf(RESYNC_COPY_JOB_PREFIX "%u", i);
}

/* Each job writes through a connection of its own to the peer's export. */
static char *target_node(const char *job)
{
    return g_strdup_printf("%s-to", job);
}

static gboolean is_qcow2(const EngineLink *link, guint i)
{
    const FtDisk *disk = g_ptr_array_index(link->def->disks, i);

    return g_strcmp0(disk->format, "qcow2") == 0;
}

static JsonObject *bitmap_arg(const char *node, const char *name)
{
    JsonObject *args = engine_arg("node", node);

    json_object_set_string_member(args, "name", name);
    return args;
}

/* None there is no error. */
static void remove_bitmap(Qmp *q, const EngineLink *link, const char *node, const char *name)
{
    engine_run(q, link, "block-dirty-bitmap-remove", bitmap_arg(node, name), NULL);
}

/*
 * A bitmap on disk i's data node, in the image where the format can hold
 * it (a QEMU restart keeps it); disabled: it counts nothing until enabled.
 */
static gboolean add_bitmap(Qmp *q, const EngineLink *link, guint i, const char *name,
                           guint granularity, gboolean disabled, GError **err)
{
    g_autofree char *node = domxml_data_node(i);
    JsonObject *args = bitmap_arg(node, name);

    json_object_set_int_member(args, "granularity", granularity);
    json_object_set_boolean_member(args, "persistent", is_qcow2(link, i));
    json_object_set_boolean_member(args, "disabled", disabled);
    return engine_run(q, link, "block-dirty-bitmap-add", args, err);
}

/* A fresh, empty, disabled outage bitmap on every disk. */
static gboolean prepare_outage(Qmp *q, const EngineLink *link, guint granularity,
                               GError **err)
{
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *node = domxml_data_node(i);

        /* Whatever an earlier split left belongs to another epoch. */
        remove_bitmap(q, link, node, OUTAGE_BITMAP);
        if (!add_bitmap(q, link, i, OUTAGE_BITMAP, granularity, TRUE, err)) {
            g_prefix_error(err, "preparing the outage tracking of %s: ", node);
            return FALSE;
        }
    }
    return TRUE;
}

gboolean resync_outage_begin(Qmp *q, const EngineLink *link, GError **err)
{
    /*
     * One command per disk, not a transaction: a transaction drains every
     * disk first, and a guest write to a secondary that is gone would hold
     * the drain (and the failover) until QMP gives up.
     */
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *node = domxml_data_node(i);

        if (!engine_run(q, link, "block-dirty-bitmap-enable", bitmap_arg(node, OUTAGE_BITMAP),
                        err))
            return FALSE;
    }
    return TRUE;
}

gboolean resync_track_writes(Qmp *q, const EngineLink *link, gboolean new_epoch,
                             guint granularity, GError **err)
{
    if (new_epoch && !prepare_outage(q, link, granularity, err))
        return FALSE;
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *node = domxml_data_node(i);
        g_autoptr(GError) e = NULL;

        /*
         * A new epoch starts from an empty bitmap, made anew: the granularity
         * may have changed, and one left inconsistent by a power loss cannot
         * be cleared, only replaced.
         */
        if (new_epoch)
            remove_bitmap(q, link, node, TRACKING_BITMAP);
        if (add_bitmap(q, link, i, TRACKING_BITMAP, granularity, FALSE, &e))
            continue;
        /* Kept across a restart of kvm-ftd: the epoch goes on. */
        if (!new_epoch && e->code == QMP_ERROR_COMMAND && strstr(e->message, "already exists"))
            continue;
        g_propagate_prefixed_error(err, g_steal_pointer(&e), "tracking writes to %s: ", node);
        return FALSE;
    }
    return TRUE;
}

/* The element of a QMP answer's array whose member key is value. */
static JsonObject *find_by(JsonArray *array, const char *key, const char *value)
{
    for (guint i = 0; array && i < json_array_get_length(array); i++) {
        JsonObject *o = json_array_get_object_element(array, i);

        if (o && g_strcmp0(json_object_get_string_member_with_default(o, key, ""),
                           value) == 0)
            return o;
    }
    return NULL;
}

static JsonObject *find_node(JsonArray *nodes, const char *name)
{
    return find_by(nodes, "node-name", name);
}

/* A query whose answer is an array; *holder keeps it alive. */
static JsonArray *query_array(Qmp *q, const EngineLink *link, const char *command,
                              JsonObject *args, JsonNode **holder, GError **err)
{
    *holder = engine_query(q, link, command, args, err);
    if (!*holder)
        return NULL;
    if (!JSON_NODE_HOLDS_ARRAY(*holder)) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL, "%s: unexpected reply", command);
        return NULL;
    }
    return json_node_get_array(*holder);
}

static JsonArray *named_nodes(Qmp *q, const EngineLink *link, JsonNode **holder,
                              GError **err)
{
    JsonObject *args = json_object_new();

    json_object_set_boolean_member(args, "flat", TRUE);
    return query_array(q, link, "query-named-block-nodes", args, holder, err);
}

/*
 * A persistent bitmap of an image whose QEMU did not close it (power loss)
 * comes back marked inconsistent: it says nothing of the writes.
 */
static gboolean has_bitmap(JsonObject *node, const char *name)
{
    JsonArray *maps = json_object_has_member(node, "dirty-bitmaps")
                          ? json_object_get_array_member(node, "dirty-bitmaps")
                          : NULL;
    JsonObject *map = find_by(maps, "name", name);

    return map && !json_object_get_boolean_member_with_default(map, "inconsistent", FALSE);
}

static const char *bitmap_name(ResyncSince since)
{
    return since == RESYNC_SINCE_SPLIT ? OUTAGE_BITMAP : TRACKING_BITMAP;
}

gboolean resync_is_tracking(Qmp *q, const EngineLink *link, ResyncSince since,
                            gboolean *tracking, GError **err)
{
    g_autoptr(JsonNode) holder = NULL;
    JsonArray *nodes = named_nodes(q, link, &holder, err);

    if (!nodes)
        return FALSE;
    *tracking = TRUE;
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *name = domxml_data_node(i);
        JsonObject *node = find_node(nodes, name);

        if (!node || !has_bitmap(node, bitmap_name(since)))
            *tracking = FALSE;
    }
    return TRUE;
}

static JsonObject *target_args(const EngineLink *link, guint i, const char *job)
{
    g_autofree char *node = target_node(job);
    g_autofree char *export = domxml_parent_node(i);
    g_autofree char *port = g_strdup_printf("%u", link->def->port_base + FT_PORT_NBD);
    const char *creds = engine_tls_client(link);
    JsonObject *args, *server;

    args = json_object_new();
    server = json_object_new();
    json_object_set_string_member(server, "type", "inet");
    json_object_set_string_member(server, "host", link->secondary_addr);
    json_object_set_string_member(server, "port", port);
    json_object_set_string_member(args, "driver", "nbd");
    json_object_set_string_member(args, "node-name", node);
    json_object_set_string_member(args, "export", export);
    json_object_set_object_member(args, "server", server);
    json_object_set_int_member(args, "open-timeout", NBD_OPEN_TIMEOUT_S);
    if (creds)
        json_object_set_string_member(args, "tls-creds", creds);
    return args;
}

/* A job that the caller ends itself (auto-dismiss off), so its error can be read. */
static JsonObject *job_args(const char *job, const char *device, const char *target)
{
    JsonObject *args = engine_arg("job-id", job);

    json_object_set_string_member(args, "device", device);
    json_object_set_string_member(args, "target", target);
    json_object_set_boolean_member(args, "auto-dismiss", FALSE);
    return args;
}

static gboolean start_disk(Qmp *q, const EngineLink *link, guint i, gboolean incremental,
                           ResyncSince since, guint64 rate_bytes, GError **err)
{
    g_autofree char *mirror = mirror_job(i);
    g_autofree char *copy = copy_job(i);
    g_autofree char *mirror_to = target_node(mirror);
    g_autofree char *copy_to = target_node(copy);
    g_autofree char *device = domxml_disk_node(i);
    g_autofree char *data = domxml_data_node(i);
    JsonObject *args;

    /* First the mirror: from here on the peer gets every new write. */
    args = job_args(mirror, device, mirror_to);
    json_object_set_string_member(args, "sync", "none");
    json_object_set_string_member(args, "copy-mode", "write-blocking");
    if (!engine_run(q, link, "blockdev-mirror", args, err))
        return FALSE;
    args = job_args(copy, data, copy_to);
    json_object_set_int_member(args, "speed", (gint64)rate_bytes);
    if (incremental) {
        json_object_set_string_member(args, "sync", "bitmap");
        json_object_set_string_member(args, "bitmap", bitmap_name(since));
        json_object_set_string_member(args, "bitmap-mode", "never");
    } else {
        json_object_set_string_member(args, "sync", "full");
    }
    return engine_run(q, link, "blockdev-backup", args, err);
}

static JsonArray *block_jobs(Qmp *q, const EngineLink *link, JsonNode **holder,
                             GError **err)
{
    return query_array(q, link, "query-block-jobs", NULL, holder, err);
}

static JsonObject *find_job(JsonArray *jobs, const char *id)
{
    return find_by(jobs, "device", id);
}

/*
 * Whether an earlier copy left a job or a target node behind (or QEMU could
 * not say): two queries, where undoing them all is a dozen calls, each a
 * wait on the daemon's main loop.
 */
static gboolean leftovers(Qmp *q, const EngineLink *link)
{
    g_autoptr(JsonNode) jobs_holder = NULL;
    g_autoptr(JsonNode) nodes_holder = NULL;
    g_autoptr(GError) e = NULL;
    JsonArray *jobs = block_jobs(q, link, &jobs_holder, &e);
    JsonArray *nodes = jobs ? named_nodes(q, link, &nodes_holder, &e) : NULL;

    if (!nodes)
        return TRUE;
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);
        g_autofree char *mirror_to = target_node(mirror);
        g_autofree char *copy_to = target_node(copy);

        if (find_job(jobs, mirror) || find_job(jobs, copy) || find_node(nodes, mirror_to) ||
            find_node(nodes, copy_to))
            return TRUE;
    }
    return FALSE;
}

gboolean resync_connect_targets(Qmp *q, const EngineLink *link, EngineDoneFunc done,
                                gpointer opaque, GDestroyNotify destroy, GError **err)
{
    EngineSequence *seq;

    /*
     * A copy given up while its target was dying may have left its jobs and
     * target nodes behind (QEMU did not answer while the dead connection
     * drained, or its jobs had not ended when the attempt gave up): they
     * would refuse this copy's names.  Jobs end by themselves once
     * cancelled; nobody waits for them here.
     */
    if (leftovers(q, link)) {
        gboolean ended;

        resync_cancel(q, link);
        resync_cancel_poll(q, link, &ended, NULL);
        resync_release_targets(q, link);
        if (leftovers(q, link)) {
            g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "an earlier disk copy's jobs are "
                        "still ending; the next attempt finds them gone");
            return FALSE;
        }
    }
    /* The targets are NBD clients of the secondary's export: on TLS unless configured off. */
    if (!engine_add_tls_creds(q, link, err))
        return FALSE;
    seq = engine_sequence_new();
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);

        engine_sequence_add(seq, "blockdev-add", target_args(link, i, mirror));
        engine_sequence_add(seq, "blockdev-add", target_args(link, i, copy));
    }
    return engine_sequence_run(seq, q, link, done, opaque, destroy, err);
}

gboolean resync_start(Qmp *q, const EngineLink *link, gboolean incremental,
                      ResyncSince since, guint64 rate_bytes, GError **err)
{
    for (guint i = 0; i < link->def->disks->len; i++) {
        if (!start_disk(q, link, i, incremental, since, rate_bytes, err)) {
            g_prefix_error(err, "disk %u: ", i);
            return FALSE;
        }
    }
    return TRUE;
}

static const char *job_status(JsonObject *job)
{
    return json_object_get_string_member_with_default(job, "status", "");
}

/* A job that ended with an error, or vanished: the copy cannot be trusted. */
static gboolean job_failed(JsonObject *job, const char *id, GError **err)
{
    if (!job) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "block job %s is gone", id);
        return TRUE;
    }
    if (json_object_has_member(job, "error")) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "block job %s failed: %s", id,
                    json_object_get_string_member_with_default(job, "error", "?"));
        return TRUE;
    }
    return FALSE;
}

gboolean resync_poll(Qmp *q, const EngineLink *link, ResyncProgress *progress,
                     GError **err)
{
    g_autoptr(JsonNode) holder = NULL;
    JsonArray *jobs = block_jobs(q, link, &holder, err);

    if (!jobs)
        return FALSE;
    progress->done = progress->total = 0;
    progress->finished = TRUE;
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);
        JsonObject *m = find_job(jobs, mirror);
        JsonObject *c = find_job(jobs, copy);

        if (job_failed(m, mirror, err) || job_failed(c, copy, err))
            return FALSE;
        /* The mirror never ends by itself: if it did, new writes are not carried. */
        if (strcmp(job_status(m), "concluded") == 0) {
            g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "block job %s ended", mirror);
            return FALSE;
        }
        progress->done += json_object_get_int_member_with_default(c, "offset", 0);
        progress->total += json_object_get_int_member_with_default(c, "len", 0);
        if (strcmp(job_status(c), "concluded") != 0)
            progress->finished = FALSE;
    }
    return TRUE;
}

/*
 * One look at a job that was told to end: a concluded job is dismissed
 * (*ended), and one that concluded with an error fails.
 */
static gboolean job_end_step(Qmp *q, const EngineLink *link, JsonArray *jobs, const char *id,
                             gboolean *ended, GError **err)
{
    JsonObject *job = find_job(jobs, id);
    g_autofree char *failure = NULL;

    *ended = !job;
    if (!job || strcmp(job_status(job), "concluded") != 0)
        return TRUE;
    /*
     * A mirror that failed may have left guest writes off the target: that
     * is reported whatever its dismissal does, or a dismissal unanswered in
     * time and a job gone by the next look would pass for a clean end.
     */
    failure = g_strdup(json_object_get_string_member_with_default(job, "error", NULL));
    if (failure) {
        engine_run(q, link, "job-dismiss", engine_arg("id", id), NULL);
        g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "block job %s failed: %s", id, failure);
        return FALSE;
    }
    if (!engine_run(q, link, "job-dismiss", engine_arg("id", id), err))
        return FALSE;
    *ended = TRUE;
    return TRUE;
}

static gboolean del_node(Qmp *q, const EngineLink *link, const char *job, GError **err)
{
    g_autofree char *node = target_node(job);

    return engine_run(q, link, "blockdev-del", engine_arg("node-name", node), err);
}

/*
 * The jobs end; their target nodes stay, idle, until the pair splits
 * (resync_release_targets).  Deleting one closes its connection to the
 * secondary's NBD server, and a secondary loading a checkpoint (which COLO
 * may force at any moment) can only serve that from the nested event loop
 * that discards its disk buffers: once in stop-daemon-secondary the
 * primary's QEMU stopped answering for 10 s, blockdev-del waiting, the
 * guest's replies held, until the secondary was dropped.
 */
gboolean resync_finish_begin(Qmp *q, const EngineLink *link, GError **err)
{
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);

        /* Cancelling a mirror that is in sync completes it, without a pivot. */
        if (!engine_run(q, link, "block-job-cancel", engine_arg("device", mirror), err))
            return FALSE;
    }
    return TRUE;
}

gboolean resync_finish_poll(Qmp *q, const EngineLink *link, gboolean *ended, GError **err)
{
    g_autoptr(JsonNode) holder = NULL;
    JsonArray *jobs = block_jobs(q, link, &holder, err);
    gboolean all_ended = TRUE;

    if (!jobs)
        return FALSE;
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);
        gboolean mirror_ended, copy_ended;

        if (!job_end_step(q, link, jobs, mirror, &mirror_ended, err) ||
            !job_end_step(q, link, jobs, copy, &copy_ended, err))
            return FALSE;
        all_ended = all_ended && mirror_ended && copy_ended;
    }
    /* Only a look that saw every job: a failed one must never read as ended. */
    *ended = all_ended;
    return TRUE;
}

/* Out of band: the main loop may be stuck on the dead connection itself. */
static void yank_target(Qmp *q, const EngineLink *link, const char *job)
{
    g_autofree char *node = target_node(job);

    engine_yank_node(q, link, node);
}

void resync_cut_targets(Qmp *q, const EngineLink *link)
{
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);

        yank_target(q, link, mirror);
        yank_target(q, link, copy);
    }
}

void resync_cancel(Qmp *q, const EngineLink *link)
{
    /*
     * Every connection to the dead target is cut before any job is
     * cancelled: a mirror's write-blocking writes hold the guest's I/O, and
     * QEMU's main loop, until its own connection is gone (measured: ~15 s
     * of a frozen guest when the mirror's turn came after the copy's).
     */
    resync_cut_targets(q, link);
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);
        const char *const jobs[] = { copy, mirror };

        for (gsize j = 0; j < G_N_ELEMENTS(jobs); j++) {
            JsonObject *args = engine_arg("device", jobs[j]);

            json_object_set_boolean_member(args, "force", TRUE);
            engine_run(q, link, "block-job-cancel", args, NULL);
        }
    }
}

gboolean resync_cancel_poll(Qmp *q, const EngineLink *link, gboolean *ended, GError **err)
{
    g_autoptr(JsonNode) holder = NULL;
    JsonArray *jobs = block_jobs(q, link, &holder, err);

    *ended = jobs != NULL;
    for (guint i = 0; jobs && i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);
        const char *const ids[] = { copy, mirror };

        for (gsize j = 0; j < G_N_ELEMENTS(ids); j++) {
            JsonObject *job = find_job(jobs, ids[j]);

            if (!job)
                continue;
            /* Cancelled, it concludes with an error: that is its end here. */
            if (strcmp(job_status(job), "concluded") == 0)
                engine_run(q, link, "job-dismiss", engine_arg("id", ids[j]), NULL);
            else
                *ended = FALSE;
        }
    }
    return jobs != NULL;
}

void resync_release_targets(Qmp *q, const EngineLink *link)
{
    /* Cut first: a dead secondary's connection would hold the deletions. */
    resync_cut_targets(q, link);
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *mirror = mirror_job(i);
        g_autofree char *copy = copy_job(i);
        g_autoptr(GError) e = NULL;

        if (!del_node(q, link, mirror, &e))
            g_clear_error(&e);
        if (!del_node(q, link, copy, &e))
            g_clear_error(&e);
    }
}

ResyncPlan resync_plan(const char *own, GenerationMark own_mark, const char *peer,
                       GenerationMark peer_mark, gboolean peer_blank)
{
    if (own_mark == GENERATION_RECEIVING)
        return RESYNC_OWN_PARTIAL;
    if (peer_blank)
        return RESYNC_FULL;
    if (!own && !peer)
        return RESYNC_COMPARE;
    if (!own)
        return RESYNC_PEER_NEWER;
    if (!peer || strcmp(own, peer) != 0)
        return RESYNC_FULL;
    if (peer_mark == GENERATION_DIVERGED)
        return own_mark == GENERATION_DIVERGED ? RESYNC_FULL : RESYNC_PEER_NEWER;
    if (own_mark == GENERATION_PRIMARY || peer_mark == GENERATION_PRIMARY)
        return RESYNC_FULL;
    if (own_mark == GENERATION_DIVERGED || peer_mark == GENERATION_RECEIVING)
        return RESYNC_INCREMENTAL;
    return RESYNC_NONE;
}

static char *generation_file(const char *name)
{
    return g_strdup_printf("%s.generation", name);
}

static char *generation_path(const FtConfig *cfg, const char *name)
{
    g_autofree char *file = generation_file(name);

    return g_build_filename(cfg->state_dir, file, NULL);
}

static const char *const mark_words[] = {
    [GENERATION_IN_SYNC] = NULL,
    [GENERATION_DIVERGED] = "diverged",
    [GENERATION_RECEIVING] = "receiving",
    [GENERATION_PRIMARY] = "primary",
};

const char *resync_mark_name(GenerationMark mark)
{
    return mark_words[mark] ? mark_words[mark] : "in-sync";
}

gboolean resync_mark_parse(const char *name, GenerationMark *mark)
{
    for (guint m = 0; name && m < G_N_ELEMENTS(mark_words); m++) {
        if (g_strcmp0(resync_mark_name(m), name) == 0) {
            *mark = m;
            return TRUE;
        }
    }
    return FALSE;
}

/* The file holds the id, then the mark as a word unless in sync. */
char *resync_generation_read(const FtConfig *cfg, const char *name, GenerationMark *mark)
{
    g_autofree char *path = generation_path(cfg, name);
    g_autofree char *text = NULL;
    g_auto(GStrv) words = NULL;

    *mark = GENERATION_IN_SYNC;
    if (!g_file_get_contents(path, &text, NULL, NULL))
        return NULL;
    words = g_strsplit_set(g_strstrip(text), " \n", -1);
    if (!words[0] || !g_uuid_string_is_valid(words[0]))
        return NULL;
    /* An unknown mark might be "receiving" damaged: the generation is unknown then. */
    if (words[1] && (!resync_mark_parse(words[1], mark) || *mark == GENERATION_IN_SYNC)) {
        *mark = GENERATION_IN_SYNC;
        return NULL;
    }
    return g_strdup(words[0]);
}

gboolean resync_generation_write(const FtConfig *cfg, const char *name,
                                 const char *generation, GenerationMark mark, GError **err)
{
    g_autofree char *file = generation_file(name);
    g_autofree char *text = g_strdup_printf("%s%s%s\n", generation,
                                            mark_words[mark] ? " " : "",
                                            mark_words[mark] ? mark_words[mark] : "");

    /* A half-written id would be taken for a stranger's disk; an old mark, for a true one. */
    return ft_write_state_file(cfg->state_dir, file, text, err);
}

void resync_generation_forget(const FtConfig *cfg, const char *name)
{
    g_autofree char *path = generation_path(cfg, name);

    if (g_unlink(path) < 0 && errno != ENOENT)
        log_warn(name, NULL, "cannot remove %s: %s", path, g_strerror(errno));
}
