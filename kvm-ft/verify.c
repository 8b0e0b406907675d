/* verify.c - comparing the two copies of a protected guest's disks while it runs */
#include "verify.h"

#include "domxml.h"
#include "ft.h"
#include "tlspsk.h"

static char *export_id(guint i)
{
    return g_strdup_printf("kvmft-verify%u", i);
}

/* The secondary's replication export, on TLS as QEMU's own client reaches it. */
static char *peer_uri(const EngineLink *link, const char *export)
{
    const guint port = link->def->port_base + FT_PORT_NBD;
    g_autofree char *psk = NULL;

    if (!link->tls_dir)
        return g_strdup_printf("nbd://%s:%u/%s", link->secondary_addr, port, export);
    psk = tlspsk_file(link->tls_dir);
    return g_strdup_printf("nbds://%s@%s:%u/%s?tls-psk-file=%s", TLSPSK_USERNAME,
                           link->secondary_addr, port, export, psk);
}

JsonNode *verify_export(Qmp *q, const EngineLink *link, const char *socket_path,
                        GError **err)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    JsonObject *args = json_object_new();

    verify_unexport(q, link);
    json_object_set_object_member(args, "addr", engine_unix_addr(socket_path));
    if (!engine_run(q, link, "nbd-server-start", args, err))
        return NULL;
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "disks");
    json_builder_begin_array(b);
    for (guint i = 0; i < link->def->disks->len; i++) {
        const FtDisk *disk = g_ptr_array_index(link->def->disks, i);
        g_autofree char *id = export_id(i);
        g_autofree char *node = domxml_data_node(i);
        g_autofree char *parent = domxml_parent_node(i);
        g_autofree char *own = g_strdup_printf("nbd+unix:///%s?socket=%s", id, socket_path);
        g_autofree char *peer = peer_uri(link, parent);

        args = engine_arg("type", "nbd");
        json_object_set_string_member(args, "id", id);
        json_object_set_string_member(args, "node-name", node);
        json_object_set_string_member(args, "name", id);
        json_object_set_boolean_member(args, "writable", FALSE);
        if (!engine_run(q, link, "block-export-add", args, err)) {
            verify_unexport(q, link);
            return NULL;
        }
        json_builder_begin_object(b);
        json_builder_set_member_name(b, "target");
        json_builder_add_string_value(b, disk->target);
        json_builder_set_member_name(b, "primary");
        json_builder_add_string_value(b, own);
        json_builder_set_member_name(b, "secondary");
        json_builder_add_string_value(b, peer);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

void verify_unexport(Qmp *q, const EngineLink *link)
{
    for (guint i = 0; i < link->def->disks->len; i++) {
        g_autofree char *id = export_id(i);
        JsonObject *args = engine_arg("id", id);

        /* Hard: a reader that is gone or stuck must not keep the export. */
        json_object_set_string_member(args, "mode", "hard");
        engine_run(q, link, "block-export-del", args, NULL);
    }
    engine_run(q, link, "nbd-server-stop", NULL, NULL);
}

static gboolean bad(GError **err, const char *what)
{
    g_set_error(err, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "verify result: %s", what);
    return FALSE;
}

static gboolean is_count(JsonNode *n)
{
    return n && JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_INT64 &&
           json_node_get_int(n) >= 0;
}

gboolean verify_result_valid(JsonNode *result, guint n_disks, guint64 *differing,
                             GError **err)
{
    JsonObject *o = result && JSON_NODE_HOLDS_OBJECT(result) ? json_node_get_object(result)
                                                             : NULL;
    JsonNode *dn = o ? json_object_get_member(o, "disks") : NULL;
    JsonArray *disks = dn && JSON_NODE_HOLDS_ARRAY(dn) ? json_node_get_array(dn) : NULL;

    *differing = 0;
    if (!disks)
        return bad(err, "no \"disks\" array");
    if (json_array_get_length(disks) != n_disks)
        return bad(err, "not one entry per disk");
    for (guint i = 0; i < n_disks; i++) {
        JsonObject *d = json_array_get_object_element(disks, i);
        JsonNode *rn = d ? json_object_get_member(d, "ranges") : NULL;
        JsonArray *ranges = rn && JSON_NODE_HOLDS_ARRAY(rn) ? json_node_get_array(rn) : NULL;

        if (!d || !json_object_has_member(d, "target") ||
            !is_count(json_object_get_member(d, "bytes")) ||
            !is_count(json_object_get_member(d, "differing_bytes")) || !ranges)
            return bad(err, "a disk without target, bytes, differing_bytes or ranges");
        for (guint r = 0; r < json_array_get_length(ranges); r++) {
            JsonNode *pn = json_array_get_element(ranges, r);
            JsonArray *pair = JSON_NODE_HOLDS_ARRAY(pn) ? json_node_get_array(pn) : NULL;

            if (!pair || json_array_get_length(pair) != 2 ||
                !is_count(json_array_get_element(pair, 0)) ||
                !is_count(json_array_get_element(pair, 1)))
                return bad(err, "a range that is not [offset, length]");
        }
        *differing += (guint64)json_object_get_int_member(d, "differing_bytes");
    }
    return TRUE;
}
