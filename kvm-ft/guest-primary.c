/*
 * guest-primary.c - the primary's way into protection: a secondary on the
 * peer, the disk comparison or copy it needs, then COLO; and verify of the
 * two copies
 */
#include "guest-internal.h"

#include <string.h>

#include "diskcompare.h"
#include "jsontext.h"
#include "log.h"
#include "nbdprobe.h"
#include "qmp.h"
#include "timeouts.h"
#include "verify.h"

/* A secondary waits for its primary's copy as if it came at least this fast. */
#define RESYNC_SLOWEST_BYTES (8 << 20)

/* A running guest's first sync paused before its switchover: now the filters. */
static void switch_over(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link = guest_engine_link(g);

    if (g->switched_over)
        return;
    g->switched_over = TRUE;
    log_info(g->def->name, guest_role_name(g), "switching over to COLO: the guest is paused "
             "for the first sync's last pass, its output from now on compared");
    /*
     * Not waited for (engine.h): waiting for migrate-continue's answer held
     * this loop, and the guest's output, 5 s when the secondary's host lost
     * power meanwhile (test_reprotect secondary-dies-after-switch-over).
     */
    if (!engine_primary_switch_over(g->qmp, &link, &err)) {
        guest_stop_polling(g);
        guest_fail(g, "cannot switch over to COLO: %s", err->message);
    }
}

gboolean guest_on_pre_switchover(gpointer opaque)
{
    FtGuest *g = opaque;

    g->switchover_idle_id = 0;
    if (g->state == GUEST_ENTERING_COLO)
        switch_over(g);
    return G_SOURCE_REMOVE;
}

static gboolean poll_copy_end(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    EngineLink link = guest_quick_link(g);
    gboolean ended = FALSE;
    gboolean asked = resync_finish_poll(g->qmp, &link, &ended, &err);

    /* A QEMU that did not answer in time is asked again, until the deadline. */
    if ((asked || g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT)) && !ended &&
        g_get_monotonic_time() < g->deadline_us)
        return G_SOURCE_CONTINUE;
    g->poll_id = 0;
    if (!ended) {
        /* The copies may differ: this protection must not count as one. */
        guest_fail(g, "the disk copy did not end cleanly: %s",
                   err ? err->message : "its block jobs did not end in time");
        return G_SOURCE_REMOVE;
    }
    g->resync_running = FALSE;
    guest_enter_protected(g, "first checkpoint done; COLO running", TRUE);
    return G_SOURCE_REMOVE;
}

/*
 * COLO's replication carries the guest's writes now, the mirror no more.
 * Its jobs wind down while failure detection goes on: a secondary that
 * dies now holds them, and the guest's output with them, until it is
 * found dead and cut off.
 */
static void finish_copy(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link = guest_quick_link(g);

    /*
     * Unanswered in time, the cancel may still be under way: a mirror's
     * write in flight to a secondary that lost power holds it, and QEMU's
     * main loop, until failure detection cuts the connection (the client
     * waited 10 s behind a 5 s deadline here).  The polls tell.
     */
    if (!resync_finish_begin(g->qmp, &link, &err) &&
        !g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT)) {
        guest_fail(g, "the disk copy did not end cleanly: %s", err->message);
        return;
    }
    g->deadline_us = g_get_monotonic_time() + JOB_END_TIMEOUT_MS * 1000;
    g->poll_id = g_timeout_add(JOB_END_POLL_MS, poll_copy_end, g);
}

static void on_primary_sync_status(FtGuest *g, JsonNode *answer, const GError *error)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *status = answer ? engine_migration_status_parse(answer, &err) : NULL;

    g_free(g->migration_status);
    g->migration_status = g_strdup(status ? status : error ? error->message : err->message);
    /* In case QEMU's MIGRATION event was missed. */
    if (status && strcmp(status, "pre-switchover") == 0) {
        switch_over(g);
    } else if (status && strcmp(status, "colo") == 0) {
        guest_stop_polling(g);
        guest_refresh_colo_status(g);
        if (g->resync_running)
            finish_copy(g);
        else
            guest_enter_protected(g, "first checkpoint done; COLO running", TRUE);
    } else if (status && (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0)) {
        guest_stop_polling(g);
        guest_fail(g, "the first synchronisation to the secondary %s", status);
    }
}

static gboolean poll_primary_sync(gpointer opaque)
{
    FtGuest *g = opaque;

    /*
     * Not waited for: a QEMU sending its last pass to a secondary that lost
     * power holds its lock until the connection is cut, and that is decided
     * on this loop (test_reprotect secondary-dies-after-switch-over).
     */
    guest_query(g, "query-migrate", daemon_config(g->d)->qmp_timeout_ms, on_primary_sync_status);
    if (guest_past_deadline(g)) {
        g->poll_id = 0;
        guest_fail(g, "the pair did not enter COLO within %u ms (migration: %s)",
                   daemon_config(g->d)->start_timeout_ms,
                   g->migration_status ? g->migration_status : "not known yet");
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void broadcast_progress(FtGuest *g)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    guest_begin_event(g, b);
    json_builder_set_member_name(b, "progress");
    guest_add_progress(g, b);
    guest_broadcast_event(g, b);
}

/* An engine step's commands, sent to QEMU and not waited for. */
typedef gboolean (*StepSendFunc)(Qmp *q, const EngineLink *link, EngineDoneFunc done,
                                 gpointer opaque, GDestroyNotify destroy, GError **err);
/* Its outcome, for the guest that asked, if it made no transition since. */
typedef void (*StepThenFunc)(FtGuest *g, const GError *error);

typedef struct {
    GuestRef ref;        /* seq: qmp_step_seq */
    StepThenFunc then;
} GuestStep;

static void guest_step_free(GuestStep *step)
{
    guest_ref_clear(&step->ref);
    g_free(step);
}

static void guest_step_done(const GError *error, gpointer opaque)
{
    GuestStep *step = opaque;
    FtGuest *g = guest_ref_find(&step->ref);

    /* Any transition since (a failure, a new attempt) made this answer stale. */
    if (g && g->qmp_step_seq == step->ref.seq)
        step->then(g, error);
    guest_step_free(step);
}

static gboolean run_step(FtGuest *g, StepSendFunc send, StepThenFunc then, GError **err)
{
    GuestStep *step = g_new0(GuestStep, 1);
    EngineLink link = guest_engine_link(g);

    guest_ref_init(&step->ref, g, ++g->qmp_step_seq);
    step->then = then;
    if (!send(g->qmp, &link, guest_step_done, step, (GDestroyNotify)guest_step_free, err)) {
        guest_step_free(step);
        return FALSE;
    }
    return TRUE;
}

static void on_replication_connected(FtGuest *g, const GError *error)
{
    g_autoptr(GError) err = NULL;
    EngineLink link;

    if (error) {
        guest_fail(g, "cannot set up replication: %s", error->message);
        return;
    }
    link = guest_engine_link(g);
    g->switched_over = FALSE;
    g_clear_pointer(&g->migration_status, g_free);
    g->entry_pending = g->rejoin;
    g->entry_pause_ms = 0;
    if (!(g->rejoin ? engine_primary_setup_live(g->qmp, &link, &err)
                    : engine_primary_setup(g->qmp, &link, &err))) {
        guest_fail(g, "cannot set up replication: %s", err->message);
        return;
    }
    guest_arm_deadline(g);
    if (!guest_transition(g, GUEST_ENTERING_COLO, "replication attached; first full sync"))
        return;
    g->poll_id = g_timeout_add(ENTER_POLL_MS, poll_primary_sync, g);
}

/*
 * The replication's NBD connection first, not waited for.  A secondary
 * that dies while QEMU opens it holds QEMU's main loop, and the guest with
 * it, for up to NBD_OPEN_TIMEOUT_S (timeouts.h).
 */
static void setup_colo(FtGuest *g)
{
    g_autoptr(GError) err = NULL;

    log_info(g->def->name, guest_role_name(g), "connecting the replication to %s",
             guest_peer_host(g)->name);
    if (!run_step(g, engine_primary_connect_replication, on_replication_connected, &err))
        guest_fail(g, "cannot set up replication: %s", err->message);
}

static gboolean poll_resync(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    EngineLink link = guest_engine_link(g);
    gint64 now = g_get_monotonic_time();

    if (!resync_poll(g->qmp, &link, &g->resync, &err)) {
        g->poll_id = 0;
        guest_fail(g, "the disk copy to %s failed: %s", guest_peer_host(g)->name, err->message);
        return G_SOURCE_REMOVE;
    }
    if (now > g->rate_us && g->resync.done >= g->rate_done) {
        double rate = (g->resync.done - g->rate_done) * (double)G_USEC_PER_SEC /
                      (now - g->rate_us);

        /* Smoothed: a copy moves in bursts of a job's chunk size. */
        g->resync_rate = g->resync_rate > 0 ? 0.5 * g->resync_rate + 0.5 * rate : rate;
    }
    g->rate_done = g->resync.done;
    g->rate_us = now;
    broadcast_progress(g);
    if (!g->resync.finished)
        return G_SOURCE_CONTINUE;
    g->poll_id = 0;
    guest_record_resync(g);
    log_info(g->def->name, guest_role_name(g), "disk copy to %s done: %" G_GUINT64_FORMAT
             " of %" G_GUINT64_FORMAT " bytes in %.1f s (%s)", guest_peer_host(g)->name,
             g->resync.total, g->disk_bytes, guest_copy_seconds(g),
             g->resync_plan == RESYNC_INCREMENTAL ? "incremental" : "full");
    setup_colo(g);
    return G_SOURCE_REMOVE;
}

static void on_targets_connected(FtGuest *g, const GError *error)
{
    g_autoptr(GError) err = NULL;
    EngineLink link = guest_engine_link(g);

    if (error || !resync_start(g->qmp, &link, g->resync_plan == RESYNC_INCREMENTAL,
                               g->resync_since, daemon_config(g->d)->resync_rate_bytes, &err)) {
        guest_fail(g, "cannot start the disk copy to %s: %s", guest_peer_host(g)->name,
                   error ? error->message : err->message);
        return;
    }
    g->poll_id = g_timeout_add(RESYNC_POLL_MS, poll_resync, g);
}

/* The secondary has marked its disks as receiving: the copy starts. */
static void start_copy(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *why = NULL;
    EngineLink link = guest_engine_link(g);
    gboolean tracking = FALSE;

    /*
     * Only the blocks written since the split, if this QEMU knows them all
     * and no write can have reached this copy alone before it; else since
     * the pair was in sync; else everything.
     */
    g->resync_since = g->outage_tracked && !g->replica_write_failed ? RESYNC_SINCE_SPLIT
                                                                    : RESYNC_SINCE_SYNC;
    if (g->resync_plan == RESYNC_INCREMENTAL && g->resync_since == RESYNC_SINCE_SPLIT &&
        !(resync_is_tracking(g->qmp, &link, RESYNC_SINCE_SPLIT, &tracking, NULL) && tracking))
        g->resync_since = RESYNC_SINCE_SYNC;
    if (g->resync_plan == RESYNC_INCREMENTAL && g->resync_since == RESYNC_SINCE_SYNC &&
        !(resync_is_tracking(g->qmp, &link, RESYNC_SINCE_SYNC, &tracking, &err) && tracking)) {
        log_warn(g->def->name, guest_role_name(g), "writes since the split are not known%s%s: "
                 "copying the whole disk", err ? ": " : "", err ? err->message : "");
        g_clear_error(&err);
        g->resync_plan = RESYNC_FULL;
    }
    /* From here on a failure removes whatever of the copy QEMU has. */
    g->resync_running = TRUE;
    memset(&g->resync, 0, sizeof(g->resync));
    g->resync_rate = 0;
    g->rate_done = 0;
    g->rate_us = g_get_monotonic_time();
    /* Wall clock, as QEMU's event stamps. */
    g->resync_started_us = g_get_real_time();
    g->resync_ended_us = 0;
    why = g_strdup_printf("copying %s to %s (%s)",
                          g->resync_plan != RESYNC_INCREMENTAL ? "the whole disk"
                          : g->resync_since == RESYNC_SINCE_SPLIT
                              ? "the blocks written since the split"
                              : "the blocks written since the pair was last in sync",
                          guest_peer_host(g)->name,
                          g->resync_plan == RESYNC_INCREMENTAL ? "incremental" : "full");
    if (!guest_transition(g, GUEST_RESYNCING, why))
        return;
    if (!run_step(g, resync_connect_targets, on_targets_connected, &err))
        guest_fail(g, "cannot start the disk copy to %s: %s", guest_peer_host(g)->name,
                   err->message);
}

/* Where the primary's verify exports listen: kvm-ftd's run dir, as its other sockets. */
static char *verify_socket(FtGuest *g)
{
    g_autofree char *sock = g_strdup_printf("%s.verify", g->def->name);

    return g_build_filename(daemon_config(g->d)->run_dir, sock, NULL);
}

/*
 * A first protection of disks the administrator copied: both copies are
 * read and compared (diskcompare.h) in a worker thread, the primary's
 * paused guest writing nothing meanwhile; the answer comes back to the
 * main loop by guest name.
 */
typedef struct {
    GuestRef ref;        /* seq: compare_seq */
    JsonNode *disks;     /* verify_export()'s description */
    guint64 differing;
    char *first;         /* the first differing range, for the log */
    GError *error;
} CompareJob;

static void compare_job_free(CompareJob *j)
{
    guest_ref_clear(&j->ref);
    if (j->disks)
        json_node_unref(j->disks);
    g_free(j->first);
    g_clear_error(&j->error);
    g_free(j);
}

static void compare_in_thread(GTask *task, gpointer source, gpointer data, GCancellable *c)
{
    CompareJob *j = data;
    JsonArray *disks = json_object_get_array_member(json_node_get_object(j->disks), "disks");

    (void)source;
    (void)c;
    for (guint i = 0; !j->error && i < json_array_get_length(disks); i++) {
        JsonObject *d = json_array_get_object_element(disks, i);
        const char *target = json_object_get_string_member(d, "target");
        DiskCompare cmp;

        if (disk_compare(target, json_object_get_string_member(d, "primary"),
                         json_object_get_string_member(d, "secondary"), NULL, NULL, &cmp,
                         &j->error) &&
            cmp.differing) {
            if (!j->first)
                j->first = g_strdup_printf("%s at %" G_GUINT64_FORMAT, target,
                                           g_array_index(cmp.ranges, guint64, 0));
            j->differing += cmp.differing;
        }
        disk_compare_clear(&cmp);
    }
    g_task_return_boolean(task, TRUE);
}

static void on_compared(GObject *source, GAsyncResult *res, gpointer data)
{
    CompareJob *j = g_task_get_task_data(G_TASK(res));
    FtGuest *g = guest_ref_find(&j->ref);
    EngineLink link;

    (void)source;
    (void)data;
    if (!g || g->compare_seq != j->ref.seq || g->state != GUEST_STARTING_PRIMARY)
        return;
    link = guest_engine_link(g);
    verify_unexport(g->qmp, &link);
    if (j->error) {
        guest_fail(g, "cannot compare the disks with %s's: %s", guest_peer_host(g)->name,
                   j->error->message);
        return;
    }
    if (!j->differing) {
        log_info(g->def->name, guest_role_name(g), "the disks on %s are the same as this host's: "
                 "nothing to copy", guest_peer_host(g)->name);
        g->resync_plan = RESYNC_NONE;
        setup_colo(g);
        return;
    }
    log_warn(g->def->name, guest_role_name(g), "the disks on %s differ from this host's in %"
             G_GUINT64_FORMAT " bytes (first: %s): copying the whole disk",
             guest_peer_host(g)->name, j->differing, j->first);
    g->resync_plan = RESYNC_FULL;
    start_copy(g);
}

static void start_compare(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GTask) task = NULL;
    g_autofree char *sock = verify_socket(g);
    EngineLink link = guest_engine_link(g);
    CompareJob *j = g_new0(CompareJob, 1);

    j->disks = verify_export(g->qmp, &link, sock, &err);
    if (!j->disks) {
        compare_job_free(j);
        guest_fail(g, "cannot export the disks to compare them with %s's: %s",
                   guest_peer_host(g)->name, err->message);
        return;
    }
    guest_ref_init(&j->ref, g, ++g->compare_seq);
    log_info(g->def->name, guest_role_name(g), "no protection has known these disks: comparing "
             "them with %s's before trusting them (%" G_GUINT64_FORMAT " bytes)",
             guest_peer_host(g)->name, g->disk_bytes);
    task = g_task_new(NULL, NULL, on_compared, NULL);
    g_task_set_task_data(task, j, (GDestroyNotify)compare_job_free);
    g_task_run_in_thread(task, compare_in_thread);
}

static void on_peer_receiving(PeerConn *conn, JsonNode *result, const GError *error,
                              gpointer opaque)
{
    g_autoptr(GuestRef) ref = opaque; /* seq: setup_seq */
    FtGuest *g = guest_ref_find(ref);

    (void)conn;
    (void)result;
    if (!g || g->setup_seq != ref->seq ||
        (g->state != GUEST_STARTING_PRIMARY && g->state != GUEST_REJOINING))
        return;
    if (error) {
        guest_fail(g, "%s cannot take the disk copy: %s", guest_peer_host(g)->name,
                   error->message);
        return;
    }
    if (g->resync_plan == RESYNC_COMPARE)
        start_compare(g);
    else
        start_copy(g);
}

/* The peer's NBD server greeted kvm-ftd: copy what it lacks, if anything. */
static void nbd_answers(FtGuest *g)
{
    JsonObject *params;

    if (g->resync_plan == RESYNC_NONE) {
        setup_colo(g);
        return;
    }
    /* First the peer marks its disks: a copy cut short must never be a source. */
    params = json_object_new();
    json_object_set_string_member(params, "guest", g->def->name);
    daemon_peer_call(g->d, guest_peer_host(g)->link_address, "receive-copy", params,
                     daemon_config(g->d)->peer_timeout_ms, on_peer_receiving,
                     guest_ref_new(g, g->setup_seq));
    json_object_unref(params);
}

static void on_nbd_probe(const GError *error, gpointer opaque)
{
    g_autoptr(GuestRef) ref = opaque; /* seq: nbd_probe_seq */
    FtGuest *g = guest_ref_find(ref);

    if (g && g->nbd_probe_seq == ref->seq &&
        (g->state == GUEST_STARTING_PRIMARY || g->state == GUEST_REJOINING)) {
        if (error)
            guest_fail(g, "%s's disk server does not answer (%s): QEMU would wait for it with "
                       "its main loop for minutes; a firewall on the dedicated link must let the "
                       "guest's <ft:ports> through (base+1: NBD)", guest_peer_host(g)->name,
                       error->message);
        else
            nbd_answers(g);
    }
}

/*
 * The secondary's filters connected.  Before QEMU connects to the peer's
 * NBD server (the copy's targets, the replication child), kvm-ftd does
 * (nbdprobe.h).
 */
static void channels_ready(FtGuest *g)
{
    EngineLink link = guest_engine_link(g);

    nbd_probe(link.secondary_addr, link.def->port_base + FT_PORT_NBD, NBD_PROBE_TIMEOUT_MS,
              on_nbd_probe, guest_ref_new(g, ++g->nbd_probe_seq));
}

/* Polled on the main loop: the secondary reconnects only every second. */
static gboolean poll_channels(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    EngineLink link = guest_engine_link(g);
    gboolean connected = FALSE;

    if (g->state != GUEST_STARTING_PRIMARY && g->state != GUEST_REJOINING) {
        g->poll_id = 0;
        return G_SOURCE_REMOVE;
    }
    if (!engine_primary_channels_connected(g->qmp, &link, g->channels_deadline_us,
                                           &connected, &err)) {
        g->poll_id = 0;
        guest_fail(g, "cannot set up replication: %s", err->message);
        return G_SOURCE_REMOVE;
    }
    if (!connected)
        return G_SOURCE_CONTINUE;
    g->poll_id = 0;
    channels_ready(g);
    return G_SOURCE_REMOVE;
}

/* With this host's QEMU up and the secondary waiting: the channels it connects to. */
static void continue_protection(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link;

    if (!guest_write_tls_key(g, &err)) {
        guest_fail(g, "cannot set up replication: %s", err->message);
        return;
    }
    link = guest_engine_link(g);
    if (!engine_primary_open_channels(g->qmp, &link, &err)) {
        guest_fail(g, "cannot set up replication: %s", err->message);
        return;
    }
    guest_stop_polling(g);
    g->channels_deadline_us = g_get_monotonic_time() + CHANNEL_CONNECT_TIMEOUT_MS * 1000;
    g->poll_id = g_timeout_add(CHANNEL_POLL_MS, poll_channels, g);
}

typedef struct {
    GuestRef ref;          /* seq: the guest's transitions when it was asked */
    char *xml;
    gboolean started;
} PrimaryStart;

static void primary_start_free(gpointer data)
{
    PrimaryStart *p = data;

    guest_ref_clear(&p->ref);
    g_free(p->xml);
    g_free(p);
}

/* In the libvirt thread: a QEMU starting under TCG takes it a quarter of a second. */
static gboolean start_primary_here(Virt *v, gpointer data, GError **err)
{
    PrimaryStart *p = data;

    /* Paused: not one guest write may happen before replication is attached. */
    p->started = virt_domain_start(v, p->xml, TRUE, err);
    return p->started;
}

static void on_primary_started(gpointer data, const GError *error)
{
    PrimaryStart *p = data;
    FtGuest *g = guest_ref_find(&p->ref);
    g_autoptr(GError) err = NULL;

    if (!g || g->transitions != p->ref.seq || g->state != GUEST_STARTING_PRIMARY) {
        /* Failed or stopped meanwhile (the secondary gave up, say). */
        if (p->started && !daemon_quitting(p->ref.d) && !(g && g->qmp))
            guest_discard_started(p->ref.d, p->ref.name, "primary");
        return;
    }
    if (error || !guest_attach_qemu(g, &err)) {
        guest_fail(g, "cannot start the primary: %s", error ? error->message : err->message);
        return;
    }
    continue_protection(g);
}

static void start_primary(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    DomxmlPlumbing plumbing = { .qmp_socket = g->qmp_path };
    PrimaryStart *p;

    if (!guest_transition(g, GUEST_STARTING_PRIMARY,
                          g->started_by_libvirt
                        ? "secondary ready; the primary was started paused by libvirt"
                        : "secondary ready; starting the primary paused"))
        return;
    if (g->started_by_libvirt) {
        if (!guest_attach_qemu(g, &err)) {
            guest_fail(g, "cannot start the primary: %s", err->message);
            return;
        }
        continue_protection(g);
        return;
    }
    p = g_new0(PrimaryStart, 1);
    p->xml = guest_runtime_xml(g, &plumbing, &err);
    if (!p->xml) {
        primary_start_free(p);
        guest_fail(g, "cannot start the primary: %s", err->message);
        return;
    }
    guest_ref_init(&p->ref, g, g->transitions);
    virt_run(daemon_virt(g->d), start_primary_here, on_primary_started, p, primary_start_free);
}

/* FALSE if this host's disks cannot be the source of the guest. */
static gboolean judge_peer_disks(FtGuest *g, const char *peer_generation,
                                 GenerationMark peer_mark, gboolean peer_blank)
{
    const char *self = daemon_config(g->d)->host_name;
    const char *peer = guest_peer_host(g)->name;
    GenerationMark mark;
    g_autofree char *own = resync_generation_read(daemon_config(g->d), g->def->name, &mark);

    g_autofree char *refusal = NULL;

    g->resync_plan = resync_plan(own, mark, peer_generation, peer_mark, peer_blank);
    if (g->full_copy_asked &&
        (g->resync_plan == RESYNC_INCREMENTAL || g->resync_plan == RESYNC_NONE ||
         g->resync_plan == RESYNC_COMPARE)) {
        log_info(g->def->name, guest_role_name(g), "copying the whole disk, as ftctl verify "
                 "--repair asked");
        g->resync_plan = RESYNC_FULL;
    }
    switch (g->resync_plan) {
    case RESYNC_OWN_PARTIAL:
        refusal = g_strdup_printf("the disks of '%s' on %s are a copy from %s that was cut "
                                  "short: start the guest on %s, which copies them again",
                                  g->def->name, self, peer, peer);
        break;
    case RESYNC_PEER_NEWER:
        refusal = g_strdup_printf("the disks of '%s' on %s hold writes that %s's lack (it "
                                  "ran alone, or %s's are unknown): start the guest on %s",
                                  g->def->name, peer, self, self, peer);
        break;
    case RESYNC_FULL:
        if (own && peer_generation && mark == GENERATION_DIVERGED &&
            peer_mark == GENERATION_DIVERGED)
            log_warn(g->def->name, guest_role_name(g), "both copies ran alone since they split: "
                     "this host's overwrites %s's", peer);
        else if (own && peer_generation &&
                 (mark == GENERATION_PRIMARY || peer_mark == GENERATION_PRIMARY))
            log_info(g->def->name, guest_role_name(g), "%s was the primary and stopped without "
                     "closing its disks: writes it had under way may be on its disks alone, "
                     "in blocks no one tracked; copying the whole disk",
                     mark == GENERATION_PRIMARY ? self : peer);
        else if (own && peer_generation && strcmp(own, peer_generation) != 0)
            log_info(g->def->name, guest_role_name(g), "%s's disks were last in sync in "
                     "another protection than %s's (it stopped before it recorded the last "
                     "one): copying the whole disk", peer, self);
        return TRUE;
    case RESYNC_COMPARE:
        /* A running guest writes while they are read: no two copies to compare then. */
        if (g->state == GUEST_REJOINING)
            g->resync_plan = RESYNC_FULL;
        return TRUE;
    case RESYNC_INCREMENTAL:
    case RESYNC_NONE:
        return TRUE;
    }
    /* The secondary it started is of no use. */
    guest_tell_peer_to_stop(g, refusal);
    guest_fail(g, "%s", refusal);
    return FALSE;
}

/* The secondary's answer: its disks' generation (may be null), mark, and whether it made them blank. */
static gboolean peer_disks_reported(JsonObject *obj, const char **generation,
                                    GenerationMark *mark, gboolean *blank)
{
    JsonNode *gen = obj ? json_object_get_member(obj, "generation") : NULL;
    JsonNode *m = obj ? json_object_get_member(obj, "mark") : NULL;
    JsonNode *b = obj ? json_object_get_member(obj, "blank") : NULL;

    *generation = NULL;
    *mark = GENERATION_IN_SYNC;
    *blank = FALSE;
    if (b) {
        if (!JSON_NODE_HOLDS_VALUE(b) || json_node_get_value_type(b) != G_TYPE_BOOLEAN)
            return FALSE;
        *blank = json_node_get_boolean(b);
    }
    if (gen && !JSON_NODE_HOLDS_NULL(gen)) {
        if (!json_node_is_uuid(gen))
            return FALSE;
        *generation = json_node_get_string(gen);
    }
    return !m || (JSON_NODE_HOLDS_VALUE(m) && json_node_get_value_type(m) == G_TYPE_STRING &&
                  resync_mark_parse(json_node_get_string(m), mark));
}

static void on_secondary_prepared(PeerConn *conn, JsonNode *result,
                                  const GError *error, gpointer opaque)
{
    g_autoptr(GuestRef) ref = opaque; /* seq: setup_seq */
    FtGuest *g = guest_ref_find(ref);
    JsonObject *obj = result && JSON_NODE_HOLDS_OBJECT(result) ? json_node_get_object(result)
                                                                : NULL;
    const char *peer_generation;
    GenerationMark peer_mark;
    gboolean peer_blank;

    (void)conn;
    if (!g || g->setup_seq != ref->seq ||
        (g->state != GUEST_PREPARING_PEER && g->state != GUEST_REJOINING))
        return;
    if (error) {
        guest_fail(g, "peer %s cannot start the secondary: %s", guest_peer_host(g)->name,
                   error->message);
        return;
    }
    if (!peer_disks_reported(obj, &peer_generation, &peer_mark, &peer_blank)) {
        guest_fail(g, "peer %s answered prepare-secondary without a valid generation and mark",
                   guest_peer_host(g)->name);
        return;
    }
    if (!judge_peer_disks(g, peer_generation, peer_mark, peer_blank))
        return;
    if (g->rejoin)
        continue_protection(g);
    else
        start_primary(g);
}

/* What the peer is told of this host's copy, found in the libvirt thread. */
typedef struct {
    GuestRef ref;          /* seq: setup_seq */
    GStrv paths;           /* the disk images */
    char *version;         /* QEMU's, through libvirt */
    JsonArray *sizes;
    guint64 total;
    char *sizes_error;
} PeerFacts;

static void peer_facts_free(gpointer data)
{
    PeerFacts *f = data;

    guest_ref_clear(&f->ref);
    g_strfreev(f->paths);
    g_free(f->version);
    if (f->sizes)
        json_array_unref(f->sizes);
    g_free(f->sizes_error);
    g_free(f);
}

static gboolean find_peer_facts(Virt *v, gpointer data, GError **err)
{
    PeerFacts *f = data;
    g_autoptr(GError) sizes_err = NULL;

    f->version = virt_qemu_version(v, err);
    if (!f->version)
        return FALSE;
    f->sizes = guest_disk_sizes((const char *const *)f->paths, &f->total, &sizes_err);
    if (!f->sizes)
        f->sizes_error = g_strdup(sizes_err->message);
    return TRUE;
}

static void ask_with_facts(FtGuest *g, PeerFacts *f);

static void on_peer_facts(gpointer data, const GError *error)
{
    PeerFacts *f = data;
    FtGuest *g = guest_ref_find(&f->ref);

    if (!g || g->setup_seq != f->ref.seq ||
        (g->state != GUEST_PREPARING_PEER && g->state != GUEST_REJOINING))
        return;
    if (error) {
        guest_fail(g, "%s", error->message);
        return;
    }
    ask_with_facts(g, f);
}

/* Asks the peer for a secondary: the same QEMU, disks ready to be written. */
static void ask_for_secondary(FtGuest *g)
{
    PeerFacts *f = g_new0(PeerFacts, 1);
    GPtrArray *paths = g_ptr_array_new();

    for (guint i = 0; i < g->def->disks->len; i++)
        g_ptr_array_add(paths, g_strdup(((FtDisk *)g_ptr_array_index(g->def->disks, i))
                                            ->source_path));
    g_ptr_array_add(paths, NULL);
    f->paths = (GStrv)g_ptr_array_free(paths, FALSE);
    guest_ref_init(&f->ref, g, ++g->setup_seq);
    virt_run(daemon_virt(g->d), find_peer_facts, on_peer_facts, f, peer_facts_free);
}

static void ask_with_facts(FtGuest *g, PeerFacts *f)
{
    const FtConfig *cfg = daemon_config(g->d);
    g_autoptr(JsonArray) sizes = f->sizes ? json_array_ref(f->sizes) : json_array_new();
    guint64 speed = cfg->resync_rate_bytes ? MIN(cfg->resync_rate_bytes, RESYNC_SLOWEST_BYTES)
                                           : RESYNC_SLOWEST_BYTES;
    JsonObject *params;

    /* Without them the peer cannot create blank disks, nothing else. */
    if (f->sizes_error)
        log_warn(g->def->name, guest_role_name(g), "disk sizes unknown: %s", f->sizes_error);
    g->disk_bytes = f->total;
    g_free(g->generation);
    g->generation = g_uuid_string_random();
    params = json_object_new();
    json_object_set_string_member(params, "guest", g->def->name);
    json_object_set_string_member(params, "domain-xml", g->domain_xml);
    json_object_set_string_member(params, "primary", guest_self_host(g)->name);
    /* The peer refuses a secondary on another QEMU than the primary's. */
    json_object_set_string_member(params, "qemu-version", f->version);
    json_object_set_string_member(params, "generation", g->generation);
    json_object_set_array_member(params, "disk-bytes", json_array_ref(sizes));
    json_object_set_boolean_member(params, "replication-tls", cfg->replication_tls);
    /*
     * The secondary waits for COLO through a comparison of the disks and
     * their copy, however long they take.
     */
    json_object_set_int_member(params, "wait-ms",
                               (gint64)(g->disk_bytes * 3000 / speed) + cfg->start_timeout_ms);
    daemon_peer_call(g->d, guest_peer_host(g)->link_address, "prepare-secondary", params,
                     cfg->start_timeout_ms, on_secondary_prepared,
                     guest_ref_new(g, g->setup_seq));
    json_object_unref(params);
}

void guest_protect(FtGuest *g, gboolean started_by_libvirt)
{
    g->started_by_libvirt = started_by_libvirt;
    g->rejoin = FALSE;
    g_clear_pointer(&g->error, g_free);
    guest_forget_checkpoints(g);
    guest_arm_deadline(g);
    if (!guest_transition(g, GUEST_PREPARING_PEER, "protect requested"))
        return;
    ask_for_secondary(g);
}

/* The peer is back: the guest, running alone here, gets a secondary again. */
void guest_start_rejoin(FtGuest *g, const char *reason)
{
    g->rejoin = TRUE;
    guest_arm_deadline(g);
    if (!guest_transition(g, GUEST_REJOINING, reason))
        return;
    ask_for_secondary(g);
}

static gboolean verify_allowed(FtGuest *g, GError **err)
{
    return guest_protected_primary_here(g, "verify", "there are two copies to compare only while "
                                        "it is protected, on its primary", err);
}

JsonNode *guest_verify_begin(FtGuest *g, GError **err)
{
    EngineLink link = guest_engine_link(g);
    g_autofree char *sock = verify_socket(g);
    JsonNode *disks;

    if (!verify_allowed(g, err))
        return NULL;
    disks = verify_export(g->qmp, &link, sock, err);
    if (disks)
        log_info(g->def->name, guest_role_name(g), "verify: comparing the two copies of the "
                 "guest's disks (ftctl verify)");
    return disks;
}

gboolean guest_verify_end(FtGuest *g, JsonNode *result, const char *abandoned, GError **err)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *at = g_date_time_format_iso8601(now);
    EngineLink link = guest_engine_link(g);
    guint64 differing = 0;
    JsonNode *found;

    /* The exports go whatever ftctl found: a stray NBD server must not stay. */
    if (g->qmp && qmp_is_open(g->qmp))
        verify_unexport(g->qmp, &link);
    if (abandoned) {
        log_warn(g->def->name, guest_role_name(g), "verify: given up, nothing compared: %s",
                 abandoned);
        return TRUE;
    }
    if (!verify_result_valid(result, g->def->disks->len, &differing, err))
        return FALSE;
    found = json_node_copy(result);
    json_object_set_string_member(json_node_get_object(found), "at", at);
    json_object_set_int_member(json_node_get_object(found), "differing_bytes",
                               (gint64)differing);
    g_clear_pointer(&g->last_verify, json_node_unref);
    g->last_verify = found;
    if (differing)
        log_warn(g->def->name, guest_role_name(g), "verify: the two copies of the guest's disks "
                 "differ in %" G_GUINT64_FORMAT " bytes (ftctl status shows where): a failover "
                 "would hand the guest other data there", differing);
    else
        log_info(g->def->name, guest_role_name(g), "verify: the two copies of the guest's disks "
                 "are identical");
    guest_begin_event(g, b);
    json_builder_set_member_name(b, "verify");
    json_builder_add_value(b, json_node_copy(found));
    guest_broadcast_event(g, b);
    return TRUE;
}

gboolean guest_verify_repair(FtGuest *g, GError **err)
{
    JsonObject *found = g->last_verify ? json_node_get_object(g->last_verify) : NULL;
    gint64 differing = found ? json_object_get_int_member_with_default(found, "differing_bytes",
                                                                          0)
                             : 0;
    g_autofree char *why = NULL;

    if (!verify_allowed(g, err))
        return FALSE;
    if (differing <= 0) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "the last verify of '%s' found no "
                    "difference: nothing to repair", g->def->name);
        return FALSE;
    }
    /*
     * Single blocks cannot be copied without racing the guest's own writes
     * (QMP cannot mark them in a bitmap for a backup job): the secondary goes,
     * and the next protection copies the whole disk under the mirror, as for
     * a blank host.
     */
    why = g_strdup_printf("ftctl verify --repair: the copies differ in %" G_GINT64_FORMAT
                          " bytes; the secondary's disks are copied whole again", differing);
    g->full_copy_asked = TRUE;
    guest_handle(g, GUEST_EV_REPAIR_ASKED, why);
    return TRUE;
}
