/* guest.c - one protected guest on this host: the life cycle of its copy here */
#include "guest-internal.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>

#include "decision.h"
#include "journal.h"
#include "definitions.h"
#include "log.h"
#include "qmp.h"
#include "timeouts.h"
#include "tlspsk.h"

const char *guest_role_name(FtGuest *g)
{
    return ft_role_name(g->role);
}

/* An event for ftctl: about this guest, in this role. */
void guest_begin_event(FtGuest *g, JsonBuilder *b)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "guest");
    json_builder_add_string_value(b, g->def->name);
    json_builder_set_member_name(b, "role");
    json_builder_add_string_value(b, guest_role_name(g));
}

void guest_broadcast_event(FtGuest *g, JsonBuilder *b)
{
    g_autoptr(JsonNode) event = NULL;

    json_builder_end_object(b);
    event = json_builder_get_root(b);
    daemon_broadcast(g->d, event);
}

typedef struct {
    GSourceFunc fn;
    gpointer data;
    GDestroyNotify free_data;
} StopWaiter;

void guest_when_stopped(FtGuest *g, GSourceFunc fn, gpointer data, GDestroyNotify free_data)
{
    StopWaiter *w = g_new(StopWaiter, 1);

    *w = (StopWaiter){ fn, data, free_data };
    g->stop_waiters = g_slist_append(g->stop_waiters, w);
}

/* From an idle callback: what each waiter does may replace the guest. */
void guest_wake_stop_waiters(FtGuest *g, gboolean run)
{
    GSList *waiters = g_steal_pointer(&g->stop_waiters);

    for (GSList *l = waiters; l; l = l->next) {
        StopWaiter *w = l->data;

        if (run)
            g_idle_add_full(G_PRIORITY_DEFAULT, w->fn, w->data, w->free_data);
        else
            w->free_data(w->data);
    }
    g_slist_free_full(waiters, g_free);
}

const FtHost *guest_self_host(FtGuest *g)
{
    return ftdef_self(g->def, daemon_config(g->d)->host_name);
}

const FtHost *guest_peer_host(FtGuest *g)
{
    return ftdef_peer(g->def, daemon_config(g->d)->host_name);
}

void guest_stop_polling(FtGuest *g)
{
    if (g->poll_id) {
        g_source_remove(g->poll_id);
        g->poll_id = 0;
    }
    /* An abort's poll is its last step: stopped, the abort is over. */
    g_clear_pointer(&g->abort_reason, g_free);
}

/* Lets go of this host's QEMU without touching it. */
static void detach(FtGuest *g)
{
    guest_stop_polling(g);
    g_clear_pointer(&g->qmp, qmp_free);
    g_clear_pointer(&g->colo_mode, g_free);
    g_clear_pointer(&g->colo_reason, g_free);
}

/* This host's copy of the guest and, for a secondary, its overlays go; the definition stays. */
static gboolean destroy_copy(Virt *v, const FtConfig *cfg, const char *name, gboolean overlays,
                             GError **err)
{
    g_autoptr(GError) e = NULL;
    gboolean active = FALSE;
    gboolean ok = TRUE;

    if (!virt_domain_is_active(v, name, &active, &e)) {
        /* A copy never defined here (its start failed first), or undefined since, is gone. */
        ok = g_error_matches(e, VIRT_ERROR, VIRT_ERROR_NO_DOMAIN);
        if (!ok)
            g_propagate_error(err, g_steal_pointer(&e));
    } else if (active) {
        ok = virt_domain_destroy(v, name, err);
    }
    if (overlays)
        guest_remove_overlays(cfg, name);
    return ok;
}

/* What follows a copy's destroy in the libvirt thread. */
typedef enum {
    STOP_THEN_STOPPED,
    STOP_THEN_FAILED,    /* protection failed (guest_fail()): g->error says why */
    STOP_THEN_HAND_OVER, /* a planned failover whose QEMU did not quit */
} StopThen;

typedef struct {
    GuestRef ref;            /* seq: the guest's transitions when it began */
    const FtConfig *cfg;
    gboolean overlays;       /* a secondary's: they go with its QEMU */
    GuestState during;       /* the guest's state while it waits */
    StopThen then;
    char *reason;
    char *role;              /* guest_discard_started(): the role it was started in */
} StopJob;

static void stop_job_free(gpointer data)
{
    StopJob *j = data;

    guest_ref_clear(&j->ref);
    g_free(j->reason);
    g_free(j->role);
    g_free(j);
}

/* In the libvirt thread: the queue keeps any later start of the guest behind it. */
static gboolean stop_here(Virt *v, gpointer data, GError **err)
{
    StopJob *j = data;

    return destroy_copy(v, j->cfg, j->ref.name, j->overlays, err);
}

static void on_discarded(gpointer data, const GError *error)
{
    StopJob *j = data;

    if (error)
        log_warn(j->ref.name, j->role, "cannot stop a QEMU started for a step that was "
                 "given up: %s", error->message);
}

void guest_discard_started(Daemon *d, const char *name, const char *role)
{
    StopJob *j = g_new0(StopJob, 1);

    j->ref.d = d;
    j->ref.name = g_strdup(name);
    j->cfg = daemon_config(d);
    j->role = g_strdup(role);
    virt_run(daemon_virt(d), stop_here, on_discarded, j, stop_job_free);
}

static void on_stopped_here(gpointer data, const GError *error)
{
    StopJob *j = data;
    FtGuest *g = guest_ref_find(&j->ref);

    if (!g || g->state != j->during || g->transitions != j->ref.seq)
        return;
    if (j->then == STOP_THEN_HAND_OVER) {
        if (error)
            guest_fail(g, "cannot stop this copy for the planned failover: %s", error->message);
        else
            guest_finish_hand_over(g, j->reason);
        return;
    }
    if (j->then == STOP_THEN_FAILED) {
        /* The failure's own reason is what an operator needs; the destroy's is said. */
        if (error)
            log_warn(g->def->name, guest_role_name(g), "cannot stop this host's copy: %s",
                     error->message);
        guest_transition(g, GUEST_FAILED, g->error);
        return;
    }
    if (error) {
        /* Failed, not stopped: whatever libvirt left running is for an operator to see. */
        g_free(g->error);
        g->error = g_strdup_printf("cannot stop this host's copy (%s): %s", j->reason,
                                   error->message);
        guest_transition(g, GUEST_FAILED, g->error);
        return;
    }
    guest_transition(g, GUEST_STOPPED, j->reason);
}

/* From state during, which the guest keeps meanwhile; then as then says. */
static void destroy_in_thread(FtGuest *g, GuestState during, StopThen then, const char *reason)
{
    StopJob *j = g_new0(StopJob, 1);

    guest_ref_init(&j->ref, g, g->transitions);
    j->cfg = daemon_config(g->d);
    j->overlays = g->role == FT_ROLE_SECONDARY;
    j->during = during;
    j->then = then;
    j->reason = g_strdup(reason);
    virt_run(daemon_virt(g->d), stop_here, on_stopped_here, j, stop_job_free);
}

/*
 * libvirt can take seconds to destroy a QEMU (it waits for SIGTERM first):
 * that waits in the libvirt thread, not on the loop that judges the peers
 * of every guest.  Meanwhile the guest is "stopping", busy to any request;
 * then stopped, or failed for a protection that failed (g->error says why).
 */
static void stop_copy(FtGuest *g, const char *reason, gboolean failed)
{
    gboolean attached = g->qmp != NULL;

    guest_answer_primary(g, reason);
    detach(g);
    /* A stopped guest runs no QEMU of kvm-ftd's unless one was attached to it. */
    if ((g->state == GUEST_STOPPED && !attached) || g->state == GUEST_STOPPING) {
        if (failed)
            guest_transition(g, GUEST_FAILED, g->error);
        return;
    }
    if (guest_transition(g, GUEST_STOPPING, reason))
        destroy_in_thread(g, GUEST_STOPPING, failed ? STOP_THEN_FAILED : STOP_THEN_STOPPED,
                          reason);
}

void guest_stop(FtGuest *g, const char *reason)
{
    stop_copy(g, reason, FALSE);
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

void guest_tell_peer_to_stop(FtGuest *g, const char *reason)
{
    JsonObject *params = json_object_new();

    json_object_set_string_member(params, "guest", g->def->name);
    json_object_set_string_member(params, "reason", reason);
    daemon_peer_call(g->d, guest_peer_host(g)->link_address, "stop-secondary", params,
                     daemon_config(g->d)->peer_timeout_ms, on_peer_stopped,
                     g_strdup(g->def->name));
    json_object_unref(params);
}

/* This copy ran on without its peer: the peer's disks lack its writes. */
void guest_mark_diverged(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);
    g_autoptr(GError) err = NULL;
    GenerationMark mark;
    g_autofree char *gen = resync_generation_read(cfg, g->def->name, &mark);

    if (gen && (mark == GENERATION_IN_SYNC || mark == GENERATION_PRIMARY) &&
        !resync_generation_write(cfg, g->def->name, gen, GENERATION_DIVERGED, &err))
        log_warn(g->def->name, guest_role_name(g), "cannot record that the copies diverged "
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
        log_warn(g->def->name, guest_role_name(g), "cannot record that the disks were closed "
                 "cleanly (the next protection copies the whole disk): %s", err->message);
}

/*
 * A re-protection that did not work out: everything it added to the
 * running guest goes, the secondary too, and the guest runs on alone as
 * before.  The next attempt comes by itself.
 */
/* The rest of a failed re-protection, once the copy's jobs have ended (or will not). */
static void end_rejoin(FtGuest *g, const char *reason)
{
    EngineLink link = guest_engine_link(g);
    g_autoptr(GError) err = NULL;
    g_autofree char *why = g_strdup_printf("re-protection failed: %s; the guest runs "
                                           "on alone, next attempt in %d s", reason,
                                           REJOIN_BACKOFF_S);

    g->resync_running = FALSE;
    if (!engine_primary_drop_secondary(g->qmp, &link, &err))
        log_warn(g->def->name, guest_role_name(g), "removing the replication: %s", err->message);
    resync_release_targets(g->qmp, &link);
    guest_tell_peer_to_stop(g, reason);
    g_free(g->error);
    g->error = g_strdup(why);
    g->rejoin = FALSE;
    g->rejoin_after_us = g_get_monotonic_time() + REJOIN_BACKOFF_S * G_USEC_PER_SEC;
    guest_transition(g, GUEST_DEGRADED, why);
}

static gboolean poll_abort_end(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    EngineLink link = guest_quick_link(g);
    gboolean ended = FALSE;
    g_autofree char *reason = NULL;

    resync_cancel_poll(g->qmp, &link, &ended, &err);
    if (!ended && g_get_monotonic_time() < g->deadline_us)
        return G_SOURCE_CONTINUE;
    g->poll_id = 0;
    if (!ended)
        log_warn(g->def->name, guest_role_name(g), "the given-up disk copy's jobs did not end "
                 "within %d ms (%s): the next attempt removes them", JOB_END_TIMEOUT_MS,
                 err ? err->message : "still running");
    reason = g_steal_pointer(&g->abort_reason);
    end_rejoin(g, reason);
    return G_SOURCE_REMOVE;
}

void guest_abort_rejoin(FtGuest *g, const char *reason)
{
    EngineLink link = guest_engine_link(g);
    g_autoptr(GError) err = NULL;

    /* Under way already: failure detection says it again every round. */
    if (g->abort_reason)
        return;
    guest_stop_polling(g);
    /*
     * Every connection to the peer first, out of band, the disk copy's
     * too: a guest write in flight to a secondary that lost power holds
     * every drain of the block layer, and with it QEMU's main loop, so each
     * in-band command below would wait for its deadline (35 s of a frozen
     * guest when the secondary died entering COLO: test_reprotect
     * secondary-dies-entering-colo; 5.8 s, migrate_cancel waiting behind
     * the copy's mirror, in secondary-dies-after-switch-over).
     */
    engine_primary_cut(g->qmp, &link);
    resync_cut_targets(g->qmp, &link);
    /* A first sync still running would otherwise enter COLO after all. */
    if (!engine_cancel_first_sync(g->qmp, &link, &err))
        g_clear_error(&err);
    if (!g->resync_running) {
        end_rejoin(g, reason);
        return;
    }
    /* The copy's jobs end by themselves once cancelled: looked at, not waited for. */
    log_warn(g->def->name, guest_role_name(g), "giving the re-protection up (%s): the disk "
             "copy is cancelled; its jobs end, then the guest runs on alone", reason);
    resync_cancel(g->qmp, &link);
    g->abort_reason = g_strdup(reason);
    g->deadline_us = g_get_monotonic_time() + JOB_END_TIMEOUT_MS * 1000;
    g->poll_id = g_timeout_add(JOB_END_POLL_MS, poll_abort_end, g);
}

void guest_fail(FtGuest *g, const char *fmt, ...)
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

        guest_abort_rejoin(g, reason);
        return;
    }
    g->rejoin = FALSE;
    guest_answer_primary(g, g->error);
    if (!live) {
        /* Nothing ran yet: undo the setup on both hosts. */
        if (g->role == FT_ROLE_PRIMARY && g->state != GUEST_PREPARING_PEER)
            guest_tell_peer_to_stop(g, g->error);
        /* libvirt stops what it started once its hook reports the failure. */
        if (g->started_by_libvirt) {
            detach(g);
        } else {
            stop_copy(g, g->error, TRUE);
            return;
        }
    } else {
        /*
         * A copy that was in COLO may be the only one left: it is never
         * destroyed on a failure.  A primary whose QEMU still runs carries
         * on alone, so its useless secondary goes.
         */
        guest_stop_polling(g);
        if (g->role == FT_ROLE_PRIMARY && qemu_up) {
            guest_mark_diverged(g);
            guest_tell_peer_to_stop(g, g->error);
            log_warn(g->def->name, guest_role_name(g),
                     "the guest keeps running on this host, unprotected");
        }
    }
    guest_transition(g, GUEST_FAILED, g->error);
}

static gboolean after_colo_exit(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autofree char *why = g_strdup_printf("QEMU left COLO (reason: %s)", g->exit_reason);

    g->exit_idle_id = 0;
    g_free(g->colo_mode);
    g->colo_mode = g_strdup("none");
    guest_handle(g, GUEST_EV_COLO_EXIT, why);
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
    log_info(g->def->name, guest_role_name(g), "QEMU shuts down (%s): a planned stop, "
             "no failover when it exits", cause);
}

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
            log_info(g->def->name, guest_role_name(g), "entering COLO paused the guest for "
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
            log_debug(g->def->name, guest_role_name(g), "checkpoint %" G_GUINT64_FORMAT
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
            g->switchover_idle_id = g_idle_add(guest_on_pre_switchover, g);
    } else if (strcmp(event, "QUORUM_REPORT_BAD") == 0) {
        /* Only the secondary's copy can fail a write: the local one would fail the guest's. */
        if (g->role == FT_ROLE_PRIMARY && data && !g->replica_write_failed &&
            g_strcmp0(json_object_get_string_member_with_default(data, "type", ""),
                      "write") == 0) {
            g->replica_write_failed = TRUE;
            log_warn(g->def->name, guest_role_name(g), "a guest write did not reach %s's copy "
                     "(%s): the next copy to it moves everything written since the pair "
                     "was in sync", guest_peer_host(g)->name,
                     json_object_get_string_member_with_default(data, "error", "no reason"));
        }
    } else if (strcmp(event, "SHUTDOWN") == 0) {
        note_shutdown(g, data);
    } else if (strcmp(event, "RESET") == 0 && g->shutdown_cause) {
        log_info(g->def->name, guest_role_name(g), "guest reset after the shutdown (%s): "
                 "it runs on", g->shutdown_cause);
        g_clear_pointer(&g->shutdown_cause, g_free);
    }
}

/*
 * The primary's QEMU, which was running, stops on purpose (how says why):
 * its secondary goes too, nothing fails over.  (A setup that fails undoes
 * both hosts already.)
 */
void guest_stop_planned(FtGuest *g, const char *how)
{
    if (g->state == GUEST_PROTECTED) {
        mark_closed_cleanly(g);
        guest_tell_peer_to_stop(g, how);
    }
    /* QEMU is gone or on its way out: nothing left to destroy. */
    detach(g);
    guest_transition(g, GUEST_STOPPED, how);
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
    guest_handle(g, GUEST_EV_DOMAIN_STOPPED, why);
}

void guest_tell_peer(FtGuest *g, const char *decision, const char *reason)
{
    decision_send(g->d, guest_peer_host(g), g->def->name, g->generation, decision, reason);
}

static void on_qmp_closed(Qmp *q, const GError *reason, gpointer opaque)
{
    FtGuest *g = opaque;
    g_autofree char *how = g->shutdown_cause ? planned_stop_reason(g->shutdown_cause) : NULL;
    g_autofree char *why = how ? g_strdup_printf("QEMU on %s exited: %s",
                                                 daemon_config(g->d)->host_name, how)
                               : g_strdup_printf("QEMU on %s exited (%s)",
                                                 daemon_config(g->d)->host_name,
                                                 reason ? reason->message : "closed");

    (void)q;
    guest_handle(g, how ? GUEST_EV_QEMU_SHUT_DOWN : GUEST_EV_QEMU_EXITED, why);
}

/* A secondary that has not entered COLO yet ignores what it is told. */
void guest_fail_and_tell_peer(FtGuest *g, const char *reason)
{
    guest_tell_peer(g, g->role == FT_ROLE_PRIMARY ? "take-over" : "secondary-lost", reason);
    guest_fail(g, "%s", reason);
}

void guest_fail_because(FtGuest *g, const char *reason)
{
    guest_fail(g, "%s", reason);
}

gboolean guest_attach_qemu(FtGuest *g, GError **err)
{
    g->qmp = qmp_connect(g->qmp_path, daemon_config(g->d)->qmp_timeout_ms, err);
    if (!g->qmp)
        return FALSE;
    qmp_set_handlers(g->qmp, on_qmp_event, on_qmp_closed, g);
    qmp_attach(g->qmp, NULL);
    return TRUE;
}

char *guest_runtime_xml(FtGuest *g, const DomxmlPlumbing *plumbing, GError **err)
{
    const FtConfig *cfg = daemon_config(g->d);
    DomxmlPlumbing own = *plumbing;

    if (g_mkdir_with_parents(cfg->run_dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s: %s", cfg->run_dir, g_strerror(errno));
        return NULL;
    }
    /* A socket left by an earlier QEMU must not be taken for the new one's. */
    g_unlink(g->qmp_path);
    own.own_start = TRUE;
    return domxml_for_role(g->domain_xml, g->def, g->role, &own, err);
}

static guint status_timeout(FtGuest *g)
{
    return MIN(daemon_config(g->d)->qmp_timeout_ms, STATUS_QMP_TIMEOUT_MS);
}

static void take_colo_status(FtGuest *g, char *mode, char *reason, const GError *err)
{
    if (err) {
        if (!g->qmp_stalled)
            log_warn(g->def->name, guest_role_name(g), "QEMU does not answer QMP: %s",
                     err->message);
        g->qmp_stalled = g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
        return;
    }
    if (g->qmp_stalled)
        log_info(g->def->name, guest_role_name(g), "QEMU answers QMP again");
    g->qmp_stalled = FALSE;
    g_free(g->colo_mode);
    g_free(g->colo_reason);
    g->colo_mode = mode;
    g->colo_reason = reason;
}

void guest_refresh_colo_status(FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    char *mode = NULL;
    char *reason = NULL;

    if (g->qmp_stalled && ++g->polls_skipped < STALLED_POLL_EVERY)
        return;
    g->polls_skipped = 0;
    engine_colo_status(g->qmp, status_timeout(g), &mode, &reason, &err);
    take_colo_status(g, mode, reason, err);
}

void guest_take_colo_status(FtGuest *g, JsonNode *answer, const GError *error)
{
    g_autoptr(GError) err = NULL;
    char *mode = NULL;
    char *reason = NULL;

    if (answer)
        engine_colo_status_parse(answer, &mode, &reason, &err);
    take_colo_status(g, mode, reason, error ? error : err);
}

typedef struct {
    GuestRef ref;   /* seq: query_seq */
    guint64 transitions;
    GuestAnswerFunc then;
} GuestQuery;

static void guest_query_free(GuestQuery *query)
{
    FtGuest *g = guest_ref_find(&query->ref);

    /* Its QEMU connection went (detach()): the next poll asks anew. */
    if (g && g->query_seq == query->ref.seq)
        g->query_pending = FALSE;
    guest_ref_clear(&query->ref);
    g_free(query);
}

static void on_query_answer(Qmp *q, JsonNode *answer, const GError *error, gpointer opaque)
{
    GuestQuery *query = opaque;
    FtGuest *g = guest_ref_find(&query->ref);

    (void)q;
    if (g && g->query_seq == query->ref.seq) {
        g->query_pending = FALSE;
        if (g->transitions == query->transitions)
            query->then(g, answer, error);
    }
    guest_ref_clear(&query->ref);
    g_free(query);
}

void guest_query(FtGuest *g, const char *command, guint timeout_ms, GuestAnswerFunc then)
{
    g_autoptr(GError) err = NULL;
    GuestQuery *query;

    if (g->query_pending || !g->qmp)
        return;
    query = g_new0(GuestQuery, 1);
    guest_ref_init(&query->ref, g, ++g->query_seq);
    query->transitions = g->transitions;
    query->then = then;
    /*
     * Not sent (QEMU has left too many calls unanswered, or the connection
     * is lost): that is the answer, at once.  (A lost connection is also
     * reported by on_qmp_closed().)
     */
    if (!qmp_call_async(g->qmp, command, NULL, timeout_ms, on_query_answer, query,
                        (GDestroyNotify)guest_query_free, &err)) {
        guest_ref_clear(&query->ref);
        g_free(query);
        then(g, NULL, err);
        return;
    }
    g->query_pending = TRUE;
}

/*
 * Its QMP calls run on the main loop while the guest is protected, so they
 * get the short deadline of a status call: QEMU answers between
 * checkpoints within milliseconds, and a switch may wait for the next window.
 */
EngineLink guest_quick_link(FtGuest *g)
{
    EngineLink link = guest_engine_link(g);

    link.timeout_ms = MIN(link.timeout_ms, STATUS_QMP_TIMEOUT_MS);
    return link;
}

/*
 * new_epoch: the two copies are the same from here on -- write tracking
 * starts afresh and both hosts record the pair's new generation.
 */
void guest_enter_protected(FtGuest *g, const char *reason, gboolean new_epoch)
{
    const FtConfig *cfg = daemon_config(g->d);
    EngineLink link = guest_engine_link(g);
    g_autoptr(GError) err = NULL;

    guest_stop_polling(g);
    g_assert(!g->resync_running);
    /* Without tracking, the next re-protection copies the whole disk: safe, slow. */
    if (!resync_track_writes(g->qmp, &link, new_epoch, cfg->resync_granularity_bytes, &err)) {
        log_warn(g->def->name, guest_role_name(g), "%s", err->message);
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
        log_warn(g->def->name, guest_role_name(g), "cannot record the pair's generation: %s",
                 err->message);
    g->rejoin = FALSE;
    g_clear_pointer(&g->error, g_free);
    if (!guest_transition(g, GUEST_PROTECTED, reason))
        return;
    g->checkpoint_seen_us = g_get_monotonic_time();
    /*
     * No periodic QMP from here on: a QMP call waits while QEMU holds its
     * lock for a checkpoint, and the heartbeats this daemon owes its peer
     * must never wait behind one.  COLO_EXIT reports a change.
     */
    g->peer_daemon_down_logged = FALSE;
    daemon_watch_peer(g->d, guest_peer_host(g)->link_address);
    daemon_watch_peer(g->d, guest_peer_host(g)->lan_address);
    if (g->role == FT_ROLE_PRIMARY && g->def->output_mode == FTDEF_OUTPUT_AUTO)
        guest_start_output_auto(g);
}

gboolean guest_past_deadline(FtGuest *g)
{
    return g_get_monotonic_time() > g->deadline_us;
}

void guest_arm_deadline(FtGuest *g)
{
    g->deadline_us = g_get_monotonic_time() +
                     (gint64)daemon_config(g->d)->start_timeout_ms * 1000;
}

EngineLink guest_engine_link(FtGuest *g)
{
    gboolean primary = g->role == FT_ROLE_PRIMARY;
    EngineLink link = {
        .def = g->def,
        .primary_addr = (primary ? guest_self_host(g) : guest_peer_host(g))->link_address,
        .secondary_addr = (primary ? guest_peer_host(g) : guest_self_host(g))->link_address,
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
    EngineLink link = guest_engine_link(g);
    const gboolean rest_same = same_pair_and_storage(g->def, def);

    if (def->checkpoint_interval_ms != g->def->checkpoint_interval_ms) {
        if (g->role != FT_ROLE_PRIMARY || g->state != GUEST_PROTECTED || !g->qmp)
            return g_strdup("the new checkpoint interval applies at the next start");
        if (!engine_set_checkpoint_interval(g->qmp, &link, def->checkpoint_interval_ms, &err))
            return g_strdup_printf("the new checkpoint interval could not be applied (%s); "
                                   "it applies at the next start", err->message);
        log_info(g->def->name, guest_role_name(g), "checkpoint interval %u -> %u ms, applied to "
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

/*
 * The replication channels' key (tlspsk.h), written before either side's
 * QEMU is told about it; its directory goes into every EngineLink.
 */
gboolean guest_write_tls_key(FtGuest *g, GError **err)
{
    const FtConfig *cfg = daemon_config(g->d);

    g_clear_pointer(&g->tls_dir, g_free);
    if (!cfg->replication_tls)
        return TRUE;
    g->tls_dir = tlspsk_write(cfg, g->def->name, err);
    return g->tls_dir != NULL;
}

/* A new protection counts its own checkpoints. */
void guest_forget_checkpoints(FtGuest *g)
{
    g->checkpoints = 0;
    g->checkpoints_forced = 0;
    g->forced_difference = g->forced_expired = -1;
    g->last_checkpoint_us = 0;
    g->last_checkpoint_stop_us = 0;
}

/* This copy's QEMU is gone (how): the secondary takes over from its last checkpoint. */
void guest_finish_hand_over(FtGuest *g, const char *how)
{
    g_autofree char *why = g_strdup_printf("planned failover to %s", guest_peer_host(g)->name);
    g_autofree char *done = g_strdup_printf("handed over (%s); the new primary re-protects "
                                            "the guest onto this host", how);

    if (g->handover_timer) {
        g_source_remove(g->handover_timer);
        g->handover_timer = 0;
    }
    mark_closed_cleanly(g);
    detach(g);
    guest_tell_peer(g, "take-over", why);
    guest_transition(g, GUEST_STOPPED, done);
}

static gboolean hand_over_timed_out(gpointer opaque)
{
    FtGuest *g = opaque;

    g->handover_timer = 0;
    log_warn(g->def->name, guest_role_name(g), "QEMU did not quit within %d ms: libvirt "
             "destroys it", HANDOVER_QUIT_TIMEOUT_MS);
    detach(g);
    destroy_in_thread(g, GUEST_HANDING_OVER, STOP_THEN_HAND_OVER, "destroyed by libvirt");
    return G_SOURCE_REMOVE;
}

/*
 * What only the protected primary does (a planned failover, a verify): on
 * the secondary, the error names the host to run it on; else it says what
 * the guest is here and why that will not do (otherwise).
 */
gboolean guest_protected_primary_here(FtGuest *g, const char *what, const char *otherwise,
                                       GError **err)
{
    if (g->state == GUEST_PROTECTED && g->role == FT_ROLE_PRIMARY)
        return TRUE;
    if (g->state == GUEST_PROTECTED && g->role == FT_ROLE_SECONDARY)
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "'%s' runs on %s; this host is its "
                    "secondary: run the %s there", g->def->name, guest_peer_host(g)->name, what);
    else
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "'%s' is %s here: %s", g->def->name,
                    guest_state_name(g->state), otherwise);
    return FALSE;
}

/* Quitting closes the monitor, which says the rest: only a QEMU that does not answer is news. */
static void on_quit_answer(Qmp *q, JsonNode *answer, const GError *error, gpointer opaque)
{
    (void)q;
    (void)answer;
    if (error && g_error_matches(error, QMP_ERROR, QMP_ERROR_TIMEOUT))
        log_warn(opaque, "primary", "QEMU did not take 'quit' (%s): libvirt destroys it %d ms "
                 "after it was asked", error->message, HANDOVER_QUIT_TIMEOUT_MS);
}

gboolean guest_hand_over(FtGuest *g, GError **err)
{
    const FtHost *peer = guest_peer_host(g);
    g_autoptr(GError) e = NULL;
    g_autofree char *why = NULL;

    if (!guest_protected_primary_here(g, "failover", "a planned failover needs the protected "
                                      "primary", err))
        return FALSE;
    if (!guest_peer_answers(g)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "kvm-ftd on %s does not answer: "
                    "no planned failover to it now", peer->name);
        return FALSE;
    }
    why = g_strdup_printf("planned failover to %s requested", peer->name);
    if (!guest_transition(g, GUEST_HANDING_OVER, why))
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
    if (!qmp_call_async(g->qmp, "quit", NULL, daemon_config(g->d)->qmp_timeout_ms,
                        on_quit_answer, g_strdup(g->def->name), g_free, &e))
        log_warn(g->def->name, guest_role_name(g), "QEMU did not take 'quit' (%s): libvirt "
                 "destroys it in %d ms", e->message, HANDOVER_QUIT_TIMEOUT_MS);
    g->handover_timer = g_timeout_add(HANDOVER_QUIT_TIMEOUT_MS, hand_over_timed_out, g);
    return TRUE;
}

static gboolean journal_says(const JournalEntry *was, FtRole role, const char *const *states)
{
    return was->state && was->role == role && g_strv_contains(states, was->state);
}

/*
 * What a QEMU out of COLO was, by the journal, when that is not running
 * alone: a secondary that never entered COLO is no copy of the guest (its
 * primary starts a new one), nor is a first protection's primary whose
 * guest never ran (it starts paused); a re-protection of a guest running
 * alone is undone, its copy's nodes and COLO objects too, and tried again.
 * FALSE if none of these: the copy runs alone, as it did.
 */
static gboolean undo_interrupted_setup(FtGuest *g, const JournalEntry *was)
{
    static const char *const secondary_setup[] = {
        "starting-secondary", "secondary-waiting", NULL };
    static const char *const primary_setup[] = {
        "preparing-peer", "starting-primary", "entering-colo", "resyncing", "rejoining", NULL };
    g_autofree char *why = g_strdup_printf("kvm-ftd restarted while this copy was %s (%s)",
                                           was->state ? was->state : "unknown",
                                           ft_role_name(was->role));
    g_autofree char *run_state = NULL;

    if (journal_says(was, FT_ROLE_SECONDARY, secondary_setup)) {
        g->role = FT_ROLE_SECONDARY;
        g->error = g_strdup_printf("%s: it never ran the guest; the primary starts a new "
                                   "secondary", why);
        guest_stop(g, g->error);
        return TRUE;
    }
    if (!journal_says(was, FT_ROLE_PRIMARY, primary_setup))
        return FALSE;
    g->role = FT_ROLE_PRIMARY;
    if (was->rejoin) {
        /* Everything the attempt may have added goes; the guest runs on alone. */
        g->rejoin = TRUE;
        g->resync_running = TRUE;
        guest_abort_rejoin(g, why);
        return TRUE;
    }
    run_state = engine_run_state(g->qmp, STATUS_QMP_TIMEOUT_MS, NULL);
    if (g_strcmp0(run_state, "running") == 0)
        return FALSE;
    g->error = g_strdup_printf("%s: the guest had not run yet; protect it again", why);
    guest_tell_peer_to_stop(g, g->error);
    guest_stop(g, g->error);
    return TRUE;
}

/* What the journal said before the restart: the decision that ends re-attaching takes it. */
static JournalEntry take_journaled(FtGuest *g)
{
    JournalEntry was = g->journaled;

    memset(&g->journaled, 0, sizeof(g->journaled));
    return was;
}

void guest_reattach_lost(FtGuest *g, const char *reason)
{
    g_auto(JournalEntry) was = take_journaled(g);

    detach(g);
    guest_reattach_gone(g, &was, reason);
}

/*
 * Re-attaching, its QEMU (pid, from its socket) does not answer: it is
 * killed, and the journal says what the copy was.
 */
static void reattach_hung(FtGuest *g, pid_t pid, const char *reason)
{
    log_err(g->def->name, guest_role_name(g), "%s: killing it (pid %d); the journal says "
            "what it was (%s)", reason, (int)pid,
            g->journaled.state ? g->journaled.state : "nothing");
    if (pid <= 0 || kill(pid, SIGKILL) != 0)
        log_err(g->def->name, guest_role_name(g), "cannot kill QEMU (pid %d): %s", (int)pid,
                pid <= 0 ? "pid unknown" : g_strerror(errno));
    guest_reattach_lost(g, reason);
}

/* What QEMU says and the journal said, once QEMU answered. */
static void reattach_decide(FtGuest *g, JsonNode *answer, const GError *error)
{
    g_auto(JournalEntry) was = { 0 };
    g_autofree char *why = NULL;

    if (g_error_matches(error, QMP_ERROR, QMP_ERROR_TIMEOUT)) {
        why = g_strdup_printf("QEMU on %s does not say whether it is in COLO (%s)",
                              daemon_config(g->d)->host_name, error->message);
        reattach_hung(g, qmp_peer_pid(g->qmp), why);
        return;
    }
    if (error) {
        why = g_strdup_printf("QEMU on %s exited as kvm-ftd re-attached (%s)",
                              daemon_config(g->d)->host_name, error->message);
        guest_reattach_lost(g, why);
        return;
    }
    was = take_journaled(g);
    if (g_strcmp0(was.state, guest_state_name(GUEST_STOPPING)) == 0) {
        /* Decided before the restart, whatever the copy is doing now: it goes. */
        g->role = was.role;
        guest_stop(g, "kvm-ftd restarted while this copy was stopping");
        return;
    }
    guest_take_colo_status(g, answer, NULL);
    if (g_strcmp0(g->colo_mode, "primary") == 0 || g_strcmp0(g->colo_mode, "secondary") == 0) {
        g->role = strcmp(g->colo_mode, "primary") == 0 ? FT_ROLE_PRIMARY : FT_ROLE_SECONDARY;
        guest_enter_protected(g, "kvm-ftd restarted; re-attached to the running QEMU in COLO",
                              FALSE);
    } else if (!guest_finish_failover(g, was.role, was.state) &&
               !undo_interrupted_setup(g, &was)) {
        /* Out of COLO but running: whatever it was, it is the only copy now. */
        g->role = FT_ROLE_PRIMARY;
        guest_transition(g, GUEST_DEGRADED, "kvm-ftd restarted; re-attached to the running "
                         "QEMU, which is not in COLO: running alone, unprotected");
    }
}

typedef struct {
    GuestRef ref;      /* seq: the guest's transitions when it began */
    char *qmp_path;
    guint timeout_ms;
    Qmp *qmp;
    pid_t owner;       /* of the socket, when it took the connection */
    GError *error;
} ReattachJob;

static void reattach_job_free(ReattachJob *j)
{
    guest_ref_clear(&j->ref);
    g_free(j->qmp_path);
    g_clear_pointer(&j->qmp, qmp_free);
    g_clear_error(&j->error);
    g_free(j);
}

/* A QEMU that does not greet holds a thread, not the loop that judges the peers. */
static void connect_in_thread(GTask *task, gpointer source, gpointer data, GCancellable *c)
{
    ReattachJob *j = data;

    (void)source;
    (void)c;
    j->qmp = qmp_connect_running(j->qmp_path, j->timeout_ms, &j->owner, &j->error);
    g_task_return_boolean(task, TRUE);
}

static void on_reattach_connected(GObject *source, GAsyncResult *res, gpointer data)
{
    ReattachJob *j = g_task_get_task_data(G_TASK(res));
    FtGuest *g = guest_ref_find(&j->ref);
    const char *host;
    g_autofree char *why = NULL;

    (void)source;
    (void)data;
    if (!g || g->transitions != j->ref.seq || g->state != GUEST_REATTACHING)
        return;
    host = daemon_config(g->d)->host_name;
    /* Connected, but no greeting: the QEMU is there, and hung. */
    if (g_error_matches(j->error, QMP_ERROR, QMP_ERROR_TIMEOUT)) {
        why = g_strdup_printf("QEMU on %s does not answer kvm-ftd, which restarted (%s)", host,
                              j->error->message);
        reattach_hung(g, j->owner, why);
        return;
    }
    if (!j->qmp) {
        why = g_strdup_printf("QEMU on %s exited while kvm-ftd was down (%s)", host,
                              j->error->message);
        guest_reattach_lost(g, why);
        return;
    }
    g->qmp = g_steal_pointer(&j->qmp);
    qmp_set_handlers(g->qmp, on_qmp_event, on_qmp_closed, g);
    qmp_attach(g->qmp, NULL);
    guest_query(g, "query-colo-status", daemon_config(g->d)->qmp_timeout_ms, reattach_decide);
}

void guest_reattach(FtGuest *g)
{
    const FtConfig *cfg = daemon_config(g->d);
    g_autoptr(GError) jerr = NULL;
    g_autoptr(GTask) task = NULL;
    ReattachJob *j;

    if (!journal_read(cfg->state_dir, g->def->name, &g->journaled, &jerr)) {
        if (!g_error_matches(jerr, G_FILE_ERROR, G_FILE_ERROR_NOENT))
            log_warn(g->def->name, NULL, "%s", jerr->message);
    } else {
        g_free(g->generation);
        g->generation = g_strdup(g->journaled.generation);
    }
    if (!guest_transition(g, GUEST_REATTACHING, "kvm-ftd restarted; connecting to the "
                          "running QEMU"))
        return;
    j = g_new0(ReattachJob, 1);
    guest_ref_init(&j->ref, g, g->transitions);
    j->qmp_path = g_strdup(g->qmp_path);
    j->timeout_ms = cfg->qmp_timeout_ms;
    task = g_task_new(NULL, NULL, on_reattach_connected, NULL);
    g_task_set_task_data(task, j, (GDestroyNotify)reattach_job_free);
    g_task_run_in_thread(task, connect_in_thread);
}

gboolean guest_journal_ran(const JournalEntry *was)
{
    GuestState state;

    /* A copy stopping had nothing left to do but go. */
    return guest_state_from_name(was->state, &state) && state != GUEST_STOPPING &&
           state != GUEST_REATTACHING && guest_transition_allowed(GUEST_STOPPED, state);
}

void guest_reattach_gone(FtGuest *g, const JournalEntry *was, const char *gone)
{
    g_autofree char *why = g_strdup_printf("kvm-ftd restarted: this copy was %s, and its QEMU "
                                           "is gone", was->state ? was->state : "not journaled");
    GuestState state;

    if (!guest_journal_ran(was) || !guest_state_from_name(was->state, &state)) {
        if (g->state == GUEST_REATTACHING)
            guest_transition(g, GUEST_STOPPED, why);
        return;
    }
    g_free(g->generation);
    g->generation = g_strdup(was->generation);
    g->rejoin = was->rejoin;
    g->role = was->role;
    if (guest_transition(g, state, why))
        guest_handle(g, GUEST_EV_QEMU_EXITED, gone);
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

void guest_ref_init(GuestRef *ref, FtGuest *g, guint64 seq)
{
    ref->d = g->d;
    ref->name = g_strdup(g->def->name);
    ref->seq = seq;
}

FtGuest *guest_ref_find(const GuestRef *ref)
{
    return daemon_quitting(ref->d) ? NULL : daemon_find_guest(ref->d, ref->name);
}

void guest_ref_clear(GuestRef *ref)
{
    g_clear_pointer(&ref->name, g_free);
}

GuestRef *guest_ref_new(FtGuest *g, guint64 seq)
{
    GuestRef *ref = g_new0(GuestRef, 1);

    guest_ref_init(ref, g, seq);
    return ref;
}

void guest_ref_free(GuestRef *ref)
{
    guest_ref_clear(ref);
    g_free(ref);
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
    guest_stop_polling(g);
    guest_wake_stop_waiters(g, FALSE);
    if (g->exit_idle_id)
        g_source_remove(g->exit_idle_id);
    if (g->status_idle_id)
        g_source_remove(g->status_idle_id);
    if (g->switchover_idle_id)
        g_source_remove(g->switchover_idle_id);
    if (g->handover_timer)
        g_source_remove(g->handover_timer);
    guest_stop_output_auto(g);
    output_auto_clear(&g->output);
    g_free(g->exit_reason);
    g_free(g->migration_status);
    g_free(g->shutdown_cause);
    g_free(g->status_reason);
    g_free(g->failover_reason);
    g_free(g->failover_cause);
    journal_entry_clear(&g->journaled);
    guest_end_claim(g);
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

