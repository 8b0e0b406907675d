/* ftctl.c - the operator's command line for kvm-ftd */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib.h>
#include <json-glib/json-glib.h>

#include "control.h"
#include "diskcompare.h"
#include "drbdres.h"
#include "ftdef.h"
#include "status.h"

enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,        /* the daemon said no, or the guest reports an error */
    EXIT_USAGE = 2,
    EXIT_UNREACHABLE = 3,   /* no daemon on the socket */
    EXIT_TIMEOUT = 4,       /* the daemon did not answer in time */
};

#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_PROTECT_TIMEOUT_S 180
#define DEFAULT_SWITCH_TIMEOUT_S 600    /* failover, migrate */
/* While waiting, the guest's status is read at least this often (events may be missed
 * while ftctl is not subscribed). */
#define RECHECK_US (5 * G_USEC_PER_SEC)
/* Progress not on a terminal: a line at most this often. */
#define PROGRESS_PLAIN_EVERY_US (5 * G_USEC_PER_SEC)

#define EXIT_CODES_HELP \
    "Exit status:\n" \
    "  0  success\n" \
    "  1  the operation failed (kvm-ftd refused it, the guest reports an error,\n" \
    "     or protect, failover or migrate did not complete within --timeout-s)\n" \
    "  2  usage error\n" \
    "  3  kvm-ftd is unreachable (not running, no socket, no permission)\n" \
    "  4  kvm-ftd did not answer within --timeout\n"

static char *opt_socket;
static gint opt_timeout_ms = DEFAULT_TIMEOUT_MS;

static const GOptionEntry global_entries[] = {
    { "socket", 's', 0, G_OPTION_ARG_FILENAME, &opt_socket,
      "kvm-ftd's control socket (default: $KVMFT_SOCKET, else " CONTROL_DEFAULT_SOCKET ")",
      "PATH" },
    { "timeout", 't', 0, G_OPTION_ARG_INT, &opt_timeout_ms,
      "Wait at most MS for each answer from kvm-ftd (default 10000)", "MS" },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

/* ------------------------------------------------------------------ */
/* output                                                             */

/* A progress line: rewritten in place on a terminal, else a plain line now and then. */
static struct {
    int tty;            /* stdout is a terminal; -1: not asked yet */
    gsize shown;        /* length of the progress line on the terminal; 0: none */
    gint64 printed_us;  /* when the last plain progress line was printed */
} progress = { -1, 0, 0 };

static gboolean stdout_is_tty(void)
{
    if (progress.tty < 0)
        progress.tty = isatty(STDOUT_FILENO);
    return progress.tty;
}

/* Ends a progress line left on the terminal, so that the next line starts afresh. */
static void progress_break(void)
{
    if (progress.shown) {
        fputc('\n', stdout);
        fflush(stdout);
        progress.shown = 0;
    }
}

static void progress_show(const char *line)
{
    gsize len = strlen(line);
    gint64 now = g_get_monotonic_time();

    if (stdout_is_tty()) {
        /* Blanks cover the rest of a longer previous line. */
        printf("\r%s%*s", line, (int)(progress.shown > len ? progress.shown - len : 0), "");
        progress.shown = len;
    } else if (!progress.printed_us || now - progress.printed_us >= PROGRESS_PLAIN_EVERY_US) {
        printf("%s\n", line);
        progress.printed_us = now;
    }
    fflush(stdout);
}

/* A line of results on stdout. */
static G_GNUC_PRINTF(1, 2) void say(const char *fmt, ...)
{
    va_list ap;

    progress_break();
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static G_GNUC_PRINTF(1, 2) void msg(const char *fmt, ...)
{
    va_list ap;

    progress_break();
    fputs("ftctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

typedef struct {
    const char *name;
    const char *params;
    const char *brief;          /* one line, for "ftctl --help" */
    const char *summary;        /* for "ftctl COMMAND --help" */
    const GOptionEntry *entries;
    int min_args;
    int max_args;
    int (*run)(char **args);
    int wait_s;                 /* default of its --timeout-s; 0: no such option */
} Command;

static G_GNUC_PRINTF(2, 3) int usage_error(const Command *cmd, const char *fmt, ...)
{
    va_list ap;

    fputs("ftctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'ftctl %s%s--help'.\n", cmd ? cmd->name : "", cmd ? " " : "");
    return EXIT_USAGE;
}

static const Command *find_command(const char *name);

static int exit_code_for(const GError *e)
{
    if (e->domain == CONTROL_ERROR) {
        switch ((ControlError)e->code) {
        case CONTROL_ERROR_UNREACHABLE:
        case CONTROL_ERROR_DISCONNECTED:
            return EXIT_UNREACHABLE;
        case CONTROL_ERROR_TIMEOUT:
            return EXIT_TIMEOUT;
        case CONTROL_ERROR_FAILED:
        case CONTROL_ERROR_PROTOCOL:
        case CONTROL_ERROR_SOCKET:
            break;
        }
    }
    return EXIT_FAILED;
}

static int fail(const GError *e)
{
    msg("%s", e->message);
    return exit_code_for(e);
}

static const char *socket_path(void)
{
    const char *env = g_getenv("KVMFT_SOCKET");

    if (opt_socket && *opt_socket)
        return opt_socket;
    return env && *env ? env : CONTROL_DEFAULT_SOCKET;
}

static JsonObject *new_request(const char *command, const char *guest)
{
    JsonObject *req = json_object_new();

    json_object_set_string_member(req, "command", command);
    if (guest)
        json_object_set_string_member(req, "guest", guest);
    return req;
}

static JsonNode *request(const char *command, const char *guest, GError **err)
{
    g_autoptr(JsonObject) req = new_request(command, guest);

    return control_request(socket_path(), req, (guint)opt_timeout_ms, err);
}

static JsonNode *member(JsonObject *o, const char *key)
{
    return o ? json_object_get_member(o, key) : NULL;
}

static const char *member_str(JsonObject *o, const char *key)
{
    JsonNode *n = member(o, key);

    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
        return NULL;
    return json_node_get_string(n);
}

static JsonObject *member_obj(JsonObject *o, const char *key)
{
    JsonNode *n = member(o, key);

    return n && JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;
}

static gboolean member_num(JsonObject *o, const char *key, double *out)
{
    JsonNode *n = member(o, key);

    if (!n || !JSON_NODE_HOLDS_VALUE(n))
        return FALSE;
    switch (json_node_get_value_type(n)) {
    case G_TYPE_INT64:
        *out = (double)json_node_get_int(n);
        return TRUE;
    case G_TYPE_DOUBLE:
        *out = json_node_get_double(n);
        return TRUE;
    default:
        return FALSE;
    }
}

static const char *or_unknown(const char *s)
{
    return s && *s ? s : "?";
}

/* The guests array of a list/status result: {"guests": [...]} or a bare array. */
static JsonArray *result_guests(JsonNode *result)
{
    JsonNode *n = result;

    if (result && JSON_NODE_HOLDS_OBJECT(result))
        n = json_object_get_member(json_node_get_object(result), "guests");
    return n && JSON_NODE_HOLDS_ARRAY(n) ? json_node_get_array(n) : NULL;
}

static const char *result_host(JsonNode *result)
{
    if (!result || !JSON_NODE_HOLDS_OBJECT(result))
        return NULL;
    return member_str(json_node_get_object(result), "host");
}

static JsonObject *find_guest(JsonArray *guests, const char *name)
{
    for (guint i = 0; guests && i < json_array_get_length(guests); i++) {
        JsonNode *n = json_array_get_element(guests, i);
        JsonObject *g = JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;

        if (g && g_strcmp0(member_str(g, "name"), name) == 0)
            return g;
    }
    return NULL;
}

static char *format_ms(double ms)
{
    gint64 s;

    if (ms < 1000)
        return g_strdup_printf("%.0f ms", ms);
    if (ms < 60 * 1000)
        return g_strdup_printf("%.1f s", ms / 1000);
    s = (gint64)(ms / 1000);
    if (s < 3600)
        return g_strdup_printf("%" G_GINT64_FORMAT " min %" G_GINT64_FORMAT " s",
                               s / 60, s % 60);
    return g_strdup_printf("%" G_GINT64_FORMAT " h %" G_GINT64_FORMAT " min",
                           s / 3600, (s / 60) % 60);
}

/* "20.0 MiB" (g_format_size() puts a no-break space before the unit: keep to ASCII). */
static char *format_bytes(double bytes)
{
    static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
    guint u = 0;

    if (bytes < 1024)
        return g_strdup_printf("%.0f bytes", MAX(bytes, 0));
    bytes /= 1024;
    while (bytes >= 1024 && u + 1 < G_N_ELEMENTS(units)) {
        bytes /= 1024;
        u++;
    }
    return g_strdup_printf("%.1f %s", bytes, units[u]);
}

/* "8.3 MiB/s", or "no limit" for 0 or null. */
static char *format_rate(JsonObject *o, const char *key, const char *none)
{
    g_autofree char *size = NULL;
    double rate;

    if (!member_num(o, key, &rate) || rate <= 0)
        return g_strdup(none);
    size = format_bytes(rate);
    return g_strdup_printf("%s/s", size);
}

/* "12.0 MiB of 20.0 MiB, 8.3 MiB/s, ETA 1 s": a progress event's or status's "resync". */
static char *format_progress(JsonObject *p)
{
    double done = 0, total = 0, eta;
    g_autofree char *d = NULL, *t = NULL, *rate = NULL, *left = NULL;

    member_num(p, "bytes_done", &done);
    member_num(p, "bytes_total", &total);
    d = format_bytes(done);
    t = format_bytes(total);
    rate = format_rate(p, "rate_bytes_per_s", "rate not known yet");
    if (!member_num(p, "eta_s", &eta))
        left = g_strdup("?");
    else
        left = eta < 60 ? g_strdup_printf("%.0f s", eta) : format_ms(eta * 1000);
    return g_strdup_printf("%s of %s, %s, ETA %s", d, t, rate, left);
}

/* "web1: resync (incremental) 12.0 MiB of 20.0 MiB, 8.3 MiB/s, ETA 1 s" */
static void show_progress(const char *guest, JsonObject *p)
{
    const char *phase = member_str(p, "phase");
    g_autofree char *amounts = format_progress(p);
    g_autofree char *line = g_strdup_printf("%s: %s (%s) %s", guest, phase ? phase : "resync",
                                            or_unknown(member_str(p, "mode")), amounts);

    progress_show(line);
}

/* ------------------------------------------------------------------ */
/* commands                                                           */

static gboolean opt_json;
static gboolean opt_no_wait;
static gboolean opt_started;
static gboolean opt_force;
static gboolean opt_repair;
static gint opt_wait_s;           /* --timeout-s; its default is the command's */

static int cmd_list(char **args)
{
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonNode) result = request("list", NULL, &e);
    JsonArray *guests;
    int wname = 0, wrole = 0;
    guint n;

    (void)args;
    if (!result)
        return fail(e);
    guests = result_guests(result);
    if (!guests) {
        msg("kvm-ftd sent a list without guests");
        return EXIT_FAILED;
    }
    n = json_array_get_length(guests);
    for (int pass = 0; pass < 2; pass++) {
        for (guint i = 0; i < n; i++) {
            JsonNode *node = json_array_get_element(guests, i);
            JsonObject *g = JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
            const char *name = or_unknown(member_str(g, "name"));
            const char *role = or_unknown(member_str(g, "role"));
            const char *state = or_unknown(member_str(g, "state"));
            const char *error = member_str(g, "error");

            if (pass == 0) {
                wname = MAX(wname, (int)strlen(name));
                wrole = MAX(wrole, (int)strlen(role));
            } else {
                printf("%-*s  %-*s  %s%s%s\n", wname, name, wrole, role, state,
                       error ? ": " : "", error ? error : "");
            }
        }
    }
    return EXIT_OK;
}

/* The disk copy to a new secondary under way, and the last one. */
static void print_resync(JsonObject *g)
{
    JsonObject *now = member_obj(g, "resync");
    JsonObject *last = member_obj(g, "last_resync");
    double disk = 0, moved = 0, seconds = 0;

    if (now) {
        g_autofree char *amounts = format_progress(now);
        g_autofree char *size = NULL;

        member_num(now, "disk_bytes", &disk);
        size = format_bytes(disk);
        printf("  resync:          %s, %s (disks: %s)\n", or_unknown(member_str(now, "mode")),
               amounts, size);
    }
    if (last) {
        g_autofree char *m = NULL, *size = NULL;
        g_autofree char *limit = format_rate(last, "rate_limit_bytes_per_s", "no limit");

        member_num(last, "disk_bytes", &disk);
        member_num(last, "bytes_moved", &moved);
        member_num(last, "seconds", &seconds);
        m = format_bytes(moved);
        size = format_bytes(disk);
        printf("  last resync:     %s, %s of %s copied in %.1f s (rate limit: %s)\n",
               or_unknown(member_str(last, "mode")), m, size, seconds, limit);
    }
}

/* The last ftctl verify's findings. */
static void print_verify(JsonObject *g)
{
    JsonObject *last = member_obj(g, "last_verify");
    double differing = 0;
    g_autofree char *diff = NULL;

    if (!last)
        return;
    member_num(last, "differing_bytes", &differing);
    diff = format_bytes(differing);
    if (differing > 0)
        printf("  last verify:     %s: the copies DIFFER in %s (where: ftctl status --json)\n",
               or_unknown(member_str(last, "at")), diff);
    else
        printf("  last verify:     %s: identical\n", or_unknown(member_str(last, "at")));
}

static void print_guest(JsonObject *g, const char *host)
{
    JsonObject *peer = member_obj(g, "peer");
    JsonObject *colo = member_obj(g, "colo");
    const char *error = member_str(g, "error");
    JsonNode *connected = member(peer, "connected");
    double v;

    printf("%s\n", or_unknown(member_str(g, "name")));
    printf("  role:            %s (on %s)\n", or_unknown(member_str(g, "role")),
           or_unknown(host));
    printf("  state:           %s\n", or_unknown(member_str(g, "state")));
    /* Nothing runs or was prepared for a refused guest: only why matters. */
    if (g_strcmp0(member_str(g, "state"), STATUS_REFUSED) == 0) {
        printf("  refused because: %s\n", error ? error : "?");
        return;
    }
    if (peer) {
        const char *c = "link state unknown";

        if (connected && JSON_NODE_HOLDS_VALUE(connected) &&
            json_node_get_value_type(connected) == G_TYPE_BOOLEAN)
            c = json_node_get_boolean(connected) ? "connected" : "NOT connected";
        printf("  peer:            %s, %s\n", or_unknown(member_str(peer, "host")), c);
        if (member_str(peer, "link"))
            printf("  paths:           dedicated link %s, LAN %s\n", member_str(peer, "link"),
                   or_unknown(member_str(peer, "lan")));
    } else {
        printf("  peer:            -\n");
    }
    if (colo) {
        const char *reason = member_str(colo, "reason");

        printf("  COLO mode:       %s%s%s%s\n", or_unknown(member_str(colo, "mode")),
               reason ? " (reason: " : "", reason ? reason : "", reason ? ")" : "");
    } else {
        printf("  COLO mode:       - (not replicating)\n");
    }
    if (member_str(g, "qmp"))
        printf("  QEMU (QMP):      %s\n", member_str(g, "qmp"));
    if (colo && json_object_has_member(g, "replication_tls"))
        printf("  link channels:   %s\n",
               json_object_get_boolean_member_with_default(g, "replication_tls", FALSE)
                   ? "TLS (pre-shared key)" : "in clear ([replication] tls = no)");
    if (member_num(g, "checkpoint_interval_ms", &v))
        printf("  interval:        %.0f ms\n", v);
    if (member_str(g, "output_mode"))
        printf("  output:          %s\n", member_str(g, "output_mode"));
    if (member_num(g, "compare_timeout_ms", &v))
        printf("  compare timeout: %.0f ms (a reply waiting longer forces a checkpoint)\n", v);
    if (member_num(g, "checkpoints", &v)) {
        JsonNode *cn = json_object_get_member(g, "checkpoints_by_cause");
        JsonObject *co = cn && JSON_NODE_HOLDS_OBJECT(cn) ? json_node_get_object(cn) : NULL;
        double periodic, forced, difference, missing;

        if (co && member_num(co, "periodic", &periodic) && member_num(co, "forced", &forced) &&
            member_num(co, "difference", &difference) &&
            member_num(co, "missing_counterpart", &missing))
            printf("  checkpoints:     %.0f (periodic %.0f, forced by output %.0f: "
                   "colo-compare counted %.0f for a difference, %.0f for a reply "
                   "without the secondary's copy)\n", v, periodic, forced, difference, missing);
        else if (co && member_num(co, "periodic", &periodic) && member_num(co, "forced", &forced))
            printf("  checkpoints:     %.0f (periodic %.0f, forced by output %.0f)\n", v,
                   periodic, forced);
        else
            printf("  checkpoints:     %.0f\n", v);
    } else
        printf("  checkpoints:     -\n");
    if (member_num(g, "last_pause_ms", &v))
        printf("  last pause:      %.1f ms\n", v);
    else
        printf("  last pause:      -\n");
    {
        JsonObject *pauses = NULL;
        JsonNode *pn = json_object_get_member(g, "pause_ms");

        if (pn && JSON_NODE_HOLDS_OBJECT(pn))
            pauses = json_node_get_object(pn);
        if (pauses) {
            double p50 = 0, p99 = 0, max = 0, n = 0;

            member_num(pauses, "p50", &p50);
            member_num(pauses, "p99", &p99);
            member_num(pauses, "max", &max);
            member_num(pauses, "count", &n);
            printf("  pauses:          p50 %.1f ms, p99 %.1f ms, max %.1f ms (last %.0f)\n",
                   p50, p99, max, n);
        }
    }
    if (member_num(g, "since_last_checkpoint_ms", &v)) {
        g_autofree char *ago = format_ms(v);

        printf("  last checkpoint: %s ago\n", ago);
    } else {
        printf("  last checkpoint: -\n");
    }
    print_resync(g);
    print_verify(g);
    {
        JsonNode *fn = json_object_get_member(g, "last_failover");

        if (fn && JSON_NODE_HOLDS_OBJECT(fn)) {
            JsonObject *fo = json_node_get_object(fn);
            double took = 0;

            double claim = 0;

            member_num(fo, "took_ms", &took);
            printf("  last failover:   %s, %.1f ms: %s\n", or_unknown(member_str(fo, "at")),
                   took, or_unknown(member_str(fo, "reason")));
            if (member_num(fo, "claim_ms", &claim))
                printf("  witness claim:   won %.1f ms into it\n", claim);
        } else {
            printf("  last failover:   none\n");
        }
    }
    {
        JsonObject *held = member_obj(g, "held");
        double since = 0;

        if (held) {
            member_num(held, "since_ms", &since);
            printf("  HELD:            for %.1f s, not running alone: %s (`ftctl takeover %s "
                   "--force` decides instead)\n", since / 1000,
                   or_unknown(member_str(held, "why")), or_unknown(member_str(g, "name")));
        }
    }
    printf("  last error:      %s\n", error ? error : "none");
}

/* How late kvm-ftd's failure detector ran: its main loop's stalls. */
static void print_detector(JsonObject *det)
{
    JsonObject *late = member_obj(det, "late_ms");
    double interval, rounds, skipped, p50, p99, max;

    if (!late || !member_num(det, "interval_ms", &interval) ||
        !member_num(det, "rounds", &rounds) || !member_num(det, "skipped", &skipped) ||
        !member_num(late, "p50", &p50) || !member_num(late, "p99", &p99) ||
        !member_num(late, "max", &max))
        return;
    printf("\nfailure detector: every %.0f ms, %.0f rounds (%.0f skipped: kvm-ftd stopped); "
           "late by p50 %.1f, p99 %.1f, max %.1f ms\n", interval, rounds, skipped, p50, p99,
           max);
}

static int cmd_status(char **args)
{
    const char *guest = args[0];
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonNode) result = request("status", guest, &e);
    const char *host;
    JsonArray *guests;
    guint shown = 0;

    if (!result)
        return fail(e);
    if (opt_json) {
        g_autofree char *text = json_to_string(result, TRUE);

        printf("%s\n", text);
        return EXIT_OK;
    }
    host = result_host(result);
    guests = result_guests(result);
    if (!guests) {
        msg("kvm-ftd sent a status without guests");
        return EXIT_FAILED;
    }
    for (guint i = 0; i < json_array_get_length(guests); i++) {
        JsonNode *n = json_array_get_element(guests, i);
        JsonObject *g = JSON_NODE_HOLDS_OBJECT(n) ? json_node_get_object(n) : NULL;

        if (!g || (guest && g_strcmp0(member_str(g, "name"), guest) != 0))
            continue;
        if (shown++)
            printf("\n");
        print_guest(g, host);
    }
    if (guest && !shown) {
        msg("%s: no such guest on %s", guest, or_unknown(host));
        return EXIT_FAILED;
    }
    if (!shown)
        printf("%s: no fault-tolerant guests\n", or_unknown(host));
    if (!guest) {
        JsonObject *witness = member_obj(json_node_get_object(result), "witness");

        print_detector(member_obj(json_node_get_object(result), "detector"));
        if (witness && member_str(witness, "error"))
            printf("%s\n", member_str(witness, "error"));
        else if (witness)
            printf("witness: reachable\n");
        else
            printf("witness: none configured: a full partition runs both copies\n");
    }
    return EXIT_OK;
}

static int cmd_takeover(char **args)
{
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonObject) req = new_request("takeover", args[0]);
    g_autoptr(JsonNode) result = NULL;

    if (opt_force)
        json_object_set_boolean_member(req, "force", TRUE);
    result = control_request(socket_path(), req, (guint)opt_timeout_ms, &e);
    if (!result)
        return fail(e);
    say("%s: runs alone on this host, on an operator's word", args[0]);
    return EXIT_OK;
}

/* ---- verify: the two copies of the guest's disks ------------------ */

typedef struct {
    const char *target;
    DiskCompare c;
} VerifyDisk;

static void verify_progress(const char *target, const DiskCompare *c, gpointer opaque)
{
    g_autofree char *done = format_bytes((double)c->done);
    g_autofree char *all = format_bytes((double)c->bytes);
    g_autofree char *diff = format_bytes((double)c->differing);
    g_autofree char *line = g_strdup_printf(
        "verify %s: %s of %s (%.0f%%), %s differ", target, done, all,
        c->bytes ? 100.0 * (double)c->done / (double)c->bytes : 100.0,
        c->differing ? diff : "none");

    (void)opaque;
    progress_show(line);
}

static void add_disk_result(JsonBuilder *b, const VerifyDisk *v)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "target");
    json_builder_add_string_value(b, v->target);
    disk_compare_add_json(b, &v->c);
    json_builder_end_object(b);
}

static void say_disk_result(const VerifyDisk *v)
{
    const DiskCompare *c = &v->c;
    g_autofree char *size = format_bytes((double)c->bytes);
    g_autofree char *diff = format_bytes((double)c->differing);
    g_autoptr(GString) where = g_string_new(NULL);
    guint64 listed = 0;

    if (!c->differing) {
        say("%s: %s compared: identical", v->target, size);
        return;
    }
    for (guint i = 0; i + 1 < c->ranges->len; i += 2) {
        g_string_append_printf(where, " %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT,
                               g_array_index(c->ranges, guint64, i),
                               g_array_index(c->ranges, guint64, i + 1));
        listed += g_array_index(c->ranges, guint64, i + 1);
    }
    say("%s: %s compared: %s DIFFER, at (offset+bytes)%s%s", v->target, size, diff, where->str,
        listed < c->differing ? " ..." : "");
}

/* Tells kvm-ftd the verify is over: its findings, or why there are none. */
static gboolean verify_end(const char *guest, JsonNode *result, const char *error, GError **err)
{
    g_autoptr(JsonObject) req = new_request("verify-end", guest);
    g_autoptr(JsonNode) status = NULL;

    if (result)
        json_object_set_member(req, "result", json_node_copy(result));
    if (error)
        json_object_set_string_member(req, "error", error);
    status = control_request(socket_path(), req, (guint)opt_timeout_ms, err);
    return status != NULL;
}

/* ---- waiting for a guest's state ---------------------------------- */

/*
 * The guest's status is the truth; kvm-ftd's events wake ftctl up at once
 * and show each transition and a disk copy's progress.  The status is read
 * again whenever the events say the wait is over, and at least every
 * RECHECK_US, which also covers events sent while ftctl was not subscribed.
 */

typedef struct {
    const char *what;         /* the goal, for messages: "protected" */
    const char *state;        /* the state waited for ... */
    const char *role;         /* ... in this role on this host (NULL: any) */
    const char *give_up[3];   /* states that end the wait as a failure */
    gboolean error_fails;     /* so does an "error" in the status */
} Goal;

/* protect: as before events, any error reported ends it. */
static const Goal goal_protected = { "protected", "protected", NULL, { NULL }, TRUE };

/* migrate, before the switch: this primary may still be re-protecting the guest. */
static const Goal goal_protected_primary = {
    "protected", "protected", "primary", { "failed", "stopped", NULL }, FALSE
};

/* failover: the peer runs the guest and re-protects it onto this host. */
static const Goal goal_reprotected = {
    "protected again with this host as its secondary", "protected", "secondary",
    { "failed", NULL }, FALSE
};

typedef struct {
    const char *guest;
    const Goal *goal;
    char *host;               /* this host, from the status */
    char *state;              /* the last state seen ... */
    char *role;               /* ... and role */
    char *failure;            /* why the wait failed, or NULL */
} Watch;

/* "hostA: web1: resyncing (primary) - REASON" */
static void print_state(const Watch *w, const char *role, const char *state,
                        const char *reason)
{
    g_autoptr(GString) line = g_string_new(NULL);

    g_string_printf(line, "%s: %s: %s", or_unknown(w->host), w->guest, state);
    if (role && strcmp(role, "none") != 0)
        g_string_append_printf(line, " (%s)", role);
    if (reason && *reason)
        g_string_append_printf(line, " - %s", reason);
    say("%s", line->str);
}

static void watch_fail(Watch *w, const char *why)
{
    if (!w->failure)
        w->failure = g_strdup(why);
}

/* A state seen in an event or the status: printed when it changed, then judged. */
static void watch_saw(Watch *w, const char *role, const char *state, const char *reason)
{
    if (g_strcmp0(state, w->state) != 0 || g_strcmp0(role, w->role) != 0) {
        print_state(w, role, state, reason);
        g_free(w->state);
        w->state = g_strdup(state);
        g_free(w->role);
        w->role = g_strdup(role);
    }
    for (guint i = 0; w->goal->give_up[i]; i++)
        if (strcmp(state, w->goal->give_up[i]) == 0)
            watch_fail(w, reason && *reason ? reason : state);
}

static gboolean watch_reached(const Watch *w)
{
    return g_strcmp0(w->state, w->goal->state) == 0 &&
           (!w->goal->role || g_strcmp0(w->role, w->goal->role) == 0);
}

static gboolean watch_over(const Watch *w)
{
    return watch_reached(w) || w->failure;
}

/* FALSE with err only if kvm-ftd does not answer. */
static gboolean watch_poll(Watch *w, GError **err)
{
    g_autoptr(JsonNode) result = request("status", w->guest, err);
    JsonObject *g;
    const char *error;

    if (!result)
        return FALSE;
    g_free(w->host);
    w->host = g_strdup(result_host(result));
    g = find_guest(result_guests(result), w->guest);
    if (!g) {
        g_autofree char *why = g_strdup_printf("no longer known to kvm-ftd on %s",
                                               or_unknown(w->host));

        watch_fail(w, why);
        return TRUE;
    }
    watch_saw(w, member_str(g, "role"), or_unknown(member_str(g, "state")), NULL);
    error = member_str(g, "error");
    if (error && w->goal->error_fails)
        watch_fail(w, error);
    if (member_obj(g, "resync") && !watch_over(w))
        show_progress(w->guest, member_obj(g, "resync"));
    return TRUE;
}

static gboolean watch_event(JsonNode *event, gpointer opaque)
{
    Watch *w = opaque;
    JsonObject *ev = JSON_NODE_HOLDS_OBJECT(event) ? json_node_get_object(event) : NULL;
    JsonObject *p = member_obj(ev, "progress");

    if (g_strcmp0(member_str(ev, "guest"), w->guest) != 0)
        return TRUE;
    if (p)
        show_progress(w->guest, p);
    else if (member_str(ev, "to"))
        watch_saw(w, member_str(ev, "role"), member_str(ev, "to"), member_str(ev, "reason"));
    return !watch_over(w);
}

/* Cancels a blocking call at a given time (on a thread of its own). */
typedef struct {
    GMutex lock;
    GCond cond;
    gboolean stop;
    gint64 until;             /* monotonic */
    GCancellable *cancellable;
} Alarm;

static gpointer alarm_run(gpointer opaque)
{
    Alarm *a = opaque;

    g_mutex_lock(&a->lock);
    while (!a->stop && g_cond_wait_until(&a->cond, &a->lock, a->until))
        ;
    if (!a->stop)
        g_cancellable_cancel(a->cancellable);
    g_mutex_unlock(&a->lock);
    return NULL;
}

/*
 * Follow kvm-ftd's events with func until it returns FALSE or the
 * monotonic time until comes (both TRUE); FALSE with err if kvm-ftd
 * cannot be followed.
 */
static gboolean follow_until(ControlEventFunc func, gpointer opaque, gint64 until,
                             GError **err)
{
    g_autoptr(GCancellable) cancellable = g_cancellable_new();
    g_autoptr(GError) e = NULL;
    Alarm alarm = { .until = until, .cancellable = cancellable };
    GThread *thread;
    gboolean ok;

    g_mutex_init(&alarm.lock);
    g_cond_init(&alarm.cond);
    thread = g_thread_new("ftctl-alarm", alarm_run, &alarm);
    ok = control_follow_events(socket_path(), (guint)opt_timeout_ms, func, opaque,
                               cancellable, &e);
    g_mutex_lock(&alarm.lock);
    alarm.stop = TRUE;
    g_cond_signal(&alarm.cond);
    g_mutex_unlock(&alarm.lock);
    g_thread_join(thread);
    g_cond_clear(&alarm.cond);
    g_mutex_clear(&alarm.lock);
    if (ok || g_error_matches(e, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        return TRUE;
    g_propagate_error(err, g_steal_pointer(&e));
    return FALSE;
}

static int watch_run(Watch *w, gint64 deadline)
{
    for (;;) {
        g_autoptr(GError) e = NULL;
        gint64 now;

        if (!watch_poll(w, &e))
            return fail(e);
        if (watch_reached(w)) {
            progress_break();
            return EXIT_OK;
        }
        if (w->failure) {
            msg("%s: %s", w->guest, w->failure);
            return EXIT_FAILED;
        }
        now = g_get_monotonic_time();
        if (now >= deadline) {
            msg("%s: not %s after %d s (state: %s)", w->guest, w->goal->what, opt_wait_s,
                or_unknown(w->state));
            return EXIT_FAILED;
        }
        if (!follow_until(watch_event, w, MIN(deadline, now + RECHECK_US), &e))
            return fail(e);
    }
}

/*
 * Print GUEST's state at each change, and a disk copy's progress, until it
 * reaches goal (EXIT_OK), fails, or the monotonic deadline passes.
 */
static int wait_for(const char *guest, const Goal *goal, gint64 deadline)
{
    Watch w = { .guest = guest, .goal = goal };
    int rc = watch_run(&w, deadline);

    g_free(w.host);
    g_free(w.state);
    g_free(w.role);
    g_free(w.failure);
    return rc;
}

/* The end of --timeout-s from now. */
static gint64 wait_deadline(void)
{
    return g_get_monotonic_time() + (gint64)opt_wait_s * G_USEC_PER_SEC;
}

/* ---- commands that wait ------------------------------------------- */

/* One pass over the disks: EXIT_OK with *differ set, or the failure's exit code. */
static int verify_once(const char *guest, gboolean *differ)
{
    g_autoptr(GError) e = NULL;
    g_autoptr(GError) end_err = NULL;
    g_autoptr(JsonNode) exports = request("verify-begin", guest, &e);
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(JsonNode) result = NULL;
    JsonNode *dn = exports && JSON_NODE_HOLDS_OBJECT(exports)
                       ? json_object_get_member(json_node_get_object(exports), "disks")
                       : NULL;
    JsonArray *disks = dn && JSON_NODE_HOLDS_ARRAY(dn) ? json_node_get_array(dn) : NULL;
    guint n = disks ? json_array_get_length(disks) : 0;
    g_autofree VerifyDisk *v = g_new0(VerifyDisk, MAX(n, 1));
    gboolean ok = TRUE;

    *differ = FALSE;
    if (!exports)
        return fail(e);
    if (!disks) {
        g_set_error(&e, CONTROL_ERROR, CONTROL_ERROR_PROTOCOL, "verify-begin: no disks");
        ok = FALSE;
    }
    for (guint i = 0; ok && i < n; i++) {
        JsonObject *d = json_array_get_object_element(disks, i);

        v[i].target = member_str(d, "target");
        if (!v[i].target || !member_str(d, "primary") || !member_str(d, "secondary")) {
            g_set_error(&e, CONTROL_ERROR, CONTROL_ERROR_PROTOCOL, "verify-begin: a disk "
                        "without target or addresses");
            ok = FALSE;
            break;
        }
        ok = disk_compare(v[i].target, member_str(d, "primary"), member_str(d, "secondary"),
                          verify_progress, NULL, &v[i].c, &e);
    }
    if (ok) {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "disks");
        json_builder_begin_array(b);
        for (guint i = 0; i < n; i++)
            add_disk_result(b, &v[i]);
        json_builder_end_array(b);
        json_builder_end_object(b);
        result = json_builder_get_root(b);
    }
    for (guint i = 0; i < n; i++) {
        if (ok)
            say_disk_result(&v[i]);
        *differ |= v[i].c.differing > 0;
        disk_compare_clear(&v[i].c);
    }
    if (!verify_end(guest, result, ok ? NULL : e->message, &end_err))
        msg("kvm-ftd did not take the verify's end: %s", end_err->message);
    return ok ? EXIT_OK : fail(e);
}

static int cmd_verify(char **args)
{
    const char *guest = args[0];
    gint64 deadline = wait_deadline();
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonNode) dropped = NULL;
    gboolean differ = FALSE;
    int rc = verify_once(guest, &differ);

    if (rc != EXIT_OK || !differ)
        return rc;
    if (!opt_repair)
        return EXIT_FAILED;
    dropped = request("verify-repair", guest, &e);
    if (!dropped)
        return fail(e);
    say("%s: repairing: the secondary is dropped and its disks copied whole again", guest);
    rc = wait_for(guest, &goal_protected_primary, deadline);
    if (rc != EXIT_OK)
        return rc;
    rc = verify_once(guest, &differ);
    if (rc == EXIT_OK && differ)
        msg("%s: the copies still differ after the repair", guest);
    return rc == EXIT_OK && differ ? EXIT_FAILED : rc;
}


static int cmd_protect(char **args)
{
    const char *guest = args[0];
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonObject) req = new_request("protect", guest);
    g_autoptr(JsonNode) ack = NULL;

    if (opt_started)
        json_object_set_boolean_member(req, "started", TRUE);
    ack = control_request(socket_path(), req, (guint)opt_timeout_ms, &e);
    if (!ack)
        return fail(e);
    if (opt_no_wait)
        return EXIT_OK;
    return wait_for(guest, &goal_protected, wait_deadline());
}

/*
 * The planned switch: this protected primary hands GUEST over to the
 * peer, which takes over and re-protects it onto this host.
 */
static int hand_over(const char *guest, gint64 deadline)
{
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonNode) ack = request("failover", guest, &e);
    JsonObject *g;
    const char *peer;
    int rc;

    if (!ack)
        return fail(e);
    g = JSON_NODE_HOLDS_OBJECT(ack) ? json_node_get_object(ack) : NULL;
    peer = or_unknown(member_str(member_obj(g, "peer"), "host"));
    say("%s: handing over to %s; waiting until %s has re-protected it onto this host",
        guest, peer, peer);
    rc = wait_for(guest, &goal_reprotected, deadline);
    if (rc == EXIT_OK)
        say("%s now runs on %s; this host is its secondary (protected)", guest, peer);
    return rc;
}

static int cmd_failover(char **args)
{
    return hand_over(args[0], wait_deadline());
}

/* Whether this host's copy of the guest runs, in whatever role and protection. */
static gboolean copy_runs(JsonObject *g)
{
    static const char *const not_running[] = { "stopped", "failed", STATUS_REFUSED };
    const char *state = member_str(g, "state");

    for (gsize i = 0; i < G_N_ELEMENTS(not_running); i++)
        if (g_strcmp0(state, not_running[i]) == 0)
            return FALSE;
    return state != NULL;
}

/* The host that runs GUEST as its primary, as far as this host knows; NULL: unknown. */
static const char *primary_host(JsonObject *g, const char *host, const char *peer)
{
    const char *role = member_str(g, "role");

    if (!copy_runs(g))
        return NULL;
    if (g_strcmp0(role, "primary") == 0)
        return host;
    return g_strcmp0(role, "secondary") == 0 ? peer : NULL;
}

static int cmd_migrate(char **args)
{
    const char *guest = args[0], *target = args[1];
    gint64 deadline = wait_deadline();
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonNode) result = request("status", guest, &e);
    const char *host, *peer, *runs_on;
    JsonObject *g;
    int rc;

    if (!result)
        return fail(e);
    host = or_unknown(result_host(result));
    g = find_guest(result_guests(result), guest);
    peer = member_str(member_obj(g, "peer"), "host");
    if (!g || !peer) {
        msg("%s: %s on %s", guest, g ? "its pair of hosts is not known" : "no such guest",
            host);
        return EXIT_FAILED;
    }
    if (strcmp(target, host) != 0 && strcmp(target, peer) != 0)
        return usage_error(find_command("migrate"), "%s is not one of %s's hosts: %s, %s",
                           target, guest, host, peer);
    runs_on = primary_host(g, host, peer);
    if (g_strcmp0(runs_on, target) == 0) {
        say("%s already runs on %s", guest, target);
        return EXIT_OK;
    }
    if (g_strcmp0(runs_on, host) != 0) {
        msg("run ftctl migrate on the host that runs %s (%s)", guest, peer);
        return EXIT_FAILED;
    }
    rc = wait_for(guest, &goal_protected_primary, deadline);
    return rc == EXIT_OK ? hand_over(guest, deadline) : rc;
}

static gboolean print_event(JsonNode *event, gpointer opaque)
{
    JsonObject *ev = JSON_NODE_HOLDS_OBJECT(event) ? json_node_get_object(event) : NULL;
    JsonObject *p = member_obj(ev, "progress");
    g_autofree char *text = NULL;

    (void)opaque;
    /* A person watching: a disk copy's progress (about once a second) rewrites one line. */
    if (p && stdout_is_tty()) {
        show_progress(or_unknown(member_str(ev, "guest")), p);
        return TRUE;
    }
    text = json_to_string(event, FALSE);
    say("%s", text);
    return TRUE;
}

static int cmd_events(char **args)
{
    g_autoptr(GError) e = NULL;

    (void)args;
    if (!control_follow_events(socket_path(), (guint)opt_timeout_ms, print_event, NULL,
                               NULL, &e))
        return fail(e);
    return EXIT_OK;
}

static char *opt_drbd_version;
static char *opt_out_dir;
static char *opt_handler;

/* --drbd-version, else what /proc/drbd says. */
static gboolean drbd_syntax(DrbdSyntax *syntax, GError **err)
{
    g_autofree char *proc = NULL;

    if (opt_drbd_version)
        return drbdres_syntax_from_name(opt_drbd_version, syntax, err);
    if (!g_file_test(DRBDRES_PROC_DRBD, G_FILE_TEST_EXISTS)) {
        g_set_error(err, DRBDRES_ERROR, DRBDRES_ERROR_INVALID, "no --drbd-version, and "
                    "no %s (the drbd module is not loaded here): give --drbd-version 8.4 "
                    "or 9", DRBDRES_PROC_DRBD);
        return FALSE;
    }
    return g_file_get_contents(DRBDRES_PROC_DRBD, &proc, NULL, err) &&
           drbdres_syntax_from_proc(proc, syntax, err);
}

/* Each resource file into the directory; each file whole or not at all. */
static int write_resources(GPtrArray *names, GPtrArray *texts)
{
    if (!g_file_test(opt_out_dir, G_FILE_TEST_IS_DIR)) {
        msg("--out %s: not a directory", opt_out_dir);
        return EXIT_FAILED;
    }
    for (guint i = 0; i < names->len; i++) {
        g_autofree char *file = g_strconcat(g_ptr_array_index(names, i), ".res", NULL);
        g_autofree char *path = g_build_filename(opt_out_dir, file, NULL);
        g_autoptr(GError) e = NULL;

        /* A temporary file renamed over the old one: DRBD never reads half of it. */
        if (!g_file_set_contents_full(path, g_ptr_array_index(texts, i), -1,
                                      G_FILE_SET_CONTENTS_CONSISTENT, 0644, &e)) {
            msg("%s", e->message);
            return EXIT_FAILED;
        }
        say("wrote %s", path);
    }
    return EXIT_OK;
}

static int cmd_drbd_config(char **args)
{
    g_autoptr(GError) e = NULL;
    g_autofree char *xml = NULL;
    g_autoptr(FtDef) def = NULL;
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) texts = g_ptr_array_new_with_free_func(g_free);
    const char *handler = opt_handler ? opt_handler : DRBDRES_DEFAULT_HANDLER;
    DrbdSyntax syntax;
    gsize len;

    if (!drbd_syntax(&syntax, &e))
        return opt_drbd_version || !g_file_test(DRBDRES_PROC_DRBD, G_FILE_TEST_EXISTS)
                   ? usage_error(find_command("drbd-config"), "%s", e->message)
                   : fail(e);
    if (!g_file_get_contents(args[0], &xml, &len, &e))
        return fail(e);
    if (memchr(xml, '\0', len)) {
        msg("%s: has a NUL byte; it is not a domain XML file", args[0]);
        return EXIT_FAILED;
    }
    def = ftdef_parse(xml, &e);
    if (!def) {
        msg("%s: %s", args[0], e->message);
        return EXIT_FAILED;
    }
    if (def->level != FTDEF_LEVEL_HA) {
        msg("%s: guest '%s' has protection level %s: kvm-ftd replicates its disks, not "
            "DRBD; drbd-config is for guests with <ft:protection level='ha'/>", args[0],
            def->name, ftdef_level_name(def->level));
        return EXIT_FAILED;
    }
    /* All of them first: a disk that cannot have its file changes nothing. */
    for (guint i = 0; i < def->disks->len; i++) {
        char *text = drbdres_generate(def, i, syntax, handler, &e);

        if (!text) {
            msg("%s: %s", args[0], e->message);
            return EXIT_FAILED;
        }
        g_ptr_array_add(texts, text);
        g_ptr_array_add(names, drbdres_resource_name(def, i));
    }
    if (opt_out_dir)
        return write_resources(names, texts);
    for (guint i = 0; i < texts->len; i++)
        printf("%s%s", i ? "\n" : "", (const char *)g_ptr_array_index(texts, i));
    fflush(stdout);
    return EXIT_OK;
}

static const GOptionEntry status_entries[] = {
    { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json,
      "Print kvm-ftd's status result as JSON", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const GOptionEntry protect_entries[] = {
    { "no-wait", 'n', 0, G_OPTION_ARG_NONE, &opt_no_wait,
      "Return once kvm-ftd accepted the request", NULL },
    { "timeout-s", 0, 0, G_OPTION_ARG_INT, &opt_wait_s,
      "Give up waiting for \"protected\" after N seconds (default "
      G_STRINGIFY(DEFAULT_PROTECT_TIMEOUT_S) ")", "N" },
    { "started", 0, 0, G_OPTION_ARG_NONE, &opt_started,
      "GUEST was just started, paused, by libvirt (virsh start): adopt its QEMU "
      "(used by kvm-ft's libvirt hook)", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

/* failover, migrate */
static const GOptionEntry verify_entries[] = {
    { "repair", 0, 0, G_OPTION_ARG_NONE, &opt_repair,
      "If the copies differ: copy the primary's disks whole to the secondary, then "
      "compare again", NULL },
    { "timeout-s", 0, 0, G_OPTION_ARG_INT, &opt_wait_s,
      "With --repair: give up waiting for the copy after N seconds, counted from the "
      "start (default " G_STRINGIFY(DEFAULT_SWITCH_TIMEOUT_S) ")", "N" },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const GOptionEntry switch_entries[] = {
    { "timeout-s", 0, 0, G_OPTION_ARG_INT, &opt_wait_s,
      "Give up waiting after N seconds, counted from the start (default "
      G_STRINGIFY(DEFAULT_SWITCH_TIMEOUT_S) ")", "N" },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const GOptionEntry drbd_config_entries[] = {
    { "drbd-version", 0, 0, G_OPTION_ARG_STRING, &opt_drbd_version,
      "Write DRBD 8.4's or DRBD 9's syntax (default: the version in " DRBDRES_PROC_DRBD ")",
      "8.4|9" },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &opt_out_dir,
      "Write DIR/RESOURCE.res for each disk instead of printing them", "DIR" },
    { "handler", 0, 0, G_OPTION_ARG_FILENAME, &opt_handler,
      "The fence-peer, unfence and split-brain handler (default "
      DRBDRES_DEFAULT_HANDLER ")", "PATH" },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const GOptionEntry takeover_entries[] = {
    { "force", 'f', 0, G_OPTION_ARG_NONE, &opt_force,
      "Yes: the other copy is stopped (required)", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const Command commands[] = {
    { "list", "list", "List guests: name, role, state",
      "List the fault-tolerant guests kvm-ftd knows, one per line:\n"
      "name, role on this host, state; for a guest kvm-ftd refused,\n"
      "\"refused: \" and why.",
      NULL, 0, 0, cmd_list, 0 },
    { "status", "status [GUEST]", "Show guests' replication status",
      "Show each guest's role on this host, state, peer host and link,\n"
      "COLO mode, checkpoints taken, last checkpoint pause and age, and\n"
      "last error; for a guest kvm-ftd refused, why.  --json prints\n"
      "kvm-ftd's status result unchanged.",
      status_entries, 0, 1, cmd_status, 0 },
    { "protect", "protect GUEST", "Protect a guest and follow progress",
      "Ask kvm-ftd to protect GUEST, then follow its events, printing\n"
      "\"HOST: GUEST: STATE\" at each state change (with the role and\n"
      "the reason) and a disk copy's progress, until it is protected\n"
      "(exit 0), reports an error (exit 1) or --timeout-s passes (exit 1).",
      protect_entries, 1, 1, cmd_protect, DEFAULT_PROTECT_TIMEOUT_S },
    { "failover", "failover GUEST", "Switch roles with the peer (planned failover)",
      "Planned switch of roles, run on the host that runs GUEST protected\n"
      "(its primary): this copy stops and the secondary on the peer takes\n"
      "over from the last checkpoint, as in a failover, so nothing the guest\n"
      "sent is lost; the peer then re-protects GUEST onto this host.\n"
      "ftctl follows it, printing \"HOST: GUEST: STATE\" at each state change\n"
      "and a disk copy's progress, until this host is GUEST's protected\n"
      "secondary (exit 0).  Exit 1 if kvm-ftd refuses (this host is not\n"
      "GUEST's protected primary: its message says where to run it), the\n"
      "guest fails, or --timeout-s passes.",
      switch_entries, 1, 1, cmd_failover, DEFAULT_SWITCH_TIMEOUT_S },
    { "migrate", "migrate GUEST HOST", "Move GUEST to HOST: wait until protected, then failover",
      "Run on the host that runs GUEST: make HOST, one of GUEST's two hosts,\n"
      "run it.  If HOST runs it already, say so (exit 0).  Otherwise wait,\n"
      "showing states and progress, until GUEST is protected (it may be\n"
      "re-protecting the peer), then switch roles as \"ftctl failover\" does.\n"
      "Exit 1 if this host does not run GUEST (the message names the host\n"
      "that does), the guest fails or stops, or --timeout-s passes; exit 2\n"
      "if HOST is not one of GUEST's hosts.",
      switch_entries, 2, 2, cmd_migrate, DEFAULT_SWITCH_TIMEOUT_S },
    { "takeover", "takeover GUEST --force", "Run a held copy alone without the witness",
      "A failover that waits for the witness (it is unreachable, so the\n"
      "status says HELD) runs this copy of GUEST alone now, on your word\n"
      "instead of the witness's.  Only when the other copy is known to be\n"
      "stopped (its host is off, or `virsh destroy` there): two copies\n"
      "running would each tell clients different things.  Exit 1 if no\n"
      "failover of GUEST waits here or --force is missing.",
      takeover_entries, 1, 1, cmd_takeover, 0 },
    { "verify", "verify GUEST [--repair]", "Compare the two copies of GUEST's disks",
      "Run on GUEST's protected primary: read both copies of each of its\n"
      "replicated disks while it runs (this host's, and the secondary's\n"
      "over the dedicated link, through NBD) and compare them block by\n"
      "block; a block that differs is read again a few times, as a guest\n"
      "write may be under way to it.  Prints each disk's result and the\n"
      "differing ranges (offset+bytes), with progress while it reads;\n"
      "kvm-ftd logs it, sends a \"verify\" event and shows it in the status\n"
      "(last_verify).  With --repair, copies that differ are made the same:\n"
      "the secondary is dropped and re-protected with a whole copy of the\n"
      "primary's disks (the guest runs unprotected meanwhile; progress is\n"
      "shown), then compared again.  Exit 0 if the copies are identical (after\n"
      "a repair: identical again), 1 if they differ, the repair fails, or the\n"
      "guest is not protected here (the message says where to run it).",
      verify_entries, 1, 1, cmd_verify, DEFAULT_SWITCH_TIMEOUT_S },
    { "events", "events", "Follow kvm-ftd's events",
      "Print kvm-ftd's events as JSON lines, one per line, until\n"
      "interrupted or the daemon goes away (exit 3).  On a terminal, a\n"
      "disk copy's progress events (about one a second) are shown as one\n"
      "line that rewrites itself: \"GUEST: resync (MODE) DONE of TOTAL,\n"
      "RATE, ETA S\".",
      NULL, 0, 0, cmd_events, 0 },
    { "drbd-config", "drbd-config DOMAIN.xml", "Write the DRBD resources of an HA guest",
      "Read a domain XML file (e.g. virsh dumpxml GUEST) of a guest with\n"
      "<ft:protection level='ha'/> and write one DRBD resource per disk,\n"
      "\"kvmft-GUEST-TARGET\", for both of its hosts: printed, or with\n"
      "--out each into DIR/RESOURCE.res (a temporary file renamed; written\n"
      "only if every disk's could be made).  Needs no kvm-ftd.  Exit 1 if\n"
      "the file is not a valid ha guest or a value cannot go into a DRBD\n"
      "file (the message says which); 2 if --drbd-version is not 8.4 or 9,\n"
      "or is missing where there is no " DRBDRES_PROC_DRBD ".",
      drbd_config_entries, 1, 1, cmd_drbd_config, 0 },
};

static gboolean opt_help;

static const GOptionEntry help_entries[] = {
    { "help", 'h', 0, G_OPTION_ARG_NONE, &opt_help, "Show this help", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const Command *find_command(const char *name)
{
    for (gsize i = 0; i < G_N_ELEMENTS(commands); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static GOptionContext *command_context(const Command *cmd)
{
    GOptionContext *ctx = g_option_context_new(cmd->params);

    g_option_context_set_help_enabled(ctx, FALSE);
    g_option_context_set_summary(ctx, cmd->summary);
    g_option_context_set_description(ctx, EXIT_CODES_HELP);
    if (cmd->entries)
        g_option_context_add_main_entries(ctx, cmd->entries, NULL);
    g_option_context_add_main_entries(ctx, global_entries, NULL);
    g_option_context_add_main_entries(ctx, help_entries, NULL);
    return ctx;
}

static GOptionContext *global_context(void)
{
    GOptionContext *ctx = g_option_context_new("COMMAND [ARGS...]");
    g_autoptr(GString) summary = g_string_new("Control kvm-ftd, the KVM fault-tolerance daemon.\n\n"
                                              "Commands:\n");

    for (gsize i = 0; i < G_N_ELEMENTS(commands); i++)
        g_string_append_printf(summary, "  %-20s %s\n", commands[i].params, commands[i].brief);
    g_string_append_printf(summary, "  %-20s %s\n\n", "help [COMMAND]",
                           "Show help for ftctl or a command");
    g_string_append(summary, "Options may be given before or after the command; \"ftctl COMMAND\n"
                    "--help\" describes a command and its options.");
    g_option_context_set_summary(ctx, summary->str);
    g_option_context_set_description(ctx, EXIT_CODES_HELP
                                     "\nEnvironment:\n"
                                     "  KVMFT_SOCKET  control socket when --socket is not given\n");
    /* Stop at the command: its options belong to its own parser. */
    g_option_context_set_strict_posix(ctx, TRUE);
    g_option_context_set_help_enabled(ctx, FALSE);
    g_option_context_add_main_entries(ctx, global_entries, NULL);
    g_option_context_add_main_entries(ctx, help_entries, NULL);
    return ctx;
}

/* GLib's help text says "[OPTION…]": keep the output plain ASCII. */
static int print_help(GOptionContext *ctx)
{
    g_autofree char *text = g_option_context_get_help(ctx, TRUE, NULL);
    g_autoptr(GString) out = g_string_new(text);

    g_string_replace(out, "\u2026", "...", 0);
    g_string_replace(out, "Application Options:", "Options:", 0);
    fputs(out->str, stdout);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    g_autoptr(GOptionContext) gctx = global_context();
    g_autoptr(GOptionContext) cctx = NULL;
    g_autoptr(GError) e = NULL;
    const Command *cmd;
    int cargc;
    char **cargv;

    g_set_prgname("ftctl");
    if (!g_option_context_parse(gctx, &argc, &argv, &e))
        return usage_error(NULL, "%s", e->message);
    if (argc < 2) {
        if (opt_help)
            return print_help(gctx);
        return usage_error(NULL, "no command given");
    }

    if (strcmp(argv[1], "help") == 0) {
        if (argc < 3)
            return print_help(gctx);
        cmd = find_command(argv[2]);
        if (!cmd)
            return usage_error(NULL, "unknown command '%s'", argv[2]);
        cctx = command_context(cmd);
        return print_help(cctx);
    }
    cmd = find_command(argv[1]);
    if (!cmd)
        return usage_error(NULL, "unknown command '%s'", argv[1]);

    /* argv[1] (the command) stands in for the program name. */
    cctx = command_context(cmd);
    opt_wait_s = cmd->wait_s;
    cargc = argc - 1;
    cargv = argv + 1;
    if (!g_option_context_parse(cctx, &cargc, &cargv, &e))
        return usage_error(cmd, "%s", e->message);
    if (opt_help)
        return print_help(cctx);
    if (cargc - 1 < cmd->min_args)
        return usage_error(cmd, "%s: missing argument", cmd->name);
    if (cargc - 1 > cmd->max_args)
        return usage_error(cmd, "%s: too many arguments", cmd->name);
    if (opt_timeout_ms <= 0)
        return usage_error(cmd, "--timeout must be a positive number of milliseconds");
    if (cmd->wait_s && opt_wait_s <= 0)
        return usage_error(cmd, "--timeout-s must be a positive number of seconds");

    {
        g_autofree char **args = g_new0(char *, cmd->max_args + 1);

        for (int i = 1; i < cargc; i++)
            args[i - 1] = cargv[i];
        return cmd->run(args);
    }
}
