/* kvm-ftd - the kvm-ft daemon: one per host, protects the guests of that host */
#include <errno.h>
#include <glib-unix.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "config.h"
#include "daemon.h"
#include "log.h"

/*
 * Heartbeats must go out on time even when the host is busy running
 * guests: like corosync, kvm-ftd runs with a real-time priority and keeps
 * its memory resident.  A late heartbeat looks like a dead host.
 */
static void go_realtime(guint priority)
{
    struct sched_param sp = { .sched_priority = (int)priority };

    if (!priority)
        return;
    /* Children (qemu-img) must not inherit it. */
    if (sched_setscheduler(0, SCHED_RR | SCHED_RESET_ON_FORK, &sp) < 0)
        log_warn(NULL, NULL, "cannot run with real-time priority %u: %s; heartbeats "
                 "may be late on a busy host", priority, strerror(errno));
    if (mlockall(MCL_CURRENT | MCL_FUTURE) < 0)
        log_warn(NULL, NULL, "cannot lock kvm-ftd in memory: %s", strerror(errno));
}

static gboolean on_signal(gpointer opaque)
{
    log_info(NULL, NULL, "terminating on signal; running guests stay up");
    daemon_quit(opaque);
    return G_SOURCE_REMOVE;
}

int main(int argc, char **argv)
{
    g_autofree char *config_path = NULL;
    gboolean verbose = FALSE;
    GOptionEntry entries[] = {
        { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path,
          "configuration file (default " CONFIG_DEFAULT_PATH ")", "FILE" },
        { "verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose,
          "log every checkpoint and QMP exchange", NULL },
        { NULL, 0, 0, 0, NULL, NULL, NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- kvm-ft fault-tolerance daemon");
    g_autoptr(GError) err = NULL;
    FtConfig *cfg;
    Daemon *d;

    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(ctx,
        "Runs on each of the two hosts of a pair.  See kvm-ftd.conf(5) in the README\n"
        "for the configuration file, and ftctl(1) to operate it.\n");
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "kvm-ftd: %s\n", err->message);
        return 2;
    }
    log_set_verbose(verbose);

    cfg = config_load(config_path, &err);
    if (!cfg) {
        fprintf(stderr, "kvm-ftd: %s\n", err->message);
        return 1;
    }
    log_set_host(cfg->host_name);
    if (cfg->log_file && !log_open(cfg->log_file, &err)) {
        fprintf(stderr, "kvm-ftd: %s\n", err->message);
        config_free(cfg);
        return 1;
    }

    go_realtime(cfg->rt_priority);
    d = daemon_new(cfg, &err);
    if (!d) {
        log_err(NULL, NULL, "cannot start: %s", err->message);
        fprintf(stderr, "kvm-ftd: %s\n", err->message);
        return 1;
    }
    g_unix_signal_add(SIGTERM, on_signal, d);
    g_unix_signal_add(SIGINT, on_signal, d);
    daemon_run(d);
    daemon_free(d);
    return 0;
}
