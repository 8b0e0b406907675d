/* guest-status.c - what `ftctl status` and the benchmarks see of a guest */
#include "guest-internal.h"

#include "jsontext.h"
#include "log.h"
#include "qmp.h"
#include "summary.h"

/* From the start of the copy to QEMU's stamp of its end (or now, if none came). */
double guest_copy_seconds(FtGuest *g)
{
    gint64 end = g->resync_ended_us ? g->resync_ended_us : g_get_real_time();

    return (end - g->resync_started_us) / (double)G_USEC_PER_SEC;
}

static void add_copy_kind(FtGuest *g, JsonBuilder *b)
{
    json_builder_set_member_name(b, "mode");
    json_builder_add_string_value(b, g->resync_plan == RESYNC_INCREMENTAL ? "incremental" : "full");
    json_builder_set_member_name(b, "since");
    if (g->resync_plan == RESYNC_INCREMENTAL)
        json_builder_add_string_value(b, g->resync_since == RESYNC_SINCE_SPLIT ? "split"
                                                                               : "sync");
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "disk_bytes");
    json_builder_add_int_value(b, (gint64)g->disk_bytes);
}

/* What `ftctl status` and benchmarks show of the last disk copy. */
void guest_record_resync(FtGuest *g)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    guint64 rate = daemon_config(g->d)->resync_rate_bytes;

    json_builder_begin_object(b);
    add_copy_kind(g, b);
    json_builder_set_member_name(b, "bytes_moved");
    json_builder_add_int_value(b, (gint64)g->resync.total);
    json_builder_set_member_name(b, "seconds");
    json_builder_add_double_value(b, guest_copy_seconds(g));
    json_builder_set_member_name(b, "rate_limit_bytes_per_s");
    if (rate)
        json_builder_add_int_value(b, (gint64)rate);
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
    g_clear_pointer(&g->last_resync, json_node_unref);
    g->last_resync = json_builder_get_root(b);
}

void guest_add_progress(FtGuest *g, JsonBuilder *b)
{
    guint64 left = g->resync.total - MIN(g->resync.done, g->resync.total);

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "phase");
    json_builder_add_string_value(b, "resync");
    add_copy_kind(g, b);
    json_builder_set_member_name(b, "bytes_done");
    json_builder_add_int_value(b, (gint64)g->resync.done);
    json_builder_set_member_name(b, "bytes_total");
    json_builder_add_int_value(b, (gint64)g->resync.total);
    json_builder_set_member_name(b, "rate_bytes_per_s");
    json_builder_add_int_value(b, (gint64)g->resync_rate);
    json_builder_set_member_name(b, "eta_s");
    if (g->resync_rate > 0)
        json_builder_add_int_value(b, (gint64)(left / g->resync_rate + 0.5));
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
}

static guint history_len(FtGuest *g)
{
    return (guint)MIN(g->checkpoints, (guint64)CHECKPOINT_HISTORY);
}

double guest_pause_p50(FtGuest *g)
{
    return summary_p50(g->history_pause_ms, history_len(g));
}

JsonNode *guest_checkpoints(FtGuest *g, gint64 since_us)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    guint n = history_len(g);

    json_builder_begin_array(b);
    for (guint i = 0; i < n; i++) {
        guint k = (guint)((g->checkpoints - n + i) % CHECKPOINT_HISTORY);

        if (g->history_us[k] < since_us)
            continue;
        json_builder_begin_array(b);
        json_builder_add_int_value(b, g->history_us[k] / 1000);
        json_builder_add_double_value(b, g->history_pause_ms[k]);
        json_builder_end_array(b);
    }
    json_builder_end_array(b);
    return json_builder_get_root(b);
}

/*
 * colo-compare's own count of why it forced checkpoints.  Read when asked
 * (the status call's short deadline), not per checkpoint; the last figures
 * stay when QEMU is busy.
 */
static void add_forced_causes(JsonBuilder *b, FtGuest *g)
{
    g_autoptr(GError) err = NULL;
    EngineLink link;

    if (g->role == FT_ROLE_PRIMARY && g->state == GUEST_PROTECTED && g->qmp &&
        !g->qmp_stalled) {
        link = guest_quick_link(g);
        if (!engine_primary_forced(g->qmp, &link, &g->forced_difference, &g->forced_expired,
                                   &err)) {
            log_debug(g->def->name, guest_role_name(g), "forced checkpoints by cause: %s",
                      err->message);
            g->forced_difference = g->forced_expired = -1;
        }
    }
    json_builder_set_member_name(b, "difference");
    if (g->forced_difference >= 0)
        json_builder_add_int_value(b, g->forced_difference);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "missing_counterpart");
    if (g->forced_expired >= 0)
        json_builder_add_int_value(b, g->forced_expired);
    else
        json_builder_add_null_value(b);
}

JsonNode *guest_status(FtGuest *g)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    const FtHost *peer = guest_peer_host(g);

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "name");
    json_builder_add_string_value(b, g->def->name);
    json_builder_set_member_name(b, "role");
    json_builder_add_string_value(b, guest_is_busy(g) ? guest_role_name(g) : "none");
    json_builder_set_member_name(b, "state");
    json_builder_add_string_value(b, guest_state_name(g->state));

    json_builder_set_member_name(b, "peer");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "host");
    json_builder_add_string_value(b, peer->name);
    /* A session to a powered-off host looks open until TCP gives up. */
    json_builder_set_member_name(b, "connected");
    json_builder_add_boolean_value(b, daemon_peer_connected(g->d, peer->name) &&
                                      daemon_peer_path(g->d, peer->link_address, 1) !=
                                          PEER_PATH_SILENT);
    json_builder_set_member_name(b, "link");
    json_builder_add_string_value(b, peer_path_name(daemon_peer_path(g->d, peer->link_address, 1)));
    json_builder_set_member_name(b, "lan");
    json_builder_add_string_value(b, peer_path_name(daemon_peer_path(g->d, peer->lan_address, 1)));
    json_builder_end_object(b);

    json_builder_set_member_name(b, "last_failover");
    if (g->failover_reason) {
        g_autoptr(GDateTime) at = g_date_time_new_from_unix_local(g->failover_at_us / G_USEC_PER_SEC);
        g_autofree char *at_s = g_date_time_format_iso8601(at);

        json_builder_begin_object(b);
        json_builder_set_member_name(b, "at");
        json_builder_add_string_value(b, at_s);
        json_builder_set_member_name(b, "reason");
        json_builder_add_string_value(b, g->failover_reason);
        json_builder_set_member_name(b, "took_ms");
        json_builder_add_double_value(b, g->failover_ms);
        /* How long of it the witness took to decide; null: not asked. */
        json_builder_set_member_name(b, "claim_ms");
        if (g->claim_ms >= 0)
            json_builder_add_double_value(b, g->claim_ms);
        else
            json_builder_add_null_value(b);
        json_builder_end_object(b);
    } else {
        json_builder_add_null_value(b);
    }
    /* A failover held because the witness did not decide. */
    json_builder_set_member_name(b, "held");
    if (g->claim_trouble) {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "since_ms");
        json_builder_add_int_value(b, (g_get_monotonic_time() - g->failover_started_us) / 1000);
        json_builder_set_member_name(b, "why");
        json_builder_add_string_value(b, g->claim_trouble);
        json_builder_end_object(b);
    } else {
        json_builder_add_null_value(b);
    }

    json_builder_set_member_name(b, "colo");
    if (g->colo_mode) {
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "mode");
        json_builder_add_string_value(b, g->colo_mode);
        json_builder_set_member_name(b, "reason");
        json_builder_add_string_value(b, g->colo_reason);
        json_builder_end_object(b);
    } else {
        json_builder_add_null_value(b);
    }

    json_builder_set_member_name(b, "qmp");
    json_builder_add_string_value(b, !g->qmp ? "closed"
                                     : g->qmp_stalled ? "not answering" : "ok");
    json_builder_set_member_name(b, "replication_tls");
    json_builder_add_boolean_value(b, g->tls_dir != NULL);
    json_builder_set_member_name(b, "checkpoint_interval_ms");
    json_builder_add_int_value(b, g->def->checkpoint_interval_ms);
    json_builder_set_member_name(b, "output_mode");
    json_builder_add_string_value(b, ftdef_output_mode_name(g->def->output_mode));
    if (g->def->output_mode == FTDEF_OUTPUT_AUTO && g->role == FT_ROLE_PRIMARY) {
        json_builder_set_member_name(b, "output_auto");
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "now");
        json_builder_add_string_value(b, ftdef_output_mode_name(g->output.mode));
        json_builder_set_member_name(b, "switches");
        json_builder_add_int_value(b, g->output.switches);
        json_add_string_or_null(b, "reason", g->output.last_reason);
        json_builder_end_object(b);
    }
    json_builder_set_member_name(b, "checkpoints");
    json_builder_add_int_value(b, (gint64)g->checkpoints);
    json_builder_set_member_name(b, "checkpoints_by_cause");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "periodic");
    json_builder_add_int_value(b, (gint64)(g->checkpoints - g->checkpoints_forced));
    json_builder_set_member_name(b, "forced");
    json_builder_add_int_value(b, (gint64)g->checkpoints_forced);
    add_forced_causes(b, g);
    json_builder_end_object(b);
    json_builder_set_member_name(b, "compare_timeout_ms");
    json_builder_add_int_value(b, g->def->compare_timeout_ms);
    json_builder_set_member_name(b, "last_pause_ms");
    if (g->checkpoints)
        json_builder_add_double_value(b, g->last_pause_ms);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "pause_ms");
    summary_add(b, g->history_pause_ms, history_len(g));
    json_builder_set_member_name(b, "since_last_checkpoint_ms");
    if (g->last_checkpoint_us)
        json_builder_add_int_value(b, (g_get_real_time() - g->last_checkpoint_us) / 1000);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "resync");
    if (g->state == GUEST_RESYNCING)
        guest_add_progress(g, b);
    else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "last_resync");
    if (g->last_resync) {
        JsonNode *last = json_node_copy(g->last_resync);

        /* Known once COLO has started, after the copy. */
        if (g->entry_pause_ms > 0)
            json_object_set_double_member(json_node_get_object(last), "entry_pause_ms",
                                          g->entry_pause_ms);
        else
            json_object_set_null_member(json_node_get_object(last), "entry_pause_ms");
        json_builder_add_value(b, last);
    } else
        json_builder_add_null_value(b);
    json_builder_set_member_name(b, "last_verify");
    if (g->last_verify)
        json_builder_add_value(b, json_node_copy(g->last_verify));
    else
        json_builder_add_null_value(b);
    json_add_string_or_null(b, "error", g->error);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}
