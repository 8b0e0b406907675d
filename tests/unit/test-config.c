/* test-config.c - kvm-ftd.conf: defaults, a full file, and every refusal */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "run-suite.h"

/* ---- fixture: a private temp dir with a valid key file ------------------- */

static char *tmpdir;
static char *key_path;
static guchar key_bytes[32];

static char *tmp_path(const char *name)
{
    return g_build_filename(tmpdir, name, NULL);
}

static void write_file(const char *path, const char *data, gssize len, int mode)
{
    g_autoptr(GError) err = NULL;

    ck_assert_msg(g_file_set_contents(path, data, len, &err), "%s",
                  err ? err->message : "?");
    ck_assert_int_eq(chmod(path, mode), 0);
}

static void setup(void)
{
    g_autofree char *b64 = NULL;

    tmpdir = g_strdup("/tmp/kvmft-test-config-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    for (guint i = 0; i < sizeof(key_bytes); i++)
        key_bytes[i] = (guchar)(i * 7 + 1);
    b64 = g_base64_encode(key_bytes, sizeof(key_bytes));
    key_path = tmp_path("peer.key");
    write_file(key_path, b64, -1, 0600);
}

static void remove_tree(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;

    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(dir, name, NULL);

        if (g_file_test(p, G_FILE_TEST_IS_DIR) &&
            !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
            remove_tree(p);
        else
            unlink(p);
    }
    rmdir(dir);
}

static void teardown(void)
{
    remove_tree(tmpdir);
    g_clear_pointer(&tmpdir, g_free);
    g_clear_pointer(&key_path, g_free);
}

/* Write a config (@KEY@ becomes the key file's path); returns its path. */
static char *write_conf(const char *body)
{
    g_autoptr(GString) s = g_string_new(body);
    char *path = tmp_path("kvm-ftd.conf");

    g_string_replace(s, "@KEY@", key_path, 0);
    write_file(path, s->str, (gssize)s->len, 0644);
    return path;
}

#define DAEMON_HEAD "[daemon]\nhost-name = hostA\nlisten-address = 192.168.100.1\n"
#define DAEMON DAEMON_HEAD "key-file = @KEY@\n"

static void assert_bad_at(const char *path, int code, const char *n1,
                          const char *n2)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);

    ck_assert_msg(c == NULL, "accepted %s", path);
    ck_assert_ptr_nonnull(err);
    if (g_getenv("KVMFT_TEST_VERBOSE"))
        g_printerr("%s\n", err->message);
    ck_assert_msg(g_error_matches(err, CONFIG_ERROR, code),
                  "wrong error %s/%d: %s", g_quark_to_string(err->domain),
                  err->code, err->message);
    ck_assert_msg(strchr(err->message, '\n') == NULL, "multi-line: %s",
                  err->message);
    ck_assert_msg(g_str_has_prefix(err->message, path),
                  "message '%s' does not start with the file %s", err->message,
                  path);
    ck_assert_msg(strstr(err->message, n1), "message '%s' does not name '%s'",
                  err->message, n1);
    if (n2)
        ck_assert_msg(strstr(err->message, n2),
                      "message '%s' does not name '%s'", err->message, n2);
}

static void expect_bad(const char *body, const char *n1, const char *n2)
{
    g_autofree char *path = write_conf(body);

    assert_bad_at(path, CONFIG_ERROR_INVALID, n1, n2);
}

#define BAD(tname, body, n1, n2) \
    START_TEST(tname) { expect_bad(body, n1, n2); } END_TEST

/* ---- valid ----------------------------------------------------------------- */

START_TEST(valid_failover_settings)
{
    g_autofree char *path = write_conf(DAEMON "lan-address = 10.0.0.1\n"
                                       "[failover]\nheartbeat-ms = 30\nmiss-count = 4\n");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);

    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(c->lan_address, "10.0.0.1");
    ck_assert_uint_eq(c->heartbeat_ms, 30);
    ck_assert_uint_eq(c->miss_count, 4);
}
END_TEST

BAD(lan_address_not_ipv4, DAEMON "lan-address = lan.example\n", "lan-address", "IPv4")
BAD(lan_address_multicast, DAEMON "lan-address = 224.0.0.1\n", "lan-address", "unicast")
BAD(heartbeat_too_short, DAEMON "[failover]\nheartbeat-ms = 1\n", "heartbeat-ms", NULL)
BAD(miss_count_junk, DAEMON "[failover]\nmiss-count = 3x\n", "miss-count", "whole number")
BAD(miss_count_too_small, DAEMON "[failover]\nmiss-count = 1\n", "miss-count", "between 2")
BAD(rt_priority_too_high, DAEMON "[failover]\nrealtime-priority = 100\n", "realtime-priority", "99")
BAD(failover_unknown_key, DAEMON "[failover]\nheartbeat = 20\n", "heartbeat", NULL)

/* [resync] rate-mb-per-s = MB (MiB/s) loaded as bytes/s: 0 is no cap. */
static guint64 load_resync_rate(const char *mb)
{
    g_autofree char *body = g_strdup_printf(DAEMON "[resync]\nrate-mb-per-s = %s\n", mb);
    g_autofree char *path = write_conf(body);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);

    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    return c->resync_rate_bytes;
}

START_TEST(valid_resync_rate)
{
    ck_assert_uint_eq(load_resync_rate("250"), 250ULL * 1024 * 1024);
    ck_assert_uint_eq(load_resync_rate("10000"), 10000ULL * 1024 * 1024);
}
END_TEST

START_TEST(valid_resync_rate_unlimited)
{
    ck_assert_uint_eq(load_resync_rate("0"), 0);
}
END_TEST

START_TEST(resync_rate_exact)
{
    g_autofree char *path = write_conf(DAEMON "[resync]\nrate-mb-per-s = fast\n");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);
    g_autofree char *want = g_strdup_printf(
        "%s: [resync] rate-mb-per-s: 'fast' must be a whole number of MiB/s "
        "from 0 to 10000 (0: no limit)", path);

    ck_assert_ptr_null(c);
    ck_assert_str_eq(err->message, want);
}
END_TEST

#define RATE_BAD(tname, value) \
    BAD(tname, DAEMON "[resync]\nrate-mb-per-s = " value "\n", \
        "[resync] rate-mb-per-s: '" value "'", "whole number of MiB/s from 0 to 10000")
RATE_BAD(resync_rate_negative, "-1")
RATE_BAD(resync_rate_unit, "100M")
RATE_BAD(resync_rate_fraction, "1.5")
RATE_BAD(resync_rate_too_big, "10001")
RATE_BAD(resync_rate_huge, "99999999999999999999")
RATE_BAD(resync_rate_empty, "")
BAD(resync_unknown_key, DAEMON "[resync]\nrate = 100\n", "[resync] rate",
    "the keys of [resync] are rate-mb-per-s, granularity-kib")

/* [resync] granularity-kib = K, loaded as bytes; 64 KiB unless set. */
START_TEST(granularity)
{
    g_autofree char *plain = write_conf(DAEMON);
    g_autoptr(FtConfig) a = config_load(plain, NULL);
    g_autofree char *four = NULL;
    g_autoptr(FtConfig) b = NULL;

    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq(a->resync_granularity_bytes, 65536);
    /* write_conf() reuses its file: loaded one after the other. */
    four = write_conf(DAEMON "[resync]\ngranularity-kib = 4\n");
    b = config_load(four, NULL);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(b->resync_granularity_bytes, 4096);
}
END_TEST

#define GRANULARITY_BAD(tname, value) \
    BAD(tname, DAEMON "[resync]\ngranularity-kib = " value "\n", \
        "[resync] granularity-kib: '" value "'", "power of two from 4 to 1024 (KiB)")
GRANULARITY_BAD(granularity_not_power_of_two, "48")
GRANULARITY_BAD(granularity_too_small, "2")
GRANULARITY_BAD(granularity_too_big, "2048")
GRANULARITY_BAD(granularity_unit, "64k")
BAD(resync_key_in_failover, DAEMON "[failover]\nrate-mb-per-s = 100\n",
    "[failover] rate-mb-per-s", "unknown key")

/* ---- [witness] -------------------------------------------------------------- */

START_TEST(valid_witness)
{
    g_autofree char *path = write_conf(DAEMON "[witness]\nendpoints = http://10.0.0.3:2379, "
                                       "http://10.0.0.4\ntimeout-ms = 300\n");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);

    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_uint_eq(g_strv_length(c->witness_endpoints), 2);
    ck_assert_str_eq(c->witness_endpoints[0], "http://10.0.0.3:2379");
    /* etcd's client port when none is given */
    ck_assert_str_eq(c->witness_endpoints[1], "http://10.0.0.4:2379");
    ck_assert_uint_eq(c->witness_timeout_ms, 300);
}
END_TEST

START_TEST(no_witness)
{
    g_autofree char *path = write_conf(DAEMON);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);

    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_ptr_null(c->witness_endpoints);
    ck_assert_uint_eq(c->witness_timeout_ms, CONFIG_DEFAULT_WITNESS_MS);
}
END_TEST

/* ---- [drbd] ------------------------------------------------------------------ */

START_TEST(drbd_command_prefix)
{
    g_autofree char *prog = tmp_path("in-node");
    g_autofree char *body = NULL;
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = NULL;

    write_file(prog, "#!/bin/sh\nexec \"$@\"\n", -1, 0755);
    body = g_strdup_printf(DAEMON "[drbd]\ncommand-prefix = %s\n", prog);
    path = write_conf(body);
    c = config_load(path, &err);
    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(c->drbd_command_prefix, prog);
}
END_TEST

START_TEST(drbd_no_prefix)
{
    g_autofree char *path = write_conf(DAEMON);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);

    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_ptr_null(c->drbd_command_prefix);
}
END_TEST

START_TEST(drbd_prefix_not_executable)
{
    g_autofree char *prog = tmp_path("in-node");
    g_autofree char *body = NULL;

    write_file(prog, "#!/bin/sh\n", -1, 0644);
    body = g_strdup_printf(DAEMON "[drbd]\ncommand-prefix = %s\n", prog);
    expect_bad(body, "[drbd] command-prefix", "is not executable");
}
END_TEST

START_TEST(drbd_prefix_directory)
{
    g_autofree char *body = g_strdup_printf(DAEMON "[drbd]\ncommand-prefix = %s\n", tmpdir);

    expect_bad(body, "[drbd] command-prefix", "not a regular file");
}
END_TEST

START_TEST(replication_tls_on)
{
    g_autofree char *path = write_conf(DAEMON "[replication]\ntls = yes\n");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);

    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert(c->replication_tls);
}
END_TEST

BAD(replication_tls_bad, DAEMON "[replication]\ntls = off\n", "[replication] tls: 'off'",
    "neither yes nor no")
BAD(drbd_prefix_missing, DAEMON "[drbd]\ncommand-prefix = /nonexistent/in-node\n",
    "[drbd] command-prefix: '/nonexistent/in-node': No such file", "remove the line")
BAD(drbd_prefix_relative, DAEMON "[drbd]\ncommand-prefix = in-node\n",
    "[drbd] command-prefix: 'in-node'", "not an absolute path")
BAD(drbd_prefix_empty, DAEMON "[drbd]\ncommand-prefix =\n", "[drbd] command-prefix", "is empty")
BAD(drbd_unknown_key, DAEMON "[drbd]\nprefix = /bin/true\n", "[drbd] prefix", "command-prefix")

BAD(witness_not_url, DAEMON "[witness]\nendpoints = 10.0.0.3:2379\n",
    "[witness] endpoints: '10.0.0.3:2379'", "http://ADDRESS:PORT")
BAD(witness_ftp, DAEMON "[witness]\nendpoints = ftp://10.0.0.3\n",
    "[witness] endpoints: 'ftp://10.0.0.3'", "not an etcd client URL")
BAD(witness_path, DAEMON "[witness]\nendpoints = http://10.0.0.3:2379/v3/kv\n",
    "[witness] endpoints", "not an etcd client URL")
BAD(witness_trailing_comma, DAEMON "[witness]\nendpoints = http://10.0.0.3:2379,\n",
    "[witness] endpoints: ''", "comma-separated")
BAD(witness_https_no_ca, DAEMON "[witness]\nendpoints = https://10.0.0.3:2379\n",
    "[witness] ca", "https endpoints need")
BAD(witness_cert_no_key, DAEMON "[witness]\nendpoints = https://10.0.0.3\nca = /etc/ca.pem\n"
    "cert = /etc/c.pem\n", "[witness] key", "needs both cert and key")
BAD(witness_cert_over_http, DAEMON "[witness]\nendpoints = http://10.0.0.3\n"
    "cert = /etc/c.pem\nkey = /etc/k.pem\n", "[witness] cert", "only sent over TLS")
BAD(witness_ca_alone, DAEMON "[witness]\nca = /etc/ca.pem\n", "[witness] endpoints",
    "is missing")
BAD(witness_timeout_zero, DAEMON "[witness]\nendpoints = http://10.0.0.3\ntimeout-ms = 0\n",
    "[witness] timeout-ms", NULL)

START_TEST(valid_defaults)
{
    g_autofree char *path = write_conf("# comment\n\n" DAEMON);
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);
    gsize len = 0;
    const guchar *k;

    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(c->host_name, "hostA");
    ck_assert_str_eq(c->listen_address, "192.168.100.1");
    ck_assert_uint_eq(c->listen_port, 7790);
    ck_assert_str_eq(c->key_file, key_path);
    ck_assert_str_eq(c->control_socket, "/run/kvm-ftd.sock");
    ck_assert_str_eq(c->state_dir, "/var/lib/kvm-ft");
    ck_assert_str_eq(c->run_dir, "/run/kvm-ft");
    ck_assert_str_eq(c->libvirt_uri, "qemu:///system");
    ck_assert_ptr_null(c->log_file);
    ck_assert_uint_eq(c->qmp_timeout_ms, 5000);
    ck_assert_uint_eq(c->peer_timeout_ms, 3000);
    ck_assert_uint_eq(c->start_timeout_ms, 120000);
    ck_assert_ptr_null(c->lan_address);
    ck_assert_uint_eq(c->heartbeat_ms, 20);
    ck_assert_uint_eq(c->miss_count, 5);
    ck_assert_uint_eq(c->rt_priority, 10);
    ck_assert_uint_eq(c->resync_rate_bytes, 100 * 1024 * 1024);
    ck_assert(!c->replication_tls);
    ck_assert_ptr_nonnull(c->key);
    k = g_bytes_get_data(c->key, &len);
    ck_assert_uint_eq(len, sizeof(key_bytes));
    ck_assert_mem_eq(k, key_bytes, sizeof(key_bytes));
}
END_TEST

START_TEST(valid_full_fixture)
{
    const char *dir = g_getenv("KVMFT_TEST_DATA");
    g_autofree char *in = NULL;
    g_autofree char *tmpl = NULL;
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = NULL;
    g_autoptr(GString) s = NULL;

    ck_assert_ptr_nonnull(dir);
    in = g_build_filename(dir, "kvm-ftd.conf.in", NULL);
    ck_assert(g_file_get_contents(in, &tmpl, NULL, NULL));
    s = g_string_new(tmpl);
    g_string_replace(s, "@KEY_FILE@", "@KEY@", 0);
    path = write_conf(s->str);
    c = config_load(path, &err);
    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    ck_assert_str_eq(c->host_name, "hostB");
    ck_assert_str_eq(c->listen_address, "192.168.100.2");
    ck_assert_uint_eq(c->listen_port, 7791);
    ck_assert_str_eq(c->control_socket, "/run/kvm-ft-test.sock");
    ck_assert_str_eq(c->state_dir, "/srv/kvm-ft/state");
    ck_assert_str_eq(c->run_dir, "/run/kvm-ft-test");
    ck_assert_str_eq(c->libvirt_uri,
                     "qemu+unix:///system?socket=/run/libvirt-b/libvirt-sock");
    ck_assert_str_eq(c->log_file, "/var/log/kvm-ftd.log");
    ck_assert_uint_eq(c->qmp_timeout_ms, 2500);
    ck_assert_uint_eq(c->peer_timeout_ms, 1500);
    ck_assert_uint_eq(c->start_timeout_ms, 300000);
}
END_TEST

START_TEST(valid_empty_log_file_is_stderr)
{
    g_autofree char *path = write_conf(DAEMON "log-file =\n[timeouts]\n");
    g_autoptr(FtConfig) c = config_load(path, NULL);

    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_null(c->log_file);
}
END_TEST

START_TEST(valid_wrapped_key)
{
    guchar raw[48];
    g_autofree char *b64 = NULL;
    g_autoptr(GString) wrapped = g_string_new(NULL);
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = NULL;
    gsize len = 0;
    const guchar *k;

    for (guint i = 0; i < sizeof(raw); i++)
        raw[i] = (guchar)(255 - i);
    b64 = g_base64_encode(raw, sizeof(raw));
    g_string_append_len(wrapped, b64, 40);
    g_string_append(wrapped, "\r\n");
    g_string_append(wrapped, b64 + 40);
    g_string_append(wrapped, "\n\n");
    write_file(key_path, wrapped->str, -1, 0400);
    path = write_conf(DAEMON);
    c = config_load(path, &err);
    ck_assert_msg(c != NULL, "refused: %s", err ? err->message : "?");
    k = g_bytes_get_data(c->key, &len);
    ck_assert_uint_eq(len, sizeof(raw));
    ck_assert_mem_eq(k, raw, sizeof(raw));
}
END_TEST

/* ---- the file ------------------------------------------------------------- */

START_TEST(config_missing)
{
    g_autofree char *path = tmp_path("nonexistent.conf");

    assert_bad_at(path, CONFIG_ERROR_READ, "cannot read",
                  "No such file or directory");
}
END_TEST

START_TEST(config_is_directory)
{
    assert_bad_at(tmpdir, CONFIG_ERROR_READ, "not a regular file", NULL);
}
END_TEST

BAD(syntax_not_key_value, DAEMON "listen-port 7790\n", "line 5",
    "'listen-port 7790' is not a [group]")
BAD(syntax_group_unclosed, "[daemon\n", "line 1", "without ']'")
BAD(syntax_key_before_group, "host-name = hostA\n" DAEMON, "line 1",
    "host-name: the key comes before any group")
BAD(unknown_group, DAEMON "[deamon]\n", "[deamon]",
    "unknown group; the groups are [daemon], [timeouts], [failover], [resync], [witness], "
    "[drbd] and [replication]")
BAD(unknown_key, DAEMON "listen-prot = 7790\n", "[daemon] listen-prot",
    "unknown key (line 5)")
BAD(unknown_key_underscore, DAEMON "listen_port = 7790\n", "[daemon] listen_port",
    "did you mean listen-port?")
BAD(unknown_key_in_timeouts, DAEMON "[timeouts]\nqmp = 100\n", "[timeouts] qmp",
    "qmp-ms, peer-ms, start-ms")
BAD(key_in_wrong_group, DAEMON "[timeouts]\nlisten-port = 7790\n",
    "[timeouts] listen-port", "unknown key")
BAD(localized_key, DAEMON "host-name[de] = hostA\n", "[daemon] host-name[de]",
    "unknown key")
BAD(duplicate_key, DAEMON "host-name = hostB\n", "[daemon] host-name",
    "set twice (line 2 and line 5)")
BAD(duplicate_key_across_repeated_group, DAEMON "[timeouts]\n[daemon]\n"
    "listen-address = 192.168.100.3\n", "[daemon] listen-address", "set twice")
BAD(inline_comment, "[daemon]\nhost-name = hostA    # required\n"
    "listen-address = 192.168.100.1\nkey-file = @KEY@\n", "[daemon] host-name",
    "inline comment")
BAD(bad_escape, DAEMON "state-dir = /srv\\q\n", "[daemon] state-dir",
    "invalid escape sequence")
BAD(escaped_newline, DAEMON "state-dir = /srv\\nfoo\n", "[daemon] state-dir",
    "control character")

START_TEST(nul_byte)
{
    g_autofree char *path = tmp_path("kvm-ftd.conf");

    write_file(path, "[daemon]\nhost-name = a\0b\n", 26, 0644);
    assert_bad_at(path, CONFIG_ERROR_INVALID, "NUL", NULL);
}
END_TEST

START_TEST(not_utf8)
{
    g_autofree char *path = tmp_path("kvm-ftd.conf");

    write_file(path, "[daemon]\nhost-name = \xff\xfe\n", -1, 0644);
    assert_bad_at(path, CONFIG_ERROR_INVALID, "UTF-8", NULL);
}
END_TEST

/* ---- required keys ---------------------------------------------------------- */

BAD(empty_file, "", "[daemon] host-name", "missing")
BAD(host_name_missing, "[daemon]\nlisten-address = 192.168.100.1\n"
    "key-file = @KEY@\n", "[daemon] host-name", "is missing (required)")
BAD(host_name_empty, "[daemon]\nhost-name =\nlisten-address = 192.168.100.1\n"
    "key-file = @KEY@\n", "[daemon] host-name", "is empty")
BAD(host_name_bad, "[daemon]\nhost-name = host/A\nlisten-address = 192.168.100.1\n"
    "key-file = @KEY@\n", "[daemon] host-name", "'host/A' is not a valid host name")
BAD(listen_address_missing, "[daemon]\nhost-name = hostA\nkey-file = @KEY@\n",
    "[daemon] listen-address", "is missing (required)")
BAD(key_file_missing_key, DAEMON_HEAD, "[daemon] key-file",
    "is missing (required)")

/* ---- values ------------------------------------------------------------------ */

START_TEST(listen_port_abc_exact)
{
    g_autofree char *path = write_conf(DAEMON "listen-port = abc\n");
    g_autoptr(GError) err = NULL;
    g_autoptr(FtConfig) c = config_load(path, &err);
    g_autofree char *want = g_strdup_printf(
        "%s: [daemon] listen-port: 'abc' is not a port number (1-65535)", path);

    ck_assert_ptr_null(c);
    ck_assert_str_eq(err->message, want);
}
END_TEST
BAD(listen_port_zero, DAEMON "listen-port = 0\n", "[daemon] listen-port",
    "'0' is not a port number (1-65535)")
BAD(listen_port_too_big, DAEMON "listen-port = 65536\n", "[daemon] listen-port",
    "'65536'")
BAD(listen_port_negative, DAEMON "listen-port = -1\n", "[daemon] listen-port",
    "'-1'")
BAD(listen_port_trailing_junk, DAEMON "listen-port = 7790x\n",
    "[daemon] listen-port", "'7790x'")
BAD(listen_port_empty, DAEMON "listen-port =\n", "[daemon] listen-port",
    "'' is not a port number")
BAD(listen_address_bad, "[daemon]\nhost-name = hostA\nlisten-address = 192.168.1\n"
    "key-file = @KEY@\n", "[daemon] listen-address", "'192.168.1' is not an IPv4")
BAD(listen_address_ipv6, "[daemon]\nhost-name = hostA\nlisten-address = ::1\n"
    "key-file = @KEY@\n", "[daemon] listen-address", "IPv4")
BAD(listen_address_any, "[daemon]\nhost-name = hostA\nlisten-address = 0.0.0.0\n"
    "key-file = @KEY@\n", "[daemon] listen-address", "unicast")
BAD(qmp_ms_junk, DAEMON "[timeouts]\nqmp-ms = 5s\n", "[timeouts] qmp-ms",
    "'5s' is not a number of milliseconds between 100 and 600000")
BAD(qmp_ms_too_small, DAEMON "[timeouts]\nqmp-ms = 10\n", "[timeouts] qmp-ms",
    "between 100 and 600000")
BAD(peer_ms_too_big, DAEMON "[timeouts]\npeer-ms = 600001\n", "[timeouts] peer-ms",
    "'600001'")
BAD(start_ms_huge, DAEMON "[timeouts]\nstart-ms = 99999999999999\n",
    "[timeouts] start-ms", "between 1000 and 3600000")
BAD(state_dir_relative, DAEMON "state-dir = var/lib/kvm-ft\n",
    "[daemon] state-dir", "not an absolute path")
BAD(run_dir_empty, DAEMON "run-dir =\n", "[daemon] run-dir", "is empty")
BAD(log_file_relative, DAEMON "log-file = kvm-ftd.log\n", "[daemon] log-file",
    "not an absolute path")
BAD(control_socket_too_long, DAEMON "control-socket = /run/"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\n", "[daemon] control-socket",
    "unix socket")
BAD(libvirt_uri_bad, DAEMON "libvirt-uri = system\n", "[daemon] libvirt-uri",
    "'system' is not a libvirt URI")
BAD(key_file_relative, DAEMON_HEAD "key-file = peer.key\n", "[daemon] key-file",
    "not an absolute path")

/* ---- the key file ------------------------------------------------------------- */

static void expect_bad_key(const char *n1, const char *n2)
{
    g_autofree char *path = write_conf(DAEMON);

    assert_bad_at(path, CONFIG_ERROR_INVALID, "[daemon] key-file", key_path);
    assert_bad_at(path, CONFIG_ERROR_INVALID, n1, n2);
}

START_TEST(key_file_absent)
{
    ck_assert_int_eq(unlink(key_path), 0);
    expect_bad_key("cannot read", "No such file or directory");
}
END_TEST

START_TEST(key_file_directory)
{
    ck_assert_int_eq(unlink(key_path), 0);
    ck_assert_int_eq(mkdir(key_path, 0700), 0);
    expect_bad_key("not a regular file", NULL);
}
END_TEST

START_TEST(key_file_world_readable)
{
    ck_assert_int_eq(chmod(key_path, 0644), 0);
    expect_bad_key("accessible by group or others (mode 0644)", "chmod 600");
}
END_TEST

START_TEST(key_file_group_readable)
{
    ck_assert_int_eq(chmod(key_path, 0640), 0);
    expect_bad_key("(mode 0640)", "chmod 600");
}
END_TEST

START_TEST(key_file_other_writable)
{
    ck_assert_int_eq(chmod(key_path, 0602), 0);
    expect_bad_key("(mode 0602)", NULL);
}
END_TEST

/* Whoever owns the key file could change the key. */
START_TEST(key_file_other_owner)
{
    g_autofree char *want = NULL;

    ck_assert_int_eq(chown(key_path, 65534, 65534), 0);
    want = g_strdup_printf("belongs to uid 65534, not to uid %u", (unsigned)geteuid());
    expect_bad(DAEMON, "key-file", want);
}
END_TEST

START_TEST(key_file_not_base64)
{
    write_file(key_path, "this is not base64 at all, it has spaces and commas!!\n",
               -1, 0600);
    expect_bad_key("is not base64", "alphabet");
}
END_TEST

START_TEST(key_file_urlsafe_base64)
{
    write_file(key_path, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh-_\n", -1, 0600);
    expect_bad_key("is not base64", "alphabet");
}
END_TEST

START_TEST(key_file_bad_padding)
{
    write_file(key_path, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=A\n", -1, 0600);
    expect_bad_key("is not base64", "padding");
}
END_TEST

START_TEST(key_file_truncated)
{
    write_file(key_path, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8AB\n", -1, 0600);
    expect_bad_key("is not base64", "length");
}
END_TEST

START_TEST(key_file_empty)
{
    write_file(key_path, "\n", -1, 0600);
    expect_bad_key("is not base64", "no base64");
}
END_TEST

START_TEST(key_file_too_short)
{
    guchar raw[16] = { 1, 2, 3 };
    g_autofree char *b64 = g_base64_encode(raw, sizeof(raw));

    write_file(key_path, b64, -1, 0600);
    expect_bad_key("16-byte key", "at least 32");
}
END_TEST

START_TEST(key_file_31_bytes)
{
    guchar raw[31] = { 9 };
    g_autofree char *b64 = g_base64_encode(raw, sizeof(raw));

    write_file(key_path, b64, -1, 0600);
    expect_bad_key("31-byte key", "at least 32");
}
END_TEST

START_TEST(key_file_too_big)
{
    g_autofree char *big = g_strnfill(70 * 1024, 'A');

    write_file(key_path, big, -1, 0600);
    expect_bad_key("larger than 64 KiB", NULL);
}
END_TEST

/* ---- runner ---------------------------------------------------------------------- */

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc;

    tc = tcase_create("valid");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, valid_defaults);
    tcase_add_test(tc, valid_failover_settings);
    tcase_add_test(tc, lan_address_not_ipv4);
    tcase_add_test(tc, lan_address_multicast);
    tcase_add_test(tc, heartbeat_too_short);
    tcase_add_test(tc, miss_count_junk);
    tcase_add_test(tc, miss_count_too_small);
    tcase_add_test(tc, failover_unknown_key);
    tcase_add_test(tc, rt_priority_too_high);
    tcase_add_test(tc, valid_resync_rate);
    tcase_add_test(tc, valid_resync_rate_unlimited);
    tcase_add_test(tc, resync_rate_exact);
    tcase_add_test(tc, resync_rate_negative);
    tcase_add_test(tc, resync_rate_unit);
    tcase_add_test(tc, resync_rate_fraction);
    tcase_add_test(tc, resync_rate_too_big);
    tcase_add_test(tc, resync_rate_huge);
    tcase_add_test(tc, resync_rate_empty);
    tcase_add_test(tc, resync_unknown_key);
    tcase_add_test(tc, granularity);
    tcase_add_test(tc, granularity_not_power_of_two);
    tcase_add_test(tc, granularity_too_small);
    tcase_add_test(tc, granularity_too_big);
    tcase_add_test(tc, granularity_unit);
    tcase_add_test(tc, resync_key_in_failover);
    tcase_add_test(tc, valid_witness);
    tcase_add_test(tc, drbd_command_prefix);
    tcase_add_test(tc, drbd_no_prefix);
    tcase_add_test(tc, drbd_prefix_not_executable);
    tcase_add_test(tc, drbd_prefix_directory);
    tcase_add_test(tc, drbd_prefix_missing);
    tcase_add_test(tc, replication_tls_on);
    tcase_add_test(tc, replication_tls_bad);
    tcase_add_test(tc, drbd_prefix_relative);
    tcase_add_test(tc, drbd_prefix_empty);
    tcase_add_test(tc, drbd_unknown_key);
    tcase_add_test(tc, no_witness);
    tcase_add_test(tc, witness_not_url);
    tcase_add_test(tc, witness_ftp);
    tcase_add_test(tc, witness_path);
    tcase_add_test(tc, witness_trailing_comma);
    tcase_add_test(tc, witness_https_no_ca);
    tcase_add_test(tc, witness_cert_no_key);
    tcase_add_test(tc, witness_cert_over_http);
    tcase_add_test(tc, witness_ca_alone);
    tcase_add_test(tc, witness_timeout_zero);
    tcase_add_test(tc, valid_full_fixture);
    tcase_add_test(tc, valid_empty_log_file_is_stderr);
    tcase_add_test(tc, valid_wrapped_key);
    suite_add_tcase(s, tc);

    tc = tcase_create("file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, config_missing);
    tcase_add_test(tc, config_is_directory);
    tcase_add_test(tc, syntax_not_key_value);
    tcase_add_test(tc, syntax_group_unclosed);
    tcase_add_test(tc, syntax_key_before_group);
    tcase_add_test(tc, unknown_group);
    tcase_add_test(tc, unknown_key);
    tcase_add_test(tc, unknown_key_underscore);
    tcase_add_test(tc, unknown_key_in_timeouts);
    tcase_add_test(tc, key_in_wrong_group);
    tcase_add_test(tc, localized_key);
    tcase_add_test(tc, duplicate_key);
    tcase_add_test(tc, duplicate_key_across_repeated_group);
    tcase_add_test(tc, inline_comment);
    tcase_add_test(tc, bad_escape);
    tcase_add_test(tc, escaped_newline);
    tcase_add_test(tc, nul_byte);
    tcase_add_test(tc, not_utf8);
    suite_add_tcase(s, tc);

    tc = tcase_create("required");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, empty_file);
    tcase_add_test(tc, host_name_missing);
    tcase_add_test(tc, host_name_empty);
    tcase_add_test(tc, host_name_bad);
    tcase_add_test(tc, listen_address_missing);
    tcase_add_test(tc, key_file_missing_key);
    suite_add_tcase(s, tc);

    tc = tcase_create("values");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, listen_port_abc_exact);
    tcase_add_test(tc, listen_port_zero);
    tcase_add_test(tc, listen_port_too_big);
    tcase_add_test(tc, listen_port_negative);
    tcase_add_test(tc, listen_port_trailing_junk);
    tcase_add_test(tc, listen_port_empty);
    tcase_add_test(tc, listen_address_bad);
    tcase_add_test(tc, listen_address_ipv6);
    tcase_add_test(tc, listen_address_any);
    tcase_add_test(tc, qmp_ms_junk);
    tcase_add_test(tc, qmp_ms_too_small);
    tcase_add_test(tc, peer_ms_too_big);
    tcase_add_test(tc, start_ms_huge);
    tcase_add_test(tc, state_dir_relative);
    tcase_add_test(tc, run_dir_empty);
    tcase_add_test(tc, log_file_relative);
    tcase_add_test(tc, control_socket_too_long);
    tcase_add_test(tc, libvirt_uri_bad);
    tcase_add_test(tc, key_file_relative);
    suite_add_tcase(s, tc);

    tc = tcase_create("key-file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, key_file_absent);
    tcase_add_test(tc, key_file_directory);
    tcase_add_test(tc, key_file_world_readable);
    tcase_add_test(tc, key_file_group_readable);
    tcase_add_test(tc, key_file_other_writable);
    tcase_add_test(tc, key_file_other_owner);
    tcase_add_test(tc, key_file_not_base64);
    tcase_add_test(tc, key_file_urlsafe_base64);
    tcase_add_test(tc, key_file_bad_padding);
    tcase_add_test(tc, key_file_truncated);
    tcase_add_test(tc, key_file_empty);
    tcase_add_test(tc, key_file_too_short);
    tcase_add_test(tc, key_file_31_bytes);
    tcase_add_test(tc, key_file_too_big);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    return run_suite(config_suite());
}
