/* tlspsk.c - the pre-shared key of a guest's replication channels (tlspsk.h) */
#include "tlspsk.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>

#define TLSPSK_LABEL "kvm-ft qemu-tls v1"

char *tlspsk_dir(const FtConfig *cfg, const char *guest)
{
    g_autofree char *name = g_strdup_printf("%s.tls", guest);

    return g_build_filename(cfg->run_dir, name, NULL);
}

char *tlspsk_file(const char *dir)
{
    return g_build_filename(dir, "keys.psk", NULL);
}

char *tlspsk_write(const FtConfig *cfg, const char *guest, GError **err)
{
    g_autofree char *dir = tlspsk_dir(cfg, guest);
    g_autofree char *file = tlspsk_file(dir);
    gsize key_len = 0;
    const guint8 *key = g_bytes_get_data(cfg->key, &key_len);
    g_autoptr(GHmac) mac = g_hmac_new(G_CHECKSUM_SHA256, key, key_len);
    g_autofree char *line = NULL;
    gboolean ok;

    g_hmac_update(mac, (const guchar *)TLSPSK_LABEL, sizeof(TLSPSK_LABEL));
    g_hmac_update(mac, (const guchar *)guest, strlen(guest));
    line = g_strdup_printf("%s:%s\n", TLSPSK_USERNAME, g_hmac_get_string(mac));
    if (g_mkdir_with_parents(dir, 0700) < 0 || g_chmod(dir, 0700) < 0) {
        g_set_error(err, G_FILE_ERROR, g_file_error_from_errno(errno),
                    "cannot create %s for the replication channels' key: %s", dir,
                    g_strerror(errno));
        ok = FALSE;
    } else {
        ok = g_file_set_contents_full(file, line, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600,
                                      err);
        if (!ok)
            g_prefix_error(err, "cannot write the replication channels' key: ");
    }
    /* The key is as secret as the pair's own. */
    memset(line, 0, strlen(line));
    return ok ? g_steal_pointer(&dir) : NULL;
}
