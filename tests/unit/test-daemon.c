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
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "peer.h"
#include "virt.h"
#include "wait.h"
#include "run-suite.h"

/* 40 bytes, base64 in the key file. */
static const char psk_text[] = "kvm-ft test-daemon key 0123456789abcdef!";

/* The FT guest: this daemon is hostA at 127.0.0.1, its peer hostB at 127.0.0.2. */
static const char guest_xml[] =
    "<domain type='test'>"
    "  <name>web1</name>"
    "  <metadata>"
    "    <ft:guest xmlns:ft='https://kvm-ft.dev/xmlns/1'>"
    "      <ft:hosts>"
    "        <ft:host name='hostA' link-address='127.0.0.1'/>"
    "        <ft:host name='hostB' link-address='127.0.0.2'/>"
    "      </ft:hosts>"
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
    Daemon *d;
} Lab;

static Lab lab;

/* ---- hostB, as the test plays it ---------------------------------------------- */

static void on_peer_request(PeerConn *conn, guint64 id, const char *method,
                            JsonObject *params, gpointer opaque)
{
    (void)conn;
    (void)id;
    (void)opaque;
    if (strcmp(method, "define-guest") == 0) {
        g_clear_pointer(&lab.define, json_object_unref);
        lab.define = json_object_ref(params);
    } else if (strcmp(method, "prepare-secondary") == 0) {
        g_clear_pointer(&lab.prepare, json_object_unref);
        lab.prepare = json_object_ref(params);
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
    ck_assert_int_eq(g_mkdir(state, 0700), 0);
    ck_assert_int_eq(g_mkdir(run, 0700), 0);
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
                           "start-ms = 3600000\n",
                           lab.port, key_file, lab.control_socket, state, run);
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
    g_clear_pointer(&lab.peer, peer_server_free);
    g_clear_object(&lab.mute);
    g_clear_pointer(&lab.define, json_object_unref);
    g_clear_pointer(&lab.prepare, json_object_unref);
    g_bytes_unref(lab.psk);
    remove_tree(lab.dir);
    g_free(lab.dir);
    g_free(lab.control_socket);
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
                                          r->line, strlen(r->line), NULL, NULL, NULL)) {
        in = g_data_input_stream_new(g_io_stream_get_input_stream(G_IO_STREAM(conn)));
        r->reply = g_data_input_stream_read_line(in, NULL, NULL, NULL);
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
    c->result = result ? json_node_copy(result) : NULL;
}

/* hostA's answer to a request from host: the error (NULL: success), *result if asked. */
static char *ask_as(const char *host, const char *method, JsonObject *params,
                    JsonNode **result)
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
    return c.error;
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
    tcase_add_test(tc, protect_refuses_a_path_for_a_name);
    tcase_add_test(tc, detector_since_far_future);
    tcase_add_test(tc, prepare_secondary_vets_the_peer_definition);
    tcase_add_test(tc, requests_from_a_host_that_is_not_the_peer_are_refused);
    tcase_add_test(tc, control_reply_is_utf8_whatever_the_request);
    tcase_add_test(tc, decision_for_an_unknown_guest_is_refused);
    tcase_add_test(tc, guest_role_of_an_unknown_guest_is_none);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(daemon_suite());
}
