/* guest-secondary.c - the secondary: its storage (overlays, blank disks) and its start */
#include "guest-internal.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>

#include "log.h"
#include "loopwait.h"
#include "timeouts.h"

/* The secondary's overlays in STATE-DIR/GUEST/: KIND-INDEX.qcow2 */
#define OVERLAY_ACTIVE "active"
#define OVERLAY_HIDDEN "hidden"
#define OVERLAY_SUFFIX ".qcow2"

void guest_answer_primary(FtGuest *g, const char *error)
{
    if (!g->reply_conn)
        return;
    if (error) {
        peer_conn_reply_error(g->reply_conn, g->reply_id, error);
    } else {
        g_autoptr(JsonNode) ok = json_node_new(JSON_NODE_OBJECT);
        JsonObject *result = json_object_new();

        /* What the primary's disk copy has to bring this host's disks up to. */
        if (g->found_generation)
            json_object_set_string_member(result, "generation", g->found_generation);
        else
            json_object_set_null_member(result, "generation");
        json_object_set_string_member(result, "mark", resync_mark_name(g->found_mark));
        /* Whatever either host's generation says, blank disks need everything. */
        json_object_set_boolean_member(result, "blank", g->created_blank);
        json_node_take_object(ok, result);
        peer_conn_reply(g->reply_conn, g->reply_id, ok);
    }
    g_clear_pointer(&g->reply_conn, peer_conn_unref);
}

static char *overlay_path(FtGuest *g, const char *kind, guint index)
{
    g_autofree char *file = g_strdup_printf("%s-%u" OVERLAY_SUFFIX, kind, index);

    return g_build_filename(daemon_config(g->d)->state_dir, g->def->name, file,
                            NULL);
}

static gboolean is_overlay(const char *file)
{
    return (g_str_has_prefix(file, OVERLAY_ACTIVE "-") ||
            g_str_has_prefix(file, OVERLAY_HIDDEN "-")) &&
           g_str_has_suffix(file, OVERLAY_SUFFIX);
}

/* By what is on disk, not by the current definition: it may have had more disks. */
void guest_remove_overlays(const FtConfig *cfg, const char *name)
{
    g_autofree char *dir = g_build_filename(cfg->state_dir, name, NULL);
    g_autoptr(GDir) listing = g_dir_open(dir, 0, NULL);
    const char *file;

    if (!listing)
        return;
    while ((file = g_dir_read_name(listing))) {
        g_autofree char *path = g_build_filename(dir, file, NULL);

        if (is_overlay(file) && g_unlink(path) < 0)
            log_warn(name, NULL, "cannot remove %s: %s", path, g_strerror(errno));
    }
    /* Only if nothing else is in there. */
    g_rmdir(dir);
}

static gboolean run_qemu_img(const char *const *argv, char **out, GError **err)
{
    LOOPWAIT_SCOPE("qemu-img", NULL);
    g_autofree char *err_text = NULL;
    int status;

    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL,
                      out, &err_text, &status, err))
        return FALSE;
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "%s failed: %s",
                    argv[3], err_text ? g_strstrip(err_text) : "");
        return FALSE;
    }
    return TRUE;
}

static gboolean disk_virtual_size(const char *path, gint64 *size, GError **err)
{
    const char *argv[] = { "timeout", QEMU_IMG_TIMEOUT_S, "qemu-img", "info", "-U",
                           "--output=json", path, NULL };
    g_autofree char *out = NULL;
    g_autoptr(JsonParser) parser = json_parser_new();
    JsonNode *root;

    if (!run_qemu_img(argv, &out, err))
        return FALSE;
    if (!json_parser_load_from_data(parser, out, -1, err))
        return FALSE;
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root) ||
        !json_object_has_member(json_node_get_object(root), "virtual-size")) {
        g_set_error(err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED,
                    "qemu-img info %s: no virtual size", path);
        return FALSE;
    }
    *size = json_object_get_int_member(json_node_get_object(root), "virtual-size");
    return TRUE;
}

JsonArray *guest_disk_sizes(const char *const *paths, guint64 *total, GError **err)
{
    g_autoptr(JsonArray) sizes = json_array_new();

    *total = 0;
    for (guint i = 0; paths[i]; i++) {
        gint64 size;

        if (!disk_virtual_size(paths[i], &size, err))
            return NULL;
        json_array_add_int_element(sizes, size);
        *total += size;
    }
    return g_steal_pointer(&sizes);
}

static gboolean create_overlay(const char *path, gint64 size, GError **err)
{
    g_autofree char *size_s = g_strdup_printf("%" G_GINT64_FORMAT, size);
    const char *argv[] = { "timeout", QEMU_IMG_TIMEOUT_S, "qemu-img", "create",
                           "-q", "-f", "qcow2", path, size_s, NULL };

    return run_qemu_img(argv, NULL, err);
}

/* One disk of the secondary's storage, as its start in the libvirt thread needs it. */
typedef struct {
    char *source;
    char *format;
    char *target;
    gint64 primary_size;   /* the primary's, or -1 if it did not say */
    char *active;          /* the replication's overlays */
    char *hidden;
} StorageDisk;

static void storage_disk_free(StorageDisk *disk)
{
    g_free(disk->source);
    g_free(disk->format);
    g_free(disk->target);
    g_free(disk->active);
    g_free(disk->hidden);
    g_free(disk);
}

/*
 * libvirt's part of the secondary's start -- defining the domain here,
 * checking its memory, starting its QEMU -- waits on libvirtd, which may
 * still be cleaning up the QEMU that just died (1.8 s measured in
 * test_pair); its storage takes qemu-img three times a disk (~10 ms each).
 * Both run in the libvirt thread, not where the failure detector runs.
 */
typedef struct {
    GuestRef ref; /* seq: setup_seq */
    char *xml;    /* the persistent definition */
    char *runtime_xml;
    char *host_name;
    char *overlay_dir;
    GPtrArray *disks; /* of StorageDisk * */
    gboolean created_blank;
    gboolean defined;
    gboolean started;
} StartJob;

static void start_job_free(gpointer data)
{
    StartJob *j = data;

    guest_ref_clear(&j->ref);
    g_free(j->xml);
    g_free(j->runtime_xml);
    g_free(j->host_name);
    g_free(j->overlay_dir);
    g_ptr_array_unref(j->disks);
    g_free(j);
}

/*
 * A replacement host has no copy yet: a blank disk of the primary's size
 * takes the full copy.  Only where nothing is: an existing file of the
 * wrong size is the administrator's to sort out.
 */
static gboolean create_blank_disk(StartJob *j, const StorageDisk *disk, GError **err)
{
    g_autofree char *size_s = NULL;
    g_autofree char *dir = g_path_get_dirname(disk->source);
    const char *argv[] = { "timeout", QEMU_IMG_TIMEOUT_S, "qemu-img", "create", "-q",
                           "-f", disk->format, disk->source, NULL, NULL };

    if (disk->primary_size <= 0) {
        g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_NOENT,
                    "disk %s (%s) does not exist on %s: copy the guest's disk there "
                    "before protecting it", disk->source, disk->target, j->host_name);
        return FALSE;
    }
    if (g_mkdir_with_parents(dir, 0755) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s: %s", dir, g_strerror(errno));
        return FALSE;
    }
    size_s = g_strdup_printf("%" G_GINT64_FORMAT, disk->primary_size);
    argv[8] = size_s;
    if (!run_qemu_img(argv, NULL, err))
        return FALSE;
    log_info(j->ref.name, "secondary", "created blank disk %s (%s, %" G_GINT64_FORMAT
             " bytes) for the primary's full copy", disk->source, disk->format,
             disk->primary_size);
    return TRUE;
}

/* In the libvirt thread: the replication chain, active and hidden overlays on each copy. */
static gboolean prepare_storage(StartJob *j, GError **err)
{
    if (g_mkdir_with_parents(j->overlay_dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s: %s", j->overlay_dir, g_strerror(errno));
        return FALSE;
    }
    for (guint i = 0; i < j->disks->len; i++) {
        const StorageDisk *disk = g_ptr_array_index(j->disks, i);
        gint64 size;

        if (!g_file_test(disk->source, G_FILE_TEST_EXISTS)) {
            if (!create_blank_disk(j, disk, err))
                return FALSE;
            j->created_blank = TRUE;
        }
        if (!g_file_test(disk->source, G_FILE_TEST_IS_REGULAR)) {
            g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "disk %s (%s) on %s is not a regular file",
                        disk->source, disk->target, j->host_name);
            return FALSE;
        }
        if (!disk_virtual_size(disk->source, &size, err))
            return FALSE;
        /* The primary's copy and replication write its blocks one for one. */
        if (disk->primary_size >= 0 && disk->primary_size != size) {
            g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "disk %s (%s) on %s is %" G_GINT64_FORMAT " bytes, the primary's "
                        "is %" G_GINT64_FORMAT ": remove it (a blank one of the right size "
                        "is created and copied in full) or resize it",
                        disk->source, disk->target, j->host_name, size, disk->primary_size);
            return FALSE;
        }
        if (!create_overlay(disk->active, size, err) ||
            !create_overlay(disk->hidden, size, err))
            return FALSE;
    }
    return TRUE;
}

static void on_secondary_sync_status(FtGuest *g, JsonNode *answer, const GError *error)
{
    guest_take_colo_status(g, answer, error);
    if (g_strcmp0(g->colo_mode, "secondary") == 0) {
        guest_stop_polling(g);
        guest_enter_protected(g, "primary's first checkpoint loaded; COLO running", TRUE);
    }
}

static gboolean poll_secondary_sync(gpointer opaque)
{
    FtGuest *g = opaque;

    /*
     * Not waited for: while the primary's first sync comes in, QEMU's main
     * loop answers hundreds of milliseconds late (260 ms in tools/bench stall).
     */
    guest_query(g, "query-colo-status", daemon_config(g->d)->qmp_timeout_ms,
                on_secondary_sync_status);
    if (guest_past_deadline(g)) {
        g->poll_id = 0;
        guest_fail(g, "the primary did not start COLO within %u ms",
                   daemon_config(g->d)->start_timeout_ms);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

/* A generation speaks for the disks it was recorded with, not for replacements. */
static gboolean disks_present(FtGuest *g)
{
    for (guint i = 0; i < g->def->disks->len; i++) {
        const FtDisk *disk = g_ptr_array_index(g->def->disks, i);

        if (!g_file_test(disk->source_path, G_FILE_TEST_IS_REGULAR))
            return FALSE;
    }
    return TRUE;
}

/* In the libvirt thread. */
static gboolean start_here(Virt *v, gpointer data, GError **err)
{
    StartJob *j = data;

    if (!prepare_storage(j, err)) {
        g_prefix_error(err, "cannot prepare replication storage: ");
        return FALSE;
    }
    if (!virt_domain_define_missing(v, j->ref.name, j->xml, &j->defined, err) ||
        !virt_room_for(v, j->ref.name, err))
        return FALSE;
    j->started = virt_domain_start(v, j->runtime_xml, FALSE, err);
    return j->started;
}

static void on_started_here(gpointer data, const GError *error)
{
    StartJob *j = data;
    FtGuest *g = guest_ref_find(&j->ref);
    g_autoptr(GError) err = NULL;
    EngineLink link;

    if (!g || g->setup_seq != j->ref.seq || g->state != GUEST_STARTING_SECONDARY) {
        /* Stopped, failed or asked again meanwhile: that answer came already. */
        if (j->started && !daemon_quitting(j->ref.d) && !(g && g->qmp))
            guest_discard_started(j->ref.d, j->ref.name, "secondary");
        return;
    }
    if (j->defined)
        log_info(g->def->name, guest_role_name(g), "defined the guest on this host");
    g->created_blank = j->created_blank;
    if (error) {
        guest_fail(g, "%s", error->message);
        return;
    }
    link = guest_engine_link(g);
    if (!guest_attach_qemu(g, &err) || !engine_secondary_setup(g->qmp, &link, &err)) {
        guest_fail(g, "cannot start the secondary: %s", err->message);
        return;
    }
    if (!guest_transition(g, GUEST_SECONDARY_WAITING, "incoming side ready"))
        return;
    /* Silence from the primary from here on means it is gone (check_rejoin()). */
    daemon_watch_peer(g->d, guest_peer_host(g)->link_address);
    guest_answer_primary(g, NULL);
    g->poll_id = g_timeout_add(ENTER_POLL_MS, poll_secondary_sync, g);
}

/* The secondary's derived definition here, then its storage and libvirt's part in its thread. */
static void start_secondary(FtGuest *g, JsonArray *sizes)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) active = g_ptr_array_new();
    g_autoptr(GPtrArray) hidden = g_ptr_array_new();
    DomxmlPlumbing plumbing = { .qmp_socket = g->qmp_path };
    StartJob *job = g_new0(StartJob, 1);

    job->disks = g_ptr_array_new_with_free_func((GDestroyNotify)storage_disk_free);
    for (guint i = 0; i < g->def->disks->len; i++) {
        const FtDisk *disk = g_ptr_array_index(g->def->disks, i);
        StorageDisk *sd = g_new0(StorageDisk, 1);

        sd->source = g_strdup(disk->source_path);
        sd->format = g_strdup(disk->format);
        sd->target = g_strdup(disk->target);
        sd->primary_size = sizes && i < json_array_get_length(sizes)
                               ? json_array_get_int_element(sizes, i)
                               : -1;
        sd->active = overlay_path(g, OVERLAY_ACTIVE, i);
        sd->hidden = overlay_path(g, OVERLAY_HIDDEN, i);
        g_ptr_array_add(job->disks, sd);
        g_ptr_array_add(active, sd->active);
        g_ptr_array_add(hidden, sd->hidden);
    }
    g_ptr_array_add(active, NULL);
    g_ptr_array_add(hidden, NULL);
    plumbing.active_overlays = (const char *const *)active->pdata;
    plumbing.hidden_overlays = (const char *const *)hidden->pdata;
    if (!guest_write_tls_key(g, &err) ||
        !(job->runtime_xml = guest_runtime_xml(g, &plumbing, &err))) {
        start_job_free(job);
        guest_fail(g, "cannot start the secondary: %s", err->message);
        return;
    }
    guest_ref_init(&job->ref, g, ++g->setup_seq);
    job->xml = g_strdup(g->domain_xml);
    job->host_name = g_strdup(daemon_config(g->d)->host_name);
    job->overlay_dir = g_build_filename(daemon_config(g->d)->state_dir, g->def->name, NULL);
    virt_run(daemon_virt(g->d), start_here, on_started_here, job, start_job_free);
}

void guest_prepare_secondary(FtGuest *g, PeerConn *conn, guint64 id, JsonObject *params)
{
    const FtConfig *cfg = daemon_config(g->d);
    JsonArray *sizes = json_object_has_member(params, "disk-bytes") &&
                               JSON_NODE_HOLDS_ARRAY(json_object_get_member(params, "disk-bytes"))
                           ? json_object_get_array_member(params, "disk-bytes")
                           : NULL;
    gint64 wait_ms = json_object_get_int_member_with_default(params, "wait-ms", 0);
    g_clear_pointer(&g->error, g_free);
    guest_forget_checkpoints(g);
    g->created_blank = FALSE;
    g->reply_conn = peer_conn_ref(conn);
    g->reply_id = id;
    guest_arm_deadline(g);
    /* Through the primary's disk copy, which it sized; within reason. */
    g->deadline_us += CLAMP(wait_ms, 0, 24 * 3600 * 1000LL) * 1000;
    g_free(g->generation);
    g->generation = g_strdup(json_object_get_string_member_with_default(params, "generation",
                                                                        NULL));
    if (g->generation && !g_uuid_string_is_valid(g->generation))
        g_clear_pointer(&g->generation, g_free);
    if (!guest_transition(g, GUEST_STARTING_SECONDARY, "primary asked for a secondary"))
        return;
    /*
     * What the primary needs to know of these disks to copy only what
     * they lack -- or to refuse to overwrite them.  A disk created blank
     * belongs to no generation.
     */
    g_free(g->found_generation);
    g->found_generation = resync_generation_read(cfg, g->def->name, &g->found_mark);
    if (!disks_present(g)) {
        if (g->found_generation)
            log_warn(g->def->name, guest_role_name(g), "a disk of the guest is missing: the "
                     "primary copies all of them in full");
        g_clear_pointer(&g->found_generation, g_free);
        g->found_mark = GENERATION_IN_SYNC;
        resync_generation_forget(cfg, g->def->name);
    }

    start_secondary(g, sizes);
}

gboolean guest_receive_copy(FtGuest *g, GError **err)
{
    if (g->role != FT_ROLE_SECONDARY ||
        (g->state != GUEST_STARTING_SECONDARY && g->state != GUEST_SECONDARY_WAITING)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "'%s' is %s here, not a secondary "
                    "waiting for its primary", g->def->name, guest_state_name(g->state));
        return FALSE;
    }
    /*
     * Until the pair is protected these disks may be a mix of old and new
     * blocks: never the source of the guest.  The generation stays, so a
     * copy cut short is followed by an incremental one again.
     */
    if (g->found_generation &&
        !resync_generation_write(daemon_config(g->d), g->def->name, g->found_generation,
                                 GENERATION_RECEIVING, err))
        return FALSE;
    log_info(g->def->name, guest_role_name(g), "the primary copies to this host's disks");
    return TRUE;
}
