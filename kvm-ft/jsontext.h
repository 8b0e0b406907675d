/*
 * jsontext.h - a bound on JSON text before json-glib parses it, and the
 * few json-glib idioms kvm-ft uses everywhere
 *
 * json-glib parses recursively and accepts more than strict JSON, so text
 * from anyone else (the peer, QEMU, the witness) is checked first: strict
 * JSON outside strings, nesting at most max_depth deep, strings closed.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#define JSON_TEXT_MAX_DEPTH 64

gboolean json_text_sane(const char *s, gsize n, guint max_depth);

/*
 * Once parsed, such JSON still has any shape: o's member name if it is a
 * string, else NULL (o may be NULL too)...
 */
const char *json_member_string(JsonObject *o, const char *name);
/* ...and whether node (may be NULL) holds a string that is a UUID. */
gboolean json_node_is_uuid(JsonNode *node);

/* Adds the member name to the object b is building: value, or null if NULL. */
void json_add_string_or_null(JsonBuilder *b, const char *name, const char *value);
