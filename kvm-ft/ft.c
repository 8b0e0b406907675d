/* ft.c - vocabulary shared by every kvm-ft module */
#include "ft.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <glib/gstdio.h>

const char *ft_role_name(FtRole role)
{
    switch (role) {
    case FT_ROLE_PRIMARY:
        return "primary";
    case FT_ROLE_SECONDARY:
        return "secondary";
    case FT_ROLE_NONE:
        break;
    }
    return "none";
}

static gboolean sync_dir(const char *dir, GError **err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0 || fsync(fd) < 0) {
        int saved = errno;

        if (fd >= 0)
            close(fd);
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(saved),
                    "cannot sync %s: %s", dir, g_strerror(saved));
        return FALSE;
    }
    close(fd);
    return TRUE;
}

gboolean ft_write_state_file(const char *state_dir, const char *file, const char *text,
                             GError **err)
{
    g_autofree char *path = g_build_filename(state_dir, file, NULL);

    if (g_mkdir_with_parents(state_dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s: %s", state_dir, g_strerror(errno));
        return FALSE;
    }
    /* DURABLE fsyncs the file before the rename; the rename needs the directory's. */
    if (!g_file_set_contents_full(path, text, -1,
                                  G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE,
                                  0600, err))
        return FALSE;
    return sync_dir(state_dir, err);
}
