/*
 * loopwait.h - what kept kvm-ftd's main loop waiting
 *
 * The failure detector judges the peer on the main loop, so every
 * synchronous wait there (a QMP command, a libvirt call, a child process)
 * makes it late.  The calls that can wait note how long they took; the
 * longest notes are kept, with what they were, so that a late detector
 * round can name its cause (the log, the control socket's "detector"
 * request and tools/bench stall).  Waits in other threads are not noted:
 * they delay nobody.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

/* Waits shorter than this are not kept: a healthy QMP round trip. */
#define LOOPWAIT_KEEP_MS 5

/* The thread that calls this is the main loop's; call it once, early. */
void loopwait_init(void);

/* g_get_monotonic_time() before a call that can wait. */
gint64 loopwait_begin(void);

/*
 * After the call: what it was ("QMP blockdev-add", "libvirt destroy") and
 * for which guest (NULL: none).  Notes the wait if it ran on the main
 * loop's thread and took at least LOOPWAIT_KEEP_MS.
 */
void loopwait_end(gint64 began_us, const char *what, const char *guest);

/*
 * A call's whole body as one wait: LOOPWAIT_SCOPE("libvirt destroy", name);
 * as the function's first declaration notes it when the function returns.
 */
typedef struct {
    gint64 began_us;
    const char *what;
    const char *guest;
} LoopWaitScope;

void loopwait_scope_end(LoopWaitScope *scope);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(LoopWaitScope, loopwait_scope_end)

#define LOOPWAIT_SCOPE(what, guest) \
    G_GNUC_UNUSED g_auto(LoopWaitScope) loopwait_scope_ = { loopwait_begin(), (what), (guest) }

/*
 * The longest wait that ended after since_us (monotonic), as
 * "WHAT for GUEST (N ms)"; NULL if none was kept.
 */
char *loopwait_longest_since(gint64 since_us);

/*
 * Adds an array of the kept waits that ended at or after since_real_us
 * (wall clock; 0: all), longest first, at most max of them:
 * [{"what", "guest", "ms", "at_ms"}].
 */
void loopwait_add(JsonBuilder *b, gint64 since_real_us, guint max);
