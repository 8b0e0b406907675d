/* log.c - operator-facing log lines */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static FILE *log_stream;
static gboolean log_verbose;
static char *log_host;

static const char *const level_names[] = {
    [LOG_ERR] = "error",
    [LOG_WARN] = "warning",
    [LOG_INFO] = "info",
    [LOG_DEBUG] = "debug",
};

gboolean log_open(const char *path, GError **err)
{
    FILE *f = fopen(path, "a");

    if (!f) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot open log file %s: %s", path, g_strerror(errno));
        return FALSE;
    }
    setvbuf(f, NULL, _IOLBF, 0);
    if (log_stream && log_stream != stderr)
        fclose(log_stream);
    log_stream = f;
    return TRUE;
}

void log_set_verbose(gboolean verbose)
{
    log_verbose = verbose;
}

void log_set_host(const char *host)
{
    g_free(log_host);
    log_host = g_strdup(host);
}

void log_msg(LogLevel level, const char *guest, const char *role,
             const char *fmt, ...)
{
    g_autoptr(GDateTime) now = g_date_time_new_now_local();
    g_autofree char *stamp = NULL;
    g_autofree char *text = NULL;
    FILE *out = log_stream ? log_stream : stderr;
    va_list ap;

    if (level == LOG_DEBUG && !log_verbose)
        return;

    va_start(ap, fmt);
    text = g_strdup_vprintf(fmt, ap);
    va_end(ap);

    stamp = g_date_time_format(now, "%Y-%m-%d %H:%M:%S.%f");
    /* %f gives microseconds; milliseconds are what operators read. */
    stamp[strlen(stamp) - 3] = '\0';

    fprintf(out, "%s %s kvm-ftd[%s]%s%s%s%s: %s\n", stamp, level_names[level],
            log_host ? log_host : "-",
            guest ? " guest=" : "", guest ? guest : "",
            role ? " role=" : "", role ? role : "", text);
    fflush(out);
}
