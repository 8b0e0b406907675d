/*
 * drbdhandler.c - kvm-ft-drbd-handler, DRBD's handler for the resources of
 * ha guests (drbd-conf/README.md, ha.h)
 *
 *     kvm-ft-drbd-handler fence-peer|after-resync-target|unfence-peer|split-brain
 *
 * DRBD runs it with DRBD_RESOURCE (and DRBD_MINOR, ...) in the environment;
 * it asks kvm-ftd (control command drbd-handler, on $KVMFT_CONTROL_SOCKET
 * or the default socket).  fence-peer asks again every HA_FENCE_POLL_MS
 * while the verdict is pending, for HA_FENCE_DEADLINE_MS at most, and
 * exits 7 (the peer is fenced: DRBD goes on) only on "peer-fenced"; on
 * anything else 1, which keeps the resource's I/O frozen and refuses a
 * promotion.  Never 5 ("the peer is dead"): that would turn a cut link
 * into a split brain.  The other handlers tell kvm-ftd and exit 0 whatever
 * happens.  One short line on stderr says why (DRBD logs it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include "control.h"
#include "ha.h"
#include "jsontext.h"
#include "timeouts.h"

static const char *socket_path(void)
{
    const char *env = g_getenv("KVMFT_CONTROL_SOCKET");

    return env && *env ? env : CONTROL_DEFAULT_SOCKET;
}

static JsonNode *ask(const char *handler, const char *resource, guint timeout_ms,
                     GError **err)
{
    g_autoptr(JsonObject) req = json_object_new();

    json_object_set_string_member(req, "command", "drbd-handler");
    json_object_set_string_member(req, "handler", handler);
    json_object_set_string_member(req, "resource", resource);
    return control_request(socket_path(), req, timeout_ms, err);
}

/* 7 on the witness's word for this host, else 1 (never 5). */
static int fence_peer(const char *resource)
{
    const gint64 deadline = g_get_monotonic_time() + (gint64)HA_FENCE_DEADLINE_MS * 1000;

    for (;;) {
        const gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonNode) answer = NULL;
        JsonObject *o;
        const char *verdict;
        const char *reason;

        if (left_ms <= 0) {
            fprintf(stderr, "kvm-ft-drbd-handler: fence-peer %s: no verdict from kvm-ftd "
                    "within %d ms: I/O stays frozen\n", resource, HA_FENCE_DEADLINE_MS);
            return HA_EXIT_REFUSED;
        }
        answer = ask(HA_HANDLER_FENCE_PEER, resource, (guint)left_ms, &err);
        if (!answer) {
            fprintf(stderr, "kvm-ft-drbd-handler: fence-peer %s: %s: I/O stays frozen\n",
                    resource, err->message);
            return HA_EXIT_REFUSED;
        }
        o = JSON_NODE_HOLDS_OBJECT(answer) ? json_node_get_object(answer) : NULL;
        verdict = json_member_string(o, "verdict");
        reason = json_member_string(o, "reason");
        if (g_strcmp0(verdict, "pending") == 0) {
            g_usleep(HA_FENCE_POLL_MS * 1000);
            continue;
        }
        if (g_strcmp0(verdict, "peer-fenced") == 0) {
            fprintf(stderr, "kvm-ft-drbd-handler: fence-peer %s: peer fenced: %s\n",
                    resource, reason ? reason : "");
            return HA_EXIT_PEER_FENCED;
        }
        if (g_strcmp0(verdict, "refused") == 0)
            fprintf(stderr, "kvm-ft-drbd-handler: fence-peer %s: refused: %s\n", resource,
                    reason ? reason : "");
        else
            fprintf(stderr, "kvm-ft-drbd-handler: fence-peer %s: kvm-ftd answered no "
                    "verdict (%s): I/O stays frozen\n", resource, verdict ? verdict : "none");
        return HA_EXIT_REFUSED;
    }
}

int main(int argc, char **argv)
{
    const char *handler = argc == 2 ? argv[1] : NULL;
    const char *resource = g_getenv("DRBD_RESOURCE");
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonNode) answer = NULL;

    if (!handler || !ha_handler_known(handler)) {
        fprintf(stderr, "usage: kvm-ft-drbd-handler fence-peer|after-resync-target|"
                "unfence-peer|split-brain (DRBD runs it, with DRBD_RESOURCE set)\n");
        return HA_EXIT_REFUSED;
    }
    if (!resource || !*resource) {
        fprintf(stderr, "kvm-ft-drbd-handler %s: DRBD_RESOURCE is not set: DRBD runs this "
                "handler with it\n", handler);
        return HA_EXIT_REFUSED;
    }
    if (strcmp(handler, HA_HANDLER_FENCE_PEER) == 0)
        return fence_peer(resource);
    answer = ask(handler, resource, HA_HANDLER_REQUEST_MS, &err);
    if (!answer)
        fprintf(stderr, "kvm-ft-drbd-handler: %s %s: %s\n", handler, resource, err->message);
    return 0;
}
