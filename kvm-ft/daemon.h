/*
 * daemon.h - what one kvm-ftd holds: its config, libvirtd, the peer
 * link, the control socket and the guests it protects, and how requests
 * reach them; the guests' definitions in libvirt are definitions.h's
 */
#pragma once

#include <glib.h>

#include "config.h"
#include "control.h"
#include "peer.h"
#include "virt.h"
#include "witness.h"

typedef struct Daemon Daemon;
typedef struct Definitions Definitions; /* definitions.h */
typedef struct FtGuest FtGuest;         /* guest.h */
typedef struct Ha Ha;                   /* ha.h */

Daemon *daemon_new(FtConfig *cfg /* taken */, GError **err);
void daemon_free(Daemon *d);
void daemon_run(Daemon *d);
void daemon_quit(Daemon *d);
/* daemon_free() has begun: answers still on their way change nothing now. */
gboolean daemon_quitting(Daemon *d);

/* How far behind its schedule the failure detector is now: the main loop's current stall. */
gint64 daemon_stalled_ms(Daemon *d);

const FtConfig *daemon_config(Daemon *d);
Virt *daemon_virt(Daemon *d);
/* The witness that decides solo runs, or NULL when none is configured. */
Witness *daemon_witness(Daemon *d);
Definitions *daemon_definitions(Daemon *d);
/* The ha guests' DRBD side (ha.h). */
Ha *daemon_ha(Daemon *d);
/* The guest of that name on this host, or NULL. */
FtGuest *daemon_find_guest(Daemon *d, const char *name);

/*
 * A request to the kvm-ftd at addr, connecting first when needed.  cb runs
 * exactly once, with the result or the error (connect failure included);
 * once daemon_free() has begun, at once, with an error.
 */
void daemon_peer_call(Daemon *d, const char *addr, const char *method,
                      JsonObject *params, guint timeout_ms, PeerReplyFunc cb,
                      gpointer opaque);

/* Answers the peer's request id with an error, and logs the refusal. */
void daemon_reply_error(PeerConn *conn, guint64 id, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/* What one path to a peer host shows, for failure detection. */
typedef enum {
    PEER_PATH_NONE,    /* no such path configured */
    PEER_PATH_ALIVE,   /* its kvm-ftd answers within the detection window */
    PEER_PATH_HOST_UP, /* its kernel answers, its kvm-ftd does not */
    PEER_PATH_SILENT,  /* nothing within the window: host down or path cut */
} PeerPath;

const char *peer_path_name(PeerPath path);

/* Keeps a session to addr (NULL: nothing) up for failure detection. */
void daemon_watch_peer(Daemon *d, const char *addr);
/* When the peer's kvm-ftd last showed itself on that path (monotonic µs, 0: never). */
gint64 daemon_peer_heard_us(Daemon *d, const char *addr);
/* The path's state, judged over that many detection windows. */
PeerPath daemon_peer_path(Daemon *d, const char *addr, guint windows);

/* Whether an authenticated session with that host is up. */
gboolean daemon_peer_connected(Daemon *d, const char *host);

/* Pushes a state change to every `ftctl events` follower. */
void daemon_broadcast(Daemon *d, JsonNode *event);
