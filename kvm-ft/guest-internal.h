/*
 * guest-internal.h - what the guest*.c files share of one protected guest
 *
 * guest-machine.c is the state machine (its transitions and its rules),
 * guest.c the life cycle of this host's copy; the other files hold one job
 * each: guest-primary.c the primary's way into protection (a secondary,
 * the disk comparison or copy, COLO) and verify,
 * guest-secondary.c the secondary's storage and start, guest-failover.c
 * failure detection and the failovers it decides, guest-output.c
 * output="auto", guest-status.c what `ftctl status` shows.  Only they
 * include this header; the rest of kvm-ft knows guest.h.
 */
#pragma once

#include <json-glib/json-glib.h>

#include "daemon.h"
#include "domxml.h"
#include "engine.h"
#include "guest.h"
#include "output.h"
#include "peer.h"
#include "resync.h"

/* Checkpoints remembered for `ftctl status` figures and benchmarks. */
#define CHECKPOINT_HISTORY 4096

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
    /* A re-protection given up, while its copy's jobs end: why (NULL: none under way). */
    char *abort_reason;
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
    char *migration_status;  /* its first sync's, as last polled (or why not known) */
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

    /* Re-attaching after a restart: what the journal said, until QEMU says the rest. */
    JournalEntry journaled;

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
    /* Protected: when the last checkpoint ended (monotonic), for the watchdogs. */
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
    guint64 setup_seq;     /* the peer's answer (prepare-secondary, receive-copy) that counts */
    guint64 nbd_probe_seq; /* the probe of the peer's NBD server that counts */
    guint64 compare_seq;   /* the comparison of administrator-copied disks that counts */
    /* The QMP steps not waited for (engine_sequence_run) that count; each transition bumps it. */
    guint64 qmp_step_seq;
    guint64 transitions;   /* how many this guest made: what an answer was asked in */
    guint64 query_seq;     /* the poll's query (guest_query()) that counts, and if it is out */
    gboolean query_pending;
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
    GSList *stop_waiters;   /* guest_when_stopped() */
    double claim_ms;        /* the last won claim; -1: none (no witness, or forced) */

    /* Ring of the latest checkpoints: QEMU wall-clock stamp and pause. */
    gint64 history_us[CHECKPOINT_HISTORY];
    double history_pause_ms[CHECKPOINT_HISTORY];
};

/*
 * What a callback that can outlive the guest holds (a peer's or the
 * witness's answer, a worker thread's result), never the FtGuest itself:
 * the guest is found again by name, and the answer counts only if seq is
 * still the step it was asked for (each kind of step counts its own).
 */
typedef struct {
    Daemon *d;
    char *name;
    guint64 seq;
} GuestRef;

void guest_ref_init(GuestRef *ref, FtGuest *g, guint64 seq);
/* The guest, or NULL if it is gone or the daemon is quitting. */
FtGuest *guest_ref_find(const GuestRef *ref);
void guest_ref_clear(GuestRef *ref);
GuestRef *guest_ref_new(FtGuest *g, guint64 seq);
void guest_ref_free(GuestRef *ref);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(GuestRef, guest_ref_free)

/* guest-machine.c: the state machine */
/*
 * Every state change goes through here: refused unless the table allows
 * it, journalled, logged.  A role changes only where a secondary that took
 * over starts running alone.
 */
gboolean guest_transition_as(FtGuest *g, GuestState to, FtRole role, const char *reason);
/* The same in the guest's role. */
gboolean guest_transition(FtGuest *g, GuestState to, const char *reason);
gboolean guest_state_from_name(const char *name, GuestState *state);
gboolean guest_transition_allowed(GuestState from, GuestState to);
/* The name of what event does in state and role: "" nothing, NULL no rule (for tests). */
const char *guest_rule_action(GuestState state, FtRole role, GuestEvent event);

/* guest.c: the life cycle of this host's copy */
const char *guest_role_name(FtGuest *g);
const FtHost *guest_self_host(FtGuest *g);
const FtHost *guest_peer_host(FtGuest *g);
/* Protection failed (a printf-style reason): undoes what it must, keeps a running copy. */
void guest_fail(FtGuest *g, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void guest_abort_rejoin(FtGuest *g, const char *reason);
/* The rules' actions for this host's QEMU going (reason: how). */
void guest_finish_hand_over(FtGuest *g, const char *reason);
void guest_stop_planned(FtGuest *g, const char *reason);
void guest_fail_and_tell_peer(FtGuest *g, const char *reason);
void guest_fail_because(FtGuest *g, const char *reason);
/* Re-attaching, its QEMU went: what the journal says decides (guest_reattach_gone()). */
void guest_reattach_lost(FtGuest *g, const char *reason);
/* Runs the guest_when_stopped() waiters (run) or only frees them. */
void guest_wake_stop_waiters(FtGuest *g, gboolean run);
/* An event for ftctl about this guest in its role: begin, add members, broadcast. */
void guest_begin_event(FtGuest *g, JsonBuilder *b);
void guest_broadcast_event(FtGuest *g, JsonBuilder *b);
void guest_stop_polling(FtGuest *g);
void guest_arm_deadline(FtGuest *g);
gboolean guest_past_deadline(FtGuest *g);
EngineLink guest_engine_link(FtGuest *g);
/* The same with a status call's short QMP deadline, for calls made while protected. */
EngineLink guest_quick_link(FtGuest *g);
/* The derived definition QEMU runs for this host's role (the run dir made, no stale socket). */
char *guest_runtime_xml(FtGuest *g, const DomxmlPlumbing *plumbing, GError **err);
/*
 * A QEMU that the libvirt thread started for a step given up meanwhile:
 * nobody's, so it goes (in that thread, after anything queued before).
 */
void guest_discard_started(Daemon *d, const char *name, const char *role);
gboolean guest_attach_qemu(FtGuest *g, GError **err);
void guest_refresh_colo_status(FtGuest *g);
/*
 * A poll's question to this host's QEMU, not waited for (qmp_call_async()):
 * then(g, answer, error) runs when it comes, if the guest made no
 * transition since it was asked, or at once with the error if it cannot be
 * sent.  One at a time: while one is out, this sends nothing, so a QEMU
 * that is slow to answer is not asked again and again.
 */
typedef void (*GuestAnswerFunc)(FtGuest *g, JsonNode *answer, const GError *error);
void guest_query(FtGuest *g, const char *command, guint timeout_ms, GuestAnswerFunc then);
/* query-colo-status's answer, or its failure, taken as guest_refresh_colo_status() does. */
void guest_take_colo_status(FtGuest *g, JsonNode *answer, const GError *error);
gboolean guest_write_tls_key(FtGuest *g, GError **err);
void guest_forget_checkpoints(FtGuest *g);
void guest_enter_protected(FtGuest *g, const char *reason, gboolean new_epoch);
void guest_mark_diverged(FtGuest *g);
void guest_tell_peer_to_stop(FtGuest *g, const char *reason);
/* An acknowledged decision for the peer (decision.h), in this protection's generation. */
void guest_tell_peer(FtGuest *g, const char *decision, const char *reason);
gboolean guest_protected_primary_here(FtGuest *g, const char *what, const char *otherwise,
                                      GError **err);

/* guest-primary.c */
void guest_start_rejoin(FtGuest *g, const char *reason);
gboolean guest_on_pre_switchover(gpointer opaque);

/* guest-secondary.c */
void guest_answer_primary(FtGuest *g, const char *error);
/*
 * The virtual sizes of the disk images at paths (NULL-terminated) and
 * their total, for a peer that has to create blank ones.  qemu-img, ~10 ms
 * a disk: from a worker thread, not the main loop.
 */
JsonArray *guest_disk_sizes(const char *const *paths, guint64 *total, GError **err);

/* guest-failover.c: the failovers the rules start, and their ends */
void guest_drop_secondary(FtGuest *g, const char *reason);
void guest_take_over(FtGuest *g, const char *reason);
void guest_run_alone(FtGuest *g, const char *reason);
void guest_yield_to_winner(FtGuest *g, const char *reason);
/* QEMU left COLO: the primary acts (guest_leave_colo), the secondary waits for word. */
void guest_leave_colo(FtGuest *g, const char *reason);
void guest_await_primary(FtGuest *g, const char *reason);
/*
 * A restarted kvm-ftd whose QEMU left COLO while the journal says it was
 * failing over (taking-over, dropping-secondary): the failover is finished.
 * FALSE if the journal says no such thing.
 */
gboolean guest_finish_failover(FtGuest *g, FtRole was_role, const char *was_state);
void guest_end_claim(FtGuest *g);
gboolean guest_peer_answers(FtGuest *g);

/* guest-output.c */
void guest_start_output_auto(FtGuest *g);
void guest_stop_output_auto(FtGuest *g);

/* guest-status.c */
double guest_pause_p50(FtGuest *g);
double guest_copy_seconds(FtGuest *g);
void guest_add_progress(FtGuest *g, JsonBuilder *b);
void guest_record_resync(FtGuest *g);
