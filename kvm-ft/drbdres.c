/* drbdres.c - DRBD resource files for the disks of an ha guest */
#include "drbdres.h"

#include <stdarg.h>
#include <string.h>

#include <gio/gio.h>

/* Longest untrusted value quoted back in a message. */
#define SHOW_MAX 80

G_DEFINE_QUARK(drbdres-error-quark, drbdres_error)

static gboolean refuse(GError **err, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static gboolean refuse(GError **err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_propagate_error(err, g_error_new_valist(DRBDRES_ERROR, DRBDRES_ERROR_INVALID, fmt, ap));
    va_end(ap);
    return FALSE;
}

/* An untrusted value, cut and escaped: one line whatever it holds. */
static char *shown(const char *value, gsize len)
{
    g_autofree char *cut = g_strndup(value ? value : "", MIN(len, SHOW_MAX));
    char *esc = g_strescape(cut, NULL);

    if (len > SHOW_MAX) {
        char *more = g_strconcat(esc, "...", NULL);

        g_free(esc);
        esc = more;
    }
    return esc;
}

static const char *const syntax_names[] = {
    [DRBD_SYNTAX_84] = "8.4",
    [DRBD_SYNTAX_9] = "9",
};

const char *drbdres_syntax_name(DrbdSyntax syntax)
{
    return syntax_names[syntax];
}

gboolean drbdres_syntax_from_name(const char *name, DrbdSyntax *out, GError **err)
{
    for (guint i = 0; name && i < G_N_ELEMENTS(syntax_names); i++) {
        if (strcmp(name, syntax_names[i]) == 0) {
            *out = (DrbdSyntax)i;
            return TRUE;
        }
    }
    {
        g_autofree char *v = shown(name, name ? strlen(name) : 0);

        return refuse(err, "DRBD version '%s': must be 8.4 or 9 (the syntax of the "
                      "resource files)", v);
    }
}

gboolean drbdres_syntax_from_proc(const char *text, DrbdSyntax *out, GError **err)
{
    static const char prefix[] = "version: ";
    const char *end = text ? strchr(text, '\n') : NULL;
    gsize len = text ? (end ? (gsize)(end - text) : strlen(text)) : 0;
    g_autofree char *line = g_strndup(text ? text : "", len);
    g_autofree char *v = shown(line, len);
    const char *version = line + strlen(prefix);

    if (!*line)
        return refuse(err, "%s: empty; is the drbd module loaded? Name the version "
                      "with --drbd-version", DRBDRES_PROC_DRBD);
    if (!g_str_has_prefix(line, prefix) || !g_ascii_isdigit(*version))
        return refuse(err, "%s: its first line '%s' is not \"version: X.Y.Z ...\"; "
                      "name the version with --drbd-version", DRBDRES_PROC_DRBD, v);
    if (g_str_has_prefix(version, "8.4.") || g_str_has_prefix(version, "8.4 ")) {
        *out = DRBD_SYNTAX_84;
        return TRUE;
    }
    if (version[0] == '9' && (version[1] == '.' || version[1] == ' ' || !version[1])) {
        *out = DRBD_SYNTAX_9;
        return TRUE;
    }
    return refuse(err, "%s: '%s': kvm-ft writes resource files for DRBD 8.4 and 9 "
                  "only", DRBDRES_PROC_DRBD, v);
}

char *drbdres_resource_name(const FtDef *d, guint disk_index)
{
    const FtDisk *disk = g_ptr_array_index(d->disks, disk_index);

    return g_strdup_printf("kvmft-%s-%s", d->name, disk->target);
}

const char *drbdres_resource_name_problem(const char *name)
{
    if (!name || !*name)
        return "is empty";
    if (strlen(name) > DRBDRES_NAME_MAX)
        return "is longer than " G_STRINGIFY(DRBDRES_NAME_MAX) " characters";
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '_' && *p != '.' && *p != '-')
            return "has a character other than letters, digits, '_', '.' and '-'";
    }
    return NULL;
}

static const char *handler_problem(const char *path)
{
    if (!path || path[0] != '/')
        return "is not an absolute path";
    if (strlen(path) > DRBDRES_HANDLER_MAX)
        return "is longer than " G_STRINGIFY(DRBDRES_HANDLER_MAX) " characters";
    for (const char *p = path; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("/._+-", *p))
            return "has a character other than letters, digits and / . _ + - (DRBD runs "
                   "it through a shell)";
    }
    if (strstr(path, ".."))
        return "contains '..'";
    return NULL;
}

/* Everything the file says of one host, checked again. */
static gboolean check_host(const FtDef *d, const FtHost *h, GError **err)
{
    g_autoptr(GInetAddress) addr = NULL;

    if (!ftdef_host_name_valid(h->name) || strlen(h->name) > DRBDRES_HOST_NAME_MAX) {
        g_autofree char *v = shown(h->name, h->name ? strlen(h->name) : 0);

        return refuse(err, "guest '%s': host name '%s' cannot name a DRBD host: DRBD "
                      "matches it against the host's node name (uname -n), 1 to %d "
                      "letters, digits, '.', '_' or '-'", d->name, v,
                      DRBDRES_HOST_NAME_MAX);
    }
    addr = h->link_address ? g_inet_address_new_from_string(h->link_address) : NULL;
    if (!addr || g_inet_address_get_family(addr) != G_SOCKET_FAMILY_IPV4) {
        g_autofree char *v = shown(h->link_address,
                                   h->link_address ? strlen(h->link_address) : 0);

        return refuse(err, "guest '%s': host %s's link-address '%s' is not an IPv4 "
                      "address", d->name, h->name, v);
    }
    return TRUE;
}

/* The disk's values, checked again: the file is written from nothing else. */
static gboolean check_disk(const FtDef *d, guint disk_index, const char *resource,
                           GError **err)
{
    const FtDisk *disk = g_ptr_array_index(d->disks, disk_index);
    g_autofree char *device = g_strdup_printf("/dev/drbd%u", disk->drbd_minor);
    const char *problem = drbdres_resource_name_problem(resource);

    if (problem) {
        g_autofree char *gn = shown(d->name, strlen(d->name));
        g_autofree char *v = shown(resource, strlen(resource));

        return refuse(err, "guest '%s' disk %s: the DRBD resource name '%s' %s; DRBD "
                      "takes 1 to %d letters, digits, '_', '.' or '-' (\"kvmft-GUEST-"
                      "TARGET\"): rename the guest", gn, disk->target, v, problem,
                      DRBDRES_NAME_MAX);
    }
    problem = ftdef_backing_device_problem(disk->backing_device);
    if (problem) {
        g_autofree char *v = shown(disk->backing_device, disk->backing_device ?
                                   strlen(disk->backing_device) : 0);

        return refuse(err, "guest '%s' disk %s: backing-device '%s' %s", d->name,
                      disk->target, v, problem);
    }
    if (disk->drbd_minor > FTDEF_DRBD_MINOR_MAX ||
        g_strcmp0(disk->source_path, device) != 0)
        return refuse(err, "guest '%s' disk %s: its device is not /dev/drbd%u (minor "
                      "0..%d)", d->name, disk->target, disk->drbd_minor,
                      FTDEF_DRBD_MINOR_MAX);
    if ((guint64)d->port_base + disk_index > 65535)
        return refuse(err, "guest '%s' disk %s: port %u + %u is past 65535", d->name,
                      disk->target, d->port_base, disk_index);
    return TRUE;
}

static gboolean check_input(const FtDef *d, guint disk_index, DrbdSyntax syntax,
                            const char *handler_path, const char *resource, GError **err)
{
    const char *problem = handler_problem(handler_path);

    if (d->level != FTDEF_LEVEL_HA) {
        g_autofree char *gn = shown(d->name, strlen(d->name));

        return refuse(err, "guest '%s' has protection level %s: kvm-ftd replicates its "
                      "disks, not DRBD; DRBD resources are for <ft:protection "
                      "level='ha'/> guests", gn, ftdef_level_name(d->level));
    }
    if (disk_index >= d->disks->len)
        return refuse(err, "the guest has %u disks: there is no disk %u", d->disks->len,
                      disk_index);
    if ((guint)syntax >= G_N_ELEMENTS(syntax_names))
        return refuse(err, "DRBD syntax %d: must be 8.4 or 9", (int)syntax);
    if (problem) {
        g_autofree char *v = shown(handler_path, handler_path ? strlen(handler_path) : 0);

        return refuse(err, "handler '%s' %s; give the handler's absolute path, e.g. %s",
                      v, problem, DRBDRES_DEFAULT_HANDLER);
    }
    if (!check_disk(d, disk_index, resource, err))
        return FALSE;
    for (guint i = 0; i < G_N_ELEMENTS(d->hosts); i++) {
        if (!check_host(d, &d->hosts[i], err))
            return FALSE;
    }
    return TRUE;
}

char *drbdres_generate(const FtDef *d, guint disk_index, DrbdSyntax syntax,
                       const char *handler_path, GError **err)
{
    g_autofree char *resource = NULL;
    const FtDisk *disk;
    GString *s;
    const gboolean v9 = syntax == DRBD_SYNTAX_9;

    g_return_val_if_fail(d != NULL, NULL);
    g_return_val_if_fail(err == NULL || *err == NULL, NULL);

    if (disk_index < d->disks->len)
        resource = drbdres_resource_name(d, disk_index);
    if (!check_input(d, disk_index, syntax, handler_path, resource, err))
        return NULL;
    disk = g_ptr_array_index(d->disks, disk_index);

    s = g_string_new(NULL);
    g_string_append_printf(s,
        "# %s: DRBD %s resource of disk %s of guest %s.\n"
        "# Generated by kvm-ft (ftctl drbd-config) from the guest's <ft:guest>\n"
        "# metadata: do not edit; change the metadata and generate it again.\n"
        "resource %s {\n", resource, syntax_names[syntax], disk->target, d->name,
        resource);
    g_string_append(s,
        "    net {\n"
        "        protocol C;\n");
    if (v9)
        g_string_append(s, "        fencing resource-and-stonith;\n");
    g_string_append(s,
        "        verify-alg crc32c;\n"
        "        after-sb-0pri disconnect;\n"
        "        after-sb-1pri disconnect;\n"
        "        after-sb-2pri disconnect;\n"
        "    }\n");
    if (!v9)
        g_string_append(s,
            "    disk {\n"
            "        fencing resource-and-stonith;\n"
            "    }\n");
    g_string_append_printf(s,
        "    handlers {\n"
        "        fence-peer \"%s fence-peer\";\n"
        "        %s \"%s %s\";\n"
        "        split-brain \"%s split-brain\";\n"
        "    }\n", handler_path,
        v9 ? "unfence-peer" : "after-resync-target", handler_path,
        v9 ? "unfence-peer" : "after-resync-target", handler_path);
    for (guint i = 0; i < G_N_ELEMENTS(d->hosts); i++) {
        g_string_append_printf(s, "    on %s {\n", d->hosts[i].name);
        if (v9)
            g_string_append_printf(s, "        node-id %u;\n", i);
        g_string_append_printf(s,
            "        device /dev/drbd%u minor %u;\n"
            "        disk \"%s\";\n"
            "        address ipv4 %s:%u;\n"
            "        meta-disk internal;\n"
            "    }\n", disk->drbd_minor, disk->drbd_minor, disk->backing_device,
            d->hosts[i].link_address, d->port_base + disk_index);
    }
    g_string_append(s, "}\n");
    return g_string_free(s, FALSE);
}
