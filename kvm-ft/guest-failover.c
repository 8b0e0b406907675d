/* guest-failover.c - failure detection on the heartbeat tick, and the failovers it decides */
#include "guest-internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

#include "log.h"
#include "qmp.h"
#include "timeouts.h"
#include "witness.h"

static void record_failover(FtGuest *g)
{
    g_free(g->failover_reason);
    g->failover_reason = g_strdup(g->failover_cause);
    g->failover_at_us = g_get_real_time();
    g->failover_ms = (g_get_monotonic_time() - g->failover_started_us) / 1000.0;
}

void guest_end_claim(FtGuest *g)
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
    EngineLink link = guest_engine_link(g);

    /* Recorded before this copy can run alone: a crash in between must not hide it. */
    guest_mark_diverged(g);
    (dropping ? engine_primary_cut : engine_secondary_cut)(g->qmp, &link);
    /*
     * A re-protection's disk-copy targets are NBD connections to the
     * secondary too.  Stopping the guest to leave COLO flushes every node,
     * and a flush to a host that lost power would hold QEMU's main loop
     * until TCP gives up: on a primary re-protected once, x-colo-lost-heartbeat
     * went unanswered for 5 s (test_pair).
     */
    if (dropping)
        resync_release_targets(g->qmp, &link);
    /*
     * Once the cut lets QEMU answer, and before the takeover's commit of the
     * secondary's own blocks, which it must count.
     */
    g->outage_tracked = resync_outage_begin(g->qmp, &link, &err);
    if (!g->outage_tracked) {
        log_warn(g->def->name, guest_role_name(g), "the writes of this outage are not tracked on "
                 "their own (%s): the next copy moves all since the pair was in sync",
                 err->message);
        g_clear_error(&err);
    }
    if (!(dropping ? engine_primary_drop_secondary : engine_secondary_takeover)(g->qmp, &link,
                                                                               &err)) {
        guest_fail(g, "%s failed: %s", guest_state_name(during), err->message);
        return;
    }
    record_failover(g);
    g_free(g->colo_mode);
    g->colo_mode = g_strdup("none");
    if (dropping) {
        /* If its kvm-ftd still listens, the stale secondary goes away. */
        guest_tell_peer(g, "stand-down", g->failover_cause);
        guest_transition(g, GUEST_DEGRADED, "running alone, unprotected");
    } else {
        guest_transition_as(g, GUEST_DEGRADED, FT_ROLE_PRIMARY,
                            "took over; running alone, unprotected");
    }
}

/* The witness gave this host the claim, or an operator overrode it (reason says which). */
void guest_run_alone(FtGuest *g, const char *reason)
{
    log_info(g->def->name, guest_role_name(g), "%s", reason);
    run_alone(g);
}

/* The witness gave the guest to the other copy: this one stops. */
void guest_yield_to_winner(FtGuest *g, const char *reason)
{
    /* A primary ran past its last checkpoint: its disks hold writes the winner lacks. */
    if (g->role == FT_ROLE_PRIMARY)
        guest_mark_diverged(g);
    /* For `ftctl status` too, until the next protection. */
    g_free(g->error);
    g->error = g_strdup(reason);
    guest_stop(g, reason);
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
        log_err(g->def->name, guest_role_name(g), "not running alone: %s; the guest stays held, "
                "its output too (asking again every %d ms; `ftctl takeover %s --force` "
                "decides instead, once the other copy is known to be stopped)", why,
                WITNESS_RETRY_MS, g->def->name);
    g_free(g->claim_trouble);
    g->claim_trouble = g_strdup(why);
    if (!g->claim_retry_id)
        g->claim_retry_id = g_timeout_add(WITNESS_RETRY_MS, retry_claim, g);
}

typedef struct {
    GuestRef ref;       /* seq: claim_seq */
    char *generation;
} ClaimAsk;

static void on_claim(const char *owner, const GError *error, gpointer opaque)
{
    ClaimAsk *a = opaque;
    FtGuest *g = guest_ref_find(&a->ref);
    g_autofree char *why = NULL;

    /* Each transition out of a failover ends its claim (guest_end_claim()). */
    if (!g || g->claim_seq != a->ref.seq)
        goto out;
    if (error) {
        hold(g, error->message);
    } else if (strcmp(owner, daemon_config(g->d)->host_name) == 0) {
        g->claim_ms = (g_get_monotonic_time() - g->failover_started_us) / 1000.0;
        why = g_strdup_printf("the witness gave the guest (generation %s) to this host, %.1f ms "
                              "into the failover: running alone", a->generation, g->claim_ms);
        guest_handle(g, GUEST_EV_CLAIM_WON, why);
    } else {
        why = g_strdup_printf("the witness gave the guest (generation %s) to %s: this copy "
                              "stops; its output was held, so nothing it ran since the last "
                              "checkpoint reached anyone", a->generation, owner);
        guest_handle(g, GUEST_EV_CLAIM_LOST, why);
    }
out:
    guest_ref_clear(&a->ref);
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
    key = witness_key(guest_self_host(g)->name, guest_peer_host(g)->name, g->def->name, generation);
    a = g_new0(ClaimAsk, 1);
    guest_ref_init(&a->ref, g, ++g->claim_seq);
    a->generation = g_strdup(generation);
    witness_claim(daemon_witness(g->d), key, cfg->host_name, on_claim, a);
}

/*
 * Both failovers begin here: the state says which, and with a witness the
 * copy runs alone only once its host owns the claim.
 */
static void fail_over(FtGuest *g, GuestState during, const char *reason)
{
    if (!guest_transition(g, during, reason))
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

gboolean guest_finish_failover(FtGuest *g, FtRole was_role, const char *was_state)
{
    const GuestState during = was_role == FT_ROLE_SECONDARY ? GUEST_TAKING_OVER
                                                            : GUEST_DROPPING_SECONDARY;
    g_autofree char *why = NULL;

    if (g_strcmp0(was_state, guest_state_name(during)) != 0)
        return FALSE;
    /*
     * Its steps are done again: each finds what the first run removed gone.
     * Left as it was, the failover showed in no status, and the secondary's
     * NBD server and COLO objects stayed (test_failover
     * kill-daemon-taking-over).
     */
    g->role = was_role;
    why = g_strdup_printf("kvm-ftd restarted in the middle of a failover (%s), after QEMU had "
                          "left COLO: finishing it", was_state);
    fail_over(g, during, why);
    return TRUE;
}

/* Primary: the secondary is gone; carry on alone. */
void guest_drop_secondary(FtGuest *g, const char *reason)
{
    fail_over(g, GUEST_DROPPING_SECONDARY, reason);
}

/* Secondary: the primary is gone; this copy becomes the guest. */
void guest_take_over(FtGuest *g, const char *reason)
{
    fail_over(g, GUEST_TAKING_OVER, reason);
}

gboolean guest_force_solo(FtGuest *g, GError **err)
{
    g_autofree char *why = g_strdup_printf("an operator forced this copy to run alone without "
                                           "the witness's word (it was waiting: %s)",
                                           g->claim_trouble ? g->claim_trouble
                                                            : "for the witness's answer");

    if (!guest_handle(g, GUEST_EV_SOLO_FORCED, why)) {
        g_set_error(err, G_IO_ERROR, G_IO_ERROR_FAILED, "guest '%s' is %s on %s: no failover "
                    "waits for the witness here", g->def->name, guest_state_name(g->state),
                    daemon_config(g->d)->host_name);
        return FALSE;
    }
    return TRUE;
}

/* Whether the peer's kvm-ftd answers on the dedicated link right now. */
gboolean guest_peer_answers(FtGuest *g)
{
    const FtHost *peer = guest_peer_host(g);

    return daemon_peer_connected(g->d, peer->name) &&
           daemon_peer_path(g->d, peer->link_address, 1) == PEER_PATH_ALIVE;
}

/*
 * Silence windows that tell a dead peer from one busy re-protecting: its
 * kvm-ftd waits on its QEMU, which is loading the first sync, for a second
 * or more.  Until then, a dead peer costs the guest's disk writes that
 * long (the mirror carries them synchronously).  Once the primary has
 * switched over, colo-compare holds the guest's output for the secondary:
 * its silence is judged as in COLO (the client waited 7 to 13 s when the
 * secondary's host was powered off from the switch-over to the first
 * checkpoint: test_reprotect secondary-dies-after-switch-over).
 */
static guint rejoin_windows(FtGuest *g)
{
    guint window_ms = config_window_ms(daemon_config(g->d));

    if (g->role == FT_ROLE_PRIMARY && g->state == GUEST_ENTERING_COLO && g->switched_over)
        return 1;
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
    const FtHost *peer = guest_peer_host(g);

    if (g->state == GUEST_DEGRADED) {
        if (g->role != FT_ROLE_PRIMARY || !g->qmp || !qmp_is_open(g->qmp))
            return;
        /* Keeps a session to the peer open, so its return is noticed. */
        daemon_watch_peer(g->d, peer->link_address);
        if (g_get_monotonic_time() >= g->rejoin_after_us && guest_peer_answers(g))
            guest_handle(g, GUEST_EV_PEER_BACK, "peer is back; starting a new secondary there");
        return;
    }
    /*
     * While it starts the secondary, the peer's kvm-ftd may not be heard for
     * a while (its answer has a deadline of its own); after that it only
     * waits, and silence means it is gone.  A dead secondary has nothing the
     * guest needs: giving up early costs only another attempt.
     */
    if (((g->rejoin && g->state != GUEST_REJOINING) || g->state == GUEST_SECONDARY_WAITING) &&
        daemon_peer_path(g->d, peer->link_address, rejoin_windows(g)) == PEER_PATH_SILENT) {
        g_autofree char *why = g_strdup_printf("%s went silent on the dedicated link before "
                                               "COLO began", peer->name);

        guest_handle(g, GUEST_EV_PEER_GONE_IN_SETUP, why);
    }
}

/* Both roles' watchdogs judge checkpoints by one bound, so that they agree. */
static gint64 checkpoint_silence_bound_ms(FtGuest *g)
{
    return (gint64)g->def->checkpoint_interval_ms + WATCHDOG_SLACK_MS;
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
 * be quick.  QEMU is asked without waiting (a hung one would hold every
 * guest's failure detection for the call's deadline); its answer, or the
 * deadline passing, decides in on_watchdog_status().
 */
static gboolean checkpoints_late(FtGuest *g, gint64 *silent_ms, gint64 *stopped_ms)
{
    *silent_ms = (g_get_monotonic_time() - g->checkpoint_seen_us) / 1000;
    *stopped_ms = g->stop_us ? (g_get_real_time() - g->stop_us) / 1000 : 0;
    return g->checkpoint_seen_us && g->qmp &&
           (*silent_ms > checkpoint_silence_bound_ms(g) || *stopped_ms > CHECKPOINT_STUCK_MS);
}

/* guest_query() calls it only if the guest made no transition meanwhile. */
static void on_watchdog_status(FtGuest *g, JsonNode *answer, const GError *error)
{
    const gint64 bound_ms = checkpoint_silence_bound_ms(g);
    gint64 silent_ms, stopped_ms;
    g_autofree char *why = NULL;
    g_autofree char *state = answer ? engine_run_state_parse(answer, NULL) : NULL;
    pid_t pid;

    /* A connection that closed reports it (on_qmp_closed()); a checkpoint meanwhile clears it all. */
    if (!checkpoints_late(g, &silent_ms, &stopped_ms) ||
        (error && !g_error_matches(error, QMP_ERROR, QMP_ERROR_TIMEOUT)))
        return;
    if (state && strcmp(state, "colo") == 0 && stopped_ms > CHECKPOINT_STUCK_MS) {
        why = g_strdup_printf("a checkpoint has held the guest stopped for %" G_GINT64_FORMAT
                              " ms while QEMU answers: the secondary hangs", stopped_ms);
    } else if (state && strcmp(state, "running") == 0 && silent_ms > bound_ms) {
        why = g_strdup_printf("no checkpoint for %" G_GINT64_FORMAT " ms (bound %"
                              G_GINT64_FORMAT " ms) while QEMU answers: COLO is stuck",
                              silent_ms, bound_ms);
    } else if (!error) {
        /* Paused by a user, or a slow checkpoint: look again in a while. */
        g->watchdog_quiet_until_us = g_get_monotonic_time() + WATCHDOG_SLACK_MS * 1000;
        return;
    }
    if (why) {
        guest_handle(g, GUEST_EV_SECONDARY_HUNG, why);
        return;
    }
    pid = qmp_peer_pid(g->qmp);
    log_err(g->def->name, guest_role_name(g), "no checkpoint for %" G_GINT64_FORMAT " ms (bound %"
            G_GINT64_FORMAT " ms) and QEMU does not answer (%s): killing it (pid %d) so that "
            "the secondary takes over", silent_ms, bound_ms, error->message, (int)pid);
    /* Once: its monitor closing is what reports it, as for any dead QEMU. */
    g->checkpoint_seen_us = 0;
    if (pid <= 0 || kill(pid, SIGKILL) != 0)
        log_err(g->def->name, guest_role_name(g), "cannot kill QEMU (pid %d): %s", (int)pid,
                pid <= 0 ? "pid unknown" : g_strerror(errno));
}

static void watch_checkpoints(FtGuest *g)
{
    gint64 silent_ms, stopped_ms;

    if (!checkpoints_late(g, &silent_ms, &stopped_ms) ||
        g_get_monotonic_time() < g->watchdog_quiet_until_us)
        return;
    guest_query(g, "query-status", STATUS_QMP_TIMEOUT_MS, on_watchdog_status);
}

/*
 * A secondary whose primary's kernel refuses or resets its connections:
 * the primary's kvm-ftd is down (killed, restarting) or someone forges the
 * refusals.  A refusal is not authenticated, so it only makes the secondary
 * wait for evidence that is: checkpoints from the primary's QEMU, which
 * carries on in COLO without its kvm-ftd.  When they stop for as long as the
 * primary's own watchdog allows, nothing runs the guest there any more, or
 * it is paused by a broken COLO stream with nobody to fail it over: take
 * over.  A forger delays a failover by that bound; it cannot prevent one.
 * Returns TRUE when it took over.
 */
static gboolean take_over_without_checkpoints(FtGuest *g, const FtHost *peer)
{
    const gint64 bound_ms = checkpoint_silence_bound_ms(g);
    gint64 silent_ms;
    g_autofree char *why = NULL;

    if (!g->checkpoint_seen_us)
        g->checkpoint_seen_us = g_get_monotonic_time();
    silent_ms = (g_get_monotonic_time() - g->checkpoint_seen_us) / 1000;
    if (silent_ms <= bound_ms)
        return FALSE;
    why = g_strdup_printf("kvm-ftd on %s does not answer, only its host's kernel does, and no "
                          "checkpoint came from its QEMU for %" G_GINT64_FORMAT " ms (bound %"
                          G_GINT64_FORMAT " ms): the primary is not running the guest",
                          peer->name, silent_ms, bound_ms);
    guest_handle(g, GUEST_EV_PRIMARY_NOT_RUNNING, why);
    return TRUE;
}

/*
 * Failure detection, run on every heartbeat tick.  The dedicated link is
 * the pair's heartbeat; the LAN path only tells a cut link from a dead
 * host.  Only authenticated frames show a peer alive: a host whose kernel
 * answers while its kvm-ftd does not is trusted no further than its
 * QEMU's checkpoints show (take_over_without_checkpoints()), and a refusal
 * on the LAN, which anyone there can forge, counts for nothing.
 */
void guest_check_peer(FtGuest *g)
{
    const FtHost *peer;
    PeerPath link, lan;
    g_autofree char *why = NULL;
    guint windows, window_ms;

    if (g->state != GUEST_PROTECTED) {
        check_rejoin(g);
        return;
    }
    peer = guest_peer_host(g);
    if (g->confirm_since_us) {
        if (g_get_monotonic_time() - g->confirm_since_us < STALL_CONFIRM_TIMEOUT_MS * 1000)
            return;
        log_warn(g->def->name, guest_role_name(g), "%s did not say in %d ms whether it took over: "
                 "failure detection decides", peer->name, STALL_CONFIRM_TIMEOUT_MS);
        g->confirm_since_us = 0;
        /* A COLO exit seen meanwhile waited for this. */
        if (g_strcmp0(g->colo_mode, "none") == 0) {
            why = g_strdup_printf("QEMU left COLO (reason: %s); %s did not answer whether "
                                  "it took over", g->exit_reason, peer->name);
            if (guest_handle(g, GUEST_EV_COLO_EXIT_UNCONTESTED, why))
                return;
        }
    }
    /* After the question above: a stall is not a hung QEMU. */
    if (g->role == FT_ROLE_PRIMARY)
        watch_checkpoints(g);
    /*
     * The secondary waits twice as long as the primary: a primary that is
     * alive acts first (drops the secondary and tells it to stand down),
     * so a transient silence never leaves two copies running.
     */
    windows = g->role == FT_ROLE_SECONDARY ? 2 : 1;
    link = daemon_peer_path(g->d, peer->link_address, windows);
    if (link == PEER_PATH_ALIVE) {
        if (g->peer_daemon_down_logged)
            log_info(g->def->name, guest_role_name(g), "kvm-ftd on %s answers again",
                     peer->name);
        g->peer_daemon_down_logged = FALSE;
        return;
    }
    if (link == PEER_PATH_HOST_UP) {
        /* The primary's own watchdog (watch_checkpoints()) judges its secondary's QEMU. */
        if (g->role == FT_ROLE_SECONDARY && take_over_without_checkpoints(g, peer))
            return;
        if (!g->peer_daemon_down_logged)
            log_warn(g->def->name, guest_role_name(g), "kvm-ftd on %s does not answer but "
                     "its host does and checkpoints flow: no failover, the pair stays in "
                     "COLO", peer->name);
        g->peer_daemon_down_logged = TRUE;
        return;
    }

    window_ms = config_window_ms(daemon_config(g->d));
    lan = daemon_peer_path(g->d, peer->lan_address, windows);
    if (lan == PEER_PATH_ALIVE) {
        gint64 now = g_get_monotonic_time();
        gint64 link_us = daemon_peer_heard_us(g->d, peer->link_address);
        gint64 lan_us = daemon_peer_heard_us(g->d, peer->lan_address);

        /*
         * A host that dies falls silent on both paths within about a
         * heartbeat round (its frames leave one session after the other, its
         * interfaces can fail a moment apart): its last LAN frame can be
         * newer than its last link frame, and young enough to count.  Only a
         * LAN frame sent more than the primary's window after the link fell
         * silent shows the peer alive; after a cut, one has come by the time
         * the secondary's longer window runs out.  Until one comes, or the
         * LAN falls silent too, the secondary waits.  (The primary drops its
         * secondary either way.)
         */
        if (g->role == FT_ROLE_SECONDARY && lan_us - link_us <= (gint64)window_ms * 1000)
            return;
        why = g_strdup_printf("dedicated link to %s silent for %" G_GINT64_FORMAT " ms while %s "
                              "answers on the LAN (last heard %" G_GINT64_FORMAT " ms ago): "
                              "the primary carries on alone", peer->name, (now - link_us) / 1000,
                              peer->name, (now - lan_us) / 1000);
        guest_handle(g, GUEST_EV_LINK_CUT, why);
        return;
    }
    why = g_strdup_printf("%s silent for %u ms on the dedicated link%s: host down",
                          peer->name, window_ms * windows,
                          lan == PEER_PATH_NONE ? "" : " and the LAN");
    guest_handle(g, GUEST_EV_PEER_DEAD, why);
}

/* The longest the peer waits before acting on this host's silence. */
static guint peer_window_ms(FtGuest *g)
{
    /* The secondary waits two windows (guest_check_peer()), the primary one. */
    return config_window_ms(daemon_config(g->d)) * (g->role == FT_ROLE_PRIMARY ? 2 : 1);
}


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
    GuestRef *ref = opaque; /* seq: the confirm_since_us it asks for */
    FtGuest *g = guest_ref_find(ref);
    JsonObject *o = result && JSON_NODE_HOLDS_OBJECT(result) ? json_node_get_object(result)
                                                             : NULL;
    const char *role = o ? json_object_get_string_member_with_default(o, "role", "") : "";
    const char *state = o ? json_object_get_string_member_with_default(o, "state", "") : "";
    g_autofree char *why = NULL;

    (void)conn;
    if (!g || (guint64)g->confirm_since_us != ref->seq || g->state != GUEST_PROTECTED)
        goto out;
    if (error) {
        /* guest_check_peer() lets failure detection decide once the wait is over. */
        log_warn(g->def->name, guest_role_name(g), "%s did not answer whether it took over: %s",
                 guest_peer_host(g)->name, error->message);
        goto out;
    }
    g->confirm_since_us = 0;
    log_info(g->def->name, guest_role_name(g), "%s says it is %s, %s", guest_peer_host(g)->name,
             role, state);
    if (g->role == FT_ROLE_PRIMARY && strcmp(role, "primary") == 0) {
        why = g_strdup_printf("%s took over while kvm-ftd here did not run: this copy is "
                              "the stale one and stops", guest_peer_host(g)->name);
        guest_handle(g, GUEST_EV_PEER_RUNS_GUEST, why);
    } else if (g->role == FT_ROLE_SECONDARY && strcmp(role, "primary") == 0 &&
               strcmp(state, guest_state_name(GUEST_PROTECTED)) != 0) {
        why = g_strdup_printf("primary %s runs %s without this secondary", guest_peer_host(g)->name,
                              state);
        guest_handle(g, GUEST_EV_PEER_RUNS_GUEST, why);
    } else if (g_strcmp0(g->colo_mode, "none") == 0) {
        why = g_strdup_printf("QEMU left COLO (reason: %s) while kvm-ftd here did not run; "
                              "%s did not take over", g->exit_reason, guest_peer_host(g)->name);
        guest_handle(g, GUEST_EV_COLO_EXIT_UNCONTESTED, why);
    }
out:
    guest_ref_free(ref);
}

void guest_stalled(FtGuest *g, gint64 stalled_ms)
{
    const char *paths[] = { guest_peer_host(g)->link_address, guest_peer_host(g)->lan_address };
    JsonObject *params;

    if (g->state != GUEST_PROTECTED || g->confirm_since_us || stalled_ms <= peer_window_ms(g))
        return;
    g->confirm_since_us = g_get_monotonic_time();
    log_warn(g->def->name, guest_role_name(g), "kvm-ftd here sent no heartbeat for %"
             G_GINT64_FORMAT " ms, longer than %s waits before acting on silence: no failover "
             "step until it says whether it took over", stalled_ms, guest_peer_host(g)->name);
    params = json_object_new();
    json_object_set_string_member(params, "guest", g->def->name);
    /* On both paths: a cut link must not hide the answer; the first one counts. */
    for (guint i = 0; i < G_N_ELEMENTS(paths); i++) {
        if (paths[i])
            daemon_peer_call(g->d, paths[i], "guest-role", params, STALL_CONFIRM_TIMEOUT_MS,
                             on_peer_role, guest_ref_new(g, (guint64)g->confirm_since_us));
    }
    json_object_unref(params);
}

void guest_peer_event(FtGuest *g, const char *from, const char *name, JsonObject *data)
{
    const char *reason = json_object_get_string_member_with_default(data, "reason", "");
    g_autofree char *why = g_strdup_printf("%s: %s", from, reason);

    if (g_strcmp0(from, guest_peer_host(g)->name) != 0) {
        log_warn(g->def->name, guest_role_name(g), "ignored '%s' from %s, not this guest's "
                 "peer", name, from);
        return;
    }
    if (strcmp(name, "take-over") == 0)
        guest_handle(g, GUEST_EV_TAKE_OVER_ASKED, why);
    else if (strcmp(name, "secondary-lost") == 0)
        guest_handle(g, GUEST_EV_SECONDARY_LOST, why);
    else if (strcmp(name, "stand-down") == 0)
        guest_handle(g, GUEST_EV_STAND_DOWN_ASKED, why);
    else
        log_warn(g->def->name, guest_role_name(g), "ignored '%s' from %s", name, from);
}

void guest_leave_colo(FtGuest *g, const char *reason)
{
    g_autofree char *why = g_strdup_printf("%s: the secondary or its stream is gone", reason);

    /* Its QEMU keeps the guest paused and its output held until told otherwise. */
    guest_stalled(g, daemon_stalled_ms(g->d));
    if (g->confirm_since_us) {
        log_warn(g->def->name, guest_role_name(g), "%s; waiting for %s's word before running "
                 "alone", why, guest_peer_host(g)->name);
        return;
    }
    guest_drop_secondary(g, why);
}

/*
 * The stream from the primary broke.  Whether the primary's QEMU is dead
 * is for its kvm-ftd (take-over) or failure detection to say: taking over
 * next to a live primary would make two copies.
 */
void guest_await_primary(FtGuest *g, const char *reason)
{
    log_warn(g->def->name, guest_role_name(g), "%s; waiting for the primary's word or failure "
             "detection", reason);
}
