/*
 * jsontext.h - a bound on JSON text before json-glib parses it
 *
 * json-glib parses recursively and accepts more than strict JSON, so text
 * from anyone else (the peer, QEMU, the witness) is checked first: strict
 * JSON outside strings, nesting at most max_depth deep, strings closed.
 */
#pragma once

#include <glib.h>

#define JSON_TEXT_MAX_DEPTH 64

gboolean json_text_sane(const char *s, gsize n, guint max_depth);
