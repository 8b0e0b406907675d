/*
 * fuzz-common.h - what every libFuzzer harness of kvm-ft's parsers shares
 *
 * Each harness feeds one parser's input (doc/fuzzing.md) through the real
 * code path and frees everything: a leak is a finding, as is a crash, a
 * sanitizer report or a GLib critical (a g_return_if_fail() that input can
 * reach is a bug).  Nothing is logged unless KVMFT_FUZZ_LOG is set, and
 * nothing is written outside fuzz_tmpdir().
 */
#pragma once

#include <glib.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* In fuzz-common.c: G_SLICE=always-malloc, before GLib allocates anything. */
int LLVMFuzzerInitialize(int *argc, char ***argv);

/*
 * Once per process, from each harness's first input: kvm-ft's log lines
 * and GLib's messages below critical go nowhere; criticals and errors are
 * printed and abort.
 */
void fuzz_init(void);

/* A directory of this process's own (under $TMPDIR), removed at exit. */
const char *fuzz_tmpdir(void);

/* Replaces path's contents with data, mode 0600; aborts on failure. */
void fuzz_write_file(const char *path, const void *data, size_t size);

/* Dispatches what is ready on ctx (NULL: the default context), without blocking. */
void fuzz_drain_context(GMainContext *ctx);
