/*
 * ha.h - the HA level's DRBD side: the fence-peer verdict and the handlers' events
 *
 * The DRBD resources of an <ft:protection level='ha'/> guest (drbdres.h)
 * name kvm-ft-drbd-handler as their fence-peer, after-resync-target /
 * unfence-peer and split-brain handler; it asks kvm-ftd with the control
 * command drbd-handler (doc/interfaces.md), and this module answers.
 *
 * fence-peer: DRBD froze the resource's I/O (or holds a promotion)
 * because the peer is unreachable, and waits for the handler.  A cut link
 * and a dead peer look the same, so the etcd witness decides, as for ft
 * guests: this host claims the resource's current DRBD data generation
 * (its current UUID, from `drbdadm get-gi`), key
 * /kvm-ft/PAIR/GUEST/drbd-UUID.  Both hosts see the same current UUID
 * when the link is cut (DRBD makes a new one only after fence-peer
 * answered), so exactly one of them can own it, for ever: the verdict is
 * "peer-fenced" (the handler exits 7, DRBD goes on) only when the witness
 * gave it to this host; anything else -- no witness, the witness gave it
 * to the peer, no answer, a get-gi that says nothing -- is "refused" (exit
 * 1: I/O stays frozen, a promotion is refused).  Never "the peer is dead"
 * (5) on a guess.
 *
 * The decision is asynchronous; the handler asks again while it is
 * "pending".  A final verdict goes to the next request for that resource
 * once and is then forgotten (or after HA_VERDICT_KEEP_MS): a later
 * fence-peer decides anew.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "daemon.h"

/* The handlers DRBD calls kvm-ft-drbd-handler for (drbdres.c writes them). */
#define HA_HANDLER_FENCE_PEER "fence-peer"
#define HA_HANDLER_AFTER_RESYNC_TARGET "after-resync-target" /* DRBD 8.4 */
#define HA_HANDLER_UNFENCE_PEER "unfence-peer"               /* DRBD 9 */
#define HA_HANDLER_SPLIT_BRAIN "split-brain"

/* fence-peer exit codes (DRBD's): the peer is fenced; anything that keeps I/O frozen. */
#define HA_EXIT_PEER_FENCED 7
#define HA_EXIT_REFUSED 1

#define HA_ERROR ha_error_quark()
GQuark ha_error_quark(void);

typedef enum {
    HA_ERROR_INVALID, /* a request or a command's output that makes no sense */
    HA_ERROR_UNKNOWN, /* no ha guest here has that resource */
} HaError;

typedef struct Ha Ha;

Ha *ha_new(Daemon *d);
/* DRBD commands still running are killed (drbdcmd_free()). */
void ha_free(Ha *ha);

/*
 * The control command drbd-handler: {"handler": NAME, "resource": R}.
 * fence-peer: {"verdict": "pending"|"peer-fenced"|"refused", "reason",
 * "owner": str|null, "generation": str|null}; the other handlers: null.
 * An error for a malformed request or a resource of no ha guest here.
 * Reads the guest's definition from libvirt synchronously, as the other
 * control commands do (not while a fence-peer decision is pending).
 */
JsonNode *ha_handler_request(Daemon *d, JsonObject *req, GError **err);

/* Whether kvm-ft-drbd-handler knows the handler name. */
gboolean ha_handler_known(const char *handler);

/*
 * The resource's current data generation from `drbdadm get-gi R`'s
 * output: the first field of the first line of the form
 * "XXXXXXXXXXXXXXXX:...:..." (16 hex digits, then colon-separated hex
 * fields: DRBD 8.4 prints one such line, DRBD 9 one per peer), in upper
 * case with the lowest bit cleared (DRBD sets it in a primary's current
 * UUID only, and ignores it when comparing).  NULL with HA_ERROR_INVALID
 * (quoting the output) for anything else, or for a resource that has no
 * data generation yet (0 or DRBD's "just created" 4).
 */
char *ha_generation_from_get_gi(const char *output, GError **err);

/*
 * The guest names a resource name "kvmft-GUEST-TARGET" can stand for:
 * guest and target may both contain '-', so one per '-' after "kvmft-"
 * with something on both sides, longest guest first (NULL-terminated;
 * empty when the name does not start with "kvmft-").
 */
char **ha_resource_guests(const char *resource);

/* ---- the fence-peer verdicts, by resource (exported for the unit tests) ---- */

typedef enum {
    HA_VERDICT_PENDING,
    HA_VERDICT_PEER_FENCED,
    HA_VERDICT_REFUSED,
} HaVerdictKind;

/* "pending", "peer-fenced", "refused" */
const char *ha_verdict_name(HaVerdictKind kind);

typedef struct {
    HaVerdictKind kind;
    char *guest;
    char *reason;     /* NULL while pending */
    char *owner;      /* the witness's answer, or NULL */
    char *generation; /* the current UUID claimed, or NULL */
} HaVerdict;

void ha_verdict_clear(HaVerdict *v);

typedef struct HaVerdicts HaVerdicts;

HaVerdicts *ha_verdicts_new(void);
void ha_verdicts_free(HaVerdicts *t);

/*
 * What to answer for resource at now_us (monotonic), if anything: TRUE
 * and *out (cleared by the caller) pending while its decision is under
 * way, or its final verdict, which is forgotten now.  FALSE when there is
 * none (a final verdict older than HA_VERDICT_KEEP_MS is forgotten): the
 * caller starts a decision.
 */
gboolean ha_verdicts_take(HaVerdicts *t, const char *resource, gint64 now_us, HaVerdict *out);

/* A decision for resource (of guest) is under way from now on; its number. */
guint64 ha_verdicts_start(HaVerdicts *t, const char *resource, const char *guest);

/*
 * Decision seq of resource ends with kind (not pending), reason, owner and
 * generation (both may be NULL), kept from now_us.  FALSE, changing
 * nothing, when that decision is no longer under way.
 */
gboolean ha_verdicts_settle(HaVerdicts *t, const char *resource, guint64 seq,
                            HaVerdictKind kind, const char *reason, const char *owner,
                            const char *generation, gint64 now_us);
