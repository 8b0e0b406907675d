/*
 * jsontext.c - a bound on JSON text before json-glib parses it
 */
#include "jsontext.h"

#include <string.h>

/*
 * Strict JSON outside strings has no quotes other than '"' and no comments.
 * One value only: json-glib (1.6) takes "{...}{...}" as the last object
 * and leaks the ones before it.
 */
gboolean json_text_sane(const char *s, gsize n, guint max_depth)
{
    static const char allowed[] = " \t\r\n{}[]:,-+.0123456789eEtruefalsn";
    static const char space[] = " \t\r\n";
    enum { TOP_NONE, TOP_SCALAR, TOP_DONE } top = TOP_NONE;
    guint depth = 0;
    gboolean in_str = FALSE, esc = FALSE;

    for (gsize i = 0; i < n; i++) {
        char c = s[i];

        if (in_str) {
            if (esc)
                esc = FALSE;
            else if (c == '\\')
                esc = TRUE;
            else if (c == '"') {
                in_str = FALSE;
                if (depth == 0)
                    top = TOP_DONE;
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
