/* ftctl.c - the operator's command line for kvm-ftd */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include "control.h"
#include "status.h"

enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,        /* the daemon said no, or the guest reports an error */
    EXIT_USAGE = 2,
    EXIT_UNREACHABLE = 3,   /* no daemon on the socket */
    EXIT_TIMEOUT = 4,       /* the daemon did not answer in time */
};

#define POLL_INTERVAL_MS 500
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_PROTECT_TIMEOUT_S 180

#define EXIT_CODES_HELP \
    "Exit status:\n" \
    "  0  success\n" \
    "  1  the operation failed (kvm-ftd refused it, the guest reports an error,\n" \
    "     or protect did not complete within --timeout-s)\n" \
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
/* helpers                                                            */

static G_GNUC_PRINTF(1, 2) void msg(const char *fmt, ...)
{
    va_list ap;

    fputs("ftctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

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

/* ------------------------------------------------------------------ */
/* commands                                                           */

static gboolean opt_json;
static gboolean opt_no_wait;
static gboolean opt_started;
static gint opt_protect_timeout_s = DEFAULT_PROTECT_TIMEOUT_S;

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
    if (member_num(g, "checkpoint_interval_ms", &v))
        printf("  interval:        %.0f ms\n", v);
    if (member_str(g, "output_mode"))
        printf("  output:          %s\n", member_str(g, "output_mode"));
    if (member_num(g, "checkpoints", &v))
        printf("  checkpoints:     %.0f\n", v);
    else
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
    {
        JsonNode *fn = json_object_get_member(g, "last_failover");

        if (fn && JSON_NODE_HOLDS_OBJECT(fn)) {
            JsonObject *fo = json_node_get_object(fn);
            double took = 0;

            member_num(fo, "took_ms", &took);
            printf("  last failover:   %s, %.1f ms: %s\n", or_unknown(member_str(fo, "at")),
                   took, or_unknown(member_str(fo, "reason")));
        } else {
            printf("  last failover:   none\n");
        }
    }
    printf("  last error:      %s\n", error ? error : "none");
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
    return EXIT_OK;
}

static int cmd_protect(char **args)
{
    const char *guest = args[0];
    g_autoptr(GError) e = NULL;
    g_autoptr(JsonObject) req = new_request("protect", guest);
    g_autoptr(JsonNode) ack = NULL;
    g_autofree char *last_state = NULL;
    gint64 deadline;

    if (opt_started)
        json_object_set_boolean_member(req, "started", TRUE);
    ack = control_request(socket_path(), req, (guint)opt_timeout_ms, &e);
    if (!ack)
        return fail(e);
    if (opt_no_wait)
        return EXIT_OK;

    deadline = g_get_monotonic_time() + (gint64)opt_protect_timeout_s * G_USEC_PER_SEC;
    for (;;) {
        g_autoptr(JsonNode) result = request("status", guest, &e);
        JsonObject *g;
        const char *state, *error;
        gint64 left;

        if (!result)
            return fail(e);
        g = find_guest(result_guests(result), guest);
        if (!g) {
            msg("%s: no longer known to kvm-ftd on %s", guest,
                or_unknown(result_host(result)));
            return EXIT_FAILED;
        }
        state = or_unknown(member_str(g, "state"));
        error = member_str(g, "error");
        if (g_strcmp0(state, last_state) != 0) {
            printf("%s: %s: %s\n", or_unknown(result_host(result)), guest, state);
            fflush(stdout);
            g_free(last_state);
            last_state = g_strdup(state);
        }
        if (strcmp(state, "protected") == 0)
            return EXIT_OK;
        if (error) {
            msg("%s: %s", guest, error);
            return EXIT_FAILED;
        }
        left = deadline - g_get_monotonic_time();
        if (left <= 0) {
            msg("%s: not protected after %d s (state: %s)", guest,
                opt_protect_timeout_s, state);
            return EXIT_FAILED;
        }
        g_usleep(MIN(left, (gint64)POLL_INTERVAL_MS * 1000));
    }
}

static gboolean print_event(JsonNode *event, gpointer opaque)
{
    g_autofree char *text = json_to_string(event, FALSE);

    (void)opaque;
    printf("%s\n", text);
    fflush(stdout);
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

static const GOptionEntry status_entries[] = {
    { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json,
      "Print kvm-ftd's status result as JSON", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const GOptionEntry protect_entries[] = {
    { "no-wait", 'n', 0, G_OPTION_ARG_NONE, &opt_no_wait,
      "Return once kvm-ftd accepted the request", NULL },
    { "timeout-s", 0, 0, G_OPTION_ARG_INT, &opt_protect_timeout_s,
      "Give up waiting for \"protected\" after N seconds (default 180)", "N" },
    { "started", 0, 0, G_OPTION_ARG_NONE, &opt_started,
      "GUEST was just started, paused, by libvirt (virsh start): adopt its QEMU "
      "(used by kvm-ft's libvirt hook)", NULL },
    { NULL, 0, 0, 0, NULL, NULL, NULL },
};

typedef struct {
    const char *name;
    const char *params;
    const char *brief;          /* one line, for "ftctl --help" */
    const char *summary;        /* for "ftctl COMMAND --help" */
    const GOptionEntry *entries;
    int min_args;
    int max_args;
    int (*run)(char **args);
} Command;

static const Command commands[] = {
    { "list", "list", "List guests: name, role, state",
      "List the fault-tolerant guests kvm-ftd knows, one per line:\n"
      "name, role on this host, state; for a guest kvm-ftd refused,\n"
      "\"refused: \" and why.",
      NULL, 0, 0, cmd_list },
    { "status", "status [GUEST]", "Show guests' replication status",
      "Show each guest's role on this host, state, peer host and link,\n"
      "COLO mode, checkpoints taken, last checkpoint pause and age, and\n"
      "last error; for a guest kvm-ftd refused, why.  --json prints\n"
      "kvm-ftd's status result unchanged.",
      status_entries, 0, 1, cmd_status },
    { "protect", "protect GUEST", "Protect a guest and follow progress",
      "Ask kvm-ftd to protect GUEST, then poll its status every 500 ms,\n"
      "printing \"HOST: GUEST: STATE\" at each state change, until it is\n"
      "protected (exit 0), reports an error (exit 1) or --timeout-s\n"
      "passes (exit 1).",
      protect_entries, 1, 1, cmd_protect },
    { "events", "events", "Follow kvm-ftd's events",
      "Print kvm-ftd's events as JSON lines, one per line, until\n"
      "interrupted or the daemon goes away (exit 3).",
      NULL, 0, 0, cmd_events },
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
        g_string_append_printf(summary, "  %-16s %s\n", commands[i].params, commands[i].brief);
    g_string_append(summary, "  help [COMMAND]   Show help for ftctl or a command\n\n"
                    "Options may be given before or after the command; \"ftctl COMMAND\n"
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
    if (opt_protect_timeout_s <= 0)
        return usage_error(cmd, "--timeout-s must be a positive number of seconds");

    {
        char *args[2] = { cargc > 1 ? cargv[1] : NULL, NULL };

        return cmd->run(args);
    }
}
