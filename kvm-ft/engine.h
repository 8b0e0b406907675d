/*
 * engine.h - drives QEMU's COLO checkpointing engine over QMP
 *
 * The QMP sequences that turn two plain QEMUs into a COLO pair live here
 * and nowhere else.  Each call is synchronous with a per-command timeout:
 * a stalled QEMU costs at most that timeout, never the daemon.
 */
#pragma once

#include <glib.h>

#include "ftdef.h"
#include "qmp.h"

typedef struct {
    const FtDef *def;
    const char *primary_addr;   /* dedicated-link address of the primary host */
    const char *secondary_addr; /* dedicated-link address of the secondary host */
    guint timeout_ms;           /* per QMP command */
    const char *run_dir;        /* kvm-ftd's own (0700): the primary's local channels */
    const char *tls_dir;        /* keys.psk of the channels between the hosts (tlspsk.h);
                                 * NULL: they run in clear ([replication] tls = no) */
} EngineLink;

/*
 * The credentials of QEMU's TLS channels between the hosts, once per QEMU
 * (a survivor keeps those it had as the secondary): the server side's and
 * the client's.  Nothing without link->tls_dir.
 */
gboolean engine_add_tls_creds(Qmp *q, const EngineLink *link, GError **err);
/* The id of the client-side credentials, for an NBD client; NULL without TLS. */
const char *engine_tls_client(const EngineLink *link);

/*
 * One QMP command with args (consumed; NULL: none) within link's deadline;
 * the error names the command.  For the QMP steps other modules take on
 * the engine's QEMU (resync.h, verify.h).
 */
gboolean engine_run(Qmp *q, const EngineLink *link, const char *command, JsonObject *args,
                    GError **err);
/* The same for a query: its answer, owned by the caller, or NULL. */
JsonNode *engine_query(Qmp *q, const EngineLink *link, const char *command, JsonObject *args,
                       GError **err);
/*
 * Commands run one after the other without waiting for any (qmp.h's
 * qmp_call_async()): for steps QEMU takes long over in its main loop, an
 * NBD client's connect above all (~90 ms under TCG), which the daemon's
 * failure detector must not wait for.  done gets NULL once every command
 * succeeded, or the first failure, after which nothing more is sent.
 * Exactly one of done and destroy is called (destroy: the QMP connection
 * was freed first).
 */
typedef void (*EngineDoneFunc)(const GError *err, gpointer opaque);
typedef struct EngineSequence EngineSequence;

EngineSequence *engine_sequence_new(void);
/* args: consumed; NULL: none. */
void engine_sequence_add(EngineSequence *seq, const char *command, JsonObject *args);
/*
 * Takes seq.  FALSE with err if the first command cannot be sent: then
 * nothing is called, and opaque is still the caller's.
 */
gboolean engine_sequence_run(EngineSequence *seq, Qmp *q, const EngineLink *link,
                             EngineDoneFunc done, gpointer opaque, GDestroyNotify destroy,
                             GError **err);

/* Arguments of one string member, as most teardown steps take. */
JsonObject *engine_arg(const char *key, const char *value);
/* A QMP SocketAddress of a unix socket. */
JsonObject *engine_unix_addr(const char *path);
/*
 * Out of band: cuts the connection of an NBD client node at once, even
 * while QEMU's main loop waits on it.  Nothing if it has none.
 */
void engine_yank_node(Qmp *q, const EngineLink *link, const char *node);

/* Secondary: COLO filters, NBD export of its disks, incoming migration. */
gboolean engine_secondary_setup(Qmp *q, const EngineLink *link, GError **err);

/*
 * Primary: the channels the secondary's filters connect to.  Before
 * anything holds the guest's output: the secondary retries only every
 * second, so engine_primary_channels_connected() is polled until they have.
 */
gboolean engine_primary_open_channels(Qmp *q, const EngineLink *link, GError **err);

/*
 * Whether the secondary's filters have connected to the channels yet.
 * After deadline_us (monotonic) without them: FALSE with the reason.
 */
gboolean engine_primary_channels_connected(Qmp *q, const EngineLink *link, gint64 deadline_us,
                                           gboolean *connected, GError **err);

/*
 * Primary: the replication children, NBD clients of the secondary's
 * export, connected without waiting (engine_sequence_run()); each is
 * attached to its disk only by engine_primary_setup*().
 */
gboolean engine_primary_connect_replication(Qmp *q, const EngineLink *link, EngineDoneFunc done,
                                            gpointer opaque, GDestroyNotify destroy,
                                            GError **err);

/* Primary, paused, its replication connected: colo-compare and filters,
 * the replication attached, then the migration that enters COLO. */
gboolean engine_primary_setup(Qmp *q, const EngineLink *link, GError **err);

/*
 * Primary, running, its replication connected: the replication attached and
 * the migration, which pauses before
 * its switchover (status "pre-switchover", VM stopped) for
 * engine_primary_switch_over() to add the filters and go on.  The guest's
 * output is held only from then on, not through the whole precopy.  Needs
 * qemu-patches 0007.
 */
gboolean engine_primary_setup_live(Qmp *q, const EngineLink *link, GError **err);
/*
 * migrate-continue is sent, not waited for: QEMU answers it only once its
 * main loop runs again, after the migration thread has sent the last pass
 * with QEMU's lock held -- to a secondary that lost power, until the
 * connection is cut.  The migration's status tells the outcome.
 */
gboolean engine_primary_switch_over(Qmp *q, const EngineLink *link, GError **err);

/* The primary's longest time between two checkpoints, changed while in COLO. */
gboolean engine_set_checkpoint_interval(Qmp *q, const EngineLink *link, guint interval_ms,
                                        GError **err);

/*
 * output="auto" (output.h) moves a protected guest between compare and
 * passive: the secondary's output goes to the primary's colo-compare or
 * nowhere, and the primary's colo-compare waits for the secondary's copy
 * (compare-timeout-ms) or for the shortest epoch.  Either order is safe;
 * the secondary goes first into compare and last out of it.
 */
gboolean engine_secondary_set_output(Qmp *q, const EngineLink *link, FtOutputMode mode,
                                     GError **err);
gboolean engine_primary_set_output(Qmp *q, const EngineLink *link, FtOutputMode mode,
                                   GError **err);
/* How long colo-compare now waits for the secondary's copy of a reply (its lag estimate). */
gboolean engine_primary_lag(Qmp *q, const EngineLink *link, gint64 *lag_ms, GError **err);
/*
 * How many checkpoints colo-compare forced because the secondary sent a
 * different packet, and because a packet's counterpart did not come in time.
 */
gboolean engine_primary_forced(Qmp *q, const EngineLink *link, gint64 *difference,
                               gint64 *expired, GError **err);

/*
 * Why the primary's COLO took a checkpoint, judged from when it paused: its
 * periodic timer runs from the start of the previous checkpoint, and any
 * checkpoint a difference or a reply left without the secondary's copy
 * forces restarts it.  So a pause that came clearly before the interval was
 * up was forced (QEMU 7.2 does not say which of the two forced it).
 * prev_stop_us: when the previous checkpoint paused the guest (0: none yet).
 */
typedef enum {
    ENGINE_CHECKPOINT_PERIODIC,
    ENGINE_CHECKPOINT_FORCED,
} EngineCheckpointCause;

EngineCheckpointCause engine_checkpoint_cause(gint64 prev_stop_us, gint64 stop_us,
                                              guint interval_ms);

/* query-colo-status: mode is "none", "primary" or "secondary". */
gboolean engine_colo_status(Qmp *q, guint timeout_ms, char **mode,
                            char **reason, GError **err);
/* The same from its answer (qmp_call_async()). */
gboolean engine_colo_status_parse(JsonNode *answer, char **mode, char **reason, GError **err);

/*
 * query-status's run state: "running", "paused" (stopped by a user), "colo"
 * (stopped for a checkpoint), ...
 */
char *engine_run_state(Qmp *q, guint timeout_ms, GError **err);

/* query-status's status, from its answer (guest_query()). */
char *engine_run_state_parse(JsonNode *answer, GError **err);

/* query-migrate's status ("colo" once the pair is in COLO), from its answer (guest_query()). */
char *engine_migration_status_parse(JsonNode *answer, GError **err);

/*
 * Failover's first step on either side: the dead peer's channels are
 * yanked, out of band.  A dead host sends no RST: until then the guest's
 * disk I/O waits on the NBD socket, and a secondary loading a checkpoint
 * holds QEMU's lock while it waits for the rest of it, so that no in-band
 * QMP command is answered.  Each function below needs it done first.
 */
void engine_secondary_cut(Qmp *q, const EngineLink *link);
void engine_primary_cut(Qmp *q, const EngineLink *link);

/*
 * Failover, secondary side: the primary is gone.  Stops serving NBD,
 * leaves COLO (the guest resumes from the last checkpoint) and removes
 * the filters that fed it the primary's packets, so it serves the LAN.
 */
gboolean engine_secondary_takeover(Qmp *q, const EngineLink *link, GError **err);

/*
 * Failover, primary side: the secondary is gone.  The replication child
 * and colo-compare go, and the primary leaves COLO running alone.
 */
gboolean engine_primary_drop_secondary(Qmp *q, const EngineLink *link, GError **err);

/* Primary: a first sync still under way stops (the guest runs on unprotected). */
gboolean engine_cancel_first_sync(Qmp *q, const EngineLink *link, GError **err);
