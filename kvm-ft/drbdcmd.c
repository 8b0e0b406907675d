/* drbdcmd.c - running drbdadm for kvm-ftd, without blocking its main loop */
#include "drbdcmd.h"

#include <gio/gio.h>

#include "timeouts.h"

G_DEFINE_QUARK(kvmft-drbdcmd-error-quark, drbdcmd_error)

typedef struct Job Job;

struct DrbdCmd {
    char *prefix;     /* NULL: drbdadm itself */
    guint timeout_ms;
    GPtrArray *jobs;  /* Job *, running or waiting to report a spawn failure */
};

struct Job {
    DrbdCmd *r;         /* NULL once the runner is gone (the process outlived its drain) */
    char *shown;        /* the command line, for messages */
    GSubprocess *proc;  /* NULL: it could not be started (error) */
    GError *error;
    GCancellable *cancel;
    guint timer;        /* the timeout, or the idle that reports a spawn failure */
    gboolean timed_out;
    DrbdCmdFunc cb;     /* NULL once it ran */
    gpointer opaque;
};

static void job_free(Job *j)
{
    if (j->timer)
        g_source_remove(j->timer);
    g_free(j->shown);
    g_clear_object(&j->proc);
    g_clear_error(&j->error);
    g_clear_object(&j->cancel);
    g_free(j);
}

static void report(Job *j, int status, const char *output, const GError *error)
{
    DrbdCmdFunc cb = j->cb;

    j->cb = NULL;
    if (cb)
        cb(status, output, error, j->opaque);
}

/* Reports (unless done already), leaves the runner and frees the job. */
static void finish(Job *j, int status, const char *output, const GError *error)
{
    if (j->r)
        g_ptr_array_remove(j->r->jobs, j);
    report(j, status, output, error);
    job_free(j);
}

static gboolean spawn_failed(gpointer opaque)
{
    Job *j = opaque;

    j->timer = 0;
    finish(j, -1, NULL, j->error);
    return G_SOURCE_REMOVE;
}

static gboolean timed_out(gpointer opaque)
{
    Job *j = opaque;

    j->timer = 0;
    j->timed_out = TRUE;
    /* Cancelling only stops reading; the process itself must go too. */
    g_subprocess_force_exit(j->proc);
    g_cancellable_cancel(j->cancel);
    return G_SOURCE_REMOVE;
}

static void on_communicated(GObject *source, GAsyncResult *res, gpointer opaque)
{
    Job *j = opaque;
    g_autoptr(GBytes) out = NULL;
    g_autoptr(GError) e = NULL;
    g_autoptr(GError) error = NULL;
    g_autofree char *text = NULL;
    int status = -1;

    if (!g_subprocess_communicate_finish(G_SUBPROCESS(source), res, &out, NULL, &e)) {
        if (j->timed_out)
            error = g_error_new(DRBDCMD_ERROR, DRBDCMD_ERROR_TIMEOUT, "%s: still running "
                                "after %u ms: killed", j->shown, j->r ? j->r->timeout_ms : 0);
        else if (!j->r || g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CANCELLED))
            error = g_error_new(DRBDCMD_ERROR, DRBDCMD_ERROR_SHUTDOWN, "%s: kvm-ftd is "
                                "shutting down", j->shown);
        else
            error = g_error_new(DRBDCMD_ERROR, DRBDCMD_ERROR_IO, "%s: cannot read its "
                                "output: %s", j->shown, e->message);
    } else if (!g_subprocess_get_if_exited(G_SUBPROCESS(source))) {
        error = g_error_new(DRBDCMD_ERROR, j->timed_out ? DRBDCMD_ERROR_TIMEOUT
                                                        : DRBDCMD_ERROR_SIGNAL,
                            "%s: killed by signal %d%s", j->shown,
                            g_subprocess_get_term_sig(G_SUBPROCESS(source)),
                            j->timed_out ? " after running too long" : "");
    } else {
        gsize len = 0;
        const char *data = g_bytes_get_data(out, &len);

        status = g_subprocess_get_exit_status(G_SUBPROCESS(source));
        text = g_utf8_make_valid(data ? data : "", (gssize)len);
    }
    finish(j, status, error ? NULL : text, error);
}

DrbdCmd *drbdcmd_new(const char *prefix, guint timeout_ms)
{
    DrbdCmd *r = g_new0(DrbdCmd, 1);

    r->prefix = g_strdup(prefix);
    r->timeout_ms = timeout_ms;
    r->jobs = g_ptr_array_new();
    return r;
}

void drbdcmd_run(DrbdCmd *r, const char *const *args, DrbdCmdFunc cb, gpointer opaque)
{
    g_autoptr(GSubprocessLauncher) launcher =
        g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                  G_SUBPROCESS_FLAGS_STDERR_MERGE);
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    Job *j = g_new0(Job, 1);

    if (r->prefix)
        g_ptr_array_add(argv, r->prefix);
    g_ptr_array_add(argv, (gpointer)"drbdadm");
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, (gpointer)args[i]);
    g_ptr_array_add(argv, NULL);
    j->r = r;
    j->shown = g_strjoinv(" ", (char **)argv->pdata);
    j->cb = cb;
    j->opaque = opaque;
    g_ptr_array_add(r->jobs, j);
    /* drbdadm's messages are read by people, but get-gi's output by this program. */
    g_subprocess_launcher_setenv(launcher, "LC_ALL", "C", TRUE);
    j->proc = g_subprocess_launcher_spawnv(launcher, (const char *const *)argv->pdata,
                                           &j->error);
    if (!j->proc) {
        g_prefix_error(&j->error, "%s: cannot start it: ", j->shown);
        j->error->domain = DRBDCMD_ERROR;
        j->error->code = DRBDCMD_ERROR_SPAWN;
        j->timer = g_idle_add(spawn_failed, j);
        return;
    }
    j->cancel = g_cancellable_new();
    j->timer = g_timeout_add(r->timeout_ms, timed_out, j);
    g_subprocess_communicate_async(j->proc, NULL, j->cancel, on_communicated, j);
}

static gboolean drain_over(gpointer opaque)
{
    gboolean *over = opaque;

    *over = TRUE;
    return G_SOURCE_REMOVE;
}

void drbdcmd_free(DrbdCmd *r)
{
    gboolean over = FALSE;
    guint deadline;

    if (!r)
        return;
    for (guint i = 0; i < r->jobs->len; i++) {
        Job *j = g_ptr_array_index(r->jobs, i);
        g_autoptr(GError) e = g_error_new(DRBDCMD_ERROR, DRBDCMD_ERROR_SHUTDOWN,
                                          "%s: kvm-ftd is shutting down", j->shown);

        report(j, -1, NULL, e);
        if (j->proc) {
            g_source_remove(j->timer);
            j->timer = 0;
            g_subprocess_force_exit(j->proc);
            g_cancellable_cancel(j->cancel);
        }
    }
    /* The cancelled reads come back from the main loop: let them, so that nothing is left. */
    deadline = g_timeout_add(HA_DRBD_DRAIN_MS, drain_over, &over);
    while (r->jobs->len && !over) {
        Job *j = g_ptr_array_index(r->jobs, 0);

        if (!j->proc) {
            finish(j, -1, NULL, NULL);
            continue;
        }
        g_main_context_iteration(NULL, TRUE);
    }
    if (!over)
        g_source_remove(deadline);
    /* Any still out there free themselves if the loop ever runs again. */
    for (guint i = 0; i < r->jobs->len; i++)
        ((Job *)g_ptr_array_index(r->jobs, i))->r = NULL;
    g_ptr_array_unref(r->jobs);
    g_free(r->prefix);
    g_free(r);
}
