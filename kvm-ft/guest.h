/*
 * guest.h - one protected guest on this host, and its state machine
 *
 * Every state change goes through one transition function, which checks
 * it against the table of allowed transitions and logs it with its reason;
 * the guest's status element in libvirt (status.h) follows it.  Events
 * from outside (the peer, failure detection, QEMU, the witness) go through
 * guest_handle() (guest-machine.c).
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "daemon.h"
#include "ft.h"
#include "ftdef.h"
#include "journal.h"
#include "peer.h"

typedef enum {
    GUEST_STOPPED,            /* not running under kvm-ft on this host */
    GUEST_REATTACHING,        /* kvm-ftd restarted: finding its running copy again */
    GUEST_PREPARING_PEER,     /* primary: the peer is starting the secondary */
    GUEST_STARTING_PRIMARY,   /* primary: QEMU starts paused, COLO plumbing added */
    GUEST_ENTERING_COLO,      /* primary: first full sync to the secondary */
    GUEST_STARTING_SECONDARY, /* secondary: QEMU starts, incoming side set up */
    GUEST_SECONDARY_WAITING,  /* secondary: ready, waiting for the primary's sync */
    GUEST_PROTECTED,          /* in COLO with the peer */
    GUEST_TAKING_OVER,        /* secondary: the primary is gone, becoming the guest */
    GUEST_DROPPING_SECONDARY, /* primary: the secondary is gone, leaving COLO */
    GUEST_DEGRADED,           /* the only copy: running alone, unprotected */
    GUEST_REJOINING,          /* primary, running alone: the peer starts a new secondary */
    GUEST_RESYNCING,          /* primary: copying what the secondary's disks lack */
    GUEST_HANDING_OVER,       /* primary: stopping so that the secondary takes over */
    GUEST_STOPPING,           /* this host's copy goes: libvirt destroys its QEMU */
    GUEST_FAILED,             /* protection failed; the reason is kept */
    GUEST_N_STATES
} GuestState;

/*
 * What happens to a guest from outside its own sequences; what each does
 * depends on the guest's state and role (guest-machine.c's rules).
 */
typedef enum {
    /* Failure detection, on the heartbeat tick */
    GUEST_EV_PEER_DEAD,            /* the peer is silent on the link and the LAN */
    GUEST_EV_LINK_CUT,             /* the link is silent; the peer answers on the LAN */
    GUEST_EV_PRIMARY_NOT_RUNNING,  /* the primary's kvm-ftd is down, its QEMU checkpoints no more */
    GUEST_EV_SECONDARY_HUNG,       /* the primary's watchdog: COLO waits on the secondary */
    GUEST_EV_PEER_BACK,            /* running alone: the peer's kvm-ftd answers again */
    GUEST_EV_PEER_GONE_IN_SETUP,   /* the peer went silent before COLO began */
    /* This host's QEMU */
    GUEST_EV_COLO_EXIT,            /* it left COLO */
    GUEST_EV_QEMU_EXITED,          /* its monitor closed, no stop announced */
    GUEST_EV_QEMU_SHUT_DOWN,       /* its monitor closed after it announced a planned stop */
    GUEST_EV_DOMAIN_STOPPED,       /* libvirt saw it shut down or destroyed */
    /* The peer's kvm-ftd */
    GUEST_EV_TAKE_OVER_ASKED,      /* the primary's QEMU died */
    GUEST_EV_SECONDARY_LOST,       /* the secondary's QEMU died */
    GUEST_EV_STAND_DOWN_ASKED,     /* the primary carries on without this secondary */
    GUEST_EV_STOP_ASKED,           /* the primary stops its secondary (stop-secondary) */
    GUEST_EV_PEER_RUNS_GUEST,      /* after a stall here: the peer runs the guest without us */
    GUEST_EV_COLO_EXIT_UNCONTESTED, /* after a stall here: QEMU left COLO, the peer did not take over */
    /* The witness and operators */
    GUEST_EV_CLAIM_WON,            /* this host owns the failover's claim */
    GUEST_EV_CLAIM_LOST,           /* the other host does */
    GUEST_EV_SOLO_FORCED,          /* ftctl takeover --force */
    GUEST_EV_REPAIR_ASKED,         /* ftctl verify --repair */
    GUEST_N_EVENTS
} GuestEvent;

typedef struct FtGuest FtGuest;

const char *guest_state_name(GuestState state);
const char *guest_event_name(GuestEvent event);

/*
 * What event does to g in its state and role, by the rules; reason says
 * why, for the log and the guest's status.  FALSE if it does nothing here.
 */
gboolean guest_handle(FtGuest *g, GuestEvent event, const char *reason);

/*
 * fn(data) from the main loop once the guest, now stopping, has stopped
 * (or failed to); then free_data(data).  If the guest is freed first, only
 * free_data runs.
 */
void guest_when_stopped(FtGuest *g, GSourceFunc fn, gpointer data, GDestroyNotify free_data);

/* kvm-ftd's own QMP socket of a guest: a restarted daemon finds its guests by it. */
char *guest_qmp_socket(const FtConfig *cfg, const char *name);

/* Removes the replication overlays a secondary of that guest left in the state dir. */
void guest_remove_overlays(const FtConfig *cfg, const char *name);
/* The administrator's domain XML the guest was created from. */
const char *guest_domain_xml(FtGuest *g);

FtGuest *guest_new(Daemon *d, FtDef *def /* taken */, const char *domain_xml,
                   FtRole role);
void guest_free(FtGuest *g);

const char *guest_name(FtGuest *g);
const FtDef *guest_def(FtGuest *g);
GuestState guest_state(FtGuest *g);
FtRole guest_role(FtGuest *g);
gboolean guest_is_busy(FtGuest *g);

/*
 * Primary: start the guest protected (asks the peer for the secondary).
 * started_by_libvirt: `virsh start` has launched QEMU, paused, with the
 * plumbing of the derived definition; kvm-ftd adopts it instead of
 * starting one (libvirt's qemu hook waits for the outcome).
 */
void guest_protect(FtGuest *g, gboolean started_by_libvirt);

/*
 * Secondary: start the secondary and answer request id on conn when ready.
 * params: the primary's prepare-secondary request (generation, disk-bytes,
 * wait-ms: see doc/interfaces.md).
 */
void guest_prepare_secondary(FtGuest *g, PeerConn *conn, guint64 id, JsonObject *params);

/* Secondary: the primary is about to copy to this host's disks (mark them). */
gboolean guest_receive_copy(FtGuest *g, GError **err);
/* Secondary, output="auto": send the guest's output for comparison or nowhere. */
gboolean guest_set_output(FtGuest *g, const char *mode, GError **err);

/*
 * A restarted kvm-ftd takes back the copy that libvirt runs here with its
 * QMP socket, without waiting on the main loop: the guest is re-attaching
 * (peers that ask about it hear "restarting") while a worker thread
 * connects to its QEMU, then its QEMU's COLO status and its journal say
 * what it is.  A QEMU that takes the connection but does not answer within
 * the QMP deadline is hung: guest_reattach_hung().
 */
void guest_reattach(FtGuest *g);
/*
 * Whether a restarted kvm-ftd that finds no QEMU of a guest must act on
 * what its journal says: a copy ran, or was starting, there.
 */
gboolean guest_journal_ran(const JournalEntry *was);
/*
 * That copy's QEMU went (gone says how): the guest, new or re-attaching,
 * re-enters the state its journal says, in the journal's role, and judges
 * the QEMU's end as if it had seen it (a peer may be waiting to hear of
 * it).  If the journal says no copy ran, a re-attaching guest is stopped.
 */
void guest_reattach_gone(FtGuest *g, const JournalEntry *was, const char *gone);

/*
 * Planned switch of roles: this protected primary stops and its secondary
 * takes over from the last checkpoint, as in a failover, so nothing
 * released to the outside is lost; the new primary then re-protects the
 * guest onto this host.  FALSE with a message if the pair is not in a
 * state to do it.
 */
gboolean guest_hand_over(FtGuest *g, GError **err);

/*
 * ftctl verify, on the protected primary: the disks exported for it
 * (verify_export()), then its findings, which end the exports and become
 * "last_verify" in the status and a "verify" event -- or why it gave up
 * (abandoned), which ends them too.
 */
JsonNode *guest_verify_begin(FtGuest *g, GError **err);
gboolean guest_verify_end(FtGuest *g, JsonNode *result, const char *abandoned,
                          GError **err);
/* After a verify that found differences: drop the secondary; re-protect with a whole copy. */
gboolean guest_verify_repair(FtGuest *g, GError **err);
/*
 * An operator's word instead of the witness's: a failover held because the
 * witness did not decide runs this copy alone now (`ftctl takeover --force`).
 */
gboolean guest_force_solo(FtGuest *g, GError **err);

/* Stop this host's copy (both roles), e.g. when the other side gave up. */
void guest_stop(FtGuest *g, const char *reason);

/*
 * libvirt reports the domain stopped.  Shut down or destroyed, a running
 * primary stops the pair (its secondary too) instead of failing over,
 * unless QEMU's own word on it came first.
 */
void guest_domain_stopped(FtGuest *g, VirtStopped how);

/*
 * The definition of a guest that runs here changed (virsh metadata --set):
 * what can change live (the checkpoint interval, on a protected primary) is
 * applied now.  Returns NULL if everything was, or what waits for the next
 * start, for the operator.
 */
char *guest_definition_changed(FtGuest *g, const FtDef *def);

JsonNode *guest_status(FtGuest *g);

/* Failure detection: called on every heartbeat tick. */
void guest_check_peer(FtGuest *g);

/*
 * kvm-ftd here sent no heartbeat for stalled_ms (it was stopped or not
 * scheduled): if that is longer than the peer's detection window allows,
 * the peer may have taken this host for dead.
 */
void guest_stalled(FtGuest *g, gint64 stalled_ms);

/* The protection generation this guest is at here (resync.h); NULL if not known. */
const char *guest_generation(FtGuest *g);

/* take-over, secondary-lost, stand-down: the peer's kvm-ftd speaking (decision.h). */
void guest_peer_event(FtGuest *g, const char *from, const char *name, JsonObject *data);

/* [[wall-clock ms, pause ms], ...] of the remembered checkpoints since since_us. */
JsonNode *guest_checkpoints(FtGuest *g, gint64 since_us);
