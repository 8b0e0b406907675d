/* test-resync.c - which copy a returning secondary gets, and the generation file */
#include <check.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "config.h"
#include "resync.h"

#define GEN_A "0b3c8a44-6a4f-4e34-9d55-3f6f3f0f6f01"
#define GEN_B "7d1e2f30-1c2d-4b5e-8f90-a1b2c3d4e5f6"

START_TEST(fresh_pair_copies_nothing)
{
    /* The administrator copied the disks before the first protection. */
    ck_assert_int_eq(resync_plan(NULL, FALSE, NULL), RESYNC_NONE);
}
END_TEST

START_TEST(same_generation_in_sync_copies_nothing)
{
    ck_assert_int_eq(resync_plan(GEN_A, FALSE, GEN_A), RESYNC_NONE);
}
END_TEST

START_TEST(same_generation_after_running_alone_copies_the_changes)
{
    ck_assert_int_eq(resync_plan(GEN_A, TRUE, GEN_A), RESYNC_INCREMENTAL);
}
END_TEST

START_TEST(other_generation_copies_everything)
{
    ck_assert_int_eq(resync_plan(GEN_A, TRUE, GEN_B), RESYNC_FULL);
    ck_assert_int_eq(resync_plan(GEN_A, FALSE, GEN_B), RESYNC_FULL);
}
END_TEST

START_TEST(blank_peer_copies_everything)
{
    ck_assert_int_eq(resync_plan(GEN_A, TRUE, NULL), RESYNC_FULL);
}
END_TEST

START_TEST(unknown_own_generation_copies_everything)
{
    /* This host's copy was being rewritten when it stopped. */
    ck_assert_int_eq(resync_plan(NULL, FALSE, GEN_A), RESYNC_FULL);
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
    g_autoptr(GError) err = NULL;
    g_autofree char *in_sync = NULL;
    g_autofree char *alone = NULL;
    gboolean diverged = TRUE;

    ck_assert(resync_generation_write(&cfg, "web1", GEN_A, FALSE, &err));
    in_sync = resync_generation_read(&cfg, "web1", &diverged);
    ck_assert_str_eq(in_sync, GEN_A);
    ck_assert(!diverged);

    ck_assert(resync_generation_write(&cfg, "web1", GEN_A, TRUE, &err));
    alone = resync_generation_read(&cfg, "web1", &diverged);
    ck_assert_str_eq(alone, GEN_A);
    ck_assert(diverged);
}
END_TEST

START_TEST(missing_or_forgotten_generation_is_unknown)
{
    gboolean diverged = TRUE;

    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &diverged));
    ck_assert(!diverged);
    ck_assert(resync_generation_write(&cfg, "web1", GEN_B, FALSE, NULL));
    resync_generation_forget(&cfg, "web1");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &diverged));
}
END_TEST

START_TEST(garbage_generation_is_unknown)
{
    gboolean diverged;

    /* A stranger's or damaged file must never pass for the pair's. */
    write_raw("not-a-generation\n");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &diverged));
    write_raw("");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &diverged));
    write_raw(GEN_A "x diverged\n");
    ck_assert_ptr_null(resync_generation_read(&cfg, "web1", &diverged));
}
END_TEST

START_TEST(unknown_marker_is_not_diverged)
{
    g_autofree char *gen = NULL;
    gboolean diverged = TRUE;

    write_raw(GEN_A " something-else\n");
    gen = resync_generation_read(&cfg, "web1", &diverged);
    ck_assert_str_eq(gen, GEN_A);
    ck_assert(!diverged);
}
END_TEST

static Suite *resync_suite(void)
{
    Suite *s = suite_create("resync");
    TCase *plan = tcase_create("plan");
    TCase *gen = tcase_create("generation");

    tcase_add_test(plan, fresh_pair_copies_nothing);
    tcase_add_test(plan, same_generation_in_sync_copies_nothing);
    tcase_add_test(plan, same_generation_after_running_alone_copies_the_changes);
    tcase_add_test(plan, other_generation_copies_everything);
    tcase_add_test(plan, blank_peer_copies_everything);
    tcase_add_test(plan, unknown_own_generation_copies_everything);
    suite_add_tcase(s, plan);

    tcase_add_checked_fixture(gen, make_state_dir, remove_state_dir);
    tcase_add_test(gen, generation_round_trip);
    tcase_add_test(gen, missing_or_forgotten_generation_is_unknown);
    tcase_add_test(gen, garbage_generation_is_unknown);
    tcase_add_test(gen, unknown_marker_is_not_diverged);
    suite_add_tcase(s, gen);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(resync_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
