/* test-jsontext.c - what may reach json-glib from the peer, QEMU, the witness and ftctl */
#include <check.h>
#include <glib.h>
#include <string.h>

#include "jsontext.h"
#include "run-suite.h"

static gboolean sane(const char *s)
{
    return json_text_sane(s, strlen(s), JSON_TEXT_MAX_DEPTH);
}

START_TEST(one_strict_value_passes)
{
    static const char *const ok[] = {
        "{}", "[]", "{\"command\": \"status\"}\n", "  {\"a\": [1, 2.5e3, -3, true, false, null]}  ",
        "\"x\"", "\"{}{}\"", "\"a \\\" b\"", "42", "-1.5e-3 ", "true", "null",
        "{\"s\": \"}{][\"}",
    };

    for (guint i = 0; i < G_N_ELEMENTS(ok); i++)
        ck_assert_msg(sane(ok[i]), "refused: %s", ok[i]);
}
END_TEST

/* json-glib 1.6 keeps the last of several values and leaks the others (tools/fuzz found it). */
START_TEST(a_second_top_level_value_is_refused)
{
    static const char *const bad[] = {
        "{}{}", "{} {}", "[] {}", "\"x\"{\"command\": \"status\"}", "1{}", "1 2", "true false",
        "{\"QMP\": {}}\n{\"return\": {}}", "\"a\" \"b\"", "null[]",
    };

    for (guint i = 0; i < G_N_ELEMENTS(bad); i++)
        ck_assert_msg(!sane(bad[i]), "accepted: %s", bad[i]);
}
END_TEST

START_TEST(what_is_not_strict_json_is_refused)
{
    static const char *const bad[] = {
        "{'a': 1}", "{\"a\": 1} // x", "/* x */ {}", "{\"a\": \"open", "}", "]", "{\"a\": x}",
    };

    for (guint i = 0; i < G_N_ELEMENTS(bad); i++)
        ck_assert_msg(!sane(bad[i]), "accepted: %s", bad[i]);
    /* A NUL inside the length is not text. */
    ck_assert(!json_text_sane("{}\0{}", 5, JSON_TEXT_MAX_DEPTH));
}
END_TEST

/* json-glib takes what strict JSON does not, and leaks on a lone surrogate in a key (fuzz). */
START_TEST(strings_hold_only_json_escapes)
{
    static const char *const ok[] = {
        "[\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"]", "[\"\\u00e9\\u0041\"]",
        "[\"\\ud83d\\ude00\"]", "{\"caf\xc3\xa9\": 1}",
    };
    static const char *const bad[] = {
        "[\"\\q\"]", "[\"\\uZZZZ\"]", "[\"\\u00\"]", "{\"\\ud800\": 1}", "[\"\\ud800\"]",
        "[\"\\udc00\"]", "[\"\\ud800\\u0041\"]", "{\"\\ud8l\\ud800u0\"}", "[\"a\tb\"]",
        "[\"\\", "[\"\\u12",
    };

    for (guint i = 0; i < G_N_ELEMENTS(ok); i++)
        ck_assert_msg(sane(ok[i]), "refused: %s", ok[i]);
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++)
        ck_assert_msg(!sane(bad[i]), "accepted: %s", bad[i]);
}
END_TEST

START_TEST(nesting_is_bounded)
{
    g_autoptr(GString) deep = g_string_new(NULL);

    for (guint i = 0; i < JSON_TEXT_MAX_DEPTH; i++)
        g_string_append_c(deep, '[');
    for (guint i = 0; i < JSON_TEXT_MAX_DEPTH; i++)
        g_string_append_c(deep, ']');
    ck_assert(sane(deep->str));
    g_string_prepend_c(deep, '[');
    g_string_append_c(deep, ']');
    ck_assert(!sane(deep->str));
}
END_TEST

static Suite *jsontext_suite(void)
{
    Suite *s = suite_create("jsontext");
    TCase *tc = tcase_create("sane");

    tcase_add_test(tc, one_strict_value_passes);
    tcase_add_test(tc, a_second_top_level_value_is_refused);
    tcase_add_test(tc, what_is_not_strict_json_is_refused);
    tcase_add_test(tc, strings_hold_only_json_escapes);
    tcase_add_test(tc, nesting_is_bounded);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(jsontext_suite());
}
