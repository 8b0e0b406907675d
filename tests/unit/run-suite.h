/* run-suite.h - unit tests: every test program's main() */
#pragma once

#include <check.h>
#include <stdlib.h>

/* Runs the suite (forking per test, Check's default); the exit status says if all passed. */
static inline int run_suite(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
