/*
 * fuzz-config.c - libFuzzer harness of the daemon configuration parser
 *
 * Input: a kvm-ftd.conf, written to a file of this process's temporary
 * directory and read with config_load().  "@KEYDIR@" stands for a
 * directory of key files the harness prepared (peer.key: a good key;
 * short.key, bad.key, open.key (mode 0644), empty.key, wrapped.key and
 * dir.key: the ways a key file is wrong or odd), and bytes after a NUL,
 * if any, are the contents of @KEYDIR@/input.key.  key-file must point
 * into @KEYDIR@ (other inputs are skipped): config_load() opens whatever
 * it names, and a fuzzer must not open devices.
 */
#include "fuzz-common.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"

static char *conf_path;
static char *keydir;

static void setup(void)
{
    static const struct {
        const char *name;
        const char *text;
        int mode;
    } keys[] = {
        { "peer.key", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n", 0600 },
        { "short.key", "MDEyMzQ1Njc4OWFiY2RlZg==\n", 0600 },
        { "bad.key", "not base64 at all!\n", 0600 },
        { "open.key", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n", 0644 },
        { "empty.key", "", 0600 },
        { "wrapped.key", "MDEyMzQ1Njc4OWFiY2RlZjAx\nMjM0NTY3ODlhYmNkZWYwMTIz\nNDU2Nzg5\n", 0600 },
    };

    if (conf_path)
        return;
    conf_path = g_build_filename(fuzz_tmpdir(), "kvm-ftd.conf", NULL);
    keydir = g_strdup(fuzz_tmpdir());
    for (guint i = 0; i < G_N_ELEMENTS(keys); i++) {
        g_autofree char *path = g_build_filename(keydir, keys[i].name, NULL);

        fuzz_write_file(path, keys[i].text, strlen(keys[i].text));
        if (chmod(path, (mode_t)keys[i].mode) < 0)
            abort();
    }
    {
        g_autofree char *dir = g_build_filename(keydir, "dir.key", NULL);

        if (mkdir(dir, 0700) < 0)
            abort();
    }
}

/* Every key-file value names a file in keydir, with no way out of it. */
static gboolean key_files_contained(const char *text)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);

    for (guint i = 0; lines[i]; i++) {
        const char *p = lines[i];

        while (g_ascii_isspace(*p))
            p++;
        if (!g_str_has_prefix(p, "key-file"))
            continue;
        p = strchr(p, '=');
        if (!p)
            continue;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!g_str_has_prefix(p, keydir) || p[strlen(keydir)] != '/' || strstr(p, ".."))
            return FALSE;
    }
    return TRUE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nul = memchr(data, '\0', size);
    gsize conf_len = nul ? (gsize)(nul - (const char *)data) : size;
    g_autofree char *raw = g_strndup((const char *)data, conf_len);
    g_autofree char *text = NULL;
    g_autoptr(FtConfig) c = NULL;
    g_autoptr(GError) e = NULL;

    fuzz_init();
    setup();
    {
        g_auto(GStrv) parts = g_strsplit(raw, "@KEYDIR@", -1);

        text = g_strjoinv(keydir, parts);
    }
    if (!key_files_contained(text))
        return 0;
    if (nul) {
        g_autofree char *key = g_build_filename(keydir, "input.key", NULL);

        fuzz_write_file(key, nul + 1, size - conf_len - 1);
    }
    fuzz_write_file(conf_path, text, strlen(text));

    c = config_load(conf_path, &e);
    /* config.h: a configuration, or NULL with a CONFIG_ERROR. */
    g_assert((c != NULL) != (e != NULL));
    if (e)
        g_assert(e->domain == CONFIG_ERROR && e->message && *e->message);
    if (c) {
        g_assert(c->host_name && c->listen_address && c->key_file && c->key);
        g_assert(g_bytes_get_size(c->key) >= CONFIG_KEY_MIN_BYTES);
        g_assert(c->listen_port >= 1 && c->listen_port <= 65535);
        g_assert(c->control_socket && c->state_dir && c->run_dir && c->libvirt_uri);
    }
    return 0;
}
