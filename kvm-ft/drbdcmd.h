/*
 * drbdcmd.h - running drbdadm for kvm-ftd, without blocking its main loop
 *
 * Each command runs as `drbdadm ARGS...`, or `PREFIX drbdadm ARGS...` when
 * kvm-ftd.conf sets [drbd] command-prefix (an executable that runs the
 * command elsewhere, e.g. in the lab's DRBD node).  Its output (stdout and
 * stderr, merged) is captured; a command still running after the
 * runner's timeout is killed.  LC_ALL=C, stdin /dev/null.
 */
#pragma once

#include <glib.h>

#define DRBDCMD_ERROR drbdcmd_error_quark()
GQuark drbdcmd_error_quark(void);

typedef enum {
    DRBDCMD_ERROR_SPAWN,    /* it could not be started */
    DRBDCMD_ERROR_TIMEOUT,  /* it ran too long and was killed */
    DRBDCMD_ERROR_SIGNAL,   /* it died of a signal */
    DRBDCMD_ERROR_SHUTDOWN, /* the runner was freed first */
    DRBDCMD_ERROR_IO,       /* its output could not be read */
} DrbdcmdError;

typedef struct DrbdCmd DrbdCmd;

/*
 * The command's outcome, exactly once, from the main loop (never from
 * within drbdcmd_run()): its exit status and output (valid UTF-8, maybe
 * empty), or, when it did not exit by itself, status -1, output NULL and
 * error (DRBDCMD_ERROR, one line naming the command).
 */
typedef void (*DrbdCmdFunc)(int status, const char *output, const GError *error,
                            gpointer opaque);

/* prefix: an executable, or NULL for drbdadm itself; timeout_ms per command. */
DrbdCmd *drbdcmd_new(const char *prefix, guint timeout_ms);

/*
 * Commands still running are killed and their callbacks run at once with
 * DRBDCMD_ERROR_SHUTDOWN; then up to HA_DRBD_DRAIN_MS of the main loop let
 * the processes be collected.
 */
void drbdcmd_free(DrbdCmd *r);

/* drbdadm args... (NULL-terminated), on the default main context. */
void drbdcmd_run(DrbdCmd *r, const char *const *args, DrbdCmdFunc cb, gpointer opaque);
