/* test-qmp.c - QMP client against a real QEMU and against a scripted stub server */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "qmp.h"
#include "run-suite.h"

#define QEMU_TIMEOUT_MS 5000
#define GREETING_OOB \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}," \
    " \"package\": \"stub\"}, \"capabilities\": [\"oob\"]}}"
#define GREETING_NO_OOB \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 1, \"minor\": 0, \"major\": 6}," \
    " \"package\": \"stub\"}, \"capabilities\": []}}"
#define REPLY_EMPTY "{\"return\": {}, \"id\": %ID%}"

static gint64 now_ms(void)
{
    return g_get_monotonic_time() / 1000;
}

/* ---- recording handlers ---- */

typedef struct {
    GPtrArray *names;
    GArray *stamps;
    GPtrArray *data;        /* of JsonObject * or NULL, serialised */
    GString *order;         /* "A,B,closed," */
    int nevents;
    int closed;
    int closed_code;
    gboolean in_call;
    int reentered;          /* handler ran while a qmp_call was running */
    gboolean free_on_close;
    Qmp **owner;
} Rec;

static void rec_init(Rec *r)
{
    memset(r, 0, sizeof(*r));
    r->names = g_ptr_array_new_with_free_func(g_free);
    r->stamps = g_array_new(FALSE, FALSE, sizeof(gint64));
    r->data = g_ptr_array_new_with_free_func(g_free);
    r->order = g_string_new(NULL);
    r->closed_code = -1;
}

static void rec_clear(Rec *r)
{
    g_ptr_array_unref(r->names);
    g_array_unref(r->stamps);
    g_ptr_array_unref(r->data);
    g_string_free(r->order, TRUE);
}

static void rec_event(Qmp *q, const char *event, JsonObject *data,
                      gint64 timestamp_us, gpointer opaque)
{
    Rec *r = opaque;
    char *text = NULL;

    (void)q;
    if (r->in_call)
        r->reentered++;
    if (data) {
        JsonNode *n = json_node_new(JSON_NODE_OBJECT);

        json_node_set_object(n, data);
        text = json_to_string(n, FALSE);
        json_node_unref(n);
    }
    g_ptr_array_add(r->names, g_strdup(event));
    g_array_append_val(r->stamps, timestamp_us);
    g_ptr_array_add(r->data, text);
    g_string_append_printf(r->order, "%s,", event);
    r->nevents++;
}

static void rec_closed(Qmp *q, const GError *reason, gpointer opaque)
{
    Rec *r = opaque;

    if (r->in_call)
        r->reentered++;
    r->closed++;
    r->closed_code = reason->domain == QMP_ERROR ? reason->code : -2;
    g_string_append(r->order, "closed,");
    if (r->free_on_close) {
        qmp_free(q);
        *r->owner = NULL;
    }
}

/* A fresh recorder taking q's events and close, q's monitor watched on ctx. */
static void rec_attach(Rec *r, Qmp *q, GMainContext *ctx)
{
    rec_init(r);
    qmp_set_handlers(q, rec_event, rec_closed, r);
    qmp_attach(q, ctx);
}

static gboolean wake(gpointer d)
{
    (void)d;
    return G_SOURCE_CONTINUE;
}

/* Runs ctx until *counter reaches want or ms pass; TRUE if it did. */
static gboolean run_until(GMainContext *ctx, int *counter, int want, guint ms)
{
    GSource *tick = g_timeout_source_new(10);
    gint64 end = now_ms() + ms;

    g_source_set_callback(tick, wake, NULL, NULL);
    g_source_attach(tick, ctx);
    while (*counter < want && now_ms() < end)
        g_main_context_iteration(ctx, TRUE);
    g_source_destroy(tick);
    g_source_unref(tick);
    return *counter >= want;
}

/* Lets ctx run a while so a second, wrong callback would show. */
static void run_for(GMainContext *ctx, guint ms)
{
    int never = 0;

    run_until(ctx, &never, 1, ms);
}

/* ---- stub QMP server: a thread that plays a script on one connection ---- */

typedef enum {
    STUB_SEND,      /* text + "\n"; %ID% / %PREVID%: ids of the last two requests */
    STUB_SEND_RAW,  /* text as is, no newline */
    STUB_RECV,      /* one request line */
    STUB_CLOSE,
    STUB_END,
} StubOp;

typedef struct {
    StubOp op;
    const char *text;
} StubStep;

typedef struct {
    char *dir;
    char *path;
    int listen_fd;
    int stop[2];
    const StubStep *script;
    GThread *thread;
    GMutex lock;
    GPtrArray *received;
} Stub;

#define STUB_HELLO(greeting) \
    { STUB_SEND, greeting }, { STUB_RECV, NULL }, { STUB_SEND, REPLY_EMPTY }

static gboolean stub_wait_readable(Stub *s, int fd)
{
    struct pollfd p[2] = {
        { .fd = fd, .events = POLLIN },
        { .fd = s->stop[0], .events = POLLIN },
    };

    while (poll(p, 2, -1) < 0 && errno == EINTR)
        ;
    return !(p[1].revents & POLLIN);
}

static char *stub_id_of(const char *line)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    JsonNode *root, *id;

    if (!json_parser_load_from_data(parser, line, -1, NULL))
        return g_strdup("null");
    root = json_parser_get_root(parser);
    if (!JSON_NODE_HOLDS_OBJECT(root))
        return g_strdup("null");
    id = json_object_get_member(json_node_get_object(root), "id");
    return id ? json_to_string(id, FALSE) : g_strdup("null");
}

static gpointer stub_thread(gpointer opaque)
{
    Stub *s = opaque;
    g_autoptr(GString) in = g_string_new(NULL);
    g_autofree char *id = g_strdup("null");
    g_autofree char *previd = g_strdup("null");
    int conn = -1;

    if (!stub_wait_readable(s, s->listen_fd))
        return NULL;
    conn = accept(s->listen_fd, NULL, NULL);
    if (conn < 0)
        return NULL;

    for (const StubStep *st = s->script; st->op != STUB_END; st++) {
        if (st->op == STUB_SEND || st->op == STUB_SEND_RAW) {
            g_autofree char *a = NULL;
            g_autofree char *b = NULL;
            char **parts = g_strsplit(st->text, "%PREVID%", -1);

            a = g_strjoinv(previd, parts);
            g_strfreev(parts);
            parts = g_strsplit(a, "%ID%", -1);
            b = g_strjoinv(id, parts);
            g_strfreev(parts);
            if (st->op == STUB_SEND) {
                char *line = g_strconcat(b, "\r\n", NULL);

                g_free(b);
                b = line;
            }
            for (size_t off = 0, len = strlen(b); off < len;) {
                ssize_t n = send(conn, b + off, len - off, MSG_NOSIGNAL);

                if (n < 0)
                    break;
                off += n;
            }
        } else if (st->op == STUB_RECV) {
            char *nl;

            while (!(nl = memchr(in->str, '\n', in->len))) {
                char buf[4096];
                ssize_t n;

                if (!stub_wait_readable(s, conn))
                    goto out;
                n = read(conn, buf, sizeof(buf));
                if (n <= 0)
                    goto out;
                g_string_append_len(in, buf, n);
            }
            {
                char *line = g_strndup(in->str, nl - in->str);

                g_string_erase(in, 0, nl - in->str + 1);
                g_free(previd);
                previd = id;
                id = stub_id_of(line);
                g_mutex_lock(&s->lock);
                g_ptr_array_add(s->received, line);
                g_mutex_unlock(&s->lock);
            }
        } else if (st->op == STUB_CLOSE) {
            close(conn);
            conn = -1;
        }
    }
out:
    /* Stay connected (and silent) until the test is done. */
    stub_wait_readable(s, s->stop[0]);
    if (conn >= 0)
        close(conn);
    return NULL;
}

static Stub *stub_start(const StubStep *script)
{
    Stub *s = g_new0(Stub, 1);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    s->dir = g_dir_make_tmp("test-qmp-stub-XXXXXX", NULL);
    ck_assert_ptr_nonnull(s->dir);
    s->path = g_build_filename(s->dir, "qmp.sock", NULL);
    s->script = script;
    s->received = g_ptr_array_new_with_free_func(g_free);
    g_mutex_init(&s->lock);
    ck_assert_int_eq(pipe(s->stop), 0);
    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(s->listen_fd, 0);
    g_strlcpy(sa.sun_path, s->path, sizeof(sa.sun_path));
    ck_assert_int_eq(bind(s->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(s->listen_fd, 1), 0);
    s->thread = g_thread_new("qmp-stub", stub_thread, s);
    return s;
}

static guint stub_received(Stub *s)
{
    guint n;

    g_mutex_lock(&s->lock);
    n = s->received->len;
    g_mutex_unlock(&s->lock);
    return n;
}

/* The n-th request the client sent, parsed. */
static JsonObject *stub_request(Stub *s, guint n)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autofree char *line = NULL;
    JsonNode *root;

    g_mutex_lock(&s->lock);
    if (n < s->received->len)
        line = g_strdup(g_ptr_array_index(s->received, n));
    g_mutex_unlock(&s->lock);
    ck_assert_msg(line, "stub did not receive request %u", n);
    ck_assert_msg(json_parser_load_from_data(parser, line, -1, NULL),
                  "client sent invalid JSON: %s", line);
    root = json_parser_get_root(parser);
    ck_assert(JSON_NODE_HOLDS_OBJECT(root));
    return json_object_ref(json_node_get_object(root));
}

static void stub_stop(Stub *s)
{
    ck_assert_int_eq(write(s->stop[1], "x", 1), 1);
    g_thread_join(s->thread);
    close(s->listen_fd);
    close(s->stop[0]);
    close(s->stop[1]);
    g_unlink(s->path);
    g_rmdir(s->dir);
    g_ptr_array_unref(s->received);
    g_mutex_clear(&s->lock);
    g_free(s->path);
    g_free(s->dir);
    g_free(s);
}

/* ---- stub tests ---- */

START_TEST(test_stub_handshake_oob)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_OOB),
        { STUB_RECV, NULL }, { STUB_SEND, REPLY_EMPTY },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonObject) caps = NULL;
    g_autoptr(JsonObject) yank = NULL;
    g_autoptr(JsonObject) args = json_object_new();
    g_autoptr(JsonNode) ret = NULL;
    JsonArray *enable;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    ck_assert(qmp_has_oob(q));
    ck_assert(qmp_is_open(q));
    ck_assert_str_eq(qmp_version(q), "7.2.0");

    caps = stub_request(s, 0);
    ck_assert_str_eq(json_object_get_string_member(caps, "execute"), "qmp_capabilities");
    ck_assert(json_object_has_member(caps, "id"));
    enable = json_object_get_array_member(
        json_object_get_object_member(caps, "arguments"), "enable");
    ck_assert_int_eq(json_array_get_length(enable), 1);
    ck_assert_str_eq(json_array_get_string_element(enable, 0), "oob");

    json_object_set_array_member(args, "instances", json_array_new());
    ret = qmp_call_oob(q, "yank", args, 2000, &err);
    ck_assert_msg(ret, "yank: %s", err ? err->message : "");
    ck_assert(JSON_NODE_HOLDS_OBJECT(ret));
    yank = stub_request(s, 1);
    ck_assert_str_eq(json_object_get_string_member(yank, "exec-oob"), "yank");
    ck_assert(!json_object_has_member(yank, "execute"));
    ck_assert_int_eq(json_object_get_int_member(yank, "id"),
                     json_object_get_int_member(caps, "id") + 1);
    ck_assert_int_eq(json_array_get_length(json_object_get_array_member(
        json_object_get_object_member(yank, "arguments"), "instances")), 0);

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_no_oob)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL }, { STUB_SEND, "{\"return\": 42, \"id\": %ID%}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonObject) caps = NULL;
    g_autoptr(JsonNode) ret = NULL;
    JsonNode *oob;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    ck_assert(!qmp_has_oob(q));
    ck_assert_str_eq(qmp_version(q), "6.0.1");
    caps = stub_request(s, 0);
    ck_assert(!json_object_has_member(caps, "arguments"));

    oob = qmp_call_oob(q, "yank", NULL, 2000, &err);
    ck_assert_ptr_null(oob);
    ck_assert(g_error_matches(err, QMP_ERROR, QMP_ERROR_PROTOCOL));
    g_clear_error(&err);

    /* The next request the stub sees is this one: the refused one was not sent. */
    ret = qmp_call(q, "query-x", NULL, 2000, &err);
    ck_assert_msg(ret, "call: %s", err ? err->message : "");
    ck_assert_int_eq(json_node_get_int(ret), 42);
    ck_assert_int_eq(stub_received(s), 2);
    {
        g_autoptr(JsonObject) r = stub_request(s, 1);

        ck_assert_str_eq(json_object_get_string_member(r, "execute"), "query-x");
        /* Replies are matched by our counter id. */
        ck_assert_int_eq(json_node_get_value_type(json_object_get_member(r, "id")),
                         G_TYPE_INT64);
    }

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_timeout_then_late_reply)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL },                        /* never answered in time */
        { STUB_RECV, NULL },
        { STUB_SEND, "{\"return\": \"stale\", \"id\": %PREVID%}" },
        { STUB_SEND, "{\"return\": \"fresh\", \"id\": %ID%}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) ret = NULL;
    gint64 t0, elapsed;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    t0 = now_ms();
    ret = qmp_call(q, "stop", NULL, 300, &err);
    elapsed = now_ms() - t0;
    ck_assert_ptr_null(ret);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT), "%s",
                  err ? err->message : "no error");
    ck_assert_msg(elapsed >= 300 && elapsed < 800, "timeout took %" G_GINT64_FORMAT " ms",
                  elapsed);
    ck_assert(strstr(err->message, "stop") != NULL);
    ck_assert(qmp_is_open(q));
    g_clear_error(&err);

    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    ck_assert_msg(ret, "call: %s", err ? err->message : "");
    ck_assert_str_eq(json_node_get_string(ret), "fresh");

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

/* A command sent without waiting: its reply, when it comes, is not the next call's. */
START_TEST(test_stub_send_without_waiting)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL },
        { STUB_RECV, NULL },
        { STUB_SEND, "{\"return\": \"sent\", \"id\": %PREVID%}" },
        { STUB_SEND, "{\"return\": \"awaited\", \"id\": %ID%}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) ret = NULL;
    gint64 t0;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    t0 = now_ms();
    ck_assert_msg(qmp_send(q, "migrate-continue", NULL, &err), "send: %s",
                  err ? err->message : "");
    ck_assert_msg(now_ms() - t0 < 100, "qmp_send waited");
    ret = qmp_call(q, "query-migrate", NULL, 2000, &err);
    ck_assert_msg(ret, "call: %s", err ? err->message : "");
    ck_assert_str_eq(json_node_get_string(ret), "awaited");

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

/* What qmp_call_async() delivered, and whether it came inside a qmp_call(). */
typedef struct {
    int done;
    int destroyed;
    gboolean in_call;
    int reentered;
    char *result;           /* the "return" value as a string, or NULL */
    int code;               /* QMP_ERROR code, or -1 */
    GString *order;
} Answer;

static void answer_done(Qmp *q, JsonNode *result, const GError *error, gpointer opaque)
{
    Answer *a = opaque;

    (void)q;
    if (a->in_call)
        a->reentered++;
    a->done++;
    g_free(a->result);
    a->result = result && JSON_NODE_HOLDS_VALUE(result) ? g_strdup(json_node_get_string(result))
                                                        : NULL;
    a->code = error && error->domain == QMP_ERROR ? error->code : -1;
    if (a->order)
        g_string_append_printf(a->order, "%s,", a->result ? a->result : "error");
}

static void answer_destroy(gpointer opaque)
{
    ((Answer *)opaque)->destroyed++;
}

/*
 * A command sent without waiting is answered from the main loop, never
 * inside a qmp_call() that reads its reply first; replies come before the
 * events read with them.
 */
START_TEST(test_stub_async_reply)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL },
        { STUB_RECV, NULL },
        { STUB_SEND, "{\"return\": \"slow\", \"id\": %PREVID%}" },
        { STUB_SEND, "{\"event\": \"AFTER\", "
                     "\"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}" },
        { STUB_SEND, "{\"return\": \"awaited\", \"id\": %ID%}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_autoptr(JsonNode) ret = NULL;
    Answer a = { .code = -1, .order = g_string_new(NULL) };
    Rec r;
    gint64 t0;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    rec_attach(&r, q, ctx);
    t0 = now_ms();
    ck_assert_msg(qmp_call_async(q, "blockdev-add", NULL, 2000, answer_done, &a, answer_destroy,
                                 &err), "async: %s", err ? err->message : "");
    ck_assert_msg(now_ms() - t0 < 100, "qmp_call_async waited");
    ck_assert_int_eq(a.done, 0);
    a.in_call = r.in_call = TRUE;
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    a.in_call = r.in_call = FALSE;
    ck_assert_msg(ret, "call: %s", err ? err->message : "");
    ck_assert_str_eq(json_node_get_string(ret), "awaited");
    ck_assert_int_eq(a.done, 0);
    ck_assert(run_until(ctx, &r.nevents, 1, 2000));
    ck_assert_int_eq(a.done, 1);
    ck_assert_int_eq(a.reentered, 0);
    ck_assert_str_eq(a.result, "slow");
    ck_assert_int_eq(a.code, -1);
    ck_assert_int_eq(a.destroyed, 0);
    g_string_append(a.order, r.order->str);
    ck_assert_str_eq(a.order->str, "slow,AFTER,");

    g_clear_pointer(&q, qmp_free);
    ck_assert_int_eq(a.destroyed, 0);
    stub_stop(s);
    rec_clear(&r);
    g_string_free(a.order, TRUE);
    g_free(a.result);
}
END_TEST

/* QEMU's error, a deadline and a lost connection each reach the callback, once. */
START_TEST(test_stub_async_failures)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL },
        { STUB_SEND, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": %ID%}" },
        { STUB_RECV, NULL },
        { STUB_RECV, NULL },
        { STUB_CLOSE, NULL },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    Answer refused = { .code = -1 }, late = { .code = -1 }, lost = { .code = -1 };
    gint64 t0;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    qmp_attach(q, ctx);
    ck_assert(qmp_call_async(q, "drive_add", NULL, 2000, answer_done, &refused, NULL, &err));
    ck_assert(run_until(ctx, &refused.done, 1, 2000));
    ck_assert_int_eq(refused.code, QMP_ERROR_COMMAND);

    t0 = now_ms();
    ck_assert(qmp_call_async(q, "blockdev-add", NULL, 300, answer_done, &late, NULL, &err));
    ck_assert(run_until(ctx, &late.done, 1, 2000));
    ck_assert_int_eq(late.code, QMP_ERROR_TIMEOUT);
    ck_assert_msg(now_ms() - t0 >= 300 && now_ms() - t0 < 800, "timed out after %" G_GINT64_FORMAT
                  " ms", now_ms() - t0);

    ck_assert(qmp_call_async(q, "blockdev-add", NULL, 5000, answer_done, &lost, NULL, &err));
    ck_assert(run_until(ctx, &lost.done, 1, 3000));
    ck_assert_int_eq(lost.code, QMP_ERROR_IO);
    run_for(ctx, 100);
    ck_assert_int_eq(refused.done + late.done + lost.done, 3);

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
    g_free(refused.result);
    g_free(late.result);
    g_free(lost.result);
}
END_TEST

/* Freed before the reply: the callback never runs, its data is let go. */
START_TEST(test_stub_async_freed_first)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    Qmp *q = qmp_connect(s->path, 2000, &err);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    Answer a = { .code = -1 };

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    qmp_attach(q, ctx);
    ck_assert(qmp_call_async(q, "blockdev-add", NULL, 200, answer_done, &a, answer_destroy, &err));
    qmp_free(q);
    run_for(ctx, 400);
    ck_assert_int_eq(a.done, 0);
    ck_assert_int_eq(a.destroyed, 1);
    stub_stop(s);
}
END_TEST

/*
 * QEMU stops reading its socket, out-of-band commands included, once 8
 * in-band ones wait: past QMP_MAX_IN_FLIGHT unanswered, no more are sent,
 * and a yank still gets through.
 */
START_TEST(test_stub_in_flight_bound)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_OOB),
        { STUB_RECV, NULL }, { STUB_RECV, NULL }, { STUB_RECV, NULL },
        { STUB_RECV, NULL }, { STUB_RECV, NULL }, { STUB_RECV, NULL },
        { STUB_RECV, NULL },
        { STUB_SEND, "{\"return\": \"yanked\", \"id\": %ID%}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonObject) last = NULL;
    gint64 t0;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    for (int i = 0; i < 6; i++) {
        g_autoptr(JsonNode) none = qmp_call(q, "blockdev-del", NULL, 30, &err);

        ck_assert_ptr_null(none);
        ck_assert(g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT));
        g_clear_error(&err);
    }
    t0 = now_ms();
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    ck_assert_ptr_null(ret);
    ck_assert_msg(now_ms() - t0 < 20, "waited %" G_GINT64_FORMAT " ms", now_ms() - t0);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT) &&
                  strstr(err->message, "not sent"), "%s", err ? err->message : "no error");
    g_clear_error(&err);
    ret = qmp_call_oob(q, "yank", NULL, 2000, &err);
    ck_assert_msg(ret, "yank: %s", err ? err->message : "");
    ck_assert_str_eq(json_node_get_string(ret), "yanked");
    /* hello + 6 + the yank: query-status never left. */
    ck_assert_uint_eq(stub_received(s), 8);
    last = stub_request(s, 7);
    ck_assert_str_eq(json_object_get_string_member(last, "exec-oob"), "yank");

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_greeting_timeout)
{
    static const StubStep script[] = { { STUB_END, NULL } };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = NULL;
    gint64 t0 = now_ms(), elapsed;

    q = qmp_connect(s->path, 300, &err);
    elapsed = now_ms() - t0;
    ck_assert_ptr_null(q);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT), "%s",
                  err ? err->message : "no error");
    ck_assert_msg(elapsed >= 300 && elapsed < 800, "took %" G_GINT64_FORMAT " ms", elapsed);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_capabilities_timeout)
{
    static const StubStep script[] = {
        { STUB_SEND, GREETING_OOB }, { STUB_RECV, NULL }, { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = NULL;
    gint64 t0 = now_ms(), elapsed;

    q = qmp_connect(s->path, 300, &err);
    elapsed = now_ms() - t0;
    ck_assert_ptr_null(q);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT), "%s",
                  err ? err->message : "no error");
    ck_assert_msg(elapsed >= 300 && elapsed < 800, "took %" G_GINT64_FORMAT " ms", elapsed);
    stub_stop(s);
}
END_TEST

START_TEST(test_connect_missing_socket)
{
    g_autofree char *dir = g_dir_make_tmp("test-qmp-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "absent.sock", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = NULL;
    gint64 t0 = now_ms(), elapsed;

    q = qmp_connect(path, 200, &err);
    elapsed = now_ms() - t0;
    ck_assert_ptr_null(q);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_IO), "%s",
                  err ? err->message : "no error");
    ck_assert_msg(elapsed >= 200 && elapsed < 700, "took %" G_GINT64_FORMAT " ms", elapsed);
    g_rmdir(dir);
}
END_TEST

START_TEST(test_stub_bad_greeting)
{
    static const StubStep script[] = {
        { STUB_SEND, "\x01\x02\xff garbage {" }, { STUB_END, NULL },
    };
    static const StubStep script2[] = {
        { STUB_SEND, "{\"return\": {}}" }, { STUB_END, NULL },
    };
    const StubStep *scripts[] = { script, script2 };

    for (guint i = 0; i < G_N_ELEMENTS(scripts); i++) {
        Stub *s = stub_start(scripts[i]);
        g_autoptr(GError) err = NULL;
        g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);

        ck_assert_ptr_null(q);
        ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_PROTOCOL), "%s",
                      err ? err->message : "no error");
        stub_stop(s);
    }
}
END_TEST

/* Each is the whole answer to a command; none may crash or be taken as a reply. */
static const char *const garbage[] = {
    "this is not json",
    "}{",
    "\x01\x02\xff\xfe\x7f binary",
    "{\"return\": ",
    "[1, 2, 3]",
    "\"just a string\"",
    "null",
    "{\"id\": %ID%}",
    "{\"error\": \"flat\", \"id\": %ID%}",
    "{\"error\": {\"class\": 1, \"desc\": \"x\"}, \"id\": %ID%}",
    "{\"error\": {\"class\": \"GenericError\"}, \"id\": %ID%}",
};

START_TEST(test_stub_garbage)
{
    const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL }, { STUB_SEND, garbage[_i] },
        { STUB_RECV, NULL }, { STUB_SEND, "{\"return\": \"ok\", \"id\": %ID%}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) ret = NULL;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    ck_assert_msg(!ret, "garbage %d taken as a reply", _i);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_PROTOCOL),
                  "garbage %d: %s", _i, err ? err->message : "no error");
    g_clear_error(&err);

    /* The stream is line-framed: the next command still works. */
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    ck_assert_msg(ret, "after garbage %d: %s", _i, err ? err->message : "");
    ck_assert_str_eq(json_node_get_string(ret), "ok");

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

/*
 * A QEMU gone wrong: a line nested 100,000 deep (json-glib parses
 * recursively: it would take kvm-ftd's stack) and a timestamp whose
 * microseconds would overflow the sum.  Refused, and the stream goes on.
 */
START_TEST(test_stub_hostile_lines)
{
    g_autofree char *bomb = g_strnfill(100000, '[');
    StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL }, { STUB_SEND, bomb },
        { STUB_RECV, NULL },
        { STUB_SEND, "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1700000000, "
                     "\"microseconds\": 9223372036854775807}}" },
        { STUB_SEND, "{\"return\": \"ok\", \"id\": %ID%}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) ret = NULL;
    Rec r;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    rec_attach(&r, q, ctx);
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    ck_assert_msg(!ret, "a 100,000-deep line taken as a reply");
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_PROTOCOL) &&
                  strstr(err->message, "nested"), "%s", err ? err->message : "no error");
    g_clear_error(&err);
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    ck_assert_msg(ret, "after the bomb: %s", err ? err->message : "");
    ck_assert(run_until(ctx, &r.nevents, 1, 2000));
    ck_assert_int_eq(g_array_index(r.stamps, gint64, 0), -1);

    g_clear_pointer(&q, qmp_free);
    rec_clear(&r);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_close_mid_reply)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL },
        { STUB_SEND_RAW, "{\"return\": {\"status\": \"runn" },
        { STUB_CLOSE, NULL },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) ret = NULL;
    Rec r;
    gint64 t0;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    rec_attach(&r, q, ctx);

    r.in_call = TRUE;
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    r.in_call = FALSE;
    ck_assert_ptr_null(ret);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_IO), "%s",
                  err ? err->message : "no error");
    ck_assert(!qmp_is_open(q));
    ck_assert_int_eq(r.closed, 0);      /* not from inside qmp_call */
    g_clear_error(&err);

    ck_assert(run_until(ctx, &r.closed, 1, 2000));
    run_for(ctx, 100);
    ck_assert_int_eq(r.closed, 1);
    ck_assert_int_eq(r.closed_code, QMP_ERROR_IO);
    ck_assert_int_eq(r.reentered, 0);

    /* A lost connection fails at once, not after the timeout. */
    t0 = now_ms();
    ret = qmp_call(q, "query-status", NULL, 2000, &err);
    ck_assert_ptr_null(ret);
    ck_assert(g_error_matches(err, QMP_ERROR, QMP_ERROR_IO));
    ck_assert_int_lt(now_ms() - t0, 100);
    run_for(ctx, 50);
    ck_assert_int_eq(r.closed, 1);

    g_clear_pointer(&q, qmp_free);
    rec_clear(&r);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_events_interleaved)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_OOB),
        { STUB_RECV, NULL },
        { STUB_SEND, "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456},"
                     " \"event\": \"STOP\"}" },
        { STUB_SEND, "{\"event\": \"BLOCK_IO_ERROR\", \"data\": {\"device\": \"d\\\"1\"},"
                     " \"timestamp\": {\"seconds\": 1700000001, \"microseconds\": 5}}" },
        { STUB_SEND, "{\"return\": \"late\", \"id\": 9999}" },
        { STUB_SEND, "{\"event\": \"NO_STAMP\"}" },
        { STUB_SEND, "{\"return\": {\"status\": \"paused\"}, \"id\": %ID%}" },
        { STUB_SEND, "{\"timestamp\": {\"seconds\": 1700000002, \"microseconds\": 0},"
                     " \"event\": \"RESUME\"}" },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) ret = NULL;
    Rec r;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    rec_attach(&r, q, ctx);

    r.in_call = TRUE;
    ret = qmp_call(q, "stop", NULL, 2000, &err);
    r.in_call = FALSE;
    ck_assert_msg(ret, "call: %s", err ? err->message : "");
    ck_assert_str_eq(json_object_get_string_member(json_node_get_object(ret), "status"),
                     "paused");
    ck_assert_int_eq(r.nevents, 0);

    ck_assert(run_until(ctx, &r.nevents, 4, 2000));
    run_for(ctx, 50);
    ck_assert_int_eq(r.reentered, 0);
    ck_assert_str_eq(r.order->str, "STOP,BLOCK_IO_ERROR,NO_STAMP,RESUME,");
    ck_assert_int_eq(g_array_index(r.stamps, gint64, 0), 1700000000123456LL);
    ck_assert_int_eq(g_array_index(r.stamps, gint64, 1), 1700000001000005LL);
    ck_assert_int_eq(g_array_index(r.stamps, gint64, 2), -1);
    ck_assert_int_eq(g_array_index(r.stamps, gint64, 3), 1700000002000000LL);
    ck_assert_ptr_null(g_ptr_array_index(r.data, 0));
    ck_assert_str_eq(g_ptr_array_index(r.data, 1), "{\"device\":\"d\\\"1\"}");
    ck_assert_int_eq(r.closed, 0);

    g_clear_pointer(&q, qmp_free);
    rec_clear(&r);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_async_events_then_eof)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_SEND, "{\"event\": \"A\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}" },
        { STUB_SEND, "{\"event\": \"B\", \"timestamp\": {\"seconds\": 3, \"microseconds\": 4}}" },
        { STUB_CLOSE, NULL },
        { STUB_END, NULL },
    };
    Stub *s = stub_start(script);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_autoptr(GError) err = NULL;
    Qmp *q = qmp_connect(s->path, 2000, &err);
    Rec r;

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    rec_init(&r);
    r.free_on_close = TRUE;     /* the engine drops the client from the handler */
    r.owner = &q;
    qmp_set_handlers(q, rec_event, rec_closed, &r);
    qmp_attach(q, ctx);

    ck_assert(run_until(ctx, &r.closed, 1, 2000));
    run_for(ctx, 100);
    ck_assert_str_eq(r.order->str, "A,B,closed,");
    ck_assert_int_eq(g_array_index(r.stamps, gint64, 1), 3000004);
    ck_assert_int_eq(r.closed, 1);
    ck_assert_int_eq(r.closed_code, QMP_ERROR_IO);
    ck_assert_ptr_null(q);

    rec_clear(&r);
    stub_stop(s);
}
END_TEST

START_TEST(test_stub_large_reply)
{
    g_autoptr(GString) big = g_string_new("{\"return\": \"");
    StubStep script[] = {
        STUB_HELLO(GREETING_NO_OOB),
        { STUB_RECV, NULL }, { STUB_SEND, NULL },
        { STUB_END, NULL },
    };
    const gsize n = 3 * 1024 * 1024;
    Stub *s;
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = NULL;
    g_autoptr(JsonNode) ret = NULL;

    for (gsize i = 0; i < n; i++)
        g_string_append_c(big, 'a' + i % 26);
    g_string_append(big, "\", \"id\": %ID%}");
    script[4].text = big->str;
    s = stub_start(script);
    q = qmp_connect(s->path, 2000, &err);
    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    ret = qmp_call(q, "query-qmp-schema", NULL, 5000, &err);
    ck_assert_msg(ret, "call: %s", err ? err->message : "");
    ck_assert_uint_eq(strlen(json_node_get_string(ret)), n);
    ck_assert_int_eq(json_node_get_string(ret)[n - 1], 'a' + (n - 1) % 26);

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

/* Values with quotes, backslashes and control characters reach QEMU intact. */
START_TEST(test_stub_escaping)
{
    static const StubStep script[] = {
        STUB_HELLO(GREETING_OOB),
        { STUB_RECV, NULL }, { STUB_SEND, REPLY_EMPTY },
        { STUB_RECV, NULL }, { STUB_SEND, REPLY_EMPTY },
        { STUB_END, NULL },
    };
    const char *nasty = "a\"b\\c\n'd'}, \"x\": {\xc3\xa9\x01\t";
    Stub *s = stub_start(script);
    g_autoptr(GError) err = NULL;
    g_autoptr(Qmp) q = qmp_connect(s->path, 2000, &err);
    g_autoptr(JsonNode) r1 = NULL;
    g_autoptr(JsonNode) r2 = NULL;
    g_autoptr(JsonObject) args = json_object_new();
    g_autoptr(JsonObject) yank = json_object_new();
    JsonObject *inst = json_object_new();

    ck_assert_msg(q, "connect: %s", err ? err->message : "");
    json_object_set_string_member(inst, "type", "block-node");
    json_object_set_string_member(inst, "node-name", nasty);
    json_object_set_array_member(yank, "instances", json_array_new());
    json_array_add_object_element(json_object_get_array_member(yank, "instances"), inst);
    r1 = qmp_call_oob(q, "yank", yank, 2000, &err);
    ck_assert_msg(r1, "call_oob: %s", err ? err->message : "");
    json_object_set_string_member(args, "path", nasty);
    r2 = qmp_call(q, "qom-list", args, 2000, &err);
    ck_assert_msg(r2, "call: %s", err ? err->message : "");

    {
        g_autoptr(JsonObject) a = stub_request(s, 1);
        g_autoptr(JsonObject) b = stub_request(s, 2);
        JsonObject *inst = json_array_get_object_element(json_object_get_array_member(
            json_object_get_object_member(a, "arguments"), "instances"), 0);

        ck_assert_str_eq(json_object_get_string_member(a, "exec-oob"), "yank");
        ck_assert_str_eq(json_object_get_string_member(inst, "type"), "block-node");
        ck_assert_str_eq(json_object_get_string_member(inst, "node-name"), nasty);
        ck_assert_str_eq(json_object_get_string_member(b, "execute"), "qom-list");
        ck_assert_str_eq(json_object_get_string_member(
            json_object_get_object_member(b, "arguments"), "path"), nasty);
    }

    g_clear_pointer(&q, qmp_free);
    stub_stop(s);
}
END_TEST

/* ---- helpers, no server ---- */

START_TEST(test_error_is_class)
{
    g_autoptr(GError) e1 = g_error_new(QMP_ERROR, QMP_ERROR_COMMAND,
                                       "blockdev-del: DeviceNotFound: Failed to find node");
    g_autoptr(GError) e2 = g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT,
                                       "blockdev-del: DeviceNotFound: x");

    ck_assert(qmp_error_is_class(e1, "DeviceNotFound"));
    ck_assert(!qmp_error_is_class(e1, "Device"));
    ck_assert(!qmp_error_is_class(e1, "GenericError"));
    ck_assert(!qmp_error_is_class(e2, "DeviceNotFound"));
    ck_assert(!qmp_error_is_class(NULL, "DeviceNotFound"));
    /* A caller's prefix does not hide the class. */
    g_prefix_error(&e1, "dropping the copy: ");
    ck_assert(qmp_error_is_class(e1, "DeviceNotFound"));
}
END_TEST

/* ---- real QEMU, started once per test case in the runner process ---- */

static char *qemu_dir;
static char *qemu_sock;
static GPid qemu_pid;
static char *qemu_error;

static void qemu_child_setup(gpointer data)
{
    (void)data;
    /* A runner killed outright must not leave QEMU behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* Unchecked fixture: runs in the runner, so teardown runs even when a test fails. */
static void qemu_start(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *qmparg = NULL;

    qemu_dir = g_dir_make_tmp("test-qmp-qemu-XXXXXX", &err);
    if (!qemu_dir) {
        qemu_error = g_strdup(err->message);
        return;
    }
    qemu_sock = g_build_filename(qemu_dir, "qmp.sock", NULL);
    qmparg = g_strdup_printf("unix:%s,server=on,wait=off", qemu_sock);
    {
        const char *argv[] = {
            "qemu-system-x86_64", "-machine", "none", "-display", "none",
            "-nodefaults", "-qmp", qmparg, NULL,
        };

        if (!g_spawn_async(NULL, (char **)argv, NULL,
                           G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                           qemu_child_setup, NULL, &qemu_pid, &err)) {
            qemu_error = g_strdup(err->message);
            qemu_pid = 0;
        }
    }
}

static void qemu_stop(void)
{
    if (qemu_pid > 0) {
        kill(qemu_pid, SIGKILL);
        waitpid(qemu_pid, NULL, 0);
        g_spawn_close_pid(qemu_pid);
        qemu_pid = 0;
    }
    if (qemu_sock)
        g_unlink(qemu_sock);
    if (qemu_dir)
        g_rmdir(qemu_dir);
    g_clear_pointer(&qemu_sock, g_free);
    g_clear_pointer(&qemu_dir, g_free);
    g_clear_pointer(&qemu_error, g_free);
}

static Qmp *qemu_connect(void)
{
    g_autoptr(GError) err = NULL;
    Qmp *q;

    ck_assert_msg(qemu_pid > 0, "QEMU did not start: %s", qemu_error ? qemu_error : "?");
    q = qmp_connect(qemu_sock, QEMU_TIMEOUT_MS, &err);
    ck_assert_msg(q, "connect to QEMU: %s", err ? err->message : "");
    return q;
}

static char *query_status(Qmp *q)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = qmp_call(q, "query-status", NULL, QEMU_TIMEOUT_MS, &err);
    JsonObject *o;

    ck_assert_msg(ret, "query-status: %s", err ? err->message : "");
    ck_assert(JSON_NODE_HOLDS_OBJECT(ret));
    o = json_node_get_object(ret);
    ck_assert(json_object_has_member(o, "running"));
    return g_strdup(json_object_get_string_member(o, "status"));
}

START_TEST(test_qemu_handshake)
{
    g_autoptr(Qmp) q = qemu_connect();
    g_auto(GStrv) parts = g_strsplit(qmp_version(q), ".", -1);

    ck_assert(qmp_is_open(q));
    ck_assert(qmp_has_oob(q));
    ck_assert_uint_eq(g_strv_length(parts), 3);
    ck_assert_int_ge(atoi(parts[0]), 7);
}
END_TEST

START_TEST(test_qemu_query_status)
{
    g_autoptr(Qmp) q = qemu_connect();
    g_autofree char *status = query_status(q);

    ck_assert_str_eq(status, "running");
}
END_TEST

START_TEST(test_qemu_command_error)
{
    g_autoptr(Qmp) q = qemu_connect();
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autoptr(JsonObject) path = json_object_new();
    g_autofree char *status = NULL;

    ret = qmp_call(q, "no-such-command", NULL, QEMU_TIMEOUT_MS, &err);
    ck_assert_ptr_null(ret);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_COMMAND), "%s",
                  err ? err->message : "no error");
    ck_assert_msg(g_str_has_prefix(err->message, "no-such-command: CommandNotFound: "),
                  "%s", err->message);
    ck_assert(qmp_error_is_class(err, "CommandNotFound"));
    g_clear_error(&err);

    /* QEMU echoes the path: proves the quote travelled escaped. */
    json_object_set_string_member(path, "path", "/no\"such");
    ret = qmp_call(q, "qom-list", path, QEMU_TIMEOUT_MS, &err);
    ck_assert_ptr_null(ret);
    ck_assert_msg(qmp_error_is_class(err, "DeviceNotFound"), "%s",
                  err ? err->message : "no error");
    ck_assert_msg(strstr(err->message, "'/no\"such'"), "%s", err->message);
    g_clear_error(&err);

    status = query_status(q);
    ck_assert_str_eq(status, "running");
}
END_TEST

START_TEST(test_qemu_events)
{
    g_autoptr(Qmp) q = qemu_connect();
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) r1 = NULL;
    g_autoptr(JsonNode) r2 = NULL;
    g_autofree char *paused = NULL;
    gint64 before = g_get_real_time(), stop_ts, resume_ts;
    Rec r;

    rec_attach(&r, q, ctx);

    r.in_call = TRUE;
    r1 = qmp_call(q, "stop", NULL, QEMU_TIMEOUT_MS, &err);
    ck_assert_msg(r1, "stop: %s", err ? err->message : "");
    paused = query_status(q);
    r2 = qmp_call(q, "cont", NULL, QEMU_TIMEOUT_MS, &err);
    ck_assert_msg(r2, "cont: %s", err ? err->message : "");
    r.in_call = FALSE;
    ck_assert_str_eq(paused, "paused");

    ck_assert(run_until(ctx, &r.nevents, 2, QEMU_TIMEOUT_MS));
    run_for(ctx, 50);
    ck_assert_int_eq(r.reentered, 0);
    ck_assert_str_eq(r.order->str, "STOP,RESUME,");
    stop_ts = g_array_index(r.stamps, gint64, 0);
    resume_ts = g_array_index(r.stamps, gint64, 1);
    /* QEMU stamps with the wall clock: within this test's run, in order. */
    ck_assert_int_ge(stop_ts, before - G_USEC_PER_SEC);
    ck_assert_int_le(resume_ts, g_get_real_time() + G_USEC_PER_SEC);
    ck_assert_int_ge(resume_ts, stop_ts);
    ck_assert_int_eq(r.closed, 0);

    g_clear_pointer(&q, qmp_free);
    rec_clear(&r);
}
END_TEST

START_TEST(test_qemu_oob)
{
    g_autoptr(Qmp) q = qemu_connect();
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) args = json_object_new();
    g_autoptr(JsonNode) ret = NULL;
    JsonNode *bad;

    json_object_set_array_member(args, "instances", json_array_new());
    ret = qmp_call_oob(q, "yank", args, QEMU_TIMEOUT_MS, &err);
    ck_assert_msg(ret, "yank: %s", err ? err->message : "");
    ck_assert(JSON_NODE_HOLDS_OBJECT(ret));
    ck_assert_int_eq(json_object_get_size(json_node_get_object(ret)), 0);

    /* An answer from the out-of-band path, not the in-band dispatcher. */
    bad = qmp_call_oob(q, "query-status", NULL, QEMU_TIMEOUT_MS, &err);
    ck_assert_ptr_null(bad);
    ck_assert_msg(qmp_error_is_class(err, "GenericError") &&
                  strstr(err->message, "OOB"), "%s", err ? err->message : "no error");
    g_clear_error(&err);

    bad = qmp_call_oob(q, "migrate-pause", NULL, QEMU_TIMEOUT_MS, &err);
    ck_assert_ptr_null(bad);
    ck_assert_msg(g_error_matches(err, QMP_ERROR, QMP_ERROR_COMMAND) &&
                  g_str_has_prefix(err->message, "migrate-pause: GenericError: "),
                  "%s", err ? err->message : "no error");
}
END_TEST

/* SIGSTOP makes a real stalled QEMU: the call must give up on time. */
START_TEST(test_qemu_stalled)
{
    g_autoptr(Qmp) q = qemu_connect();
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) ret = NULL;
    g_autofree char *status = NULL;
    gint64 t0, elapsed;
    gboolean timed_out;

    kill(qemu_pid, SIGSTOP);
    t0 = now_ms();
    ret = qmp_call(q, "query-name", NULL, 400, &err);
    elapsed = now_ms() - t0;
    timed_out = g_error_matches(err, QMP_ERROR, QMP_ERROR_TIMEOUT);
    kill(qemu_pid, SIGCONT);

    ck_assert_ptr_null(ret);
    ck_assert_msg(timed_out, "%s", err ? err->message : "no error");
    ck_assert_msg(elapsed >= 400 && elapsed < 900, "took %" G_GINT64_FORMAT " ms", elapsed);
    ck_assert(qmp_is_open(q));
    /* The late answer to query-name ({}) is not taken for this one's. */
    status = query_status(q);
    ck_assert_str_eq(status, "running");
}
END_TEST

static Suite *qmp_suite(void)
{
    Suite *s = suite_create("qmp");
    TCase *tc;

    tc = tcase_create("helpers");
    tcase_add_test(tc, test_error_is_class);
    suite_add_tcase(s, tc);

    tc = tcase_create("stub");
    tcase_add_test(tc, test_stub_handshake_oob);
    tcase_add_test(tc, test_stub_no_oob);
    tcase_add_test(tc, test_stub_timeout_then_late_reply);
    tcase_add_test(tc, test_stub_send_without_waiting);
    tcase_add_test(tc, test_stub_async_reply);
    tcase_add_test(tc, test_stub_async_failures);
    tcase_add_test(tc, test_stub_async_freed_first);
    tcase_add_test(tc, test_stub_in_flight_bound);
    tcase_add_test(tc, test_stub_greeting_timeout);
    tcase_add_test(tc, test_stub_capabilities_timeout);
    tcase_add_test(tc, test_connect_missing_socket);
    tcase_add_test(tc, test_stub_bad_greeting);
    tcase_add_loop_test(tc, test_stub_garbage, 0, G_N_ELEMENTS(garbage));
    tcase_add_test(tc, test_stub_close_mid_reply);
    tcase_add_test(tc, test_stub_events_interleaved);
    tcase_add_test(tc, test_stub_hostile_lines);
    tcase_add_test(tc, test_stub_async_events_then_eof);
    tcase_add_test(tc, test_stub_large_reply);
    tcase_add_test(tc, test_stub_escaping);
    suite_add_tcase(s, tc);

    tc = tcase_create("qemu");
    tcase_add_unchecked_fixture(tc, qemu_start, qemu_stop);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_qemu_handshake);
    tcase_add_test(tc, test_qemu_query_status);
    tcase_add_test(tc, test_qemu_command_error);
    tcase_add_test(tc, test_qemu_events);
    tcase_add_test(tc, test_qemu_oob);
    tcase_add_test(tc, test_qemu_stalled);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(qmp_suite());
}
