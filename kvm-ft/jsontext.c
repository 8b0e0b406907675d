/*
 * jsontext.c - a bound on JSON text before json-glib parses it
 */
#include "jsontext.h"

#include <string.h>

/* Strict JSON outside strings has no quotes other than '"' and no comments. */
gboolean json_text_sane(const char *s, gsize n, guint max_depth)
{
    static const char allowed[] = " \t\r\n{}[]:,-+.0123456789eEtruefalsn";
    guint depth = 0;
    gboolean in_str = FALSE, esc = FALSE;

    for (gsize i = 0; i < n; i++) {
        char c = s[i];

        if (in_str) {
            if (esc)
                esc = FALSE;
            else if (c == '\\')
                esc = TRUE;
            else if (c == '"')
                in_str = FALSE;
            continue;
        }
        if (c == '"') {
            in_str = TRUE;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth)
                return FALSE;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return FALSE;
            depth--;
        } else if (!strchr(allowed, c)) {
            return FALSE;
        }
    }
    return !in_str;
}
