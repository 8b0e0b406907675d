/*
 * fuzz-journal.c - libFuzzer harness of the guest journal reader
 *
 * Input: the contents of STATE_DIR/GUEST.journal (journal.h), what a
 * restarted kvm-ftd reads to learn what a running QEMU was; read with
 * journal_read() from a state directory of this process's own.  What it
 * accepts is written back and must read back the same.
 */
#include "fuzz-common.h"

#include <string.h>

#include "journal.h"

#define GUEST "web1"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *path;
    g_auto(JournalEntry) entry = { 0 };
    g_auto(JournalEntry) again = { 0 };
    g_autoptr(GError) err = NULL;

    fuzz_init();
    if (!path)
        path = g_build_filename(fuzz_tmpdir(), GUEST ".journal", NULL);
    fuzz_write_file(path, data, size);

    if (!journal_read(fuzz_tmpdir(), GUEST, &entry, &err)) {
        /* journal.h: nothing is filled in, and the error says why. */
        g_assert(g_error_matches(err, G_FILE_ERROR, G_FILE_ERROR_INVAL));
        g_assert(!entry.state && !entry.generation);
        return 0;
    }
    g_assert(entry.role == FT_ROLE_PRIMARY || entry.role == FT_ROLE_SECONDARY);
    g_assert(entry.state && *entry.state);
    g_assert(!entry.generation || g_uuid_string_is_valid(entry.generation));
    g_assert(journal_write(fuzz_tmpdir(), GUEST, &entry, &err));
    g_assert(journal_read(fuzz_tmpdir(), GUEST, &again, &err));
    g_assert(again.role == entry.role && strcmp(again.state, entry.state) == 0 &&
             g_strcmp0(again.generation, entry.generation) == 0 &&
             again.rejoin == entry.rejoin);
    return 0;
}
