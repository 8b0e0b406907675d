/* log.h - operator-facing log lines: one line per event, with guest, role and reason */
#pragma once

#include <glib.h>

typedef enum {
    LOG_ERR,
    LOG_WARN,
    LOG_INFO,
    LOG_DEBUG,
} LogLevel;

/* Where lines go: stderr by default; a file when the daemon is given one. */
gboolean log_open(const char *path, GError **err);
void log_set_verbose(gboolean verbose);
void log_set_host(const char *host);

/*
 * guest and role may be NULL for daemon-wide events.  Every line carries a
 * wall-clock timestamp with milliseconds, because operators correlate
 * failover events across the two hosts by time.
 */
void log_msg(LogLevel level, const char *guest, const char *role,
             const char *fmt, ...) G_GNUC_PRINTF(4, 5);

#define log_err(g, r, ...)   log_msg(LOG_ERR, (g), (r), __VA_ARGS__)
#define log_warn(g, r, ...)  log_msg(LOG_WARN, (g), (r), __VA_ARGS__)
#define log_info(g, r, ...)  log_msg(LOG_INFO, (g), (r), __VA_ARGS__)
#define log_debug(g, r, ...) log_msg(LOG_DEBUG, (g), (r), __VA_ARGS__)
