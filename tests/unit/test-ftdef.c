/* test-ftdef.c - the FT guest definition: valid documents, every refusal, hostile input */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "ftdef.h"
#include "run-suite.h"

/* ---- helpers ---------------------------------------------------------- */

static char *read_fixture(const char *name)
{
    const char *dir = g_getenv("KVMFT_TEST_DATA");
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;
    char *text = NULL;

    ck_assert_msg(dir != NULL, "KVMFT_TEST_DATA is not set");
    path = g_build_filename(dir, name, NULL);
    ck_assert_msg(g_file_get_contents(path, &text, NULL, &err),
                  "cannot read %s: %s", path, err ? err->message : "?");
    return text;
}

#define FT_OPEN "<ft:guest xmlns:ft='https://kvm-ft.dev/xmlns/1'>"
#define FT_CLOSE "</ft:guest>"
#define HOST_A "<ft:host name='hostA' link-address='192.168.100.1'/>"
#define HOST_B "<ft:host name='hostB' link-address='192.168.100.2'/>"
#define HOSTS "<ft:hosts>" HOST_A HOST_B "</ft:hosts>"
#define FT_VDA "<ft:disk target='vda'/>"
#define GUEST(inner) FT_OPEN inner FT_CLOSE
#define GOOD_GUEST GUEST(HOSTS FT_VDA)

#define DISK(attrs, inner) "<disk " attrs ">" inner "</disk>"
#define VDA_INNER "<driver name='qemu' type='qcow2'/>" \
                  "<source file='/var/lib/kvm-ft/g1.qcow2'/>" \
                  "<target dev='vda' bus='virtio'/>"
#define DISK_VDA DISK("type='file' device='disk'", VDA_INNER)
#define NIC(inner) "<interface type='bridge'><mac address='52:54:00:00:00:01'/>" \
                   "<source bridge='br0'/>" inner "</interface>"
#define GOOD_NIC NIC("<model type='virtio'/><driver name='qemu'/>")

/* A complete domain: <metadata> and <devices> contents given. */
static char *domain(const char *metadata, const char *devices)
{
    return g_strdup_printf("<domain type='kvm'>\n  <name>g1</name>\n"
                           "  <uuid>00000000-0000-4000-8000-000000000001</uuid>\n"
                           "  <metadata>%s</metadata>\n"
                           "  <devices>%s</devices>\n</domain>\n",
                           metadata, devices);
}

static void assert_one_line(const GError *err)
{
    ck_assert_msg(strchr(err->message, '\n') == NULL,
                  "message spans lines: %s", err->message);
    ck_assert_msg(strlen(err->message) < 600, "message too long: %s",
                  err->message);
}

/* Parse @xml; it must be refused as INVALID naming @n1 (and @n2). */
static void expect_invalid_xml(const char *xml, const char *n1, const char *n2)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);

    ck_assert_msg(def == NULL, "accepted: %s", xml ? xml : "(null)");
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_INVALID),
                  "wrong error code %d: %s", err->code, err->message);
    if (g_getenv("KVMFT_TEST_VERBOSE"))
        g_printerr("%s\n", err->message);
    assert_one_line(err);
    ck_assert_msg(strstr(err->message, n1), "message '%s' does not name '%s'",
                  err->message, n1);
    if (n2)
        ck_assert_msg(strstr(err->message, n2),
                      "message '%s' does not name '%s'", err->message, n2);
}

static void expect_invalid(const char *metadata, const char *devices,
                           const char *n1, const char *n2)
{
    g_autofree char *xml = domain(metadata, devices);

    expect_invalid_xml(xml, n1, n2);
}

/* One refusal per test, so a failure names the case. */
#define INVALID(tname, metadata, devices, n1, n2) \
    START_TEST(tname) { expect_invalid(metadata, devices, n1, n2); } END_TEST

/* ---- valid documents ---------------------------------------------------- */

START_TEST(valid_all_fields)
{
    g_autofree char *xml = read_fixture("ftdef-valid.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);
    const FtDisk *d;

    ck_assert_msg(def != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(def->name, "web1");
    ck_assert_str_eq(def->uuid, "8f1c5a4e-3b2d-4c6e-9a1f-0d2e3f4a5b6c");
    ck_assert_str_eq(def->hosts[0].name, "hostA");
    ck_assert_str_eq(def->hosts[0].link_address, "192.168.100.1");
    ck_assert_str_eq(def->hosts[1].name, "hostB");
    ck_assert_str_eq(def->hosts[1].link_address, "192.168.100.2");
    ck_assert_uint_eq(def->checkpoint_interval_ms, 500);
    ck_assert_uint_eq(def->port_base, 9200);
    ck_assert_uint_eq(def->n_interfaces, 1);
    ck_assert_uint_eq(def->disks->len, 2);
    d = g_ptr_array_index(def->disks, 0);
    ck_assert_str_eq(d->target, "vda");
    ck_assert_str_eq(d->source_path, "/var/lib/libvirt/images/web1.qcow2");
    ck_assert_str_eq(d->format, "qcow2");
    d = g_ptr_array_index(def->disks, 1);
    ck_assert_str_eq(d->target, "vdb");
    ck_assert_str_eq(d->source_path, "/var/lib/libvirt/images/web1-data.img");
    ck_assert_str_eq(d->format, "raw");
}
END_TEST

START_TEST(valid_self_and_peer)
{
    g_autofree char *xml = read_fixture("ftdef-valid.xml");
    g_autoptr(FtDef) def = ftdef_parse(xml, NULL);

    ck_assert_ptr_nonnull(def);
    ck_assert_ptr_eq(ftdef_self(def, "hostA"), &def->hosts[0]);
    ck_assert_ptr_eq(ftdef_peer(def, "hostA"), &def->hosts[1]);
    ck_assert_ptr_eq(ftdef_self(def, "hostB"), &def->hosts[1]);
    ck_assert_ptr_eq(ftdef_peer(def, "hostB"), &def->hosts[0]);
    ck_assert_ptr_null(ftdef_self(def, "hostC"));
    ck_assert_ptr_null(ftdef_peer(def, "hostC"));
    ck_assert_ptr_null(ftdef_self(def, "hosta"));
    ck_assert_ptr_null(ftdef_self(def, NULL));
    ck_assert_ptr_null(ftdef_peer(def, NULL));
    ck_assert_ptr_null(ftdef_self(NULL, "hostA"));
    ck_assert_ptr_null(ftdef_peer(NULL, "hostA"));
}
END_TEST

START_TEST(valid_defaults)
{
    g_autofree char *xml = read_fixture("ftdef-defaults.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);
    const FtDisk *d;

    ck_assert_msg(def != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(def->name, "db1");
    ck_assert_ptr_null(def->uuid);
    ck_assert_str_eq(def->hosts[0].name, "node-1.example");
    ck_assert_str_eq(def->hosts[1].name, "node_2");
    ck_assert_str_eq(def->hosts[1].link_address, "10.0.0.2");
    ck_assert_ptr_null(def->hosts[0].lan_address);
    ck_assert_uint_eq(def->checkpoint_interval_ms, FTDEF_INTERVAL_DEFAULT);
    ck_assert_uint_eq(def->checkpoint_interval_ms, 2000);
    ck_assert_uint_eq(def->port_base, FTDEF_PORT_BASE_DEFAULT);
    ck_assert_uint_eq(def->port_base, 9100);
    ck_assert_uint_eq(def->n_interfaces, 0);
    ck_assert_uint_eq(def->disks->len, 1);
    d = g_ptr_array_index(def->disks, 0);
    /* <disk> without type/device: libvirt's defaults, file and disk. */
    ck_assert_str_eq(d->target, "sda");
    ck_assert_str_eq(d->source_path, "/srv/db1.img");
    ck_assert_str_eq(d->format, "raw");
}
END_TEST

START_TEST(valid_bounds)
{
    g_autofree char *xml = domain(
        GUEST(HOSTS "<ft:checkpoint interval-ms='20'/><ft:ports base='65000'/>" FT_VDA),
        DISK_VDA GOOD_NIC);
    g_autofree char *xml2 = domain(
        GUEST(HOSTS "<ft:checkpoint interval-ms='60000'/><ft:ports base='1024'/>"
              FT_VDA),
        DISK_VDA NIC("<model type='virtio'/><driver name='qemu' queues='1'/>"));
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) a = ftdef_parse(xml, &err);
    g_autoptr(FtDef) b = NULL;

    ck_assert_msg(a != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_uint_eq(a->checkpoint_interval_ms, 20);
    ck_assert_uint_eq(a->port_base, 65000);
    b = ftdef_parse(xml2, &err);
    ck_assert_msg(b != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_uint_eq(b->checkpoint_interval_ms, 60000);
    ck_assert_uint_eq(b->port_base, 1024);
}
END_TEST

START_TEST(output_modes)
{
    g_autofree char *passive = domain(
        GUEST(HOSTS "<ft:checkpoint interval-ms='100' output='passive'/>" FT_VDA), DISK_VDA);
    g_autofree char *compare = domain(
        GUEST(HOSTS "<ft:checkpoint output='compare' compare-timeout-ms='20'/>" FT_VDA),
        DISK_VDA);
    g_autofree char *absent = domain(GUEST(HOSTS FT_VDA), DISK_VDA);
    g_autofree char *automatic = domain(
        GUEST(HOSTS "<ft:checkpoint output='auto'/>" FT_VDA), DISK_VDA);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) p = ftdef_parse(passive, &err);
    g_autoptr(FtDef) c = NULL;
    g_autoptr(FtDef) a = NULL;
    g_autoptr(FtDef) au = NULL;

    ck_assert_msg(p != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_int_eq(p->output_mode, FTDEF_OUTPUT_PASSIVE);
    ck_assert_uint_eq(p->checkpoint_interval_ms, 100);
    ck_assert_uint_eq(p->compare_timeout_ms, FTDEF_PASSIVE_EPOCH_DEFAULT);
    c = ftdef_parse(compare, &err);
    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_int_eq(c->output_mode, FTDEF_OUTPUT_COMPARE);
    ck_assert_uint_eq(c->checkpoint_interval_ms, FTDEF_INTERVAL_DEFAULT);
    ck_assert_uint_eq(c->compare_timeout_ms, 20);
    a = ftdef_parse(absent, &err);
    ck_assert_msg(a != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_int_eq(a->output_mode, FTDEF_OUTPUT_COMPARE);
    ck_assert_uint_eq(a->compare_timeout_ms, FTDEF_COMPARE_TIMEOUT_DEFAULT);
    ck_assert_str_eq(ftdef_output_mode_name(p->output_mode), "passive");
    /* auto's compare phases wait as compare mode does */
    au = ftdef_parse(automatic, &err);
    ck_assert_msg(au != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_int_eq(au->output_mode, FTDEF_OUTPUT_AUTO);
    ck_assert_uint_eq(au->compare_timeout_ms, FTDEF_COMPARE_TIMEOUT_DEFAULT);
    ck_assert_str_eq(ftdef_output_mode_name(au->output_mode), "auto");
}
END_TEST

START_TEST(valid_default_namespace)
{
    g_autofree char *xml = domain(
        "<guest xmlns='https://kvm-ft.dev/xmlns/1'><hosts>"
        "<host name='hostA' link-address='192.168.100.1'/>"
        "<host name='hostB' link-address='192.168.100.2'/></hosts>"
        "<disk target='vda'/></guest>", DISK_VDA GOOD_NIC);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);

    ck_assert_msg(def != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(def->name, "g1");
    ck_assert_uint_eq(def->disks->len, 1);
    ck_assert_uint_eq(def->n_interfaces, 1);
}
END_TEST

START_TEST(not_ft_fixture)
{
    g_autofree char *xml = read_fixture("ftdef-not-ft.xml");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);

    ck_assert_ptr_null(def);
    ck_assert_msg(g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT),
                  "wrong error: %s", err ? err->message : "none");
    ck_assert_ptr_nonnull(strstr(err->message, "<ft:guest"));
}
END_TEST

START_TEST(not_ft_without_metadata)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(
        "<domain type='kvm'><name>x</name><devices/></domain>", &err);

    ck_assert_ptr_null(def);
    ck_assert(g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT));
}
END_TEST

/* ---- the document --------------------------------------------------------- */

START_TEST(malformed_xml_has_line)
{
    expect_invalid_xml("<domain>\n  <name>x</name>\n  <devices>\n</domain>\n",
                       "not well-formed", "line 4");
}
END_TEST

START_TEST(undeclared_prefix)
{
    expect_invalid_xml("<domain><name>g1</name><metadata><ft:guest>" HOSTS FT_VDA
                       "</ft:guest></metadata></domain>", "not well-formed",
                       "prefix ft");
}
END_TEST

START_TEST(not_a_domain)
{
    expect_invalid_xml("<network><name>default</name></network>", "<network>",
                       "<domain>");
}
END_TEST

START_TEST(domain_in_a_namespace)
{
    expect_invalid_xml("<d:domain xmlns:d='urn:x'><name>x</name></d:domain>",
                       "<d:domain>", "root element");
}
END_TEST

INVALID(guest_duplicate, GOOD_GUEST GOOD_GUEST, DISK_VDA,
        "duplicate <ft:guest>", NULL)
START_TEST(guest_outside_metadata)
{
    expect_invalid_xml("<domain><name>g1</name>" GOOD_GUEST
                       "<devices>" DISK_VDA "</devices></domain>",
                       "<ft:guest>", "<domain><metadata>");
}
END_TEST
INVALID(stray_ft_element_without_guest, "<ft:hosts xmlns:ft='https://kvm-ft.dev/xmlns/1'/>",
        DISK_VDA, "<ft:hosts>", "outside <ft:guest>")
INVALID(stray_ft_element_next_to_guest,
        GOOD_GUEST "<ft:disk xmlns:ft='https://kvm-ft.dev/xmlns/1' target='vdb'/>",
        DISK_VDA, "<ft:disk>", "outside <ft:guest>")
INVALID(namespace_version_2,
        "<ft:guest xmlns:ft='https://kvm-ft.dev/xmlns/2'>" HOSTS FT_VDA "</ft:guest>",
        DISK_VDA, "unsupported kvm-ft metadata version", "<ft:guest>")
INVALID(namespace_version_nested,
        FT_OPEN HOSTS "<v2:disk xmlns:v2='https://kvm-ft.dev/xmlns/2' target='vda'/>"
        FT_CLOSE, DISK_VDA, "unsupported kvm-ft metadata version", "<v2:disk>")
INVALID(guest_unknown_ft_child, GUEST(HOSTS FT_VDA "<ft:disks target='vdb'/>"),
        DISK_VDA, "<ft:disks>", "unknown element")
INVALID(guest_child_without_namespace,
        GUEST("<hosts>" HOST_A HOST_B "</hosts>" FT_VDA), DISK_VDA,
        "unexpected element <hosts>", "namespace")
INVALID(guest_text, GUEST(HOSTS FT_VDA "junk"), DISK_VDA, "<ft:guest>",
        "unexpected text")
INVALID(guest_attribute, "<ft:guest xmlns:ft='https://kvm-ft.dev/xmlns/1' "
        "interval='5'>" HOSTS FT_VDA FT_CLOSE, DISK_VDA, "<ft:guest>",
        "unknown attribute 'interval'")
INVALID(unknown_attribute, GUEST(HOSTS "<ft:checkpoint interval='500'/>" FT_VDA),
        DISK_VDA, "<ft:checkpoint>", "unknown attribute 'interval'")
INVALID(leaf_with_child, GUEST(HOSTS "<ft:ports base='9100'><ft:x/></ft:ports>"
        FT_VDA), DISK_VDA, "<ft:ports>", "must be empty")

/* ---- hosts ------------------------------------------------------------ */

INVALID(hosts_missing, GUEST(FT_VDA), DISK_VDA, "<ft:hosts> is missing", NULL)
INVALID(hosts_duplicate, GUEST(HOSTS HOSTS FT_VDA), DISK_VDA,
        "duplicate <ft:hosts>", NULL)
INVALID(hosts_one, GUEST("<ft:hosts>" HOST_A "</ft:hosts>" FT_VDA), DISK_VDA,
        "<ft:hosts>", "exactly two")
INVALID(hosts_three, GUEST("<ft:hosts>" HOST_A HOST_B
        "<ft:host name='hostC' link-address='192.168.100.3'/></ft:hosts>" FT_VDA),
        DISK_VDA, "<ft:hosts>", "more than two")
INVALID(hosts_other_child, GUEST("<ft:hosts>" HOST_A HOST_B "<ft:peer/></ft:hosts>"
        FT_VDA), DISK_VDA, "<ft:hosts>", "<ft:peer>")
INVALID(host_name_missing, GUEST("<ft:hosts>" HOST_A
        "<ft:host link-address='192.168.100.2'/></ft:hosts>" FT_VDA), DISK_VDA,
        "<ft:host>", "name attribute is missing")
INVALID(host_name_empty, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='' link-address='192.168.100.2'/></ft:hosts>" FT_VDA),
        DISK_VDA, "<ft:host>", "name attribute is empty")
INVALID(host_name_bad_chars, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='host B' link-address='192.168.100.2'/></ft:hosts>" FT_VDA),
        DISK_VDA, "<ft:host name='host B'>", "not a valid host name")
INVALID(host_name_duplicate, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostA' link-address='192.168.100.2'/></ft:hosts>" FT_VDA),
        DISK_VDA, "<ft:hosts>", "name='hostA'")
INVALID(host_address_missing, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostB'/></ft:hosts>" FT_VDA), DISK_VDA,
        "<ft:host name='hostB'>", "link-address attribute is missing")
INVALID(host_address_short, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostB' link-address='192.168.100'/></ft:hosts>" FT_VDA),
        DISK_VDA, "link-address='192.168.100'", "IPv4")
INVALID(host_address_hostname, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostB' link-address='hostB.example'/></ft:hosts>" FT_VDA),
        DISK_VDA, "link-address='hostB.example'", "IPv4")
INVALID(host_address_ipv6, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostB' link-address='fe80::1'/></ft:hosts>" FT_VDA),
        DISK_VDA, "link-address='fe80::1'", "IPv4")
INVALID(host_address_trailing_space, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostB' link-address='192.168.100.2 '/></ft:hosts>" FT_VDA),
        DISK_VDA, "<ft:host name='hostB'", "IPv4")
INVALID(host_address_any, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostB' link-address='0.0.0.0'/></ft:hosts>" FT_VDA),
        DISK_VDA, "link-address='0.0.0.0'", "unicast")
INVALID(host_address_same, GUEST("<ft:hosts>" HOST_A
        "<ft:host name='hostB' link-address='192.168.100.1'/></ft:hosts>" FT_VDA),
        DISK_VDA, "<ft:hosts>", "link-address='192.168.100.1'")

/* ---- checkpoint and ports ------------------------------------------------ */

START_TEST(interval_too_small_exact_message)
{
    g_autofree char *xml = domain(
        GUEST(HOSTS "<ft:checkpoint interval-ms='5'/>" FT_VDA), DISK_VDA);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);

    ck_assert_ptr_null(def);
    ck_assert(g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_INVALID));
    ck_assert_str_eq(err->message, "<ft:checkpoint interval-ms='5'>: must be an "
                     "integer between 20 and 60000 (milliseconds)");
}
END_TEST
START_TEST(valid_lan_addresses)
{
    g_autofree char *xml = domain(GUEST("<ft:hosts>"
        "<ft:host name='hostA' link-address='192.168.100.1' lan-address='10.0.0.1'/>"
        "<ft:host name='hostB' link-address='192.168.100.2' lan-address='10.0.0.2'/>"
        "</ft:hosts>" FT_VDA), DISK_VDA);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);

    ck_assert_msg(def != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(def->hosts[0].lan_address, "10.0.0.1");
    ck_assert_str_eq(def->hosts[1].lan_address, "10.0.0.2");
}
END_TEST
INVALID(lan_address_not_ipv4, GUEST("<ft:hosts>"
        "<ft:host name='hostA' link-address='192.168.100.1' lan-address='lan-a'/>"
        HOST_B "</ft:hosts>" FT_VDA), DISK_VDA, "lan-address='lan-a'", "IPv4")
INVALID(lan_address_empty, GUEST("<ft:hosts>"
        "<ft:host name='hostA' link-address='192.168.100.1' lan-address=''/>"
        HOST_B "</ft:hosts>" FT_VDA), DISK_VDA, "lan-address attribute is empty", NULL)
INVALID(interval_too_large, GUEST(HOSTS "<ft:checkpoint interval-ms='60001'/>"
        FT_VDA), DISK_VDA, "<ft:checkpoint interval-ms='60001'>", "20 and 60000")
INVALID(interval_negative, GUEST(HOSTS "<ft:checkpoint interval-ms='-100'/>"
        FT_VDA), DISK_VDA, "<ft:checkpoint interval-ms='-100'>", "20 and 60000")
INVALID(interval_unit_suffix, GUEST(HOSTS "<ft:checkpoint interval-ms='2s'/>"
        FT_VDA), DISK_VDA, "<ft:checkpoint interval-ms='2s'>", "integer")
INVALID(checkpoint_empty, GUEST(HOSTS "<ft:checkpoint/>" FT_VDA), DISK_VDA,
        "<ft:checkpoint>", "neither interval-ms, output nor compare-timeout-ms")
INVALID(compare_timeout_too_small, GUEST(HOSTS "<ft:checkpoint compare-timeout-ms='4'/>"
        FT_VDA), DISK_VDA, "<ft:checkpoint compare-timeout-ms='4'>", "5 and 10000")
INVALID(compare_timeout_too_large, GUEST(HOSTS
        "<ft:checkpoint compare-timeout-ms='10001'/>" FT_VDA), DISK_VDA,
        "<ft:checkpoint compare-timeout-ms='10001'>", "5 and 10000")
INVALID(output_unknown, GUEST(HOSTS "<ft:checkpoint output='buffered'/>" FT_VDA),
        DISK_VDA, "<ft:checkpoint output='buffered'>", "'compare'")
INVALID(output_case, GUEST(HOSTS "<ft:checkpoint output='Passive'/>" FT_VDA),
        DISK_VDA, "<ft:checkpoint output='Passive'>", "'passive'")
INVALID(interval_huge_number, GUEST(HOSTS
        "<ft:checkpoint interval-ms='99999999999999999999'/>" FT_VDA), DISK_VDA,
        "<ft:checkpoint interval-ms='99999999999999999999'>", "integer")
INVALID(checkpoint_duplicate, GUEST(HOSTS "<ft:checkpoint interval-ms='100'/>"
        "<ft:checkpoint interval-ms='200'/>" FT_VDA), DISK_VDA,
        "duplicate <ft:checkpoint>", NULL)
INVALID(ports_too_low, GUEST(HOSTS "<ft:ports base='80'/>" FT_VDA), DISK_VDA,
        "<ft:ports base='80'>", "1024 and 65000")
INVALID(ports_too_high, GUEST(HOSTS "<ft:ports base='65001'/>" FT_VDA), DISK_VDA,
        "<ft:ports base='65001'>", "1024 and 65000")
INVALID(ports_not_numeric, GUEST(HOSTS "<ft:ports base='abc'/>" FT_VDA), DISK_VDA,
        "<ft:ports base='abc'>", "integer")
INVALID(ports_trailing_junk, GUEST(HOSTS "<ft:ports base='9100x'/>" FT_VDA),
        DISK_VDA, "<ft:ports base='9100x'>", "integer")
INVALID(ports_hex, GUEST(HOSTS "<ft:ports base='0x2400'/>" FT_VDA), DISK_VDA,
        "<ft:ports base='0x2400'>", "integer")
INVALID(ports_empty, GUEST(HOSTS "<ft:ports base=''/>" FT_VDA), DISK_VDA,
        "<ft:ports base=''>", "integer")
INVALID(ports_missing, GUEST(HOSTS "<ft:ports/>" FT_VDA), DISK_VDA,
        "<ft:ports>", "base attribute is missing")
INVALID(ports_duplicate, GUEST(HOSTS "<ft:ports base='9100'/>"
        "<ft:ports base='9200'/>" FT_VDA), DISK_VDA, "duplicate <ft:ports>", NULL)

/* ---- disks ---------------------------------------------------------------- */

INVALID(disk_none, GUEST(HOSTS), DISK_VDA, "no <ft:disk>", NULL)
INVALID(disk_target_missing, GUEST(HOSTS "<ft:disk/>"), DISK_VDA, "<ft:disk>",
        "target attribute is missing")
INVALID(disk_target_bad_chars, GUEST(HOSTS "<ft:disk target=\"v'da\"/>"),
        DISK_VDA, "<ft:disk target='v\\'da'>", "not a disk target name")
INVALID(disk_target_unknown, GUEST(HOSTS "<ft:disk target='vdz'/>"), DISK_VDA,
        "<ft:disk target='vdz'>", "no <disk> with <target dev='vdz'>; name one "
        "of its disks (vda)")
INVALID(disk_target_twice, GUEST(HOSTS FT_VDA FT_VDA), DISK_VDA,
        "<ft:disk target='vda'>", "named twice")
INVALID(disk_two_domain_disks_same_target, GOOD_GUEST, DISK_VDA DISK_VDA,
        "<ft:disk target='vda'>", "two domain <disk>")
INVALID(disk_cdrom, GOOD_GUEST, DISK("type='file' device='cdrom'", VDA_INNER),
        "<ft:disk target='vda'>", "<disk device='cdrom'>")
INVALID(disk_lun, GOOD_GUEST, DISK("type='block' device='lun'",
        "<source dev='/dev/sdb'/><target dev='vda'/>"),
        "<ft:disk target='vda'>", "<disk device='lun'>")
INVALID(disk_network, GOOD_GUEST, DISK("type='network' device='disk'",
        "<driver name='qemu' type='raw'/><source protocol='nbd' name='x'>"
        "<host name='10.0.0.9' port='10809'/></source><target dev='vda'/>"),
        "<ft:disk target='vda'>", "<disk type='network'>")
INVALID(disk_block, GOOD_GUEST, DISK("type='block' device='disk'",
        "<driver name='qemu' type='raw'/><source dev='/dev/sdb'/>"
        "<target dev='vda'/>"), "<ft:disk target='vda'>", "<disk type='block'>")
INVALID(disk_readonly, GOOD_GUEST,
        DISK("type='file' device='disk'", VDA_INNER "<readonly/>"),
        "<ft:disk target='vda'>", "<readonly/>")
INVALID(disk_shareable, GOOD_GUEST,
        DISK("type='file' device='disk'", VDA_INNER "<shareable/>"),
        "<ft:disk target='vda'>", "<shareable/>")
#define VDB_INNER "<driver name='qemu' type='raw'/><source file='/var/lib/kvm-ft/g1-data.img'/>" \
                  "<target dev='vdb' bus='virtio'/>"
INVALID(disk_writable_unreplicated, GOOD_GUEST,
        DISK_VDA DISK("type='file' device='disk'", VDB_INNER),
        "<disk> with <target dev='vdb'>", "replicate it with <ft:disk target='vdb'/>")
INVALID(disk_lun_unreplicated, GOOD_GUEST,
        DISK_VDA DISK("type='block' device='lun'", "<source dev='/dev/sdb'/>"
                      "<target dev='sdb' bus='scsi'/>"),
        "<disk> with <target dev='sdb'>", "make it <readonly/>")
INVALID(disk_unreplicated_without_target, GOOD_GUEST,
        DISK_VDA DISK("type='file' device='disk'", "<source file='/img/x.img'/>"),
        "<disk>: a writable disk without a valid <target dev>", NULL)

/* Read-only media are the same on both hosts: they may stay out of <ft:disk>. */
START_TEST(disk_readonly_unreplicated_allowed)
{
    g_autofree char *xml = domain(GOOD_GUEST,
                                  DISK_VDA DISK("type='file' device='disk'", VDB_INNER "<readonly/>")
                                  DISK("type='file' device='cdrom'",
                                       "<source file='/img/seed.iso'/><target dev='hdc'/>"));
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);

    ck_assert_msg(def != NULL, "%s", err ? err->message : "");
    ck_assert_uint_eq(def->disks->len, 1);
}
END_TEST

INVALID(disk_format_vmdk, GOOD_GUEST, DISK("type='file' device='disk'",
        "<driver name='qemu' type='vmdk'/><source file='/img/a.vmdk'/>"
        "<target dev='vda'/>"), "<ft:disk target='vda'>", "<driver type='vmdk'>")
INVALID(disk_format_missing, GOOD_GUEST, DISK("type='file' device='disk'",
        "<driver name='qemu'/><source file='/img/a.img'/><target dev='vda'/>"),
        "<ft:disk target='vda'>", "<driver type>")
INVALID(disk_source_missing, GOOD_GUEST, DISK("type='file' device='disk'",
        "<driver name='qemu' type='qcow2'/><target dev='vda'/>"),
        "<ft:disk target='vda'>", "<source file>")
INVALID(disk_source_empty, GOOD_GUEST, DISK("type='file' device='disk'",
        "<driver name='qemu' type='qcow2'/><source file=''/><target dev='vda'/>"),
        "<ft:disk target='vda'>", "<source file>")
INVALID(disk_source_relative, GOOD_GUEST, DISK("type='file' device='disk'",
        "<driver name='qemu' type='qcow2'/><source file='img/a.qcow2'/>"
        "<target dev='vda'/>"), "<ft:disk target='vda'>", "absolute path")

/* ---- protection level ha: disks mirrored by DRBD ------------------------------ */

#define HA "<ft:protection level='ha'/>"
#define FT_VDA_HA "<ft:disk target='vda' backing-device='/dev/vg0/g1-vda'/>"
#define FT_VDB_HA "<ft:disk target='vdb' backing-device='/dev/vg0/g1-vdb'/>"
#define HA_GUEST GUEST(HOSTS HA FT_VDA_HA)
#define DRBD_INNER(dev, tgt) "<driver name='qemu' type='raw'/><source dev='" dev "'/>" \
                             "<target dev='" tgt "' bus='virtio'/>"
#define DISK_DRBD(dev, tgt) DISK("type='block' device='disk'", DRBD_INNER(dev, tgt))
#define DRBD_VDA DISK_DRBD("/dev/drbd10", "vda")

START_TEST(ha_valid)
{
    /* <ft:protection> after the disks: the level applies to all of <ft:guest>. */
    g_autofree char *xml = domain(
        GUEST(HOSTS "<ft:ports base='9300'/>" FT_VDA_HA
              "<ft:disk target='vdb' backing-device='/dev/disk/by-path/pci-0000:00:1f.2-ata-1'/>"
              "<ft:disk target='vdc' backing-device='/dev/loop0'/>" HA),
        DRBD_VDA DISK_DRBD("/dev/drbd0", "vdb") DISK_DRBD("/dev/drbd1048575", "vdc"));
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = ftdef_parse(xml, &err);
    const FtDisk *d;

    ck_assert_msg(def != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_int_eq(def->level, FTDEF_LEVEL_HA);
    ck_assert_str_eq(ftdef_level_name(def->level), "ha");
    ck_assert_uint_eq(def->port_base, 9300);
    ck_assert_uint_eq(def->disks->len, 3);
    d = g_ptr_array_index(def->disks, 0);
    ck_assert_str_eq(d->target, "vda");
    ck_assert_str_eq(d->backing_device, "/dev/vg0/g1-vda");
    ck_assert_uint_eq(d->drbd_minor, 10);
    ck_assert_str_eq(d->source_path, "/dev/drbd10");
    ck_assert_str_eq(d->format, "raw");
    d = g_ptr_array_index(def->disks, 1);
    ck_assert_str_eq(d->backing_device, "/dev/disk/by-path/pci-0000:00:1f.2-ata-1");
    ck_assert_uint_eq(d->drbd_minor, 0);
    ck_assert_str_eq(d->source_path, "/dev/drbd0");
    d = g_ptr_array_index(def->disks, 2);
    ck_assert_uint_eq(d->drbd_minor, FTDEF_DRBD_MINOR_MAX);
}
END_TEST

START_TEST(level_default_and_explicit_ft)
{
    g_autofree char *plain = domain(GOOD_GUEST, DISK_VDA);
    g_autofree char *explicit_ft = domain(GUEST(HOSTS "<ft:protection level='ft'/>" FT_VDA),
                                          DISK_VDA);
    g_autoptr(FtDef) a = ftdef_parse(plain, NULL);
    g_autoptr(FtDef) b = ftdef_parse(explicit_ft, NULL);
    const FtDisk *d;

    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(a->level, FTDEF_LEVEL_FT);
    ck_assert_int_eq(b->level, FTDEF_LEVEL_FT);
    ck_assert_str_eq(ftdef_level_name(a->level), "ft");
    d = g_ptr_array_index(a->disks, 0);
    ck_assert_ptr_null(d->backing_device);
    ck_assert_uint_eq(d->drbd_minor, 0);
    ck_assert(ftdef_same_pair_and_disks(a, b));
}
END_TEST

/* The level, each backing device and each minor are part of the pair's storage. */
START_TEST(ha_same_pair_and_disks)
{
    g_autofree char *ha = domain(HA_GUEST, DRBD_VDA);
    g_autofree char *other_backing = domain(
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev/vg1/g1-vda'/>"), DRBD_VDA);
    g_autofree char *other_minor = domain(HA_GUEST, DISK_DRBD("/dev/drbd11", "vda"));
    g_autofree char *ft = domain(GOOD_GUEST, DISK_VDA);
    g_autoptr(FtDef) a = ftdef_parse(ha, NULL);
    g_autoptr(FtDef) a2 = ftdef_parse(ha, NULL);
    g_autoptr(FtDef) b = ftdef_parse(other_backing, NULL);
    g_autoptr(FtDef) c = ftdef_parse(other_minor, NULL);
    g_autoptr(FtDef) f = ftdef_parse(ft, NULL);

    ck_assert(a && a2 && b && c && f);
    ck_assert(ftdef_same_pair_and_disks(a, a2));
    ck_assert(!ftdef_same_pair_and_disks(a, b));
    ck_assert(!ftdef_same_pair_and_disks(a, c));
    ck_assert(!ftdef_same_pair_and_disks(a, f));
    ck_assert(!ftdef_same_pair_and_disks(f, a));
}
END_TEST

INVALID(protection_level_unknown, GUEST(HOSTS "<ft:protection level='colo'/>" FT_VDA),
        DISK_VDA, "<ft:protection level='colo'>", "must be 'ft'")
INVALID(protection_level_missing, GUEST(HOSTS "<ft:protection/>" FT_VDA), DISK_VDA,
        "<ft:protection>", "the level attribute is missing")
INVALID(protection_unknown_attribute,
        GUEST(HOSTS "<ft:protection level='ha' mode='drbd'/>" FT_VDA_HA), DRBD_VDA,
        "<ft:protection>: unknown attribute 'mode'; allowed: level", NULL)
INVALID(protection_twice, GUEST(HOSTS HA HA FT_VDA_HA), DRBD_VDA,
        "duplicate <ft:protection>", NULL)
INVALID(protection_text, GUEST(HOSTS "<ft:protection>ha</ft:protection>" FT_VDA), DISK_VDA,
        "<ft:protection>: unexpected text", NULL)
INVALID(ha_checkpoint_refused, GUEST(HOSTS HA "<ft:checkpoint interval-ms='100'/>" FT_VDA_HA),
        DRBD_VDA, "<ft:checkpoint> applies to protection level ft only", NULL)
INVALID(ha_backing_device_missing, GUEST(HOSTS HA FT_VDA), DRBD_VDA,
        "<ft:disk target='vda'>: protection level ha needs its backing-device", NULL)
INVALID(ft_backing_device_refused, GUEST(HOSTS FT_VDA_HA), DISK_VDA,
        "<ft:disk target='vda'>: backing-device applies to protection level ha only", NULL)
INVALID(ha_backing_device_empty,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device=''/>"), DRBD_VDA,
        "<ft:disk target='vda' backing-device=''>: is empty", NULL)
INVALID(ha_backing_device_not_dev,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/srv/vda.img'/>"), DRBD_VDA,
        "backing-device='/srv/vda.img'>: is not an absolute path under /dev/", NULL)
INVALID(ha_backing_device_relative,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='dev/sda'/>"), DRBD_VDA,
        "is not an absolute path under /dev/", NULL)
INVALID(ha_backing_device_dotdot,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev/../etc/passwd'/>"),
        DRBD_VDA, "contains '..'", NULL)
INVALID(ha_backing_device_space,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev/vg0/a b'/>"), DRBD_VDA,
        "backing-device='/dev/vg0/a b'>: has a character a DRBD resource file cannot take",
        NULL)
INVALID(ha_backing_device_quote,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev/a\"b'/>"), DRBD_VDA,
        "backing-device='/dev/a\\\"b'>", "cannot take")
INVALID(ha_backing_device_semicolon,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev/sda;reboot'/>"),
        DRBD_VDA, "cannot take", NULL)
INVALID(ha_backing_device_brace,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev/sda}'/>"), DRBD_VDA,
        "cannot take", NULL)
INVALID(ha_backing_device_newline,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev/sda&#10;x'/>"), DRBD_VDA,
        "backing-device='/dev/sda\\nx'>", "cannot take")
INVALID(ha_backing_device_empty_component,
        GUEST(HOSTS HA "<ft:disk target='vda' backing-device='/dev//sda'/>"), DRBD_VDA,
        "has '.' or empty components", NULL)
INVALID(ha_backing_device_twice, GUEST(HOSTS HA FT_VDA_HA
                                       "<ft:disk target='vdb' backing-device='/dev/vg0/g1-vda'/>"),
        DRBD_VDA DISK_DRBD("/dev/drbd11", "vdb"),
        "<ft:disk target='vdb'>: backing-device='/dev/vg0/g1-vda' is <ft:disk target='vda'>'s "
        "too; each disk needs its own backing device", NULL)
INVALID(ha_disk_file, HA_GUEST, DISK_VDA,
        "<ft:disk target='vda'>: its <disk type='file'> cannot be mirrored by DRBD", NULL)
INVALID(ha_disk_type_absent, HA_GUEST, DISK("device='disk'", DRBD_INNER("/dev/drbd10", "vda")),
        "<ft:disk target='vda'>: its <disk type='file'> cannot be mirrored by DRBD", NULL)
INVALID(ha_disk_lun, HA_GUEST, DISK("type='block' device='lun'",
                                    DRBD_INNER("/dev/drbd10", "vda")),
        "<disk device='lun'>", "only <disk type='block' device='disk'>")
INVALID(ha_disk_format_qcow2, HA_GUEST, DISK("type='block' device='disk'",
        "<driver name='qemu' type='qcow2'/><source dev='/dev/drbd10'/><target dev='vda'/>"),
        "<ft:disk target='vda'>: its <driver type='qcow2'> is not supported at protection "
        "level ha", NULL)
INVALID(ha_disk_format_missing, HA_GUEST, DISK("type='block' device='disk'",
        "<source dev='/dev/drbd10'/><target dev='vda'/>"),
        "<ft:disk target='vda'>: its <disk> has no <driver type>", "type='raw'")
INVALID(ha_disk_source_dev_missing, HA_GUEST, DISK("type='block' device='disk'",
        "<driver name='qemu' type='raw'/><source file='/dev/drbd10'/><target dev='vda'/>"),
        "<ft:disk target='vda'>: its <disk> has no <source dev>", NULL)
INVALID(ha_disk_not_drbd, HA_GUEST, DISK_DRBD("/dev/sda", "vda"),
        "<ft:disk target='vda'>: its <source dev='/dev/sda'> is not a DRBD device", NULL)
INVALID(ha_disk_minor_leading_zero, HA_GUEST, DISK_DRBD("/dev/drbd010", "vda"),
        "<source dev='/dev/drbd010'> is not a DRBD device", "without leading zeros")
INVALID(ha_disk_minor_too_large, HA_GUEST, DISK_DRBD("/dev/drbd1048576", "vda"),
        "<source dev='/dev/drbd1048576'> is not a DRBD device", "from 0 to 1048575")
INVALID(ha_disk_minor_not_decimal, HA_GUEST, DISK_DRBD("/dev/drbd1a", "vda"),
        "is not a DRBD device", NULL)
INVALID(ha_disk_minor_empty, HA_GUEST, DISK_DRBD("/dev/drbd", "vda"),
        "is not a DRBD device", NULL)
INVALID(ha_disk_minor_twice, GUEST(HOSTS HA FT_VDA_HA FT_VDB_HA),
        DRBD_VDA DISK_DRBD("/dev/drbd10", "vdb"),
        "<ft:disk target='vdb'>: its <source dev='/dev/drbd10'> is <ft:disk target='vda'>'s "
        "too; give each disk its own DRBD minor", NULL)
INVALID(ha_disk_unreplicated, HA_GUEST, DRBD_VDA DISK_DRBD("/dev/drbd11", "vdb"),
        "<disk> with <target dev='vdb'>", NULL)

/* ---- what kvm-ft cannot protect at domain level ----------------------------- */

INVALID(nic_vhost, GOOD_GUEST, DISK_VDA
        NIC("<model type='virtio'/><driver name='vhost'/>"),
        "<interface> with <mac address='52:54:00:00:00:01'>",
        "<driver name='vhost'>")
INVALID(nic_driver_name_absent, GOOD_GUEST, DISK_VDA NIC("<model type='virtio'/>"),
        "<interface>", "<driver name='qemu'/>")
INVALID(nic_multiqueue, GOOD_GUEST, DISK_VDA
        NIC("<model type='virtio'/><driver name='qemu' queues='4'/>"),
        "<interface>", "queues='4'>: multiqueue")
INVALID(nic_queues_junk, GOOD_GUEST, DISK_VDA
        NIC("<model type='virtio'/><driver name='qemu' queues='two'/>"),
        "<interface>", "queues='two'")
INVALID(nic_two, GOOD_GUEST, DISK_VDA GOOD_NIC GOOD_NIC, "<interface>",
        "more than one")
INVALID(nic_model_e1000, GOOD_GUEST, DISK_VDA
        NIC("<model type='e1000'/><driver name='qemu'/>"), "<interface>",
        "<model type='e1000'>")
INVALID(nic_model_missing, GOOD_GUEST, DISK_VDA NIC("<driver name='qemu'/>"),
        "<interface>", "<model type")
INVALID(nic_vhostuser, GOOD_GUEST, DISK_VDA
        "<interface type='vhostuser'><model type='virtio'/></interface>",
        "<interface>", "type='vhostuser'")
INVALID(hostdev, GOOD_GUEST, DISK_VDA "<hostdev mode='subsystem' type='pci'/>",
        "<hostdev>", NULL)

START_TEST(domain_name_missing)
{
    expect_invalid_xml("<domain><metadata>" GOOD_GUEST "</metadata><devices>"
                       DISK_VDA "</devices></domain>", "<name>", NULL);
}
END_TEST

START_TEST(domain_name_slash)
{
    expect_invalid_xml("<domain><name>../etc</name><metadata>" GOOD_GUEST
                       "</metadata><devices>" DISK_VDA "</devices></domain>",
                       "<domain><name>", "'../etc'");
}
END_TEST

/* ---- hostile input -------------------------------------------------------- */

START_TEST(null_and_empty)
{
    expect_invalid_xml(NULL, "domain XML", NULL);
    expect_invalid_xml("", "empty", NULL);
    expect_invalid_xml("   \n", "not well-formed", NULL);
}
END_TEST

START_TEST(huge_input_refused)
{
    gsize n = FTDEF_MAX_XML_SIZE + 1;
    g_autofree char *xml = g_malloc(n + 1);

    memset(xml, ' ', n);
    xml[n] = '\0';
    memcpy(xml, "<domain>", 8);
    expect_invalid_xml(xml, "larger than 4 MiB", NULL);
}
END_TEST

START_TEST(large_input_under_limit)
{
    /* Just under the limit: parsed (and found not to be a kvm-ft guest). */
    g_autoptr(GString) s = g_string_new("<domain><name>big</name><description>");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;

    while (s->len < FTDEF_MAX_XML_SIZE - 64)
        g_string_append(s, "0123456789abcdef");
    g_string_append(s, "</description></domain>");
    def = ftdef_parse(s->str, &err);
    ck_assert_ptr_null(def);
    ck_assert_msg(g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT),
                  "%s", err->message);
}
END_TEST

START_TEST(deep_nesting)
{
    g_autoptr(GString) s = g_string_new("<domain>");

    for (int i = 0; i < 100000; i++)
        g_string_append(s, "<a>");
    expect_invalid_xml(s->str, "not well-formed", NULL);
}
END_TEST

START_TEST(many_attributes)
{
    /* libxml2 alone would take minutes over this (quadratic duplicate check). */
    g_autoptr(GString) s = g_string_new("<domain><!-- a=1 b=2 --><name a='x>y=z'"
                                        ">g1</name><devices><disk ");
    gint64 t0 = g_get_monotonic_time();

    for (int i = 0; s->len < 3 * 1024 * 1024; i++)
        g_string_append_printf(s, "a%d='' ", i);
    g_string_append(s, "/></devices></domain>");
    expect_invalid_xml(s->str, "more than 256 attributes", NULL);
    ck_assert_int_lt(g_get_monotonic_time() - t0, 2 * G_USEC_PER_SEC);
}
END_TEST

START_TEST(attributes_at_the_limit)
{
    /* 256 attributes, '=' inside values, comments and CDATA do not count. */
    g_autoptr(GString) s = g_string_new("<domain><name>g1</name><description>"
                                        "<![CDATA[<x a=1 b=2 c=3>]]></description>"
                                        "<!-- <y a=1 b=2> --><devices><x ");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtDef) def = NULL;

    for (int i = 0; i < FTDEF_MAX_ATTRIBUTES; i++)
        g_string_append_printf(s, "a%d='k=v' ", i);
    g_string_append(s, "/></devices></domain>");
    def = ftdef_parse(s->str, &err);
    ck_assert_ptr_null(def);
    ck_assert_msg(g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT), "%s",
                  err->message);
}
END_TEST

START_TEST(many_disks)
{
    /* Many <ft:disk> and <disk>: refused at the cap, in linear time. */
    g_autoptr(GString) s = g_string_new("<domain><name>g1</name><metadata>"
                                        FT_OPEN HOSTS);
    gint64 t0 = g_get_monotonic_time();

    for (int i = 0; i < 60000; i++)
        g_string_append_printf(s, "<ft:disk target='d%d'/>", i);
    g_string_append(s, FT_CLOSE "</metadata><devices>");
    for (int i = 0; i < 60000; i++)
        g_string_append_printf(s, "<disk><target dev='d%d'/></disk>", i);
    g_string_append(s, "</devices></domain>");
    expect_invalid_xml(s->str, "<ft:disk target='d64'>", "more than 64");
    ck_assert_int_lt(g_get_monotonic_time() - t0, 5 * G_USEC_PER_SEC);
}
END_TEST

START_TEST(billion_laughs)
{
    g_autofree char *xml = read_fixture("ftdef-billion-laughs.xml");
    gint64 t0 = g_get_monotonic_time();

    expect_invalid_xml(xml, "<!DOCTYPE>", NULL);
    ck_assert_int_lt(g_get_monotonic_time() - t0, 2 * G_USEC_PER_SEC);
}
END_TEST

START_TEST(external_dtd)
{
    g_autofree char *xml = read_fixture("ftdef-xxe.xml");

    expect_invalid_xml(xml, "<!DOCTYPE>", NULL);
}
END_TEST

START_TEST(undeclared_entity)
{
    g_autofree char *xml = domain(GUEST("<ft:hosts><ft:host name='&lol9;' "
        "link-address='192.168.100.1'/>" HOST_B "</ft:hosts>" FT_VDA), DISK_VDA);

    expect_invalid_xml(xml, "not well-formed", "lol9");
}
END_TEST

START_TEST(binary_garbage)
{
    g_autoptr(GRand) rng = g_rand_new_with_seed(42);

    for (int i = 0; i < 2000; i++) {
        guint len = g_rand_int_range(rng, 1, 512);
        g_autofree char *buf = g_malloc(len + 1);
        g_autoptr(GError) err = NULL;
        g_autoptr(FtDef) def = NULL;

        for (guint j = 0; j < len; j++)
            buf[j] = (char)g_rand_int_range(rng, 1, 256);
        buf[len] = '\0';
        if (i % 2)
            memcpy(buf, "<domain>", MIN(len, 8));
        def = ftdef_parse(buf, &err);
        ck_assert_ptr_null(def);
        ck_assert(g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_INVALID) ||
                  g_error_matches(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT));
        assert_one_line(err);
    }
}
END_TEST

/* Byte mutations of a valid document: any outcome but a crash or a bad error. */
START_TEST(mutated_documents)
{
    g_autofree char *orig = read_fixture("ftdef-valid.xml");
    g_autoptr(GRand) rng = g_rand_new_with_seed(7);
    static const char pool[] = "<>/='\"&;:x0 \n\x01\xff";
    gsize len = strlen(orig);

    for (int i = 0; i < 3000; i++) {
        g_autofree char *buf = g_strdup(orig);
        g_autoptr(GError) err = NULL;
        g_autoptr(FtDef) def = NULL;
        int edits = g_rand_int_range(rng, 1, 6);

        for (int e = 0; e < edits; e++)
            buf[g_rand_int_range(rng, 0, (gint32)len)] =
                pool[g_rand_int_range(rng, 0, sizeof(pool) - 1)];
        def = ftdef_parse(buf, &err);
        if (def) {
            ck_assert_uint_eq(def->disks->len >= 1, 1);
            ck_assert_ptr_nonnull(def->hosts[0].name);
            ck_assert_ptr_nonnull(def->hosts[1].link_address);
        } else {
            ck_assert_ptr_nonnull(err);
            ck_assert(err->domain == FTDEF_ERROR);
            assert_one_line(err);
        }
    }
}
END_TEST

START_TEST(long_value_is_truncated_in_message)
{
    g_autoptr(GString) v = g_string_new(NULL);
    g_autofree char *guest = NULL;
    g_autofree char *xml = NULL;

    for (int i = 0; i < 1000; i++)
        g_string_append_c(v, '9');
    g_string_append(v, "\x7f");
    guest = g_strdup_printf(GUEST(HOSTS "<ft:ports base='%s'/>" FT_VDA), v->str);
    xml = domain(guest, DISK_VDA);
    expect_invalid_xml(xml, "<ft:ports base='9999", "...'>");
}
END_TEST

/* ---- runner ----------------------------------------------------------------- */

static Suite *ftdef_suite(void)
{
    Suite *s = suite_create("ftdef");
    TCase *tc;

    tc = tcase_create("valid");
    tcase_add_test(tc, valid_all_fields);
    tcase_add_test(tc, valid_self_and_peer);
    tcase_add_test(tc, valid_defaults);
    tcase_add_test(tc, valid_lan_addresses);
    tcase_add_test(tc, lan_address_not_ipv4);
    tcase_add_test(tc, lan_address_empty);
    tcase_add_test(tc, valid_bounds);
    tcase_add_test(tc, valid_default_namespace);
    tcase_add_test(tc, not_ft_fixture);
    tcase_add_test(tc, not_ft_without_metadata);
    suite_add_tcase(s, tc);

    tc = tcase_create("document");
    tcase_add_test(tc, malformed_xml_has_line);
    tcase_add_test(tc, undeclared_prefix);
    tcase_add_test(tc, not_a_domain);
    tcase_add_test(tc, domain_in_a_namespace);
    tcase_add_test(tc, guest_duplicate);
    tcase_add_test(tc, guest_outside_metadata);
    tcase_add_test(tc, stray_ft_element_without_guest);
    tcase_add_test(tc, stray_ft_element_next_to_guest);
    tcase_add_test(tc, namespace_version_2);
    tcase_add_test(tc, namespace_version_nested);
    tcase_add_test(tc, guest_unknown_ft_child);
    tcase_add_test(tc, guest_child_without_namespace);
    tcase_add_test(tc, guest_text);
    tcase_add_test(tc, guest_attribute);
    tcase_add_test(tc, unknown_attribute);
    tcase_add_test(tc, leaf_with_child);
    suite_add_tcase(s, tc);

    tc = tcase_create("hosts");
    tcase_add_test(tc, hosts_missing);
    tcase_add_test(tc, hosts_duplicate);
    tcase_add_test(tc, hosts_one);
    tcase_add_test(tc, hosts_three);
    tcase_add_test(tc, hosts_other_child);
    tcase_add_test(tc, host_name_missing);
    tcase_add_test(tc, host_name_empty);
    tcase_add_test(tc, host_name_bad_chars);
    tcase_add_test(tc, host_name_duplicate);
    tcase_add_test(tc, host_address_missing);
    tcase_add_test(tc, host_address_short);
    tcase_add_test(tc, host_address_hostname);
    tcase_add_test(tc, host_address_ipv6);
    tcase_add_test(tc, host_address_trailing_space);
    tcase_add_test(tc, host_address_any);
    tcase_add_test(tc, host_address_same);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_add_test(tc, interval_too_small_exact_message);
    tcase_add_test(tc, interval_too_large);
    tcase_add_test(tc, interval_negative);
    tcase_add_test(tc, interval_unit_suffix);
    tcase_add_test(tc, checkpoint_empty);
    tcase_add_test(tc, output_unknown);
    tcase_add_test(tc, output_case);
    tcase_add_test(tc, compare_timeout_too_small);
    tcase_add_test(tc, compare_timeout_too_large);
    tcase_add_test(tc, output_modes);
    tcase_add_test(tc, interval_huge_number);
    tcase_add_test(tc, checkpoint_duplicate);
    tcase_add_test(tc, ports_too_low);
    tcase_add_test(tc, ports_too_high);
    tcase_add_test(tc, ports_not_numeric);
    tcase_add_test(tc, ports_trailing_junk);
    tcase_add_test(tc, ports_hex);
    tcase_add_test(tc, ports_empty);
    tcase_add_test(tc, ports_missing);
    tcase_add_test(tc, ports_duplicate);
    suite_add_tcase(s, tc);

    tc = tcase_create("disks");
    tcase_add_test(tc, disk_none);
    tcase_add_test(tc, disk_target_missing);
    tcase_add_test(tc, disk_target_bad_chars);
    tcase_add_test(tc, disk_target_unknown);
    tcase_add_test(tc, disk_target_twice);
    tcase_add_test(tc, disk_two_domain_disks_same_target);
    tcase_add_test(tc, disk_cdrom);
    tcase_add_test(tc, disk_lun);
    tcase_add_test(tc, disk_network);
    tcase_add_test(tc, disk_block);
    tcase_add_test(tc, disk_readonly);
    tcase_add_test(tc, disk_writable_unreplicated);
    tcase_add_test(tc, disk_lun_unreplicated);
    tcase_add_test(tc, disk_unreplicated_without_target);
    tcase_add_test(tc, disk_readonly_unreplicated_allowed);
    tcase_add_test(tc, disk_shareable);
    tcase_add_test(tc, disk_format_vmdk);
    tcase_add_test(tc, disk_format_missing);
    tcase_add_test(tc, disk_source_missing);
    tcase_add_test(tc, disk_source_empty);
    tcase_add_test(tc, disk_source_relative);
    suite_add_tcase(s, tc);

    tc = tcase_create("ha");
    tcase_add_test(tc, ha_valid);
    tcase_add_test(tc, level_default_and_explicit_ft);
    tcase_add_test(tc, ha_same_pair_and_disks);
    tcase_add_test(tc, protection_level_unknown);
    tcase_add_test(tc, protection_level_missing);
    tcase_add_test(tc, protection_unknown_attribute);
    tcase_add_test(tc, protection_twice);
    tcase_add_test(tc, protection_text);
    tcase_add_test(tc, ha_checkpoint_refused);
    tcase_add_test(tc, ha_backing_device_missing);
    tcase_add_test(tc, ft_backing_device_refused);
    tcase_add_test(tc, ha_backing_device_empty);
    tcase_add_test(tc, ha_backing_device_not_dev);
    tcase_add_test(tc, ha_backing_device_relative);
    tcase_add_test(tc, ha_backing_device_dotdot);
    tcase_add_test(tc, ha_backing_device_space);
    tcase_add_test(tc, ha_backing_device_quote);
    tcase_add_test(tc, ha_backing_device_semicolon);
    tcase_add_test(tc, ha_backing_device_brace);
    tcase_add_test(tc, ha_backing_device_newline);
    tcase_add_test(tc, ha_backing_device_empty_component);
    tcase_add_test(tc, ha_backing_device_twice);
    tcase_add_test(tc, ha_disk_file);
    tcase_add_test(tc, ha_disk_type_absent);
    tcase_add_test(tc, ha_disk_lun);
    tcase_add_test(tc, ha_disk_format_qcow2);
    tcase_add_test(tc, ha_disk_format_missing);
    tcase_add_test(tc, ha_disk_source_dev_missing);
    tcase_add_test(tc, ha_disk_not_drbd);
    tcase_add_test(tc, ha_disk_minor_leading_zero);
    tcase_add_test(tc, ha_disk_minor_too_large);
    tcase_add_test(tc, ha_disk_minor_not_decimal);
    tcase_add_test(tc, ha_disk_minor_empty);
    tcase_add_test(tc, ha_disk_minor_twice);
    tcase_add_test(tc, ha_disk_unreplicated);
    suite_add_tcase(s, tc);

    tc = tcase_create("domain");
    tcase_add_test(tc, nic_vhost);
    tcase_add_test(tc, nic_driver_name_absent);
    tcase_add_test(tc, nic_multiqueue);
    tcase_add_test(tc, nic_queues_junk);
    tcase_add_test(tc, nic_two);
    tcase_add_test(tc, nic_model_e1000);
    tcase_add_test(tc, nic_model_missing);
    tcase_add_test(tc, nic_vhostuser);
    tcase_add_test(tc, hostdev);
    tcase_add_test(tc, domain_name_missing);
    tcase_add_test(tc, domain_name_slash);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, null_and_empty);
    tcase_add_test(tc, huge_input_refused);
    tcase_add_test(tc, large_input_under_limit);
    tcase_add_test(tc, deep_nesting);
    tcase_add_test(tc, many_attributes);
    tcase_add_test(tc, attributes_at_the_limit);
    tcase_add_test(tc, many_disks);
    tcase_add_test(tc, billion_laughs);
    tcase_add_test(tc, external_dtd);
    tcase_add_test(tc, undeclared_entity);
    tcase_add_test(tc, binary_garbage);
    tcase_add_test(tc, mutated_documents);
    tcase_add_test(tc, long_value_is_truncated_in_message);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    return run_suite(ftdef_suite());
}
