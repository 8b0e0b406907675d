/*
 * output="auto": which output mode serves a protected guest better, decided
 * from its checkpoints alone.
 *
 * Compare mode pays one checkpoint per reply that differs between the copies
 * (or that the secondary never sends), and that reply also waits for the
 * secondary's copy first.  Passive mode pays one checkpoint per burst of
 * output, after the shortest epoch, and never waits for the secondary.
 * A guest whose replies nearly all differ (a nondeterministic protocol, TLS)
 * checkpoints on output in either mode, so passive serves it better: no
 * wait for the secondary, and a burst of differing packets shares one
 * checkpoint instead of forcing one each.  A guest whose replies agree
 * releases them at once in compare mode, and passive would hold every one
 * of them for a checkpoint.
 *
 * A guest whose replies agree but whose secondary runs far behind (its
 * copies come late: a loaded host, a guest that keeps its vCPU busy) makes
 * every reply in compare mode wait for the secondary's copy; passive makes
 * it wait for one epoch and one checkpoint instead.
 *
 * The rule, evaluated every OUTPUT_AUTO_WINDOW_MS:
 *   compare -> passive  when, in the last window, output forced at least
 *                       OUTPUT_AUTO_FORCED_PER_S checkpoints a second and at
 *                       least OUTPUT_AUTO_FORCED_SHARE of all checkpoints;
 *                       or when the secondary's copies came so late that a
 *                       reply waited for them (colo-compare's lag estimate,
 *                       qemu-patches 0009) at least OUTPUT_AUTO_LAG_FACTOR
 *                       times what a passive reply waits (the epoch plus a
 *                       checkpoint's pause), and at least OUTPUT_AUTO_LAG_MIN_MS;
 *                       This lag rule needs no window: in compare it is
 *                       also checked every OUTPUT_AUTO_LAG_CHECK_MS, so a
 *                       load that starts on a late secondary does not wait
 *                       up to a window in compare (a database's replies then
 *                       stall for seconds: test_db auto, 3 seconds without a
 *                       transaction).  Not in a probe's first window: the
 *                       estimate still holds the lag from before passive
 *                       until enough fresh replies have been compared;
 *   passive -> compare  as a probe, once the guest has been passive for its
 *                       hold time (OUTPUT_AUTO_HOLD_MIN_S, doubled each time a
 *                       probe ends back in passive within one window, up to
 *                       OUTPUT_AUTO_HOLD_MAX_S): passive hides whether the
 *                       replies would agree, so only compare can tell.
 * Switching is safe at any moment: in both modes a reply leaves only once it
 * was compared or a checkpoint covering it reached the secondary.
 */
#pragma once

#include <glib.h>

#include "ftdef.h"

#define OUTPUT_AUTO_WINDOW_MS 5000
/*
 * A stream of differing replies, not a few: at the default 2 s interval the
 * share alone already asks 4.5 a second.  An ndet client at 20 requests/s
 * forces 11-12 a second on a quiet lab machine and fewer when the machine is
 * loaded (test_output auto once stayed in compare under tools/check at 10).
 */
#define OUTPUT_AUTO_FORCED_PER_S 5.0
#define OUTPUT_AUTO_FORCED_SHARE 0.9
#define OUTPUT_AUTO_HOLD_MIN_S 30
#define OUTPUT_AUTO_HOLD_MAX_S 480
#define OUTPUT_AUTO_LAG_FACTOR 3
/*
 * The lag is colo-compare's bound (smoothed lag plus four deviations), not
 * its mean: a secondary 50 ms late by that bound answered a deterministic
 * client about as fast as passive did (test_output auto, 23 ms RTT p50), so
 * only a secondary clearly behind counts.
 */
#define OUTPUT_AUTO_LAG_MIN_MS 100
#define OUTPUT_AUTO_LAG_CHECK_MS 1000

/* What a window's end shows of the guest. */
typedef struct {
    guint64 checkpoints;  /* all, since protection began */
    guint64 forced;       /* of them, forced by output */
    gint64 lag_ms;        /* how long a reply waits for the secondary's copy; -1: unknown */
    double reply_cost_ms; /* what a reply waits in passive mode: epoch + checkpoint pause */
} OutputSample;

typedef struct {
    FtOutputMode mode;          /* compare or passive: what runs now */
    gint64 window_start_us;
    guint64 window_checkpoints; /* counters at the window's start */
    guint64 window_forced;
    gint64 passive_since_us;
    guint hold_s;               /* how long passive lasts before the next probe */
    gboolean probing;           /* in compare for a probe's first window */
    guint switches;
    char *last_reason;
} OutputAuto;

/* Starts in compare at now_us with the guest's current checkpoint counters. */
void output_auto_init(OutputAuto *a, gint64 now_us, guint64 checkpoints, guint64 forced);
void output_auto_clear(OutputAuto *a);

/* What the caller gathers for output_auto_evaluate() now. */
typedef enum {
    OUTPUT_AUTO_NOTHING,   /* nothing is due */
    OUTPUT_AUTO_LAG_CHECK, /* the counters, the lag and, when the lag is at least
                            * OUTPUT_AUTO_LAG_MIN_MS, the reply cost */
    OUTPUT_AUTO_WINDOW,    /* a window has ended: the whole sample */
} OutputAutoDue;

/*
 * Called every OUTPUT_AUTO_LAG_CHECK_MS with what the guest shows now.
 * Returns TRUE when the guest should move to *to; *reason (for the log, the
 * event and ftctl status) is then set, newly allocated.  The caller applies
 * the switch and reports it with output_auto_switched(); until then nothing
 * changes.
 */
gboolean output_auto_evaluate(OutputAuto *a, gint64 now_us, const OutputSample *sample,
                              FtOutputMode *to, char **reason);
OutputAutoDue output_auto_due(const OutputAuto *a, gint64 now_us);
void output_auto_switched(OutputAuto *a, gint64 now_us, FtOutputMode to, const char *reason);
