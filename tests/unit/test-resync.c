/* test-resync.c - which copy a returning secondary gets, and the generation file */
#include <check.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "config.h"
#include "resync.h"
#include "run-suite.h"

#define GEN_A "0b3c8a44-6a4f-4e34-9d55-3f6f3f0f6f01"
#define GEN_B "7d1e2f30-1c2d-4b5e-8f90-a1b2c3d4e5f6"

#define IN_SYNC GENERATION_IN_SYNC
#define DIVERGED GENERATION_DIVERGED
#define RECEIVING GENERATION_RECEIVING
#define PRIMARY GENERATION_PRIMARY

START_TEST(fresh_pair_compares_the_copies_first)
{
    /* The administrator copied the disks before the first protection: trusted once compared. */
    ck_assert_int_eq(resync_plan(NULL, IN_SYNC, NULL, IN_SYNC, FALSE), RESYNC_COMPARE);
}
END_TEST

START_TEST(same_generation_in_sync_copies_nothing)
{
    ck_assert_int_eq(resync_plan(GEN_A, IN_SYNC, GEN_A, IN_SYNC, FALSE), RESYNC_NONE);
}
END_TEST

START_TEST(same_generation_after_running_alone_copies_the_changes)
{
    ck_assert_int_eq(resync_plan(GEN_A, DIVERGED, GEN_A, IN_SYNC, FALSE), RESYNC_INCREMENTAL);
}
END_TEST

START_TEST(copy_cut_short_on_the_peer_is_finished_incrementally)
{
    ck_assert_int_eq(resync_plan(GEN_A, DIVERGED, GEN_A, RECEIVING, FALSE), RESYNC_INCREMENTAL);
    ck_assert_int_eq(resync_plan(GEN_A, IN_SYNC, GEN_A, RECEIVING, FALSE), RESYNC_INCREMENTAL);
}
END_TEST

START_TEST(other_generation_copies_everything)
{
    ck_assert_int_eq(resync_plan(GEN_A, DIVERGED, GEN_B, IN_SYNC, FALSE), RESYNC_FULL);
    ck_assert_int_eq(resync_plan(GEN_A, IN_SYNC, GEN_B, DIVERGED, FALSE), RESYNC_FULL);
}
END_TEST

START_TEST(blank_peer_copies_everything)
{
    ck_assert_int_eq(resync_plan(GEN_A, DIVERGED, NULL, IN_SYNC, FALSE), RESYNC_FULL);
}
END_TEST

/* A first protection onto a host without the disks: it created them blank, they get all. */
START_TEST(disks_created_blank_get_everything)
{
    ck_assert_int_eq(resync_plan(NULL, IN_SYNC, NULL, IN_SYNC, TRUE), RESYNC_FULL);
    ck_assert_int_eq(resync_plan(GEN_A, DIVERGED, NULL, IN_SYNC, TRUE), RESYNC_FULL);
    ck_assert_int_eq(resync_plan(GEN_A, IN_SYNC, GEN_A, IN_SYNC, TRUE), RESYNC_FULL);
    /* ... but a half-copied source still is no source. */
    ck_assert_int_eq(resync_plan(GEN_A, RECEIVING, NULL, IN_SYNC, TRUE), RESYNC_OWN_PARTIAL);
}
END_TEST

START_TEST(both_ran_alone_this_copy_wins)
{
    ck_assert_int_eq(resync_plan(GEN_A, DIVERGED, GEN_A, DIVERGED, FALSE), RESYNC_FULL);
}
END_TEST

START_TEST(peer_that_ran_alone_is_never_overwritten)
{
    /* It holds writes this host's disks lack: the guest must start there. */
    ck_assert_int_eq(resync_plan(GEN_A, IN_SYNC, GEN_A, DIVERGED, FALSE), RESYNC_PEER_NEWER);
}
END_TEST

/*
 * A primary that stopped without closing its disks may hold writes that
 * reached no other copy, in blocks no bitmap tracked.
 */
START_TEST(returning_crashed_primary_gets_everything)
{
    /* The survivor ran alone since: still a whole copy, not the survivor's bitmap. */
    ck_assert_int_eq(resync_plan(GEN_A, DIVERGED, GEN_A, PRIMARY, FALSE), RESYNC_FULL);
    /* Neither ran alone (both hosts lost power): the copies differ all the same. */
    ck_assert_int_eq(resync_plan(GEN_A, PRIMARY, GEN_A, IN_SYNC, FALSE), RESYNC_FULL);
    ck_assert_int_eq(resync_plan(GEN_A, IN_SYNC, GEN_A, PRIMARY, FALSE), RESYNC_FULL);
    ck_assert_int_eq(resync_plan(GEN_A, PRIMARY, GEN_A, RECEIVING, FALSE), RESYNC_FULL);
}
END_TEST

START_TEST(crashed_primary_never_overwrites_the_survivor)
{
    ck_assert_int_eq(resync_plan(GEN_A, PRIMARY, GEN_A, DIVERGED, FALSE), RESYNC_PEER_NEWER);
}
END_TEST

START_TEST(unknown_own_disks_never_overwrite_the_pairs)
{
    ck_assert_int_eq(resync_plan(NULL, IN_SYNC, GEN_A, IN_SYNC, FALSE), RESYNC_PEER_NEWER);
    ck_assert_int_eq(resync_plan(NULL, IN_SYNC, GEN_A, DIVERGED, FALSE), RESYNC_PEER_NEWER);
}
END_TEST

START_TEST(copy_cut_short_is_never_a_source)
{
    /* Whatever the peer holds: these disks may be a mix of old and new blocks. */
    ck_assert_int_eq(resync_plan(GEN_A, RECEIVING, GEN_A, IN_SYNC, FALSE), RESYNC_OWN_PARTIAL);
    ck_assert_int_eq(resync_plan(GEN_A, RECEIVING, NULL, IN_SYNC, FALSE), RESYNC_OWN_PARTIAL);
}
END_TEST

START_TEST(marks_travel_by_name)
{
    static const GenerationMark marks[] = { IN_SYNC, DIVERGED, RECEIVING, PRIMARY };
    GenerationMark back;

    for (gsize i = 0; i < G_N_ELEMENTS(marks); i++) {
        ck_assert(resync_mark_parse(resync_mark_name(marks[i]), &back));
        ck_assert_int_eq(back, marks[i]);
    }
    ck_assert_str_eq(resync_mark_name(IN_SYNC), "in-sync");
    ck_assert(!resync_mark_parse("sync", &back));
    ck_assert(!resync_mark_parse(NULL, &back));
}
END_TEST

static char *state_dir;
static FtConfig cfg;

static void make_state_dir(void)
{
    state_dir = g_dir_make_tmp("kvmft-resync-XXXXXX", NULL);
    ck_assert_ptr_nonnull(state_dir);
    cfg.state_dir = state_dir;
}

static void remove_state_dir(void)
{
    g_autofree char *path = g_build_filename(state_dir, "web1.generation", NULL);

    g_unlink(path);
    g_rmdir(state_dir);
    g_clear_pointer(&state_dir, g_free);
}

static void write_raw(const char *text)
{
    g_autofree char *path = g_build_filename(state_dir, "web1.generation", NULL);

    ck_assert(g_file_set_contents(path, text, -1, NULL));
}

START_TEST(generation_round_trip)
{
    static const GenerationMark marks[] = {
        GENERATION_IN_SYNC, GENERATION_DIVERGED, GENERATION_RECEIVING, GENERATION_PRIMARY,
    };

    for (gsize i = 0; i < G_N_ELEMENTS(marks); i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *gen = NULL;
        GenerationMark mark = (marks[i] + 1) % G_N_ELEMENTS(marks);

        ck_assert(resync_generation_write(&cfg, "web1", GEN_A, marks[i], &err));
        gen = resync_generation_read(&cfg, "web1", &mark);
        ck_assert_str_eq(gen, GEN_A);
        ck_assert_int_eq(mark, marks[i]);
    }
}
END_TEST

START_TEST(missing_or_forgotten_generation_is_unknown)
{
    GenerationMark mark = GENERATION_DIVERGED;

    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &mark));
    ck_assert_int_eq(mark, GENERATION_IN_SYNC);
    ck_assert(resync_generation_write(&cfg, "web1", GEN_B, GENERATION_IN_SYNC, NULL));
    resync_generation_forget(&cfg, "web1");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &mark));
}
END_TEST

START_TEST(garbage_generation_is_unknown)
{
    GenerationMark mark;

    /* A stranger's or damaged file must never pass for the pair's. */
    write_raw("not-a-generation\n");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &mark));
    write_raw("");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &mark));
    write_raw(GEN_A "x diverged\n");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &mark));
}
END_TEST

START_TEST(unknown_mark_makes_the_generation_unknown)
{
    GenerationMark mark = GENERATION_RECEIVING;

    /* It might be a damaged "receiving": such disks must not pass for the pair's. */
    write_raw(GEN_A " something-else\n");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &mark));
    ck_assert_int_eq(mark, GENERATION_IN_SYNC);
    write_raw(GEN_A " in-sync\n");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &mark));
}
END_TEST

static Suite *resync_suite(void)
{
    Suite *s = suite_create("resync");
    TCase *plan = tcase_create("plan");
    TCase *gen = tcase_create("generation");

    tcase_add_test(plan, fresh_pair_compares_the_copies_first);
    tcase_add_test(plan, same_generation_in_sync_copies_nothing);
    tcase_add_test(plan, same_generation_after_running_alone_copies_the_changes);
    tcase_add_test(plan, copy_cut_short_on_the_peer_is_finished_incrementally);
    tcase_add_test(plan, other_generation_copies_everything);
    tcase_add_test(plan, blank_peer_copies_everything);
    tcase_add_test(plan, disks_created_blank_get_everything);
    tcase_add_test(plan, both_ran_alone_this_copy_wins);
    tcase_add_test(plan, peer_that_ran_alone_is_never_overwritten);
    tcase_add_test(plan, returning_crashed_primary_gets_everything);
    tcase_add_test(plan, crashed_primary_never_overwrites_the_survivor);
    tcase_add_test(plan, unknown_own_disks_never_overwrite_the_pairs);
    tcase_add_test(plan, copy_cut_short_is_never_a_source);
    tcase_add_test(plan, marks_travel_by_name);
    suite_add_tcase(s, plan);

    tcase_add_checked_fixture(gen, make_state_dir, remove_state_dir);
    tcase_add_test(gen, generation_round_trip);
    tcase_add_test(gen, missing_or_forgotten_generation_is_unknown);
    tcase_add_test(gen, garbage_generation_is_unknown);
    tcase_add_test(gen, unknown_mark_makes_the_generation_unknown);
    suite_add_tcase(s, gen);
    return s;
}

int main(void)
{
    return run_suite(resync_suite());
}
