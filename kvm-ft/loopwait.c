/* loopwait.c - what kept kvm-ftd's main loop waiting */
#include "loopwait.h"

/* Enough for minutes of a busy re-protection. */
#define LOOPWAIT_KEPT 512

typedef struct {
    char *what;
    char *guest;
    double ms;
    gint64 ended_us;      /* monotonic */
    gint64 ended_real_us; /* wall clock, for "since" */
} LoopWait;

static GThread *main_thread;
static LoopWait kept[LOOPWAIT_KEPT];
static guint next;

void loopwait_init(void)
{
    main_thread = g_thread_self();
}

gint64 loopwait_begin(void)
{
    return g_get_monotonic_time();
}

void loopwait_end(gint64 began_us, const char *what, const char *guest)
{
    gint64 now = g_get_monotonic_time();
    LoopWait *w;

    if (g_thread_self() != main_thread || now - began_us < LOOPWAIT_KEEP_MS * 1000)
        return;
    w = &kept[next++ % LOOPWAIT_KEPT];
    g_free(w->what);
    g_free(w->guest);
    w->what = g_strdup(what);
    w->guest = g_strdup(guest);
    w->ms = (double)(now - began_us) / 1000.0;
    w->ended_us = now;
    w->ended_real_us = g_get_real_time();
}

void loopwait_scope_end(LoopWaitScope *scope)
{
    loopwait_end(scope->began_us, scope->what, scope->guest);
}

char *loopwait_longest_since(gint64 since_us)
{
    const LoopWait *best = NULL;

    for (guint i = 0; i < LOOPWAIT_KEPT; i++) {
        if (kept[i].what && kept[i].ended_us >= since_us && (!best || kept[i].ms > best->ms))
            best = &kept[i];
    }
    if (!best)
        return NULL;
    return g_strdup_printf("%s%s%s (%.0f ms)", best->what, best->guest ? " for " : "",
                           best->guest ? best->guest : "", best->ms);
}

static gint longer_first(gconstpointer a, gconstpointer b)
{
    const LoopWait *x = *(const LoopWait *const *)a, *y = *(const LoopWait *const *)b;

    return (x->ms < y->ms) - (x->ms > y->ms);
}

void loopwait_add(JsonBuilder *b, gint64 since_real_us, guint max)
{
    g_autoptr(GPtrArray) found = g_ptr_array_new();

    for (guint i = 0; i < LOOPWAIT_KEPT; i++) {
        if (kept[i].what && kept[i].ended_real_us >= since_real_us)
            g_ptr_array_add(found, &kept[i]);
    }
    g_ptr_array_sort(found, longer_first);
    json_builder_begin_array(b);
    for (guint i = 0; i < found->len && i < max; i++) {
        const LoopWait *w = g_ptr_array_index(found, i);

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "what");
        json_builder_add_string_value(b, w->what);
        json_builder_set_member_name(b, "guest");
        if (w->guest)
            json_builder_add_string_value(b, w->guest);
        else
            json_builder_add_null_value(b);
        json_builder_set_member_name(b, "ms");
        json_builder_add_double_value(b, w->ms);
        json_builder_set_member_name(b, "at_ms");
        json_builder_add_int_value(b, w->ended_real_us / 1000);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
}
