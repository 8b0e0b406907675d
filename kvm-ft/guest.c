/* guest.c - one protected guest on this host, and its state machine */
#include "guest.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <glib/gstdio.h>
#include <string.h>

#include "decision.h"
#include "definitions.h"
#include "domxml.h"
#include "engine.h"
#include "log.h"
#include "diskcompare.h"
#include "nbdprobe.h"
#include "tlspsk.h"
#include "verify.h"
#include "output.h"
#include "qmp.h"
#include "resync.h"
#include "summary.h"
#include "timeouts.h"

/* Checkpoints remembered for `ftctl status` figures and benchmarks. */
#define CHECKPOINT_HISTORY 4096
/* A secondary waits for its primary's copy as if it came at least this fast. */
#define RESYNC_SLOWEST_BYTES (8 << 20)
/* The secondary's overlays in STATE-DIR/GUEST/: KIND-INDEX.qcow2 */
#define OVERLAY_ACTIVE "active"
#define OVERLAY_HIDDEN "hidden"
#define OVERLAY_SUFFIX ".qcow2"

struct FtGuest {
    Daemon *d;
    FtDef *def;
    char *domain_xml;
    FtRole role;
    GuestState state;
    char *error;

    Qmp *qmp;
    char *qmp_path;
    char *tls_dir;       /* the replication channels' keys.psk (tlspsk.h), or NULL */
    guint poll_id;
    gint64 deadline_us;

    /* Secondary: the primary's pending prepare-secondary request. */
    PeerConn *reply_conn;
    guint64 reply_id;
    /* Secondary: the generation its disks had before the primary asked. */
    char *found_generation;
    GenerationMark found_mark;
    /* Secondary: a disk was missing and was created blank for the primary's copy. */
    gboolean created_blank;

    /* The generation the pair enters protection with (resync.h). */
    char *generation;
    /* This protection started from a guest running alone: failing leaves it so. */
    gboolean rejoin;
    gint64 rejoin_after_us;
    /* Primary: the disk copy this protection needs, and how it goes. */
    ResyncPlan resync_plan;   /* none, incremental or full */
    ResyncSince resync_since; /* what an incremental copy moves */
    gboolean resync_running;
    ResyncProgress resync;
    guint64 disk_bytes;
    gint64 resync_started_us; /* wall clock */
    gint64 resync_ended_us;
    double resync_rate;
    guint64 rate_done;
    gint64 rate_us;
    JsonNode *last_resync;
    JsonNode *last_verify;    /* ftctl verify's findings, with "at" (verify.h) */
    /* Primary re-protecting: how long entering COLO stopped the running guest. */
    gboolean entry_pending;
    double entry_pause_ms;
    /* Primary re-protecting: the first sync's pause before switchover is handled. */
    gboolean switched_over;
    guint switchover_idle_id;
    /* Planned failover: QEMU was asked to quit; libvirt destroys it if it does not. */
    guint handover_timer;

    char *colo_mode;
    char *colo_reason;
    gboolean qmp_stalled;
    guint polls_skipped;
    guint64 checkpoints;
    guint64 checkpoints_forced;
    /* Of those, as colo-compare counted them (qemu-patches 0010); -1: unknown. */
    gint64 forced_difference;
    gint64 forced_expired;
    /* Primary, output="auto": what runs now and why (output.h). */
    OutputAuto output;
    guint output_timer;
    guint64 output_token;  /* the switch waiting for the secondary, if nonzero */
    guint64 output_requests;
    gint64 stop_us;
    gint64 last_checkpoint_stop_us;
    double last_pause_ms;
    gint64 last_checkpoint_us;

    char *exit_reason;
    guint exit_idle_id;

    /* Primary: QEMU announced it exits on purpose (its SHUTDOWN cause). */
    char *shutdown_cause;
    /* This protect adopts a QEMU that `virsh start` launched (paused). */
    gboolean started_by_libvirt;

    /* The status element in the domain's metadata follows the state. */
    char *status_reason;
    guint status_idle_id;

    /* Failure detection and the last failover, for the log and ftctl. */
    gboolean peer_daemon_down_logged;
    /*
     * Non-zero after a stall of this daemon (guest_stalled()): since when
     * no failover step is taken alone, until the peer says what it is.
     */
    gint64 confirm_since_us;
    /* Primary, protected: when the last checkpoint ended (monotonic), for the watchdog. */
    gint64 checkpoint_seen_us;
    gint64 watchdog_quiet_until_us;
    /* Primary on its way into COLO: until when the secondary may take to connect. */
    gint64 channels_deadline_us;
    char *failover_reason;
    gint64 failover_at_us;
    double failover_ms;
    /*
     * A failover under way (taking-over, dropping-secondary): why and since
     * when, and its claim at the witness (witness.h): which one is current,
     * the retry timer while the witness does not decide, and why it did not.
     */
    char *failover_cause;
    gint64 failover_started_us;
    guint64 claim_seq;
    guint64 nbd_probe_seq; /* the probe of the peer's NBD server that counts */
    guint64 compare_seq;   /* the comparison of administrator-copied disks that counts */
    /*
     * The outage bitmap began at this split (resync.h); and whether a guest
     * write failed on the secondary's copy while protected (QUORUM_REPORT_BAD):
     * then it may be on this copy alone from before the split.
     */
    gboolean outage_tracked;
    gboolean replica_write_failed;
    gboolean full_copy_asked; /* ftctl verify --repair: the next copy is a whole one */
    guint claim_retry_id;
    char *claim_trouble;
    double claim_ms;        /* the last won claim; -1: none (no witness, or forced) */

    /* Ring of the latest checkpoints: QEMU wall-clock stamp and pause. */
    gint64 history_us[CHECKPOINT_HISTORY];
    double history_pause_ms[CHECKPOINT_HISTORY];
};

static const char *const state_names[GUEST_N_STATES] = {
    [GUEST_STOPPED] = "stopped",
    [GUEST_PREPARING_PEER] = "preparing-peer",
    [GUEST_STARTING_PRIMARY] = "starting-primary",
    [GUEST_ENTERING_COLO] = "entering-colo",
    [GUEST_STARTING_SECONDARY] = "starting-secondary",
    [GUEST_SECONDARY_WAITING] = "secondary-waiting",
    [GUEST_PROTECTED] = "protected",
    [GUEST_TAKING_OVER] = "taking-over",
    [GUEST_DROPPING_SECONDARY] = "dropping-secondary",
    [GUEST_DEGRADED] = "degraded",
    [GUEST_REJOINING] = "rejoining",
    [GUEST_RESYNCING] = "resyncing",
    [GUEST_HANDING_OVER] = "handing-over",
    [GUEST_FAILED] = "failed",
};

#define BIT(s) (1u << (s))
#define ENDINGS (BIT(GUEST_FAILED) | BIT(GUEST_STOPPED))

/* The only transitions there are; anything else is a bug and is refused. */
static const guint allowed[GUEST_N_STATES] = {
    /* Protected or degraded straight away: a restarted kvm-ftd re-attaching. */
    [GUEST_STOPPED] = BIT(GUEST_PREPARING_PEER) | BIT(GUEST_STARTING_SECONDARY) |
                      BIT(GUEST_PROTECTED) | BIT(GUEST_DEGRADED),
    [GUEST_PREPARING_PEER] = BIT(GUEST_STARTING_PRIMARY) | ENDINGS,
    [GUEST_STARTING_PRIMARY] = BIT(GUEST_RESYNCING) | BIT(GUEST_ENTERING_COLO) | ENDINGS,
    /* Back to degraded: a re-protection that failed leaves the guest running alone. */
    [GUEST_RESYNCING] = BIT(GUEST_ENTERING_COLO) | BIT(GUEST_DEGRADED) | ENDINGS,
    [GUEST_ENTERING_COLO] = BIT(GUEST_PROTECTED) | BIT(GUEST_DEGRADED) | ENDINGS,
    [GUEST_STARTING_SECONDARY] = BIT(GUEST_SECONDARY_WAITING) | ENDINGS,
    [GUEST_SECONDARY_WAITING] = BIT(GUEST_PROTECTED) | ENDINGS,
    [GUEST_PROTECTED] = BIT(GUEST_TAKING_OVER) | BIT(GUEST_DROPPING_SECONDARY) |
                        BIT(GUEST_HANDING_OVER) | ENDINGS,
    /* Stopped: the witness gave the guest to the other copy. */
    [GUEST_TAKING_OVER] = BIT(GUEST_DEGRADED) | ENDINGS,
    [GUEST_DROPPING_SECONDARY] = BIT(GUEST_DEGRADED) | ENDINGS,
    [GUEST_DEGRADED] = BIT(GUEST_REJOINING) | ENDINGS,
    [GUEST_REJOINING] = BIT(GUEST_RESYNCING) | BIT(GUEST_ENTERING_COLO) |
                        BIT(GUEST_DEGRADED) | ENDINGS,
    [GUEST_HANDING_OVER] = BIT(GUEST_STOPPED) | BIT(GUEST_FAILED),
    [GUEST_FAILED] = BIT(GUEST_PREPARING_PEER) | BIT(GUEST_STARTING_SECONDARY) |
                     BIT(GUEST_STOPPED),
};

const char *guest_state_name(GuestState state)
{
    return state < GUEST_N_STATES ? state_names[state] : "invalid";
}

static const char *role_name(FtGuest *g)
{
    return ft_role_name(g->role);
}

/*
 * Writing the status is a libvirt call, which waits for the domain's job
 * lock: it must never delay a failover.  It is written from an idle
 * callback, once the failover the transition belongs to has run to its
 * end, and never in a state a failover passes through.
 */
static gboolean write_status(gpointer opaque)
{
    FtGuest *g = opaque;

    g->status_idle_id = 0;
    if (g->state == GUEST_TAKING_OVER || g->state == GUEST_DROPPING_SECONDARY)
        return G_SOURCE_REMOVE; /* the transition out of it writes */
    definitions_set_status(daemon_definitions(g->d), g->def->name,
                           guest_state_name(g->state), g->status_reason);
    return G_SOURCE_REMOVE;
}

/* An event for ftctl: about this guest, in this role. */
static void begin_event(FtGuest *g, JsonBuilder *b)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "guest");
    json_builder_add_string_value(b, g->def->name);
    json_builder_set_member_name(b, "role");
    json_builder_add_string_value(b, role_name(g));
}

static void broadcast_event(FtGuest *g, JsonBuilder *b)
{
    g_autoptr(JsonNode) event = NULL;

    json_builder_end_object(b);
    event = json_builder_get_root(b);
    daemon_broadcast(g->d, event);
}

static void stop_output_auto(FtGuest *g);
static void end_claim(FtGuest *g);

static gboolean transition(FtGuest *g, GuestState to, const char *reason)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    GuestState from = g->state;

    if (!(allowed[from] & BIT(to))) {
        log_err(g->def->name, role_name(g), "refused transition %s -> %s (%s)",
                guest_state_name(from), guest_state_name(to), reason);
        return FALSE;
    }
    g->state = to;
    log_info(g->def->name, role_name(g), "%s -> %s: %s",
             guest_state_name(from), guest_state_name(to), reason);
    if (to != GUEST_PROTECTED)
        stop_output_auto(g);
    /* Whichever way a failover ended, its claim is over. */
    if (from == GUEST_TAKING_OVER || from == GUEST_DROPPING_SECONDARY)
        end_claim(g);
    g_free(g->status_reason);
    g->status_reason = g_strdup(reason);
    if (!g->status_idle_id)
        g->status_idle_id = g_idle_add(write_status, g);

    begin_event(g, b);
    json_builder_set_member_name(b, "from");
    json_builder_add_string_value(b, guest_state_name(from));
    json_builder_set_member_name(b, "to");
    json_builder_add_string_value(b, guest_state_name(to));
    json_builder_set_member_name(b, "reason");
    json_builder_add_string_value(b, reason);
    broadcast_event(g, b);
    return TRUE;
}

static const FtHost *self_host(FtGuest *g)
{
    return ftdef_self(g->def, daemon_config(g->d)->host_name);
}

static const FtHost *peer_host(FtGuest *g)
{
    return ftdef_peer(g->def, daemon_config(g->d)->host_name);
}

static void stop_polling(FtGuest *g)
{
    if (g->poll_id) {
        g_source_remove(g->poll_id);
        g->poll_id = 0;
    }
}

static void answer_primary(FtGuest *g, const char *error)
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

/* Lets go of this host's QEMU without touching it. */
static void detach(FtGuest *g)
{
    stop_polling(g);
    g_clear_pointer(&g->qmp, qmp_free);
    g_clear_pointer(&g->colo_mode, g_free);
    g_clear_pointer(&g->colo_reason, g_free);
}

/* Tears down this host's copy; leaves the administrator's definition alone. */
static void release(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    gboolean active = FALSE;

    detach(g);
    if (virt_domain_is_active(daemon_virt(g->d), g->def->name, &active, &err) &&
        active && !virt_domain_destroy(daemon_virt(g->d), g->def->name, &err))
        log_warn(g->def->name, role_name(g), "cannot stop the guest: %s",
                 err->message);
    if (g->role == FT_ROLE_SECONDARY)
        guest_remove_overlays(daemon_config(g->d), g->def->name);
}

static void on_peer_stopped(PeerConn *conn, JsonNode *result,
                            const GError *error, gpointer opaque)
{
    char *name = opaque;

    (void)conn;
    (void)result;
    if (error)
        log_warn(name, "primary", "peer did not confirm stopping the secondary: %s",
                 error->message);
    g_free(name);
}

static void tell_peer_to_stop(FtGuest *g, const char *reason)
{
    JsonObject *params = json_object_new();

    json_object_set_string_member(params, "guest", g->def->name);
    json_object_set_string_member(params, "reason", reason);
    daemon_peer_call(g->d, peer_host(g)->link_address, "stop-secondary", params,
                     daemon_config(g->d)->peer_timeout_ms, on_peer_stopped,
                     g_strdup(g->def->name));
    json_object_unref(params);
}

static EngineLink engine_link(FtGuest *g);

/* This copy ran on without its peer: the peer's disks lack its writes. */
static void mark_diverged(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);
    g_autoptr(GError) err = NULL;
    GenerationMark mark;
    g_autofree char *gen = resync_generation_read(cfg, g->def->name, &mark);

    if (gen && (mark == GENERATION_IN_SYNC || mark == GENERATION_PRIMARY) &&
        !resync_generation_write(cfg, g->def->name, gen, GENERATION_DIVERGED, &err))
        log_warn(g->def->name, role_name(g), "cannot record that the copies diverged "
                 "(the next re-protection copies the whole disk): %s", err->message);
}

/*
 * The protected primary's QEMU announced its exit (a SHUTDOWN event) and
 * left through its own path, which completes every write on both copies'
 * disks before it closes them: no write is under way on this copy alone,
 * and the next protection need not copy the whole disk.  Without that
 * word (SIGKILL, power loss) the primary mark stays (resync.h).
 */
static void mark_closed_cleanly(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);
    g_autoptr(GError) err = NULL;
    GenerationMark mark;
    g_autofree char *gen = NULL;

    if (!g->shutdown_cause)
        return;
    gen = resync_generation_read(cfg, g->def->name, &mark);
    if (gen && mark == GENERATION_PRIMARY &&
        !resync_generation_write(cfg, g->def->name, gen, GENERATION_IN_SYNC, &err))
        log_warn(g->def->name, role_name(g), "cannot record that the disks were closed "
                 "cleanly (the next protection copies the whole disk): %s", err->message);
}

/*
 * A re-protection that did not work out: everything it added to the
 * running guest goes, the secondary too, and the guest runs on alone as
 * before.  The next attempt comes by itself.
 */
static void abort_rejoin(FtGuest *g, const char *reason)
{
    EngineLink link = engine_link(g);
    g_autoptr(GError) err = NULL;
    g_autofree char *why = g_strdup_printf("re-protection failed: %s; the guest runs "
                                           "on alone, next attempt in %d s", reason,
                                           REJOIN_BACKOFF_S);

    stop_polling(g);
    /* A first sync still running would otherwise enter COLO after all. */
    if (!engine_cancel_first_sync(g->qmp, &link, &err))
        g_clear_error(&err);
    if (g->resync_running)
        resync_abort(g->qmp, &link);
    g->resync_running = FALSE;
    engine_primary_cut(g->qmp, &link);
    if (!engine_primary_drop_secondary(g->qmp, &link, &err))
        log_warn(g->def->name, role_name(g), "removing the replication: %s", err->message);
    resync_release_targets(g->qmp, &link);
    tell_peer_to_stop(g, reason);
    g_free(g->error);
    g->error = g_strdup(why);
    g->rejoin = FALSE;
    g->rejoin_after_us = g_get_monotonic_time() + REJOIN_BACKOFF_S * G_USEC_PER_SEC;
    transition(g, GUEST_DEGRADED, why);
}

static void fail(FtGuest *g, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void fail(FtGuest *g, const char *fmt, ...)
{
    /* The guest ran in COLO or alone here: this copy may be the only one. */
    gboolean live = g->state == GUEST_PROTECTED || g->state == GUEST_TAKING_OVER ||
                    g->state == GUEST_DROPPING_SECONDARY || g->state == GUEST_DEGRADED ||
                    g->state == GUEST_HANDING_OVER || g->rejoin;
    gboolean qemu_up = g->qmp && qmp_is_open(g->qmp);
    va_list ap;

    g_free(g->error);
    va_start(ap, fmt);
    g->error = g_strdup_vprintf(fmt, ap);
    va_end(ap);

    if (g->rejoin && qemu_up) {
        g_autofree char *reason = g_strdup(g->error);

        abort_rejoin(g, reason);
        return;
    }
    g->rejoin = FALSE;
    answer_primary(g, g->error);
    if (!live) {
        /* Nothing ran yet: undo the setup on both hosts. */
        if (g->role == FT_ROLE_PRIMARY && g->state != GUEST_PREPARING_PEER)
            tell_peer_to_stop(g, g->error);
        /* libvirt stops what it started once its hook reports the failure. */
        if (g->started_by_libvirt)
            detach(g);
        else
            release(g);
    } else {
        /*
         * A copy that was in COLO may be the only one left: it is never
         * destroyed on a failure.  A primary whose QEMU still runs carries
         * on alone, so its useless secondary goes.
         */
        stop_polling(g);
        if (g->role == FT_ROLE_PRIMARY && qemu_up) {
            mark_diverged(g);
            tell_peer_to_stop(g, g->error);
            log_warn(g->def->name, role_name(g),
                     "the guest keeps running on this host, unprotected");
        }
    }
    transition(g, GUEST_FAILED, g->error);
}

static void drop_secondary(FtGuest *g, const char *reason);

static guint peer_window_ms(FtGuest *g);

static gboolean checkpoints_flow(FtGuest *g);

static gboolean after_colo_exit(gpointer opaque)
{
    FtGuest *g = opaque;

    g->exit_idle_id = 0;
    g_free(g->colo_mode);
    g->colo_mode = g_strdup("none");
    if (g->state != GUEST_PROTECTED)
        return G_SOURCE_REMOVE;
    if (g->role == FT_ROLE_PRIMARY) {
        g_autofree char *why = g_strdup_printf(
            "QEMU left COLO (reason: %s): the secondary or its stream is gone",
            g->exit_reason);

        /* Its QEMU keeps the guest paused and its output held until told otherwise. */
        guest_stalled(g, daemon_stalled_ms(g->d));
        if (g->confirm_since_us) {
            log_warn(g->def->name, role_name(g), "%s; waiting for %s's word before running "
                     "alone", why, peer_host(g)->name);
            return G_SOURCE_REMOVE;
        }
        drop_secondary(g, why);
    } else {
        /*
         * The stream from the primary broke.  Whether the primary's QEMU
         * is dead is for its kvm-ftd (take-over) or failure detection to
         * say: taking over next to a live primary would make two copies.
         */
        log_warn(g->def->name, role_name(g),
                 "QEMU left COLO (reason: %s); waiting for the primary's word "
                 "or failure detection", g->exit_reason);
    }
    return G_SOURCE_REMOVE;
}

/*
 * QEMU announces why it is about to exit.  The guest powering off (virsh
 * shutdown) and SIGTERM (virsh destroy) are planned stops: the QMP socket
 * closing next is no failure to fail over from.  A reset is no stop, and
 * libvirt's reboot, which powers the guest off and then resets it rather
 * than letting QEMU exit, takes back what the power-off announced.  Only
 * the primary's own stop counts: a secondary whose QEMU goes away is
 * reported to the primary as ever (secondary-lost).
 */
static void note_shutdown(FtGuest *g, JsonObject *data)
{
    const char *cause = data ? json_object_get_string_member_with_default(
                                   data, "reason", "unknown")
                             : "unknown";

    if (g->role != FT_ROLE_PRIMARY || g->shutdown_cause ||
        strcmp(cause, "guest-reset") == 0 || strcmp(cause, "host-qmp-system-reset") == 0)
        return;
    g->shutdown_cause = g_strdup(cause);
    log_info(g->def->name, role_name(g), "QEMU shuts down (%s): a planned stop, "
             "no failover when it exits", cause);
}

static gboolean on_pre_switchover(gpointer opaque);

static void on_qmp_event(Qmp *q, const char *event, JsonObject *data,
                         gint64 timestamp_us, gpointer opaque)
{
    FtGuest *g = opaque;

    (void)q;
    /* COLO reports every checkpoint as a stop/resume pair of the guest. */
    if (strcmp(event, "STOP") == 0) {
        g->stop_us = timestamp_us;
    } else if (strcmp(event, "RESUME") == 0) {
        if (g->stop_us && g->entry_pending) {
            /* The first sync's stop-and-copy and COLO's start: not a checkpoint. */
            g->entry_pending = FALSE;
            g->entry_pause_ms = (timestamp_us - g->stop_us) / 1000.0;
            log_info(g->def->name, role_name(g), "entering COLO paused the guest for "
                     "%.1f ms", g->entry_pause_ms);
        } else if (g->stop_us && g->state == GUEST_PROTECTED) {
            if (engine_checkpoint_cause(g->last_checkpoint_stop_us, g->stop_us,
                                        g->def->checkpoint_interval_ms) ==
                ENGINE_CHECKPOINT_FORCED)
                g->checkpoints_forced++;
            g->last_checkpoint_stop_us = g->stop_us;
            g->checkpoints++;
            g->last_pause_ms = (timestamp_us - g->stop_us) / 1000.0;
            g->last_checkpoint_us = timestamp_us;
            g->checkpoint_seen_us = g_get_monotonic_time();
            g->history_us[(g->checkpoints - 1) % CHECKPOINT_HISTORY] = timestamp_us;
            g->history_pause_ms[(g->checkpoints - 1) % CHECKPOINT_HISTORY] =
                g->last_pause_ms;
            log_debug(g->def->name, role_name(g), "checkpoint %" G_GUINT64_FORMAT
                      ": paused %.1f ms", g->checkpoints, g->last_pause_ms);
        }
        g->stop_us = 0;
    } else if (strcmp(event, "COLO_EXIT") == 0) {
        const char *reason = data ? json_object_get_string_member_with_default(
                                        data, "reason", "unknown")
                                  : "unknown";

        /* QEMU on its way out breaks its COLO stream: the planned stop follows. */
        if (g->shutdown_cause)
            return;
        /* Not from inside the QMP client's dispatch: failover may free it. */
        g_free(g->exit_reason);
        g->exit_reason = g_strdup(reason);
        if (!g->exit_idle_id)
            g->exit_idle_id = g_idle_add(after_colo_exit, g);
    } else if (strcmp(event, "BLOCK_JOB_COMPLETED") == 0) {
        /* The copy's own end, not the next poll's: what its rate is measured on. */
        if (g->state == GUEST_RESYNCING && data &&
            g_str_has_prefix(json_object_get_string_member_with_default(data, "device", ""),
                             RESYNC_COPY_JOB_PREFIX))
            g->resync_ended_us = MAX(g->resync_ended_us, timestamp_us);
    } else if (strcmp(event, "MIGRATION") == 0) {
        /* The guest is stopped until the switchover: not a poll interval more. */
        if (g->state == GUEST_ENTERING_COLO && data &&
            g_strcmp0(json_object_get_string_member_with_default(data, "status", ""),
                      "pre-switchover") == 0 && !g->switchover_idle_id)
            g->switchover_idle_id = g_idle_add(on_pre_switchover, g);
    } else if (strcmp(event, "QUORUM_REPORT_BAD") == 0) {
        /* Only the secondary's copy can fail a write: the local one would fail the guest's. */
        if (g->role == FT_ROLE_PRIMARY && data && !g->replica_write_failed &&
            g_strcmp0(json_object_get_string_member_with_default(data, "type", ""),
                      "write") == 0) {
            g->replica_write_failed = TRUE;
            log_warn(g->def->name, role_name(g), "a guest write did not reach %s's copy "
                     "(%s): the next copy to it moves everything written since the pair "
                     "was in sync", peer_host(g)->name,
                     json_object_get_string_member_with_default(data, "error", "no reason"));
        }
    } else if (strcmp(event, "SHUTDOWN") == 0) {
        note_shutdown(g, data);
    } else if (strcmp(event, "RESET") == 0 && g->shutdown_cause) {
        log_info(g->def->name, role_name(g), "guest reset after the shutdown (%s): "
                 "it runs on", g->shutdown_cause);
        g_clear_pointer(&g->shutdown_cause, g_free);
    }
}

/*
 * The primary's QEMU, which was running, stops on purpose (how says why):
 * its secondary goes too, nothing fails over.  FALSE if this copy is not a
 * primary past its setup (a setup that fails undoes both hosts already).
 */
static gboolean stop_planned(FtGuest *g, const char *how)
{
    if (g->role != FT_ROLE_PRIMARY ||
        (g->state != GUEST_PROTECTED && g->state != GUEST_DEGRADED &&
         g->state != GUEST_FAILED))
        return FALSE;
    if (g->state == GUEST_PROTECTED) {
        mark_closed_cleanly(g);
        tell_peer_to_stop(g, how);
    }
    /* QEMU is gone or on its way out: nothing left to destroy. */
    detach(g);
    transition(g, GUEST_STOPPED, how);
    return TRUE;
}

static char *planned_stop_reason(const char *cause)
{
    if (strcmp(cause, "guest-shutdown") == 0)
        return g_strdup_printf("shut down (%s)", cause);
    if (strcmp(cause, "host-signal") == 0)
        return g_strdup_printf("destroyed (%s)", cause);
    return g_strdup_printf("stopped (%s)", cause);
}

void guest_domain_stopped(FtGuest *g, VirtStopped how)
{
    g_autofree char *why = NULL;

    /* Only while QEMU is ours: when its QMP socket closed first, that was it. */
    if (how == VIRT_STOPPED_OTHER || !g->qmp || !qmp_is_open(g->qmp))
        return;
    /* QEMU's own word, when it came, says more. */
    if (g->shutdown_cause)
        why = planned_stop_reason(g->shutdown_cause);
    else
        why = g_strdup(how == VIRT_STOPPED_SHUTDOWN ? "shut down (libvirt)"
                                                    : "destroyed (libvirt)");
    stop_planned(g, why);
}

static void tell_peer(FtGuest *g, const char *decision, const char *reason)
{
    decision_send(g->d, peer_host(g), g->def->name, g->generation, decision, reason);
}

static void finish_hand_over(FtGuest *g);

static void on_qmp_closed(Qmp *q, const GError *reason, gpointer opaque)
{
    FtGuest *g = opaque;
    g_autofree char *why = g_strdup_printf("QEMU on %s exited (%s)",
                                           daemon_config(g->d)->host_name,
                                           reason ? reason->message : "closed");

    (void)q;
    if (g->state == GUEST_HANDING_OVER) {
        finish_hand_over(g);
        return;
    }
    if (g->shutdown_cause) {
        g_autofree char *how = planned_stop_reason(g->shutdown_cause);

        if (stop_planned(g, how))
            return;
    }
    if (g->state == GUEST_STOPPED || g->state == GUEST_FAILED)
        return;
    /*
     * The other copy is the guest now: the peer must hear it at once.  A
     * secondary that has not entered COLO yet ignores it.
     */
    if (g->state == GUEST_PROTECTED ||
        (g->state == GUEST_ENTERING_COLO && g->role == FT_ROLE_PRIMARY))
        tell_peer(g, g->role == FT_ROLE_PRIMARY ? "take-over" : "secondary-lost", why);
    fail(g, "%s", why);
}

static gboolean attach_qemu(FtGuest *g, GError **err)
{
    g->qmp = qmp_connect(g->qmp_path, daemon_config(g->d)->qmp_timeout_ms, err);
    if (!g->qmp)
        return FALSE;
    qmp_set_handlers(g->qmp, on_qmp_event, on_qmp_closed, g);
    qmp_attach(g->qmp, NULL);
    return TRUE;
}

static gboolean start_qemu(FtGuest *g, const DomxmlPlumbing *plumbing,
                           gboolean paused, GError **err)
{
    const FtConfig *cfg = daemon_config(g->d);
    DomxmlPlumbing own = *plumbing;
    g_autofree char *xml = NULL;

    if (g_mkdir_with_parents(cfg->run_dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s: %s", cfg->run_dir, g_strerror(errno));
        return FALSE;
    }
    g_unlink(g->qmp_path);
    own.own_start = TRUE;
    xml = domxml_for_role(g->domain_xml, g->def, g->role, &own, err);
    if (!xml || !virt_domain_start(daemon_virt(g->d), xml, paused, err))
        return FALSE;
    return attach_qemu(g, err);
}

static void refresh_colo_status(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    char *mode = NULL;
    char *reason = NULL;
    guint timeout = MIN(daemon_config(g->d)->qmp_timeout_ms, STATUS_QMP_TIMEOUT_MS);

    if (g->qmp_stalled && ++g->polls_skipped < STALLED_POLL_EVERY)
        return;
    g->polls_skipped = 0;
    if (!engine_colo_status(g->qmp, timeout, &mode, &reason, &err)) {
        if (!g->qmp_stalled)
            log_warn(g->def->name, role_name(g), "QEMU does not answer QMP: %s",
                     err->message);
        g->qmp_stalled = g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
        return;
    }
    if (g->qmp_stalled)
        log_info(g->def->name, role_name(g), "QEMU answers QMP again");
    g->qmp_stalled = FALSE;
    g_free(g->colo_mode);
    g_free(g->colo_reason);
    g->colo_mode = mode;
    g->colo_reason = reason;
}

/* From the start of the copy to QEMU's stamp of its end (or now, if none came). */
static double copy_seconds(FtGuest *g)
{
    gint64 end = g->resync_ended_us ? g->resync_ended_us : g_get_real_time();

    return (end - g->resync_started_us) / (double)G_USEC_PER_SEC;
}

static void add_copy_kind(FtGuest *g, JsonBuilder *b)
{
    json_builder_set_member_name(b, "mode");
    json_builder_add_string_value(b, g->resync_plan == RESYNC_INCREMENTAL ? "incremental" : "full");
    json_builder_set_member_name(b, "since");
    if (g->resync_plan == RESYNC_INCREMENTAL)
        json_builder_add_string_value(b, g->resync_since == RESYNC_SINCE_SPLIT ? "split"
                                                                               : "sync");
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "disk_bytes");
    json_builder_add_int_value(b, (gint64)g->disk_bytes);
}

/* What `ftctl status` and benchmarks show of the last disk copy. */
static void record_resync(FtGuest *g)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    guint64 rate = daemon_config(g->d)->resync_rate_bytes;

    json_builder_begin_object(b);
    add_copy_kind(g, b);
    json_builder_set_member_name(b, "bytes_moved");
    json_builder_add_int_value(b, (gint64)g->resync.total);
    json_builder_set_member_name(b, "seconds");
    json_builder_add_double_value(b, copy_seconds(g));
    json_builder_set_member_name(b, "rate_limit_bytes_per_s");
    if (rate)
        json_builder_add_int_value(b, (gint64)rate);
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
    g_clear_pointer(&g->last_resync, json_node_unref);
    g->last_resync = json_builder_get_root(b);
}

/* ---- output="auto" (output.h) ------------------------------------------------------------- */

static double pause_p50(FtGuest *g);

/*
 * Its QMP calls run on the main loop while the guest is protected, so they
 * get the short deadline of a status call: QEMU answers between
 * checkpoints within milliseconds, and a switch may wait for the next window.
 */
static EngineLink quick_link(FtGuest *g)
{
    EngineLink link = engine_link(g);

    link.timeout_ms = MIN(link.timeout_ms, STATUS_QMP_TIMEOUT_MS);
    return link;
}

static void output_switched(FtGuest *g, FtOutputMode to, const char *reason)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    const char *from = ftdef_output_mode_name(g->output.mode);

    output_auto_switched(&g->output, g_get_monotonic_time(), to, reason);
    log_info(g->def->name, role_name(g), "output %s -> %s: %s", from,
             ftdef_output_mode_name(to), reason);
    begin_event(g, b);
    json_builder_set_member_name(b, "output");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "from");
    json_builder_add_string_value(b, from);
    json_builder_set_member_name(b, "to");
    json_builder_add_string_value(b, ftdef_output_mode_name(to));
    json_builder_set_member_name(b, "reason");
    json_builder_add_string_value(b, reason);
    json_builder_end_object(b);
    broadcast_event(g, b);
}

typedef struct {
    Daemon *d;
    char *name;
    guint64 token;
    FtOutputMode to;
    char *reason;
} OutputSwitch;

static void on_secondary_output(PeerConn *conn, JsonNode *result, const GError *error,
                                gpointer opaque)
{
    OutputSwitch *sw = opaque;
    FtGuest *g = daemon_quitting(sw->d) ? NULL : daemon_find_guest(sw->d, sw->name);
    g_autoptr(GError) err = NULL;

    (void)conn;
    (void)result;
    if (g && g->output_token == sw->token && g->state == GUEST_PROTECTED) {
        EngineLink link = quick_link(g);

        g->output_token = 0;
        if (error) {
            log_warn(g->def->name, role_name(g), "the secondary could not send its output "
                     "%s: %s; staying %s", sw->to == FTDEF_OUTPUT_PASSIVE ? "nowhere"
                                                                          : "for comparison",
                     error->message, ftdef_output_mode_name(g->output.mode));
            /* Going passive, this side went first: back to the compare timeout. */
            if (sw->to == FTDEF_OUTPUT_PASSIVE &&
                !engine_primary_set_output(g->qmp, &link, FTDEF_OUTPUT_COMPARE, &err))
                log_warn(g->def->name, role_name(g), "%s", err->message);
        } else if (sw->to == FTDEF_OUTPUT_COMPARE &&
                   !engine_primary_set_output(g->qmp, &link, FTDEF_OUTPUT_COMPARE, &err)) {
            log_warn(g->def->name, role_name(g), "output stays passive: %s", err->message);
        } else {
            output_switched(g, sw->to, sw->reason);
        }
    }
    g_free(sw->name);
    g_free(sw->reason);
    g_free(sw);
}

static gboolean evaluate_output(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    g_autofree char *reason = NULL;
    EngineLink link = quick_link(g);
    const gint64 now = g_get_monotonic_time();
    const OutputAutoDue due = output_auto_due(&g->output, now);
    OutputSample sample;
    JsonObject *params;
    OutputSwitch *sw;
    FtOutputMode to;

    if (g->output_token || !g->qmp || due == OUTPUT_AUTO_NOTHING)
        return G_SOURCE_CONTINUE;
    sample = (OutputSample){
        .checkpoints = g->checkpoints,
        .forced = g->checkpoints_forced,
        .lag_ms = -1,
    };
    if (g->output.mode == FTDEF_OUTPUT_COMPARE &&
        !engine_primary_lag(g->qmp, &link, &sample.lag_ms, &err)) {
        /* Once a window, not at every check of the lag. */
        if (due == OUTPUT_AUTO_WINDOW)
            log_warn(g->def->name, role_name(g), "secondary's lag unknown: %s", err->message);
        g_clear_error(&err);
    }
    /* The pause median sorts the checkpoint history: only when the rule will look at it. */
    if (due == OUTPUT_AUTO_WINDOW || sample.lag_ms >= OUTPUT_AUTO_LAG_MIN_MS)
        sample.reply_cost_ms = FTDEF_PASSIVE_EPOCH_DEFAULT + pause_p50(g);
    if (!output_auto_evaluate(&g->output, now, &sample, &to, &reason))
        return G_SOURCE_CONTINUE;
    /* Into passive this side goes first, out of it last (engine.h). */
    if (to == FTDEF_OUTPUT_PASSIVE && !engine_primary_set_output(g->qmp, &link, to, &err)) {
        log_warn(g->def->name, role_name(g), "output stays compare: %s", err->message);
        return G_SOURCE_CONTINUE;
    }
    sw = g_new0(OutputSwitch, 1);
    sw->d = g->d;
    sw->name = g_strdup(g->def->name);
    sw->token = g->output_token = ++g->output_requests;
    sw->to = to;
    sw->reason = g_steal_pointer(&reason);
    params = json_object_new();
    json_object_set_string_member(params, "guest", g->def->name);
    json_object_set_string_member(params, "mode", ftdef_output_mode_name(to));
    daemon_peer_call(g->d, peer_host(g)->link_address, "set-output", params,
                     daemon_config(g->d)->peer_timeout_ms, on_secondary_output, sw);
    json_object_unref(params);
    return G_SOURCE_CONTINUE;
}

static void start_output_auto(FtGuest *g)
{
    stop_output_auto(g);
    output_auto_init(&g->output, g_get_monotonic_time(), g->checkpoints,
                     g->checkpoints_forced);
    /* Checked each second: a window ends when its time is up, not when a timer says,
     * and in compare the lag rule is checked between window ends (output.h). */
    g->output_timer = g_timeout_add(OUTPUT_AUTO_LAG_CHECK_MS, evaluate_output, g);
}

static void stop_output_auto(FtGuest *g)
{
    if (g->output_timer) {
        g_source_remove(g->output_timer);
        g->output_timer = 0;
    }
    g->output_token = 0;
}

gboolean guest_set_output(FtGuest *g, const char *mode, GError **err)
{
    EngineLink link = quick_link(g);
    FtOutputMode to = strcmp(mode, "passive") == 0 ? FTDEF_OUTPUT_PASSIVE
                                                   : FTDEF_OUTPUT_COMPARE;

    if (g->role != FT_ROLE_SECONDARY || !g->qmp || g->def->output_mode != FTDEF_OUTPUT_AUTO ||
        (strcmp(mode, "passive") != 0 && strcmp(mode, "compare") != 0)) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "'%s' is not an output=\"auto\" "
                    "secondary here, or '%s' is not compare or passive", g->def->name, mode);
        return FALSE;
    }
    if (!engine_secondary_set_output(g->qmp, &link, to, err))
        return FALSE;
    log_info(g->def->name, role_name(g), "output %s, as the primary asked",
             to == FTDEF_OUTPUT_PASSIVE ? "to nowhere (passive)" : "to comparison (compare)");
    return TRUE;
}

/*
 * new_epoch: the two copies are the same from here on -- write tracking
 * starts afresh and both hosts record the pair's new generation.
 */
static void enter_protected(FtGuest *g, const char *reason, gboolean new_epoch)
{
    const FtConfig *cfg = daemon_config(g->d);
    EngineLink link = engine_link(g);
    g_autoptr(GError) err = NULL;

    stop_polling(g);
    /* COLO's replication carries the guest's writes now, the mirror no more. */
    if (g->resync_running && !resync_finish(g->qmp, &link, &err)) {
        /* The copies may differ: this protection must not count as one. */
        fail(g, "the disk copy did not end cleanly: %s", err->message);
        return;
    }
    g->resync_running = FALSE;
    /* Without tracking, the next re-protection copies the whole disk: safe, slow. */
    if (!resync_track_writes(g->qmp, &link, new_epoch, cfg->resync_granularity_bytes, &err)) {
        log_warn(g->def->name, role_name(g), "%s", err->message);
        g_clear_error(&err);
    }
    g->outage_tracked = FALSE;
    if (new_epoch) {
        g->replica_write_failed = FALSE;
        g->full_copy_asked = FALSE;
    }
    /* Before this primary's next write can reach its own disks and not the other's. */
    if ((new_epoch || g->role == FT_ROLE_PRIMARY) && g->generation &&
        !resync_generation_write(cfg, g->def->name, g->generation,
                                 g->role == FT_ROLE_PRIMARY ? GENERATION_PRIMARY
                                                            : GENERATION_IN_SYNC,
                                 &err))
        log_warn(g->def->name, role_name(g), "cannot record the pair's generation: %s",
                 err->message);
    g->rejoin = FALSE;
    g_clear_pointer(&g->error, g_free);
    if (!transition(g, GUEST_PROTECTED, reason))
        return;
    g->checkpoint_seen_us = g_get_monotonic_time();
    /*
     * No periodic QMP from here on: a QMP call waits while QEMU holds its
     * lock for a checkpoint, and the heartbeats this daemon owes its peer
     * must never wait behind one.  COLO_EXIT reports a change.
     */
    g->peer_daemon_down_logged = FALSE;
    daemon_watch_peer(g->d, peer_host(g)->link_address);
    daemon_watch_peer(g->d, peer_host(g)->lan_address);
    if (g->role == FT_ROLE_PRIMARY && g->def->output_mode == FTDEF_OUTPUT_AUTO)
        start_output_auto(g);
}

static gboolean past_deadline(FtGuest *g)
{
    return g_get_monotonic_time() > g->deadline_us;
}

static void arm_deadline(FtGuest *g)
{
    g->deadline_us = g_get_monotonic_time() +
                     (gint64)daemon_config(g->d)->start_timeout_ms * 1000;
}

/* A running guest's first sync paused before its switchover: now the filters. */
static void switch_over(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link = engine_link(g);

    if (g->switched_over)
        return;
    g->switched_over = TRUE;
    if (!engine_primary_switch_over(g->qmp, &link, &err)) {
        stop_polling(g);
        fail(g, "cannot switch over to COLO: %s", err->message);
    }
}

static gboolean on_pre_switchover(gpointer opaque)
{
    FtGuest *g = opaque;

    g->switchover_idle_id = 0;
    if (g->state == GUEST_ENTERING_COLO)
        switch_over(g);
    return G_SOURCE_REMOVE;
}

static gboolean poll_primary_sync(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    g_autofree char *status =
        engine_migration_status(g->qmp, daemon_config(g->d)->qmp_timeout_ms, &err);

    /* In case QEMU's MIGRATION event was missed. */
    if (status && strcmp(status, "pre-switchover") == 0) {
        switch_over(g);
        return G_SOURCE_CONTINUE;
    }

    if (status && strcmp(status, "colo") == 0) {
        g->poll_id = 0;
        refresh_colo_status(g);
        enter_protected(g, "first checkpoint done; COLO running", TRUE);
        return G_SOURCE_REMOVE;
    }
    if (status && (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0)) {
        g->poll_id = 0;
        fail(g, "the first synchronisation to the secondary %s", status);
        return G_SOURCE_REMOVE;
    }
    if (past_deadline(g)) {
        g->poll_id = 0;
        fail(g, "the pair did not enter COLO within %u ms (migration: %s)",
             daemon_config(g->d)->start_timeout_ms,
             status ? status : err->message);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static EngineLink engine_link(FtGuest *g)
{
    gboolean primary = g->role == FT_ROLE_PRIMARY;
    EngineLink link = {
        .def = g->def,
        .primary_addr = (primary ? self_host(g) : peer_host(g))->link_address,
        .secondary_addr = (primary ? peer_host(g) : self_host(g))->link_address,
        .timeout_ms = daemon_config(g->d)->qmp_timeout_ms,
        .run_dir = daemon_config(g->d)->run_dir,
        .tls_dir = g->tls_dir,
    };
    return link;
}

static gboolean same_pair_and_storage(const FtDef *a, const FtDef *b)
{
    return a->output_mode == b->output_mode && ftdef_same_pair_and_disks(a, b);
}

char *guest_definition_changed(FtGuest *g, const FtDef *def)
{
    g_autoptr(GError) err = NULL;
    EngineLink link = engine_link(g);
    const gboolean rest_same = same_pair_and_storage(g->def, def);

    if (def->checkpoint_interval_ms != g->def->checkpoint_interval_ms) {
        if (g->role != FT_ROLE_PRIMARY || g->state != GUEST_PROTECTED || !g->qmp)
            return g_strdup("the new checkpoint interval applies at the next start");
        if (!engine_set_checkpoint_interval(g->qmp, &link, def->checkpoint_interval_ms, &err))
            return g_strdup_printf("the new checkpoint interval could not be applied (%s); "
                                   "it applies at the next start", err->message);
        log_info(g->def->name, role_name(g), "checkpoint interval %u -> %u ms, applied to "
                 "the running guest", g->def->checkpoint_interval_ms,
                 def->checkpoint_interval_ms);
        g->def->checkpoint_interval_ms = def->checkpoint_interval_ms;
        if (rest_same)
            return NULL;
    }
    return rest_same ? NULL
                     : g_strdup("the output mode, hosts, ports or disks changed: that "
                                "applies at the next start");
}

static gboolean run_qemu_img(const char *const *argv, char **out, GError **err)
{
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

/* The guest's disks' sizes, for a peer that has to create blank ones. */
static JsonArray *disk_sizes(FtGuest *g, GError **err)
{
    g_autoptr(JsonArray) sizes = json_array_new();

    g->disk_bytes = 0;
    for (guint i = 0; i < g->def->disks->len; i++) {
        const FtDisk *disk = g_ptr_array_index(g->def->disks, i);
        gint64 size;

        if (!disk_virtual_size(disk->source_path, &size, err))
            return NULL;
        json_array_add_int_element(sizes, size);
        g->disk_bytes += size;
    }
    return g_steal_pointer(&sizes);
}

static void add_progress(FtGuest *g, JsonBuilder *b)
{
    guint64 left = g->resync.total - MIN(g->resync.done, g->resync.total);

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "phase");
    json_builder_add_string_value(b, "resync");
    add_copy_kind(g, b);
    json_builder_set_member_name(b, "bytes_done");
    json_builder_add_int_value(b, (gint64)g->resync.done);
    json_builder_set_member_name(b, "bytes_total");
    json_builder_add_int_value(b, (gint64)g->resync.total);
    json_builder_set_member_name(b, "rate_bytes_per_s");
    json_builder_add_int_value(b, (gint64)g->resync_rate);
    json_builder_set_member_name(b, "eta_s");
    if (g->resync_rate > 0)
        json_builder_add_int_value(b, (gint64)(left / g->resync_rate + 0.5));
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
}

static void broadcast_progress(FtGuest *g)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    begin_event(g, b);
    json_builder_set_member_name(b, "progress");
    add_progress(g, b);
    broadcast_event(g, b);
}

static void setup_colo(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link = engine_link(g);

    g->switched_over = FALSE;
    g->entry_pending = g->rejoin;
    g->entry_pause_ms = 0;
    if (!(g->rejoin ? engine_primary_setup_live(g->qmp, &link, &err)
                    : engine_primary_setup(g->qmp, &link, &err))) {
        fail(g, "cannot set up replication: %s", err->message);
        return;
    }
    arm_deadline(g);
    if (!transition(g, GUEST_ENTERING_COLO, "replication attached; first full sync"))
        return;
    g->poll_id = g_timeout_add(ENTER_POLL_MS, poll_primary_sync, g);
}

static gboolean poll_resync(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    EngineLink link = engine_link(g);
    gint64 now = g_get_monotonic_time();

    if (!resync_poll(g->qmp, &link, &g->resync, &err)) {
        g->poll_id = 0;
        fail(g, "the disk copy to %s failed: %s", peer_host(g)->name, err->message);
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
    record_resync(g);
    log_info(g->def->name, role_name(g), "disk copy to %s done: %" G_GUINT64_FORMAT
             " of %" G_GUINT64_FORMAT " bytes in %.1f s (%s)", peer_host(g)->name,
             g->resync.total, g->disk_bytes, copy_seconds(g),
             g->resync_plan == RESYNC_INCREMENTAL ? "incremental" : "full");
    setup_colo(g);
    return G_SOURCE_REMOVE;
}

/* With this host's QEMU up and the secondary waiting: copy what it lacks, if anything. */
/* The secondary has marked its disks as receiving: the copy starts. */
static void start_copy(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *why = NULL;
    EngineLink link = engine_link(g);
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
        log_warn(g->def->name, role_name(g), "writes since the split are not known%s%s: "
                 "copying the whole disk", err ? ": " : "", err ? err->message : "");
        g_clear_error(&err);
        g->resync_plan = RESYNC_FULL;
    }
    if (!resync_start(g->qmp, &link, g->resync_plan == RESYNC_INCREMENTAL, g->resync_since,
                      daemon_config(g->d)->resync_rate_bytes, &err)) {
        fail(g, "cannot start the disk copy to %s: %s", peer_host(g)->name, err->message);
        return;
    }
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
                          peer_host(g)->name,
                          g->resync_plan == RESYNC_INCREMENTAL ? "incremental" : "full");
    if (!transition(g, GUEST_RESYNCING, why))
        return;
    g->poll_id = g_timeout_add(RESYNC_POLL_MS, poll_resync, g);
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
    Daemon *d;
    char *name;
    guint64 seq;
    JsonNode *disks;     /* verify_export()'s description */
    guint64 differing;
    char *first;         /* the first differing range, for the log */
    GError *error;
} CompareJob;

static void compare_job_free(CompareJob *j)
{
    g_free(j->name);
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
    FtGuest *g = daemon_quitting(j->d) ? NULL : daemon_find_guest(j->d, j->name);
    EngineLink link;

    (void)source;
    (void)data;
    if (!g || g->compare_seq != j->seq || g->state != GUEST_STARTING_PRIMARY)
        return;
    link = engine_link(g);
    verify_unexport(g->qmp, &link);
    if (j->error) {
        fail(g, "cannot compare the disks with %s's: %s", peer_host(g)->name,
             j->error->message);
        return;
    }
    if (!j->differing) {
        log_info(g->def->name, role_name(g), "the disks on %s are the same as this host's: "
                 "nothing to copy", peer_host(g)->name);
        g->resync_plan = RESYNC_NONE;
        setup_colo(g);
        return;
    }
    log_warn(g->def->name, role_name(g), "the disks on %s differ from this host's in %"
             G_GUINT64_FORMAT " bytes (first: %s): copying the whole disk", peer_host(g)->name,
             j->differing, j->first);
    g->resync_plan = RESYNC_FULL;
    start_copy(g);
}

static void start_compare(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GTask) task = NULL;
    g_autofree char *sock = verify_socket(g);
    EngineLink link = engine_link(g);
    CompareJob *j = g_new0(CompareJob, 1);

    j->disks = verify_export(g->qmp, &link, sock, &err);
    if (!j->disks) {
        compare_job_free(j);
        fail(g, "cannot export the disks to compare them with %s's: %s", peer_host(g)->name,
             err->message);
        return;
    }
    j->d = g->d;
    j->name = g_strdup(g->def->name);
    j->seq = ++g->compare_seq;
    log_info(g->def->name, role_name(g), "no protection has known these disks: comparing "
             "them with %s's before trusting them (%" G_GUINT64_FORMAT " bytes)",
             peer_host(g)->name, g->disk_bytes);
    task = g_task_new(NULL, NULL, on_compared, NULL);
    g_task_set_task_data(task, j, (GDestroyNotify)compare_job_free);
    g_task_run_in_thread(task, compare_in_thread);
}

static void on_peer_receiving(PeerConn *conn, JsonNode *result, const GError *error,
                              gpointer opaque)
{
    FtGuest *g = opaque;

    (void)conn;
    (void)result;
    if (g->state != GUEST_STARTING_PRIMARY && g->state != GUEST_REJOINING)
        return;
    if (error) {
        fail(g, "%s cannot take the disk copy: %s", peer_host(g)->name, error->message);
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
    daemon_peer_call(g->d, peer_host(g)->link_address, "receive-copy", params,
                     daemon_config(g->d)->peer_timeout_ms, on_peer_receiving, g);
    json_object_unref(params);
}

typedef struct {
    Daemon *d;
    char *name;
    guint64 seq;
} NbdProbeAsk;

static void on_nbd_probe(const GError *error, gpointer opaque)
{
    NbdProbeAsk *a = opaque;
    FtGuest *g = daemon_quitting(a->d) ? NULL : daemon_find_guest(a->d, a->name);

    if (g && g->nbd_probe_seq == a->seq &&
        (g->state == GUEST_STARTING_PRIMARY || g->state == GUEST_REJOINING)) {
        if (error)
            fail(g, "%s's disk server does not answer (%s): QEMU would wait for it with "
                 "its main loop for minutes; a firewall on the dedicated link must let the "
                 "guest's <ft:ports> through (base+1: NBD)", peer_host(g)->name,
                 error->message);
        else
            nbd_answers(g);
    }
    g_free(a->name);
    g_free(a);
}

/*
 * The secondary's filters connected.  Before QEMU connects to the peer's
 * NBD server (the copy's targets, the replication child), kvm-ftd does
 * (nbdprobe.h).
 */
static void channels_ready(FtGuest *g)
{
    EngineLink link = engine_link(g);
    NbdProbeAsk *a = g_new0(NbdProbeAsk, 1);

    a->d = g->d;
    a->name = g_strdup(g->def->name);
    a->seq = ++g->nbd_probe_seq;
    nbd_probe(link.secondary_addr, link.def->port_base + FT_PORT_NBD, NBD_PROBE_TIMEOUT_MS,
              on_nbd_probe, a);
}

/* Polled on the main loop: the secondary reconnects only every second. */
static gboolean poll_channels(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    EngineLink link = engine_link(g);
    gboolean connected = FALSE;

    if (g->state != GUEST_STARTING_PRIMARY && g->state != GUEST_REJOINING) {
        g->poll_id = 0;
        return G_SOURCE_REMOVE;
    }
    if (!engine_primary_channels_connected(g->qmp, &link, g->channels_deadline_us,
                                           &connected, &err)) {
        g->poll_id = 0;
        fail(g, "cannot set up replication: %s", err->message);
        return G_SOURCE_REMOVE;
    }
    if (!connected)
        return G_SOURCE_CONTINUE;
    g->poll_id = 0;
    channels_ready(g);
    return G_SOURCE_REMOVE;
}

/*
 * The replication channels' key (tlspsk.h), written before either side's
 * QEMU is told about it; its directory goes into every EngineLink.
 */
static gboolean write_tls_key(FtGuest *g, GError **err)
{
    const FtConfig *cfg = daemon_config(g->d);

    g_clear_pointer(&g->tls_dir, g_free);
    if (!cfg->replication_tls)
        return TRUE;
    g->tls_dir = tlspsk_write(cfg, g->def->name, err);
    return g->tls_dir != NULL;
}

/* With this host's QEMU up and the secondary waiting: the channels it connects to. */
static void continue_protection(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link;

    if (!write_tls_key(g, &err)) {
        fail(g, "cannot set up replication: %s", err->message);
        return;
    }
    link = engine_link(g);
    if (!engine_primary_open_channels(g->qmp, &link, &err)) {
        fail(g, "cannot set up replication: %s", err->message);
        return;
    }
    stop_polling(g);
    g->channels_deadline_us = g_get_monotonic_time() + CHANNEL_CONNECT_TIMEOUT_MS * 1000;
    g->poll_id = g_timeout_add(CHANNEL_POLL_MS, poll_channels, g);
}

static void start_primary(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    DomxmlPlumbing plumbing = { .qmp_socket = g->qmp_path };

    if (!transition(g, GUEST_STARTING_PRIMARY,
                    g->started_by_libvirt
                        ? "secondary ready; the primary was started paused by libvirt"
                        : "secondary ready; starting the primary paused"))
        return;
    /* Paused: not one guest write may happen before replication is attached. */
    if (!(g->started_by_libvirt ? attach_qemu(g, &err) : start_qemu(g, &plumbing, TRUE, &err))) {
        fail(g, "cannot start the primary: %s", err->message);
        return;
    }
    continue_protection(g);
}

/* FALSE if this host's disks cannot be the source of the guest. */
static gboolean judge_peer_disks(FtGuest *g, const char *peer_generation,
                                 GenerationMark peer_mark, gboolean peer_blank)
{
    const char *self = daemon_config(g->d)->host_name;
    const char *peer = peer_host(g)->name;
    GenerationMark mark;
    g_autofree char *own = resync_generation_read(daemon_config(g->d), g->def->name, &mark);

    g_autofree char *refusal = NULL;

    g->resync_plan = resync_plan(own, mark, peer_generation, peer_mark, peer_blank);
    if (g->full_copy_asked &&
        (g->resync_plan == RESYNC_INCREMENTAL || g->resync_plan == RESYNC_NONE ||
         g->resync_plan == RESYNC_COMPARE)) {
        log_info(g->def->name, role_name(g), "copying the whole disk, as ftctl verify "
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
            log_warn(g->def->name, role_name(g), "both copies ran alone since they split: "
                     "this host's overwrites %s's", peer);
        else if (own && peer_generation &&
                 (mark == GENERATION_PRIMARY || peer_mark == GENERATION_PRIMARY))
            log_info(g->def->name, role_name(g), "%s was the primary and stopped without "
                     "closing its disks: writes it had under way may be on its disks alone, "
                     "in blocks no one tracked; copying the whole disk",
                     mark == GENERATION_PRIMARY ? self : peer);
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
    tell_peer_to_stop(g, refusal);
    fail(g, "%s", refusal);
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
        if (!JSON_NODE_HOLDS_VALUE(gen) || json_node_get_value_type(gen) != G_TYPE_STRING ||
            !g_uuid_string_is_valid(json_node_get_string(gen)))
            return FALSE;
        *generation = json_node_get_string(gen);
    }
    return !m || (JSON_NODE_HOLDS_VALUE(m) && json_node_get_value_type(m) == G_TYPE_STRING &&
                  resync_mark_parse(json_node_get_string(m), mark));
}

static void on_secondary_prepared(PeerConn *conn, JsonNode *result,
                                  const GError *error, gpointer opaque)
{
    FtGuest *g = opaque;
    JsonObject *obj = result && JSON_NODE_HOLDS_OBJECT(result) ? json_node_get_object(result)
                                                                : NULL;
    const char *peer_generation;
    GenerationMark peer_mark;
    gboolean peer_blank;

    (void)conn;
    if (g->state != GUEST_PREPARING_PEER && g->state != GUEST_REJOINING)
        return;
    if (error) {
        fail(g, "peer %s cannot start the secondary: %s", peer_host(g)->name,
             error->message);
        return;
    }
    if (!peer_disks_reported(obj, &peer_generation, &peer_mark, &peer_blank)) {
        fail(g, "peer %s answered prepare-secondary without a valid generation and mark",
             peer_host(g)->name);
        return;
    }
    if (!judge_peer_disks(g, peer_generation, peer_mark, peer_blank))
        return;
    if (g->rejoin)
        continue_protection(g);
    else
        start_primary(g);
}

/* Asks the peer for a secondary: the same QEMU, disks ready to be written. */
static void ask_for_secondary(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);
    g_autoptr(GError) err = NULL;
    g_autofree char *version = NULL;
    g_autoptr(JsonArray) sizes = NULL;
    guint64 speed = cfg->resync_rate_bytes ? MIN(cfg->resync_rate_bytes, RESYNC_SLOWEST_BYTES)
                                           : RESYNC_SLOWEST_BYTES;
    JsonObject *params;

    /* The peer refuses a secondary on another QEMU than the primary's. */
    version = virt_qemu_version(daemon_virt(g->d), &err);
    if (!version) {
        fail(g, "%s", err->message);
        return;
    }
    /* Without them the peer cannot create blank disks, nothing else. */
    sizes = disk_sizes(g, &err);
    if (!sizes) {
        log_warn(g->def->name, role_name(g), "disk sizes unknown: %s", err->message);
        g_clear_error(&err);
        sizes = json_array_new();
    }
    g_free(g->generation);
    g->generation = g_uuid_string_random();
    params = json_object_new();
    json_object_set_string_member(params, "guest", g->def->name);
    json_object_set_string_member(params, "domain-xml", g->domain_xml);
    json_object_set_string_member(params, "primary", self_host(g)->name);
    json_object_set_string_member(params, "qemu-version", version);
    json_object_set_string_member(params, "generation", g->generation);
    json_object_set_array_member(params, "disk-bytes", json_array_ref(sizes));
    /*
     * The secondary waits for COLO through a comparison of the disks and
     * their copy, however long they take.
     */
    json_object_set_int_member(params, "wait-ms",
                               (gint64)(g->disk_bytes * 3000 / speed) + cfg->start_timeout_ms);
    daemon_peer_call(g->d, peer_host(g)->link_address, "prepare-secondary", params,
                     cfg->start_timeout_ms, on_secondary_prepared, g);
    json_object_unref(params);
}

/* A new protection counts its own checkpoints. */
static void forget_checkpoints(FtGuest *g)
{
    g->checkpoints = 0;
    g->checkpoints_forced = 0;
    g->forced_difference = g->forced_expired = -1;
    g->last_checkpoint_us = 0;
    g->last_checkpoint_stop_us = 0;
}

void guest_protect(FtGuest *g, gboolean started_by_libvirt)
{
    g->started_by_libvirt = started_by_libvirt;
    g->rejoin = FALSE;
    g_clear_pointer(&g->error, g_free);
    forget_checkpoints(g);
    arm_deadline(g);
    if (!transition(g, GUEST_PREPARING_PEER, "protect requested"))
        return;
    ask_for_secondary(g);
}

/* The peer is back: the guest, running alone here, gets a secondary again. */
static void start_rejoin(FtGuest *g)
{
    g->rejoin = TRUE;
    arm_deadline(g);
    if (!transition(g, GUEST_REJOINING, "peer is back; starting a new secondary there"))
        return;
    ask_for_secondary(g);
}

static gboolean create_overlay(const char *path, gint64 size, GError **err)
{
    g_autofree char *size_s = g_strdup_printf("%" G_GINT64_FORMAT, size);
    const char *argv[] = { "timeout", QEMU_IMG_TIMEOUT_S, "qemu-img", "create",
                           "-q", "-f", "qcow2", path, size_s, NULL };

    return run_qemu_img(argv, NULL, err);
}

/*
 * A replacement host has no copy yet: a blank disk of the primary's size
 * takes the full copy.  Only where nothing is: an existing file of the
 * wrong size is the administrator's to sort out.
 */
static gboolean create_blank_disk(FtGuest *g, const FtDisk *disk, JsonArray *sizes,
                                  guint index, GError **err)
{
    g_autofree char *size_s = NULL;
    g_autofree char *dir = g_path_get_dirname(disk->source_path);
    gint64 size = sizes && index < json_array_get_length(sizes)
                      ? json_array_get_int_element(sizes, index)
                      : 0;
    const char *argv[] = { "timeout", QEMU_IMG_TIMEOUT_S, "qemu-img", "create", "-q",
                           "-f", disk->format, disk->source_path, NULL, NULL };

    if (size <= 0) {
        g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_NOENT,
                    "disk %s (%s) does not exist on %s: copy the guest's disk there "
                    "before protecting it", disk->source_path, disk->target,
                    daemon_config(g->d)->host_name);
        return FALSE;
    }
    if (g_mkdir_with_parents(dir, 0755) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s: %s", dir, g_strerror(errno));
        return FALSE;
    }
    size_s = g_strdup_printf("%" G_GINT64_FORMAT, size);
    argv[8] = size_s;
    if (!run_qemu_img(argv, NULL, err))
        return FALSE;
    log_info(g->def->name, role_name(g), "created blank disk %s (%s, %" G_GINT64_FORMAT
             " bytes) for the primary's full copy", disk->source_path, disk->format, size);
    return TRUE;
}

/* The secondary's replication chain: active and hidden overlays on its copy. */
static gboolean prepare_overlays(FtGuest *g, JsonArray *sizes, GPtrArray *active,
                                 GPtrArray *hidden, GError **err)
{
    g_autofree char *dir = g_build_filename(daemon_config(g->d)->state_dir,
                                            g->def->name, NULL);

    if (g_mkdir_with_parents(dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s: %s", dir, g_strerror(errno));
        return FALSE;
    }
    for (guint i = 0; i < g->def->disks->len; i++) {
        const FtDisk *disk = g_ptr_array_index(g->def->disks, i);
        gint64 size;

        if (!g_file_test(disk->source_path, G_FILE_TEST_EXISTS)) {
            if (!create_blank_disk(g, disk, sizes, i, err))
                return FALSE;
            g->created_blank = TRUE;
        }
        if (!g_file_test(disk->source_path, G_FILE_TEST_IS_REGULAR)) {
            g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "disk %s (%s) on %s is not a regular file",
                        disk->source_path, disk->target, daemon_config(g->d)->host_name);
            return FALSE;
        }
        if (!disk_virtual_size(disk->source_path, &size, err))
            return FALSE;
        /* The primary's copy and replication write its blocks one for one. */
        if (sizes && i < json_array_get_length(sizes) &&
            json_array_get_int_element(sizes, i) != size) {
            g_set_error(err, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "disk %s (%s) on %s is %" G_GINT64_FORMAT " bytes, the primary's "
                        "is %" G_GINT64_FORMAT ": remove it (a blank one of the right size "
                        "is created and copied in full) or resize it",
                        disk->source_path, disk->target, daemon_config(g->d)->host_name,
                        size, json_array_get_int_element(sizes, i));
            return FALSE;
        }
        g_ptr_array_add(active, overlay_path(g, OVERLAY_ACTIVE, i));
        g_ptr_array_add(hidden, overlay_path(g, OVERLAY_HIDDEN, i));
        if (!create_overlay(g_ptr_array_index(active, i), size, err) ||
            !create_overlay(g_ptr_array_index(hidden, i), size, err))
            return FALSE;
    }
    g_ptr_array_add(active, NULL);
    g_ptr_array_add(hidden, NULL);
    return TRUE;
}

static gboolean poll_secondary_sync(gpointer opaque)
{
    FtGuest *g = opaque;

    refresh_colo_status(g);
    if (g->colo_mode && strcmp(g->colo_mode, "secondary") == 0) {
        g->poll_id = 0;
        enter_protected(g, "primary's first checkpoint loaded; COLO running", TRUE);
        return G_SOURCE_REMOVE;
    }
    if (past_deadline(g)) {
        g->poll_id = 0;
        fail(g, "the primary did not start COLO within %u ms",
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

void guest_prepare_secondary(FtGuest *g, PeerConn *conn, guint64 id, JsonObject *params)
{
    const FtConfig *cfg = daemon_config(g->d);
    JsonArray *sizes = json_object_has_member(params, "disk-bytes") &&
                               JSON_NODE_HOLDS_ARRAY(json_object_get_member(params, "disk-bytes"))
                           ? json_object_get_array_member(params, "disk-bytes")
                           : NULL;
    gint64 wait_ms = json_object_get_int_member_with_default(params, "wait-ms", 0);
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) active = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) hidden = g_ptr_array_new_with_free_func(g_free);
    DomxmlPlumbing plumbing = { .qmp_socket = g->qmp_path };
    EngineLink link;
    gboolean defined;

    g_clear_pointer(&g->error, g_free);
    forget_checkpoints(g);
    g->created_blank = FALSE;
    g->reply_conn = peer_conn_ref(conn);
    g->reply_id = id;
    arm_deadline(g);
    /* Through the primary's disk copy, which it sized; within reason. */
    g->deadline_us += CLAMP(wait_ms, 0, 24 * 3600 * 1000LL) * 1000;
    g_free(g->generation);
    g->generation = g_strdup(json_object_get_string_member_with_default(params, "generation",
                                                                        NULL));
    if (g->generation && !g_uuid_string_is_valid(g->generation))
        g_clear_pointer(&g->generation, g_free);
    if (!transition(g, GUEST_STARTING_SECONDARY, "primary asked for a secondary"))
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
            log_warn(g->def->name, role_name(g), "a disk of the guest is missing: the "
                     "primary copies all of them in full");
        g_clear_pointer(&g->found_generation, g_free);
        g->found_mark = GENERATION_IN_SYNC;
        resync_generation_forget(cfg, g->def->name);
    }

    if (!virt_domain_define_missing(daemon_virt(g->d), g->def->name,
                                    g->domain_xml, &defined, &err)) {
        fail(g, "%s", err->message);
        return;
    }
    if (defined)
        log_info(g->def->name, role_name(g), "defined the guest on this host");
    if (!virt_room_for(daemon_virt(g->d), g->def->name, &err)) {
        fail(g, "%s", err->message);
        return;
    }
    if (!prepare_overlays(g, sizes, active, hidden, &err)) {
        fail(g, "cannot prepare replication storage: %s", err->message);
        return;
    }
    plumbing.active_overlays = (const char *const *)active->pdata;
    plumbing.hidden_overlays = (const char *const *)hidden->pdata;
    if (!write_tls_key(g, &err)) {
        fail(g, "cannot start the secondary: %s", err->message);
        return;
    }
    link = engine_link(g);
    if (!start_qemu(g, &plumbing, FALSE, &err) ||
        !engine_secondary_setup(g->qmp, &link, &err)) {
        fail(g, "cannot start the secondary: %s", err->message);
        return;
    }
    if (!transition(g, GUEST_SECONDARY_WAITING, "incoming side ready"))
        return;
    /* Silence from the primary from here on means it is gone (check_rejoin()). */
    daemon_watch_peer(g->d, peer_host(g)->link_address);
    answer_primary(g, NULL);
    g->poll_id = g_timeout_add(ENTER_POLL_MS, poll_secondary_sync, g);
}

static void record_failover(FtGuest *g)
{
    g_free(g->failover_reason);
    g->failover_reason = g_strdup(g->failover_cause);
    g->failover_at_us = g_get_real_time();
    g->failover_ms = (g_get_monotonic_time() - g->failover_started_us) / 1000.0;
}

static void end_claim(FtGuest *g)
{
    g->claim_seq++; /* an answer still on its way is for nobody now */
    if (g->claim_retry_id)
        g_source_remove(g->claim_retry_id);
    g->claim_retry_id = 0;
    g_clear_pointer(&g->claim_trouble, g_free);
}

/*
 * The second half of every failover, once this copy may run alone: QEMU's
 * teardown for this role, then this copy is the only one, hence the primary.
 */
static void run_alone(FtGuest *g)
{
    const GuestState during = g->state;
    const gboolean dropping = during == GUEST_DROPPING_SECONDARY;
    g_autoptr(GError) err = NULL;
    EngineLink link = engine_link(g);

    /* Recorded before this copy can run alone: a crash in between must not hide it. */
    mark_diverged(g);
    (dropping ? engine_primary_cut : engine_secondary_cut)(g->qmp, &link);
    /*
     * Once the cut lets QEMU answer, and before the takeover's commit of the
     * secondary's own blocks, which it must count.
     */
    g->outage_tracked = resync_outage_begin(g->qmp, &link, &err);
    if (!g->outage_tracked) {
        log_warn(g->def->name, role_name(g), "the writes of this outage are not tracked on "
                 "their own (%s): the next copy moves all since the pair was in sync",
                 err->message);
        g_clear_error(&err);
    }
    if (!(dropping ? engine_primary_drop_secondary : engine_secondary_takeover)(g->qmp, &link,
                                                                               &err)) {
        fail(g, "%s failed: %s", guest_state_name(during), err->message);
        return;
    }
    record_failover(g);
    g->role = FT_ROLE_PRIMARY;
    g_free(g->colo_mode);
    g->colo_mode = g_strdup("none");
    if (dropping) {
        /* If its kvm-ftd still listens, the stale secondary goes away. */
        tell_peer(g, "stand-down", g->failover_cause);
        transition(g, GUEST_DEGRADED, "running alone, unprotected");
        resync_release_targets(g->qmp, &link);
    } else {
        transition(g, GUEST_DEGRADED, "took over; running alone, unprotected");
    }
}

static void claim_solo_run(FtGuest *g);

static gboolean retry_claim(gpointer opaque)
{
    FtGuest *g = opaque;

    g->claim_retry_id = 0;
    claim_solo_run(g);
    return G_SOURCE_REMOVE;
}

/* No claim, no solo run: the guest stays held until the witness decides or an operator does. */
static void hold(FtGuest *g, const char *why)
{
    if (g_strcmp0(g->claim_trouble, why) != 0)
        log_err(g->def->name, role_name(g), "not running alone: %s; the guest stays held, "
                "its output too (asking again every %d ms; `ftctl takeover %s --force` "
                "decides instead, once the other copy is known to be stopped)", why,
                WITNESS_RETRY_MS, g->def->name);
    g_free(g->claim_trouble);
    g->claim_trouble = g_strdup(why);
    if (!g->claim_retry_id)
        g->claim_retry_id = g_timeout_add(WITNESS_RETRY_MS, retry_claim, g);
}

typedef struct {
    Daemon *d;
    char *name;
    guint64 seq;
    char *generation;
} ClaimAsk;

static void on_claim(const char *owner, const GError *error, gpointer opaque)
{
    ClaimAsk *a = opaque;
    FtGuest *g = daemon_quitting(a->d) ? NULL : daemon_find_guest(a->d, a->name);
    g_autofree char *why = NULL;

    if (!g || g->claim_seq != a->seq ||
        (g->state != GUEST_TAKING_OVER && g->state != GUEST_DROPPING_SECONDARY))
        goto out;
    if (error) {
        hold(g, error->message);
    } else if (strcmp(owner, daemon_config(g->d)->host_name) == 0) {
        g->claim_ms = (g_get_monotonic_time() - g->failover_started_us) / 1000.0;
        log_info(g->def->name, role_name(g), "the witness gave the guest (generation %s) to "
                 "this host, %.1f ms into the failover: running alone", a->generation,
                 g->claim_ms);
        run_alone(g);
    } else {
        why = g_strdup_printf("the witness gave the guest (generation %s) to %s: this copy "
                              "stops; its output was held, so nothing it ran since the last "
                              "checkpoint reached anyone", a->generation, owner);
        /* A primary ran past its last checkpoint: its disks hold writes the winner lacks. */
        if (g->role == FT_ROLE_PRIMARY)
            mark_diverged(g);
        /* For `ftctl status` too, until the next protection. */
        g_free(g->error);
        g->error = g_strdup(why);
        guest_stop(g, why);
    }
out:
    g_free(a->name);
    g_free(a->generation);
    g_free(a);
}

/*
 * Before this copy runs alone, its host claims the protection's generation
 * at the witness; only the owner of the key runs (witness.h).
 */
static void claim_solo_run(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);
    GenerationMark mark;
    g_autofree char *recorded = resync_generation_read(cfg, g->def->name, &mark);
    const char *generation = g->generation ? g->generation : recorded;
    g_autofree char *key = NULL;
    ClaimAsk *a;

    if (!generation) {
        hold(g, "no protection generation is known here to claim at the witness");
        return;
    }
    key = witness_key(self_host(g)->name, peer_host(g)->name, g->def->name, generation);
    a = g_new0(ClaimAsk, 1);
    a->d = g->d;
    a->name = g_strdup(g->def->name);
    a->seq = ++g->claim_seq;
    a->generation = g_strdup(generation);
    witness_claim(daemon_witness(g->d), key, cfg->host_name, on_claim, a);
}

/*
 * Both failovers begin here: the state says which, and with a witness the
 * copy runs alone only once its host owns the claim.
 */
static void fail_over(FtGuest *g, GuestState during, const char *reason)
{
    if (!transition(g, during, reason))
        return;
    g->failover_started_us = g_get_monotonic_time();
    g_free(g->failover_cause);
    g->failover_cause = g_strdup(reason);
    g->claim_ms = -1;
    if (daemon_witness(g->d))
        claim_solo_run(g);
    else
        run_alone(g);
}

/* Primary: the secondary is gone; carry on alone. */
static void drop_secondary(FtGuest *g, const char *reason)
{
    fail_over(g, GUEST_DROPPING_SECONDARY, reason);
}

/* Secondary: the primary is gone; this copy becomes the guest. */
static void take_over(FtGuest *g, const char *reason)
{
    fail_over(g, GUEST_TAKING_OVER, reason);
}

gboolean guest_force_solo(FtGuest *g, GError **err)
{
    if (g->state != GUEST_TAKING_OVER && g->state != GUEST_DROPPING_SECONDARY) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "guest '%s' is %s on %s: no failover "
                    "waits for the witness here", g->def->name, guest_state_name(g->state),
                    daemon_config(g->d)->host_name);
        return FALSE;
    }
    log_warn(g->def->name, role_name(g), "an operator forced this copy to run alone without "
             "the witness's word (it was waiting: %s)",
             g->claim_trouble ? g->claim_trouble : "for the witness's answer");
    run_alone(g);
    return TRUE;
}

/*
 * Failure detection, run on every heartbeat tick.  The dedicated link is
 * the pair's heartbeat; the LAN path only tells a cut link from a dead
 * host, and a host whose kernel still answers is up even when its kvm-ftd
 * is not (then its QEMU carries on and nothing is done).
 */
/* Whether the peer's kvm-ftd answers on the dedicated link right now. */
static gboolean peer_answers(FtGuest *g)
{
    const FtHost *peer = peer_host(g);

    return daemon_peer_connected(g->d, peer->name) &&
           daemon_peer_path(g->d, peer->link_address, 1) == PEER_PATH_ALIVE;
}

/*
 * Silence windows that tell a dead peer from one busy re-protecting: its
 * kvm-ftd waits on its QEMU, which is loading the first sync, for a second
 * or more.  Until then, a dead peer costs the guest's disk writes that
 * long (the mirror carries them synchronously).
 */
static guint rejoin_windows(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);
    guint window_ms = cfg->heartbeat_ms * cfg->miss_count;

    return MAX(2, (REJOIN_SILENCE_MS + window_ms - 1) / window_ms);
}

/*
 * Outside COLO: a guest running alone asks its peer for a new secondary as
 * soon as the peer's kvm-ftd answers again; a re-protection under way
 * gives up when the peer goes silent (the guest carries on alone and tries
 * again), and so does a secondary still waiting for its primary.
 */
static void check_rejoin(FtGuest *g)
{
    const FtHost *peer = peer_host(g);

    if (g->state == GUEST_DEGRADED) {
        if (g->role != FT_ROLE_PRIMARY || !g->qmp || !qmp_is_open(g->qmp))
            return;
        /* Keeps a session to the peer open, so its return is noticed. */
        daemon_watch_peer(g->d, peer->link_address);
        if (g_get_monotonic_time() >= g->rejoin_after_us && peer_answers(g))
            start_rejoin(g);
        return;
    }
    /*
     * While it starts the secondary, the peer's kvm-ftd may not be heard for
     * a while (its answer has a deadline of its own); after that it only
     * waits, and silence means it is gone.  A dead secondary has nothing the
     * guest needs: giving up early costs only another attempt.
     */
    if (g->rejoin && g->state != GUEST_REJOINING &&
        daemon_peer_path(g->d, peer->link_address, rejoin_windows(g)) == PEER_PATH_SILENT) {
        g_autofree char *why = g_strdup_printf("%s went silent on the dedicated link",
                                               peer->name);

        abort_rejoin(g, why);
    }
    /* A secondary whose primary died before COLO began has nothing to wait for. */
    if (g->state == GUEST_SECONDARY_WAITING &&
        daemon_peer_path(g->d, peer->link_address, rejoin_windows(g)) == PEER_PATH_SILENT) {
        g_autofree char *why = g_strdup_printf("primary %s went silent on the dedicated "
                                               "link before COLO began", peer->name);

        guest_stop(g, why);
    }
}

void guest_check_peer(FtGuest *g)
{
    const FtHost *peer;
    PeerPath link, lan;
    g_autofree char *why = NULL;
    guint windows, window;

    if (g->state != GUEST_PROTECTED) {
        check_rejoin(g);
        return;
    }
    peer = peer_host(g);
    if (g->confirm_since_us) {
        if (g_get_monotonic_time() - g->confirm_since_us < STALL_CONFIRM_TIMEOUT_MS * 1000)
            return;
        log_warn(g->def->name, role_name(g), "%s did not say in %d ms whether it took over: "
                 "failure detection decides", peer->name, STALL_CONFIRM_TIMEOUT_MS);
        g->confirm_since_us = 0;
        /* A COLO exit seen meanwhile waited for this. */
        if (g->role == FT_ROLE_PRIMARY && g_strcmp0(g->colo_mode, "none") == 0) {
            why = g_strdup_printf("QEMU left COLO (reason: %s); %s did not answer whether "
                                  "it took over", g->exit_reason, peer->name);
            drop_secondary(g, why);
            return;
        }
    }
    /* After the question above: a stall is not a hung QEMU. */
    if (g->role == FT_ROLE_PRIMARY && !checkpoints_flow(g))
        return;
    /*
     * The secondary waits twice as long as the primary: a primary that is
     * alive acts first (drops the secondary and tells it to stand down),
     * so a transient silence never leaves two copies running.
     */
    windows = g->role == FT_ROLE_SECONDARY ? 2 : 1;
    link = daemon_peer_path(g->d, peer->link_address, windows);
    if (link == PEER_PATH_ALIVE) {
        if (g->peer_daemon_down_logged)
            log_info(g->def->name, role_name(g), "kvm-ftd on %s answers again",
                     peer->name);
        g->peer_daemon_down_logged = FALSE;
        return;
    }
    if (link == PEER_PATH_HOST_UP) {
        if (!g->peer_daemon_down_logged)
            log_warn(g->def->name, role_name(g), "kvm-ftd on %s does not answer but "
                     "its host does: no failover, the pair stays in COLO", peer->name);
        g->peer_daemon_down_logged = TRUE;
        return;
    }

    window = daemon_config(g->d)->heartbeat_ms * daemon_config(g->d)->miss_count * windows;
    lan = daemon_peer_path(g->d, peer->lan_address, windows);
    if (lan == PEER_PATH_ALIVE || lan == PEER_PATH_HOST_UP) {
        why = g_strdup_printf("dedicated link to %s silent for %u ms while %s "
                              "answers on the LAN", peer->name, window, peer->name);
        if (g->role == FT_ROLE_PRIMARY) {
            drop_secondary(g, why);
        } else {
            g_autofree char *msg = g_strdup_printf("%s: the primary continues alone; "
                                                   "standing down", why);

            guest_stop(g, msg);
        }
        return;
    }
    why = g_strdup_printf("%s silent for %u ms on the dedicated link%s: host down",
                          peer->name, window,
                          lan == PEER_PATH_NONE ? "" : " and the LAN");
    if (g->role == FT_ROLE_PRIMARY)
        drop_secondary(g, why);
    else
        take_over(g, why);
}

/*
 * The primary's watchdog.  COLO stops the guest for each checkpoint for
 * milliseconds, and checkpoints at least every interval.  A checkpoint
 * that has held the guest stopped for CHECKPOINT_STUCK_MS while QEMU
 * answers waits on a secondary that hangs: the secondary is dropped.  No
 * checkpoint for an interval + WATCHDOG_SLACK_MS: if QEMU answers and its
 * guest is not paused by a user, COLO is stuck on the secondary (QEMU asks
 * the secondary before it stops the guest, whose output colo-compare holds
 * meanwhile); if QEMU does not answer, it hangs (a checkpoint saving with
 * QEMU's lock held is never that long): it is killed, and its closed
 * monitor makes the secondary take over as for any dead QEMU.  Either way
 * the guest's own TCP peers back off while its output is held: this must
 * be quick.
 * Returns FALSE when it acted.
 */
static gboolean checkpoints_flow(FtGuest *g)
{
    const gint64 bound_ms = (gint64)g->def->checkpoint_interval_ms + WATCHDOG_SLACK_MS;
    const gint64 silent_ms = (g_get_monotonic_time() - g->checkpoint_seen_us) / 1000;
    const gint64 stopped_ms = g->stop_us ? (g_get_real_time() - g->stop_us) / 1000 : 0;
    g_autoptr(GError) err = NULL;
    g_autofree char *why = NULL;
    g_autofree char *state = NULL;
    pid_t pid;

    if (!g->checkpoint_seen_us || !g->qmp ||
        (silent_ms <= bound_ms && stopped_ms <= CHECKPOINT_STUCK_MS) ||
        g_get_monotonic_time() < g->watchdog_quiet_until_us)
        return TRUE;
    state = engine_run_state(g->qmp, STATUS_QMP_TIMEOUT_MS, &err);
    if (state && strcmp(state, "colo") == 0 && stopped_ms > CHECKPOINT_STUCK_MS) {
        why = g_strdup_printf("a checkpoint has held the guest stopped for %" G_GINT64_FORMAT
                              " ms while QEMU answers: the secondary hangs", stopped_ms);
    } else if (state && strcmp(state, "running") == 0 && silent_ms > bound_ms) {
        why = g_strdup_printf("no checkpoint for %" G_GINT64_FORMAT " ms (bound %"
                              G_GINT64_FORMAT " ms) while QEMU answers: COLO is stuck",
                              silent_ms, bound_ms);
    } else if (state || silent_ms <= bound_ms) {
        /* Paused by a user, or a slow checkpoint: look again in a while. */
        g->watchdog_quiet_until_us = g_get_monotonic_time() + WATCHDOG_SLACK_MS * 1000;
        return TRUE;
    }
    if (why) {
        drop_secondary(g, why);
        return FALSE;
    }
    pid = qmp_peer_pid(g->qmp);
    log_err(g->def->name, role_name(g), "no checkpoint for %" G_GINT64_FORMAT " ms (bound %"
            G_GINT64_FORMAT " ms) and QEMU does not answer (%s): killing it (pid %d) so that "
            "the secondary takes over", silent_ms, bound_ms, err->message, (int)pid);
    /* Once: its monitor closing is what reports it, as for any dead QEMU. */
    g->checkpoint_seen_us = 0;
    if (pid <= 0 || kill(pid, SIGKILL) != 0)
        log_err(g->def->name, role_name(g), "cannot kill QEMU (pid %d): %s", (int)pid,
                pid <= 0 ? "pid unknown" : g_strerror(errno));
    return FALSE;
}

/* The longest the peer waits before acting on this host's silence. */
static guint peer_window_ms(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);

    /* The secondary waits two windows (guest_check_peer()), the primary one. */
    return cfg->heartbeat_ms * cfg->miss_count * (g->role == FT_ROLE_PRIMARY ? 2 : 1);
}

typedef struct {
    Daemon *d;
    char *name;
    gint64 asked_us;
} RoleQuestion;

/*
 * The peer's answer after this daemon's stall.  A peer that is the primary
 * now, while this copy was the primary, took over: this copy is the stale
 * one and stops (the peer re-protects onto this host).  A primary that
 * dropped this secondary has done what a stand-down says.  Otherwise the
 * stall harmed nothing, and a COLO exit seen meanwhile is acted on now.
 */
static void on_peer_role(PeerConn *conn, JsonNode *result, const GError *error,
                         gpointer opaque)
{
    RoleQuestion *q = opaque;
    FtGuest *g = daemon_quitting(q->d) ? NULL : daemon_find_guest(q->d, q->name);
    JsonObject *o = result && JSON_NODE_HOLDS_OBJECT(result) ? json_node_get_object(result)
                                                             : NULL;
    const char *role = o ? json_object_get_string_member_with_default(o, "role", "") : "";
    const char *state = o ? json_object_get_string_member_with_default(o, "state", "") : "";
    g_autofree char *why = NULL;

    (void)conn;
    if (!g || g->confirm_since_us != q->asked_us || g->state != GUEST_PROTECTED)
        goto out;
    if (error) {
        /* guest_check_peer() lets failure detection decide once the wait is over. */
        log_warn(g->def->name, role_name(g), "%s did not answer whether it took over: %s",
                 peer_host(g)->name, error->message);
        goto out;
    }
    g->confirm_since_us = 0;
    log_info(g->def->name, role_name(g), "%s says it is %s, %s", peer_host(g)->name,
             role, state);
    if (g->role == FT_ROLE_PRIMARY && strcmp(role, "primary") == 0) {
        why = g_strdup_printf("%s took over while kvm-ftd here did not run: this copy is "
                              "the stale one and stops", peer_host(g)->name);
        guest_stop(g, why);
    } else if (g->role == FT_ROLE_SECONDARY && strcmp(role, "primary") == 0 &&
               strcmp(state, guest_state_name(GUEST_PROTECTED)) != 0) {
        why = g_strdup_printf("primary %s runs %s without this secondary", peer_host(g)->name,
                              state);
        guest_stop(g, why);
    } else if (g->role == FT_ROLE_PRIMARY && g_strcmp0(g->colo_mode, "none") == 0) {
        why = g_strdup_printf("QEMU left COLO (reason: %s) while kvm-ftd here did not run; "
                              "%s did not take over", g->exit_reason, peer_host(g)->name);
        drop_secondary(g, why);
    }
out:
    g_free(q->name);
    g_free(q);
}

void guest_stalled(FtGuest *g, gint64 stalled_ms)
{
    const char *paths[] = { peer_host(g)->link_address, peer_host(g)->lan_address };
    JsonObject *params;

    if (g->state != GUEST_PROTECTED || g->confirm_since_us || stalled_ms <= peer_window_ms(g))
        return;
    g->confirm_since_us = g_get_monotonic_time();
    log_warn(g->def->name, role_name(g), "kvm-ftd here did not run for %" G_GINT64_FORMAT
             " ms, longer than %s waits before acting on silence: no failover step until it "
             "says whether it took over", stalled_ms, peer_host(g)->name);
    params = json_object_new();
    json_object_set_string_member(params, "guest", g->def->name);
    /* On both paths: a cut link must not hide the answer; the first one counts. */
    for (guint i = 0; i < G_N_ELEMENTS(paths); i++) {
        RoleQuestion *q;

        if (!paths[i])
            continue;
        q = g_new0(RoleQuestion, 1);
        q->d = g->d;
        q->name = g_strdup(g->def->name);
        q->asked_us = g->confirm_since_us;
        daemon_peer_call(g->d, paths[i], "guest-role", params, STALL_CONFIRM_TIMEOUT_MS,
                         on_peer_role, q);
    }
    json_object_unref(params);
}

void guest_peer_event(FtGuest *g, const char *from, const char *name, JsonObject *data)
{
    const char *reason = json_object_get_string_member_with_default(data, "reason", "");
    g_autofree char *why = g_strdup_printf("%s: %s", from, reason);

    if (g_strcmp0(from, peer_host(g)->name) != 0) {
        log_warn(g->def->name, role_name(g), "ignored '%s' from %s, not this guest's "
                 "peer", name, from);
        return;
    }
    if (g->state != GUEST_PROTECTED && !(g->role == FT_ROLE_SECONDARY &&
                                         guest_is_busy(g) && strcmp(name, "stand-down") == 0)) {
        log_info(g->def->name, role_name(g), "'%s' from %s in state %s: nothing to do",
                 name, from, guest_state_name(g->state));
        return;
    }
    if (strcmp(name, "take-over") == 0 && g->role == FT_ROLE_SECONDARY)
        take_over(g, why);
    else if (strcmp(name, "secondary-lost") == 0 && g->role == FT_ROLE_PRIMARY)
        drop_secondary(g, why);
    else if (strcmp(name, "stand-down") == 0 && g->role == FT_ROLE_SECONDARY)
        guest_stop(g, why);
    else
        log_warn(g->def->name, role_name(g), "ignored '%s' from %s", name, from);
}

/* This copy's QEMU is gone: the secondary takes over from its last checkpoint. */
static void finish_hand_over(FtGuest *g)
{
    g_autofree char *why = g_strdup_printf("planned failover to %s", peer_host(g)->name);

    if (g->handover_timer) {
        g_source_remove(g->handover_timer);
        g->handover_timer = 0;
    }
    mark_closed_cleanly(g);
    detach(g);
    tell_peer(g, "take-over", why);
    transition(g, GUEST_STOPPED, "handed over; the new primary re-protects the guest "
               "onto this host");
}

static gboolean hand_over_timed_out(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;

    g->handover_timer = 0;
    log_warn(g->def->name, role_name(g), "QEMU did not quit within %d ms: libvirt "
             "destroys it", HANDOVER_QUIT_TIMEOUT_MS);
    detach(g);
    if (!virt_domain_destroy(daemon_virt(g->d), g->def->name, &err)) {
        fail(g, "cannot stop this copy for the planned failover: %s", err->message);
        return G_SOURCE_REMOVE;
    }
    finish_hand_over(g);
    return G_SOURCE_REMOVE;
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
    log_info(g->def->name, role_name(g), "the primary copies to this host's disks");
    return TRUE;
}

/*
 * What only the protected primary does (a planned failover, a verify): on
 * the secondary, the error names the host to run it on; else it says what
 * the guest is here and why that will not do (otherwise).
 */
static gboolean protected_primary_here(FtGuest *g, const char *what, const char *otherwise,
                                       GError **err)
{
    if (g->state == GUEST_PROTECTED && g->role == FT_ROLE_PRIMARY)
        return TRUE;
    if (g->state == GUEST_PROTECTED && g->role == FT_ROLE_SECONDARY)
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "'%s' runs on %s; this host is its "
                    "secondary: run the %s there", g->def->name, peer_host(g)->name, what);
    else
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "'%s' is %s here: %s", g->def->name,
                    guest_state_name(g->state), otherwise);
    return FALSE;
}

gboolean guest_hand_over(FtGuest *g, GError **err)
{
    const FtHost *peer = peer_host(g);
    EngineLink link = engine_link(g);
    g_autoptr(GError) e = NULL;
    g_autofree char *why = NULL;

    if (!protected_primary_here(g, "failover", "a planned failover needs the protected "
                                "primary", err))
        return FALSE;
    if (!peer_answers(g)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "kvm-ftd on %s does not answer: "
                    "no planned failover to it now", peer->name);
        return FALSE;
    }
    why = g_strdup_printf("planned failover to %s requested", peer->name);
    if (!transition(g, GUEST_HANDING_OVER, why))
        return FALSE;
    /*
     * This copy stops first, so the two never run at once; the secondary
     * hears of it only once its QEMU is gone.  QEMU quits cleanly: disk
     * writes under way complete on both copies (the secondary still serves
     * NBD), so this host's disks hold nothing the secondary lacks.  What it
     * sent since the last checkpoint is what the secondary replays, as in
     * any failover: nothing released to the outside is lost.  kvm-ftd does
     * not wait for it -- a daemon blocked here would fall silent, and its
     * peer would take that for a dead host.
     */
    if (!engine_quit(g->qmp, &link, &e) && qmp_is_open(g->qmp))
        log_warn(g->def->name, role_name(g), "QEMU did not take 'quit' (%s): libvirt "
                 "destroys it in %d ms", e->message, HANDOVER_QUIT_TIMEOUT_MS);
    g->handover_timer = g_timeout_add(HANDOVER_QUIT_TIMEOUT_MS, hand_over_timed_out, g);
    return TRUE;
}

gboolean guest_reattach(FtGuest *g, GError **err)
{
    g->qmp = qmp_connect(g->qmp_path, daemon_config(g->d)->qmp_timeout_ms, err);
    if (!g->qmp)
        return FALSE;
    qmp_set_handlers(g->qmp, on_qmp_event, on_qmp_closed, g);
    qmp_attach(g->qmp, NULL);
    refresh_colo_status(g);
    if (g_strcmp0(g->colo_mode, "primary") == 0 || g_strcmp0(g->colo_mode, "secondary") == 0) {
        g->role = strcmp(g->colo_mode, "primary") == 0 ? FT_ROLE_PRIMARY : FT_ROLE_SECONDARY;
        enter_protected(g, "kvm-ftd restarted; re-attached to the running QEMU in COLO",
                        FALSE);
    } else {
        /* Out of COLO but running: whatever it was, it is the only copy now. */
        g->role = FT_ROLE_PRIMARY;
        transition(g, GUEST_DEGRADED, "kvm-ftd restarted; re-attached to the running "
                   "QEMU, which is not in COLO: running alone, unprotected");
    }
    return TRUE;
}

void guest_stop(FtGuest *g, const char *reason)
{
    /* Said first: stopping QEMU can take libvirt seconds, and the reason must not wait. */
    if (g->qmp)
        log_info(g->def->name, role_name(g), "stopping this host's copy: %s", reason);
    answer_primary(g, reason);
    release(g);
    if (g->state != GUEST_STOPPED)
        transition(g, GUEST_STOPPED, reason);
}

const char *guest_domain_xml(FtGuest *g)
{
    return g->domain_xml;
}

char *guest_qmp_socket(const FtConfig *cfg, const char *name)
{
    g_autofree char *sock = g_strdup_printf("%s.qmp", name);

    return g_build_filename(cfg->run_dir, sock, NULL);
}

FtGuest *guest_new(Daemon *d, FtDef *def, const char *domain_xml, FtRole role)
{
    FtGuest *g = g_new0(FtGuest, 1);

    g->d = d;
    g->def = def;
    g->domain_xml = g_strdup(domain_xml);
    g->role = role;
    g->state = GUEST_STOPPED;
    g->qmp_path = guest_qmp_socket(daemon_config(d), def->name);
    g->forced_difference = g->forced_expired = -1;
    g->claim_ms = -1;
    return g;
}

void guest_free(FtGuest *g)
{
    if (!g)
        return;
    stop_polling(g);
    if (g->exit_idle_id)
        g_source_remove(g->exit_idle_id);
    if (g->status_idle_id)
        g_source_remove(g->status_idle_id);
    if (g->switchover_idle_id)
        g_source_remove(g->switchover_idle_id);
    if (g->handover_timer)
        g_source_remove(g->handover_timer);
    stop_output_auto(g);
    output_auto_clear(&g->output);
    g_free(g->exit_reason);
    g_free(g->shutdown_cause);
    g_free(g->status_reason);
    g_free(g->failover_reason);
    g_free(g->failover_cause);
    end_claim(g);
    g_clear_pointer(&g->reply_conn, peer_conn_unref);
    g_clear_pointer(&g->qmp, qmp_free);
    g_clear_pointer(&g->last_resync, json_node_unref);
    g_clear_pointer(&g->last_verify, json_node_unref);
    g_free(g->found_generation);
    g_free(g->generation);
    ftdef_free(g->def);
    g_free(g->domain_xml);
    g_free(g->error);
    g_free(g->qmp_path);
    g_free(g->tls_dir);
    g_free(g->colo_mode);
    g_free(g->colo_reason);
    g_free(g);
}

const char *guest_name(FtGuest *g)
{
    return g->def->name;
}

const FtDef *guest_def(FtGuest *g)
{
    return g->def;
}

GuestState guest_state(FtGuest *g)
{
    return g->state;
}

const char *guest_generation(FtGuest *g)
{
    return g->generation;
}

FtRole guest_role(FtGuest *g)
{
    return g->role;
}

gboolean guest_is_busy(FtGuest *g)
{
    return g->state != GUEST_STOPPED && g->state != GUEST_FAILED;
}

static guint history_len(FtGuest *g)
{
    return (guint)MIN(g->checkpoints, (guint64)CHECKPOINT_HISTORY);
}

static double pause_p50(FtGuest *g)
{
    return summary_p50(g->history_pause_ms, history_len(g));
}

JsonNode *guest_checkpoints(FtGuest *g, gint64 since_us)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    guint n = history_len(g);

    json_builder_begin_array(b);
    for (guint i = 0; i < n; i++) {
        guint k = (guint)((g->checkpoints - n + i) % CHECKPOINT_HISTORY);

        if (g->history_us[k] < since_us)
            continue;
        json_builder_begin_array(b);
        json_builder_add_int_value(b, g->history_us[k] / 1000);
        json_builder_add_double_value(b, g->history_pause_ms[k]);
        json_builder_end_array(b);
    }
    json_builder_end_array(b);
    return json_builder_get_root(b);
}

/*
 * colo-compare's own count of why it forced checkpoints.  Read when asked
 * (the status call's short deadline), not per checkpoint; the last figures
 * stay when QEMU is busy.
 */
static void add_forced_causes(JsonBuilder *b, FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link;

    if (g->role == FT_ROLE_PRIMARY && g->state == GUEST_PROTECTED && g->qmp &&
        !g->qmp_stalled) {
        link = quick_link(g);
        if (!engine_primary_forced(g->qmp, &link, &g->forced_difference, &g->forced_expired,
                                   &err)) {
            log_debug(g->def->name, role_name(g), "forced checkpoints by cause: %s",
                      err->message);
            g->forced_difference = g->forced_expired = -1;
        }
    }
    json_builder_set_member_name(b, "difference");
    if (g->forced_difference >= 0)
        json_builder_add_int_value(b, g->forced_difference);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "missing_counterpart");
    if (g->forced_expired >= 0)
        json_builder_add_int_value(b, g->forced_expired);
    else
        json_builder_add_null_value(b);
}

JsonNode *guest_status(FtGuest *g)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    const FtHost *peer = peer_host(g);

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "name");
    json_builder_add_string_value(b, g->def->name);
    json_builder_set_member_name(b, "role");
    json_builder_add_string_value(b, guest_is_busy(g) ? role_name(g) : "none");
    json_builder_set_member_name(b, "state");
    json_builder_add_string_value(b, guest_state_name(g->state));

    json_builder_set_member_name(b, "peer");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "host");
    json_builder_add_string_value(b, peer->name);
    /* A session to a powered-off host looks open until TCP gives up. */
    json_builder_set_member_name(b, "connected");
    json_builder_add_boolean_value(b, daemon_peer_connected(g->d, peer->name) &&
                                      daemon_peer_path(g->d, peer->link_address, 1) !=
                                          PEER_PATH_SILENT);
    json_builder_set_member_name(b, "link");
    json_builder_add_string_value(b, peer_path_name(daemon_peer_path(g->d, peer->link_address, 1)));
    json_builder_set_member_name(b, "lan");
    json_builder_add_string_value(b, peer_path_name(daemon_peer_path(g->d, peer->lan_address, 1)));
    json_builder_end_object(b);

    json_builder_set_member_name(b, "last_failover");
    if (g->failover_reason) {
        g_autoptr(GDateTime) at = g_date_time_new_from_unix_local(g->failover_at_us / G_USEC_PER_SEC);
        g_autofree char *at_s = g_date_time_format_iso8601(at);

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "at");
        json_builder_add_string_value(b, at_s);
        json_builder_set_member_name(b, "reason");
        json_builder_add_string_value(b, g->failover_reason);
        json_builder_set_member_name(b, "took_ms");
        json_builder_add_double_value(b, g->failover_ms);
        /* How long of it the witness took to decide; null: not asked. */
        json_builder_set_member_name(b, "claim_ms");
        if (g->claim_ms >= 0)
            json_builder_add_double_value(b, g->claim_ms);
        else
            json_builder_add_null_value(b);
        json_builder_end_object(b);
    } else {
        json_builder_add_null_value(b);
    }
    /* A failover held because the witness did not decide. */
    json_builder_set_member_name(b, "held");
    if (g->claim_trouble) {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "since_ms");
        json_builder_add_int_value(b, (g_get_monotonic_time() - g->failover_started_us) / 1000);
        json_builder_set_member_name(b, "why");
        json_builder_add_string_value(b, g->claim_trouble);
        json_builder_end_object(b);
    } else {
        json_builder_add_null_value(b);
    }

    json_builder_set_member_name(b, "colo");
    if (g->colo_mode) {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "mode");
        json_builder_add_string_value(b, g->colo_mode);
        json_builder_set_member_name(b, "reason");
        json_builder_add_string_value(b, g->colo_reason);
        json_builder_end_object(b);
    } else {
        json_builder_add_null_value(b);
    }

    json_builder_set_member_name(b, "qmp");
    json_builder_add_string_value(b, !g->qmp ? "closed"
                                     : g->qmp_stalled ? "not answering" : "ok");
    json_builder_set_member_name(b, "replication_tls");
    json_builder_add_boolean_value(b, g->tls_dir != NULL);
    json_builder_set_member_name(b, "checkpoint_interval_ms");
    json_builder_add_int_value(b, g->def->checkpoint_interval_ms);
    json_builder_set_member_name(b, "output_mode");
    json_builder_add_string_value(b, ftdef_output_mode_name(g->def->output_mode));
    if (g->def->output_mode == FTDEF_OUTPUT_AUTO && g->role == FT_ROLE_PRIMARY) {
        json_builder_set_member_name(b, "output_auto");
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "now");
        json_builder_add_string_value(b, ftdef_output_mode_name(g->output.mode));
        json_builder_set_member_name(b, "switches");
        json_builder_add_int_value(b, g->output.switches);
        json_builder_set_member_name(b, "reason");
        if (g->output.last_reason)
            json_builder_add_string_value(b, g->output.last_reason);
        else
            json_builder_add_null_value(b);
        json_builder_end_object(b);
    }
    json_builder_set_member_name(b, "checkpoints");
    json_builder_add_int_value(b, (gint64)g->checkpoints);
    json_builder_set_member_name(b, "checkpoints_by_cause");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "periodic");
    json_builder_add_int_value(b, (gint64)(g->checkpoints - g->checkpoints_forced));
    json_builder_set_member_name(b, "forced");
    json_builder_add_int_value(b, (gint64)g->checkpoints_forced);
    add_forced_causes(b, g);
    json_builder_end_object(b);
    json_builder_set_member_name(b, "compare_timeout_ms");
    json_builder_add_int_value(b, g->def->compare_timeout_ms);
    json_builder_set_member_name(b, "last_pause_ms");
    if (g->checkpoints)
        json_builder_add_double_value(b, g->last_pause_ms);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "pause_ms");
    summary_add(b, g->history_pause_ms, history_len(g));
    json_builder_set_member_name(b, "since_last_checkpoint_ms");
    if (g->last_checkpoint_us)
        json_builder_add_int_value(b, (g_get_real_time() - g->last_checkpoint_us) / 1000);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "resync");
    if (g->state == GUEST_RESYNCING)
        add_progress(g, b);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "last_resync");
    if (g->last_resync) {
        JsonNode *last = json_node_copy(g->last_resync);

        /* Known once COLO has started, after the copy. */
        if (g->entry_pause_ms > 0)
            json_object_set_double_member(json_node_get_object(last), "entry_pause_ms",
                                          g->entry_pause_ms);
        else
            json_object_set_null_member(json_node_get_object(last), "entry_pause_ms");
        json_builder_add_value(b, last);
    } else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "last_verify");
    if (g->last_verify)
        json_builder_add_value(b, json_node_copy(g->last_verify));
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "error");
    if (g->error)
        json_builder_add_string_value(b, g->error);
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

static gboolean verify_allowed(FtGuest *g, GError **err)
{
    return protected_primary_here(g, "verify", "there are two copies to compare only while "
                                  "it is protected, on its primary", err);
}

JsonNode *guest_verify_begin(FtGuest *g, GError **err)
{
    EngineLink link = engine_link(g);
    g_autofree char *sock = verify_socket(g);
    JsonNode *disks;

    if (!verify_allowed(g, err))
        return NULL;
    disks = verify_export(g->qmp, &link, sock, err);
    if (disks)
        log_info(g->def->name, role_name(g), "verify: comparing the two copies of the "
                 "guest's disks (ftctl verify)");
    return disks;
}

gboolean guest_verify_end(FtGuest *g, JsonNode *result, const char *abandoned, GError **err)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(GDateTime) now = g_date_time_new_now_utc();
    g_autofree char *at = g_date_time_format_iso8601(now);
    EngineLink link = engine_link(g);
    guint64 differing = 0;
    JsonNode *found;

    /* The exports go whatever ftctl found: a stray NBD server must not stay. */
    if (g->qmp && qmp_is_open(g->qmp))
        verify_unexport(g->qmp, &link);
    if (abandoned) {
        log_warn(g->def->name, role_name(g), "verify: given up, nothing compared: %s",
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
        log_warn(g->def->name, role_name(g), "verify: the two copies of the guest's disks "
                 "differ in %" G_GUINT64_FORMAT " bytes (ftctl status shows where): a failover "
                 "would hand the guest other data there", differing);
    else
        log_info(g->def->name, role_name(g), "verify: the two copies of the guest's disks "
                 "are identical");
    begin_event(g, b);
    json_builder_set_member_name(b, "verify");
    json_builder_add_value(b, json_node_copy(found));
    broadcast_event(g, b);
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
    drop_secondary(g, why);
    return TRUE;
}
