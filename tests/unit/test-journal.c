/* test-journal.c - the guest journal a restarted kvm-ftd re-attaches from */
#include <check.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <sys/stat.h>

#include "journal.h"
#include "run-suite.h"

#define GEN "0b7f2a4e-8d4c-4b1e-9a51-3c2d1e0f9a87"

static char *dir;

static void setup(void)
{
    dir = g_dir_make_tmp("test-journal-XXXXXX", NULL);
    ck_assert_ptr_nonnull(dir);
}

static void teardown(void)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);

    ck_assert_int_eq(system(cmd), 0);
    g_clear_pointer(&dir, g_free);
}

static void put(const char *text)
{
    g_autofree char *path = g_build_filename(dir, "web1.journal", NULL);

    ck_assert(g_file_set_contents(path, text, -1, NULL));
}

static void assert_refused(const char *text)
{
    g_auto(JournalEntry) e = { 0 };
    g_autoptr(GError) err = NULL;

    put(text);
    ck_assert_msg(!journal_read(dir, "web1", &e, &err), "accepted: %s", text);
    ck_assert_msg(g_error_matches(err, G_FILE_ERROR, G_FILE_ERROR_INVAL), "%s: %s", text,
                  err ? err->message : "no error");
    ck_assert_ptr_null(e.state);
}

START_TEST(what_is_written_is_read_back)
{
    const JournalEntry secondary = { FT_ROLE_SECONDARY, "secondary-waiting", GEN, FALSE };
    const JournalEntry primary = { FT_ROLE_PRIMARY, "resyncing", NULL, TRUE };
    g_autofree char *nested = g_build_filename(dir, "state", NULL);
    g_autoptr(GError) err = NULL;
    g_auto(JournalEntry) e = { 0 };
    GStatBuf st;

    /* The state dir is made, private, when it is not there yet. */
    ck_assert_msg(journal_write(nested, "web1", &secondary, &err), "%s",
                  err ? err->message : "");
    ck_assert_int_eq(g_stat(nested, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0700);
    ck_assert_msg(journal_read(nested, "web1", &e, &err), "%s", err ? err->message : "");
    ck_assert_int_eq(e.role, FT_ROLE_SECONDARY);
    ck_assert_str_eq(e.state, "secondary-waiting");
    ck_assert_str_eq(e.generation, GEN);
    ck_assert(!e.rejoin);
    journal_entry_clear(&e);

    /* Replaced whole, not appended to. */
    ck_assert(journal_write(nested, "web1", &primary, &err));
    ck_assert(journal_read(nested, "web1", &e, &err));
    ck_assert_int_eq(e.role, FT_ROLE_PRIMARY);
    ck_assert_str_eq(e.state, "resyncing");
    ck_assert_ptr_null(e.generation);
    ck_assert(e.rejoin);
}
END_TEST

START_TEST(no_journal_is_noent)
{
    g_auto(JournalEntry) e = { 0 };
    g_autoptr(GError) err = NULL;

    ck_assert(!journal_read(dir, "web1", &e, &err));
    ck_assert(g_error_matches(err, G_FILE_ERROR, G_FILE_ERROR_NOENT));
}
END_TEST

START_TEST(what_is_not_a_journal_is_refused)
{
    g_autofree char *big = g_strnfill(5000, ' ');

    assert_refused("");
    assert_refused("not json");
    assert_refused("[\"primary\"]");
    assert_refused("{\"role\": \"none\", \"state\": \"protected\", \"generation\": null, "
                   "\"rejoin\": false}");
    assert_refused("{\"role\": \"primary\", \"state\": \"\", \"generation\": null, "
                   "\"rejoin\": false}");
    assert_refused("{\"role\": \"primary\", \"state\": \"protected\", \"generation\": "
                   "\"../../x\", \"rejoin\": false}");
    assert_refused("{\"role\": \"primary\", \"state\": \"protected\", \"generation\": 7, "
                   "\"rejoin\": false}");
    assert_refused("{\"role\": \"primary\", \"state\": \"protected\", \"generation\": null}");
    assert_refused("{\"role\": \"primary\", \"state\": "
                   "\"a-state-name-much-longer-than-any-of-ours\", \"generation\": null, "
                   "\"rejoin\": false}");
    assert_refused(big);
    /* Two values (json-glib keeps the first and leaks the rest: found by fuzz-journal). */
    assert_refused("\"x\"{\"role\": \"primary\", \"state\": \"protected\", "
                   "\"generation\": null, \"rejoin\": false}");
}
END_TEST

static Suite *journal_suite(void)
{
    Suite *s = suite_create("journal");
    TCase *tc = tcase_create("file");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, what_is_written_is_read_back);
    tcase_add_test(tc, no_journal_is_noent);
    tcase_add_test(tc, what_is_not_a_journal_is_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(journal_suite());
}
