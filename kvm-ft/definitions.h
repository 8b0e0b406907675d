/*
 * definitions.h - the FT guests defined in libvirt on this host
 *
 * kvm-ftd follows libvirt's domain events.  An FT guest is validated when
 * it is defined, redefined, or its kvm-ft metadata changes (and when
 * kvm-ftd starts); then the peer's kvm-ftd is asked to define it too.
 * Anything wrong, here or there, refuses it.  Undefined here, its copy on
 * the peer goes too.  The outcome, and later the guest's state, is written
 * into the domain's metadata as the status element (status.h).
 *
 * A name is either a guest (in the daemon's table of guests, which this
 * module adds to and removes from) or refused, never both.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "daemon.h"
#include "ftdef.h"
#include "peer.h"
#include "virt.h"

/*
 * Why kvm-ftd refuses an <ft:protection level='ha'/> guest (issue 18, part 1):
 * it neither starts it nor asks the peer to define it; its DRBD resource
 * files come from ftctl drbd-config (drbdres.h).
 */
#define DEFINITIONS_HA_REFUSAL \
    "protection level ha: kvm-ftd does not run HA guests yet (their DRBD resources: " \
    "ftctl drbd-config)"

/* guests: the daemon's, name -> FtGuest, borrowed; it outlives the Definitions. */
Definitions *definitions_new(Daemon *d, GHashTable *guests, GError **err);
/* The status writes already queued still go out first. */
void definitions_free(Definitions *defs);

/* A VirtEventFunc: opaque is the Definitions. */
void definitions_on_virt_event(const VirtEvent *ev, gpointer opaque);

/* Each FT guest defined here, as if it had just been defined (kvm-ftd starts). */
void definitions_consider_all(Definitions *defs);

/* A session with that peer host is up: what it refused or left unanswered gets another go. */
void definitions_peer_up(Definitions *defs, const char *host);

/*
 * The peer's requests about definitions, define-guest and undefine-guest:
 * TRUE if method is one of them (it is answered, now); FALSE otherwise.
 */
gboolean definitions_peer_request(Definitions *defs, PeerConn *conn, guint64 id,
                                  const char *method, JsonObject *params);

/*
 * Records state (STATUS_READY, STATUS_REFUSED or a guest state name) and
 * reason as the status element in the domain's metadata (status.h), or
 * removes the element when state is NULL.  Returns at once: the libvirt
 * calls run in a thread of their own, one after the other, in order.
 */
void definitions_set_status(Definitions *defs, const char *name, const char *state,
                            const char *reason);

/* NULL if def pairs this host with host (with any host if NULL); else why not. */
char *definitions_pairing_error(Definitions *defs, const FtDef *def, const char *host);

/*
 * The FT guest defined here under that name: its definition (into *xml,
 * unless NULL) must be valid and pair this host with `with` (any host if
 * NULL).  Errors: VIRT_ERROR, FTDEF_ERROR (NOT_FT; INVALID, also for the
 * pairing).
 */
FtDef *definitions_read(Definitions *defs, const char *name, const char *with, char **xml,
                        GError **err);

/*
 * definitions_read() with any peer, and whether the domain runs, from
 * kvm-ftd's libvirt thread (libvirt answers only once it holds the
 * domain's job lock): then gets them on the main loop, def and xml
 * (transfer full) or the error, unless kvm-ftd quits first; free_data
 * runs either way.
 */
typedef void (*DefinitionsReadFunc)(FtDef *def, char *xml, gboolean active,
                                    const GError *error, gpointer data);
void definitions_read_async(Definitions *defs, const char *name, DefinitionsReadFunc then,
                            gpointer data, GDestroyNotify free_data);

/*
 * The same for a guest libvirt is starting (`virsh start`, from its qemu
 * hook): libvirt keeps the domain locked until the hook returns, so this
 * reads only the original kvm-ftd kept, not libvirt.
 */
FtDef *definitions_read_started(Definitions *defs, const char *name, char **xml,
                                GError **err);

/*
 * The ha guest defined here under that name, read as definitions_read()
 * reads (with any peer): the one level definitions_read() refuses, and
 * only that one (kvm-ftd answers for its DRBD resources: ha.h).  Errors:
 * VIRT_ERROR (NO_DOMAIN: no such domain), FTDEF_ERROR (NOT_FT; INVALID,
 * also for a guest of another level).
 */
FtDef *definitions_read_ha(Definitions *defs, const char *name, GError **err);

/*
 * The guest whose definition (xml) the peer host sender sent: valid,
 * pairing this host with sender, and what this host's administrator allows
 * a peer to run.  Else NULL, and why not, as the answer to sender's request.
 */
FtDef *definitions_from_peer(Definitions *defs, const char *xml, const char *sender,
                             GError **err);

/*
 * Whether this host runs the QEMU version (mine, libvirt's) that the peer
 * sender says it runs (theirs): the two copies of a guest must.  Else
 * FALSE, and why not.
 */
gboolean definitions_same_qemu(const FtConfig *cfg, const char *theirs, const char *mine,
                               const char *sender, GError **err);

/*
 * This host's QEMU version, asked of libvirt in kvm-ftd's libvirt thread:
 * then gets it, or the error, on the main loop unless kvm-ftd quits first;
 * free_data runs either way.
 */
typedef void (*DefinitionsVersionFunc)(const char *version, const GError *error,
                                       gpointer data);
void definitions_qemu_version(Definitions *defs, DefinitionsVersionFunc then, gpointer data,
                              GDestroyNotify free_data);

/* Why the guest of that name is refused here; NULL if it is not. */
const char *definitions_refusal(Definitions *defs, const char *name);

/* The name is about to be a guest here after all: it is refused no more. */
void definitions_forget_refusal(Definitions *defs, const char *name);

/*
 * Each refused guest (only the one named only, unless NULL) into b's open
 * array: as in a list result (name, role, state, error) or, with status,
 * as a GuestStatus (doc/interfaces.md) in which nothing runs.
 */
void definitions_add_refused(Definitions *defs, JsonBuilder *b, const char *only,
                             gboolean status);
