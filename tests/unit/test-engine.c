/* test-engine.c - what the engine decides without QEMU: a checkpoint's cause */
#include <check.h>
#include <glib.h>

#include "engine.h"
#include "run-suite.h"

#define MS 1000 /* in microseconds */
#define T0 (G_GINT64_CONSTANT(1767323045) * G_USEC_PER_SEC)

START_TEST(first_checkpoint_is_periodic)
{
    ck_assert_int_eq(engine_checkpoint_cause(0, T0, 2000), ENGINE_CHECKPOINT_PERIODIC);
}
END_TEST

START_TEST(on_the_interval_is_periodic)
{
    /* The timer fires on time, or a little late (the guest had to stop first). */
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 + 2000 * MS, 2000),
                     ENGINE_CHECKPOINT_PERIODIC);
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 + 2040 * MS, 2000),
                     ENGINE_CHECKPOINT_PERIODIC);
    /* Stamps a few milliseconds early: still the timer. */
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 + 1985 * MS, 2000),
                     ENGINE_CHECKPOINT_PERIODIC);
}
END_TEST

START_TEST(before_the_interval_is_forced)
{
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 + 30 * MS, 2000),
                     ENGINE_CHECKPOINT_FORCED);
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 + 1900 * MS, 2000),
                     ENGINE_CHECKPOINT_FORCED);
}
END_TEST

START_TEST(short_intervals_keep_a_proportional_margin)
{
    /* At 40 ms the margin is 10 ms, not 20: a 25 ms gap is forced, 35 ms is the timer. */
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 + 25 * MS, 40), ENGINE_CHECKPOINT_FORCED);
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 + 35 * MS, 40), ENGINE_CHECKPOINT_PERIODIC);
}
END_TEST

START_TEST(clock_going_backwards_is_not_forced)
{
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0 - 5 * MS, 2000), ENGINE_CHECKPOINT_PERIODIC);
    ck_assert_int_eq(engine_checkpoint_cause(T0, T0, 2000), ENGINE_CHECKPOINT_PERIODIC);
}
END_TEST

static Suite *engine_suite(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("checkpoint cause");

    tcase_add_test(tc, first_checkpoint_is_periodic);
    tcase_add_test(tc, on_the_interval_is_periodic);
    tcase_add_test(tc, before_the_interval_is_forced);
    tcase_add_test(tc, short_intervals_keep_a_proportional_margin);
    tcase_add_test(tc, clock_going_backwards_is_not_forced);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(engine_suite());
}
