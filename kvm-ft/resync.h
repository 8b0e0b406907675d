/*
 * resync.h - bringing a returning peer's disks up to date while the guest runs
 *
 * Each copy of a protected guest tracks every write to its disks in a
 * dirty bitmap on the disk's own format node, from the moment the pair is
 * in sync.  After a split, the survivor's bitmap covers everything the
 * other copy may lack or have extra; a returning host whose disks belong
 * to the same generation of the pair gets only those blocks, anything
 * else gets a full copy.  A second bitmap, made disabled at protection,
 * starts at the split (resync_outage_begin): when nothing says a write
 * may have reached only one copy before it (ResyncSince), the copy moves
 * only what was written since the split, not since protection.
 *
 * The copy runs with the guest live: a mirror job in write-blocking mode
 * carries every new guest write to the peer synchronously, and a backup
 * job copies the old blocks underneath it.  The backup's copy-before-write
 * filter sits below the mirror, so an old block always reaches the peer
 * before the guest's newer write to it.  The mirror stays until COLO's
 * replication has taken over the guest's writes.
 */
#pragma once

#include <glib.h>

#include "config.h"
#include "engine.h"
#include "qmp.h"

/* The background copy's block jobs are named this plus the disk's index. */
#define RESYNC_COPY_JOB_PREFIX "kvmft-copy"

typedef struct {
    guint64 done;   /* bytes the copy has dealt with */
    guint64 total;  /* bytes it has to deal with */
    gboolean finished;
} ResyncProgress;

/*
 * Starts (new_epoch) or keeps tracking writes on every disk, in blocks of
 * granularity bytes (kvm-ftd.conf [resync] granularity-kib).  A new epoch
 * begins when the two copies are known to be the same: at protection.
 */
gboolean resync_track_writes(Qmp *q, const EngineLink *link, gboolean new_epoch,
                             guint granularity, GError **err);

/* Which writes an incremental copy carries. */
typedef enum {
    RESYNC_SINCE_SYNC,  /* all since the pair was last in sync */
    RESYNC_SINCE_SPLIT, /* those since this copy began to run alone */
} ResyncSince;

/*
 * The pair splits and this copy is about to run alone: the outage bitmap
 * starts counting (one QMP call per disk).  After the dead peer's channels
 * are cut (engine_*_cut), before the secondary's takeover, so that the
 * replication's commit of the secondary's own blocks counts too.
 */
gboolean resync_outage_begin(Qmp *q, const EngineLink *link, GError **err);

/* Whether every disk still has that write tracking (a restarted QEMU may not). */
gboolean resync_is_tracking(Qmp *q, const EngineLink *link, ResyncSince since,
                            gboolean *tracking, GError **err);

/*
 * The copy's targets, NBD clients of the secondary's export
 * (engine_secondary_setup), connected without waiting
 * (engine_sequence_run()), after what an earlier copy left behind is
 * removed.  FALSE with err if that or the first command fails: then
 * nothing is called, and opaque is still the caller's.
 */
gboolean resync_connect_targets(Qmp *q, const EngineLink *link, EngineDoneFunc done,
                                gpointer opaque, GDestroyNotify destroy, GError **err);

/*
 * Starts copying to the targets connected: the tracked blocks if
 * incremental, else everything.  rate_bytes caps the background copy (0: no
 * cap); the guest's own writes are never held back.
 */
gboolean resync_start(Qmp *q, const EngineLink *link, gboolean incremental,
                      ResyncSince since, guint64 rate_bytes, GError **err);

/* How far the background copy is; FALSE with err if it failed. */
gboolean resync_poll(Qmp *q, const EngineLink *link, ResyncProgress *progress,
                     GError **err);

/*
 * Once COLO replicates the guest's writes, the mirror and the copy end:
 * resync_finish_begin tells them to, then resync_finish_poll, called until
 * *ended, dismisses each that has ended.  No wait: failure detection runs
 * between the calls, and a secondary that dies meanwhile holds the jobs.
 */
gboolean resync_finish_begin(Qmp *q, const EngineLink *link, GError **err);
gboolean resync_finish_poll(Qmp *q, const EngineLink *link, gboolean *ended, GError **err);

/*
 * Every copy target's connection to the secondary cut, out of band: the
 * in-band commands that follow would wait behind a dead secondary's.
 */
void resync_cut_targets(Qmp *q, const EngineLink *link);

/*
 * Once the pair has split (the secondary is dropped or lost): the copy's
 * connections to it, left idle once the copy finished, go.  Nothing of them
 * there is no error.
 */
void resync_release_targets(Qmp *q, const EngineLink *link);

/*
 * Gives up a copy in progress, whatever state it is in, without waiting:
 * its jobs are cancelled.  The peer may be dead: its connections are
 * yanked first, or the guest's writes, which the mirror carries
 * synchronously, would wait on them.
 */
void resync_cancel(Qmp *q, const EngineLink *link);
/*
 * One look at the cancelled jobs: those that concluded are dismissed;
 * *ended once none is left.  FALSE with err if QEMU did not say.  Their
 * target nodes then go with resync_release_targets().
 */
gboolean resync_cancel_poll(Qmp *q, const EngineLink *link, gboolean *ended, GError **err);

/* What a host's generation file says of its disks besides the generation. */
typedef enum {
    GENERATION_IN_SYNC,   /* the same as the other copy's when last protected */
    GENERATION_DIVERGED,  /* this copy has run alone since: the other lacks writes */
    GENERATION_RECEIVING, /* a copy to these disks began and may have been cut short */
    /*
     * This copy runs the guest as the protected primary.  Should it stop
     * without closing its disks (power loss, SIGKILL), writes it had under
     * way may have reached its own disks and not the other's, and no
     * bitmap on either host knows which blocks those are.
     */
    GENERATION_PRIMARY,
} GenerationMark;

typedef enum {
    RESYNC_NONE,        /* the secondary's disks are the primary's */
    RESYNC_INCREMENTAL, /* they lack the blocks written since the pair was in sync */
    RESYNC_FULL,        /* nothing is known of them, or the primary's copy wins */
    RESYNC_OWN_PARTIAL, /* this host's disks are a copy cut short: never a source */
    RESYNC_PEER_NEWER,  /* the peer's disks hold what this host's lack: start it there */
    RESYNC_COMPARE,     /* copied by the administrator: compare them, all if they differ */
} ResyncPlan;

/*
 * What a new secondary's disks need, from the generations and marks both
 * hosts hold (NULL: none).  A pair that never had one starts from the
 * disks the administrator copied, once compared with the primary's (and
 * copied whole if they differ).  Disks a copy to them was writing are
 * never the source of one, nor are disks the peer's generation does not
 * know when the peer's does.  Of the same generation: nothing if neither
 * ran alone, the tracked blocks if this copy did (or the peer's was being
 * written), and the peer's copy wins if it alone ran alone.  Of different
 * generations, or both having run alone: this copy wins (the guest runs
 * here, or the administrator started it here).  Disks of a primary that
 * never closed them (GENERATION_PRIMARY) on either side, when the other
 * did not run alone since, differ in blocks no one tracked: everything is
 * copied.  Disks the peer had to
 * create blank (peer_blank) hold nothing: they get everything, also when
 * neither host knows a generation (a first protection).
 */
ResyncPlan resync_plan(const char *own, GenerationMark own_mark, const char *peer,
                       GenerationMark peer_mark, gboolean peer_blank);

/* The mark's name in the peer protocol, and back (FALSE if unknown). */
const char *resync_mark_name(GenerationMark mark);
gboolean resync_mark_parse(const char *name, GenerationMark *mark);

/*
 * The generation of the pair this host's disks belong to: a random id both
 * hosts store when they enter protection together.  NULL if unknown (a
 * blank host, a stranger's file).
 */
char *resync_generation_read(const FtConfig *cfg, const char *name, GenerationMark *mark);
gboolean resync_generation_write(const FtConfig *cfg, const char *name,
                                 const char *generation, GenerationMark mark, GError **err);
void resync_generation_forget(const FtConfig *cfg, const char *name);
