/* test-virt.c - libvirt calls off the main loop (virt_run), on libvirt's test driver */
#include <check.h>
#include <glib.h>

#include "virt.h"
#include "run-suite.h"
#include "wait.h"

typedef struct {
    GThread *ran_in;
    GThread *done_in;
    char *version;
    char *error;
    gint done;
    gint *freed;
    guint sleep_ms;
} Job;

static gboolean version_job(Virt *v, gpointer data, GError **err)
{
    Job *j = data;

    j->ran_in = g_thread_self();
    g_usleep(j->sleep_ms * 1000);
    j->version = virt_qemu_version(v, err);
    return j->version != NULL;
}

static gboolean missing_domain_job(Virt *v, gpointer data, GError **err)
{
    gboolean active;

    (void)data;
    return virt_domain_is_active(v, "no-such-guest", &active, err);
}

static void job_done(gpointer data, const GError *error)
{
    Job *j = data;

    j->done_in = g_thread_self();
    j->error = error ? g_strdup(error->message) : NULL;
    j->done = 1;
}

static void job_free(gpointer data)
{
    Job *j = data;

    if (j->freed)
        (*j->freed)++;
}

static Virt *open_test_driver(void)
{
    g_autoptr(GError) err = NULL;
    Virt *v = virt_open("test:///default", &err);

    ck_assert_msg(v != NULL, "test driver: %s", err ? err->message : "?");
    return v;
}

/* The call runs in the libvirt thread; its answer comes back on the main loop. */
START_TEST(a_job_runs_off_the_loop_and_answers_on_it)
{
    g_autoptr(Virt) v = open_test_driver();
    Job ok = { 0 };
    Job failing = { 0 };

    virt_run(v, version_job, job_done, &ok, NULL);
    virt_run(v, missing_domain_job, job_done, &failing, NULL);
    WAIT_FOR(ok.done && failing.done, 5000);
    ck_assert(ok.done && failing.done);
    ck_assert_ptr_nonnull(ok.version);
    ck_assert_ptr_null(ok.error);
    ck_assert_ptr_ne(ok.ran_in, g_thread_self());
    ck_assert_ptr_eq(ok.done_in, g_thread_self());
    ck_assert_msg(failing.error && strstr(failing.error, "no-such-guest"), "%s",
                  failing.error ? failing.error : "(no error)");
    g_free(ok.version);
    g_free(failing.error);
}
END_TEST

/* The main loop goes on while a call waits. */
START_TEST(the_loop_runs_while_a_job_waits)
{
    g_autoptr(Virt) v = open_test_driver();
    Job slow = { .sleep_ms = 300 };
    gint64 began = g_get_monotonic_time();

    virt_run(v, version_job, job_done, &slow, NULL);
    ck_assert_int_lt(g_get_monotonic_time() - began, 100 * 1000);
    WAIT_FOR(slow.done, 5000);
    ck_assert(slow.done);
    g_free(slow.version);
}
END_TEST

/*
 * The main loop's answer is the version the libvirt thread read (at open,
 * then after each call): the same as libvirt's, without waiting for it.
 */
START_TEST(the_loop_gets_the_version_the_thread_read)
{
    g_autoptr(Virt) v = open_test_driver();
    g_autoptr(GError) err = NULL;
    Job read = { 0 };
    g_autofree char *cached = NULL;

    virt_run(v, version_job, job_done, &read, NULL);
    WAIT_FOR(read.done, 5000);
    ck_assert_ptr_nonnull(read.version);
    cached = virt_qemu_version(v, &err);
    ck_assert_msg(cached != NULL, "%s", err ? err->message : "?");
    ck_assert_str_eq(cached, read.version);
    g_free(read.version);
}
END_TEST

/* Closing waits for the running job; queued ones are freed, never answered. */
START_TEST(close_drops_queued_jobs)
{
    Virt *v = open_test_driver();
    gint freed = 0;
    Job running = { .sleep_ms = 200, .freed = &freed };
    Job queued = { .freed = &freed };

    virt_run(v, version_job, job_done, &running, job_free);
    virt_run(v, version_job, job_done, &queued, job_free);
    g_usleep(50 * 1000);
    virt_close(v);
    WAIT_FOR(FALSE, 100);
    ck_assert_int_eq(running.done, 0);
    ck_assert_int_eq(queued.done, 0);
    ck_assert_int_eq(freed, 2);
    ck_assert_ptr_null(queued.ran_in);
    g_free(running.version);
}
END_TEST

/*
 * A job that ran while the loop that asked did not run: closing frees it
 * and its result, which never arrives (ASan finds it otherwise: the
 * daemon's exit in every lab test).
 */
START_TEST(close_frees_results_not_yet_delivered)
{
    Virt *v = open_test_driver();
    gint freed = 0;
    Job ran = { .freed = &freed };
    Job after = { 0 };

    virt_run(v, version_job, job_done, &ran, job_free);
    /* One thread, in order: once the next job runs, the first one's result is on its way. */
    virt_run(v, version_job, NULL, &after, NULL);
    for (int i = 0; i < 500 && !g_atomic_pointer_get(&after.ran_in); i++)
        g_usleep(10 * 1000);
    ck_assert_ptr_nonnull(after.ran_in);
    virt_close(v);
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq(ran.done, 0);
    g_free(ran.version);
    g_free(after.version);
}
END_TEST

static Suite *virt_suite(void)
{
    Suite *s = suite_create("virt");
    TCase *tc = tcase_create("jobs");

    tcase_add_test(tc, a_job_runs_off_the_loop_and_answers_on_it);
    tcase_add_test(tc, the_loop_runs_while_a_job_waits);
    tcase_add_test(tc, the_loop_gets_the_version_the_thread_read);
    tcase_add_test(tc, close_drops_queued_jobs);
    tcase_add_test(tc, close_frees_results_not_yet_delivered);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(virt_suite());
}
