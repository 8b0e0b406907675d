/*
 * summary.h - how kvm-ftd reports a series of measurements
 *
 * Nearest-rank percentiles, so every figure is one that was measured:
 * {"count", "p50", "p99", "max"}.  Callers keep their own bounded history
 * (a ring) and summarise it only when asked, never on a hot path.
 */
#pragma once

#include <json-glib/json-glib.h>

/* The n values, sorted ascending (g_free() it); NULL if n is 0. */
double *summary_sorted(const double *values, guint n);

/* The median of n values; 0 if there are none. */
double summary_p50(const double *values, guint n);

/* {"count", "p50", "p99", "max"} as the builder's next value, or null if n is 0. */
void summary_add(JsonBuilder *b, const double *values, guint n);
