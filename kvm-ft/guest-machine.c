/*
 * guest-machine.c - a guest's state machine: its states, the transitions
 * allowed between them, and what each event does in each state and role
 *
 * Two tables.  allowed[] lists every transition there is; the one
 * transition function refuses any other, journals the state before it
 * takes effect, and logs it.  rules[] says what every event from outside
 * a guest's own sequences does, by state and role: failure detection's
 * findings, this host's QEMU going, the peer's decisions, the witness's
 * answers and an operator's overrides.  The steps of a protection (asking
 * the peer, the copy, entering COLO) run as sequences of asynchronous
 * calls whose callbacks move the guest on through the same transition
 * function.
 */
#include "guest-internal.h"

#include "definitions.h"
#include "journal.h"
#include "log.h"

static const char *const state_names[GUEST_N_STATES] = {
    [GUEST_STOPPED] = "stopped",
    [GUEST_REATTACHING] = "re-attaching",
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
    [GUEST_STOPPING] = "stopping",
    [GUEST_FAILED] = "failed",
};

#define BIT(s) (1u << (s))
#define ENDINGS (BIT(GUEST_FAILED) | BIT(GUEST_STOPPED) | BIT(GUEST_STOPPING))

/* The only transitions there are; anything else is a bug and is refused. */
static const guint allowed[GUEST_N_STATES] = {
    /*
     * Protected, degraded, finishing a failover or handing over straight
     * away: a restarted kvm-ftd re-attaching, or re-entering what its
     * journal says a copy whose QEMU went meanwhile was.
     */
    [GUEST_STOPPED] = BIT(GUEST_PREPARING_PEER) | BIT(GUEST_STARTING_SECONDARY) |
                      BIT(GUEST_PROTECTED) | BIT(GUEST_DEGRADED) |
                      BIT(GUEST_TAKING_OVER) | BIT(GUEST_DROPPING_SECONDARY) |
                      BIT(GUEST_HANDING_OVER) | BIT(GUEST_STOPPING) | BIT(GUEST_REATTACHING),
    /* What its QEMU and journal say it was; or what its journal says, if that QEMU is gone. */
    [GUEST_REATTACHING] = BIT(GUEST_PREPARING_PEER) | BIT(GUEST_STARTING_SECONDARY) |
                          BIT(GUEST_PROTECTED) | BIT(GUEST_DEGRADED) |
                          BIT(GUEST_TAKING_OVER) | BIT(GUEST_DROPPING_SECONDARY) |
                          BIT(GUEST_HANDING_OVER) | ENDINGS,
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
    [GUEST_HANDING_OVER] = ENDINGS,
    [GUEST_STOPPING] = BIT(GUEST_STOPPED) | BIT(GUEST_FAILED),
    [GUEST_FAILED] = BIT(GUEST_PREPARING_PEER) | BIT(GUEST_STARTING_SECONDARY) |
                     BIT(GUEST_STOPPED) | BIT(GUEST_STOPPING),
};

const char *guest_state_name(GuestState state)
{
    return state < GUEST_N_STATES ? state_names[state] : "invalid";
}

gboolean guest_state_from_name(const char *name, GuestState *state)
{
    for (GuestState s = 0; s < GUEST_N_STATES; s++) {
        if (g_strcmp0(name, state_names[s]) == 0) {
            *state = s;
            return TRUE;
        }
    }
    return FALSE;
}

gboolean guest_transition_allowed(GuestState from, GuestState to)
{
    return from < GUEST_N_STATES && to < GUEST_N_STATES && (allowed[from] & BIT(to));
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

/*
 * Before a transition takes effect (journal.h).  A failover must not wait
 * for a disk that is full or gone, so a failed write is said, not fatal:
 * a restart then knows the state before.  Re-attaching is not written: the
 * journal keeps what the copy was, for a restart that interrupts it.
 */
static void journal_transition(FtGuest *g, GuestState to)
{
    g_autoptr(GError) err = NULL;
    const JournalEntry entry = {
        .role = g->role,
        .state = (char *)guest_state_name(to),
        .generation = g->generation,
        .rejoin = g->rejoin,
    };

    if (to == GUEST_REATTACHING)
        return;
    if (!journal_write(daemon_config(g->d)->state_dir, g->def->name, &entry, &err))
        log_err(g->def->name, guest_role_name(g), "cannot journal the state %s (a restart of "
                "kvm-ftd would not know it): %s", guest_state_name(to), err->message);
}

/*
 * A copy changes role once only: the secondary that took over becomes the
 * primary as it starts running alone.  (A restarted kvm-ftd learns the
 * role of a copy it re-attaches to before its first transition.)
 */
static gboolean role_may_change(GuestState from, GuestState to, FtRole role)
{
    return from == GUEST_TAKING_OVER && to == GUEST_DEGRADED && role == FT_ROLE_PRIMARY;
}

gboolean guest_transition_as(FtGuest *g, GuestState to, FtRole role, const char *reason)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    const GuestState from = g->state;
    const FtRole was = g->role;

    if (!(allowed[from] & BIT(to)) || (role != was && !role_may_change(from, to, role))) {
        log_err(g->def->name, guest_role_name(g), "refused transition %s -> %s as %s (%s)",
                guest_state_name(from), guest_state_name(to), ft_role_name(role), reason);
        return FALSE;
    }
    g->role = role;
    journal_transition(g, to);
    g->state = to;
    /* What was asked of QEMU before counts no more (guest_query(), engine sequences). */
    g->transitions++;
    g->qmp_step_seq++;
    if (role != was)
        log_info(g->def->name, guest_role_name(g), "%s -> %s, %s -> %s: %s",
                 guest_state_name(from), guest_state_name(to), ft_role_name(was),
                 ft_role_name(role), reason);
    else
        log_info(g->def->name, guest_role_name(g), "%s -> %s: %s",
                 guest_state_name(from), guest_state_name(to), reason);
    if (to != GUEST_PROTECTED)
        guest_stop_output_auto(g);
    /* Whichever way a failover ended, its claim is over. */
    if (from == GUEST_TAKING_OVER || from == GUEST_DROPPING_SECONDARY)
        guest_end_claim(g);
    g_free(g->status_reason);
    g->status_reason = g_strdup(reason);
    if (!g->status_idle_id)
        g->status_idle_id = g_idle_add(write_status, g);

    guest_begin_event(g, b);
    json_builder_set_member_name(b, "from");
    json_builder_add_string_value(b, guest_state_name(from));
    json_builder_set_member_name(b, "to");
    json_builder_add_string_value(b, guest_state_name(to));
    json_builder_set_member_name(b, "reason");
    json_builder_add_string_value(b, reason);
    guest_broadcast_event(g, b);
    if (from == GUEST_STOPPING)
        guest_wake_stop_waiters(g, TRUE);
    return TRUE;
}

gboolean guest_transition(FtGuest *g, GuestState to, const char *reason)
{
    return guest_transition_as(g, to, g->role, reason);
}

/* ---- events ----------------------------------------------------------------- */

static const char *const event_names[GUEST_N_EVENTS] = {
    [GUEST_EV_PEER_DEAD] = "peer-dead",
    [GUEST_EV_LINK_CUT] = "link-cut",
    [GUEST_EV_PRIMARY_NOT_RUNNING] = "primary-not-running",
    [GUEST_EV_SECONDARY_HUNG] = "secondary-hung",
    [GUEST_EV_PEER_BACK] = "peer-back",
    [GUEST_EV_PEER_GONE_IN_SETUP] = "peer-gone-in-setup",
    [GUEST_EV_COLO_EXIT] = "colo-exit",
    [GUEST_EV_QEMU_EXITED] = "qemu-exited",
    [GUEST_EV_QEMU_SHUT_DOWN] = "qemu-shut-down",
    [GUEST_EV_DOMAIN_STOPPED] = "domain-stopped",
    [GUEST_EV_TAKE_OVER_ASKED] = "take-over-asked",
    [GUEST_EV_SECONDARY_LOST] = "secondary-lost",
    [GUEST_EV_STAND_DOWN_ASKED] = "stand-down-asked",
    [GUEST_EV_STOP_ASKED] = "stop-asked",
    [GUEST_EV_PEER_RUNS_GUEST] = "peer-runs-guest",
    [GUEST_EV_COLO_EXIT_UNCONTESTED] = "colo-exit-uncontested",
    [GUEST_EV_CLAIM_WON] = "claim-won",
    [GUEST_EV_CLAIM_LOST] = "claim-lost",
    [GUEST_EV_SOLO_FORCED] = "solo-forced",
    [GUEST_EV_REPAIR_ASKED] = "repair-asked",
};

const char *guest_event_name(GuestEvent event)
{
    return event < GUEST_N_EVENTS ? event_names[event] : "invalid";
}

typedef struct {
    const char *name;
    void (*run)(FtGuest *g, const char *reason);
} GuestAction;

static const GuestAction take_over = { "take-over", guest_take_over };
static const GuestAction drop_secondary = { "drop-secondary", guest_drop_secondary };
static const GuestAction stand_down = { "stand-down", guest_stop };
static const GuestAction leave_colo = { "leave-colo", guest_leave_colo };
static const GuestAction await_primary = { "await-primary", guest_await_primary };
static const GuestAction run_alone = { "run-alone", guest_run_alone };
static const GuestAction yield_to_winner = { "yield-to-winner", guest_yield_to_winner };
static const GuestAction rejoin = { "rejoin", guest_start_rejoin };
static const GuestAction abort_rejoin = { "abort-rejoin", guest_abort_rejoin };
static const GuestAction hand_over = { "hand-over", guest_finish_hand_over };
static const GuestAction stop_planned = { "stop-planned", guest_stop_planned };
static const GuestAction fail_and_tell_peer = { "fail-and-tell-peer", guest_fail_and_tell_peer };
static const GuestAction fail = { "fail", guest_fail_because };
static const GuestAction reattach_lost = { "reattach-lost", guest_reattach_lost };

#define EV(e) (1u << (GUEST_EV_##e))
#define S(s) BIT(GUEST_##s)
#define ALL_STATES (BIT(GUEST_N_STATES) - 1)
#define PRIMARY (1u << FT_ROLE_PRIMARY)
#define SECONDARY (1u << FT_ROLE_SECONDARY)
#define ANY_ROLE (PRIMARY | SECONDARY)
/* Found true on a heartbeat tick, and said again on the next one: no "nothing to do" each time. */
#define JUDGED_EACH_TICK (EV(PEER_DEAD) | EV(LINK_CUT) | EV(PRIMARY_NOT_RUNNING) | \
                          EV(SECONDARY_HUNG) | EV(PEER_BACK) | EV(PEER_GONE_IN_SETUP))

typedef struct {
    guint states;
    guint roles;
    guint events;
    const GuestAction *action; /* NULL: nothing to do, and nothing to say */
} GuestRule;

/* The first rule that matches applies; an event that none matches changes nothing. */
static const GuestRule rules[] = {
    /*
     * In COLO.  Whatever ends it, the primary carries on alone if it can:
     * it drops its secondary.  The secondary takes over only when the
     * primary is gone; while the primary answers on the LAN, or runs the
     * guest without this copy, it stands down.
     */
    { S(PROTECTED), PRIMARY,
      EV(PEER_DEAD) | EV(LINK_CUT) | EV(SECONDARY_HUNG) | EV(SECONDARY_LOST) |
      EV(COLO_EXIT_UNCONTESTED) | EV(REPAIR_ASKED), &drop_secondary },
    { S(PROTECTED), SECONDARY, EV(PEER_DEAD) | EV(PRIMARY_NOT_RUNNING) | EV(TAKE_OVER_ASKED),
      &take_over },
    { S(PROTECTED), SECONDARY, EV(LINK_CUT), &stand_down },
    { S(PROTECTED), ANY_ROLE, EV(PEER_RUNS_GUEST), &stand_down },
    /* QEMU's COLO stream broke: only the primary knows enough to act on it. */
    { S(PROTECTED), PRIMARY, EV(COLO_EXIT), &leave_colo },
    { S(PROTECTED), SECONDARY, EV(COLO_EXIT), &await_primary },

    /* A secondary the primary no longer wants goes, whatever it was doing. */
    { ALL_STATES & ~(S(STOPPED) | S(FAILED)), SECONDARY, EV(STAND_DOWN_ASKED), &stand_down },
    { ALL_STATES, SECONDARY, EV(STOP_ASKED), &stand_down },

    /* A failover, once the witness (or an operator) has decided. */
    { S(TAKING_OVER) | S(DROPPING_SECONDARY), ANY_ROLE, EV(CLAIM_WON) | EV(SOLO_FORCED),
      &run_alone },
    { S(TAKING_OVER) | S(DROPPING_SECONDARY), ANY_ROLE, EV(CLAIM_LOST), &yield_to_winner },

    /* Outside COLO. */
    { S(DEGRADED), PRIMARY, EV(PEER_BACK), &rejoin },
    { S(RESYNCING) | S(ENTERING_COLO), PRIMARY, EV(PEER_GONE_IN_SETUP), &abort_rejoin },
    { S(SECONDARY_WAITING), SECONDARY, EV(PEER_GONE_IN_SETUP), &stand_down },

    /* This host's QEMU goes. */
    { S(HANDING_OVER), ANY_ROLE, EV(QEMU_EXITED) | EV(QEMU_SHUT_DOWN), &hand_over },
    { S(PROTECTED) | S(DEGRADED) | S(FAILED), PRIMARY, EV(QEMU_SHUT_DOWN) | EV(DOMAIN_STOPPED),
      &stop_planned },
    { S(STOPPED) | S(FAILED), ANY_ROLE, EV(QEMU_EXITED) | EV(QEMU_SHUT_DOWN), NULL },
    /* Before QEMU said what it is: what the journal says it was decides. */
    { S(REATTACHING), ANY_ROLE, EV(QEMU_EXITED) | EV(QEMU_SHUT_DOWN), &reattach_lost },
    /* The other copy is the guest now: the peer must hear it at once. */
    { S(PROTECTED), ANY_ROLE, EV(QEMU_EXITED) | EV(QEMU_SHUT_DOWN), &fail_and_tell_peer },
    { S(ENTERING_COLO), PRIMARY, EV(QEMU_EXITED) | EV(QEMU_SHUT_DOWN), &fail_and_tell_peer },
    { ALL_STATES, ANY_ROLE, EV(QEMU_EXITED) | EV(QEMU_SHUT_DOWN), &fail },
};

static const GuestRule *rule_for(GuestState state, FtRole role, GuestEvent event)
{
    for (gsize i = 0; i < G_N_ELEMENTS(rules); i++) {
        const GuestRule *r = &rules[i];

        if ((r->events & (1u << event)) && (r->states & BIT(state)) && (r->roles & (1u << role)))
            return r;
    }
    return NULL;
}

const char *guest_rule_action(GuestState state, FtRole role, GuestEvent event)
{
    const GuestRule *r = rule_for(state, role, event);

    return !r ? NULL : r->action ? r->action->name : "";
}

gboolean guest_handle(FtGuest *g, GuestEvent event, const char *reason)
{
    const GuestRule *r = rule_for(g->state, g->role, event);

    if (!r) {
        if (!((1u << event) & JUDGED_EACH_TICK))
            log_info(g->def->name, guest_role_name(g), "%s in state %s: nothing to do (%s)",
                     guest_event_name(event), guest_state_name(g->state), reason);
        return FALSE;
    }
    if (!r->action)
        return FALSE;
    log_debug(g->def->name, guest_role_name(g), "%s in state %s: %s", guest_event_name(event),
              guest_state_name(g->state), r->action->name);
    r->action->run(g, reason);
    return TRUE;
}
