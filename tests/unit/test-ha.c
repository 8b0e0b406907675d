/* test-ha.c - the HA level's DRBD side: get-gi, resource names, fence-peer verdicts, drbdadm */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "drbdcmd.h"
#include "ha.h"
#include "run-suite.h"
#include "timeouts.h"
#include "wait.h"

/* ---- get-gi ------------------------------------------------------------------------ */

static char *gen(const char *output)
{
    g_autoptr(GError) err = NULL;
    char *g = ha_generation_from_get_gi(output, &err);

    ck_assert_msg(g, "refused '%s': %s", output, err ? err->message : "?");
    return g;
}

static void gen_refused(const char *output, const char *needle)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *g = ha_generation_from_get_gi(output, &err);

    ck_assert_msg(!g, "'%s' gave %s", output, g);
    ck_assert(g_error_matches(err, HA_ERROR, HA_ERROR_INVALID));
    ck_assert_msg(strstr(err->message, needle), "'%s' lacks '%s'", err->message, needle);
    ck_assert_msg(!strchr(err->message, '\n'), "multi-line: %s", err->message);
}

START_TEST(get_gi_84)
{
    g_autofree char *a = gen("9A3F5B7C1D2E4F60:0000000000000000:B1C2D3E4F5061728:"
                             "0000000000000004:1:1:0:1:0:0:0\n");

    ck_assert_str_eq(a, "9A3F5B7C1D2E4F60");
}
END_TEST

/* A primary's current UUID has its lowest bit set, the secondary's copy not: one claim key. */
START_TEST(get_gi_primary_bit)
{
    g_autofree char *primary = gen("9A3F5B7C1D2E4F61:0000000000000000:0:0:1:1:1:1:0:0:0\n");
    g_autofree char *secondary = gen("9a3f5b7c1d2e4f60:0000000000000000:0:0:1:1:0:1:0:0:0");

    ck_assert_str_eq(primary, "9A3F5B7C1D2E4F60");
    ck_assert_str_eq(secondary, primary);
}
END_TEST

/* DRBD 9: a line per peer, maybe after other text; the first generation line counts. */
START_TEST(get_gi_9)
{
    g_autofree char *a = gen("  \nsome note from drbdadm\n"
                             "  0CAB0DEF12345678:1111111111111110:0:0:1:1:1:1:0:0:0:0:0:0:0:0\n"
                             "0CAB0DEF12345678:2222222222222222:0:0:1:1:1:1:0:0:0:0:0:0:0:0\n");

    ck_assert_str_eq(a, "0CAB0DEF12345678");
}
END_TEST

START_TEST(get_gi_refused)
{
    gen_refused("", "no output");
    gen_refused("'kvmft-web-vda' not defined in your config (for this host).\n",
                "'kvmft-web-vda' not defined");
    /* 15 and 17 digits, no second field, a trailing colon, a stray character */
    gen_refused("9A3F5B7C1D2E4F6:0000000000000000:1\n", "no generation line");
    gen_refused("9A3F5B7C1D2E4F600:0000000000000000:1\n", "no generation line");
    gen_refused("9A3F5B7C1D2E4F60\n", "no generation line");
    gen_refused("9A3F5B7C1D2E4F60:\n", "no generation line");
    gen_refused("9A3F5B7C1D2E4F60:00000000 00000000:1\n", "no generation line");
    /* no data generation yet: nothing to claim */
    gen_refused("0000000000000004:0000000000000000:0:0:0:0:0:0:0:0:0\n", "no data generation");
    gen_refused("0000000000000000:0000000000000000:0:0:0:0:0:0:0:0:0\n", "no data generation");
}
END_TEST

START_TEST(get_gi_output_cut)
{
    g_autofree char *junk = g_strnfill(5000, 'x');
    g_autoptr(GError) err = NULL;
    g_autofree char *g = ha_generation_from_get_gi(junk, &err);

    ck_assert_ptr_null(g);
    ck_assert_uint_lt(strlen(err->message), 400);
    ck_assert_ptr_nonnull(strstr(err->message, "x..."));
}
END_TEST

/* ---- resource names -------------------------------------------------------------------- */

static void guests_are(const char *resource, const char *const *expected)
{
    g_auto(GStrv) got = ha_resource_guests(resource);
    g_autofree char *shown = g_strjoinv(",", got);

    ck_assert_msg(g_strv_equal((const char *const *)got, expected), "%s: %s", resource,
                  shown);
}

START_TEST(resource_guests)
{
    guests_are("kvmft-web-vda", (const char *const[]){ "web", NULL });
    /* guest "my-web" disk "vda", or guest "my" disk "web-vda": longest guest first */
    guests_are("kvmft-my-web-vda", (const char *const[]){ "my-web", "my", NULL });
    guests_are("kvmft-a-b-c-d", (const char *const[]){ "a-b-c", "a-b", "a", NULL });
    /* nothing on one side of a '-' */
    guests_are("kvmft-web-", (const char *const[]){ NULL });
    guests_are("kvmft--vda", (const char *const[]){ NULL });
    guests_are("kvmft-web--vda", (const char *const[]){ "web-", "web", NULL });
    guests_are("kvmft-web", (const char *const[]){ NULL });
    guests_are("kvmft-", (const char *const[]){ NULL });
    guests_are("r0", (const char *const[]){ NULL });
    guests_are("kvmftweb-vda", (const char *const[]){ NULL });
}
END_TEST

START_TEST(handlers_known)
{
    ck_assert(ha_handler_known("fence-peer"));
    ck_assert(ha_handler_known("after-resync-target"));
    ck_assert(ha_handler_known("unfence-peer"));
    ck_assert(ha_handler_known("split-brain"));
    ck_assert(!ha_handler_known("before-resync-target"));
    ck_assert(!ha_handler_known("Fence-peer"));
    ck_assert(!ha_handler_known(""));
    ck_assert(!ha_handler_known(NULL));
}
END_TEST

/* ---- the verdict table --------------------------------------------------------------- */

#define S (G_USEC_PER_SEC)

START_TEST(verdict_pending_then_once)
{
    HaVerdicts *t = ha_verdicts_new();
    HaVerdict v = { 0 };
    guint64 seq;

    ck_assert(!ha_verdicts_take(t, "kvmft-web-vda", 1 * S, &v));
    seq = ha_verdicts_start(t, "kvmft-web-vda", "web");
    /* asked again while the decision is under way: pending, as often as asked */
    for (int i = 0; i < 3; i++) {
        ck_assert(ha_verdicts_take(t, "kvmft-web-vda", 1 * S, &v));
        ck_assert_int_eq(v.kind, HA_VERDICT_PENDING);
        ck_assert_str_eq(v.guest, "web");
        ck_assert_ptr_null(v.reason);
        ha_verdict_clear(&v);
    }
    /* another resource knows nothing of it */
    ck_assert(!ha_verdicts_take(t, "kvmft-web-vdb", 1 * S, &v));
    ck_assert(ha_verdicts_settle(t, "kvmft-web-vda", seq, HA_VERDICT_PEER_FENCED, "won",
                                 "hostA", "9A3F5B7C1D2E4F60", 2 * S));
    /* settled once only */
    ck_assert(!ha_verdicts_settle(t, "kvmft-web-vda", seq, HA_VERDICT_REFUSED, "again", NULL,
                                  NULL, 2 * S));
    ck_assert(ha_verdicts_take(t, "kvmft-web-vda", 2 * S, &v));
    ck_assert_int_eq(v.kind, HA_VERDICT_PEER_FENCED);
    ck_assert_str_eq(v.reason, "won");
    ck_assert_str_eq(v.owner, "hostA");
    ck_assert_str_eq(v.generation, "9A3F5B7C1D2E4F60");
    ck_assert_str_eq(v.guest, "web");
    ha_verdict_clear(&v);
    /* returned once, then forgotten: the next fence-peer decides anew */
    ck_assert(!ha_verdicts_take(t, "kvmft-web-vda", 2 * S, &v));
    ck_assert(!ha_verdicts_settle(t, "kvmft-web-vda", seq, HA_VERDICT_REFUSED, "late", NULL,
                                  NULL, 2 * S));
    ha_verdicts_free(t);
}
END_TEST

/* A verdict nobody came back for does not answer a later fence-peer. */
START_TEST(verdict_expires)
{
    HaVerdicts *t = ha_verdicts_new();
    HaVerdict v = { 0 };
    guint64 seq = ha_verdicts_start(t, "kvmft-web-vda", "web");
    const gint64 keep = (gint64)HA_VERDICT_KEEP_MS * 1000;

    ck_assert(ha_verdicts_settle(t, "kvmft-web-vda", seq, HA_VERDICT_PEER_FENCED, "won",
                                 "hostA", "9A3F5B7C1D2E4F60", 10 * S));
    ck_assert(!ha_verdicts_take(t, "kvmft-web-vda", 10 * S + keep + 1, &v));
    ck_assert(!ha_verdicts_take(t, "kvmft-web-vda", 10 * S + keep + 1, &v));
    /* just within the keep time it is still there */
    seq = ha_verdicts_start(t, "kvmft-web-vda", "web");
    ck_assert(ha_verdicts_settle(t, "kvmft-web-vda", seq, HA_VERDICT_REFUSED, "lost",
                                 "hostB", "9A3F5B7C1D2E4F60", 20 * S));
    ck_assert(ha_verdicts_take(t, "kvmft-web-vda", 20 * S + keep, &v));
    ck_assert_int_eq(v.kind, HA_VERDICT_REFUSED);
    ck_assert_str_eq(v.owner, "hostB");
    ha_verdict_clear(&v);
    ha_verdicts_free(t);
}
END_TEST

/* A decision replaced by a newer one cannot settle the newer one's verdict. */
START_TEST(verdict_stale_decision)
{
    HaVerdicts *t = ha_verdicts_new();
    HaVerdict v = { 0 };
    guint64 old = ha_verdicts_start(t, "kvmft-web-vda", "web");
    guint64 now = ha_verdicts_start(t, "kvmft-web-vda", "web");

    ck_assert_uint_ne(old, now);
    ck_assert(!ha_verdicts_settle(t, "kvmft-web-vda", old, HA_VERDICT_PEER_FENCED, "old",
                                  "hostA", "1111111111111110", 1 * S));
    ck_assert(ha_verdicts_take(t, "kvmft-web-vda", 1 * S, &v));
    ck_assert_int_eq(v.kind, HA_VERDICT_PENDING);
    ha_verdict_clear(&v);
    ck_assert(ha_verdicts_settle(t, "kvmft-web-vda", now, HA_VERDICT_REFUSED, "no witness",
                                 NULL, "2222222222222222", 1 * S));
    ck_assert(ha_verdicts_take(t, "kvmft-web-vda", 1 * S, &v));
    ck_assert_int_eq(v.kind, HA_VERDICT_REFUSED);
    ck_assert_ptr_null(v.owner);
    ck_assert_str_eq(v.generation, "2222222222222222");
    ha_verdict_clear(&v);
    /* verdicts left in the table are freed with it (ASan) */
    ha_verdicts_start(t, "kvmft-web-vdb", "web");
    ha_verdicts_settle(t, "kvmft-web-vdb", ha_verdicts_start(t, "kvmft-db-vda", "db"),
                       HA_VERDICT_REFUSED, "x", NULL, NULL, 1 * S);
    ha_verdicts_free(t);
}
END_TEST

/* ---- running drbdadm ---------------------------------------------------------------- */

static char *tmpdir;
static char *prefix;

/* A command-prefix that plays drbdadm: echo, fail, sleep or die by its arguments. */
static void cmd_setup(void)
{
    g_autoptr(GError) err = NULL;

    tmpdir = g_dir_make_tmp("kvmft-test-ha-XXXXXX", &err);
    ck_assert_msg(tmpdir, "%s", err ? err->message : "?");
    prefix = g_build_filename(tmpdir, "in-node", NULL);
    ck_assert(g_file_set_contents(prefix,
                                  "#!/bin/sh\n"
                                  "[ \"$1\" = drbdadm ] || { echo \"not drbdadm: $1\"; exit 99; }\n"
                                  "shift\n"
                                  "case \"$1\" in\n"
                                  "get-gi) echo \"locale $LC_ALL\" >&2;"
                                  " echo 9A3F5B7C1D2E4F61:0000000000000000:0:0:1:1:1:1:0:0:0;;\n"
                                  "fail) echo \"no such resource: $2\"; exit 10;;\n"
                                  "sleep) exec sleep 30;;\n"
                                  "die) kill -TERM $$;;\n"
                                  "binary) printf 'a\\377b\\n';;\n"
                                  "esac\n",
                                  -1, &err));
    ck_assert_int_eq(g_chmod(prefix, 0755), 0);
}

static void cmd_teardown(void)
{
    g_unlink(prefix);
    g_rmdir(tmpdir);
    g_clear_pointer(&prefix, g_free);
    g_clear_pointer(&tmpdir, g_free);
}

typedef struct {
    gboolean done;
    guint calls;
    int status;
    char *output;
    GError *error;
} Outcome;

static void on_done(int status, const char *output, const GError *error, gpointer opaque)
{
    Outcome *o = opaque;

    o->calls++;
    o->done = TRUE;
    o->status = status;
    o->output = g_strdup(output);
    o->error = error ? g_error_copy(error) : NULL;
}

static void outcome_clear(Outcome *o)
{
    g_free(o->output);
    g_clear_error(&o->error);
}

static void run(DrbdCmd *r, const char *const *args, Outcome *o, guint wait_ms)
{
    drbdcmd_run(r, args, on_done, o);
    /* never from within drbdcmd_run() */
    ck_assert(!o->done);
    WAIT_FOR(o->done, wait_ms);
    ck_assert_msg(o->done, "no outcome within %u ms", wait_ms);
}

START_TEST(cmd_output_and_status)
{
    DrbdCmd *r = drbdcmd_new(prefix, 5000);
    Outcome a = { 0 }, b = { 0 }, c = { 0 };

    run(r, (const char *const[]){ "get-gi", "kvmft-web-vda", NULL }, &a, 5000);
    ck_assert_ptr_null(a.error);
    ck_assert_int_eq(a.status, 0);
    /* stderr merged, in order; LC_ALL=C */
    ck_assert_str_eq(a.output, "locale C\n9A3F5B7C1D2E4F61:0000000000000000:0:0:1:1:1:1:0:0:0\n");
    run(r, (const char *const[]){ "fail", "kvmft-web-vda", NULL }, &b, 5000);
    ck_assert_ptr_null(b.error);
    ck_assert_int_eq(b.status, 10);
    ck_assert_str_eq(b.output, "no such resource: kvmft-web-vda\n");
    run(r, (const char *const[]){ "binary", NULL }, &c, 5000);
    ck_assert_int_eq(c.status, 0);
    ck_assert(g_utf8_validate(c.output, -1, NULL));
    ck_assert_uint_eq(a.calls + b.calls + c.calls, 3);
    outcome_clear(&a);
    outcome_clear(&b);
    outcome_clear(&c);
    drbdcmd_free(r);
}
END_TEST

START_TEST(cmd_timeout)
{
    DrbdCmd *r = drbdcmd_new(prefix, 300);
    Outcome o = { 0 };
    gint64 t0 = g_get_monotonic_time();

    run(r, (const char *const[]){ "sleep", NULL }, &o, 5000);
    ck_assert_msg(g_error_matches(o.error, DRBDCMD_ERROR, DRBDCMD_ERROR_TIMEOUT), "%s",
                  o.error ? o.error->message : "no error");
    ck_assert_int_eq(o.status, -1);
    ck_assert_ptr_null(o.output);
    ck_assert_ptr_nonnull(strstr(o.error->message, "drbdadm sleep: still running after 300 ms"));
    ck_assert_int_lt(g_get_monotonic_time() - t0, 3 * G_USEC_PER_SEC);
    outcome_clear(&o);
    drbdcmd_free(r);
}
END_TEST

START_TEST(cmd_signal)
{
    DrbdCmd *r = drbdcmd_new(prefix, 5000);
    Outcome o = { 0 };

    run(r, (const char *const[]){ "die", NULL }, &o, 5000);
    ck_assert_msg(g_error_matches(o.error, DRBDCMD_ERROR, DRBDCMD_ERROR_SIGNAL), "%s",
                  o.error ? o.error->message : "no error");
    ck_assert_ptr_nonnull(strstr(o.error->message, "signal 15"));
    outcome_clear(&o);
    drbdcmd_free(r);
}
END_TEST

START_TEST(cmd_cannot_start)
{
    DrbdCmd *r = drbdcmd_new("/nonexistent/in-node", 5000);
    Outcome o = { 0 };

    run(r, (const char *const[]){ "get-gi", "r0", NULL }, &o, 5000);
    ck_assert(g_error_matches(o.error, DRBDCMD_ERROR, DRBDCMD_ERROR_SPAWN));
    ck_assert_ptr_nonnull(strstr(o.error->message,
                                 "/nonexistent/in-node drbdadm get-gi r0: cannot start it"));
    outcome_clear(&o);
    drbdcmd_free(r);
}
END_TEST

/* Freed with commands running or not yet reported: each callback runs once, at once. */
START_TEST(cmd_free_while_running)
{
    DrbdCmd *r = drbdcmd_new(prefix, 30000);
    DrbdCmd *bad = drbdcmd_new("/nonexistent/in-node", 5000);
    Outcome a = { 0 }, b = { 0 };
    gint64 t0 = g_get_monotonic_time();

    drbdcmd_run(r, (const char *const[]){ "sleep", NULL }, on_done, &a);
    drbdcmd_run(bad, (const char *const[]){ "get-gi", NULL }, on_done, &b);
    drbdcmd_free(r);
    drbdcmd_free(bad);
    ck_assert_uint_eq(a.calls, 1);
    ck_assert_uint_eq(b.calls, 1);
    ck_assert(g_error_matches(a.error, DRBDCMD_ERROR, DRBDCMD_ERROR_SHUTDOWN));
    ck_assert(g_error_matches(b.error, DRBDCMD_ERROR, DRBDCMD_ERROR_SHUTDOWN));
    ck_assert_int_lt(g_get_monotonic_time() - t0, (HA_DRBD_DRAIN_MS + 1000) * 1000);
    /* nothing comes later */
    WAIT_FOR(FALSE, 200);
    ck_assert_uint_eq(a.calls, 1);
    ck_assert_uint_eq(b.calls, 1);
    outcome_clear(&a);
    outcome_clear(&b);
}
END_TEST

static Suite *ha_suite(void)
{
    Suite *s = suite_create("ha");
    TCase *tc = tcase_create("pure");

    tcase_add_test(tc, get_gi_84);
    tcase_add_test(tc, get_gi_primary_bit);
    tcase_add_test(tc, get_gi_9);
    tcase_add_test(tc, get_gi_refused);
    tcase_add_test(tc, get_gi_output_cut);
    tcase_add_test(tc, resource_guests);
    tcase_add_test(tc, handlers_known);
    tcase_add_test(tc, verdict_pending_then_once);
    tcase_add_test(tc, verdict_expires);
    tcase_add_test(tc, verdict_stale_decision);
    suite_add_tcase(s, tc);

    tc = tcase_create("drbdadm");
    tcase_add_checked_fixture(tc, cmd_setup, cmd_teardown);
    tcase_add_test(tc, cmd_output_and_status);
    tcase_add_test(tc, cmd_timeout);
    tcase_add_test(tc, cmd_signal);
    tcase_add_test(tc, cmd_cannot_start);
    tcase_add_test(tc, cmd_free_while_running);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(ha_suite());
}
