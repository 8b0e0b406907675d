/*
 * test-daemon.c - one kvm-ftd on libvirt's in-process test driver, with the
 * test playing its peer: the peer requests' QEMU check, and shutdown while
 * calls to the peer are on their way
 */
#include <check.h>
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "guest.h"
#include "journal.h"
#include "peer.h"
#include "virt.h"
#include "wait.h"
#include "run-suite.h"

/* 40 bytes, base64 in the key file. */
static const char psk_text[] = "kvm-ft test-daemon key 0123456789abcdef!";

/* This daemon is hostA at 127.0.0.1, its peer hostB at 127.0.0.2. */
#define PAIR_XML                                                                   \
    "      <ft:hosts>"                                                             \
    "        <ft:host name='hostA' link-address='127.0.0.1'/>"                     \
    "        <ft:host name='hostB' link-address='127.0.0.2'/>"                     \
    "      </ft:hosts>"

/* The FT guest. */
static const char guest_xml[] =
    "<domain type='test'>"
    "  <name>web1</name>"
    "  <metadata>"
    "    <ft:guest xmlns:ft='https://kvm-ft.dev/xmlns/1'>"
    PAIR_XML
    "      <ft:disk target='vda'/>"
    "    </ft:guest>"
    "  </metadata>"
    /* libvirt's test driver reports 3 MiB of free memory. */
    "  <memory unit='KiB'>2048</memory>"
    "  <os><type arch='x86_64'>hvm</type></os>"
    "  <devices>"
    "    <disk type='file' device='disk'>"
    "      <driver name='qemu' type='qcow2'/>"
    "      <source file='/nonexistent/kvm-ft-test/web1.qcow2'/>"
    "      <target dev='vda' bus='virtio'/>"
    "    </disk>"
    "  </devices>"
    "</domain>";

typedef struct {
    char *dir;
    char *control_socket;
    GBytes *psk;
    /* hostB's address: a kvm-ftd that takes requests and never answers... */
    PeerServer *peer;
    /* ...or a socket that takes connections and never says a word. */
    GSocket *mute;
    guint port;
    JsonObject *define;  /* the last define-guest hostB got */
    JsonObject *prepare; /* the last prepare-secondary hostB got */
    JsonObject *decision; /* the last decision hostB got */
    guint decisions;      /* how many it got */
    gboolean answer_decisions; /* "restarting" to the first, null to the others */
    char *extra_conf;    /* appended to kvm-ftd.conf, or NULL */
    GSocketService *etcd; /* a witness that answers every claim the same (fake_etcd()) */
    Daemon *d;
} Lab;

static Lab lab;

/* ---- hostB, as the test plays it ---------------------------------------------- */

static void on_peer_request(PeerConn *conn, guint64 id, const char *method,
                            JsonObject *params, gpointer opaque)
{
    (void)opaque;
    if (strcmp(method, "define-guest") == 0) {
        g_clear_pointer(&lab.define, json_object_unref);
        lab.define = json_object_ref(params);
    } else if (strcmp(method, "prepare-secondary") == 0) {
        g_clear_pointer(&lab.prepare, json_object_unref);
        lab.prepare = json_object_ref(params);
    } else if (strcmp(method, "decision") == 0) {
        g_clear_pointer(&lab.decision, json_object_unref);
        lab.decision = json_object_ref(params);
        if (lab.answer_decisions && lab.decisions++ == 0)
            peer_conn_reply_restarting(conn, id, "kvm-ftd on hostB restarted (test)");
        else if (lab.answer_decisions)
            peer_conn_reply(conn, id, NULL);
    }
}

static const PeerCallbacks peer_callbacks = {
    .request = on_peer_request,
};

/* hostB's kvm-ftd, or (mute) a socket that never completes the handshake. */
static void start_peer(gboolean mute)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GInetAddress) any = NULL;
    g_autoptr(GSocketAddress) addr = NULL;
    g_autoptr(GSocketAddress) bound = NULL;

    if (!mute) {
        lab.peer = peer_server_new("127.0.0.2", 0, lab.psk, "hostB", &peer_callbacks, NULL,
                                   &err);
        ck_assert_msg(lab.peer != NULL, "hostB: %s", err ? err->message : "?");
        lab.port = peer_server_get_port(lab.peer);
        return;
    }
    lab.mute = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                            G_SOCKET_PROTOCOL_TCP, &err);
    ck_assert_msg(lab.mute != NULL, "socket: %s", err ? err->message : "?");
    any = g_inet_address_new_from_string("127.0.0.2");
    addr = g_inet_socket_address_new(any, 0);
    ck_assert_msg(g_socket_bind(lab.mute, addr, TRUE, &err) &&
                  g_socket_listen(lab.mute, &err), "listen: %s", err ? err->message : "?");
    bound = g_socket_get_local_address(lab.mute, &err);
    lab.port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
}

/* ---- hostA: the daemon under test ----------------------------------------- */

static void start_daemon(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *key_file = g_build_filename(lab.dir, "peer.key", NULL);
    g_autofree char *key = g_base64_encode((const guchar *)psk_text, strlen(psk_text));
    g_autofree char *state = g_build_filename(lab.dir, "state", NULL);
    g_autofree char *run = g_build_filename(lab.dir, "run", NULL);
    g_autofree char *conf_file = g_build_filename(lab.dir, "kvm-ftd.conf", NULL);
    g_autofree char *conf = NULL;
    FtConfig *cfg;

    ck_assert(g_file_set_contents_full(key_file, key, -1, G_FILE_SET_CONTENTS_NONE, 0600,
                                       &err));
    /* A test may have put a journal or a QMP socket there first. */
    ck_assert_int_eq(g_mkdir_with_parents(state, 0700), 0);
    ck_assert_int_eq(g_mkdir_with_parents(run, 0700), 0);
    lab.control_socket = g_build_filename(lab.dir, "kvm-ftd.sock", NULL);
    /* Calls to the peer stay on their way for as long as a test may take. */
    conf = g_strdup_printf("[daemon]\n"
                           "host-name = hostA\n"
                           "listen-address = 127.0.0.1\n"
                           "listen-port = %u\n"
                           "key-file = %s\n"
                           "control-socket = %s\n"
                           "state-dir = %s\n"
                           "run-dir = %s\n"
                           "image-root = /nonexistent/kvm-ft-test\n"
                           "libvirt-uri = test:///default\n"
                           "[timeouts]\n"
                           "peer-ms = 600000\n"
                           "start-ms = 3600000\n"
                           "%s",
                           lab.port, key_file, lab.control_socket, state, run,
                           lab.extra_conf ? lab.extra_conf : "");
    ck_assert(g_file_set_contents(conf_file, conf, -1, &err));
    cfg = config_load(conf_file, &err);
    ck_assert_msg(cfg != NULL, "config: %s", err ? err->message : "?");
    lab.d = daemon_new(cfg, &err);
    ck_assert_msg(lab.d != NULL, "kvm-ftd: %s", err ? err->message : "?");
}

static void setup(void)
{
    g_autoptr(GError) err = NULL;

    memset(&lab, 0, sizeof(lab));
    lab.dir = g_dir_make_tmp("kvmft-daemon-XXXXXX", &err);
    ck_assert_msg(lab.dir != NULL, "tmp: %s", err ? err->message : "?");
    lab.psk = g_bytes_new_static(psk_text, strlen(psk_text));
}

static void remove_tree(const char *path)
{
    g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
    const char *name;

    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *child = g_build_filename(path, name, NULL);

        if (g_file_test(child, G_FILE_TEST_IS_DIR))
            remove_tree(child);
        else
            g_unlink(child);
    }
    g_rmdir(path);
}

static void teardown(void)
{
    daemon_free(lab.d);
    if (lab.etcd) {
        g_socket_service_stop(lab.etcd);
        g_clear_object(&lab.etcd);
    }
    g_clear_pointer(&lab.peer, peer_server_free);
    g_clear_object(&lab.mute);
    g_clear_pointer(&lab.define, json_object_unref);
    g_clear_pointer(&lab.prepare, json_object_unref);
    g_clear_pointer(&lab.decision, json_object_unref);
    g_bytes_unref(lab.psk);
    remove_tree(lab.dir);
    g_free(lab.dir);
    g_free(lab.control_socket);
    g_free(lab.extra_conf);
}

/* ---- ftctl, from a thread of its own: the daemon's loop runs here ----------------- */
typedef struct {
    JsonObject *request;
    JsonNode *result;
    GError *error;
    gint done;
} ControlCall;

static gpointer control_thread(gpointer opaque)
{
    ControlCall *c = opaque;

    c->result = control_request(lab.control_socket, c->request, 10000, &c->error);
    g_atomic_int_set(&c->done, 1);
    return NULL;
}

/* Runs fn in a thread while the daemon's loop runs here, until fn sets *done. */
static void off_the_loop(GThreadFunc fn, gpointer data, gint *done)
{
    GThread *t = g_thread_new("ftctl", fn, data);

    WAIT_FOR(g_atomic_int_get(done), 10000);
    g_thread_join(t);
}

/* The error kvm-ftd answered with (to be freed), or NULL when it answered *result. */
static char *control(JsonObject *request, JsonNode **result)
{
    ControlCall c = { .request = request };
    char *error;

    off_the_loop(control_thread, &c, &c.done);
    error = c.error ? g_strdup(c.error->message) : NULL;
    g_clear_error(&c.error);
    if (result)
        *result = c.result;
    else if (c.result)
        json_node_unref(c.result);
    return error;
}

typedef struct {
    const char *line;
    char *reply;
    char *second;   /* the line after reply, when asked for */
    gboolean want_second;
    gboolean shut_write; /* says it has sent everything, as `echo ... | socat` would */
    gint done;
} RawControl;

static gpointer raw_control_thread(gpointer opaque)
{
    RawControl *r = opaque;
    g_autoptr(GSocketClient) client = g_socket_client_new();
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(lab.control_socket);
    g_autoptr(GSocketConnection) conn = g_socket_client_connect(
        client, G_SOCKET_CONNECTABLE(addr), NULL, NULL);
    g_autoptr(GDataInputStream) in = NULL;

    if (conn && g_output_stream_write_all(g_io_stream_get_output_stream(G_IO_STREAM(conn)),
                                          r->line, strlen(r->line), NULL, NULL, NULL) &&
        (!r->shut_write || g_socket_shutdown(g_socket_connection_get_socket(conn), FALSE, TRUE,
                                             NULL))) {
        in = g_data_input_stream_new(g_io_stream_get_input_stream(G_IO_STREAM(conn)));
        r->reply = g_data_input_stream_read_line(in, NULL, NULL, NULL);
        if (r->want_second)
            r->second = g_data_input_stream_read_line(in, NULL, NULL, NULL);
    }
    g_atomic_int_set(&r->done, 1);
    return NULL;
}

/* A request line as is: what control_request() would never send. */
static char *raw_control(const char *line)
{
    RawControl r = { .line = line };

    off_the_loop(raw_control_thread, &r, &r.done);
    return r.reply;
}

static void protect_web1(void)
{
    g_autoptr(JsonObject) req = json_object_new();
    g_autofree char *error = NULL;

    json_object_set_string_member(req, "command", "protect");
    json_object_set_string_member(req, "guest", "web1");
    error = control(req, NULL);
    ck_assert_msg(!error, "protect: %s", error);
}

static void define_web1(void)
{
    g_autoptr(GError) err = NULL;
    gboolean defined = FALSE;

    ck_assert_msg(virt_domain_define_missing(daemon_virt(lab.d), "web1", guest_xml,
                                             &defined, &err),
                  "define: %s", err ? err->message : "?");
    ck_assert(defined);
}

/* ---- the tests ------------------------------------------------------------------- */

/*
 * A protect whose prepare-secondary the peer has not answered yet, then
 * kvm-ftd stops: the call's callback, which holds the guest, runs while the
 * guest still exists (ASan tells otherwise).
 */
START_TEST(quit_while_prepare_secondary_is_on_its_way)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *mine = NULL;

    start_peer(FALSE);
    start_daemon();
    define_web1();
    WAIT_FOR(lab.define != NULL, 10000);
    ck_assert_msg(lab.define != NULL, "no define-guest reached hostB");
    protect_web1();
    WAIT_FOR(lab.prepare != NULL, 10000);
    ck_assert_msg(lab.prepare != NULL, "no prepare-secondary reached hostB");
    mine = virt_qemu_version(daemon_virt(lab.d), &err);
    ck_assert_ptr_nonnull(mine);
    ck_assert_str_eq(json_object_get_string_member_with_default(lab.prepare, "qemu-version",
                                                                ""), mine);
    ck_assert_str_eq(json_object_get_string_member_with_default(lab.prepare, "primary", ""),
                     "hostA");
    g_clear_pointer(&lab.d, daemon_free);
}
END_TEST

/* The same with the calls still waiting for the connection to the peer. */
START_TEST(quit_while_prepare_secondary_waits_for_the_peer)
{
    start_peer(TRUE);
    start_daemon();
    define_web1();
    protect_web1();
    g_clear_pointer(&lab.d, daemon_free);
}
END_TEST

typedef struct {
    gboolean connected;
    gboolean answered;
    char *error;
    gboolean restarting; /* the error said "ask again" (PEER_ERROR_RESTARTING) */
    JsonNode *result;
} Client;

static void on_client_connected(PeerConn *conn, gpointer opaque)
{
    (void)conn;
    ((Client *)opaque)->connected = TRUE;
}

static const PeerCallbacks client_callbacks = {
    .connected = on_client_connected,
};

static void on_reply(PeerConn *conn, JsonNode *result, const GError *error, gpointer opaque)
{
    Client *c = opaque;

    (void)conn;
    c->answered = TRUE;
    c->error = error ? g_strdup(error->message) : NULL;
    c->restarting = g_error_matches(error, PEER_ERROR, PEER_ERROR_RESTARTING);
    c->result = result ? json_node_copy(result) : NULL;
}

/*
 * hostA's answer to a request from host: the error (NULL: success), *result
 * if asked, *restarting if asked (whether the error says "ask again").
 */
static char *ask_peer(const char *host, const char *method, JsonObject *params,
                      JsonNode **result, gboolean *restarting)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(PeerConn) conn = NULL;
    Client c = { 0 };

    conn = peer_connect("127.0.0.1", lab.port, lab.psk, host, 5000, &client_callbacks, &c,
                        &err);
    ck_assert_ptr_nonnull(conn);
    WAIT_FOR(c.connected, 5000);
    ck_assert(c.connected);
    peer_conn_request(conn, method, params, 5000, on_reply, &c);
    WAIT_FOR(c.answered, 5000);
    ck_assert(c.answered);
    if (result)
        *result = c.result;
    else if (c.result)
        json_node_unref(c.result);
    if (restarting)
        *restarting = c.restarting;
    return c.error;
}

static char *ask_as(const char *host, const char *method, JsonObject *params,
                    JsonNode **result)
{
    return ask_peer(host, method, params, result, NULL);
}

/* ... from hostB, web1's peer. */
static char *ask(const char *method, JsonObject *params, JsonNode **result)
{
    return ask_as("hostB", method, params, result);
}

/* What hostA answers hostB's prepare-secondary for web1 (NULL: success). */
/* ... with one more member, given as JSON text (NULL: none). */
static char *prepare_secondary_xml(const char *xml, const char *qemu_version,
                                   const char *member, const char *json)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) params = json_object_new();

    if (member) {
        JsonNode *value = json_from_string(json, &err);

        ck_assert_msg(value != NULL, "%s", json);
        json_object_set_member(params, member, value);
    }
    json_object_set_string_member(params, "guest", "web1");
    json_object_set_string_member(params, "domain-xml", xml);
    json_object_set_string_member(params, "primary", "hostB");
    if (qemu_version)
        json_object_set_string_member(params, "qemu-version", qemu_version);
    return ask("prepare-secondary", params, NULL);
}

static char *prepare_secondary_with(const char *qemu_version, const char *member,
                                    const char *json)
{
    return prepare_secondary_xml(guest_xml, qemu_version, member, json);
}

static char *prepare_secondary(const char *qemu_version)
{
    return prepare_secondary_with(qemu_version, NULL, NULL);
}

START_TEST(prepare_secondary_needs_the_same_qemu)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *mine = NULL;
    g_autofree char *other = NULL;
    g_autofree char *missing = NULL;
    g_autofree char *same = NULL;
    g_autofree char *expected = NULL;
    FtGuest *web1;

    start_peer(FALSE);
    start_daemon();
    mine = virt_qemu_version(daemon_virt(lab.d), &err);
    ck_assert_ptr_nonnull(mine);

    other = prepare_secondary("0.0.1-other");
    expected = g_strdup_printf("QEMU 0.0.1-other on hostB but %s on hostA: both copies of a "
                               "guest must run the same QEMU", mine);
    ck_assert_str_eq(other, expected);

    missing = prepare_secondary(NULL);
    ck_assert_str_eq(missing, "prepare-secondary needs domain-xml, primary and qemu-version");

    /* Past the check, it fails further on: the disk is nowhere. */
    same = prepare_secondary(mine);
    ck_assert_ptr_nonnull(same);
    ck_assert_msg(strstr(same, "does not exist on hostA") != NULL, "%s", same);
    /* What the failed start left goes in the libvirt thread; then the guest is failed. */
    web1 = daemon_find_guest(lab.d, "web1");
    ck_assert_ptr_nonnull(web1);
    WAIT_FOR(guest_state(web1) == GUEST_FAILED, 5000);
    ck_assert_str_eq(guest_state_name(guest_state(web1)), "failed");
}
END_TEST

/* The peer's definition, with one change (from -> to). */
static char *guest_xml_with(const char *from, const char *to)
{
    g_autoptr(GString) xml = g_string_new(guest_xml);

    ck_assert_uint_eq(g_string_replace(xml, from, to, 1), 1);
    return g_string_free(g_steal_pointer(&xml), FALSE);
}

/* An authenticated peer is no administrator of this host: what it asks to run is vetted. */
START_TEST(prepare_secondary_vets_the_peer_definition)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *mine = NULL;
    g_autofree char *outside_xml = guest_xml_with("/nonexistent/kvm-ft-test/web1.qcow2",
                                                  "/etc/shadow");
    g_autofree char *dotdot_xml = guest_xml_with("/nonexistent/kvm-ft-test/web1.qcow2",
                                                 "/nonexistent/kvm-ft-test/../../etc/shadow");
    g_autofree char *cmdline_xml = guest_xml_with(
        "</devices>", "</devices><qemu:commandline xmlns:qemu="
                      "'http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-S'/>"
                      "</qemu:commandline>");
    g_autofree char *outside = NULL, *dotdot = NULL, *cmdline = NULL;

    start_peer(FALSE);
    start_daemon();
    mine = virt_qemu_version(daemon_virt(lab.d), &err);
    ck_assert_ptr_nonnull(mine);
    outside = prepare_secondary_xml(outside_xml, mine, NULL, NULL);
    ck_assert_msg(outside && strstr(outside, "disk vda at /etc/shadow is outside hostA's image "
                                    "root /nonexistent/kvm-ft-test"), "%s",
                  outside ? outside : "(accepted)");
    dotdot = prepare_secondary_xml(dotdot_xml, mine, NULL, NULL);
    ck_assert_msg(dotdot && strstr(dotdot, "'..'"), "%s", dotdot ? dotdot : "(accepted)");
    cmdline = prepare_secondary_xml(cmdline_xml, mine, NULL, NULL);
    ck_assert_msg(cmdline && strstr(cmdline, "has <qemu:commandline>"), "%s",
                  cmdline ? cmdline : "(accepted)");
}
END_TEST

START_TEST(prepare_secondary_refuses_malformed_copy_params)
{
    static const char *const bad[][2] = {
        { "disk-bytes", "[\"64M\"]" },
        { "disk-bytes", "[0]" },
        { "disk-bytes", "{\"vda\": 1}" },
        { "wait-ms", "-1" },
        { "wait-ms", "\"soon\"" },
        { "generation", "\"not-a-uuid\"" },
        { "generation", "7" },
    };
    g_autoptr(GError) err = NULL;
    g_autofree char *mine = NULL;

    start_peer(FALSE);
    start_daemon();
    mine = virt_qemu_version(daemon_virt(lab.d), &err);
    ck_assert_ptr_nonnull(mine);
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *answer = prepare_secondary_with(mine, bad[i][0], bad[i][1]);

        ck_assert_msg(answer && g_str_has_prefix(answer, "prepare-secondary: disk-bytes must "
                                                          "be a list of positive sizes"),
                      "%s = %s: %s", bad[i][0], bad[i][1], answer ? answer : "accepted");
    }
}
END_TEST

/* The primary's channels and these must agree on TLS: said at once, by name. */
START_TEST(prepare_secondary_refuses_another_tls_setting)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *mine = NULL;
    g_autofree char *tls = NULL, *word = NULL, *same = NULL;

    start_peer(FALSE);
    start_daemon();
    mine = virt_qemu_version(daemon_virt(lab.d), &err);
    ck_assert_ptr_nonnull(mine);
    tls = prepare_secondary_with(mine, "replication-tls", "true");
    ck_assert_msg(tls && strstr(tls, "the replication channels run on TLS on hostB "
                                     "([replication] tls = yes) but in clear on hostA "
                                     "(tls = no): set the same on both hosts"), "%s",
                  tls ? tls : "(accepted)");
    word = prepare_secondary_with(mine, "replication-tls", "\"yes\"");
    ck_assert_msg(word && strstr(word, "replication-tls must be true or false"), "%s",
                  word ? word : "(accepted)");
    /* Agreeing, it goes on, and fails further on: the disk is nowhere. */
    same = prepare_secondary_with(mine, "replication-tls", "false");
    ck_assert_msg(same && strstr(same, "does not exist on hostA"), "%s",
                  same ? same : "(accepted)");
}
END_TEST

/*
 * "\ud800" is valid JSON text but no character: whatever json-glib makes of
 * it (Debian 12's refuses it as a parse error), the reply must be UTF-8 JSON.
 */
START_TEST(control_reply_is_utf8_whatever_the_request)
{
    g_autofree char *reply = NULL;
    g_autoptr(JsonParser) parser = json_parser_new();

    start_peer(FALSE);
    start_daemon();
    reply = raw_control("{\"command\": \"\\ud800\"}\n");
    ck_assert_msg(reply, "no reply");
    ck_assert_msg(g_utf8_validate(reply, -1, NULL), "the reply is not UTF-8: %s", reply);
    ck_assert_msg(json_parser_load_from_data(parser, reply, -1, NULL), "not JSON: %s", reply);
    ck_assert_msg(strstr(reply, "\"ok\":false"), "%s", reply);
}
END_TEST

/* A name is a file name under the state and run dirs: no way out of them. */
START_TEST(protect_refuses_a_path_for_a_name)
{
    g_autoptr(JsonObject) req = json_object_new();
    g_autofree char *error = NULL;

    start_peer(FALSE);
    start_daemon();
    json_object_set_string_member(req, "command", "protect");
    json_object_set_string_member(req, "guest", "../../etc/passwd");
    json_object_set_boolean_member(req, "started", TRUE);
    error = control(req, NULL);
    ck_assert_msg(error && strstr(error, "is not a guest name"), "%s",
                  error ? error : "(accepted)");
}
END_TEST

/*
 * protect reads the definition in the libvirt thread and answers later:
 * a request sent right behind it is answered after it, not before.
 */
START_TEST(a_deferred_reply_keeps_the_order_of_requests)
{
    RawControl r = { .line = "{\"command\": \"protect\", \"guest\": \"nope\"}\n"
                             "{\"command\": \"list\"}\n",
                     .want_second = TRUE };

    start_peer(FALSE);
    start_daemon();
    off_the_loop(raw_control_thread, &r, &r.done);
    ck_assert_msg(r.reply && strstr(r.reply, "\"ok\":false") && strstr(r.reply, "nope"),
                  "protect of a domain that does not exist: %s", r.reply ? r.reply : "(none)");
    ck_assert_msg(r.second && strstr(r.second, "\"ok\":true"), "list after it: %s",
                  r.second ? r.second : "(none)");
    g_free(r.reply);
    g_free(r.second);
}
END_TEST

/*
 * A client that sends its last request without a newline and says it has
 * sent everything (`printf ... | socat`): the request counts, and the
 * connection stays open until its deferred answer is out.
 */
START_TEST(a_deferred_reply_reaches_a_client_that_sent_everything)
{
    RawControl r = { .line = "{\"command\": \"protect\", \"guest\": \"nope\"}",
                     .shut_write = TRUE };

    start_peer(FALSE);
    start_daemon();
    off_the_loop(raw_control_thread, &r, &r.done);
    ck_assert_msg(r.reply && strstr(r.reply, "\"ok\":false") && strstr(r.reply, "nope"),
                  "protect, then end of input: %s", r.reply ? r.reply : "(no answer)");
    g_free(r.reply);
}
END_TEST

/* "since-ms" from the far future: no overflow (UBSan fails the test), all rounds. */
START_TEST(detector_since_far_future)
{
    g_autoptr(JsonObject) req = json_object_new();
    g_autoptr(JsonNode) result = NULL;
    g_autofree char *error = NULL;

    start_peer(FALSE);
    start_daemon();
    json_object_set_string_member(req, "command", "detector");
    json_object_set_int_member(req, "since-ms", G_MAXINT64 / 10);
    error = control(req, &result);
    ck_assert_msg(!error, "%s", error);
    ck_assert(result && JSON_NODE_HOLDS_OBJECT(result));
    ck_assert(json_object_has_member(json_node_get_object(result), "rounds"));
}
END_TEST

/* The key is shared: a third host holding it must not steer web1 (hostA + hostB). */
/* Defines a copy of web1 under another name, with text replaced (from -> to, may be NULL). */
static void define_like_web1(const char *name, const char *from, const char *to)
{
    g_autoptr(GString) xml = g_string_new(guest_xml);
    g_autofree char *name_element = g_strdup_printf("<name>%s</name>", name);
    g_autoptr(GError) err = NULL;
    gboolean defined = FALSE;

    ck_assert_uint_eq(g_string_replace(xml, "<name>web1</name>", name_element, 1), 1);
    if (from)
        ck_assert_uint_eq(g_string_replace(xml, from, to, 1), 1);
    ck_assert_msg(virt_domain_define_missing(daemon_virt(lab.d), name, xml->str, &defined, &err),
                  "define %s: %s", name, err ? err->message : "?");
}

/* What `ftctl status` says of one guest: its "error", or "" if it has none. */
static char *status_error(const char *name)
{
    g_autoptr(JsonObject) req = json_object_new();
    g_autoptr(JsonNode) result = NULL;
    g_autofree char *error = NULL;
    JsonArray *guests;

    json_object_set_string_member(req, "command", "status");
    json_object_set_string_member(req, "guest", name);
    error = control(req, &result);
    if (error)
        return g_steal_pointer(&error);
    guests = json_object_get_array_member(json_node_get_object(result), "guests");
    if (json_array_get_length(guests) != 1)
        return g_strdup("");
    return g_strdup(json_object_get_string_member_with_default(
        json_array_get_object_element(guests, 0), "error", ""));
}

/* Two guests on the same ports could never both be protected: the second is refused. */
START_TEST(a_guest_on_another_guests_ports_is_refused)
{
    const char *define_name;
    char *error = NULL;

    start_peer(FALSE);
    start_daemon();
    define_web1();
    WAIT_FOR(lab.define != NULL, 10000);
    g_clear_pointer(&lab.define, json_object_unref);
    define_like_web1("web2", NULL, NULL);
    for (int i = 0; i < 100 && !(error && *error); i++) {
        g_free(error);
        WAIT_FOR(FALSE, 50);
        error = status_error("web2");
    }
    ck_assert_msg(error && strstr(error, "<ft:ports base='9100'>: its ports 9100-9103 overlap "
                                         "guest 'web1''s 9100-9103 on hostA"),
                  "web2: %s", error ? error : "(accepted)");
    g_free(error);
    ck_assert_msg(lab.define == NULL, "define-guest of a refused guest reached hostB");
    /* Its own range, and it is a guest like any other. */
    define_like_web1("web3", "<ft:disk target='vda'/>",
                     "<ft:ports base='9104'/><ft:disk target='vda'/>");
    WAIT_FOR(lab.define != NULL, 10000);
    ck_assert_msg(lab.define != NULL, "web3 on ports of its own was not defined on hostB");
    define_name = json_object_get_string_member_with_default(lab.define, "domain-xml", "");
    ck_assert_msg(strstr(define_name, "<name>web3</name>"), "%s", define_name);
}
END_TEST

START_TEST(requests_from_a_host_that_is_not_the_peer_are_refused)
{
    static const char *const methods[] = { "stop-secondary", "receive-copy", "decision" };

    start_peer(FALSE);
    start_daemon();
    define_web1();
    WAIT_FOR(lab.define != NULL, 10000);
    protect_web1();
    for (gsize i = 0; i < G_N_ELEMENTS(methods); i++) {
        g_autoptr(JsonObject) params = json_object_new();
        g_autofree char *answer = NULL;

        json_object_set_string_member(params, "guest", "web1");
        json_object_set_string_member(params, "decision", "stand-down");
        answer = ask_as("hostC", methods[i], params, NULL);
        ck_assert_msg(answer && strstr(answer, "from hostC, which is not its peer (hostB)"),
                      "%s from hostC: %s", methods[i], answer ? answer : "(accepted)");
    }
}
END_TEST

/* A decision about a guest this host does not run is refused, and says so. */
START_TEST(decision_for_an_unknown_guest_is_refused)
{
    g_autoptr(JsonObject) params = json_object_new();
    g_autofree char *answer = NULL;

    start_peer(FALSE);
    start_daemon();
    json_object_set_string_member(params, "guest", "nope");
    json_object_set_string_member(params, "decision", "stand-down");
    json_object_set_string_member(params, "reason", "test");
    answer = ask("decision", params, NULL);
    ck_assert_msg(answer && strstr(answer, "'stand-down' for guest 'nope', which hostA does "
                                   "not run"), "%s", answer ? answer : "(accepted)");
}
END_TEST

/* A peer that woke from a stall learns what this host runs of a guest. */
START_TEST(guest_role_of_an_unknown_guest_is_none)
{
    g_autoptr(JsonObject) params = json_object_new();
    g_autoptr(JsonNode) result = NULL;
    g_autofree char *error = NULL;
    JsonObject *o;

    start_peer(FALSE);
    start_daemon();
    json_object_set_string_member(params, "guest", "nope");
    error = ask("guest-role", params, &result);
    ck_assert_msg(!error, "%s", error);
    ck_assert(result && JSON_NODE_HOLDS_OBJECT(result));
    o = json_node_get_object(result);
    ck_assert_str_eq(json_object_get_string_member(o, "role"), "none");
    ck_assert_str_eq(json_object_get_string_member(o, "state"), "stopped");
}
END_TEST

/* ---- a restart: re-attaching to a QEMU that does not answer ------------------------ */

#define WEB1_GENERATION "6f1d3c0e-8a5b-4c1e-9d2f-0a7b3c5e9f11"

/*
 * A "QEMU" that takes connections on web1's QMP socket and never greets:
 * hung.  A child process, for kvm-ftd kills what holds the socket.
 */
static pid_t start_hung_qemu(void)
{
    g_autofree char *run = g_build_filename(lab.dir, "run", NULL);
    g_autofree char *path = g_build_filename(run, "web1.qmp", NULL);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    pid_t pid;

    ck_assert_int_eq(g_mkdir_with_parents(run, 0700), 0);
    ck_assert(strlen(path) < sizeof(sun.sun_path));
    strcpy(sun.sun_path, path);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 8) < 0)
            _exit(1);
        for (;;)
            pause();
    }
    WAIT_FOR(g_file_test(path, G_FILE_TEST_EXISTS), 5000);
    ck_assert_msg(g_file_test(path, G_FILE_TEST_EXISTS), "the hung QEMU did not listen");
    return pid;
}

/* web1 running in libvirt, protected as primary before kvm-ftd "restarted". */
static Virt *web1_running_as_protected_primary(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *state = g_build_filename(lab.dir, "state", NULL);
    const JournalEntry was = { FT_ROLE_PRIMARY, (char *)"protected", (char *)WEB1_GENERATION,
                               FALSE };
    /* test:///default is one per process while a connection holds it. */
    Virt *v = virt_open("test:///default", &err);

    ck_assert_msg(v != NULL, "libvirt: %s", err ? err->message : "?");
    ck_assert_msg(virt_domain_start(v, guest_xml, FALSE, &err),
                  "web1: %s", err ? err->message : "?");
    ck_assert_int_eq(g_mkdir_with_parents(state, 0700), 0);
    ck_assert_msg(journal_write(state, "web1", &was, &err), "journal: %s",
                  err ? err->message : "?");
    return v;
}

static JsonObject *decision_params(const char *decision)
{
    JsonObject *params = json_object_new();

    json_object_set_string_member(params, "guest", "web1");
    json_object_set_string_member(params, "decision", decision);
    json_object_set_string_member(params, "reason", "test");
    json_object_set_string_member(params, "generation", WEB1_GENERATION);
    return params;
}

/*
 * kvm-ftd restarts beside a protected primary whose QEMU hangs: it listens
 * at once, and answers the peer "restarting" about that guest (not
 * refused, not silent, not acted on) while it waits for the QEMU in a
 * thread; when the QMP deadline passes it kills the QEMU and goes on from
 * the journal: the secondary is told to take over, and told again when it
 * answers that it is restarting itself.
 */
START_TEST(a_restart_answers_restarting_until_it_has_re_attached)
{
    g_autoptr(Virt) v = NULL;
    g_autoptr(JsonObject) stand_down = decision_params("stand-down");
    g_autoptr(JsonObject) role = json_object_new();
    g_autofree char *error = NULL;
    g_autofree char *role_error = NULL;
    gboolean restarting = FALSE, role_restarting = FALSE;
    int status = 0;
    pid_t hung, gone = 0;
    FtGuest *web1;

    start_peer(FALSE);
    lab.answer_decisions = TRUE;
    v = web1_running_as_protected_primary();
    hung = start_hung_qemu();
    start_daemon();
    web1 = daemon_find_guest(lab.d, "web1");
    ck_assert_ptr_nonnull(web1);
    ck_assert_str_eq(guest_state_name(guest_state(web1)), "re-attaching");

    error = ask_peer("hostB", "decision", stand_down, NULL, &restarting);
    ck_assert_msg(error && restarting && strstr(error, "re-attaching to guest 'web1'"),
                  "stand-down while re-attaching: %s (restarting: %d)",
                  error ? error : "(accepted)", restarting);
    json_object_set_string_member(role, "guest", "web1");
    role_error = ask_peer("hostB", "guest-role", role, NULL, &role_restarting);
    ck_assert_msg(role_error && role_restarting, "guest-role while re-attaching: %s",
                  role_error ? role_error : "(answered)");
    ck_assert_str_eq(guest_state_name(guest_state(web1)), "re-attaching");

    /* The QMP deadline (5 s by default), then the kill. */
    WAIT_FOR((gone = waitpid(hung, &status, WNOHANG)) == hung, 15000);
    if (gone != hung)
        kill(hung, SIGKILL);
    ck_assert_msg(gone == hung && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "the hung QEMU was not killed");
    WAIT_FOR(lab.decision != NULL, 5000);
    ck_assert_msg(lab.decision != NULL, "hostB was not told anything");
    ck_assert_str_eq(json_object_get_string_member(lab.decision, "decision"), "take-over");
    ck_assert_str_eq(json_object_get_string_member(lab.decision, "generation"), WEB1_GENERATION);
    /* hostB said it was restarting: asked again (every 100 ms) until it answered. */
    WAIT_FOR(lab.decisions >= 2, 2000);
    ck_assert_msg(lab.decisions >= 2, "take-over sent %u time(s) to a restarting hostB",
                  lab.decisions);
}
END_TEST

/* ---- ha guests: DRBD's handlers ---------------------------------------------------- */

/* An ha guest whose name and disk both have a '-': resource kvmft-my-db-vda. */
static const char ha_guest_xml[] =
    "<domain type='test'>"
    "  <name>my-db</name>"
    "  <metadata>"
    "    <ft:guest xmlns:ft='https://kvm-ft.dev/xmlns/1'>"
    PAIR_XML
    "      <ft:protection level='ha'/>"
    "      <ft:disk target='vda' backing-device='/dev/vg0/my-db'/>"
    "    </ft:guest>"
    "  </metadata>"
    "  <memory unit='KiB'>2048</memory>"
    "  <os><type arch='x86_64'>hvm</type></os>"
    "  <devices>"
    "    <disk type='block' device='disk'>"
    "      <driver name='qemu' type='raw'/>"
    "      <source dev='/dev/drbd10'/>"
    "      <target dev='vda' bus='virtio'/>"
    "    </disk>"
    "  </devices>"
    "</domain>";

#define HA_RESOURCE "kvmft-my-db-vda"
/* What the fake drbdadm prints for get-gi: this host as primary (lowest bit set). */
#define HA_GI "9A3F5B7C1D2E4F61:0000000000000000:0:0:1:1:1:1:0:0:0"
#define HA_GENERATION "9A3F5B7C1D2E4F60"

/* The witness's answer to every claim: the key created (hostA's) or held by hostB. */
static char *etcd_answer;
static char *etcd_claimed; /* the last key claimed (decoded) */
static GMutex etcd_lock;

static gboolean etcd_request(GThreadedSocketService *service, GSocketConnection *conn,
                             GObject *source, gpointer opaque)
{
    GInputStream *in = g_io_stream_get_input_stream(G_IO_STREAM(conn));
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(conn));
    g_autoptr(GString) req = g_string_new(NULL);
    g_autofree char *reply = NULL;
    const char *body = NULL;
    char buf[4096];
    gssize n;

    (void)service;
    (void)source;
    (void)opaque;
    /* The whole request: headers, then Content-Length bytes. */
    while ((n = g_input_stream_read(in, buf, sizeof(buf), NULL, NULL)) > 0) {
        const char *cl;

        g_string_append_len(req, buf, n);
        body = strstr(req->str, "\r\n\r\n");
        cl = g_strstr_len(req->str, -1, "Content-Length: ");
        if (!cl)
            cl = g_strstr_len(req->str, -1, "content-length: ");
        if (body && cl && req->str + req->len - (body + 4) >= g_ascii_strtoll(cl + 16, NULL, 10))
            break;
    }
    if (!body)
        return TRUE;
    body += 4;
    if (strstr(req->str, "/v3/kv/txn")) {
        g_autoptr(JsonParser) p = json_parser_new();
        const char *key64 = NULL;

        if (json_parser_load_from_data(p, body, -1, NULL)) {
            JsonObject *o = json_node_get_object(json_parser_get_root(p));
            JsonArray *cmp = json_object_get_array_member(o, "compare");

            key64 = json_object_get_string_member(json_array_get_object_element(cmp, 0), "key");
        }
        g_mutex_lock(&etcd_lock);
        g_free(etcd_claimed);
        etcd_claimed = key64 ? (char *)g_base64_decode(key64, &(gsize){ 0 }) : NULL;
        reply = g_strdup(etcd_answer);
        g_mutex_unlock(&etcd_lock);
    } else {
        reply = g_strdup("{\"count\": \"0\"}");
    }
    {
        g_autofree char *http = g_strdup_printf("HTTP/1.1 200 OK\r\nContent-Type: "
                                                "application/json\r\nContent-Length: %zu\r\n"
                                                "Connection: close\r\n\r\n%s",
                                                strlen(reply), reply);

        g_output_stream_write_all(out, http, strlen(http), NULL, NULL, NULL);
    }
    return TRUE;
}

/* A witness at a loopback port: its [witness] section. */
static char *fake_etcd(const char *answer)
{
    g_autoptr(GError) err = NULL;
    guint16 port;

    etcd_answer = g_strdup(answer);
    lab.etcd = g_threaded_socket_service_new(4);
    port = g_socket_listener_add_any_inet_port(G_SOCKET_LISTENER(lab.etcd), NULL, &err);
    ck_assert_msg(port, "fake etcd: %s", err ? err->message : "?");
    g_signal_connect(lab.etcd, "run", G_CALLBACK(etcd_request), NULL);
    g_socket_service_start(lab.etcd);
    return g_strdup_printf("[witness]\nendpoints = http://127.0.0.1:%u\ntimeout-ms = 2000\n",
                           port);
}

/* [drbd] command-prefix: a drbdadm that prints HA_GI for get-gi (after 30 s if "slow"). */
static char *fake_drbdadm(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = g_build_filename(lab.dir, "in-node", NULL);
    g_autofree char *script = g_strdup_printf(
        "#!/bin/sh\n"
        "[ \"$1 $2 $3\" = \"drbdadm get-gi " HA_RESOURCE "\" ] || "
        "{ echo \"unexpected: $*\"; exit 3; }\n"
        "[ -e '%s/slow' ] && exec sleep 30\n"
        "echo " HA_GI "\n", lab.dir);

    ck_assert(g_file_set_contents(path, script, -1, &err));
    ck_assert_int_eq(g_chmod(path, 0755), 0);
    return g_strdup_printf("[drbd]\ncommand-prefix = %s\n", path);
}

static void start_ha_daemon(const char *witness_answer)
{
    g_autofree char *drbd = NULL;
    g_autofree char *witness = witness_answer ? fake_etcd(witness_answer) : NULL;
    g_autoptr(GError) err = NULL;
    gboolean defined = FALSE;

    start_peer(FALSE);
    drbd = fake_drbdadm();
    lab.extra_conf = g_strconcat(drbd, witness ? witness : "", NULL);
    start_daemon();
    ck_assert_msg(virt_domain_define_missing(daemon_virt(lab.d), "my-db", ha_guest_xml,
                                             &defined, &err),
                  "define: %s", err ? err->message : "?");
}

/* The answer to drbd-handler (NULL on an error, which goes to *error). */
static JsonNode *drbd_handler(const char *handler, const char *resource, char **error)
{
    g_autoptr(JsonObject) req = json_object_new();
    JsonNode *result = NULL;

    json_object_set_string_member(req, "command", "drbd-handler");
    if (handler)
        json_object_set_string_member(req, "handler", handler);
    if (resource)
        json_object_set_string_member(req, "resource", resource);
    *error = control(req, &result);
    return result;
}

/* fence-peer as kvm-ft-drbd-handler asks it: again while pending; the final verdict. */
static JsonObject *fence_peer_verdict(void)
{
    for (int i = 0; i < 100; i++) {
        g_autofree char *error = NULL;
        g_autoptr(JsonNode) answer = drbd_handler("fence-peer", HA_RESOURCE, &error);
        JsonObject *o;

        ck_assert_msg(!error, "fence-peer: %s", error);
        ck_assert(answer && JSON_NODE_HOLDS_OBJECT(answer));
        o = json_node_get_object(answer);
        if (strcmp(json_object_get_string_member(o, "verdict"), "pending") != 0)
            return json_object_ref(o);
        /* the first answer is always pending: the decision runs asynchronously */
        ck_assert(json_object_get_null_member(o, "generation"));
        WAIT_FOR(FALSE, 50);
    }
    ck_abort_msg("fence-peer: still pending after 100 requests");
    return NULL;
}

START_TEST(drbd_handler_requests_are_checked)
{
    static const struct {
        const char *handler, *resource, *error;
    } bad[] = {
        { NULL, HA_RESOURCE, "no handler is not a handler kvm-ft answers" },
        { "before-resync-target", HA_RESOURCE, "'before-resync-target' is not a handler" },
        { "fence-peer", NULL, "the resource is missing" },
        { "fence-peer", "kvmft-my db-vda", "has a character other than" },
        { "split-brain", "kvmft-nope-vda", "no ha guest on this host has DRBD resource "
                                           "kvmft-nope-vda" },
        /* web1 is an ft guest: its disk is no DRBD resource */
        { "fence-peer", "kvmft-web1-vda", "(guest 'web1': guest 'web1' has protection level "
                                          "ft, not ha)" },
        { "fence-peer", "kvmft-my-db-vdb", "no ha guest on this host has DRBD resource" },
    };

    start_ha_daemon(NULL);
    define_web1();
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autofree char *error = NULL;
        g_autoptr(JsonNode) answer = drbd_handler(bad[i].handler, bad[i].resource, &error);

        ck_assert_msg(error && strstr(error, bad[i].error), "%s %s: '%s', not '%s'",
                      bad[i].handler, bad[i].resource, error ? error : "(accepted)",
                      bad[i].error);
    }
}
END_TEST

START_TEST(drbd_split_brain_is_told)
{
    static const char *const handlers[] = { "split-brain", "after-resync-target",
                                            "unfence-peer" };

    start_ha_daemon(NULL);
    for (gsize i = 0; i < G_N_ELEMENTS(handlers); i++) {
        g_autofree char *error = NULL;
        g_autoptr(JsonNode) answer = drbd_handler(handlers[i], HA_RESOURCE, &error);

        ck_assert_msg(!error, "%s: %s", handlers[i], error);
        ck_assert(answer && JSON_NODE_HOLDS_NULL(answer));
    }
}
END_TEST

/* Without a witness a cut link and a dead peer look the same: refused, never fenced. */
START_TEST(drbd_fence_peer_without_witness_is_refused)
{
    g_autoptr(JsonObject) v = NULL;
    g_autofree char *error = NULL;
    g_autoptr(JsonNode) again = NULL;

    start_ha_daemon(NULL);
    v = fence_peer_verdict();
    ck_assert_str_eq(json_object_get_string_member(v, "verdict"), "refused");
    ck_assert_msg(strstr(json_object_get_string_member(v, "reason"), "no witness"), "%s",
                  json_object_get_string_member(v, "reason"));
    ck_assert_str_eq(json_object_get_string_member(v, "generation"), HA_GENERATION);
    ck_assert(json_object_get_null_member(v, "owner"));
    /* returned once: the next fence-peer is a new decision */
    again = drbd_handler("fence-peer", HA_RESOURCE, &error);
    ck_assert_msg(!error, "%s", error);
    ck_assert_str_eq(json_object_get_string_member(json_node_get_object(again), "verdict"),
                     "pending");
}
END_TEST

/* The witness gave this host the generation: the peer counts as fenced (exit 7). */
START_TEST(drbd_fence_peer_won_at_the_witness)
{
    g_autoptr(JsonObject) v = NULL;

    start_ha_daemon("{\"succeeded\": true}");
    v = fence_peer_verdict();
    ck_assert_msg(strcmp(json_object_get_string_member(v, "verdict"), "peer-fenced") == 0,
                  "%s: %s", json_object_get_string_member(v, "verdict"),
                  json_object_get_string_member(v, "reason"));
    ck_assert_str_eq(json_object_get_string_member(v, "owner"), "hostA");
    ck_assert_str_eq(json_object_get_string_member(v, "generation"), HA_GENERATION);
    g_mutex_lock(&etcd_lock);
    ck_assert_str_eq(etcd_claimed, "/kvm-ft/hostA+hostB/my-db/drbd-" HA_GENERATION);
    g_mutex_unlock(&etcd_lock);
}
END_TEST

/* hostB holds the generation: refused, naming it. */
START_TEST(drbd_fence_peer_lost_at_the_witness)
{
    g_autoptr(JsonObject) v = NULL;

    /* "hostB" in base64 */
    start_ha_daemon("{\"responses\": [{\"response_range\": {\"kvs\": [{\"value\": "
                    "\"aG9zdEI=\"}]}}]}");
    v = fence_peer_verdict();
    ck_assert_str_eq(json_object_get_string_member(v, "verdict"), "refused");
    ck_assert_str_eq(json_object_get_string_member(v, "owner"), "hostB");
    ck_assert_msg(strstr(json_object_get_string_member(v, "reason"), "gave generation "
                         HA_GENERATION " to hostB"), "%s",
                  json_object_get_string_member(v, "reason"));
}
END_TEST

/* kvm-ftd stops while drbdadm get-gi runs: nothing is left behind (ASan). */
START_TEST(drbd_quit_while_get_gi_runs)
{
    g_autofree char *slow = g_build_filename(lab.dir, "slow", NULL);
    g_autofree char *error = NULL;
    g_autoptr(JsonNode) answer = NULL;
    gint64 t0;

    ck_assert(g_file_set_contents(slow, "", 0, NULL));
    start_ha_daemon("{\"succeeded\": true}");
    answer = drbd_handler("fence-peer", HA_RESOURCE, &error);
    ck_assert_msg(!error, "%s", error);
    WAIT_FOR(FALSE, 300);
    t0 = g_get_monotonic_time();
    daemon_free(lab.d);
    lab.d = NULL;
    ck_assert_int_lt(g_get_monotonic_time() - t0, 5 * G_USEC_PER_SEC);
}
END_TEST

/* kvm-ft-drbd-handler HANDLER as DRBD runs it, off the loop: its exit status, stderr. */
typedef struct {
    const char *handler;
    const char *resource;
    int status;
    char *err;
    gint done;
} HandlerRun;

static gpointer handler_thread(gpointer opaque)
{
    HandlerRun *h = opaque;
    const char *exe = g_getenv("KVMFT_DRBD_HANDLER");
    const char *argv[] = { exe, h->handler, NULL };
    g_auto(GStrv) env = g_get_environ();
    g_autoptr(GError) err = NULL;
    int wait_status = 0;

    env = g_environ_setenv(env, "KVMFT_CONTROL_SOCKET", lab.control_socket, TRUE);
    if (h->resource)
        env = g_environ_setenv(env, "DRBD_RESOURCE", h->resource, TRUE);
    else
        env = g_environ_unsetenv(env, "DRBD_RESOURCE");
    if (!g_spawn_sync(NULL, (char **)argv, env, G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, NULL,
                      &h->err, &wait_status, &err))
        h->err = g_strdup(err->message);
    h->status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
    g_atomic_int_set(&h->done, 1);
    return NULL;
}

static int run_handler(const char *handler, const char *resource, char **err)
{
    HandlerRun h = { .handler = handler, .resource = resource, .status = -1 };

    ck_assert_msg(g_getenv("KVMFT_DRBD_HANDLER"), "KVMFT_DRBD_HANDLER is not set");
    off_the_loop(handler_thread, &h, &h.done);
    *err = h.err;
    return h.status;
}

START_TEST(drbd_fence_peer_handler_exits_7_only_when_won)
{
    g_autofree char *err = NULL;
    int status;

    start_ha_daemon("{\"succeeded\": true}");
    status = run_handler("fence-peer", HA_RESOURCE, &err);
    ck_assert_msg(status == 7, "exit %d: %s", status, err);
    ck_assert_msg(strstr(err, "fence-peer " HA_RESOURCE ": peer fenced: the witness gave "
                         "generation " HA_GENERATION " to this host"), "%s", err);
}
END_TEST

START_TEST(drbd_fence_peer_handler_exits_1_otherwise)
{
    g_autofree char *lost = NULL, *unknown = NULL, *usage = NULL, *no_resource = NULL;
    g_autofree char *gone = NULL, *split = NULL;
    int status;

    start_ha_daemon("{\"responses\": [{\"response_range\": {\"kvs\": [{\"value\": "
                    "\"aG9zdEI=\"}]}}]}");
    status = run_handler("fence-peer", HA_RESOURCE, &lost);
    ck_assert_msg(status == 1 && strstr(lost, "refused: the witness gave generation "
                                        HA_GENERATION " to hostB"), "exit %d: %s", status, lost);
    status = run_handler("fence-peer", "kvmft-nope-vda", &unknown);
    ck_assert_msg(status == 1 && strstr(unknown, "no ha guest on this host"), "exit %d: %s",
                  status, unknown);
    status = run_handler("fence-peers", HA_RESOURCE, &usage);
    ck_assert_msg(status == 1 && strstr(usage, "usage:"), "exit %d: %s", status, usage);
    status = run_handler("fence-peer", NULL, &no_resource);
    ck_assert_msg(status == 1 && strstr(no_resource, "DRBD_RESOURCE is not set"), "exit %d: %s",
                  status, no_resource);
    /* the other handlers: 0, whatever happens */
    status = run_handler("split-brain", "kvmft-nope-vda", &split);
    ck_assert_msg(status == 0 && strstr(split, "no ha guest"), "exit %d: %s", status, split);
    /* no kvm-ftd: frozen, not "the peer is dead" */
    daemon_free(lab.d);
    lab.d = NULL;
    status = run_handler("fence-peer", HA_RESOURCE, &gone);
    ck_assert_msg(status == 1 && strstr(gone, "cannot reach kvm-ftd"), "exit %d: %s", status,
                  gone);
}
END_TEST

static Suite *daemon_suite(void)
{
    Suite *s = suite_create("daemon");
    TCase *tc = tcase_create("daemon");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, quit_while_prepare_secondary_is_on_its_way);
    tcase_add_test(tc, quit_while_prepare_secondary_waits_for_the_peer);
    tcase_add_test(tc, prepare_secondary_needs_the_same_qemu);
    tcase_add_test(tc, prepare_secondary_refuses_malformed_copy_params);
    tcase_add_test(tc, prepare_secondary_refuses_another_tls_setting);
    tcase_add_test(tc, protect_refuses_a_path_for_a_name);
    tcase_add_test(tc, a_deferred_reply_keeps_the_order_of_requests);
    tcase_add_test(tc, a_deferred_reply_reaches_a_client_that_sent_everything);
    tcase_add_test(tc, detector_since_far_future);
    tcase_add_test(tc, prepare_secondary_vets_the_peer_definition);
    tcase_add_test(tc, requests_from_a_host_that_is_not_the_peer_are_refused);
    tcase_add_test(tc, a_guest_on_another_guests_ports_is_refused);
    tcase_add_test(tc, control_reply_is_utf8_whatever_the_request);
    tcase_add_test(tc, decision_for_an_unknown_guest_is_refused);
    tcase_add_test(tc, guest_role_of_an_unknown_guest_is_none);
    tcase_add_test(tc, a_restart_answers_restarting_until_it_has_re_attached);
    tcase_add_test(tc, drbd_handler_requests_are_checked);
    tcase_add_test(tc, drbd_split_brain_is_told);
    tcase_add_test(tc, drbd_fence_peer_without_witness_is_refused);
    tcase_add_test(tc, drbd_fence_peer_won_at_the_witness);
    tcase_add_test(tc, drbd_fence_peer_lost_at_the_witness);
    tcase_add_test(tc, drbd_quit_while_get_gi_runs);
    tcase_add_test(tc, drbd_fence_peer_handler_exits_7_only_when_won);
    tcase_add_test(tc, drbd_fence_peer_handler_exits_1_otherwise);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(daemon_suite());
}
