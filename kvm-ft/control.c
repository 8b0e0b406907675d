/* control.c - the daemon's control socket (server) and its client (ftctl) */
#include "control.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>

#include "jsontext.h"
#include "log.h"

/* A client that does not read its responses/events is dropped past this. */
#define CONTROL_MAX_PENDING_OUT (4 * 1024 * 1024)
/* The client side accepts response lines up to this size. */
#define CONTROL_MAX_RESPONSE (16 * 1024 * 1024)
#define READ_CHUNK 16384
#define LINE_TOO_LONG "invalid request: line longer than 65536 bytes"
G_STATIC_ASSERT(CONTROL_MAX_LINE == 65536);

G_DEFINE_QUARK(kvm-ft-control-error-quark, control_error)

typedef struct ControlClient ControlClient;

struct ControlReply {
    ControlClient *client;      /* NULL once the client is gone: the reply is dropped */
};

struct ControlClient {
    ControlServer *srv;
    guint id;
    GSocket *sock;
    GSource *in_source;
    GSource *out_source;
    GByteArray *inbuf;
    GByteArray *outbuf;
    gint64 last_activity;       /* monotonic, us */
    gboolean events;            /* subscribed to broadcast events */
    gboolean closing;           /* stop reading; close once outbuf is sent */
    gboolean dead;              /* sources gone; freed by the reaper */
    ControlReply *awaiting;     /* a deferred reply: nothing is read until it is sent */
    gboolean read_all;          /* the client has sent everything: close once answered */
};

struct ControlServer {
    char *path;
    GMainContext *context;
    GSocket *listener;
    GSource *accept_source;
    GSource *idle_timer;
    GSource *reaper;
    ControlHandler handler;
    gpointer opaque;
    ControlClient *handling;    /* the client whose request the handler runs */
    GPtrArray *clients;         /* ControlClient*, including dead ones not yet reaped */
    guint idle_timeout_ms;
    guint next_id;
    dev_t dev;
    ino_t ino;
};

static guint8 *find_newline(GByteArray *buf)
{
    return buf->len ? memchr(buf->data, '\n', buf->len) : NULL;
}

/* ------------------------------------------------------------------ */
/* server: client lifetime                                            */

static void client_free(ControlClient *c)
{
    if (c->sock) {
        g_socket_close(c->sock, NULL);
        g_object_unref(c->sock);
    }
    g_byte_array_unref(c->inbuf);
    g_byte_array_unref(c->outbuf);
    g_free(c);
}

static void drop_source(GSource **s)
{
    if (*s) {
        g_source_destroy(*s);
        g_source_unref(*s);
        *s = NULL;
    }
}

static gboolean reap_cb(gpointer data)
{
    ControlServer *srv = data;

    for (guint i = srv->clients->len; i-- > 0;) {
        ControlClient *c = g_ptr_array_index(srv->clients, i);

        if (c->dead) {
            g_ptr_array_remove_index_fast(srv->clients, i);
            client_free(c);
        }
    }
    g_source_unref(srv->reaper);
    srv->reaper = NULL;
    return G_SOURCE_REMOVE;
}

/*
 * Stop all I/O on c now; the memory is released later by the reaper, so a
 * caller anywhere up the stack (a read callback, a handler broadcasting an
 * event) may still look at c->dead.
 */
static void client_kill(ControlClient *c, const char *why)
{
    ControlServer *srv = c->srv;

    if (c->dead)
        return;
    c->dead = TRUE;
    if (c->awaiting)
        c->awaiting->client = NULL;
    log_debug(NULL, NULL, "control: client %u disconnected (%s)", c->id, why);
    drop_source(&c->in_source);
    drop_source(&c->out_source);
    g_socket_close(c->sock, NULL);
    if (!srv->reaper) {
        srv->reaper = g_idle_source_new();
        g_source_set_priority(srv->reaper, G_PRIORITY_HIGH);
        g_source_set_callback(srv->reaper, reap_cb, srv, NULL);
        g_source_attach(srv->reaper, srv->context);
    }
}

static gboolean client_out_cb(GSocket *sock, GIOCondition cond, gpointer data);

/* Send what the socket takes without blocking; the rest waits for G_IO_OUT. */
static void client_flush(ControlClient *c)
{
    while (!c->dead && c->outbuf->len > 0) {
        g_autoptr(GError) e = NULL;
        gssize n = g_socket_send(c->sock, (const char *)c->outbuf->data,
                                 c->outbuf->len, NULL, &e);

        if (n < 0) {
            if (g_error_matches(e, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
                if (!c->out_source) {
                    c->out_source = g_socket_create_source(c->sock, G_IO_OUT, NULL);
                    g_source_set_callback(c->out_source, G_SOURCE_FUNC(client_out_cb),
                                          c, NULL);
                    g_source_attach(c->out_source, c->srv->context);
                }
                return;
            }
            client_kill(c, e->message);
            return;
        }
        g_byte_array_remove_range(c->outbuf, 0, n);
        c->last_activity = g_get_monotonic_time();
    }
    if (!c->dead && c->closing)
        client_kill(c, "closed after the last response");
}

static gboolean client_out_cb(GSocket *sock, GIOCondition cond, gpointer data)
{
    ControlClient *c = data;

    (void)sock;
    (void)cond;
    client_flush(c);
    if (c->dead || c->outbuf->len > 0)
        return c->dead ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
    g_source_unref(c->out_source);
    c->out_source = NULL;
    return G_SOURCE_REMOVE;
}

static void client_queue_node(ControlClient *c, JsonNode *node)
{
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autofree char *text = NULL;
    gsize len;

    if (c->dead)
        return;
    json_generator_set_root(gen, node);
    text = json_generator_to_data(gen, &len);
    if (c->outbuf->len + len + 1 > CONTROL_MAX_PENDING_OUT) {
        log_warn(NULL, NULL, "control: dropping client %u: it does not read what it is sent",
                 c->id);
        client_kill(c, "output backlog");
        return;
    }
    g_byte_array_append(c->outbuf, (const guint8 *)text, len);
    g_byte_array_append(c->outbuf, (const guint8 *)"\n", 1);
    client_flush(c);
}

/* A reply line's object: {"ok": true, "result": ...} or {"ok": false, "error": ...}. */
static JsonNode *reply_node(JsonNode *result, const char *error)
{
    g_autoptr(JsonBuilder) b = json_builder_new();

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "ok");
    json_builder_add_boolean_value(b, error == NULL);
    if (error) {
        /* It may quote the request, whose "\ud800" escapes json-glib decodes as they come. */
        g_autofree char *valid = g_utf8_make_valid(error, -1);

        json_builder_set_member_name(b, "error");
        json_builder_add_string_value(b, valid);
    } else {
        json_builder_set_member_name(b, "result");
        if (result)
            json_builder_add_value(b, json_node_copy(result));
        else
            json_builder_add_null_value(b);
    }
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

static void client_reply(ControlClient *c, JsonNode *result, const char *error)
{
    g_autoptr(JsonNode) root = reply_node(result, error);

    client_queue_node(c, root);
}

/* A protocol violation: tell the client why, then hang up. */
static void client_reject(ControlClient *c, const char *error)
{
    /* error may quote the client's bytes: keep the log line one short line. */
    g_autofree char *shown = g_utf8_make_valid(error, -1);

    for (char *p = shown; *p; p++)
        if ((guchar)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (g_utf8_strlen(shown, -1) > 200)
        *g_utf8_offset_to_pointer(shown, 200) = '\0';
    log_warn(NULL, NULL, "control: dropping client %u: %s", c->id, shown);
    client_reply(c, NULL, error);
    c->closing = TRUE;
    drop_source(&c->in_source);
    client_flush(c);
}

static void client_handle_line(ControlClient *c, const char *line, gsize len)
{
    ControlServer *srv = c->srv;
    g_autoptr(JsonParser) parser = json_parser_new_immutable();
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonNode) result = NULL;
    JsonNode *root;
    JsonObject *req;
    JsonNode *cmd;
    const char *command;
    gboolean blank = TRUE;

    for (gsize i = 0; i < len && blank; i++)
        blank = g_ascii_isspace(line[i]);
    if (blank)
        return;

    if (memchr(line, '\0', len) || !g_utf8_validate(line, len, NULL)) {
        client_reject(c, "invalid request: not UTF-8 text");
        return;
    }
    if (!json_text_sane(line, len, JSON_TEXT_MAX_DEPTH)) {
        client_reject(c, "invalid request: not one strict JSON value nested at most "
                      G_STRINGIFY(JSON_TEXT_MAX_DEPTH) " deep");
        return;
    }
    if (!json_parser_load_from_data(parser, line, len, &e)) {
        g_autofree char *msg = g_strdup_printf("invalid request: not JSON (%s)", e->message);

        client_reject(c, msg);
        return;
    }
    root = json_parser_get_root(parser);
    cmd = root && JSON_NODE_HOLDS_OBJECT(root)
        ? json_object_get_member(json_node_get_object(root), "command") : NULL;
    if (!cmd || !JSON_NODE_HOLDS_VALUE(cmd) || json_node_get_value_type(cmd) != G_TYPE_STRING) {
        client_reject(c, "invalid request: expected a JSON object with a \"command\" string");
        return;
    }
    req = json_node_get_object(root);
    command = json_node_get_string(cmd);

    if (strcmp(command, "events") == 0) {
        c->events = TRUE;
        client_reply(c, NULL, NULL);
        return;
    }

    srv->handling = c;
    result = srv->handler(command, req, srv->opaque, &e);
    srv->handling = NULL;
    if (c->awaiting)
        return;
    if (e) {
        client_reply(c, NULL, e->message);
        return;
    }
    client_reply(c, result, NULL);
}

/* A client that sent everything is closed once its last reply is out, not before. */
static void client_close_when_answered(ControlClient *c)
{
    if (c->dead || c->awaiting || !c->read_all)
        return;
    c->closing = TRUE;
    client_flush(c);
}

static void client_process(ControlClient *c)
{
    while (!c->dead && !c->closing && !c->awaiting) {
        guint8 *nl = find_newline(c->inbuf);
        gsize len;

        if (!nl) {
            if (c->inbuf->len > CONTROL_MAX_LINE)
                client_reject(c, LINE_TOO_LONG);
            return;
        }
        len = nl - c->inbuf->data;
        if (len > CONTROL_MAX_LINE) {
            client_reject(c, LINE_TOO_LONG);
            return;
        }
        {
            g_autofree char *line = g_strndup((const char *)c->inbuf->data, len);

            if (len > 0 && line[len - 1] == '\r')
                len--;
            g_byte_array_remove_range(c->inbuf, 0, nl - c->inbuf->data + 1);
            client_handle_line(c, line, len);
        }
    }
}

static gboolean client_in_cb(GSocket *sock, GIOCondition cond, gpointer data)
{
    ControlClient *c = data;
    g_autoptr(GError) e = NULL;
    guint8 chunk[READ_CHUNK];
    gssize n;

    (void)cond;
    n = g_socket_receive(sock, (char *)chunk, sizeof chunk, NULL, &e);
    if (n < 0) {
        if (g_error_matches(e, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            return G_SOURCE_CONTINUE;
        client_kill(c, e->message);
        return G_SOURCE_REMOVE;
    }
    if (n == 0) {
        /* The client is done sending: a last unterminated line still counts. */
        if (c->inbuf->len > 0 && c->inbuf->len <= CONTROL_MAX_LINE)
            g_byte_array_append(c->inbuf, (const guint8 *)"\n", 1);
        c->read_all = TRUE;
        drop_source(&c->in_source);
        client_process(c);
        client_close_when_answered(c);
        return G_SOURCE_REMOVE;
    }
    c->last_activity = g_get_monotonic_time();
    g_byte_array_append(c->inbuf, chunk, n);
    client_process(c);
    /* client_process may have dropped in_source (and with it this source). */
    return c->in_source ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static void client_read(ControlClient *c)
{
    c->in_source = g_socket_create_source(c->sock, G_IO_IN | G_IO_HUP | G_IO_ERR, NULL);
    g_source_set_callback(c->in_source, G_SOURCE_FUNC(client_in_cb), c, NULL);
    g_source_attach(c->in_source, c->srv->context);
}

ControlReply *control_server_defer(ControlServer *srv)
{
    ControlClient *c = srv->handling;

    g_return_val_if_fail(c != NULL && !c->awaiting, NULL);
    c->awaiting = g_new0(ControlReply, 1);
    c->awaiting->client = c;
    /* What it sends meanwhile waits in the socket: one reply per request, in order. */
    drop_source(&c->in_source);
    return c->awaiting;
}

void control_reply_finish(ControlReply *reply, JsonNode *result, const GError *error)
{
    ControlClient *c = reply->client;

    g_free(reply);
    if (!c)
        return;
    c->awaiting = NULL;
    c->last_activity = g_get_monotonic_time();
    client_reply(c, error ? NULL : result, error ? error->message : NULL);
    if (c->dead || c->closing)
        return;
    if (!c->read_all)
        client_read(c);
    client_process(c);
    client_close_when_answered(c);
}

/* ------------------------------------------------------------------ */
/* server: accepting                                                  */

static gboolean peer_allowed(GSocket *sock, uid_t *uid_out)
{
    g_autoptr(GCredentials) creds = g_socket_get_credentials(sock, NULL);
    uid_t uid;

    if (!creds)
        return FALSE;
    uid = g_credentials_get_unix_user(creds, NULL);
    *uid_out = uid;
    return uid == 0 || uid == geteuid();
}

/* Best effort, non-blocking: a refused client gets a reason if it fits. */
static void refuse(GSocket *sock, const char *error)
{
    g_autoptr(JsonNode) reply = reply_node(NULL, error);
    g_autofree char *text = json_to_string(reply, FALSE);
    g_autofree char *line = g_strconcat(text, "\n", NULL);

    g_socket_send(sock, line, strlen(line), NULL, NULL);
    g_socket_close(sock, NULL);
}

static guint live_clients(ControlServer *srv)
{
    guint n = 0;

    for (guint i = 0; i < srv->clients->len; i++)
        n += !((ControlClient *)g_ptr_array_index(srv->clients, i))->dead;
    return n;
}

static gboolean accept_cb(GSocket *listener, GIOCondition cond, gpointer data)
{
    ControlServer *srv = data;

    (void)cond;
    for (;;) {
        g_autoptr(GError) e = NULL;
        g_autoptr(GSocket) sock = g_socket_accept(listener, NULL, &e);
        ControlClient *c;
        uid_t uid = (uid_t)-1;

        if (!sock) {
            if (!g_error_matches(e, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                log_warn(NULL, NULL, "control: accept on %s failed: %s", srv->path, e->message);
            return G_SOURCE_CONTINUE;
        }
        g_socket_set_blocking(sock, FALSE);
        if (!peer_allowed(sock, &uid)) {
            log_warn(NULL, NULL, "control: refused a client with uid %ld", (long)uid);
            refuse(sock, "permission denied");
            continue;
        }
        if (live_clients(srv) >= CONTROL_MAX_CLIENTS) {
            log_warn(NULL, NULL, "control: refused a client: %u already connected",
                     CONTROL_MAX_CLIENTS);
            refuse(sock, "too many control clients");
            continue;
        }

        c = g_new0(ControlClient, 1);
        c->srv = srv;
        c->id = ++srv->next_id;
        c->sock = g_steal_pointer(&sock);
        c->inbuf = g_byte_array_new();
        c->outbuf = g_byte_array_new();
        c->last_activity = g_get_monotonic_time();
        client_read(c);
        g_ptr_array_add(srv->clients, c);
        log_debug(NULL, NULL, "control: client %u connected (uid %ld)", c->id, (long)uid);
    }
}

static gboolean idle_timer_cb(gpointer data)
{
    ControlServer *srv = data;
    gint64 now = g_get_monotonic_time();

    for (guint i = 0; i < srv->clients->len; i++) {
        ControlClient *c = g_ptr_array_index(srv->clients, i);

        /* One waiting for its reply waits for kvm-ftd, not the other way round. */
        if (c->dead || c->awaiting || (c->events && c->outbuf->len == 0))
            continue;
        if (now - c->last_activity < (gint64)srv->idle_timeout_ms * 1000)
            continue;
        if (c->outbuf->len > 0 || c->closing) {
            client_kill(c, "idle timeout");
        } else {
            log_debug(NULL, NULL, "control: client %u idle, disconnecting", c->id);
            client_reply(c, NULL, "idle timeout: closing the connection");
            c->closing = TRUE;
            drop_source(&c->in_source);
            client_flush(c);
        }
    }
    return G_SOURCE_CONTINUE;
}

static void arm_idle_timer(ControlServer *srv)
{
    guint period = CLAMP(srv->idle_timeout_ms / 4, 10, 1000);

    drop_source(&srv->idle_timer);
    srv->idle_timer = g_timeout_source_new(period);
    g_source_set_callback(srv->idle_timer, idle_timer_cb, srv, NULL);
    g_source_attach(srv->idle_timer, srv->context);
}

/* ------------------------------------------------------------------ */
/* server: setup                                                      */

static gboolean fill_sockaddr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path)
        return FALSE;
    strcpy(sa->sun_path, path);
    return TRUE;
}

/* Remove path if it is a socket nobody listens on; fail if someone does. */
static gboolean remove_stale_socket(const char *path, GError **err)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc, saved;

    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return TRUE;
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: %s", path, g_strerror(errno));
        return FALSE;
    }
    if (!S_ISSOCK(st.st_mode)) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: exists and is not a socket; not removing it", path);
        return FALSE;
    }
    fill_sockaddr(&sa, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: socket: %s", path, g_strerror(errno));
        return FALSE;
    }
    rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    saved = errno;
    close(fd);
    if (rc == 0 || saved == EAGAIN) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: another process (kvm-ftd already running?) "
                    "listens on it", path);
        return FALSE;
    }
    if (saved != ECONNREFUSED) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: cannot tell whether it is stale: %s",
                    path, g_strerror(saved));
        return FALSE;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: cannot remove stale socket: %s",
                    path, g_strerror(errno));
        return FALSE;
    }
    log_info(NULL, NULL, "control: removed stale socket %s", path);
    return TRUE;
}

ControlServer *control_server_new(const char *socket_path, ControlHandler handler,
                                  gpointer opaque, GError **err)
{
    g_autoptr(ControlServer) srv = NULL;
    g_autoptr(GSocketAddress) addr = NULL;
    g_autoptr(GError) e = NULL;
    struct sockaddr_un sa;
    struct stat st;
    mode_t old_mask;
    gboolean bound;

    g_return_val_if_fail(socket_path && handler, NULL);

    if (!fill_sockaddr(&sa, socket_path)) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: path too long (max %zu bytes)",
                    socket_path, sizeof sa.sun_path - 1);
        return NULL;
    }
    if (!remove_stale_socket(socket_path, err))
        return NULL;

    srv = g_new0(ControlServer, 1);
    srv->path = g_strdup(socket_path);
    srv->context = g_main_context_ref_thread_default();
    srv->handler = handler;
    srv->opaque = opaque;
    srv->clients = g_ptr_array_new();
    srv->idle_timeout_ms = CONTROL_IDLE_TIMEOUT_MS;

    srv->listener = g_socket_new(G_SOCKET_FAMILY_UNIX, G_SOCKET_TYPE_STREAM,
                                 G_SOCKET_PROTOCOL_DEFAULT, &e);
    if (!srv->listener) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: %s", socket_path, e->message);
        return NULL;
    }
    addr = g_unix_socket_address_new(socket_path);
    /* Root-only from the first instant: no window between bind and chmod. */
    old_mask = umask(0177);
    bound = g_socket_bind(srv->listener, addr, FALSE, &e);
    umask(old_mask);
    if (!bound) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: %s", socket_path, e->message);
        return NULL;
    }
    if (chmod(socket_path, 0600) < 0 || lstat(socket_path, &st) < 0) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: %s", socket_path, g_strerror(errno));
        unlink(socket_path);
        return NULL;
    }
    srv->dev = st.st_dev;
    srv->ino = st.st_ino;
    g_socket_set_blocking(srv->listener, FALSE);
    g_socket_set_listen_backlog(srv->listener, 16);
    if (!g_socket_listen(srv->listener, &e)) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_SOCKET,
                    "control socket %s: %s", socket_path, e->message);
        return NULL;
    }

    srv->accept_source = g_socket_create_source(srv->listener, G_IO_IN, NULL);
    g_source_set_callback(srv->accept_source, G_SOURCE_FUNC(accept_cb), srv, NULL);
    g_source_attach(srv->accept_source, srv->context);
    arm_idle_timer(srv);
    log_info(NULL, NULL, "control: listening on %s", socket_path);
    return g_steal_pointer(&srv);
}

void control_server_free(ControlServer *srv)
{
    struct stat st;

    if (!srv)
        return;
    drop_source(&srv->accept_source);
    drop_source(&srv->idle_timer);
    drop_source(&srv->reaper);
    for (guint i = 0; i < srv->clients->len; i++) {
        ControlClient *c = g_ptr_array_index(srv->clients, i);

        client_kill(c, "daemon shutting down");
        client_free(c);
    }
    drop_source(&srv->reaper);   /* client_kill may have scheduled one */
    g_ptr_array_unref(srv->clients);
    if (srv->listener) {
        g_socket_close(srv->listener, NULL);
        g_object_unref(srv->listener);
        /* Only our own socket: a successor may already have replaced it. */
        if (srv->ino && lstat(srv->path, &st) == 0 &&
            st.st_dev == srv->dev && st.st_ino == srv->ino)
            unlink(srv->path);
    }
    if (srv->context)
        g_main_context_unref(srv->context);
    g_free(srv->path);
    g_free(srv);
}

void control_server_broadcast_event(ControlServer *srv, JsonNode *event)
{
    g_autoptr(JsonNode) line = NULL;
    JsonObject *obj;

    g_return_if_fail(srv && event);
    obj = json_object_new();
    json_object_set_member(obj, "event", json_node_copy(event));
    line = json_node_init_object(json_node_alloc(), obj);
    json_object_unref(obj);
    /* Indexing, not iterating a snapshot: no client is freed in here. */
    for (guint i = 0; i < srv->clients->len; i++) {
        ControlClient *c = g_ptr_array_index(srv->clients, i);

        if (c->events && !c->dead && !c->closing)
            client_queue_node(c, line);
    }
}

void control_server_set_idle_timeout(ControlServer *srv, guint timeout_ms)
{
    srv->idle_timeout_ms = MAX(timeout_ms, 1);
    arm_idle_timer(srv);
}

guint control_server_n_clients(ControlServer *srv)
{
    return live_clients(srv);
}

/* ------------------------------------------------------------------ */
/* client                                                             */

/* Milliseconds left until deadline (monotonic us), or -1 for none. */
static int ms_left(gint64 deadline)
{
    gint64 left;

    if (deadline < 0)
        return -1;
    left = deadline - g_get_monotonic_time();
    if (left <= 0)
        return 0;
    return (int)MIN((left + 999) / 1000, G_MAXINT);
}

static void set_timeout_error(GError **err, const char *path, guint timeout_ms)
{
    g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_TIMEOUT,
                "kvm-ftd at %s did not answer within %u ms", path, timeout_ms);
}

static int client_connect(const char *path, gint64 deadline, guint timeout_ms, GError **err)
{
    struct sockaddr_un sa;
    int fd;

    if (!fill_sockaddr(&sa, path)) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_UNREACHABLE,
                    "cannot reach kvm-ftd at %s: socket path too long", path);
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_UNREACHABLE,
                    "cannot reach kvm-ftd at %s: %s", path, g_strerror(errno));
        return -1;
    }
    while (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;

        if (e == EINTR)
            continue;
        if (e == EAGAIN) {
            /* The daemon's accept backlog is full: retry until the deadline. */
            if (ms_left(deadline) == 0) {
                close(fd);
                set_timeout_error(err, path, timeout_ms);
                return -1;
            }
            g_usleep(10 * 1000);
            continue;
        }
        close(fd);
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_UNREACHABLE,
                    "cannot reach kvm-ftd at %s: %s (%s)", path, g_strerror(e),
                    e == EACCES || e == EPERM ? "the control socket is root-only"
                                              : "is the daemon running?");
        return -1;
    }
    return fd;
}

/* Wait for events on fd (and the cancellable); FALSE with err on timeout/cancel. */
static gboolean client_wait(int fd, short events, gint64 deadline, GCancellable *cancellable,
                            const char *path, guint timeout_ms, GError **err)
{
    GPollFD fds[2] = { { .fd = fd, .events = events } };
    guint nfds = 1;
    gboolean have_cancel_fd = FALSE;
    int rc;

    if (cancellable && g_cancellable_make_pollfd(cancellable, &fds[1])) {
        have_cancel_fd = TRUE;
        nfds = 2;
    }
    for (;;) {
        if (g_cancellable_set_error_if_cancelled(cancellable, err)) {
            rc = -1;
            break;
        }
        rc = g_poll(fds, nfds, ms_left(deadline));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc == 0) {
            set_timeout_error(err, path, timeout_ms);
            rc = -1;
            break;
        }
        if (rc < 0) {
            g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_DISCONNECTED,
                        "kvm-ftd at %s: poll: %s", path, g_strerror(errno));
            break;
        }
        if (have_cancel_fd && fds[1].revents)
            continue;   /* reported by set_error_if_cancelled above */
        break;
    }
    if (have_cancel_fd)
        g_cancellable_release_fd(cancellable);
    return rc > 0;
}

static gboolean client_send_all(int fd, const char *data, gsize len, gint64 deadline,
                                const char *path, guint timeout_ms, GError **err)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (!client_wait(fd, G_IO_OUT, deadline, NULL, path, timeout_ms, err))
                    return FALSE;
                continue;
            }
            g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_DISCONNECTED,
                        "kvm-ftd at %s closed the connection: %s", path, g_strerror(errno));
            return FALSE;
        }
        data += n;
        len -= n;
    }
    return TRUE;
}

/* Next line from fd (buf keeps what follows it); NULL with err otherwise. */
static char *client_read_line(int fd, GByteArray *buf, gint64 deadline,
                              GCancellable *cancellable, const char *path,
                              guint timeout_ms, GError **err)
{
    for (;;) {
        guint8 *nl = find_newline(buf);
        guint8 chunk[READ_CHUNK];
        ssize_t n;

        if (nl) {
            char *line = g_strndup((const char *)buf->data, nl - buf->data);

            g_byte_array_remove_range(buf, 0, nl - buf->data + 1);
            return line;
        }
        if (buf->len > CONTROL_MAX_RESPONSE) {
            g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_PROTOCOL,
                        "kvm-ftd at %s sent a line longer than %d bytes",
                        path, CONTROL_MAX_RESPONSE);
            return NULL;
        }
        if (!client_wait(fd, G_IO_IN, deadline, cancellable, path, timeout_ms, err))
            return NULL;
        n = recv(fd, chunk, sizeof chunk, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_DISCONNECTED,
                        "kvm-ftd at %s closed the connection: %s", path, g_strerror(errno));
            return NULL;
        }
        if (n == 0) {
            g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_DISCONNECTED,
                        "kvm-ftd at %s closed the connection without answering", path);
            return NULL;
        }
        g_byte_array_append(buf, chunk, n);
    }
}

static JsonParser *parse_line(const char *line, const char *path, GError **err)
{
    g_autoptr(JsonParser) parser = json_parser_new_immutable();
    g_autoptr(GError) e = NULL;
    JsonNode *root;

    if (!json_parser_load_from_data(parser, line, -1, &e)) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_PROTOCOL,
                    "kvm-ftd at %s sent an invalid line: %s", path, e->message);
        return NULL;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_PROTOCOL,
                    "kvm-ftd at %s sent a line that is not a JSON object", path);
        return NULL;
    }
    return g_steal_pointer(&parser);
}

/* The result of a response object, or NULL with err. */
static JsonNode *response_result(JsonObject *resp, const char *path, GError **err)
{
    JsonNode *ok = json_object_get_member(resp, "ok");
    JsonNode *node;

    if (!ok || !JSON_NODE_HOLDS_VALUE(ok) || json_node_get_value_type(ok) != G_TYPE_BOOLEAN) {
        g_set_error(err, CONTROL_ERROR, CONTROL_ERROR_PROTOCOL,
                    "kvm-ftd at %s sent a response without \"ok\"", path);
        return NULL;
    }
    if (!json_node_get_boolean(ok)) {
        const char *msg = NULL;

        node = json_object_get_member(resp, "error");
        if (node && JSON_NODE_HOLDS_VALUE(node) &&
            json_node_get_value_type(node) == G_TYPE_STRING)
            msg = json_node_get_string(node);
        g_set_error_literal(err, CONTROL_ERROR, CONTROL_ERROR_FAILED,
                            msg && *msg ? msg : "kvm-ftd refused the request (no reason given)");
        return NULL;
    }
    node = json_object_get_member(resp, "result");
    return node ? json_node_copy(node) : json_node_new(JSON_NODE_NULL);
}

/* Connect, send request, read its response line. */
static JsonNode *client_exchange(int *fd_out, GByteArray *buf, const char *path,
                                 JsonObject *request, guint timeout_ms, GError **err)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_autoptr(JsonNode) req = json_node_init_object(json_node_alloc(), request);
    g_autoptr(JsonGenerator) gen = json_generator_new();
    g_autoptr(JsonParser) parser = NULL;
    g_autofree char *text = NULL;
    g_autofree char *line = NULL;
    gsize len;
    int fd;

    *fd_out = -1;
    json_generator_set_root(gen, req);
    text = json_generator_to_data(gen, &len);
    text = g_realloc(text, len + 2);
    text[len++] = '\n';
    text[len] = '\0';

    fd = client_connect(path, deadline, timeout_ms, err);
    if (fd < 0)
        return NULL;
    *fd_out = fd;
    if (!client_send_all(fd, text, len, deadline, path, timeout_ms, err))
        return NULL;
    line = client_read_line(fd, buf, deadline, NULL, path, timeout_ms, err);
    if (!line)
        return NULL;
    parser = parse_line(line, path, err);
    if (!parser)
        return NULL;
    return response_result(json_node_get_object(json_parser_get_root(parser)), path, err);
}

JsonNode *control_request(const char *socket_path, JsonObject *request,
                          guint timeout_ms, GError **err)
{
    g_autoptr(GByteArray) buf = g_byte_array_new();
    JsonNode *result;
    int fd;

    g_return_val_if_fail(socket_path && request, NULL);
    result = client_exchange(&fd, buf, socket_path, request, timeout_ms, err);
    if (fd >= 0)
        close(fd);
    return result;
}

gboolean control_follow_events(const char *socket_path, guint timeout_ms,
                               ControlEventFunc func, gpointer opaque,
                               GCancellable *cancellable, GError **err)
{
    g_autoptr(GByteArray) buf = g_byte_array_new();
    g_autoptr(JsonObject) req = json_object_new();
    g_autoptr(JsonNode) ack = NULL;
    g_autoptr(GError) e = NULL;
    gboolean ret = FALSE;
    int fd;

    g_return_val_if_fail(socket_path && func, FALSE);
    json_object_set_string_member(req, "command", "events");
    ack = client_exchange(&fd, buf, socket_path, req, timeout_ms, &e);
    while (ack && !e && !ret) {
        g_autofree char *line = client_read_line(fd, buf, -1, cancellable, socket_path,
                                                 timeout_ms, &e);
        g_autoptr(JsonParser) parser = NULL;
        JsonObject *obj;
        JsonNode *event;

        if (!line) {
            if (g_error_matches(e, CONTROL_ERROR, CONTROL_ERROR_DISCONNECTED)) {
                g_clear_error(&e);
                g_set_error(&e, CONTROL_ERROR, CONTROL_ERROR_DISCONNECTED,
                            "kvm-ftd at %s closed the connection (daemon stopped?)",
                            socket_path);
            }
            break;
        }
        if (!*line)
            continue;
        parser = parse_line(line, socket_path, &e);
        if (!parser)
            break;
        obj = json_node_get_object(json_parser_get_root(parser));
        event = json_object_get_member(obj, "event");
        if (event) {
            ret = !func(event, opaque);
        } else if (json_object_has_member(obj, "ok")) {
            /* A response on this connection: only an error matters (e.g. idle). */
            JsonNode *r = response_result(obj, socket_path, &e);

            if (r)
                json_node_unref(r);
        }
    }
    if (fd >= 0)
        close(fd);
    if (e)
        g_propagate_error(err, g_steal_pointer(&e));
    return ret;
}
