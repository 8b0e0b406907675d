/*
 * jsontext.c - a bound on JSON text before json-glib parses it
 */
#include "jsontext.h"

#include <string.h>

/* Four hex digits at s[i], as a UTF-16 code unit. */
static gboolean hex4(const char *s, gsize n, gsize i, guint *unit)
{
    *unit = 0;
    if (i + 4 > n)
        return FALSE;
    for (gsize k = i; k < i + 4; k++) {
        if (!g_ascii_isxdigit(s[k]))
            return FALSE;
        *unit = *unit * 16 + (guint)g_ascii_xdigit_value(s[k]);
    }
    return TRUE;
}

/*
 * The escape whose backslash is at s[i], strict JSON: its length, or 0.
 * json-glib (1.6) takes "\q" and "\uZZZZ", and leaks when a key holds a
 * lone surrogate, so a surrogate must come as a whole pair.
 */
static gsize escape_len(const char *s, gsize n, gsize i)
{
    guint unit, low;

    if (i + 1 >= n)
        return 0;
    if (s[i + 1] && strchr("\"\\/bfnrt", s[i + 1]))
        return 2;
    if (s[i + 1] != 'u' || !hex4(s, n, i + 2, &unit) || (unit >= 0xDC00 && unit <= 0xDFFF))
        return 0;
    if (unit < 0xD800 || unit > 0xDBFF)
        return 6;
    if (i + 7 < n && s[i + 6] == '\\' && s[i + 7] == 'u' && hex4(s, n, i + 8, &low) &&
        low >= 0xDC00 && low <= 0xDFFF)
        return 12;
    return 0;
}

/*
 * Strict JSON: outside strings no quotes other than '"' and no comments;
 * inside them no control characters and only JSON's escapes.  One value
 * only: json-glib (1.6) takes "{...}{...}" as the last object and leaks the
 * ones before it.
 */
gboolean json_text_sane(const char *s, gsize n, guint max_depth)
{
    static const char allowed[] = "{}[]:,-+.0123456789eEtruefalsn";
    static const char space[] = " \t\r\n";
    enum { TOP_NONE, TOP_SCALAR, TOP_DONE } top = TOP_NONE;
    guint depth = 0;
    gboolean in_str = FALSE;

    for (gsize i = 0; i < n; i++) {
        char c = s[i];

        if (in_str) {
            gsize len;

            if (c == '"') {
                in_str = FALSE;
                if (depth == 0)
                    top = TOP_DONE;
            } else if ((guchar)c < 0x20) {
                return FALSE;
            } else if (c == '\\') {
                len = escape_len(s, n, i);
                if (len == 0)
                    return FALSE;
                i += len - 1;
            }
            continue;
        }
        if (c && strchr(space, c)) {
            if (depth == 0 && top == TOP_SCALAR)
                top = TOP_DONE;
            continue;
        }
        /* A second value at the top level. */
        if (depth == 0 && (top == TOP_DONE || (top == TOP_SCALAR && strchr("\"{[", c))))
            return FALSE;
        if (c == '"') {
            in_str = TRUE;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth)
                return FALSE;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return FALSE;
            if (--depth == 0)
                top = TOP_DONE;
        } else if (!c || !strchr(allowed, c)) {
            return FALSE;
        } else if (depth == 0) {
            top = TOP_SCALAR;
        }
    }
    return !in_str;
}

const char *json_member_string(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;

    return n && JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_STRING
               ? json_node_get_string(n)
               : NULL;
}

gboolean json_node_is_uuid(JsonNode *node)
{
    return node && JSON_NODE_HOLDS_VALUE(node) &&
           json_node_get_value_type(node) == G_TYPE_STRING &&
           g_uuid_string_is_valid(json_node_get_string(node));
}

void json_add_string_or_null(JsonBuilder *b, const char *name, const char *value)
{
    json_builder_set_member_name(b, name);
    if (value)
        json_builder_add_string_value(b, value);
    else
        json_builder_add_null_value(b);
}
