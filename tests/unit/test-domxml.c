/* test-domxml.c - the derived XML each role runs with */
#include <check.h>
#include <glib.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>
#include <string.h>

#include "domxml.h"
#include "ftdef.h"
#include "run-suite.h"

static char *fixture(const char *name)
{
    g_autofree char *path = g_build_filename(g_getenv("KVMFT_TEST_DATA"), name, NULL);
    char *text = NULL;

    ck_assert_msg(g_file_get_contents(path, &text, NULL, NULL), "cannot read %s", path);
    return text;
}

/* Counts matches of an XPath expression, with the qemu namespace bound to "q". */
static int count(const char *xml, const char *expr)
{
    xmlDocPtr doc = xmlReadMemory(xml, strlen(xml), "t.xml", NULL, XML_PARSE_NONET);
    xmlXPathContextPtr ctx;
    xmlXPathObjectPtr res;
    int n;

    ck_assert_ptr_nonnull(doc);
    ctx = xmlXPathNewContext(doc);
    xmlXPathRegisterNs(ctx, (const xmlChar *)"q",
                       (const xmlChar *)"http://libvirt.org/schemas/domain/qemu/1.0");
    res = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    ck_assert_ptr_nonnull(res);
    n = res->nodesetval ? res->nodesetval->nodeNr : 0;
    xmlXPathFreeObject(res);
    xmlXPathFreeContext(ctx);
    xmlFreeDoc(doc);
    return n;
}

static char *derive(const char *fixture_name, FtRole role)
{
    g_autofree char *xml = fixture(fixture_name);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);
    const char *active[] = { "/s/active-0.qcow2", "/s/active,1.qcow2", NULL };
    const char *hidden[] = { "/s/hidden-0.qcow2", "/s/hidden-1.qcow2", NULL };
    DomxmlPlumbing p = { .qmp_socket = "/run/kvm-ft/web1.qmp",
                         .active_overlays = active, .hidden_overlays = hidden };
    char *out;

    ck_assert_msg(def != NULL, "%s", err ? err->message : "");
    out = domxml_for_role(xml, def, role, &p, &err);
    ck_assert_msg(out != NULL, "%s", err ? err->message : "");
    return out;
}

START_TEST(primary_moves_disks_to_quorum)
{
    g_autofree char *out = derive("ftdef-valid.xml", FT_ROLE_PRIMARY);

    /* Replicated disks leave libvirt's hands; the cdrom stays. */
    ck_assert_int_eq(count(out, "/domain/devices/disk[target/@dev='vda']"), 0);
    ck_assert_int_eq(count(out, "/domain/devices/disk[target/@dev='vdb']"), 0);
    ck_assert_int_eq(count(out, "/domain/devices/disk[target/@dev='hdc']"), 1);
    ck_assert_int_eq(count(out, "//q:commandline/q:arg[@value='if=none,id=colo-disk0,"
                                "node-name=kvmft-quorum0,driver=quorum,read-pattern=fifo,"
                                "vote-threshold=1,"
                                "children.0.file.filename=/var/lib/libvirt/images/web1.qcow2,"
                                "children.0.driver=qcow2,children.0.node-name=kvmft-data0']"), 1);
    /* The guest keeps the PCI slot libvirt gave the disk. */
    ck_assert_int_eq(count(out, "//q:arg[@value='virtio-blk-pci,id=kvmft-vblk0,"
                                "drive=colo-disk0,bus=pci.0,addr=0x4']"), 1);
    ck_assert_int_eq(count(out, "//q:arg[starts-with(@value,'virtio-blk-pci,id=kvmft-vblk1,"
                                "drive=colo-disk1')]"), 1);
    ck_assert_int_eq(count(out, "//q:arg[@value='socket,id=kvmft-qmp,"
                                "path=/run/kvm-ft/web1.qmp,server=on,wait=off']"), 1);
    ck_assert_int_eq(count(out, "/domain/iothreads[.='1']"), 1);
    ck_assert_int_eq(count(out, "//q:arg[@value='-incoming']"), 0);
    /* The metadata travels with the running definition. */
    ck_assert_int_eq(count(out, "/domain/metadata/*[local-name()='guest']"), 1);
}
END_TEST

START_TEST(secondary_gets_replication_chain)
{
    g_autofree char *out = derive("ftdef-valid.xml", FT_ROLE_SECONDARY);

    ck_assert_int_eq(count(out, "/domain/devices/disk[target/@dev='vda']"), 0);
    ck_assert_int_eq(count(out, "//q:arg[@value='if=none,id=parent0,"
                                "file.filename=/var/lib/libvirt/images/web1.qcow2,driver=qcow2,"
                                "node-name=kvmft-data0']"), 1);
    ck_assert_int_eq(count(out, "//q:arg[@value='if=none,id=parent1,"
                                "file.filename=/var/lib/libvirt/images/web1-data.img,driver=raw,"
                                "node-name=kvmft-data1']"), 1);
    /* A comma in a path is doubled, or QEMU would split the option there. */
    ck_assert_int_eq(count(out, "//q:arg[contains(@value,'file.file.filename=/s/active,,1.qcow2')]"), 1);
    ck_assert_int_eq(count(out, "//q:arg[contains(@value,'driver=replication,mode=secondary') and "
                                "contains(@value,'top-id=colo-disk0') and "
                                "contains(@value,'file.backing.backing=parent0')]"), 1);
    ck_assert_int_eq(count(out, "//q:arg[@value='-incoming']/following-sibling::q:arg[1]"
                                "[@value='defer']"), 1);
}
END_TEST

START_TEST(existing_commandline_and_iothreads_are_kept)
{
    g_autofree char *xml = fixture("ftdef-valid.xml");
    g_autofree char *edited = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;
    g_autofree char *out = NULL;
    DomxmlPlumbing p = { .qmp_socket = "/q.sock" };
    GString *s = g_string_new(xml);

    g_string_replace(s, "<domain type='kvm' id='3'>",
                     "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", 1);
    g_string_replace(s, "</devices>",
                     "</devices><iothreads>2</iothreads><qemu:commandline>"
                     "<qemu:arg value='-sandbox'/><qemu:arg value='on'/></qemu:commandline>", 1);
    edited = g_string_free(s, FALSE);
    def = ftdef_parse(edited, &err);
    ck_assert_msg(def != NULL, "%s", err ? err->message : "");
    out = domxml_for_role(edited, def, FT_ROLE_PRIMARY, &p, &err);
    ck_assert_ptr_nonnull(out);
    ck_assert_int_eq(count(out, "//q:commandline"), 1);
    ck_assert_int_eq(count(out, "//q:arg[@value='-sandbox']"), 1);
    ck_assert_int_eq(count(out, "/domain/iothreads"), 1);
    ck_assert_int_eq(count(out, "/domain/iothreads[.='2']"), 1);
}
END_TEST

START_TEST(missing_disk_is_an_error)
{
    g_autofree char *xml = fixture("ftdef-valid.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);
    g_autofree char *out = NULL;
    DomxmlPlumbing p = { .qmp_socket = "/q.sock" };
    FtDisk *disk;

    ck_assert_ptr_nonnull(def);
    disk = g_ptr_array_index(def->disks, 0);
    g_free(disk->target);
    disk->target = g_strdup("vdz");
    out = domxml_for_role(xml, def, FT_ROLE_PRIMARY, &p, &err);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(err->message, "vdz"));
}
END_TEST

/* The derived XML for the primary from the fixture with one text change, or NULL and *err. */
static char *derive_changed(const char *from, const char *to, const char *qmp, GError **err)
{
    g_autofree char *xml = fixture("ftdef-valid.xml");
    g_autoptr(GString) changed = g_string_new(xml);
    g_autoptr(FtDef) def = NULL;
    DomxmlPlumbing p = { .qmp_socket = qmp };

    ck_assert_uint_eq(g_string_replace(changed, from, to, 1), 1);
    def = ftdef_parse(changed->str, err);
    ck_assert_msg(def != NULL, "%s", *err ? (*err)->message : "");
    return domxml_for_role(changed->str, def, FT_ROLE_PRIMARY, &p, err);
}

/* An address is numbers: nothing of it reaches QEMU's options as text. */
START_TEST(pci_address_must_be_numbers)
{
    static const char *const bad[] = {
        "slot='0x04,romfile=/etc/shadow' function='0x0'", "slot='0x04' function='0x'",
        "slot='0x04' function='0x8'", "slot='0x20' function='0x0'", "slot='4' function='0x0'",
    };

    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *out = derive_changed("slot='0x04' function='0x0'", bad[i],
                                              "/run/kvm-ft/web1.qmp", &err);

        ck_assert_msg(out == NULL, "accepted <address %s>", bad[i]);
        ck_assert_msg(strstr(err->message, "is not a PCI slot"), "%s", err->message);
    }
}
END_TEST

START_TEST(pci_function_kept)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = derive_changed("slot='0x04' function='0x0'",
                                          "slot='0x0a' function='0x3'", "/q.sock", &err);

    ck_assert_msg(out != NULL, "%s", err ? err->message : "");
    ck_assert_int_eq(count(out, "//q:arg[contains(@value, 'addr=0xa.3')]"), 1);
}
END_TEST

/* The guest boots from a replicated disk where libvirt would have booted it. */
START_TEST(boot_order_carried_as_bootindex)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = derive_changed("<target dev='vda' bus='virtio'/>",
                                          "<target dev='vda' bus='virtio'/><boot order='2'/>",
                                          "/q.sock", &err);

    ck_assert_msg(out != NULL, "%s", err ? err->message : "");
    ck_assert_int_eq(count(out, "//q:arg[@value='virtio-blk-pci,id=kvmft-vblk0,"
                                "drive=colo-disk0,bus=pci.0,addr=0x4,bootindex=2']"), 1);
    /* vdb has no <boot>: no bootindex. */
    ck_assert_int_eq(count(out, "//q:arg[contains(@value,'kvmft-vblk1') and "
                                "contains(@value,'bootindex')]"), 0);
}
END_TEST

/* Like the PCI address, the order is a number: nothing else reaches QEMU's options. */
START_TEST(boot_order_must_be_a_number)
{
    static const char *const bad[] = { "<boot order='1,romfile=/etc/shadow'/>", "<boot order=''/>",
                                       "<boot/>", "<boot order='123456'/>" };

    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *to = g_strconcat("<target dev='vda' bus='virtio'/>", bad[i], NULL);
        g_autofree char *out = derive_changed("<target dev='vda' bus='virtio'/>", to,
                                              "/q.sock", &err);

        ck_assert_msg(out == NULL, "accepted %s", bad[i]);
        ck_assert_msg(strstr(err->message, "<boot order>"), "%s", err->message);
    }
}
END_TEST

/* A comma in the QMP socket's path (from the guest's name) must not start a new option. */
START_TEST(qmp_socket_path_escaped)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = derive_changed("slot='0x04'", "slot='0x04'",
                                          "/run/kvm-ft/a,server=off.qmp", &err);

    ck_assert_msg(out != NULL, "%s", err ? err->message : "");
    ck_assert_int_eq(count(out, "//q:arg[@value='socket,id=kvmft-qmp,path=/run/kvm-ft/"
                                "a,,server=off.qmp,server=on,wait=off']"), 1);
}
END_TEST

START_TEST(derived_is_recognised_and_marks_only_own_starts)
{
    g_autofree char *original = fixture("ftdef-valid.xml");
    g_autofree char *derived = derive("ftdef-valid.xml", FT_ROLE_PRIMARY);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(original, &err);
    DomxmlPlumbing own = { .qmp_socket = "/run/kvm-ft/web1.qmp", .own_start = TRUE };
    g_autofree char *started = domxml_for_role(original, def, FT_ROLE_PRIMARY, &own, &err);

    ck_assert(!domxml_is_derived(original));
    ck_assert(domxml_is_derived(derived));
    ck_assert(!domxml_is_derived("not xml"));
    ck_assert_int_eq(count(derived, "//q:env[@name='" DOMXML_OWN_START_ENV "']"), 0);
    ck_assert_ptr_nonnull(started);
    ck_assert_int_eq(count(started, "//q:env[@name='" DOMXML_OWN_START_ENV "']"), 1);
}
END_TEST

/* A definition declared in another encoding: libvirt and C strings want UTF-8 back. */
START_TEST(derived_is_utf8_whatever_the_original_declared)
{
    g_autofree char *valid = fixture("ftdef-valid.xml");
    g_autofree char *latin1 = g_strconcat("<?xml version='1.0' encoding='ISO-8859-1'?>\n",
                                          valid, NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;
    g_autofree char *derived = NULL;
    g_autofree char *merged = NULL;
    GRegex *re = g_regex_new("</name>", 0, 0, NULL);
    char *with_accent = g_regex_replace_literal(re, latin1, -1, 0,
                                                "</name>\n  <description>caf\xe9</description>",
                                                G_REGEX_MATCH_DEFAULT, NULL);
    DomxmlPlumbing p = { .qmp_socket = "/run/kvm-ft/web1.qmp" };

    g_regex_unref(re);
    g_free(latin1);
    latin1 = with_accent;
    def = ftdef_parse(latin1, &err);
    ck_assert_msg(def != NULL, "%s", err ? err->message : "");
    derived = domxml_for_role(latin1, def, FT_ROLE_PRIMARY, &p, &err);
    ck_assert_msg(derived != NULL, "%s", err ? err->message : "");
    ck_assert(g_utf8_validate(derived, -1, NULL));
    ck_assert_ptr_nonnull(strstr(derived, "caf\xc3\xa9"));
    ck_assert(domxml_is_derived(derived));
    merged = domxml_with_ft_metadata_of(latin1, derived, &err);
    ck_assert_msg(merged != NULL, "%s", err ? err->message : "");
    ck_assert(g_utf8_validate(merged, -1, NULL));
    ck_assert_ptr_nonnull(strstr(merged, "caf\xc3\xa9"));
}
END_TEST

START_TEST(metadata_carried_over_to_the_original)
{
    g_autofree char *original = fixture("ftdef-valid.xml");
    g_autofree char *derived = derive("ftdef-valid.xml", FT_ROLE_PRIMARY);
    g_autoptr(GError) err = NULL;
    g_autofree char *changed = NULL;
    g_autofree char *merged = NULL;
    g_autoptr(FtDef) def = NULL;
    GRegex *re = g_regex_new("interval-ms=['\"][0-9]+['\"]", 0, 0, NULL);

    changed = g_regex_replace_literal(re, derived, -1, 0, "interval-ms='700'", 0, NULL);
    g_regex_unref(re);
    merged = domxml_with_ft_metadata_of(original, changed, &err);
    ck_assert_msg(merged != NULL, "%s", err ? err->message : "");
    ck_assert(!domxml_is_derived(merged));
    def = ftdef_parse(merged, &err);
    ck_assert_msg(def != NULL, "%s", err ? err->message : "");
    ck_assert_uint_eq(def->checkpoint_interval_ms, 700);
    {
        g_autofree char *bad = domxml_with_ft_metadata_of(original, "<domain/>", &err);

        ck_assert_ptr_null(bad);
        ck_assert_ptr_nonnull(err);
    }
}
END_TEST

/*
 * The element a peer's `virsh metadata --set` is repeated with: the <ft:guest>, whole, and
 * out of its namespace, which libvirt puts it in (it refuses one already there).
 */
START_TEST(ft_metadata_element_extracted)
{
    g_autofree char *original = fixture("ftdef-valid.xml");
    g_autoptr(GError) err = NULL;
    g_autofree char *element = domxml_ft_metadata_element(original, &err);
    g_autoptr(GString) in_ns = NULL;
    g_autofree char *wrapped = NULL;
    g_autofree char *merged = NULL;
    g_autoptr(FtDef) def = NULL;

    ck_assert_msg(element != NULL, "%s", err ? err->message : "");
    ck_assert_msg(g_str_has_prefix(element, "<guest>"), "%s", element);
    ck_assert_msg(strstr(element, "<disk target=\"vdb\"") && !strstr(element, "ft:") &&
                  !strstr(element, "xmlns") && !strstr(element, "<domain"), "%s", element);
    /* Put back into its namespace, as libvirt does, it means what it meant. */
    in_ns = g_string_new(element);
    g_string_replace(in_ns, "<guest>", "<guest xmlns=\"https://kvm-ft.dev/xmlns/1\">", 1);
    wrapped = g_strdup_printf("<domain><metadata>%s</metadata></domain>", in_ns->str);
    merged = domxml_with_ft_metadata_of(original, wrapped, &err);
    ck_assert_msg(merged != NULL, "%s", err ? err->message : "");
    def = ftdef_parse(merged, &err);
    ck_assert_msg(def != NULL, "%s", err ? err->message : "");
    ck_assert_uint_eq(def->disks->len, 2);
    {
        g_autoptr(GError) e = NULL;
        g_autofree char *none = domxml_ft_metadata_element("<domain><name>x</name></domain>", &e);

        ck_assert_ptr_null(none);
        ck_assert_msg(e && strstr(e->message, "no kvm-ft metadata"), "%s", e ? e->message : "");
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("domxml");
    TCase *tc = tcase_create("derive");

    tcase_add_test(tc, primary_moves_disks_to_quorum);
    tcase_add_test(tc, secondary_gets_replication_chain);
    tcase_add_test(tc, existing_commandline_and_iothreads_are_kept);
    tcase_add_test(tc, missing_disk_is_an_error);
    tcase_add_test(tc, pci_address_must_be_numbers);
    tcase_add_test(tc, pci_function_kept);
    tcase_add_test(tc, boot_order_carried_as_bootindex);
    tcase_add_test(tc, boot_order_must_be_a_number);
    tcase_add_test(tc, qmp_socket_path_escaped);
    tcase_add_test(tc, derived_is_recognised_and_marks_only_own_starts);
    tcase_add_test(tc, derived_is_utf8_whatever_the_original_declared);
    tcase_add_test(tc, metadata_carried_over_to_the_original);
    tcase_add_test(tc, ft_metadata_element_extracted);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
