/*
 * summary.c - nearest-rank percentiles of a series of measurements
 */
#include "summary.h"

#include <stdlib.h>

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;

    return (x > y) - (x < y);
}

double *summary_sorted(const double *values, guint n)
{
    double *sorted;

    if (!n)
        return NULL;
    sorted = g_memdup2(values, n * sizeof(double));
    qsort(sorted, n, sizeof(double), compare_double);
    return sorted;
}

double summary_p50(const double *values, guint n)
{
    g_autofree double *sorted = summary_sorted(values, n);

    return sorted ? sorted[(n - 1) / 2] : 0.0;
}

void summary_add(JsonBuilder *b, const double *values, guint n)
{
    g_autofree double *sorted = summary_sorted(values, n);

    if (!sorted) {
        json_builder_add_null_value(b);
        return;
    }
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "count");
    json_builder_add_int_value(b, n);
    json_builder_set_member_name(b, "p50");
    json_builder_add_double_value(b, sorted[(n - 1) / 2]);
    json_builder_set_member_name(b, "p99");
    json_builder_add_double_value(b, sorted[(guint)((n - 1) * 0.99)]);
    json_builder_set_member_name(b, "max");
    json_builder_add_double_value(b, sorted[n - 1]);
    json_builder_end_object(b);
}
