/*
 * fuzz-generation.c - libFuzzer harness of the generation file reader
 *
 * Input: the contents of STATE_DIR/GUEST.generation (resync.h), the file
 * that says which protection generation a host's disks belong to and
 * whether they ran alone since; read with resync_generation_read() from a
 * state directory of this process's own.
 */
#include "fuzz-common.h"

#include "config.h"
#include "resync.h"

#define GUEST "web1"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *path;
    FtConfig cfg = { .state_dir = (char *)fuzz_tmpdir() };
    GenerationMark mark = GENERATION_PRIMARY;
    g_autofree char *gen = NULL;

    fuzz_init();
    if (!path)
        path = g_build_filename(fuzz_tmpdir(), GUEST ".generation", NULL);
    fuzz_write_file(path, data, size);

    gen = resync_generation_read(&cfg, GUEST, &mark);
    /* resync.h: a generation id and its mark, or NULL (unknown) and in sync. */
    g_assert(mark >= GENERATION_IN_SYNC && mark <= GENERATION_PRIMARY);
    if (!gen) {
        g_assert(mark == GENERATION_IN_SYNC);
        return 0;
    }
    g_assert(g_uuid_string_is_valid(gen));
    {
        GenerationMark back;

        g_assert(resync_mark_parse(resync_mark_name(mark), &back) && back == mark);
    }
    /* What the daemon decides with it (resync_plan() must not crash on any mark). */
    for (GenerationMark peer = GENERATION_IN_SYNC; peer <= GENERATION_PRIMARY; peer++) {
        (void)resync_plan(gen, mark, gen, peer, FALSE);
        (void)resync_plan(gen, mark, NULL, peer, TRUE);
        (void)resync_plan(NULL, peer, gen, mark, FALSE);
    }
    return 0;
}
