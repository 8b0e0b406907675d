/* test-status.c - the status element kvm-ftd keeps in a guest's <metadata> */
#include <check.h>
#include <glib.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <string.h>

#include "ftdef.h"
#include "guest.h"
#include "status.h"
#include "run-suite.h"

/* 2026-01-02T03:04:05.678Z */
#define SOME_TIME_US (G_GINT64_CONSTANT(1767323045) * G_USEC_PER_SEC + 678000)

static char *fixture(const char *name)
{
    g_autofree char *path = g_build_filename(g_getenv("KVMFT_TEST_DATA"), name, NULL);
    char *text = NULL;

    ck_assert_msg(g_file_get_contents(path, &text, NULL, NULL), "cannot read %s", path);
    return text;
}

/* An attribute of the status element, as an XML parser reads it back. */
static char *attr(const char *xml, const char *name)
{
    xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), "s.xml", NULL, XML_PARSE_NONET);
    xmlNodePtr root;
    xmlChar *v;
    char *copy;

    ck_assert_msg(doc != NULL, "not well-formed: %s", xml);
    root = xmlDocGetRootElement(doc);
    ck_assert_str_eq((const char *)root->name, "status");
    ck_assert_ptr_null(root->ns);
    v = xmlGetProp(root, (const xmlChar *)name);
    ck_assert_msg(v != NULL, "no %s in %s", name, xml);
    copy = g_strdup((const char *)v);
    xmlFree(v);
    xmlFreeDoc(doc);
    return copy;
}

START_TEST(reason_is_escaped)
{
    const char *reason = "peer hostB: <ft:disk target=\"vda\"> & 'vdb'\nline two\r\tend";
    g_autofree char *xml = status_xml(STATUS_REFUSED, reason, SOME_TIME_US);
    g_autofree char *back = attr(xml, "reason");

    ck_assert_str_eq(back, reason);
    /* One line, no raw quote or ampersand inside the attribute. */
    ck_assert_ptr_null(strchr(xml, '\n'));
    ck_assert_ptr_nonnull(strstr(xml, "&quot;vda&quot;"));
    ck_assert_ptr_nonnull(strstr(xml, "&amp;"));
    ck_assert_ptr_nonnull(strstr(xml, "&lt;ft:disk"));
    ck_assert_ptr_nonnull(strstr(xml, "&#10;line two"));
}
END_TEST

START_TEST(unwritable_characters_are_replaced)
{
    g_autofree char *xml = status_xml(STATUS_REFUSED, "bell\a escape\x1b bad \xff utf8",
                                      SOME_TIME_US);
    g_autofree char *back = attr(xml, "reason");

    ck_assert_str_eq(back, "bell  escape  bad \xef\xbf\xbd utf8");
}
END_TEST

START_TEST(updated_is_iso8601_utc)
{
    g_autofree char *xml = status_xml(STATUS_READY, "", SOME_TIME_US);
    g_autofree char *updated = attr(xml, "updated");
    g_autofree char *reason = attr(xml, "reason");

    ck_assert_str_eq(updated, "2026-01-02T03:04:05.678Z");
    ck_assert_str_eq(reason, "");
}
END_TEST

START_TEST(state_names)
{
    for (GuestState s = 0; s < GUEST_N_STATES; s++) {
        const char *name = guest_state_name(s);
        g_autofree char *xml = status_xml(name, "r", SOME_TIME_US);
        g_autofree char *back = attr(xml, "state");

        ck_assert_str_eq(back, name);
        ck_assert_str_ne(name, "invalid");
        /* A reader of the element tells kvm-ftd's own states from the guest's. */
        ck_assert_str_ne(name, STATUS_READY);
        ck_assert_str_ne(name, STATUS_REFUSED);
        for (GuestState t = 0; t < s; t++)
            ck_assert_str_ne(name, guest_state_name(t));
    }
    {
        g_autofree char *ready = status_xml(STATUS_READY, "r", SOME_TIME_US);
        g_autofree char *refused = status_xml(STATUS_REFUSED, "r", SOME_TIME_US);
        g_autofree char *s1 = attr(ready, "state");
        g_autofree char *s2 = attr(refused, "state");

        ck_assert_str_eq(s1, "ready");
        ck_assert_str_eq(s2, "refused");
    }
}
END_TEST

/* The definition with a status element, as libvirt returns it after a write. */
static char *with_status(const char *xml)
{
    const char *at = strstr(xml, "  </metadata>");
    g_autofree char *status = status_xml("protected", "a & b", SOME_TIME_US);
    g_autofree char *element = NULL;

    ck_assert_ptr_nonnull(at);
    /* libvirt puts the namespace on the element itself. */
    element = g_strdup_printf("<" STATUS_KEY ":%s", status + 1);
    element[strlen(element) - 2] = '\0';
    return g_strdup_printf("%.*s    %s xmlns:" STATUS_KEY "=\"" STATUS_NS "\"/>\n%s",
                           (int)(at - xml), xml, element, at);
}

START_TEST(strip_removes_only_the_status)
{
    g_autofree char *orig = fixture("ftdef-valid.xml");
    g_autofree char *xml = with_status(orig);
    g_autoptr(GError) err = NULL;
    g_autofree char *stripped = NULL;
    g_autoptr(FtDef) def = NULL;

    ck_assert_ptr_nonnull(strstr(xml, STATUS_NS));
    stripped = status_strip(xml, &err);
    ck_assert_msg(stripped != NULL, "%s", err ? err->message : "");
    ck_assert_ptr_null(strstr(stripped, STATUS_NS));
    ck_assert_ptr_null(strstr(stripped, "ftstatus"));
    ck_assert_ptr_nonnull(strstr(stripped, "<ft:guest"));
    ck_assert_ptr_nonnull(strstr(stripped, "libosinfo:os"));
    ck_assert_ptr_nonnull(strstr(stripped, "<!-- both hosts read this same element -->"));
    /* The definition reads as the administrator wrote it. */
    def = ftdef_parse(stripped, &err);
    ck_assert_msg(def != NULL, "%s", err ? err->message : "");
    ck_assert_str_eq(def->name, "web1");
    ck_assert_uint_eq(def->disks->len, 2);
}
END_TEST

START_TEST(strip_without_status_is_identity)
{
    g_autofree char *orig = fixture("ftdef-valid.xml");
    g_autoptr(GError) err = NULL;
    g_autofree char *stripped = status_strip(orig, &err);

    ck_assert_ptr_nonnull(stripped);
    ck_assert_str_eq(stripped, orig);
}
END_TEST

START_TEST(strip_refuses_garbage)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *stripped = status_strip("<domain><metadata>", &err);

    ck_assert_ptr_null(stripped);
    ck_assert_ptr_nonnull(err);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("element");

    tcase_add_test(tc, reason_is_escaped);
    tcase_add_test(tc, unwritable_characters_are_replaced);
    tcase_add_test(tc, updated_is_iso8601_utc);
    tcase_add_test(tc, state_names);
    tcase_add_test(tc, strip_removes_only_the_status);
    tcase_add_test(tc, strip_without_status_is_identity);
    tcase_add_test(tc, strip_refuses_garbage);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
