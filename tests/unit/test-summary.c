/* test-summary.c - nearest-rank percentiles, the figures status reports */
#include <check.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "run-suite.h"
#include "summary.h"

/* The summary as a member of an object, where status puts it. */
static JsonObject *summarise(const double *values, guint n, JsonNode **root)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) outer = NULL;

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "late_ms");
    summary_add(b, values, n);
    json_builder_end_object(b);
    outer = json_builder_get_root(b);
    *root = json_node_copy(json_object_get_member(json_node_get_object(outer), "late_ms"));
    return JSON_NODE_HOLDS_OBJECT(*root) ? json_node_get_object(*root) : NULL;
}

START_TEST(every_figure_is_a_measured_one)
{
    double values[100];
    JsonNode *root;
    JsonObject *o;

    /* 1..100 in reverse: the input's order must not matter. */
    for (guint i = 0; i < 100; i++)
        values[i] = 100 - i;
    o = summarise(values, 100, &root);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(json_object_get_int_member(o, "count"), 100);
    ck_assert_double_eq(json_object_get_double_member(o, "p50"), 50);
    ck_assert_double_eq(json_object_get_double_member(o, "p99"), 99);
    ck_assert_double_eq(json_object_get_double_member(o, "max"), 100);
    /* The caller's history is left as it was. */
    ck_assert_double_eq(values[0], 100);
    json_node_unref(root);
}
END_TEST

START_TEST(one_outlier_shows_only_in_the_max)
{
    double values[200];
    JsonNode *root;
    JsonObject *o;

    for (guint i = 0; i < 200; i++)
        values[i] = 1.0;
    values[77] = 15006.0;
    o = summarise(values, 200, &root);
    ck_assert_double_eq(json_object_get_double_member(o, "p50"), 1.0);
    ck_assert_double_eq(json_object_get_double_member(o, "p99"), 1.0);
    ck_assert_double_eq(json_object_get_double_member(o, "max"), 15006.0);
    ck_assert_double_eq(summary_p50(values, 200), 1.0);
    json_node_unref(root);
}
END_TEST

START_TEST(nothing_measured_is_null)
{
    JsonNode *root;

    ck_assert_ptr_null(summarise(NULL, 0, &root));
    ck_assert(JSON_NODE_HOLDS_NULL(root));
    ck_assert_double_eq(summary_p50(NULL, 0), 0.0);
    json_node_unref(root);
}
END_TEST

static Suite *summary_suite(void)
{
    Suite *s = suite_create("summary");
    TCase *tc = tcase_create("percentiles");

    tcase_add_test(tc, every_figure_is_a_measured_one);
    tcase_add_test(tc, one_outlier_shows_only_in_the_max);
    tcase_add_test(tc, nothing_measured_is_null);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(summary_suite());
}
