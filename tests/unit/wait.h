/* wait.h - unit tests: running the default main context until something happens */
#pragma once

#include <glib.h>

/* Wakes the loop every few ms, so that cond is looked at even when nothing else stirs. */
static inline gboolean wait_wake_cb(gpointer data)
{
    (void)data;
    return G_SOURCE_CONTINUE;
}

/* Runs the default main context until cond holds or ms pass. */
#define WAIT_FOR(cond, ms)                                                     \
    do {                                                                       \
        gint64 end_ = g_get_monotonic_time() + (gint64)(ms) * 1000;            \
        guint w_ = g_timeout_add(5, wait_wake_cb, NULL);                       \
        while (!(cond) && g_get_monotonic_time() < end_)                       \
            g_main_context_iteration(NULL, TRUE);                              \
        g_source_remove(w_);                                                   \
    } while (0)
