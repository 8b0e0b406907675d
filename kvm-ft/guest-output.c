/* guest-output.c - output="auto": the primary moves the pair between compare and passive */
#include "guest-internal.h"

#include <string.h>

#include "log.h"

static void output_switched(FtGuest *g, FtOutputMode to, const char *reason)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    const char *from = ftdef_output_mode_name(g->output.mode);

    output_auto_switched(&g->output, g_get_monotonic_time(), to, reason);
    log_info(g->def->name, guest_role_name(g), "output %s -> %s: %s", from,
             ftdef_output_mode_name(to), reason);
    guest_begin_event(g, b);
    json_builder_set_member_name(b, "output");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "from");
    json_builder_add_string_value(b, from);
    json_builder_set_member_name(b, "to");
    json_builder_add_string_value(b, ftdef_output_mode_name(to));
    json_builder_set_member_name(b, "reason");
    json_builder_add_string_value(b, reason);
    json_builder_end_object(b);
    guest_broadcast_event(g, b);
}

typedef struct {
    GuestRef ref;       /* seq: output_token */
    FtOutputMode to;
    char *reason;
} OutputSwitch;

static void on_secondary_output(PeerConn *conn, JsonNode *result, const GError *error,
                                gpointer opaque)
{
    OutputSwitch *sw = opaque;
    FtGuest *g = guest_ref_find(&sw->ref);
    g_autoptr(GError) err = NULL;

    (void)conn;
    (void)result;
    if (g && g->output_token == sw->ref.seq && g->state == GUEST_PROTECTED) {
        EngineLink link = guest_quick_link(g);

        g->output_token = 0;
        if (error) {
            log_warn(g->def->name, guest_role_name(g), "the secondary could not send its output "
                     "%s: %s; staying %s", sw->to == FTDEF_OUTPUT_PASSIVE ? "nowhere"
                                                                          : "for comparison",
                     error->message, ftdef_output_mode_name(g->output.mode));
            /* Going passive, this side went first: back to the compare timeout. */
            if (sw->to == FTDEF_OUTPUT_PASSIVE &&
                !engine_primary_set_output(g->qmp, &link, FTDEF_OUTPUT_COMPARE, &err))
                log_warn(g->def->name, guest_role_name(g), "%s", err->message);
        } else if (sw->to == FTDEF_OUTPUT_COMPARE &&
                   !engine_primary_set_output(g->qmp, &link, FTDEF_OUTPUT_COMPARE, &err)) {
            log_warn(g->def->name, guest_role_name(g), "output stays passive: %s", err->message);
        } else {
            output_switched(g, sw->to, sw->reason);
        }
    }
    guest_ref_clear(&sw->ref);
    g_free(sw->reason);
    g_free(sw);
}

static gboolean evaluate_output(gpointer opaque)
{
    FtGuest *g = opaque;
    g_autoptr(GError) err = NULL;
    g_autofree char *reason = NULL;
    EngineLink link = guest_quick_link(g);
    const gint64 now = g_get_monotonic_time();
    const OutputAutoDue due = output_auto_due(&g->output, now);
    OutputSample sample;
    JsonObject *params;
    OutputSwitch *sw;
    FtOutputMode to;

    if (g->output_token || !g->qmp || due == OUTPUT_AUTO_NOTHING)
        return G_SOURCE_CONTINUE;
    sample = (OutputSample){
        .checkpoints = g->checkpoints,
        .forced = g->checkpoints_forced,
        .lag_ms = -1,
    };
    if (g->output.mode == FTDEF_OUTPUT_COMPARE &&
        !engine_primary_lag(g->qmp, &link, &sample.lag_ms, &err)) {
        /* Once a window, not at every check of the lag. */
        if (due == OUTPUT_AUTO_WINDOW)
            log_warn(g->def->name, guest_role_name(g), "secondary's lag unknown: %s", err->message);
        g_clear_error(&err);
    }
    /* The pause median sorts the checkpoint history: only when the rule will look at it. */
    if (due == OUTPUT_AUTO_WINDOW || sample.lag_ms >= OUTPUT_AUTO_LAG_MIN_MS)
        sample.reply_cost_ms = FTDEF_PASSIVE_EPOCH_DEFAULT + guest_pause_p50(g);
    if (!output_auto_evaluate(&g->output, now, &sample, &to, &reason))
        return G_SOURCE_CONTINUE;
    /* Into passive this side goes first, out of it last (engine.h). */
    if (to == FTDEF_OUTPUT_PASSIVE && !engine_primary_set_output(g->qmp, &link, to, &err)) {
        log_warn(g->def->name, guest_role_name(g), "output stays compare: %s", err->message);
        return G_SOURCE_CONTINUE;
    }
    sw = g_new0(OutputSwitch, 1);
    g->output_token = ++g->output_requests;
    guest_ref_init(&sw->ref, g, g->output_token);
    sw->to = to;
    sw->reason = g_steal_pointer(&reason);
    params = json_object_new();
    json_object_set_string_member(params, "guest", g->def->name);
    json_object_set_string_member(params, "mode", ftdef_output_mode_name(to));
    daemon_peer_call(g->d, guest_peer_host(g)->link_address, "set-output", params,
                     daemon_config(g->d)->peer_timeout_ms, on_secondary_output, sw);
    json_object_unref(params);
    return G_SOURCE_CONTINUE;
}

void guest_start_output_auto(FtGuest *g)
{
    guest_stop_output_auto(g);
    output_auto_init(&g->output, g_get_monotonic_time(), g->checkpoints,
                     g->checkpoints_forced);
    /* Checked each second: a window ends when its time is up, not when a timer says,
     * and in compare the lag rule is checked between window ends (output.h). */
    g->output_timer = g_timeout_add(OUTPUT_AUTO_LAG_CHECK_MS, evaluate_output, g);
}

void guest_stop_output_auto(FtGuest *g)
{
    if (g->output_timer) {
        g_source_remove(g->output_timer);
        g->output_timer = 0;
    }
    g->output_token = 0;
}

gboolean guest_set_output(FtGuest *g, const char *mode, GError **err)
{
    EngineLink link = guest_quick_link(g);
    FtOutputMode to = strcmp(mode, "passive") == 0 ? FTDEF_OUTPUT_PASSIVE
                                                   : FTDEF_OUTPUT_COMPARE;

    if (g->role != FT_ROLE_SECONDARY || !g->qmp || g->def->output_mode != FTDEF_OUTPUT_AUTO ||
        (strcmp(mode, "passive") != 0 && strcmp(mode, "compare") != 0)) {
        g_set_error(err, QMP_ERROR, QMP_ERROR_COMMAND, "'%s' is not an output=\"auto\" "
                    "secondary here, or '%s' is not compare or passive", g->def->name, mode);
        return FALSE;
    }
    if (!engine_secondary_set_output(g->qmp, &link, to, err))
        return FALSE;
    log_info(g->def->name, guest_role_name(g), "output %s, as the primary asked",
             to == FTDEF_OUTPUT_PASSIVE ? "to nowhere (passive)" : "to comparison (compare)");
    return TRUE;
}
