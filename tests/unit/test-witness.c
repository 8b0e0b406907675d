/*
 * test-witness.c - the witness client against a real etcd (Debian's
 * etcd-server, started here on loopback), an endpoint that accepts and
 * never answers (a member cut off mid-way), and one that answers garbage
 */
#include <check.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "run-suite.h"
#include "wait.h"
#include "witness.h"

#define TIMEOUT_MS 400

static char *etcd_dir;
static GPid etcd_pid;
static char *live;         /* http://127.0.0.1:PORT of the etcd */
static char *dead;         /* a socket that listens and never accepts: requests hang */
static GSocket *dead_socket;
static gboolean tls;       /* the etcd of this test case speaks https, client certificates required */

/* A socket bound to a free loopback port. */
static GSocket *bound_socket(guint *port)
{
    GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, NULL);
    g_autoptr(GInetAddress) lo = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) any = g_inet_socket_address_new(lo, 0);
    g_autoptr(GSocketAddress) bound = NULL;

    ck_assert(g_socket_bind(s, any, FALSE, NULL));
    bound = g_socket_get_local_address(s, NULL);
    *port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    return s;
}

/* A loopback port that was free a moment ago. */
static guint free_port(void)
{
    guint port;
    g_autoptr(GSocket) s = bound_socket(&port);

    return port;
}

static gboolean answer_garbage(GThreadedSocketService *service, GSocketConnection *conn,
                               GObject *source, gpointer opaque)
{
    static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n"
                                "Connection: close\r\n\r\nnot json!";
    GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(conn));
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(conn));
    char buf[4096];

    (void)service;
    (void)source;
    (void)opaque;
    /* The whole request comes in one read on loopback; the answer does not depend on it. */
    (void)g_input_stream_read(in, buf, sizeof(buf), NULL, NULL);
    g_output_stream_write_all(out, reply, sizeof(reply) - 1, NULL, NULL, NULL);
    return TRUE;
}

static gboolean etcdctl(const char *args)
{
    g_autofree char *out = NULL;
    g_autofree char *cmd = tls ? g_strdup_printf("etcdctl --endpoints=%s --cacert=%s/ca.pem "
                                                 "--cert=%s/client.pem --key=%s/client.key %s",
                                                 live, etcd_dir, etcd_dir, etcd_dir, args)
                               : g_strdup_printf("etcdctl --endpoints=%s %s", live, args);
    int status = 1;

    return g_spawn_command_line_sync(cmd, &out, NULL, &status, NULL) && status == 0;
}

/* Certificates for TLS: a CA, etcd's server certificate for 127.0.0.1, a client's, another CA. */
static void make_certs(const char *dir)
{
    g_autofree char *script = g_strdup_printf(
        "set -e; cd '%s'\n"
        "key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout $1.key -out $1.csr -subj /CN=$2; }\n"
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout ca.key -out ca.pem -days 2 -subj /CN=kvmft-test-ca\n"
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=kvmft-other-ca\n"
        "key server 127.0.0.1; key client hostA\n"
        "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' >server.ext\n"
        "printf 'extendedKeyUsage=clientAuth\\n' >client.ext\n"
        "for c in server client; do openssl x509 -req -in $c.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial -out $c.pem -days 2 -extfile $c.ext; done\n", dir);
    const char *argv[] = { "sh", "-c", script, NULL };
    g_autofree char *err_text = NULL;
    g_autoptr(GError) err = NULL;
    int status = 1;

    ck_assert_msg(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH |
                               G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, NULL, &err_text,
                               &status, &err) && status == 0,
                  "making certificates failed: %s", err ? err->message : err_text);
}

static void start_etcd(void)
{
    guint client = free_port(), peer = free_port(), silent;
    const char *scheme = tls ? "https" : "http";
    g_autofree char *data = NULL, *log = NULL, *ca = NULL, *cert = NULL, *key = NULL;
    g_autofree char *client_url = NULL, *peer_url = NULL, *cluster = NULL;
    g_autoptr(GError) err = NULL;
    int fd;

    etcd_dir = g_dir_make_tmp("kvmft-test-witness-XXXXXX", &err);
    ck_assert_msg(etcd_dir, "%s", err ? err->message : "?");
    data = g_build_filename(etcd_dir, "data", NULL);
    log = g_build_filename(etcd_dir, "etcd.log", NULL);
    ca = g_build_filename(etcd_dir, "ca.pem", NULL);
    cert = g_build_filename(etcd_dir, "server.pem", NULL);
    key = g_build_filename(etcd_dir, "server.key", NULL);
    client_url = g_strdup_printf("%s://127.0.0.1:%u", scheme, client);
    peer_url = g_strdup_printf("http://127.0.0.1:%u", peer);
    cluster = g_strdup_printf("default=%s", peer_url);
    if (tls)
        make_certs(etcd_dir);
    {
        const char *argv[] = { "etcd", "--data-dir", data, "--listen-client-urls", client_url,
                               "--advertise-client-urls", client_url, "--listen-peer-urls",
                               peer_url, "--initial-advertise-peer-urls", peer_url,
                               "--initial-cluster", cluster,
                               /* Without TLS the list ends here. */
                               tls ? "--cert-file" : NULL, cert, "--key-file", key,
                               "--trusted-ca-file", ca, "--client-cert-auth", NULL };

        fd = g_open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_msg(g_spawn_async_with_fds(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH,
                                             NULL, NULL, &etcd_pid, -1, fd, fd, &err),
                      "cannot start etcd (tools/setup installs etcd-server): %s",
                      err ? err->message : "?");
        close(fd);
    }
    live = g_strdup(client_url);
    dead_socket = bound_socket(&silent);
    ck_assert(g_socket_listen(dead_socket, NULL));
    dead = g_strdup_printf("http://127.0.0.1:%u", silent);
    for (int i = 0; i < 100 && !etcdctl("endpoint health"); i++)
        g_usleep(100 * 1000);
    /* A fresh etcd's first write creates its log files: under a loaded CI machine it took
     * longer than the claims' TIMEOUT_MS, which no test here is about. */
    if (!etcdctl("endpoint health") || !etcdctl("put kvmft-test-warm-up 1")) {
        /* Check skips the teardown of a failed unchecked fixture. */
        kill(etcd_pid, SIGKILL);
        (void)waitpid(etcd_pid, NULL, 0);
        ck_abort_msg("etcd does not answer etcdctl (tools/setup installs etcd-client); see %s",
                     log);
    }
}

static void start_tls_etcd(void)
{
    tls = TRUE;
    start_etcd();
}

static void remove_tree(const char *dir)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", dir);

    (void)g_spawn_command_line_sync(cmd, NULL, NULL, NULL, NULL);
}

static void stop_etcd(void)
{
    kill(etcd_pid, SIGKILL);
    g_spawn_close_pid(etcd_pid);
    (void)waitpid(etcd_pid, NULL, 0);
    g_clear_object(&dead_socket);
    tls = FALSE;
    remove_tree(etcd_dir);
    g_clear_pointer(&etcd_dir, g_free);
    g_clear_pointer(&live, g_free);
    g_clear_pointer(&dead, g_free);
}

static Witness *witness_tls(const char *e1, const char *e2, const char *ca, const char *client)
{
    FtConfig cfg = { 0 };
    const char *endpoints[] = { e1, e2, NULL };
    g_autofree char *ca_path = ca ? g_strdup_printf("%s/%s.pem", etcd_dir, ca) : NULL;
    g_autofree char *cert = client ? g_strdup_printf("%s/%s.pem", etcd_dir, client) : NULL;
    g_autofree char *key = client ? g_strdup_printf("%s/%s.key", etcd_dir, client) : NULL;
    g_autoptr(GError) err = NULL;
    Witness *w;

    cfg.witness_endpoints = (char **)endpoints;
    cfg.witness_timeout_ms = TIMEOUT_MS;
    cfg.witness_ca = ca_path;
    cfg.witness_cert = cert;
    cfg.witness_key = key;
    w = witness_new(&cfg, &err);
    ck_assert_msg(w, "%s", err ? err->message : "?");
    return w;
}

static Witness *witness_at(const char *e1, const char *e2)
{
    return witness_tls(e1, e2, NULL, NULL);
}

typedef struct {
    gboolean done;
    const char *owner; /* NULL or owner_buf */
    const char *error; /* NULL or error_buf */
    char owner_buf[64];
    char error_buf[1024];
    gint64 took_us;
    gint64 started_us;
} Outcome;

static void on_claim(const char *owner, const GError *error, gpointer opaque)
{
    Outcome *o = opaque;

    ck_assert_msg(!o->done, "the claim was answered twice");
    o->done = TRUE;
    if (owner) {
        g_strlcpy(o->owner_buf, owner, sizeof(o->owner_buf));
        o->owner = o->owner_buf;
    }
    if (error) {
        g_strlcpy(o->error_buf, error->message, sizeof(o->error_buf));
        o->error = o->error_buf;
    }
    o->took_us = g_get_monotonic_time() - o->started_us;
}

static void claim(Witness *w, const char *key, const char *self, Outcome *o)
{
    memset(o, 0, sizeof(*o));
    o->started_us = g_get_monotonic_time();
    witness_claim(w, key, self, on_claim, o);
    WAIT_FOR(o->done, 5000);
    ck_assert_msg(o->done, "the claim was never answered");
}

static char *fresh_key(void)
{
    g_autofree char *gen = g_uuid_string_random();

    return witness_key("hostB", "hostA", "ftguest", gen);
}

START_TEST(key_names_the_pair_in_order)
{
    g_autofree char *k1 = witness_key("hostB", "hostA", "g", "1");
    g_autofree char *k2 = witness_key("hostA", "hostB", "g", "1");

    ck_assert_str_eq(k1, "/kvm-ft/hostA+hostB/g/1");
    ck_assert_str_eq(k1, k2);
}
END_TEST

START_TEST(first_claim_wins_for_good)
{
    Witness *w = witness_at(live, NULL);
    g_autofree char *key = fresh_key();
    g_autofree char *other = fresh_key();
    Outcome a;
    Outcome b;
    Outcome again;
    Outcome c;

    claim(w, key, "hostA", &a);
    claim(w, key, "hostB", &b);
    claim(w, key, "hostA", &again);
    claim(w, other, "hostB", &c);
    ck_assert_msg(a.owner, "first claim failed: %s", a.error);
    ck_assert_str_eq(a.owner, "hostA");
    ck_assert_msg(b.owner, "second claim failed: %s", b.error);
    ck_assert_str_eq(b.owner, "hostA");
    ck_assert_str_eq(again.owner, "hostA");
    /* Another generation is another claim. */
    ck_assert_str_eq(c.owner, "hostB");
    witness_free(w);
}
END_TEST

START_TEST(dead_endpoint_costs_nothing)
{
    Witness *w = witness_at(dead, live);
    g_autofree char *key = fresh_key();
    Outcome a;

    claim(w, key, "hostB", &a);
    ck_assert_msg(a.owner, "claim failed: %s", a.error);
    ck_assert_str_eq(a.owner, "hostB");
    ck_assert_msg(a.took_us < TIMEOUT_MS * 1000 / 2, "took %" G_GINT64_FORMAT " us", a.took_us);
    witness_free(w);
}
END_TEST

START_TEST(unreachable_is_an_error_naming_the_endpoint)
{
    Witness *w = witness_at(dead, NULL);
    g_autofree char *key = fresh_key();
    Outcome a;

    claim(w, key, "hostA", &a);
    ck_assert_ptr_null(a.owner);
    ck_assert_msg(a.error && strstr(a.error, dead), "error does not name %s: %s", dead, a.error);
    ck_assert_msg(a.took_us <= (TIMEOUT_MS + 200) * 1000, "took %" G_GINT64_FORMAT " us",
                  a.took_us);
    WAIT_FOR(witness_trouble(w) && strstr(witness_trouble(w), "unreachable"), 3000);
    ck_assert_msg(witness_trouble(w) && strstr(witness_trouble(w), "failover is not automatic"),
                  "trouble: %s", witness_trouble(w));
    witness_free(w);
}
END_TEST

/* Its threads are this test's: Check runs each test in a process of its own. */
START_TEST(garbage_answer_is_refused)
{
    guint port;
    g_autoptr(GSocket) s = bound_socket(&port);
    g_autoptr(GSocketService) service = g_threaded_socket_service_new(2);
    g_autofree char *garbage = g_strdup_printf("http://127.0.0.1:%u", port);
    g_autofree char *key = fresh_key();
    Witness *w;
    Outcome a;

    ck_assert(g_socket_listen(s, NULL));
    ck_assert(g_socket_listener_add_socket(G_SOCKET_LISTENER(service), s, NULL, NULL));
    g_signal_connect(service, "run", G_CALLBACK(answer_garbage), NULL);
    g_socket_service_start(service);
    w = witness_at(garbage, NULL);

    claim(w, key, "hostA", &a);
    ck_assert_ptr_null(a.owner);
    ck_assert_msg(a.error && strstr(a.error, "not JSON") && strstr(a.error, garbage),
                  "error: %s", a.error);
    witness_free(w);
}
END_TEST

START_TEST(probe_says_reachable)
{
    Witness *w = witness_at(live, NULL);

    ck_assert_ptr_nonnull(witness_trouble(w)); /* not probed yet */
    WAIT_FOR(witness_trouble(w) == NULL, 3000);
    ck_assert_msg(witness_trouble(w) == NULL, "trouble: %s", witness_trouble(w));
    witness_free(w);
}
END_TEST

START_TEST(free_with_claim_on_its_way)
{
    Witness *w = witness_at(dead, NULL);
    g_autofree char *key = fresh_key();
    Outcome a = { 0 };

    witness_claim(w, key, "hostA", on_claim, &a);
    witness_free(w);
    ck_assert(a.done);
    ck_assert_ptr_null(a.owner);
    ck_assert_msg(strstr(a.error, "shutting down"), "error: %s", a.error);
}
END_TEST

/*
 * LeakSanitizer's tracer, which stops every thread at exit to scan it,
 * crashes (SIGSEGV inside the tracer) on a process that made GnuTLS
 * handshakes through glib-networking.  Under ASan these tests therefore end
 * with _exit() once everything is asserted and freed: their leaks go
 * unchecked, the other tests' are not.
 */
static void witness_free_tls(Witness *w)
{
    witness_free(w);
#if defined(__SANITIZE_ADDRESS__)
    _exit(0);
#endif
}

START_TEST(tls_claim_with_client_certificate)
{
    Witness *w = witness_tls(live, NULL, "ca", "client");
    g_autofree char *key = fresh_key();
    Outcome a;

    claim(w, key, "hostA", &a);
    ck_assert_msg(a.owner, "claim over TLS failed: %s", a.error);
    ck_assert_str_eq(a.owner, "hostA");
    WAIT_FOR(witness_trouble(w) == NULL, 3000);
    ck_assert_msg(witness_trouble(w) == NULL, "probe over TLS: %s", witness_trouble(w));
    witness_free_tls(w);
}
END_TEST

/* etcd --client-cert-auth: no certificate, no answer. */
START_TEST(tls_without_client_certificate_refused)
{
    Witness *w = witness_tls(live, NULL, "ca", NULL);
    g_autofree char *key = fresh_key();
    Outcome a;

    claim(w, key, "hostA", &a);
    ck_assert_msg(!a.owner, "etcd answered a client without a certificate: %s", a.owner);
    ck_assert_msg(a.error && strstr(a.error, live), "error: %s", a.error);
    witness_free_tls(w);
}
END_TEST

START_TEST(tls_unknown_server_refused)
{
    Witness *w = witness_tls(live, NULL, "other-ca", "client");
    g_autofree char *key = fresh_key();
    Outcome a;

    claim(w, key, "hostA", &a);
    ck_assert_msg(!a.owner, "a witness signed by another CA was believed: %s", a.owner);
    ck_assert_msg(a.error && strstr(a.error, live) && strstr(a.error, "ertificate"),
                  "error: %s", a.error);
    witness_free_tls(w);
}
END_TEST

START_TEST(tls_missing_file_is_an_error)
{
    FtConfig cfg = { 0 };
    const char *endpoints[] = { "https://127.0.0.1:1", NULL };
    g_autoptr(GError) err = NULL;

    cfg.witness_endpoints = (char **)endpoints;
    cfg.witness_timeout_ms = TIMEOUT_MS;
    cfg.witness_ca = (char *)"/nonexistent/ca.pem";
    ck_assert_ptr_null(witness_new(&cfg, &err));
    ck_assert_msg(err && strstr(err->message, "/nonexistent/ca.pem"), "error: %s",
                  err ? err->message : "none");
}
END_TEST

static Suite *witness_suite(void)
{
    Suite *s = suite_create("witness");
    TCase *tc = tcase_create("etcd");

    tcase_add_unchecked_fixture(tc, start_etcd, stop_etcd);
    tcase_add_test(tc, key_names_the_pair_in_order);
    tcase_add_test(tc, first_claim_wins_for_good);
    tcase_add_test(tc, dead_endpoint_costs_nothing);
    tcase_add_test(tc, unreachable_is_an_error_naming_the_endpoint);
    tcase_add_test(tc, garbage_answer_is_refused);
    tcase_add_test(tc, probe_says_reachable);
    tcase_add_test(tc, free_with_claim_on_its_way);
    suite_add_tcase(s, tc);

    tc = tcase_create("etcd-tls");
    tcase_add_unchecked_fixture(tc, start_tls_etcd, stop_etcd);
    tcase_add_test(tc, tls_claim_with_client_certificate);
    tcase_add_test(tc, tls_without_client_certificate_refused);
    tcase_add_test(tc, tls_unknown_server_refused);
    tcase_add_test(tc, tls_missing_file_is_an_error);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(witness_suite());
}
