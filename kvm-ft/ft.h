/* ft.h - vocabulary shared by every kvm-ft module */
#pragma once

#include <glib.h>

/* The role this host's copy of a guest plays in the pair. */
typedef enum {
    FT_ROLE_NONE,
    FT_ROLE_PRIMARY,
    FT_ROLE_SECONDARY,
} FtRole;

const char *ft_role_name(FtRole role);

/*
 * Replaces STATE-DIR/FILE with text atomically (a reader sees the old or
 * the new text, never a mix) and durably (file and directory fsynced): a
 * power cut must not bring back what was there before.  The state dir is
 * created (0700) if needed.
 */
gboolean ft_write_state_file(const char *state_dir, const char *file, const char *text,
                             GError **err);

/*
 * Port layout on the dedicated link, relative to <ft:ports base>:
 * the secondary listens for the migration stream and NBD, the primary
 * for the two COLO network channels.  The primary's pairs between its
 * filters and colo-compare (compare0, compare_out) are unix sockets in
 * kvm-ftd's run dir, not ports.
 */
enum {
    FT_PORT_MIGRATION = 0,
    FT_PORT_NBD = 1,
    FT_PORT_MIRROR = 2,
    FT_PORT_COMPARE = 3,
    FT_PORT_COUNT
};
