/*
 * resync.h - bringing a returning peer's disks up to date while the guest runs
 *
 * Each copy of a protected guest tracks every write to its disks in a
 * dirty bitmap on the disk's own format node, from the moment the pair is
 * in sync.  After a split, the survivor's bitmap covers everything the
 * other copy may lack or have extra; a returning host whose disks belong
 * to the same generation of the pair gets only those blocks, anything
 * else gets a full copy.
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
 * Starts (new_epoch) or keeps tracking writes on every disk.  A new epoch
 * begins when the two copies are known to be the same: at protection.
 */
gboolean resync_track_writes(Qmp *q, const EngineLink *link, gboolean new_epoch,
                             GError **err);

/* Whether every disk still has its write tracking (a restarted QEMU may not). */
gboolean resync_is_tracking(Qmp *q, const EngineLink *link, gboolean *tracking,
                            GError **err);

/* Virtual size of each disk, from QEMU (the peer creates blank disks this size). */
GArray *resync_disk_sizes(Qmp *q, const EngineLink *link, GError **err);

/*
 * Starts copying to the secondary's NBD export (engine_secondary_setup):
 * the tracked blocks if incremental, else everything.  rate_bytes caps the
 * background copy (0: no cap); the guest's own writes are never held back.
 */
gboolean resync_start(Qmp *q, const EngineLink *link, gboolean incremental,
                      guint64 rate_bytes, GError **err);

/* How far the background copy is; FALSE with err if it failed. */
gboolean resync_poll(Qmp *q, const EngineLink *link, ResyncProgress *progress,
                     GError **err);

/* Once COLO replicates the guest's writes: the mirror and its connections go. */
gboolean resync_finish(Qmp *q, const EngineLink *link, GError **err);

/*
 * Gives up a copy in progress, whatever state it is in.  The peer may be
 * dead: its connections are yanked first, or the guest's writes, which the
 * mirror carries synchronously, would wait on them.
 */
void resync_abort(Qmp *q, const EngineLink *link);

typedef enum {
    RESYNC_NONE,        /* the secondary's disks are the primary's */
    RESYNC_INCREMENTAL, /* they lack the blocks written since the pair was in sync */
    RESYNC_FULL,        /* nothing is known of them */
} ResyncPlan;

/*
 * What a new secondary's disks need, from the generations both hosts hold
 * (NULL: none).  A pair that never had one starts from the disks the
 * administrator copied; the same generation on a copy that has not run
 * alone since needs nothing; the same generation otherwise, the tracked
 * blocks; anything else, everything.
 */
ResyncPlan resync_plan(const char *own, gboolean own_diverged, const char *peer);

/*
 * The generation of the pair this host's disks belong to: a random id both
 * hosts store when they enter protection together.  NULL if unknown (a
 * blank host, or one whose copy was being rewritten when it stopped).
 * diverged: this copy has run alone since, so the other one lacks writes.
 */
char *resync_generation_read(const FtConfig *cfg, const char *name, gboolean *diverged);
gboolean resync_generation_write(const FtConfig *cfg, const char *name,
                                 const char *generation, gboolean diverged, GError **err);
void resync_generation_forget(const FtConfig *cfg, const char *name);
