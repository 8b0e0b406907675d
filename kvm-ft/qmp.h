/* qmp.h - QMP client: commands with deadlines, events from the main loop, out-of-band yank */
#pragma once

#include <glib.h>
#include <sys/types.h>
#include <json-glib/json-glib.h>

/*
 * A QEMU whose main loop is stuck (COLO waiting for a dead peer, a BQL
 * deadlock) accepts QMP bytes and never answers, so nothing here ever waits
 * without a deadline: connect, greeting and every command take a timeout in
 * milliseconds, and the socket is only read or written when poll() says so.
 *
 * Not thread-safe: use one Qmp from one thread (the one running the
 * GMainContext it is attached to).
 */
typedef struct Qmp Qmp;

#define QMP_ERROR qmp_error_quark()
GQuark qmp_error_quark(void);

typedef enum {
    /* The deadline passed; QEMU may still execute the command later. */
    QMP_ERROR_TIMEOUT,
    /* The socket failed or QEMU closed it: the engine takes it as QEMU gone. */
    QMP_ERROR_IO,
    /* Unparseable or unexpected JSON, or a request QEMU cannot be sent. */
    QMP_ERROR_PROTOCOL,
    /* QEMU answered with an error; message "COMMAND: CLASS: desc". */
    QMP_ERROR_COMMAND,
} QmpErrorCode;

/*
 * data is the event's "data" object or NULL, valid only during the call
 * (json_object_ref() it to keep it).  timestamp_us is QEMU's wall-clock
 * stamp of the event (seconds * 1e6 + microseconds), or -1 if it had none:
 * checkpoint pauses are measured between STOP and RESUME stamps, which
 * does not depend on how late the daemon got to read them.
 */
typedef void (*QmpEventFunc)(Qmp *q, const char *event, JsonObject *data,
                             gint64 timestamp_us, gpointer opaque);

/*
 * Called once when the connection is lost (EOF or socket error, reason in
 * the QMP_ERROR_IO domain; or an oversized message, QMP_ERROR_PROTOCOL),
 * after all events read before the loss were delivered.  Not called for
 * qmp_free().  The handler may call qmp_free().
 */
typedef void (*QmpClosedFunc)(Qmp *q, const GError *reason, gpointer opaque);

/*
 * Connects to the QMP unix socket, reads the greeting and negotiates
 * capabilities (with "oob" when QEMU offers it), all within timeout_ms.
 * A socket that does not exist yet or refuses connections is retried until
 * the deadline, because QEMU creates it some time after it was spawned;
 * if it never accepts, the error is QMP_ERROR_IO.  A QEMU that accepts but
 * does not greet gives QMP_ERROR_TIMEOUT.
 */
Qmp *qmp_connect(const char *socket_path, guint timeout_ms, GError **err);
/*
 * The same for a QEMU that runs already (a restarted kvm-ftd re-attaching):
 * a socket that is missing or refuses the connection fails at once, for
 * that QEMU is gone (libvirt may not have noticed yet).  *owner is the pid
 * of the process that took the connection, also when it then did not
 * answer (QMP_ERROR_TIMEOUT), or 0.
 */
Qmp *qmp_connect_running(const char *socket_path, guint timeout_ms, pid_t *owner,
                         GError **err);

/*
 * Events and the loss of the connection are only reported through a source
 * attached with qmp_attach().  Events that arrive before then, even during
 * qmp_connect() (QEMU may emit them right after the handshake), are kept
 * for the handler, up to a bound; with event == NULL they are dropped.
 */
void qmp_set_handlers(Qmp *q, QmpEventFunc event, QmpClosedFunc closed,
                      gpointer opaque);

/*
 * Adds a source to ctx (NULL: the default context) that reads events as
 * they arrive and delivers those queued by qmp_call*() afterwards, so
 * handlers never run inside qmp_call*() and may call them.  Attaching again
 * moves the source to the new context.
 */
void qmp_attach(Qmp *q, GMainContext *ctx);

/*
 * Runs command with args (may be NULL; not consumed) and waits at most
 * timeout_ms (> 0) for its reply, polling the socket itself so it works
 * from inside a main loop callback.  Returns the "return" value, owned by
 * the caller, or NULL with err set.  Replies are matched by id, so a late
 * reply to an earlier timed-out command is discarded, not mistaken for
 * this one.  A timeout leaves the connection open.  While QEMU has not
 * answered 6 in-band commands (timed out or not yet due), no more is sent:
 * the call fails at once with QMP_ERROR_TIMEOUT ("not sent"), as QEMU
 * would stop reading its socket, out-of-band commands included, at 8.
 */
JsonNode *qmp_call(Qmp *q, const char *command, JsonObject *args,
                   guint timeout_ms, GError **err);

/*
 * The reply to qmp_call_async(): result is the "return" value (borrowed,
 * valid during the call) or NULL with error: QEMU's answer, the deadline
 * passed (QMP_ERROR_TIMEOUT) or the connection was lost (QMP_ERROR_IO).
 */
typedef void (*QmpReplyFunc)(Qmp *q, JsonNode *result, const GError *error, gpointer opaque);

/*
 * Sends command (args may be NULL; not consumed) and returns at once: a
 * command QEMU takes long to run (an NBD connect in its main loop) must not
 * hold the daemon's.  Exactly one of done and destroy (may be NULL) is
 * called for each call: done with its outcome, from the source attached
 * with qmp_attach() (never inside qmp_call*()), or destroy if qmp_free()
 * comes first.  Replies are delivered in the order they came, before the
 * events read with them.  QEMU runs in-band commands one after the other,
 * so a qmp_call() made meanwhile waits for those sent before it.  FALSE
 * with err, and nothing called, if the connection is lost or too many
 * commands are unanswered (see qmp_call()).
 */
gboolean qmp_call_async(Qmp *q, const char *command, JsonObject *args, guint timeout_ms,
                        QmpReplyFunc done, gpointer opaque, GDestroyNotify destroy,
                        GError **err);

/*
 * Sends command without waiting for its reply, which is dropped when it
 * comes: for a command whose outcome a later query shows.  FALSE with err
 * only if the connection is lost.
 */
gboolean qmp_send(Qmp *q, const char *command, JsonObject *args, GError **err);

/*
 * As qmp_call(), but sent as "exec-oob": QEMU runs it in the monitor's own
 * thread even while its main loop is blocked, which is what makes "yank"
 * of a dead peer's connections possible.  QMP_ERROR_PROTOCOL without
 * sending anything if QEMU did not offer "oob" in its greeting.
 */
JsonNode *qmp_call_oob(Qmp *q, const char *command, JsonObject *args,
                       guint timeout_ms, GError **err);

/*
 * TRUE if err is QEMU's answer with the given error class, e.g.
 * "CommandNotFound" or "DeviceNotFound": lets a caller treat "already
 * gone" as success when undoing a half-done setup.
 */
gboolean qmp_error_is_class(const GError *err, const char *error_class);

/* FALSE once the connection was lost; every call then fails at once. */
gboolean qmp_is_open(Qmp *q);

/* Whether out-of-band execution was negotiated. */
gboolean qmp_has_oob(Qmp *q);

/*
 * The pid of the process at the other end of the socket (QEMU), from the
 * kernel's credentials at connect time; 0 if they could not be read.  What
 * kills a QEMU that hangs and answers nothing.
 */
pid_t qmp_peer_pid(Qmp *q);

/* QEMU's version from the greeting, "major.minor.micro". */
const char *qmp_version(Qmp *q);

/*
 * Closes the connection and drops queued events without reporting them.
 * Safe from inside the event or closed handler.
 */
void qmp_free(Qmp *q);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(Qmp, qmp_free)
