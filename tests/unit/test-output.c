/* test-output.c - output="auto": when a guest moves between compare and passive */
#include <check.h>
#include <glib.h>
#include <string.h>

#include "output.h"
#include "run-suite.h"

#define S G_USEC_PER_SEC
#define T0 (G_GINT64_CONSTANT(1000) * S)
#define WINDOW (OUTPUT_AUTO_WINDOW_MS * G_GINT64_CONSTANT(1000))

/* A sample with the secondary's lag unknown. */
static OutputSample counts(guint64 n, guint64 f)
{
    OutputSample s = { .checkpoints = n, .forced = f, .lag_ms = -1, .reply_cost_ms = 15 };

    return s;
}

static gboolean evaluate(OutputAuto *a, gint64 now, guint64 n, guint64 f, FtOutputMode *to,
                         char **reason)
{
    OutputSample s = counts(n, f);

    return output_auto_evaluate(a, now, &s, to, reason);
}

/* One window of n checkpoints, f of them forced; returns whether it switches. */
static gboolean window(OutputAuto *a, gint64 *now, guint64 *n, guint64 *f, guint64 add_n,
                       guint64 add_f, FtOutputMode *to, char **reason)
{
    *now += WINDOW;
    *n += add_n;
    *f += add_f;
    g_clear_pointer(reason, g_free);
    return evaluate(a, *now, *n, *f, to, reason);
}

START_TEST(agreeing_output_stays_compare)
{
    OutputAuto a = { 0 };
    gint64 now = T0;
    guint64 n = 0, f = 0;
    FtOutputMode to;
    g_autofree char *reason = NULL;

    output_auto_init(&a, now, n, f);
    /* a few forced checkpoints, and the periodic ones */
    for (int i = 0; i < 10; i++)
        ck_assert(!window(&a, &now, &n, &f, 5, 3, &to, &reason));
    /* many forced, but periodic ones are a large share: under the share */
    ck_assert(!window(&a, &now, &n, &f, 100, 60, &to, &reason));
    /* all forced, but a trickle (4 a second): under the rate */
    ck_assert(!window(&a, &now, &n, &f, 20, 20, &to, &reason));
    ck_assert_int_eq(a.mode, FTDEF_OUTPUT_COMPARE);
    output_auto_clear(&a);
}
END_TEST

START_TEST(differing_output_goes_passive)
{
    OutputAuto a = { 0 };
    gint64 now = T0;
    guint64 n = 0, f = 0;
    FtOutputMode to;
    g_autofree char *reason = NULL;

    output_auto_init(&a, now, n, f);
    /* 12 forced a second, all of them forced */
    ck_assert(window(&a, &now, &n, &f, 60, 60, &to, &reason));
    ck_assert_int_eq(to, FTDEF_OUTPUT_PASSIVE);
    ck_assert_ptr_nonnull(strstr(reason, "12.0 checkpoints/s"));
    output_auto_clear(&a);

    /* a loaded machine forces fewer a second: 8, still all of them */
    output_auto_init(&a, now, n, f);
    g_clear_pointer(&reason, g_free);
    ck_assert(window(&a, &now, &n, &f, 40, 40, &to, &reason));
    ck_assert_int_eq(to, FTDEF_OUTPUT_PASSIVE);
    /* nothing changes until the caller applied it */
    ck_assert_int_eq(a.mode, FTDEF_OUTPUT_COMPARE);
    output_auto_switched(&a, now, to, reason);
    ck_assert_int_eq(a.mode, FTDEF_OUTPUT_PASSIVE);
    ck_assert_uint_eq(a.switches, 1);
    ck_assert_str_eq(a.last_reason, reason);
    output_auto_clear(&a);
}
END_TEST

START_TEST(short_window_decides_nothing)
{
    OutputAuto a = { 0 };
    FtOutputMode to;
    char *reason = NULL;

    output_auto_init(&a, T0, 0, 0);
    ck_assert(!evaluate(&a, T0 + WINDOW - 1, 1000, 1000, &to, &reason));
    ck_assert_ptr_null(reason);
    output_auto_clear(&a);
}
END_TEST

START_TEST(counters_restarting_is_a_new_window)
{
    OutputAuto a = { 0 };
    FtOutputMode to;
    char *reason = NULL;

    output_auto_init(&a, T0, 500, 400);
    /* a new protection counts from 0: the difference would be huge */
    ck_assert(!evaluate(&a, T0 + WINDOW, 100, 100, &to, &reason));
    ck_assert(evaluate(&a, T0 + 2 * WINDOW, 200, 200, &to, &reason));
    g_free(reason);
    output_auto_clear(&a);
}
END_TEST

START_TEST(passive_probes_compare_with_growing_hold)
{
    OutputAuto a = { 0 };
    gint64 now = T0;
    guint64 n = 0, f = 0;
    FtOutputMode to;
    g_autofree char *reason = NULL;
    guint hold;

    output_auto_init(&a, now, n, f);
    ck_assert(window(&a, &now, &n, &f, 100, 100, &to, &reason));
    output_auto_switched(&a, now, to, reason);
    hold = a.hold_s;
    ck_assert_uint_eq(hold, OUTPUT_AUTO_HOLD_MIN_S);
    /* passive until the hold is up, whatever the rate */
    while (now + WINDOW < T0 + WINDOW + (gint64)hold * S)
        ck_assert(!window(&a, &now, &n, &f, 100, 100, &to, &reason));
    ck_assert(window(&a, &now, &n, &f, 100, 100, &to, &reason));
    ck_assert_int_eq(to, FTDEF_OUTPUT_COMPARE);
    output_auto_switched(&a, now, to, reason);
    /* the probe's window still differs: back to passive, hold doubled */
    ck_assert(window(&a, &now, &n, &f, 100, 100, &to, &reason));
    ck_assert_int_eq(to, FTDEF_OUTPUT_PASSIVE);
    ck_assert_uint_eq(a.hold_s, 2 * hold);
    output_auto_switched(&a, now, to, reason);
    /* the hold never grows past its cap */
    for (int i = 0; i < 10; i++) {
        gint64 until = now + (gint64)a.hold_s * S;

        while (now < until)
            ck_assert(!window(&a, &now, &n, &f, 100, 100, &to, &reason) ||
                      to == FTDEF_OUTPUT_COMPARE);
        if (a.mode == FTDEF_OUTPUT_PASSIVE)
            output_auto_switched(&a, now, FTDEF_OUTPUT_COMPARE, "probe");
        if (window(&a, &now, &n, &f, 100, 100, &to, &reason))
            output_auto_switched(&a, now, to, reason);
        ck_assert_uint_le(a.hold_s, OUTPUT_AUTO_HOLD_MAX_S);
    }
    output_auto_clear(&a);
}
END_TEST

START_TEST(probe_that_agrees_stays_compare_and_resets_hold)
{
    OutputAuto a = { 0 };
    gint64 now = T0;
    guint64 n = 0, f = 0;
    FtOutputMode to;
    g_autofree char *reason = NULL;

    output_auto_init(&a, now, n, f);
    a.hold_s = 4 * OUTPUT_AUTO_HOLD_MIN_S;
    ck_assert(window(&a, &now, &n, &f, 100, 100, &to, &reason));
    output_auto_switched(&a, now, to, reason);
    now += (gint64)a.hold_s * S;
    ck_assert(window(&a, &now, &n, &f, 100, 100, &to, &reason));
    output_auto_switched(&a, now, to, reason);
    ck_assert(!window(&a, &now, &n, &f, 3, 1, &to, &reason));
    ck_assert_int_eq(a.mode, FTDEF_OUTPUT_COMPARE);
    ck_assert_uint_eq(a.hold_s, OUTPUT_AUTO_HOLD_MIN_S);
    output_auto_clear(&a);
}
END_TEST

START_TEST(late_secondary_goes_passive)
{
    OutputAuto a = { 0 };
    OutputSample s = counts(20, 2);
    FtOutputMode to;
    g_autofree char *reason = NULL;

    output_auto_init(&a, T0, 0, 0);
    /* replies agree, but wait 200 ms for the secondary against ~15 ms in passive */
    s.lag_ms = 200;
    ck_assert(output_auto_evaluate(&a, T0 + WINDOW, &s, &to, &reason));
    ck_assert_int_eq(to, FTDEF_OUTPUT_PASSIVE);
    ck_assert_ptr_nonnull(strstr(reason, "come late"));
    output_auto_clear(&a);
}
END_TEST

START_TEST(prompt_or_unknown_lag_stays_compare)
{
    OutputAuto a = { 0 };
    OutputSample s = counts(20, 2);
    FtOutputMode to;
    char *reason = NULL;

    output_auto_init(&a, T0, 0, 0);
    /* under three passive replies' cost */
    s.lag_ms = 40;
    ck_assert(!output_auto_evaluate(&a, T0 + WINDOW, &s, &to, &reason));
    /* three times a tiny cost, but under the floor */
    s.checkpoints += 20;
    s.lag_ms = OUTPUT_AUTO_LAG_MIN_MS - 1;
    s.reply_cost_ms = 1;
    ck_assert(!output_auto_evaluate(&a, T0 + 2 * WINDOW, &s, &to, &reason));
    s.checkpoints += 20;
    s.lag_ms = -1;
    ck_assert(!output_auto_evaluate(&a, T0 + 3 * WINDOW, &s, &to, &reason));
    ck_assert_ptr_null(reason);
    output_auto_clear(&a);
}
END_TEST

START_TEST(late_secondary_goes_passive_between_windows)
{
    OutputAuto a = { 0 };
    OutputSample s = counts(3, 0);
    FtOutputMode to;
    g_autofree char *reason = NULL;

    output_auto_init(&a, T0, 0, 0);
    /* a second into the window: a prompt secondary changes nothing */
    s.lag_ms = 20;
    ck_assert_int_eq(output_auto_due(&a, T0 + S), OUTPUT_AUTO_LAG_CHECK);
    ck_assert(!output_auto_evaluate(&a, T0 + S, &s, &to, &reason));
    /* a second later the load has made it late: passive now, not at the window's end */
    s.lag_ms = 400;
    ck_assert(output_auto_evaluate(&a, T0 + 2 * S, &s, &to, &reason));
    ck_assert_int_eq(to, FTDEF_OUTPUT_PASSIVE);
    ck_assert_ptr_nonnull(strstr(reason, "come late"));
    output_auto_switched(&a, T0 + 2 * S, to, reason);
    /* in passive, nothing is due before a window ends */
    ck_assert_int_eq(output_auto_due(&a, T0 + 3 * S), OUTPUT_AUTO_NOTHING);
    output_auto_clear(&a);
}
END_TEST

START_TEST(probe_waits_its_window_before_judging_the_lag)
{
    OutputAuto a = { 0 };
    OutputSample s = counts(3, 0);
    FtOutputMode to;
    g_autofree char *reason = NULL;

    output_auto_init(&a, T0, 0, 0);
    output_auto_switched(&a, T0, FTDEF_OUTPUT_PASSIVE, "test");
    output_auto_switched(&a, T0 + 100 * S, FTDEF_OUTPUT_COMPARE, "probe");
    a.window_start_us = T0 + 100 * S;
    /* the estimate still holds the lag from before passive: no verdict a second in */
    s.lag_ms = 400;
    ck_assert_int_eq(output_auto_due(&a, T0 + 101 * S), OUTPUT_AUTO_NOTHING);
    ck_assert(!output_auto_evaluate(&a, T0 + 101 * S, &s, &to, &reason));
    /* at the window's end it counts */
    ck_assert(output_auto_evaluate(&a, T0 + 100 * S + WINDOW, &s, &to, &reason));
    ck_assert_int_eq(to, FTDEF_OUTPUT_PASSIVE);
    output_auto_clear(&a);
}
END_TEST

static Suite *output_suite(void)
{
    Suite *s = suite_create("output");
    TCase *tc = tcase_create("auto");

    tcase_add_test(tc, agreeing_output_stays_compare);
    tcase_add_test(tc, differing_output_goes_passive);
    tcase_add_test(tc, short_window_decides_nothing);
    tcase_add_test(tc, counters_restarting_is_a_new_window);
    tcase_add_test(tc, passive_probes_compare_with_growing_hold);
    tcase_add_test(tc, probe_that_agrees_stays_compare_and_resets_hold);
    tcase_add_test(tc, late_secondary_goes_passive);
    tcase_add_test(tc, prompt_or_unknown_lag_stays_compare);
    tcase_add_test(tc, late_secondary_goes_passive_between_windows);
    tcase_add_test(tc, probe_waits_its_window_before_judging_the_lag);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(output_suite());
}
