/* decision.c - decisions about a guest, delivered to the peer until it answers */
#include "decision.h"

#include "log.h"
#include "timeouts.h"

typedef struct {
    Daemon *d;
    char *paths[2];      /* the peer's addresses (NULL: no such path) */
    JsonObject *params;
    char *guest;
    char *name;
    gint64 deadline_us;
    guint pending;       /* calls under way */
    guint retry_id;
    gboolean answered;
    gboolean heard_restarting;
} Decision;

/* Every decision still being delivered, for decision_cancel_all(). */
static GPtrArray *live;

static void decision_free(Decision *dc)
{
    g_ptr_array_remove_fast(live, dc);
    if (dc->retry_id)
        g_source_remove(dc->retry_id);
    for (guint i = 0; i < G_N_ELEMENTS(dc->paths); i++)
        g_free(dc->paths[i]);
    json_object_unref(dc->params);
    g_free(dc->guest);
    g_free(dc->name);
    g_free(dc);
}

typedef struct {
    Decision *dc;
    guint path;
} DecisionCall;

static void send_on_paths(Decision *dc);

static gboolean retry(gpointer opaque)
{
    Decision *dc = opaque;

    dc->retry_id = 0;
    send_on_paths(dc);
    return G_SOURCE_REMOVE;
}

/* With no call under way: done, given up, or another round. */
static void settle(Decision *dc)
{
    if (dc->pending)
        return;
    if (dc->answered || daemon_quitting(dc->d)) {
        decision_free(dc);
    } else if (g_get_monotonic_time() > dc->deadline_us) {
        log_warn(dc->guest, NULL, "the peer did not answer '%s' on any path within %d ms",
                 dc->name, DECISION_TIMEOUT_MS);
        decision_free(dc);
    } else {
        dc->retry_id = g_timeout_add(DECISION_RETRY_MS, retry, dc);
    }
}

static void on_answer(PeerConn *conn, JsonNode *result, const GError *error, gpointer opaque)
{
    DecisionCall *call = opaque;
    Decision *dc = call->dc;

    (void)conn;
    (void)result;
    dc->pending--;
    /* Its kvm-ftd restarted and does not know the guest's copy yet: asked again. */
    if (g_error_matches(error, PEER_ERROR, PEER_ERROR_RESTARTING) && !dc->heard_restarting) {
        dc->heard_restarting = TRUE;
        log_info(dc->guest, NULL, "%s: %s; '%s' is sent again until it is answered",
                 dc->paths[call->path], error->message, dc->name);
    }
    /* An error the peer sent is an answer too: it heard the decision and refused it. */
    if (!error || g_error_matches(error, PEER_ERROR, PEER_ERROR_REMOTE)) {
        if (!dc->answered && error)
            log_warn(dc->guest, NULL, "%s refused '%s': %s", dc->paths[call->path], dc->name,
                     error->message);
        dc->answered = TRUE;
    }
    g_free(call);
    settle(dc);
}

static void send_on_paths(Decision *dc)
{
    /* Held while sending: a call may fail, and settle, before the next is made. */
    dc->pending++;
    for (guint i = 0; i < G_N_ELEMENTS(dc->paths); i++) {
        DecisionCall *call;

        if (!dc->paths[i])
            continue;
        call = g_new0(DecisionCall, 1);
        call->dc = dc;
        call->path = i;
        dc->pending++;
        daemon_peer_call(dc->d, dc->paths[i], "decision", dc->params, DECISION_ANSWER_MS,
                         on_answer, call);
    }
    dc->pending--;
    settle(dc);
}

void decision_send(Daemon *d, const FtHost *peer, const char *guest, const char *generation,
                   const char *name, const char *reason)
{
    Decision *dc = g_new0(Decision, 1);

    dc->d = d;
    dc->paths[0] = g_strdup(peer->link_address);
    dc->paths[1] = g_strdup(peer->lan_address);
    dc->guest = g_strdup(guest);
    dc->name = g_strdup(name);
    dc->deadline_us = g_get_monotonic_time() + DECISION_TIMEOUT_MS * 1000;
    if (!live)
        live = g_ptr_array_new();
    g_ptr_array_add(live, dc);
    dc->params = json_object_new();
    json_object_set_string_member(dc->params, "guest", guest);
    json_object_set_string_member(dc->params, "decision", name);
    json_object_set_string_member(dc->params, "reason", reason);
    if (generation)
        json_object_set_string_member(dc->params, "generation", generation);
    send_on_paths(dc);
}

void decision_cancel_all(Daemon *d)
{
    /* Those with a call on its way were settled when the daemon's links went. */
    for (guint i = live ? live->len : 0; i > 0; i--) {
        Decision *dc = g_ptr_array_index(live, i - 1);

        if (dc->d == d && !dc->pending)
            decision_free(dc);
    }
}
