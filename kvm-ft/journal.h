/*
 * journal.h - what a restarted kvm-ftd needs to know of each guest it finds running
 *
 * A QEMU left running by a kvm-ftd that died says through QMP only whether
 * it is in COLO: a secondary waiting for its first checkpoint, a primary
 * halfway into protection and a guest running alone all say "not in COLO".
 * So before each transition takes effect (guest.c), the guest's role, state,
 * protection generation and whether that protection started from a copy
 * already running alone are written to STATE-DIR/GUEST.journal: one JSON
 * object, replaced atomically and durably (the file and the directory
 * fsynced), so that after a crash it says the last state entered, or the
 * one before it, never a mix.
 */
#pragma once

#include <glib.h>

#include "ft.h"

typedef struct {
    FtRole role;        /* FT_ROLE_PRIMARY or FT_ROLE_SECONDARY */
    char *state;        /* guest.h's state name, e.g. "secondary-waiting" */
    char *generation;   /* the protection's generation (a UUID), or NULL */
    gboolean rejoin;    /* the protection started from a copy running alone */
} JournalEntry;

gboolean journal_write(const char *state_dir, const char *name, const JournalEntry *entry,
                       GError **err);

/*
 * FALSE with G_FILE_ERROR_NOENT when the guest has no journal, with
 * G_FILE_ERROR_INVAL when the file is not one (unreadable JSON, an unknown
 * role, a generation that is not a UUID): a restart then knows nothing.
 */
gboolean journal_read(const char *state_dir, const char *name, JournalEntry *entry,
                      GError **err);

void journal_entry_clear(JournalEntry *entry);

/* The names of the guests with a journal in state_dir (none if it cannot be read). */
GPtrArray *journal_list(const char *state_dir);

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(JournalEntry, journal_entry_clear)
