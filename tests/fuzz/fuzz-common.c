/* fuzz-common.c - what every libFuzzer harness of kvm-ft's parsers shares */
#include "fuzz-common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static char *tmpdir;

static GLogWriterOutput quiet_writer(GLogLevelFlags level, const GLogField *fields,
                                     gsize n_fields, gpointer data)
{
    if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL)) {
        g_log_writer_standard_streams(level, fields, n_fields, data);
        abort();
    }
    return G_LOG_WRITER_HANDLED;
}

/*
 * GLib's slice allocator (2.74) keeps blocks in magazines of its own, where
 * LeakSanitizer sees neither a leak nor a free: with G_SLICE=always-malloc
 * a leaked GLib or json-glib object is found.  GLib reads it when it is
 * loaded, before this runs, so the harness starts itself again with it.
 */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *slice = getenv("G_SLICE");

    (void)argc;
    if (!slice || strcmp(slice, "always-malloc") != 0) {
        setenv("G_SLICE", "always-malloc", 1);
        execv("/proc/self/exe", *argv);
        fprintf(stderr, "fuzz: cannot start again with G_SLICE=always-malloc: %s\n",
                g_strerror(errno));
        abort();
    }
    return 0;
}

void fuzz_init(void)
{
    static gboolean done;

    if (done)
        return;
    done = TRUE;
    if (g_getenv("KVMFT_FUZZ_LOG"))
        return;
    g_log_set_writer_func(quiet_writer, NULL, NULL);
    /* Still formatted, as in the daemon: a bad argument to a log line is a finding. */
    if (!log_open("/dev/null", NULL))
        abort();
}

static void remove_tmpdir(void)
{
    GDir *dir;
    const char *name;

    if (!tmpdir)
        return;
    dir = g_dir_open(tmpdir, 0, NULL);
    while (dir && (name = g_dir_read_name(dir))) {
        g_autofree char *path = g_build_filename(tmpdir, name, NULL);

        if (unlink(path) < 0)
            rmdir(path);
    }
    if (dir)
        g_dir_close(dir);
    rmdir(tmpdir);
    g_clear_pointer(&tmpdir, g_free);
}

const char *fuzz_tmpdir(void)
{
    if (!tmpdir) {
        g_autoptr(GError) e = NULL;

        tmpdir = g_dir_make_tmp("kvmft-fuzz-XXXXXX", &e);
        if (!tmpdir) {
            fprintf(stderr, "fuzz: cannot create a temporary directory: %s\n", e->message);
            abort();
        }
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

void fuzz_write_file(const char *path, const void *data, size_t size)
{
    const char *p = data;
    int fd;

    g_assert(g_str_has_prefix(path, fuzz_tmpdir()));
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, g_strerror(errno));
        abort();
    }
    while (size > 0) {
        ssize_t n = write(fd, p, size);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "fuzz: cannot write %s: %s\n", path, g_strerror(errno));
            abort();
        }
        p += n;
        size -= (size_t)n;
    }
    close(fd);
}

void fuzz_drain_context(GMainContext *ctx)
{
    while (g_main_context_iteration(ctx, FALSE))
        ;
}
