/* test-loopwait.c - what kept the main loop waiting, as a late detector round names it */
#include <check.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "loopwait.h"
#include "run-suite.h"

static void wait_ms(guint ms, const char *what, const char *guest)
{
    gint64 began = loopwait_begin();

    g_usleep(ms * 1000);
    loopwait_end(began, what, guest);
}

static void setup(void)
{
    loopwait_init();
}

START_TEST(the_longest_wait_is_named)
{
    gint64 since = g_get_monotonic_time();
    g_autofree char *longest = NULL;

    wait_ms(10, "QMP blockdev-add", "web1");
    wait_ms(40, "libvirt destroy", "web2");
    wait_ms(20, "qemu-img", NULL);
    longest = loopwait_longest_since(since);
    ck_assert_ptr_nonnull(longest);
    ck_assert_msg(g_str_has_prefix(longest, "libvirt destroy for web2 ("), "named: %s", longest);
}
END_TEST

START_TEST(short_waits_are_not_kept)
{
    gint64 since = g_get_monotonic_time();

    wait_ms(0, "QMP query-status", "web1");
    ck_assert_ptr_null(loopwait_longest_since(since));
}
END_TEST

START_TEST(waits_before_since_are_not_named)
{
    gint64 since;
    g_autofree char *longest = NULL;

    wait_ms(40, "libvirt destroy", "web2");
    since = g_get_monotonic_time();
    wait_ms(10, "QMP blockdev-add", "web1");
    longest = loopwait_longest_since(since);
    ck_assert_ptr_nonnull(longest);
    ck_assert_msg(g_str_has_prefix(longest, "QMP blockdev-add for web1"), "named: %s", longest);
}
END_TEST

static gpointer wait_in_thread(gpointer unused)
{
    (void)unused;
    wait_ms(20, "libvirt status write", "web1");
    return NULL;
}

/* A worker's wait delays no detector round. */
START_TEST(waits_in_other_threads_are_not_kept)
{
    gint64 since = g_get_monotonic_time();

    g_thread_join(g_thread_new("worker", wait_in_thread, NULL));
    ck_assert_ptr_null(loopwait_longest_since(since));
}
END_TEST

static void scoped_wait(void)
{
    LOOPWAIT_SCOPE("libvirt start", NULL);

    g_usleep(15 * 1000);
}

START_TEST(a_scope_is_one_wait)
{
    gint64 since = g_get_monotonic_time();
    g_autofree char *longest = NULL;

    scoped_wait();
    longest = loopwait_longest_since(since);
    ck_assert_ptr_nonnull(longest);
    ck_assert_msg(g_str_has_prefix(longest, "libvirt start ("), "named: %s", longest);
}
END_TEST

START_TEST(the_list_is_longest_first_and_bounded)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) root = NULL;
    JsonArray *waits;

    wait_ms(10, "first", NULL);
    wait_ms(30, "second", "web1");
    wait_ms(20, "third", NULL);
    loopwait_add(b, 0, 2);
    root = json_builder_get_root(b);
    waits = json_node_get_array(root);
    ck_assert_uint_eq(json_array_get_length(waits), 2);
    ck_assert_str_eq(json_object_get_string_member(json_array_get_object_element(waits, 0),
                                                   "what"), "second");
    ck_assert_str_eq(json_object_get_string_member(json_array_get_object_element(waits, 0),
                                                   "guest"), "web1");
    ck_assert(json_object_get_double_member(json_array_get_object_element(waits, 0), "ms") >= 30);
    ck_assert_str_eq(json_object_get_string_member(json_array_get_object_element(waits, 1),
                                                   "what"), "third");
    ck_assert(json_object_get_null_member(json_array_get_object_element(waits, 1), "guest"));
}
END_TEST

static Suite *loopwait_suite(void)
{
    Suite *s = suite_create("loopwait");
    TCase *tc = tcase_create("waits");

    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, the_longest_wait_is_named);
    tcase_add_test(tc, short_waits_are_not_kept);
    tcase_add_test(tc, waits_before_since_are_not_named);
    tcase_add_test(tc, waits_in_other_threads_are_not_kept);
    tcase_add_test(tc, a_scope_is_one_wait);
    tcase_add_test(tc, the_list_is_longest_first_and_bounded);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(loopwait_suite());
}
