/*
 * control.h - the daemon's control socket (server) and its client (ftctl)
 *
 * A unix stream socket, root-only (mode 0600), carrying JSON lines: one
 * request object per line, one response line each (doc/interfaces.md):
 *
 *     request : {"command": "NAME", ...}
 *     response: {"ok": true, "result": <json>} | {"ok": false, "error": "..."}
 *
 * The server runs on the GLib main loop and never blocks it.  Every
 * command except "events" goes to the daemon's handler.  "events" is
 * answered by the server itself ({"ok":true,"result":null}); from then on
 * the connection also receives one line per control_server_broadcast_event():
 *
 *     {"event": <json>}
 *
 * A client that sends something that is not a request object, or a line
 * longer than CONTROL_MAX_LINE, gets {"ok":false,"error":...} and is
 * disconnected.  A client that neither sends nor reads for
 * CONTROL_IDLE_TIMEOUT_MS is dropped (event subscribers with nothing left
 * to read are never idle).
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#define CONTROL_DEFAULT_SOCKET "/run/kvm-ftd.sock"
#define CONTROL_MAX_LINE (64 * 1024)           /* bytes per request line */
#define CONTROL_IDLE_TIMEOUT_MS (60 * 1000)
#define CONTROL_MAX_CLIENTS 32

#define CONTROL_ERROR (control_error_quark())
GQuark control_error_quark(void);

typedef enum {
    CONTROL_ERROR_UNREACHABLE,   /* no daemon: missing socket, refused, no permission */
    CONTROL_ERROR_TIMEOUT,       /* the daemon did not answer in time */
    CONTROL_ERROR_FAILED,        /* the daemon answered {"ok":false}: message is its "error" */
    CONTROL_ERROR_PROTOCOL,      /* an answer that is not a valid response line */
    CONTROL_ERROR_DISCONNECTED,  /* the daemon closed the connection without answering */
    CONTROL_ERROR_SOCKET,        /* server side: cannot create/bind the socket */
} ControlError;

/* ---- server (kvm-ftd) ---- */

typedef struct ControlServer ControlServer;

/*
 * Called on the main loop for each request whose "command" is not
 * "events".  request is the whole request object (it includes "command");
 * both are borrowed for the duration of the call.  Return the result
 * (transfer full; NULL means JSON null), or set err: the client then gets
 * {"ok":false,"error": err->message}.  An unknown command is the handler's
 * to reject.  The handler may call control_server_broadcast_event(), but
 * must not free the server.
 */
typedef JsonNode *(*ControlHandler)(const char *command, JsonObject *request,
                                    gpointer opaque, GError **err);

/*
 * Listen on socket_path, attached to the thread-default main context.
 * A stale socket file is removed only if nothing accepts connections on it;
 * if another daemon listens there, or the path is not a socket, this fails.
 */
ControlServer *control_server_new(const char *socket_path, ControlHandler handler,
                                  gpointer opaque, GError **err);

/* Disconnect every client, stop listening and remove the socket file. */
void control_server_free(ControlServer *srv);

/*
 * A reply the handler gives later, when what it answers would wait on
 * something slow (libvirt): called from inside the handler, which then
 * returns NULL without an error.  The client's further requests wait
 * unread until control_reply_finish() sends this one's result (borrowed;
 * NULL: JSON null) or error, on the server's main loop.  Call it exactly
 * once, also after the client (or the server) went: it then only frees.
 */
typedef struct ControlReply ControlReply;
ControlReply *control_server_defer(ControlServer *srv);
void control_reply_finish(ControlReply *reply, JsonNode *result, const GError *error);

/* Send {"event": event} to every client that asked for events.  Borrows event. */
void control_server_broadcast_event(ControlServer *srv, JsonNode *event);

/* For tests: shorten the idle timeout; number of connected clients. */
void control_server_set_idle_timeout(ControlServer *srv, guint timeout_ms);
guint control_server_n_clients(ControlServer *srv);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(ControlServer, control_server_free)

/* ---- client (ftctl) ---- */

/*
 * Connect, send request, wait for the response line, disconnect.  Returns
 * the response's "result" (never NULL on success: JSON null is a null node),
 * or NULL with err in CONTROL_ERROR: UNREACHABLE ("cannot reach kvm-ftd at
 * PATH: ... (is the daemon running?)"), TIMEOUT (no answer within
 * timeout_ms, connect included), FAILED (err->message is the daemon's),
 * PROTOCOL or DISCONNECTED.  Blocking; not for use inside the daemon.
 */
JsonNode *control_request(const char *socket_path, JsonObject *request,
                          guint timeout_ms, GError **err);

/* Return FALSE to stop following. */
typedef gboolean (*ControlEventFunc)(JsonNode *event, gpointer opaque);

/*
 * Subscribe ({"command":"events"}; the subscription must be acknowledged
 * within timeout_ms) and call func for each pushed event until func
 * returns FALSE (returns TRUE), cancellable is cancelled (FALSE,
 * G_IO_ERROR_CANCELLED) or the daemon goes away (FALSE, DISCONNECTED).
 */
gboolean control_follow_events(const char *socket_path, guint timeout_ms,
                               ControlEventFunc func, gpointer opaque,
                               GCancellable *cancellable, GError **err);
