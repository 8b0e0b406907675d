/* output="auto": the rule that moves a guest between compare and passive (output.h). */
#include <string.h>

#include "output.h"

void output_auto_init(OutputAuto *a, gint64 now_us, guint64 checkpoints, guint64 forced)
{
    output_auto_clear(a);
    a->mode = FTDEF_OUTPUT_COMPARE;
    a->window_start_us = now_us;
    a->window_checkpoints = checkpoints;
    a->window_forced = forced;
    a->hold_s = OUTPUT_AUTO_HOLD_MIN_S;
}

void output_auto_clear(OutputAuto *a)
{
    g_free(a->last_reason);
    memset(a, 0, sizeof *a);
}

static void new_window(OutputAuto *a, gint64 now_us, guint64 checkpoints, guint64 forced)
{
    a->window_start_us = now_us;
    a->window_checkpoints = checkpoints;
    a->window_forced = forced;
}

static gboolean window_ended(const OutputAuto *a, gint64 now_us)
{
    return now_us - a->window_start_us >= (gint64)OUTPUT_AUTO_WINDOW_MS * 1000;
}

OutputAutoDue output_auto_due(const OutputAuto *a, gint64 now_us)
{
    if (window_ended(a, now_us))
        return OUTPUT_AUTO_WINDOW;
    if (a->mode == FTDEF_OUTPUT_COMPARE && !a->probing)
        return OUTPUT_AUTO_LAG_CHECK;
    return OUTPUT_AUTO_NOTHING;
}

/* A secondary this far behind costs compare-mode replies more than passive ones. */
static gboolean secondary_too_late(const OutputSample *sample)
{
    return sample->lag_ms >= OUTPUT_AUTO_LAG_MIN_MS &&
           sample->lag_ms >= OUTPUT_AUTO_LAG_FACTOR * sample->reply_cost_ms;
}

static char *late_reason(const OutputAuto *a, const OutputSample *sample)
{
    return g_strdup_printf("the secondary's copies come late: replies wait up to "
                           "%" G_GINT64_FORMAT " ms for them, a passive reply about %.0f ms "
                           "(next try of compare in %u s)",
                           sample->lag_ms, sample->reply_cost_ms, a->hold_s);
}

gboolean output_auto_evaluate(OutputAuto *a, gint64 now_us, const OutputSample *sample,
                              FtOutputMode *to, char **reason)
{
    const gint64 elapsed_us = now_us - a->window_start_us;
    const guint64 checkpoints = sample->checkpoints;
    const guint64 forced = sample->forced;
    double seconds, forced_per_s, share;
    gboolean differ, late;
    guint64 n, nf;

    switch (output_auto_due(a, now_us)) {
    case OUTPUT_AUTO_NOTHING:
        return FALSE;
    case OUTPUT_AUTO_LAG_CHECK:
        if (!secondary_too_late(sample))
            return FALSE;
        new_window(a, now_us, sample->checkpoints, sample->forced);
        *to = FTDEF_OUTPUT_PASSIVE;
        *reason = late_reason(a, sample);
        return TRUE;
    case OUTPUT_AUTO_WINDOW:
        break;
    }
    /* Counters restart when a new protection starts: that window says nothing. */
    if (checkpoints < a->window_checkpoints || forced < a->window_forced) {
        new_window(a, now_us, checkpoints, forced);
        return FALSE;
    }
    seconds = elapsed_us / 1e6;
    n = checkpoints - a->window_checkpoints;
    nf = forced - a->window_forced;
    forced_per_s = nf / seconds;
    share = n ? (double)nf / n : 0.0;
    new_window(a, now_us, checkpoints, forced);

    if (a->mode == FTDEF_OUTPUT_COMPARE) {
        const gboolean was_probe = a->probing;

        a->probing = FALSE;
        differ = forced_per_s >= OUTPUT_AUTO_FORCED_PER_S && share >= OUTPUT_AUTO_FORCED_SHARE;
        late = secondary_too_late(sample);
        if (!differ && !late) {
            if (was_probe)
                a->hold_s = OUTPUT_AUTO_HOLD_MIN_S;
            return FALSE;
        }
        if (was_probe)
            a->hold_s = MIN(a->hold_s * 2, OUTPUT_AUTO_HOLD_MAX_S);
        *to = FTDEF_OUTPUT_PASSIVE;
        if (differ)
            *reason = g_strdup_printf("replies differ between the copies: %.1f checkpoints/s "
                                      "forced by output (%.0f%% of all) in %.0f s; passive "
                                      "releases them without waiting for the secondary "
                                      "(next try of compare in %u s)",
                                      forced_per_s, share * 100, seconds, a->hold_s);
        else
            *reason = late_reason(a, sample);
        return TRUE;
    }
    if (now_us - a->passive_since_us < (gint64)a->hold_s * G_USEC_PER_SEC)
        return FALSE;
    *to = FTDEF_OUTPUT_COMPARE;
    *reason = g_strdup_printf("trying compare after %u s in passive: only compare shows "
                              "whether the replies agree again", a->hold_s);
    return TRUE;
}

void output_auto_switched(OutputAuto *a, gint64 now_us, FtOutputMode to, const char *reason)
{
    a->mode = to;
    a->switches++;
    g_free(a->last_reason);
    a->last_reason = g_strdup(reason);
    if (to == FTDEF_OUTPUT_PASSIVE) {
        a->passive_since_us = now_us;
    } else {
        a->probing = TRUE;
    }
}
