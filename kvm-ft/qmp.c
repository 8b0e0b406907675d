/* qmp.c - QMP client: commands with deadlines, events from the main loop, out-of-band yank */
#include "qmp.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "jsontext.h"
#include "log.h"
#include "loopwait.h"
#include "timeouts.h"

/*
 * QEMU writes each QMP message on one line, so the stream is framed by
 * newlines; a "line" longer than this is not QEMU and cannot be resynced.
 * query-qmp-schema, the largest reply, is well under 1 MiB.
 */
#define QMP_MAX_LINE (32 * 1024 * 1024)
#define QMP_READ_CHUNK 65536
/*
 * Events wait here until a handler is attached; a client used only for
 * commands must not grow without bound.
 */
#define QMP_MAX_QUEUED_EVENTS 4096
/*
 * QEMU queues at most 8 in-band commands and stops reading its socket
 * while the queue is full -- out-of-band ones too, so a yank would wait
 * behind commands a stuck main loop never runs.  Beyond this many
 * unanswered, an in-band command is not sent; it fails as unanswered.
 */
#define QMP_MAX_IN_FLIGHT 6

typedef struct {
    char *name;
    JsonObject *data;
    gint64 timestamp_us;
} QmpEvent;

/* A command sent with qmp_call_async(), then its outcome until delivered. */
typedef struct {
    gint64 id;
    char *command;
    guint timeout_ms;
    gint64 deadline;        /* monotonic */
    QmpReplyFunc done;
    gpointer opaque;
    GDestroyNotify destroy;
    JsonNode *result;
    GError *error;
} QmpAwaited;

typedef struct {
    GSource base;
    Qmp *q;
    gpointer fd_tag;
} QmpSource;

struct Qmp {
    int refs;
    gboolean freed;
    char *path;
    char *owner;            /* the guest, for loopwait.h */
    int fd;                 /* -1 once the connection is lost */
    GString *in;            /* read but not yet a whole line */
    GByteArray *out;        /* not yet written: left over after a timeout */
    gint64 last_id;
    gboolean oob;
    char *version;
    pid_t peer_pid;         /* QEMU's, from the socket's credentials; 0 if unknown */

    QmpEventFunc event_cb;
    QmpClosedFunc closed_cb;
    gpointer opaque;
    gboolean events_unwanted;   /* handlers were set without an event handler */
    GQueue events;          /* of QmpEvent *, not yet delivered */
    GHashTable *awaited;    /* id -> QmpAwaited *: sent asynchronously, unanswered */
    GQueue answered;        /* of QmpAwaited *: outcome known, not yet delivered */
    GHashTable *in_flight;  /* ids of in-band commands QEMU has not answered (timed out too) */
    GError *close_reason;
    gboolean close_reported;
    QmpSource *source;
};

G_DEFINE_QUARK(qmp-error-quark, qmp_error)

static void qmp_event_free(QmpEvent *ev)
{
    g_free(ev->name);
    if (ev->data)
        json_object_unref(ev->data);
    g_free(ev);
}

static void qmp_awaited_free(QmpAwaited *a)
{
    g_free(a->command);
    if (a->result)
        json_node_unref(a->result);
    g_clear_error(&a->error);
    g_free(a);
}

/* The caller's data goes without its callback: the connection is freed. */
static void qmp_awaited_drop(QmpAwaited *a)
{
    if (a->destroy)
        a->destroy(a->opaque);
    qmp_awaited_free(a);
}

static gint64 deadline_after(guint timeout_ms)
{
    return g_get_monotonic_time() + (gint64)timeout_ms * 1000;
}

static int remaining_ms(gint64 deadline)
{
    gint64 left = deadline - g_get_monotonic_time();

    if (left <= 0)
        return 0;
    /* Round up: waking a little early would only spin. */
    return (int)MIN((left + 999) / 1000, INT_MAX);
}

static Qmp *qmp_ref(Qmp *q)
{
    q->refs++;
    return q;
}

static void qmp_unref(Qmp *q)
{
    if (--q->refs > 0)
        return;
    g_queue_clear_full(&q->events, (GDestroyNotify)qmp_event_free);
    g_hash_table_unref(q->awaited);
    g_hash_table_unref(q->in_flight);
    g_clear_error(&q->close_reason);
    g_string_free(q->in, TRUE);
    g_byte_array_unref(q->out);
    g_free(q->version);
    g_free(q->path);
    g_free(q->owner);
    g_free(q);
}

static void qmp_drop_fd_watch(Qmp *q)
{
    if (q->source && q->source->fd_tag) {
        g_source_remove_unix_fd(&q->source->base, q->source->fd_tag);
        q->source->fd_tag = NULL;
    }
}

static gint awaited_by_id(gconstpointer x, gconstpointer y)
{
    const QmpAwaited *a = x, *b = y;

    return (a->id > b->id) - (a->id < b->id);
}

static void qmp_answer(Qmp *q, QmpAwaited *a)
{
    g_hash_table_steal(q->awaited, &a->id);
    g_queue_push_tail(&q->answered, a);
}

/* Every command still awaited fails with the loss of the connection. */
static void qmp_fail_awaited(Qmp *q)
{
    g_autoptr(GList) all = g_hash_table_get_values(q->awaited);

    all = g_list_sort(all, awaited_by_id);
    for (GList *l = all; l; l = l->next) {
        QmpAwaited *a = l->data;

        a->error = g_error_new(QMP_ERROR, q->close_reason->code, "%s: %s", a->command,
                               q->close_reason->message);
        qmp_answer(q, a);
    }
}

/* Takes reason.  Only the first loss counts: it is what the engine reports. */
static void qmp_lose(Qmp *q, GError *reason)
{
    if (q->fd < 0) {
        g_error_free(reason);
        return;
    }
    log_info(NULL, NULL, "QMP connection %s lost: %s", q->path,
             reason->message);
    qmp_drop_fd_watch(q);
    close(q->fd);
    q->fd = -1;
    g_string_truncate(q->in, 0);
    g_byte_array_set_size(q->out, 0);
    q->close_reason = reason;
    g_hash_table_remove_all(q->in_flight);
    qmp_fail_awaited(q);
}

static void qmp_set_lost_error(Qmp *q, const char *what, GError **err)
{
    g_set_error(err, QMP_ERROR, q->close_reason->code, "%s: %s", what,
                q->close_reason->message);
}

/* One nonblocking read; FALSE once the connection is lost. */
static gboolean qmp_read_some(Qmp *q)
{
    char buf[QMP_READ_CHUNK];
    ssize_t n = read(q->fd, buf, sizeof(buf));

    if (n > 0) {
        g_string_append_len(q->in, buf, n);
        return TRUE;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return TRUE;
    if (n == 0)
        qmp_lose(q, g_error_new(QMP_ERROR, QMP_ERROR_IO, "%s",
                                q->in->len ?
                                "QEMU closed the connection in the middle of a message" :
                                "QEMU closed the connection"));
    else
        qmp_lose(q, g_error_new(QMP_ERROR, QMP_ERROR_IO, "read: %s",
                                g_strerror(errno)));
    return FALSE;
}

/* One nonblocking write of what is queued; FALSE once the connection is lost. */
static gboolean qmp_write_some(Qmp *q)
{
    ssize_t n = send(q->fd, q->out->data, q->out->len,
                     MSG_NOSIGNAL | MSG_DONTWAIT);

    if (n >= 0) {
        g_byte_array_remove_range(q->out, 0, n);
        return TRUE;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return TRUE;
    qmp_lose(q, g_error_new(QMP_ERROR, QMP_ERROR_IO, "write: %s",
                            g_strerror(errno)));
    return FALSE;
}

/*
 * Next whole message already read, or NULL: without err if there is none
 * yet, with err (QMP_ERROR_PROTOCOL) for a line that is not a JSON object,
 * which is consumed so the stream stays usable.
 */
static JsonNode *qmp_take_line(Qmp *q, GError **err)
{
    for (;;) {
        char *nl = memchr(q->in->str, '\n', q->in->len);
        g_autoptr(JsonParser) parser = NULL;
        g_autoptr(GError) perr = NULL;
        g_autofree char *line = NULL;
        gsize len;

        if (!nl) {
            if (q->in->len > QMP_MAX_LINE)
                qmp_lose(q, g_error_new(QMP_ERROR, QMP_ERROR_PROTOCOL,
                                        "message longer than %d bytes",
                                        QMP_MAX_LINE));
            return NULL;
        }
        len = nl - q->in->str;
        line = g_strndup(q->in->str, len);
        g_string_erase(q->in, 0, len + 1);
        while (len > 0 && g_ascii_isspace(line[len - 1]))
            len--;
        if (len == 0)
            continue;

        parser = json_parser_new();
        /* A QEMU gone wrong must not take kvm-ftd's stack with it. */
        if (!json_text_sane(line, len, JSON_TEXT_MAX_DEPTH)) {
            g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL, "not a QMP message: %" G_GSIZE_FORMAT
                        " bytes that are not strict JSON, or nested over %d deep", len,
                        JSON_TEXT_MAX_DEPTH);
            return NULL;
        }
        if (!json_parser_load_from_data(parser, line, len, &perr) ||
            !json_parser_get_root(parser) ||
            !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
            g_autofree char *shown = g_strndup(line, MIN(len, 80));
            g_autofree char *escaped = g_strescape(shown, NULL);

            g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL,
                        "not a QMP message: \"%s%s\"%s%s", escaped,
                        len > 80 ? "..." : "", perr ? ": " : "",
                        perr ? perr->message : "");
            return NULL;
        }
        return json_node_ref(json_parser_get_root(parser));
    }
}

/*
 * Next message from the socket, flushing queued output meanwhile, or NULL
 * with err once the deadline passes or the connection is lost.
 */
static JsonNode *qmp_next_message(Qmp *q, gint64 deadline, const char *what,
                                  guint timeout_ms, GError **err)
{
    for (;;) {
        GError *lerr = NULL;
        JsonNode *msg = q->fd >= 0 ? qmp_take_line(q, &lerr) : NULL;
        struct pollfd pfd;
        int timeout, n;

        if (msg)
            return msg;
        if (lerr) {
            g_prefix_error(&lerr, "%s: ", what);
            g_propagate_error(err, lerr);
            return NULL;
        }
        if (q->fd < 0) {
            qmp_set_lost_error(q, what, err);
            return NULL;
        }
        if (q->out->len && !qmp_write_some(q))
            continue;
        timeout = remaining_ms(deadline);
        if (timeout == 0) {
            g_set_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT,
                        "%s: no answer from QEMU within %u ms%s", what,
                        timeout_ms,
                        q->out->len ? " (it does not read its socket)" : "");
            return NULL;
        }
        pfd.fd = q->fd;
        pfd.events = POLLIN | (q->out->len ? POLLOUT : 0);
        pfd.revents = 0;
        n = poll(&pfd, 1, timeout);
        if (n < 0 && errno != EINTR) {
            qmp_lose(q, g_error_new(QMP_ERROR, QMP_ERROR_IO, "poll: %s",
                                    g_strerror(errno)));
            continue;
        }
        if (n > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)))
            qmp_read_some(q);
    }
}

static gint64 member_int(JsonObject *o, const char *name, gint64 fallback)
{
    JsonNode *n = json_object_get_member(o, name);

    if (!n || json_node_get_value_type(n) != G_TYPE_INT64)
        return fallback;
    return json_node_get_int(n);
}

static JsonObject *member_object(JsonObject *o, const char *name)
{
    JsonNode *n = json_object_get_member(o, name);

    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static void qmp_queue_event(Qmp *q, JsonObject *msg)
{
    const char *name = json_member_string(msg, "event");
    JsonObject *ts = member_object(msg, "timestamp");
    JsonObject *data = member_object(msg, "data");
    QmpEvent *ev;

    if (!name) {
        log_warn(NULL, NULL, "QMP %s: event without a name dropped", q->path);
        return;
    }
    if (q->events_unwanted)
        return;
    if (q->events.length >= QMP_MAX_QUEUED_EVENTS) {
        log_warn(NULL, NULL, "QMP %s: nobody handles events, dropped %s",
                 q->path, ((QmpEvent *)g_queue_peek_head(&q->events))->name);
        qmp_event_free(g_queue_pop_head(&q->events));
    }
    ev = g_new0(QmpEvent, 1);
    ev->name = g_strdup(name);
    ev->data = data ? json_object_ref(data) : NULL;
    ev->timestamp_us = -1;
    if (ts) {
        gint64 s = member_int(ts, "seconds", -1);
        gint64 us = member_int(ts, "microseconds", -1);

        /* QEMU's own: seconds since the epoch, microseconds below a second. */
        if (s >= 0 && us >= 0 && us < G_USEC_PER_SEC && s < G_MAXINT64 / G_USEC_PER_SEC - 1)
            ev->timestamp_us = s * G_USEC_PER_SEC + us;
    }
    g_queue_push_tail(&q->events, ev);
}

static JsonNode *qmp_reply_result(const char *command, JsonNode *reply, GError **err);

/*
 * Queues events and the replies to qmp_call_async(), and recognises the
 * reply to want_id (0: nothing is waited for).  An error reply without an
 * id is QEMU rejecting a request it could not parse, which can only be the
 * one waited for.
 */
static gboolean qmp_is_reply(Qmp *q, JsonNode *msg, gint64 want_id,
                             GError **err)
{
    JsonObject *o = json_node_get_object(msg);
    QmpAwaited *awaited;
    JsonNode *id;
    gint64 n;

    if (json_object_has_member(o, "event")) {
        qmp_queue_event(q, o);
        return FALSE;
    }
    if (!json_object_has_member(o, "return") &&
        !json_object_has_member(o, "error")) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "unexpected QMP message: neither event nor reply");
        return FALSE;
    }
    id = json_object_get_member(o, "id");
    if (want_id > 0 && !id) {
        g_hash_table_remove(q->in_flight, &want_id);
        return TRUE;
    }
    n = id && json_node_get_value_type(id) == G_TYPE_INT64 ? json_node_get_int(id) : -1;
    g_hash_table_remove(q->in_flight, &n);
    if (want_id > 0 && n == want_id)
        return TRUE;
    awaited = g_hash_table_lookup(q->awaited, &n);
    if (awaited) {
        awaited->result = qmp_reply_result(awaited->command, msg, &awaited->error);
        qmp_answer(q, awaited);
        return FALSE;
    }
    log_debug(NULL, NULL, "QMP %s: dropped a reply nobody waits for (id %" G_GINT64_FORMAT ")",
              q->path, n);
    return FALSE;
}

static JsonNode *qmp_reply_result(const char *command, JsonNode *reply,
                                  GError **err)
{
    JsonObject *o = json_node_get_object(reply);
    JsonNode *ret = json_object_get_member(o, "return");
    JsonObject *error;
    const char *cls, *desc;

    if (ret)
        return json_node_copy(ret);
    error = member_object(o, "error");
    cls = error ? json_member_string(error, "class") : NULL;
    desc = error ? json_member_string(error, "desc") : NULL;
    if (!cls || !desc) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "%s: malformed error reply from QEMU", command);
        return NULL;
    }
    g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "%s: %s: %s", command,
                cls, desc);
    return NULL;
}

/* Events and stale replies read after the awaited reply must not wait for more input. */
static void qmp_drain_lines(Qmp *q)
{
    for (;;) {
        g_autoptr(GError) lerr = NULL;
        g_autoptr(JsonNode) msg = qmp_take_line(q, &lerr);

        if (!msg && !lerr)
            return;
        if (msg)
            qmp_is_reply(q, msg, 0, &lerr);
        if (lerr)
            log_warn(NULL, NULL, "QMP %s: %s", q->path, lerr->message);
    }
}

/*
 * Queues command (out of band if oob) with args (may be NULL; not consumed)
 * for sending; returns its id, or 0 with err.
 */
static gint64 qmp_queue_request(Qmp *q, const char *command, gboolean oob, JsonObject *args,
                                GError **err)
{
    g_autoptr(JsonObject) req = json_object_new();
    g_autoptr(JsonNode) root = json_node_new(JSON_NODE_OBJECT);
    g_autofree char *text = NULL;
    gint64 id;

    json_object_set_string_member(req, oob ? "exec-oob" : "execute", command);
    if (args)
        json_object_set_object_member(req, "arguments", json_object_ref(args));
    if (oob && !q->oob) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "%s: QEMU did not offer out-of-band execution", command);
        return 0;
    }
    if (q->fd < 0) {
        qmp_set_lost_error(q, command, err);
        return 0;
    }
    if (!oob && g_hash_table_size(q->in_flight) >= QMP_MAX_IN_FLIGHT) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_TIMEOUT, "%s: not sent: QEMU has not answered "
                    "%u earlier commands", command, g_hash_table_size(q->in_flight));
        return 0;
    }

    id = ++q->last_id;
    if (!oob) {
        gint64 *key = g_new(gint64, 1);

        *key = id;
        g_hash_table_add(q->in_flight, key);
    }
    json_object_set_int_member(req, "id", id);
    json_node_set_object(root, req);
    text = json_to_string(root, FALSE);
    g_byte_array_append(q->out, (const guint8 *)text, strlen(text));
    g_byte_array_append(q->out, (const guint8 *)"\n", 1);
    return id;
}

gboolean qmp_send(Qmp *q, const char *command, JsonObject *args, GError **err)
{
    g_return_val_if_fail(q && command, FALSE);
    if (!qmp_queue_request(q, command, FALSE, args, err))
        return FALSE;
    /* What one write leaves goes with the next command's. */
    if (!qmp_write_some(q)) {
        qmp_set_lost_error(q, command, err);
        return FALSE;
    }
    return TRUE;
}

gboolean qmp_call_async(Qmp *q, const char *command, JsonObject *args, guint timeout_ms,
                        QmpReplyFunc done, gpointer opaque, GDestroyNotify destroy,
                        GError **err)
{
    QmpAwaited *a;
    gint64 id;

    g_return_val_if_fail(q && command && done && timeout_ms > 0, FALSE);
    id = qmp_queue_request(q, command, FALSE, args, err);
    if (!id)
        return FALSE;
    if (!qmp_write_some(q)) {
        qmp_set_lost_error(q, command, err);
        return FALSE;
    }
    a = g_new0(QmpAwaited, 1);
    a->id = id;
    a->command = g_strdup(command);
    a->timeout_ms = timeout_ms;
    a->deadline = deadline_after(timeout_ms);
    a->done = done;
    a->opaque = opaque;
    a->destroy = destroy;
    g_hash_table_insert(q->awaited, &a->id, a);
    /* A source sleeping without a deadline must wake for this one. */
    if (q->source)
        g_main_context_wakeup(g_source_get_context(&q->source->base));
    return TRUE;
}

/* Commands sent asynchronously whose deadline passed fail; the soonest one left, or -1. */
static gint64 qmp_expire_awaited(Qmp *q)
{
    gint64 now = g_get_monotonic_time(), soonest = -1;
    g_autoptr(GList) all = NULL;
    gboolean expired = FALSE;
    GHashTableIter it;
    gpointer value;

    /* Run before every main-loop iteration: nothing is allocated unless one expired. */
    g_hash_table_iter_init(&it, q->awaited);
    while (!expired && g_hash_table_iter_next(&it, NULL, &value)) {
        const QmpAwaited *a = value;

        expired = a->deadline <= now;
        if (!expired && (soonest < 0 || a->deadline < soonest))
            soonest = a->deadline;
    }
    if (!expired)
        return soonest;
    soonest = -1;
    /* Failed in the order they were sent, as QEMU would have answered them. */
    all = g_list_sort(g_hash_table_get_values(q->awaited), awaited_by_id);
    for (GList *l = all; l; l = l->next) {
        QmpAwaited *a = l->data;

        if (a->deadline <= now) {
            /* QEMU may still run it; its late reply is dropped. */
            a->error = g_error_new(QMP_ERROR, QMP_ERROR_TIMEOUT,
                                   "%s: no answer from QEMU within %u ms", a->command,
                                   a->timeout_ms);
            qmp_answer(q, a);
        } else if (soonest < 0 || a->deadline < soonest) {
            soonest = a->deadline;
        }
    }
    return soonest;
}

/* Sends command and waits for its reply. */
static JsonNode *qmp_request(Qmp *q, const char *command, gboolean oob, JsonObject *args,
                             gint64 deadline, guint timeout_ms, GError **err)
{
    gint64 id = qmp_queue_request(q, command, oob, args, err);

    if (!id)
        return NULL;
    for (;;) {
        g_autoptr(GError) lerr = NULL;
        g_autoptr(JsonNode) msg = qmp_next_message(q, deadline, command,
                                                   timeout_ms, err);

        if (!msg)
            return NULL;
        if (qmp_is_reply(q, msg, id, &lerr)) {
            qmp_drain_lines(q);
            return qmp_reply_result(command, msg, err);
        }
        if (lerr) {
            g_propagate_prefixed_error(err, g_steal_pointer(&lerr), "%s: ",
                                       command);
            return NULL;
        }
    }
}

static JsonNode *qmp_call_kind(Qmp *q, gboolean oob, const char *command,
                               JsonObject *args, guint timeout_ms,
                               GError **err)
{
    gint64 began = loopwait_begin();
    g_autofree char *what = NULL;
    JsonNode *result;

    g_return_val_if_fail(q && command, NULL);
    result = qmp_request(q, command, oob, args, deadline_after(timeout_ms), timeout_ms, err);
    what = g_strconcat("QMP ", command, NULL);
    loopwait_end(began, what, q->owner);
    return result;
}

JsonNode *qmp_call(Qmp *q, const char *command, JsonObject *args,
                   guint timeout_ms, GError **err)
{
    return qmp_call_kind(q, FALSE, command, args, timeout_ms, err);
}

JsonNode *qmp_call_oob(Qmp *q, const char *command, JsonObject *args,
                       guint timeout_ms, GError **err)
{
    return qmp_call_kind(q, TRUE, command, args, timeout_ms, err);
}

/* kvm-ftd names each QMP socket after its guest: "DIR/GUEST.qmp". */
static char *socket_owner(const char *path)
{
    g_autofree char *base = g_path_get_basename(path);

    return g_str_has_suffix(base, ".qmp") ? g_strndup(base, strlen(base) - 4)
                                          : g_steal_pointer(&base);
}

static Qmp *qmp_new(int fd, const char *path)
{
    Qmp *q = g_new0(Qmp, 1);

    q->refs = 1;
    q->fd = fd;
    q->path = g_strdup(path);
    q->owner = socket_owner(path);
    q->in = g_string_new(NULL);
    q->out = g_byte_array_new();
    g_queue_init(&q->events);
    q->awaited = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                       (GDestroyNotify)qmp_awaited_drop);
    g_queue_init(&q->answered);
    q->in_flight = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
    return q;
}

/* A fresh socket per attempt: a failed connect() leaves it unusable. */
/* running: the QEMU runs already, so a socket nobody listens on will not be listened on. */
static int qmp_open_socket(const char *path, gboolean running, gint64 deadline,
                           guint timeout_ms, GError **err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    if (strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_IO,
                    "QMP socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);

    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int e, left;

        if (fd < 0) {
            g_set_error(err, QMP_ERROR, QMP_ERROR_IO, "socket: %s",
                        g_strerror(errno));
            return -1;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        e = errno;
        if (e == EINPROGRESS) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            socklen_t len = sizeof(e);

            if (poll(&pfd, 1, remaining_ms(deadline)) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e == 0)
                return fd;
            if (e == EINPROGRESS)
                e = ETIMEDOUT;
        }
        close(fd);
        if (e == EINTR)
            continue;
        left = remaining_ms(deadline);
        if ((e != ENOENT && e != ECONNREFUSED && e != EAGAIN) || left == 0 || running) {
            g_set_error(err, QMP_ERROR, QMP_ERROR_IO,
                        "cannot connect to QMP socket %s within %u ms: %s",
                        path, timeout_ms, g_strerror(e));
            return -1;
        }
        g_usleep((gulong)MIN(left, QMP_CONNECT_RETRY_MS) * 1000);
    }
}

static gboolean qmp_handshake(Qmp *q, gint64 deadline, guint timeout_ms,
                              GError **err)
{
    g_autoptr(JsonNode) greeting = NULL;
    g_autoptr(JsonObject) args = NULL;
    g_autoptr(JsonNode) ret = NULL;
    JsonObject *qmp, *version, *qemu;
    JsonNode *caps;

    greeting = qmp_next_message(q, deadline, "QMP greeting", timeout_ms, err);
    if (!greeting)
        return FALSE;
    qmp = member_object(json_node_get_object(greeting), "QMP");
    if (!qmp) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_PROTOCOL,
                    "QMP greeting expected from %s, got something else",
                    q->path);
        return FALSE;
    }
    version = member_object(qmp, "version");
    qemu = version ? member_object(version, "qemu") : NULL;
    if (qemu)
        q->version = g_strdup_printf("%" G_GINT64_FORMAT ".%" G_GINT64_FORMAT
                                     ".%" G_GINT64_FORMAT,
                                     member_int(qemu, "major", 0),
                                     member_int(qemu, "minor", 0),
                                     member_int(qemu, "micro", 0));
    else
        q->version = g_strdup("unknown");

    caps = json_object_get_member(qmp, "capabilities");
    if (caps && JSON_NODE_HOLDS_ARRAY(caps)) {
        JsonArray *a = json_node_get_array(caps);

        for (guint i = 0; i < json_array_get_length(a); i++) {
            JsonNode *c = json_array_get_element(a, i);

            if (json_node_get_value_type(c) == G_TYPE_STRING &&
                g_str_equal(json_node_get_string(c), "oob"))
                q->oob = TRUE;
        }
    }

    if (q->oob) {
        JsonArray *enable = json_array_new();

        json_array_add_string_element(enable, "oob");
        args = json_object_new();
        json_object_set_array_member(args, "enable", enable);
    }
    ret = qmp_request(q, "qmp_capabilities", FALSE, args, deadline, timeout_ms, err);
    return ret != NULL;
}

static pid_t socket_peer_pid(int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 ? cred.pid : 0;
}

static Qmp *qmp_connect_now(const char *socket_path, gboolean running, guint timeout_ms,
                            pid_t *owner, GError **err);

/* The wait, on whatever loop calls, is the failure detector's to know (loopwait.h). */
static Qmp *qmp_connect_timed(const char *socket_path, gboolean running, guint timeout_ms,
                              pid_t *owner, GError **err)
{
    gint64 began = loopwait_begin();
    g_autofree char *guest = socket_owner(socket_path);
    Qmp *q = qmp_connect_now(socket_path, running, timeout_ms, owner, err);

    loopwait_end(began, "QMP connect", guest);
    return q;
}

Qmp *qmp_connect(const char *socket_path, guint timeout_ms, GError **err)
{
    pid_t owner;

    return qmp_connect_timed(socket_path, FALSE, timeout_ms, &owner, err);
}

Qmp *qmp_connect_running(const char *socket_path, guint timeout_ms, pid_t *owner,
                         GError **err)
{
    return qmp_connect_timed(socket_path, TRUE, timeout_ms, owner, err);
}

static Qmp *qmp_connect_now(const char *socket_path, gboolean running, guint timeout_ms,
                            pid_t *owner, GError **err)
{
    gint64 deadline = deadline_after(timeout_ms);
    g_autoptr(Qmp) q = NULL;
    int fd;

    g_return_val_if_fail(socket_path, NULL);
    *owner = 0;
    fd = qmp_open_socket(socket_path, running, deadline, timeout_ms, err);
    if (fd < 0)
        return NULL;
    q = qmp_new(fd, socket_path);
    q->peer_pid = *owner = socket_peer_pid(fd);
    if (!qmp_handshake(q, deadline, timeout_ms, err))
        return NULL;
    log_debug(NULL, NULL, "QMP connected to %s: QEMU %s%s", socket_path,
              q->version, q->oob ? ", out-of-band enabled" : "");
    return g_steal_pointer(&q);
}

static gboolean qmp_has_pending(Qmp *q)
{
    return q->answered.length > 0 || (q->event_cb && q->events.length > 0) ||
           (q->closed_cb && q->close_reason && !q->close_reported);
}

static gboolean qmp_source_prepare(GSource *s, gint *timeout)
{
    Qmp *q = ((QmpSource *)s)->q;
    gint64 soonest = qmp_expire_awaited(q);

    *timeout = soonest < 0 ? -1 : remaining_ms(soonest);
    return qmp_has_pending(q);
}

static gboolean qmp_source_check(GSource *s)
{
    QmpSource *qs = (QmpSource *)s;

    qmp_expire_awaited(qs->q);
    if (qmp_has_pending(qs->q))
        return TRUE;
    return qs->fd_tag && g_source_query_unix_fd(s, qs->fd_tag) != 0;
}

static gboolean qmp_source_dispatch(GSource *s, GSourceFunc cb, gpointer data)
{
    QmpSource *qs = (QmpSource *)s;
    Qmp *q = qmp_ref(qs->q);

    (void)cb;
    (void)data;
    if (qs->fd_tag && g_source_query_unix_fd(s, qs->fd_tag) != 0 &&
        qmp_read_some(q))
        qmp_drain_lines(q);

    /* Popping one at a time: a handler may run commands that queue more. */
    while (!q->freed && q->answered.length > 0) {
        QmpAwaited *a = g_queue_pop_head(&q->answered);

        a->done(q, a->result, a->error, a->opaque);
        qmp_awaited_free(a);
    }
    while (!q->freed && q->event_cb && q->events.length > 0) {
        QmpEvent *ev = g_queue_pop_head(&q->events);

        q->event_cb(q, ev->name, ev->data, ev->timestamp_us, q->opaque);
        qmp_event_free(ev);
    }
    if (!q->freed && q->closed_cb && q->close_reason && !q->close_reported) {
        q->close_reported = TRUE;
        q->closed_cb(q, q->close_reason, q->opaque);
    }
    qmp_unref(q);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs qmp_source_funcs = {
    .prepare = qmp_source_prepare,
    .check = qmp_source_check,
    .dispatch = qmp_source_dispatch,
};

static void qmp_detach(Qmp *q)
{
    if (!q->source)
        return;
    qmp_drop_fd_watch(q);
    g_source_destroy(&q->source->base);
    g_source_unref(&q->source->base);
    q->source = NULL;
}

void qmp_attach(Qmp *q, GMainContext *ctx)
{
    QmpSource *qs;

    g_return_if_fail(q);
    qmp_detach(q);
    qs = (QmpSource *)g_source_new(&qmp_source_funcs, sizeof(QmpSource));
    qs->q = q;
    g_source_set_name(&qs->base, "qmp");
    if (q->fd >= 0)
        qs->fd_tag = g_source_add_unix_fd(&qs->base, q->fd,
                                          G_IO_IN | G_IO_HUP | G_IO_ERR);
    q->source = qs;
    g_source_attach(&qs->base, ctx);
}

void qmp_set_handlers(Qmp *q, QmpEventFunc event, QmpClosedFunc closed,
                      gpointer opaque)
{
    g_return_if_fail(q);
    q->event_cb = event;
    q->closed_cb = closed;
    q->opaque = opaque;
    q->events_unwanted = !event;
    if (!event)
        g_queue_clear_full(&q->events, (GDestroyNotify)qmp_event_free);
}

gboolean qmp_is_open(Qmp *q)
{
    return q && q->fd >= 0;
}

gboolean qmp_has_oob(Qmp *q)
{
    return q && q->oob;
}

pid_t qmp_peer_pid(Qmp *q)
{
    return q->peer_pid;
}

const char *qmp_version(Qmp *q)
{
    return q ? q->version : NULL;
}

gboolean qmp_error_is_class(const GError *err, const char *error_class)
{
    g_autofree char *tag = NULL;

    if (!err || !error_class || !g_error_matches(err, QMP_ERROR, QMP_ERROR_COMMAND))
        return FALSE;
    /* Anywhere: callers prefix the message with their own step. */
    tag = g_strdup_printf(": %s: ", error_class);
    return strstr(err->message, tag) != NULL;
}

void qmp_free(Qmp *q)
{
    if (!q || q->freed)
        return;
    q->freed = TRUE;
    qmp_detach(q);
    if (q->fd >= 0) {
        close(q->fd);
        q->fd = -1;
    }
    g_queue_clear_full(&q->events, (GDestroyNotify)qmp_event_free);
    g_hash_table_remove_all(q->awaited);
    g_queue_clear_full(&q->answered, (GDestroyNotify)qmp_awaited_drop);
    qmp_unref(q);
}

