/*
 * witness.c - etcd v3 over its JSON gateway, for the claims of witness.h
 */
#include "witness.h"

#include <libsoup/soup.h>
#include <string.h>

#include "jsontext.h"
#include "log.h"
#include "timeouts.h"

struct Witness {
    SoupSession *session;
    char **endpoints;
    GTlsCertificate *client_cert;
    guint timeout_ms;
    guint probe_id;
    /* The probe round under way: its requests left, and whether one was answered. */
    GCancellable *probe_cancel;
    guint probe_pending;
    gboolean probe_answered;
    GString *probe_errors;
    GBytes *probe_body;
    char *trouble;
    gboolean probed;
    double last_claim_ms;
    /* Claims not answered yet, and every request on its way (claims' and probes'). */
    GPtrArray *claims;
    guint in_flight;
};

typedef struct {
    Witness *w;
    char *self;
    WitnessClaimFunc cb;
    gpointer opaque;
    GCancellable *cancel;
    guint timer;
    guint pending;
    gboolean done;
    gint64 started_us;
    GString *errors;
} Claim;

typedef struct {
    Witness *w;
    Claim *claim; /* NULL: a probe */
    char *endpoint;
    SoupMessage *msg;
} Request;

static void claim_unref_request(Claim *c)
{
    if (--c->pending || !c->done)
        return;
    g_object_unref(c->cancel);
    g_string_free(c->errors, TRUE);
    g_free(c->self);
    g_free(c);
}

/* The first outcome counts; the requests still out are cancelled. */
static void claim_finish(Claim *c, const char *owner, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void claim_finish(Claim *c, const char *owner, const char *fmt, ...)
{
    g_autoptr(GError) err = NULL;
    va_list ap;

    if (c->done)
        return;
    c->done = TRUE;
    if (c->timer)
        g_source_remove(c->timer);
    c->timer = 0;
    g_ptr_array_remove(c->w->claims, c);
    if (!owner) {
        va_start(ap, fmt);
        err = g_error_new_valist(G_IO_ERROR, G_IO_ERROR_FAILED, fmt, ap);
        va_end(ap);
    } else {
        c->w->last_claim_ms = (g_get_monotonic_time() - c->started_us) / 1000.0;
    }
    g_cancellable_cancel(c->cancel);
    c->cb(owner, err, c->opaque);
    /* Held by the claim itself until here; the requests hold it too. */
    c->pending++;
    claim_unref_request(c);
}

static gboolean claim_timed_out(gpointer opaque)
{
    Claim *c = opaque;
    g_autofree char *asked = g_strjoinv(", ", c->w->endpoints);

    c->timer = 0;
    claim_finish(c, NULL, "no witness endpoint answered within %u ms (asked %s%s%s)",
                 c->w->timeout_ms, asked, c->errors->len ? "; " : "", c->errors->str);
    return G_SOURCE_REMOVE;
}

static char *b64(const char *s)
{
    return g_base64_encode((const guchar *)s, strlen(s));
}

/* The member's answer as a JSON object, or NULL with why in *why. */
static JsonObject *answer_object(SoupMessage *msg, GBytes *body, JsonParser *parser, char **why)
{
    gsize len = 0;
    const char *data = body ? g_bytes_get_data(body, &len) : NULL;
    g_autoptr(GError) err = NULL;
    JsonNode *root;

    if (soup_message_get_status(msg) != SOUP_STATUS_OK) {
        *why = g_strdup_printf("HTTP %u %s: %.*s", soup_message_get_status(msg),
                               soup_message_get_reason_phrase(msg), (int)MIN(len, 200),
                               data ? data : "");
        return NULL;
    }
    if (!json_text_sane(data ? data : "", len, JSON_TEXT_MAX_DEPTH)) {
        *why = g_strdup_printf("not JSON: %" G_GSIZE_FORMAT " bytes that are not strict JSON, "
                               "or nested over %d deep", len, JSON_TEXT_MAX_DEPTH);
        return NULL;
    }
    if (!json_parser_load_from_data(parser, data ? data : "", (gssize)len, &err)) {
        *why = g_strdup_printf("not JSON: %s", err->message);
        return NULL;
    }
    root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        *why = g_strdup("not a JSON object");
        return NULL;
    }
    return json_node_get_object(root);
}

/*
 * A transaction's answer: "succeeded" (absent when false, as the gateway
 * leaves out defaults) means the key was created with this host's name;
 * otherwise the read in "failure" says who holds it.
 */
static char *claim_owner(Claim *c, JsonObject *o, char **why)
{
    JsonArray *responses, *kvs;
    JsonObject *range;
    JsonNode *node;
    const char *value;
    g_autofree guchar *decoded = NULL;
    gsize len = 0;

    if (json_object_get_boolean_member_with_default(o, "succeeded", FALSE))
        return g_strdup(c->self);
    node = json_object_get_member(o, "responses");
    responses = node && JSON_NODE_HOLDS_ARRAY(node) ? json_node_get_array(node) : NULL;
    node = responses && json_array_get_length(responses) == 1
               ? json_array_get_element(responses, 0) : NULL;
    node = node && JSON_NODE_HOLDS_OBJECT(node)
               ? json_object_get_member(json_node_get_object(node), "response_range") : NULL;
    range = node && JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
    node = range ? json_object_get_member(range, "kvs") : NULL;
    kvs = node && JSON_NODE_HOLDS_ARRAY(node) ? json_node_get_array(node) : NULL;
    if (!range) {
        *why = g_strdup("the transaction's answer has no read of the key");
        return NULL;
    }
    if (!kvs || json_array_get_length(kvs) != 1 ||
        !JSON_NODE_HOLDS_OBJECT(json_array_get_element(kvs, 0))) {
        *why = g_strdup("the key was neither created nor found");
        return NULL;
    }
    value = json_object_get_string_member_with_default(
        json_array_get_object_element(kvs, 0), "value", NULL);
    if (value)
        decoded = g_base64_decode(value, &len);
    if (!decoded || !len || !g_utf8_validate((const char *)decoded, (gssize)len, NULL)) {
        *why = g_strdup("the key holds no host name");
        return NULL;
    }
    return g_strndup((const char *)decoded, len);
}

static void probe_round_done(Witness *w);

static void on_answer(GObject *source, GAsyncResult *res, gpointer opaque)
{
    Request *r = opaque;
    Witness *w = r->w;
    g_autoptr(GError) err = NULL;
    g_autoptr(GBytes) body = soup_session_send_and_read_finish(SOUP_SESSION(source), res, &err);
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autofree char *why = NULL;
    g_autofree char *owner = NULL;
    JsonObject *o = NULL;

    w->in_flight--;
    if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        why = g_strdup_printf("no answer within %u ms", w->timeout_ms);
    else if (!body)
        why = g_strdup(err->message);
    else
        o = answer_object(r->msg, body, parser, &why);
    if (r->claim) {
        Claim *c = r->claim;

        if (o)
            owner = claim_owner(c, o, &why);
        if (owner)
            claim_finish(c, owner, "-");
        else if (!c->done)
            g_string_append_printf(c->errors, "%s%s: %s", c->errors->len ? "; " : "",
                                   r->endpoint, why);
        if (!c->done && c->pending == 1)
            claim_finish(c, NULL, "no witness endpoint could decide (%s)", c->errors->str);
        claim_unref_request(c);
    } else {
        if (o)
            w->probe_answered = TRUE;
        else
            g_string_append_printf(w->probe_errors, "%s%s: %s", w->probe_errors->len ? "; " : "",
                                   r->endpoint, why);
        if (!--w->probe_pending)
            probe_round_done(w);
    }
    g_object_unref(r->msg);
    g_free(r->endpoint);
    g_free(r);
}

/* The request body as it goes on the wire, made once for every endpoint it goes to. */
static GBytes *body_bytes(JsonBuilder *b)
{
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    char *json = json_to_string(root, FALSE);

    return g_bytes_new_take(json, strlen(json));
}

static void post(Witness *w, Claim *claim, const char *endpoint, const char *path,
                 GBytes *payload, GCancellable *cancel)
{
    g_autofree char *uri = g_strconcat(endpoint, path, NULL);
    Request *r = g_new0(Request, 1);

    r->w = w;
    r->claim = claim;
    r->endpoint = g_strdup(endpoint);
    r->msg = soup_message_new(SOUP_METHOD_POST, uri);
    soup_message_set_request_body_from_bytes(r->msg, "application/json", payload);
    if (w->client_cert)
        soup_message_set_tls_client_certificate(r->msg, w->client_cert);
    if (claim)
        claim->pending++;
    w->in_flight++;
    soup_session_send_and_read_async(w->session, r->msg, G_PRIORITY_HIGH, cancel, on_answer, r);
}

char *witness_key(const char *host1, const char *host2, const char *guest,
                  const char *generation)
{
    const gboolean in_order = strcmp(host1, host2) < 0;

    return g_strdup_printf("/kvm-ft/%s+%s/%s/%s", in_order ? host1 : host2,
                           in_order ? host2 : host1, guest, generation);
}

void witness_claim(Witness *w, const char *key, const char *self, WitnessClaimFunc cb,
                   gpointer opaque)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autoptr(GBytes) body = NULL;
    g_autofree char *k = b64(key);
    g_autofree char *v = b64(self);
    Claim *c = g_new0(Claim, 1);

    c->w = w;
    c->self = g_strdup(self);
    c->cb = cb;
    c->opaque = opaque;
    c->cancel = g_cancellable_new();
    c->errors = g_string_new(NULL);
    c->started_us = g_get_monotonic_time();
    /* {"compare": [create_revision(key) == 0], "success": [put], "failure": [range]} */
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "compare");
    json_builder_begin_array(b);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "key");
    json_builder_add_string_value(b, k);
    json_builder_set_member_name(b, "target");
    json_builder_add_string_value(b, "CREATE");
    json_builder_set_member_name(b, "result");
    json_builder_add_string_value(b, "EQUAL");
    json_builder_set_member_name(b, "create_revision");
    json_builder_add_string_value(b, "0");
    json_builder_end_object(b);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "success");
    json_builder_begin_array(b);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "request_put");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "key");
    json_builder_add_string_value(b, k);
    json_builder_set_member_name(b, "value");
    json_builder_add_string_value(b, v);
    json_builder_end_object(b);
    json_builder_end_object(b);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "failure");
    json_builder_begin_array(b);
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "request_range");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "key");
    json_builder_add_string_value(b, k);
    json_builder_end_object(b);
    json_builder_end_object(b);
    json_builder_end_array(b);
    json_builder_end_object(b);
    body = body_bytes(b);

    g_ptr_array_add(w->claims, c);
    c->timer = g_timeout_add(w->timeout_ms, claim_timed_out, c);
    /* Held until claim_finish(), so that a quick failure cannot free it under us. */
    c->pending = 1;
    for (guint i = 0; w->endpoints[i]; i++)
        post(w, c, w->endpoints[i], "/v3/kv/txn", body, c->cancel);
    c->pending--;
}

static void probe_round_done(Witness *w)
{
    g_autofree char *before = g_strdup(w->trouble);

    g_clear_object(&w->probe_cancel);
    g_free(w->trouble);
    w->trouble = w->probe_answered ? NULL
                 : g_strdup_printf("witness unreachable: failover is not automatic (%s)",
                                   w->probe_errors->len ? w->probe_errors->str
                                                        : "no endpoint answered");
    if (w->trouble && !before)
        log_err(NULL, NULL, "%s", w->trouble);
    else if (!w->trouble && before)
        log_info(NULL, NULL, "witness reachable%s: failover is automatic",
                 w->probed ? " again" : "");
    w->probed = TRUE;
}

static gboolean probe_timed_out(gpointer opaque)
{
    GCancellable *cancel = opaque;

    g_cancellable_cancel(cancel);
    return G_SOURCE_REMOVE;
}

/* The probe's request, the same every time: one key, counted. */
static GBytes *make_probe_body(void)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    g_autofree char *k = b64("/kvm-ft/probe");

    json_builder_begin_object(b);
    json_builder_set_member_name(b, "key");
    json_builder_add_string_value(b, k);
    json_builder_set_member_name(b, "count_only");
    json_builder_add_boolean_value(b, TRUE);
    json_builder_end_object(b);
    return body_bytes(b);
}

/* A linearizable read needs the cluster's quorum: an answer means a claim would be decided. */
static gboolean probe(gpointer opaque)
{
    Witness *w = opaque;

    if (w->probe_cancel)
        return G_SOURCE_CONTINUE; /* the last round is not over yet */
    w->probe_cancel = g_cancellable_new();
    w->probe_answered = FALSE;
    g_string_truncate(w->probe_errors, 0);
    g_timeout_add_full(G_PRIORITY_DEFAULT, w->timeout_ms, probe_timed_out,
                       g_object_ref(w->probe_cancel), g_object_unref);
    for (guint i = 0; w->endpoints[i]; i++) {
        w->probe_pending++;
        post(w, NULL, w->endpoints[i], "/v3/kv/range", w->probe_body, w->probe_cancel);
    }
    return G_SOURCE_CONTINUE;
}

Witness *witness_new(const FtConfig *cfg, GError **err)
{
    g_autoptr(GTlsDatabase) ca = NULL;
    Witness *w;

    if (!cfg->witness_endpoints)
        return NULL;
    if (cfg->witness_ca && !(ca = g_tls_file_database_new(cfg->witness_ca, err)))
        return NULL;
    w = g_new0(Witness, 1);
    if (cfg->witness_cert &&
        !(w->client_cert = g_tls_certificate_new_from_files(cfg->witness_cert,
                                                            cfg->witness_key, err))) {
        g_free(w);
        return NULL;
    }
    /* No proxy, whatever http_proxy says: the claim goes to the witness itself. */
    w->session = soup_session_new_with_options("user-agent", "kvm-ftd", "timeout", 0,
                                               "idle-timeout", 0, "proxy-resolver", NULL,
                                               NULL);
    if (ca)
        soup_session_set_tls_database(w->session, ca);
    w->endpoints = g_strdupv(cfg->witness_endpoints);
    w->timeout_ms = cfg->witness_timeout_ms;
    w->claims = g_ptr_array_new();
    w->probe_errors = g_string_new(NULL);
    w->probe_body = make_probe_body();
    w->trouble = g_strdup("witness not probed yet: failover is not automatic");
    probe(w);
    w->probe_id = g_timeout_add(WITNESS_PROBE_MS, probe, w);
    return w;
}

void witness_free(Witness *w)
{
    gint64 deadline = g_get_monotonic_time() + WITNESS_DRAIN_MS * 1000;

    if (!w)
        return;
    g_source_remove(w->probe_id);
    while (w->claims->len)
        claim_finish(g_ptr_array_index(w->claims, 0), NULL, "kvm-ftd is shutting down");
    if (w->probe_cancel)
        g_cancellable_cancel(w->probe_cancel);
    /* The requests' callbacks run from the main loop: let them, so that nothing is left. */
    while (w->in_flight && g_get_monotonic_time() < deadline)
        g_main_context_iteration(NULL, FALSE);
    soup_session_abort(w->session);
    g_object_unref(w->session);
    g_clear_object(&w->client_cert);
    g_clear_object(&w->probe_cancel);
    g_strfreev(w->endpoints);
    g_ptr_array_unref(w->claims);
    g_string_free(w->probe_errors, TRUE);
    g_bytes_unref(w->probe_body);
    g_free(w->trouble);
    g_free(w);
}

const char *witness_trouble(Witness *w)
{
    return w->trouble;
}

void witness_add_status(Witness *w, JsonBuilder *b)
{
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "endpoints");
    json_builder_begin_array(b);
    for (guint i = 0; w->endpoints[i]; i++)
        json_builder_add_string_value(b, w->endpoints[i]);
    json_builder_end_array(b);
    json_builder_set_member_name(b, "reachable");
    json_builder_add_boolean_value(b, w->trouble == NULL);
    json_add_string_or_null(b, "error", w->trouble);
    json_builder_set_member_name(b, "last_claim_ms");
    if (w->last_claim_ms > 0)
        json_builder_add_double_value(b, w->last_claim_ms);
    else
        json_builder_add_null_value(b);
    json_builder_end_object(b);
}
