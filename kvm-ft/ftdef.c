/* ftdef.c - the FT guest definition, read from a libvirt domain XML */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strnlen */
#endif
#include "ftdef.h"

#include <stdarg.h>
#include <string.h>

#include <gio/gio.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include "ft.h"

/* Longest attribute value quoted back in a message. */
#define SHOW_MAX 64

G_DEFINE_QUARK(ftdef-error-quark, ftdef_error)

G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlParserCtxt, xmlFreeParserCtxt)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathContext, xmlXPathFreeContext)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathObject, xmlXPathFreeObject)

static const char *const guest_children =
    "<ft:hosts>, <ft:protection>, <ft:checkpoint>, <ft:ports>, <ft:disk>";

/* An ha guest's disk i replicates on port_base + i: that fits below 65536. */
G_STATIC_ASSERT(FTDEF_PORT_BASE_MAX + FTDEF_MAX_DISKS - 1 <= 65535);

static gboolean invalid(GError **err, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static gboolean invalid(GError **err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_propagate_error(err, g_error_new_valist(FTDEF_ERROR, FTDEF_ERROR_INVALID,
                                              fmt, ap));
    va_end(ap);
    return FALSE;
}

/* An untrusted value made safe to quote in a one-line message. */
static char *show(const char *value)
{
    g_autofree char *cut = g_strndup(value ? value : "", SHOW_MAX);
    /* Escapes control characters and non-ASCII bytes: one line, any input. */
    g_autofree char *esc = g_strescape(cut, NULL);
    GString *s = g_string_sized_new(strlen(esc) + 4);

    /* Values are shown in '...': escape the quote too. */
    for (const char *p = esc; *p; p++) {
        if (*p == '\'')
            g_string_append_c(s, '\\');
        g_string_append_c(s, *p);
    }
    if (value && strlen(value) > SHOW_MAX)
        g_string_append(s, "...");
    return g_string_free(s, FALSE);
}

/* The element's name as written, e.g. "ft:host". */
static char *qname(xmlNodePtr node)
{
    if (node->ns && node->ns->prefix)
        return g_strdup_printf("%s:%s", (const char *)node->ns->prefix,
                               (const char *)node->name);
    return g_strdup((const char *)node->name);
}

/* An un-namespaced attribute as a GLib string, NULL if absent. */
static char *prop(xmlNodePtr node, const char *name)
{
    xmlChar *v = xmlGetNoNsProp(node, (const xmlChar *)name);
    char *s;

    if (!v)
        return NULL;
    s = g_strdup((const char *)v);
    xmlFree(v);
    return s;
}

static char *text_of(xmlNodePtr node)
{
    xmlChar *v = xmlNodeGetContent(node);
    char *s = g_strdup(v ? (const char *)v : "");

    xmlFree(v);
    return g_strstrip(s);
}

static gboolean is_named(xmlNodePtr node, const char *name)
{
    return node->type == XML_ELEMENT_NODE &&
           strcmp((const char *)node->name, name) == 0;
}

static gboolean is_ft(xmlNodePtr node)
{
    return node->type == XML_ELEMENT_NODE && node->ns && node->ns->href &&
           strcmp((const char *)node->ns->href, FTDEF_NS) == 0;
}

static gboolean is_blank_text(xmlNodePtr node)
{
    if (node->type != XML_TEXT_NODE && node->type != XML_CDATA_SECTION_NODE)
        return FALSE;
    for (const xmlChar *p = node->content; p && *p; p++) {
        if (!g_ascii_isspace(*p))
            return FALSE;
    }
    return TRUE;
}

/* First child element called @name (no namespace), or NULL. */
static xmlNodePtr child(xmlNodePtr node, const char *name)
{
    for (xmlNodePtr c = node->children; c; c = c->next) {
        if (is_named(c, name) && !c->ns)
            return c;
    }
    return NULL;
}

static xmlXPathObjectPtr xpath(xmlXPathContextPtr xp, const char *expr)
{
    xmlXPathObjectPtr res = xmlXPathEvalExpression((const xmlChar *)expr, xp);

    if (res && res->type != XPATH_NODESET) {
        xmlXPathFreeObject(res);
        return NULL;
    }
    return res;
}

static int nodes_count(xmlXPathObjectPtr res)
{
    return res && res->nodesetval ? res->nodesetval->nodeNr : 0;
}

static xmlNodePtr nodes_at(xmlXPathObjectPtr res, int i)
{
    return res->nodesetval->nodeTab[i];
}

/* Strict unsigned decimal: digits only, no sign, space or trailing junk. */
static gboolean parse_uint(const char *s, guint min, guint max, guint *out)
{
    guint64 v = 0;

    if (!s || !*s || strlen(s) > 10)
        return FALSE;
    for (const char *p = s; *p; p++) {
        if (!g_ascii_isdigit(*p))
            return FALSE;
        v = v * 10 + (guint64)(*p - '0');
    }
    if (v < min || v > max)
        return FALSE;
    *out = (guint)v;
    return TRUE;
}

const char *ftdef_guest_name_problem(const char *name)
{
    if (!*name)
        return "is empty; name the guest";
    if (strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return "cannot be used as a directory name; rename the guest";
    for (const char *p = name; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return "contains a control character; rename the guest";
    }
    return NULL;
}

gboolean ftdef_host_name_valid(const char *name)
{
    size_t len = name ? strlen(name) : 0;

    if (len == 0 || len > FTDEF_HOST_NAME_MAX)
        return FALSE;
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '.' && *p != '_' && *p != '-')
            return FALSE;
    }
    return TRUE;
}

static gboolean target_valid(const char *t)
{
    if (!t || !*t || strlen(t) > 32)
        return FALSE;
    for (const char *p = t; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '_' && *p != '-')
            return FALSE;
    }
    return TRUE;
}

const char *ftdef_backing_device_problem(const char *path)
{
    if (!path || !*path)
        return "is empty; give the local block device DRBD mirrors, e.g. /dev/vg0/web-vda";
    if (strlen(path) > FTDEF_BACKING_DEVICE_MAX)
        return "is longer than " G_STRINGIFY(FTDEF_BACKING_DEVICE_MAX) " characters; "
               "give a shorter path to the device (e.g. a /dev/disk/by-id/ link)";
    if (!g_str_has_prefix(path, "/dev/"))
        return "is not an absolute path under /dev/; give the local block device DRBD "
               "mirrors, e.g. /dev/vg0/web-vda";
    for (const char *p = path; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("/._+:@=,-", *p))
            return "has a character a DRBD resource file cannot take as it is (whitespace, "
                   "a quote, ';', '{', '}', '#', a control or non-ASCII character...); use "
                   "letters, digits and / . _ + : @ = , - (e.g. a /dev/disk/by-id/ link)";
    }
    if (strstr(path, ".."))
        return "contains '..'; give the plain path";
    if (strstr(path, "//") || strstr(path, "/./") || g_str_has_suffix(path, "/") ||
        g_str_has_suffix(path, "/."))
        return "has '.' or empty components; give the plain path";
    return NULL;
}

/* Leaf kvm-ft elements: only @allowed attributes, no child elements or text. */
static gboolean check_leaf(xmlNodePtr node, const char *const *allowed,
                           const char *allowed_text, GError **err)
{
    g_autofree char *qn = qname(node);

    for (xmlAttrPtr a = node->properties; a; a = a->next) {
        gboolean ok = FALSE;

        for (guint i = 0; allowed[i] && !a->ns; i++)
            ok = ok || strcmp((const char *)a->name, allowed[i]) == 0;
        if (!ok) {
            g_autofree char *an = show((const char *)a->name);

            return invalid(err, "<%s>: unknown attribute '%s'; allowed: %s",
                           qn, an, allowed_text);
        }
    }
    for (xmlNodePtr c = node->children; c; c = c->next) {
        if (c->type == XML_ELEMENT_NODE) {
            g_autofree char *cn = qname(c);

            return invalid(err, "<%s>: unexpected child element <%s>; "
                           "<%s> must be empty", qn, cn, qn);
        }
        if ((c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) &&
            !is_blank_text(c))
            return invalid(err, "<%s>: unexpected text; <%s> must be empty, "
                           "its settings are attributes", qn, qn);
    }
    return TRUE;
}

/* Container elements: no attributes, no text; children checked by the caller. */
static gboolean check_container(xmlNodePtr node, GError **err)
{
    g_autofree char *qn = qname(node);

    if (node->properties) {
        g_autofree char *an = show((const char *)node->properties->name);

        return invalid(err, "<%s>: unknown attribute '%s'; <%s> takes no "
                       "attributes", qn, an, qn);
    }
    for (xmlNodePtr c = node->children; c; c = c->next) {
        if ((c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) &&
            !is_blank_text(c))
            return invalid(err, "<%s>: unexpected text; <%s> holds only "
                           "elements", qn, qn);
    }
    return TRUE;
}

static void ftdisk_free(gpointer p)
{
    FtDisk *d = p;

    if (!d)
        return;
    g_free(d->target);
    g_free(d->source_path);
    g_free(d->format);
    g_free(d->backing_device);
    g_free(d);
}

void ftdef_free(FtDef *d)
{
    if (!d)
        return;
    g_free(d->name);
    g_free(d->uuid);
    for (guint i = 0; i < G_N_ELEMENTS(d->hosts); i++) {
        g_free(d->hosts[i].name);
        g_free(d->hosts[i].link_address);
        g_free(d->hosts[i].lan_address);
    }
    if (d->disks)
        g_ptr_array_unref(d->disks);
    g_free(d);
}

/* ---- <ft:guest> ---------------------------------------------------- */

/* An optional or required IPv4 unicast attribute of <ft:host>. */
static gboolean host_address(xmlNodePtr node, const char *qn, const char *name,
                             const char *attr, const char *what, gboolean required,
                             char **out, GError **err)
{
    g_autofree char *addr = prop(node, attr);
    g_autoptr(GInetAddress) inet = NULL;

    if (!addr && !required)
        return TRUE;
    if (!addr || !*addr)
        return invalid(err, "<%s name='%s'>: the %s attribute is %s; set it to "
                       "the host's IPv4 address on %s", qn, name, attr,
                       addr ? "empty" : "missing", what);
    inet = g_inet_address_new_from_string(addr);
    if (!inet || g_inet_address_get_family(inet) != G_SOCKET_FAMILY_IPV4) {
        g_autofree char *v = show(addr);

        return invalid(err, "<%s name='%s' %s='%s'>: not an IPv4 address; use "
                       "the host's dotted-quad address on %s, e.g. 192.168.100.1",
                       qn, name, attr, v, what);
    }
    if (g_inet_address_get_is_any(inet) || g_inet_address_get_is_multicast(inet) ||
        strcmp(addr, "255.255.255.255") == 0)
        return invalid(err, "<%s name='%s' %s='%s'>: not a unicast address; use "
                       "the host's own address on %s", qn, name, attr, addr, what);
    *out = g_steal_pointer(&addr);
    return TRUE;
}

static gboolean parse_host(xmlNodePtr node, FtHost *host, GError **err)
{
    static const char *const attrs[] = { "name", "link-address", "lan-address", NULL };
    g_autofree char *qn = qname(node);
    g_autofree char *name = NULL;

    if (!check_leaf(node, attrs, "name, link-address, lan-address", err))
        return FALSE;
    name = prop(node, "name");
    if (!name || !*name)
        return invalid(err, "<%s>: the name attribute is %s; set it to the "
                       "host-name in that host's kvm-ftd.conf", qn,
                       name ? "empty" : "missing");
    if (!ftdef_host_name_valid(name)) {
        g_autofree char *v = show(name);

        return invalid(err, "<%s name='%s'>: not a valid host name; use 1 to "
                       "%d letters, digits, '.', '_' or '-' (the host-name in "
                       "that host's kvm-ftd.conf)", qn, v, FTDEF_HOST_NAME_MAX);
    }
    if (!host_address(node, qn, name, "link-address", "the dedicated link", TRUE,
                      &host->link_address, err) ||
        !host_address(node, qn, name, "lan-address",
                      "the LAN (the second heartbeat path)", FALSE,
                      &host->lan_address, err))
        return FALSE;
    host->name = g_steal_pointer(&name);
    return TRUE;
}

static gboolean parse_hosts(xmlNodePtr node, FtDef *def, GError **err)
{
    g_autofree char *qn = qname(node);
    guint n = 0;

    if (!check_container(node, err))
        return FALSE;
    for (xmlNodePtr c = node->children; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        if (!is_ft(c) || strcmp((const char *)c->name, "host") != 0) {
            g_autofree char *cn = qname(c);

            return invalid(err, "<%s>: unexpected element <%s>; <%s> holds "
                           "exactly two <ft:host> elements", qn, cn, qn);
        }
        if (n == 2)
            return invalid(err, "<%s>: more than two <ft:host> elements; a "
                           "kvm-ft pair is exactly two hosts", qn);
        if (!parse_host(c, &def->hosts[n], err))
            return FALSE;
        n++;
    }
    if (n != 2)
        return invalid(err, "<%s>: has %u <ft:host>, needs exactly two (this "
                       "host and its peer), e.g. <ft:host name='hostA' "
                       "link-address='192.168.100.1'/>", qn, n);
    if (strcmp(def->hosts[0].name, def->hosts[1].name) == 0)
        return invalid(err, "<%s>: both <ft:host> elements have name='%s'; "
                       "each host needs its own name", qn, def->hosts[0].name);
    if (strcmp(def->hosts[0].link_address, def->hosts[1].link_address) == 0)
        return invalid(err, "<%s>: both <ft:host> elements have link-address="
                       "'%s'; each host needs its own address on the dedicated "
                       "link", qn, def->hosts[0].link_address);
    return TRUE;
}

/* The index of @value in @names (@n of them), or @n if it is none of them. */
static guint name_index(const char *const *names, guint n, const char *value)
{
    guint i;

    for (i = 0; i < n && strcmp(value, names[i]) != 0; i++)
        ;
    return i;
}

static const char *const output_mode_names[] = {
    [FTDEF_OUTPUT_COMPARE] = "compare",
    [FTDEF_OUTPUT_PASSIVE] = "passive",
    [FTDEF_OUTPUT_AUTO] = "auto",
};

const char *ftdef_output_mode_name(FtOutputMode mode)
{
    return output_mode_names[mode];
}

static const char *const level_names[] = {
    [FTDEF_LEVEL_FT] = "ft",
    [FTDEF_LEVEL_HA] = "ha",
};

const char *ftdef_level_name(FtProtectionLevel level)
{
    return level_names[level];
}

static gboolean parse_protection(xmlNodePtr node, FtDef *def, GError **err)
{
    static const char *const attrs[] = { "level", NULL };
    g_autofree char *qn = qname(node);
    g_autofree char *level = NULL;
    guint l;

    if (!check_leaf(node, attrs, "level", err))
        return FALSE;
    level = prop(node, "level");
    if (!level)
        return invalid(err, "<%s>: the level attribute is missing; set level='ft' or "
                       "level='ha', or remove the element for the default (ft)", qn);
    l = name_index(level_names, G_N_ELEMENTS(level_names), level);
    if (l == G_N_ELEMENTS(level_names)) {
        g_autofree char *sv = show(level);

        return invalid(err, "<%s level='%s'>: must be 'ft' (both copies run in COLO: "
                       "nothing is lost on a failure) or 'ha' (one copy runs on disks "
                       "DRBD mirrors, restarted on the peer after a failure)", qn, sv);
    }
    def->level = (FtProtectionLevel)l;
    return TRUE;
}

static gboolean parse_checkpoint(xmlNodePtr node, FtDef *def, GError **err)
{
    static const char *const attrs[] = { "interval-ms", "output", "compare-timeout-ms", NULL };
    g_autofree char *qn = qname(node);
    g_autofree char *v = NULL;
    g_autofree char *output = NULL;
    g_autofree char *timeout = NULL;

    if (!check_leaf(node, attrs, "interval-ms, output, compare-timeout-ms", err))
        return FALSE;
    v = prop(node, "interval-ms");
    if (v && !parse_uint(v, FTDEF_INTERVAL_MIN, FTDEF_INTERVAL_MAX,
                         &def->checkpoint_interval_ms)) {
        g_autofree char *sv = show(v);

        return invalid(err, "<%s interval-ms='%s'>: must be an integer between "
                       "%d and %d (milliseconds)", qn, sv, FTDEF_INTERVAL_MIN,
                       FTDEF_INTERVAL_MAX);
    }
    output = prop(node, "output");
    if (output) {
        guint m = name_index(output_mode_names, G_N_ELEMENTS(output_mode_names), output);

        if (m == G_N_ELEMENTS(output_mode_names)) {
            g_autofree char *sv = show(output);

            return invalid(err, "<%s output='%s'>: must be 'compare' (release "
                           "a reply when both copies sent the same), 'passive' "
                           "(release it at the next checkpoint; for outputs that "
                           "never match, such as TLS) or 'auto' (kvm-ftd moves "
                           "the guest between the two)", qn, sv);
        }
        def->output_mode = (FtOutputMode)m;
    }
    timeout = prop(node, "compare-timeout-ms");
    if (timeout && !parse_uint(timeout, FTDEF_COMPARE_TIMEOUT_MIN, FTDEF_COMPARE_TIMEOUT_MAX,
                               &def->compare_timeout_ms)) {
        g_autofree char *sv = show(timeout);

        return invalid(err, "<%s compare-timeout-ms='%s'>: must be an integer between "
                       "%d and %d (the longest a reply waits for the secondary's "
                       "copy, or in passive mode for the checkpoint that releases it, "
                       "before it forces one; milliseconds)", qn, sv,
                       FTDEF_COMPARE_TIMEOUT_MIN, FTDEF_COMPARE_TIMEOUT_MAX);
    }
    if (!timeout)
        def->compare_timeout_ms = def->output_mode == FTDEF_OUTPUT_PASSIVE
                                      ? FTDEF_PASSIVE_EPOCH_DEFAULT
                                      : FTDEF_COMPARE_TIMEOUT_DEFAULT;
    if (!v && !output && !timeout)
        return invalid(err, "<%s>: has neither interval-ms, output nor "
                       "compare-timeout-ms; set one or remove the element for the "
                       "defaults (%d ms, compare, %d ms)",
                       qn, FTDEF_INTERVAL_DEFAULT, FTDEF_COMPARE_TIMEOUT_DEFAULT);
    return TRUE;
}

static gboolean parse_ports(xmlNodePtr node, FtDef *def, GError **err)
{
    static const char *const attrs[] = { "base", NULL };
    g_autofree char *qn = qname(node);
    g_autofree char *v = NULL;

    if (!check_leaf(node, attrs, "base", err))
        return FALSE;
    v = prop(node, "base");
    if (!v)
        return invalid(err, "<%s>: the base attribute is missing; set it "
                       "(%d..%d) or remove the element for the default of %d",
                       qn, FTDEF_PORT_BASE_MIN, FTDEF_PORT_BASE_MAX,
                       FTDEF_PORT_BASE_DEFAULT);
    if (!parse_uint(v, FTDEF_PORT_BASE_MIN, FTDEF_PORT_BASE_MAX,
                    &def->port_base)) {
        g_autofree char *sv = show(v);

        return invalid(err, "<%s base='%s'>: must be an integer between %d and "
                       "%d (the first of the TCP ports this guest uses on the "
                       "dedicated link)", qn, sv, FTDEF_PORT_BASE_MIN,
                       FTDEF_PORT_BASE_MAX);
    }
    return TRUE;
}

static gboolean parse_ft_disk(xmlNodePtr node, FtDef *def, GError **err)
{
    static const char *const attrs[] = { "target", "backing-device", NULL };
    g_autofree char *qn = qname(node);
    g_autofree char *target = NULL;
    g_autofree char *backing = NULL;
    const char *problem;
    FtDisk *disk;

    if (!check_leaf(node, attrs, "target, backing-device", err))
        return FALSE;
    target = prop(node, "target");
    if (!target || !*target)
        return invalid(err, "<%s>: the target attribute is %s; set it to the "
                       "<target dev> of the domain disk to replicate, e.g. "
                       "<ft:disk target='vda'/>", qn, target ? "empty" : "missing");
    if (!target_valid(target)) {
        g_autofree char *v = show(target);

        return invalid(err, "<%s target='%s'>: not a disk target name; use the "
                       "<target dev> of a domain disk, e.g. 'vda'", qn, v);
    }
    if (def->disks->len == FTDEF_MAX_DISKS)
        return invalid(err, "<%s target='%s'>: more than %d <ft:disk> elements; "
                       "kvm-ft replicates at most %d disks per guest", qn,
                       target, FTDEF_MAX_DISKS, FTDEF_MAX_DISKS);
    for (guint i = 0; i < def->disks->len; i++) {
        const FtDisk *d = g_ptr_array_index(def->disks, i);

        if (strcmp(d->target, target) == 0)
            return invalid(err, "<%s target='%s'>: the same target is named "
                           "twice; list each disk once", qn, target);
    }
    /* Whether the guest's level wants one is known once all of <ft:guest> is read. */
    backing = prop(node, "backing-device");
    problem = backing ? ftdef_backing_device_problem(backing) : NULL;
    if (problem) {
        g_autofree char *v = show(backing);

        return invalid(err, "<%s target='%s' backing-device='%s'>: %s", qn, target, v,
                       problem);
    }
    disk = g_new0(FtDisk, 1);
    disk->target = g_steal_pointer(&target);
    disk->backing_device = g_steal_pointer(&backing);
    g_ptr_array_add(def->disks, disk);
    return TRUE;
}

/* What <ft:protection level> asks of the rest of <ft:guest>. */
static gboolean check_level(const FtDef *def, gboolean have_checkpoint, GError **err)
{
    if (def->level == FTDEF_LEVEL_HA && have_checkpoint)
        return invalid(err, "<ft:checkpoint> applies to protection level ft only (an ha "
                       "guest is not checkpointed): remove it");
    for (guint i = 0; i < def->disks->len; i++) {
        const FtDisk *d = g_ptr_array_index(def->disks, i);

        if (def->level == FTDEF_LEVEL_FT && d->backing_device)
            return invalid(err, "<ft:disk target='%s'>: backing-device applies to "
                           "protection level ha only; remove it, or have DRBD mirror "
                           "the disks with <ft:protection level='ha'/>", d->target);
        if (def->level == FTDEF_LEVEL_HA && !d->backing_device)
            return invalid(err, "<ft:disk target='%s'>: protection level ha needs its "
                           "backing-device, the local block device DRBD mirrors, e.g. "
                           "<ft:disk target='%s' backing-device='/dev/vg0/web-%s'/>",
                           d->target, d->target, d->target);
        for (guint k = 0; def->level == FTDEF_LEVEL_HA && k < i; k++) {
            const FtDisk *o = g_ptr_array_index(def->disks, k);

            if (strcmp(o->backing_device, d->backing_device) == 0)
                return invalid(err, "<ft:disk target='%s'>: backing-device='%s' is "
                               "<ft:disk target='%s'>'s too; each disk needs its own "
                               "backing device", d->target, d->backing_device, o->target);
        }
    }
    return TRUE;
}

/* The children of <ft:guest> that may appear at most once, and their parsers. */
enum { ONCE_HOSTS, ONCE_PROTECTION, ONCE_CHECKPOINT, ONCE_PORTS, N_ONCE };

static const char *const once_names[N_ONCE] = {
    [ONCE_HOSTS] = "hosts",
    [ONCE_PROTECTION] = "protection",
    [ONCE_CHECKPOINT] = "checkpoint",
    [ONCE_PORTS] = "ports",
};

static gboolean (*const once_parsers[N_ONCE])(xmlNodePtr, FtDef *, GError **) = {
    [ONCE_HOSTS] = parse_hosts,
    [ONCE_PROTECTION] = parse_protection,
    [ONCE_CHECKPOINT] = parse_checkpoint,
    [ONCE_PORTS] = parse_ports,
};

static gboolean parse_guest(xmlNodePtr guest, FtDef *def, GError **err)
{
    g_autofree char *gn = qname(guest);
    gboolean seen[N_ONCE] = { FALSE };

    if (!check_container(guest, err))
        return FALSE;
    for (xmlNodePtr c = guest->children; c; c = c->next) {
        g_autofree char *cn = NULL;
        guint k;

        if (c->type != XML_ELEMENT_NODE)
            continue;
        cn = qname(c);
        if (!is_ft(c))
            return invalid(err, "<%s>: unexpected element <%s>; allowed "
                           "children are %s, all in the %s namespace", gn, cn,
                           guest_children, FTDEF_NS);
        if (strcmp((const char *)c->name, "disk") == 0) {
            if (!parse_ft_disk(c, def, err))
                return FALSE;
            continue;
        }
        k = name_index(once_names, N_ONCE, (const char *)c->name);
        if (k == N_ONCE)
            return invalid(err, "<%s>: unknown element <%s>; allowed children "
                           "are %s", gn, cn, guest_children);
        if (seen[k] && k == ONCE_HOSTS)
            return invalid(err, "<%s>: duplicate <%s>; give both hosts "
                           "in one <%s>", gn, cn, cn);
        if (seen[k])
            return invalid(err, "<%s>: duplicate <%s>; keep one", gn, cn);
        seen[k] = TRUE;
        if (!once_parsers[k](c, def, err))
            return FALSE;
    }
    if (!seen[ONCE_HOSTS])
        return invalid(err, "<%s>: <ft:hosts> is missing; name the two hosts, "
                       "e.g. <ft:hosts><ft:host name='hostA' link-address="
                       "'192.168.100.1'/><ft:host name='hostB' link-address="
                       "'192.168.100.2'/></ft:hosts>", gn);
    if (def->disks->len == 0)
        return invalid(err, "<%s>: no <ft:disk>; name each disk to replicate, "
                       "e.g. <ft:disk target='vda'/>", gn);
    return check_level(def, seen[ONCE_CHECKPOINT], err);
}

/* Find the one <ft:guest>; NOT_FT if the domain has no kvm-ft metadata. */
static xmlNodePtr find_guest(xmlXPathContextPtr xp, xmlNodePtr root,
                             GError **err)
{
    g_autoptr(xmlXPathObject) other = NULL;
    g_autoptr(xmlXPathObject) guests = NULL;
    g_autoptr(xmlXPathObject) stray = NULL;
    xmlNodePtr guest;

    other = xpath(xp, "//*[starts-with(namespace-uri(), '" FTDEF_NS_FAMILY "')"
                      " and namespace-uri() != '" FTDEF_NS "']");
    if (nodes_count(other) > 0) {
        xmlNodePtr n = nodes_at(other, 0);
        g_autofree char *qn = qname(n);
        g_autofree char *href = show((const char *)n->ns->href);

        invalid(err, "<%s> in namespace '%s': unsupported kvm-ft metadata "
                "version; this kvm-ftd reads %s", qn, href, FTDEF_NS);
        return NULL;
    }

    guests = xpath(xp, "//ft:guest");
    if (nodes_count(guests) == 0) {
        g_autoptr(xmlXPathObject) any = xpath(xp, "//ft:*");

        if (nodes_count(any) > 0) {
            g_autofree char *qn = qname(nodes_at(any, 0));

            invalid(err, "<%s>: found outside <ft:guest>; kvm-ft metadata is "
                    "one <ft:guest> element in <metadata>", qn);
            return NULL;
        }
        g_set_error(err, FTDEF_ERROR, FTDEF_ERROR_NOT_FT,
                    "the domain has no <ft:guest xmlns:ft='%s'> in its "
                    "<metadata>", FTDEF_NS);
        return NULL;
    }
    if (nodes_count(guests) > 1) {
        invalid(err, "duplicate <ft:guest>: the domain has %d; keep exactly one "
                "in <metadata>", nodes_count(guests));
        return NULL;
    }
    guest = nodes_at(guests, 0);
    if (!guest->parent || guest->parent->parent != root ||
        !is_named(guest->parent, "metadata") || guest->parent->ns) {
        g_autofree char *qn = qname(guest);

        invalid(err, "<%s>: must be a direct child of <domain><metadata>", qn);
        return NULL;
    }
    stray = xpath(xp, "//ft:*[not(ancestor-or-self::ft:guest)]");
    if (nodes_count(stray) > 0) {
        g_autofree char *qn = qname(nodes_at(stray, 0));

        invalid(err, "<%s>: found outside <ft:guest>; put it inside "
                "<ft:guest> or remove it", qn);
        return NULL;
    }
    return guest;
}

/* ---- the rest of the domain ---------------------------------------- */

static gboolean parse_domain_identity(xmlXPathContextPtr xp, FtDef *def,
                                      GError **err)
{
    g_autoptr(xmlXPathObject) names = xpath(xp, "/domain/name");
    g_autoptr(xmlXPathObject) uuids = xpath(xp, "/domain/uuid");
    g_autofree char *name = NULL;
    const char *problem;

    if (nodes_count(names) != 1)
        return invalid(err, "<domain>: needs exactly one <name>, has %d",
                       nodes_count(names));
    name = text_of(nodes_at(names, 0));
    problem = ftdef_guest_name_problem(name);
    if (problem) {
        g_autofree char *v = show(name);

        return invalid(err, "<domain><name>: '%s' %s", v, problem);
    }
    def->name = g_steal_pointer(&name);
    if (nodes_count(uuids) > 1)
        return invalid(err, "<domain>: has %d <uuid> elements; keep one",
                       nodes_count(uuids));
    if (nodes_count(uuids) == 1) {
        def->uuid = text_of(nodes_at(uuids, 0));
        if (!*def->uuid)
            g_clear_pointer(&def->uuid, g_free);
    }
    return TRUE;
}

/* N of "/dev/drbdN": decimal, no leading zero, 0..FTDEF_DRBD_MINOR_MAX. */
static gboolean drbd_minor_of(const char *dev, guint *minor)
{
    const char *n = g_str_has_prefix(dev, "/dev/drbd") ? dev + strlen("/dev/drbd") : NULL;

    if (!n || (n[0] == '0' && n[1]))
        return FALSE;
    return parse_uint(n, 0, FTDEF_DRBD_MINOR_MAX, minor);
}

/* An ha disk: the guest writes to DRBD's device, raw. */
static gboolean resolve_drbd_source(xmlNodePtr node, FtDisk *fd, GError **err)
{
    xmlNodePtr drv = child(node, "driver");
    xmlNodePtr src = child(node, "source");
    g_autofree char *format = drv ? prop(drv, "type") : NULL;
    g_autofree char *dev = src ? prop(src, "dev") : NULL;

    if (!format)
        return invalid(err, "<ft:disk target='%s'>: its <disk> has no <driver type>; "
                       "add <driver name='qemu' type='raw'/> (the DRBD device is the "
                       "guest's raw disk)", fd->target);
    if (strcmp(format, "raw") != 0) {
        g_autofree char *v = show(format);

        return invalid(err, "<ft:disk target='%s'>: its <driver type='%s'> is not "
                       "supported at protection level ha: the DRBD device is the "
                       "guest's raw disk, use <driver name='qemu' type='raw'/>",
                       fd->target, v);
    }
    if (!dev || !*dev)
        return invalid(err, "<ft:disk target='%s'>: its <disk> has no <source dev>; "
                       "set <source dev='/dev/drbdN'/>, N the disk's DRBD minor",
                       fd->target);
    if (!drbd_minor_of(dev, &fd->drbd_minor)) {
        g_autofree char *v = show(dev);

        return invalid(err, "<ft:disk target='%s'>: its <source dev='%s'> is not a "
                       "DRBD device; use /dev/drbdN, N a minor from 0 to %d without "
                       "leading zeros", fd->target, v, FTDEF_DRBD_MINOR_MAX);
    }
    fd->format = g_steal_pointer(&format);
    fd->source_path = g_steal_pointer(&dev);
    return TRUE;
}

static gboolean resolve_disk(xmlXPathObjectPtr disks, FtDisk *fd, FtProtectionLevel level,
                             GError **err)
{
    g_autoptr(GString) known = g_string_new(NULL);
    xmlNodePtr node = NULL;
    g_autofree char *type = NULL;
    g_autofree char *device = NULL;
    g_autofree char *format = NULL;
    g_autofree char *source = NULL;
    xmlNodePtr drv, src;

    for (int i = 0; i < nodes_count(disks); i++) {
        xmlNodePtr d = nodes_at(disks, i);
        xmlNodePtr t = child(d, "target");
        g_autofree char *dev = t ? prop(t, "dev") : NULL;

        if (!dev)
            continue;
        if (strcmp(dev, fd->target) == 0) {
            if (node)
                return invalid(err, "<ft:disk target='%s'>: two domain <disk> "
                               "elements have <target dev='%s'>; give each disk "
                               "its own target", fd->target, fd->target);
            node = d;
        }
        if (target_valid(dev) && known->len < 200)
            g_string_append_printf(known, "%s%s", known->len ? ", " : "", dev);
        else if (known->len >= 200 && !g_str_has_suffix(known->str, "..."))
            g_string_append(known, ", ...");
    }
    if (!node)
        return invalid(err, "<ft:disk target='%s'>: the domain has no <disk> "
                       "with <target dev='%s'>; name one of its disks (%s)",
                       fd->target, fd->target,
                       known->len ? known->str : "it has none");

    /* libvirt's defaults when the attributes are absent. */
    type = prop(node, "type");
    device = prop(node, "device");
    if (device && strcmp(device, "disk") != 0) {
        g_autofree char *v = show(device);

        return invalid(err, "<ft:disk target='%s'>: its <disk device='%s'> "
                       "cannot be protected; only <disk type='%s' "
                       "device='disk'> can be replicated: remove this "
                       "<ft:disk>", fd->target, v,
                       level == FTDEF_LEVEL_HA ? "block" : "file");
    }
    if (level == FTDEF_LEVEL_HA && g_strcmp0(type, "block") != 0) {
        g_autofree char *v = show(type ? type : "file");

        return invalid(err, "<ft:disk target='%s'>: its <disk type='%s'> cannot be "
                       "mirrored by DRBD; protection level ha needs <disk type='block' "
                       "device='disk'> with <source dev='/dev/drbdN'/>", fd->target, v);
    }
    if (level == FTDEF_LEVEL_FT && type && strcmp(type, "file") != 0) {
        g_autofree char *v = show(type);

        return invalid(err, "<ft:disk target='%s'>: its <disk type='%s'> cannot "
                       "be protected; kvm-ft replicates image files: use "
                       "<disk type='file' device='disk'> with a qcow2 or raw "
                       "image", fd->target, v);
    }
    if (child(node, "readonly"))
        return invalid(err, "<ft:disk target='%s'>: its <disk> has <readonly/>; "
                       "a read-only disk needs no replication: remove this "
                       "<ft:disk> or the <readonly/>", fd->target);
    if (child(node, "shareable"))
        return invalid(err, "<ft:disk target='%s'>: its <disk> has "
                       "<shareable/>; a disk shared with other guests cannot be "
                       "replicated: remove <shareable/> and give the guest its "
                       "own image", fd->target);
    if (level == FTDEF_LEVEL_HA)
        return resolve_drbd_source(node, fd, err);
    drv = child(node, "driver");
    format = drv ? prop(drv, "type") : NULL;
    if (!format)
        return invalid(err, "<ft:disk target='%s'>: its <disk> has no <driver "
                       "type>; add <driver name='qemu' type='qcow2'/> (or "
                       "type='raw')", fd->target);
    if (strcmp(format, "qcow2") != 0 && strcmp(format, "raw") != 0) {
        g_autofree char *v = show(format);

        return invalid(err, "<ft:disk target='%s'>: its <driver type='%s'> is "
                       "not supported; convert the image to qcow2 or raw",
                       fd->target, v);
    }
    src = child(node, "source");
    source = src ? prop(src, "file") : NULL;
    if (!source || !*source)
        return invalid(err, "<ft:disk target='%s'>: its <disk> has no <source "
                       "file>; set <source file='/path/to/image'/>", fd->target);
    if (source[0] != '/') {
        g_autofree char *v = show(source);

        return invalid(err, "<ft:disk target='%s'>: its <source file='%s'> is "
                       "not an absolute path; give the full path", fd->target, v);
    }
    /* Where the file is must be plain to see (image-root checks the start of it). */
    if (strstr(source, "/../") || strstr(source, "/./") || g_str_has_suffix(source, "/..") ||
        g_str_has_suffix(source, "/.") || strstr(source, "//")) {
        g_autofree char *v = show(source);

        return invalid(err, "<ft:disk target='%s'>: its <source file='%s'> has '.', "
                       "'..' or empty components; give the plain path", fd->target, v);
    }
    fd->format = g_steal_pointer(&format);
    fd->source_path = g_steal_pointer(&source);
    return TRUE;
}

static char *describe_interface(xmlNodePtr iface)
{
    xmlNodePtr mac = child(iface, "mac");
    g_autofree char *addr = mac ? prop(mac, "address") : NULL;
    g_autofree char *v = NULL;

    if (!addr)
        return g_strdup("<interface>");
    v = show(addr);
    return g_strdup_printf("<interface> with <mac address='%s'>", v);
}

static gboolean check_interfaces(xmlXPathContextPtr xp, FtDef *def, GError **err)
{
    g_autoptr(xmlXPathObject) ifaces = xpath(xp, "/domain/devices/interface");
    int n = nodes_count(ifaces);

    if (n > 1)
        return invalid(err, "<devices>: the domain has %d <interface> elements; "
                       "kvm-ft does not yet support more than one: remove the "
                       "extra <interface> elements", n);
    for (int i = 0; i < n; i++) {
        xmlNodePtr iface = nodes_at(ifaces, i);
        g_autofree char *what = describe_interface(iface);
        g_autofree char *type = prop(iface, "type");
        xmlNodePtr model = child(iface, "model");
        xmlNodePtr drv = child(iface, "driver");
        g_autofree char *mtype = model ? prop(model, "type") : NULL;
        g_autofree char *dname = drv ? prop(drv, "name") : NULL;
        g_autofree char *queues = drv ? prop(drv, "queues") : NULL;
        guint nq;

        if (type && (strcmp(type, "hostdev") == 0 ||
                     strcmp(type, "vhostuser") == 0 ||
                     strcmp(type, "vdpa") == 0))
            return invalid(err, "%s: <interface type='%s'> cannot be protected: "
                           "its packets bypass QEMU; use a tap-based type "
                           "such as 'bridge' or 'network'", what, type);
        if (!mtype)
            return invalid(err, "%s: has no <model type>, so libvirt picks an "
                           "emulated NIC; add <model type='virtio'/>", what);
        if (strcmp(mtype, "virtio") != 0) {
            g_autofree char *v = show(mtype);

            return invalid(err, "%s: <model type='%s'> is not supported; use "
                           "<model type='virtio'/>", what, v);
        }
        if (dname && strcmp(dname, "vhost") == 0)
            return invalid(err, "%s: <driver name='vhost'> cannot be protected: "
                           "vhost-net bypasses QEMU, so COLO cannot compare its "
                           "packets; use <driver name='qemu'/>", what);
        if (!dname)
            return invalid(err, "%s: <driver name> is not set, so libvirt uses "
                           "vhost-net where available, which COLO cannot "
                           "protect; add <driver name='qemu'/>", what);
        if (strcmp(dname, "qemu") != 0) {
            g_autofree char *v = show(dname);

            return invalid(err, "%s: <driver name='%s'> is not supported; use "
                           "<driver name='qemu'/>", what, v);
        }
        if (queues && (!parse_uint(queues, 0, G_MAXUINT, &nq) || nq > 1)) {
            g_autofree char *v = show(queues);

            return invalid(err, "%s: <driver queues='%s'>: multiqueue is not "
                           "supported by COLO; remove the queues attribute",
                           what, v);
        }
    }
    def->n_interfaces = (guint)n;
    return TRUE;
}

static gboolean check_devices(xmlXPathContextPtr xp, FtDef *def, GError **err)
{
    g_autoptr(xmlXPathObject) hostdevs = xpath(xp, "/domain/devices/hostdev");
    g_autoptr(xmlXPathObject) commandline = xpath(
        xp, "/domain/*[local-name()='commandline' and "
            "namespace-uri()='http://libvirt.org/schemas/domain/qemu/1.0']");

    def->qemu_commandline = nodes_count(commandline) > 0;

    if (nodes_count(hostdevs) > 0)
        return invalid(err, "<hostdev>: a host device passed through to the "
                       "guest cannot be replicated; remove the <hostdev>");
    return TRUE;
}

/*
 * A writable disk kvm-ft does not replicate: each copy of the guest writes
 * its own, and after a failover the guest finds another disk than the one
 * it wrote.  Read-only media are the same on both hosts (the administrator
 * puts the file there) and may stay out.
 */
static gboolean check_unreplicated_disks(xmlXPathObjectPtr disks, const FtDef *def,
                                         GError **err)
{
    for (int i = 0; i < nodes_count(disks); i++) {
        xmlNodePtr d = nodes_at(disks, i);
        xmlNodePtr t = child(d, "target");
        g_autofree char *dev = t ? prop(t, "dev") : NULL;
        g_autofree char *device = prop(d, "device");
        gboolean replicated = FALSE;

        if (child(d, "readonly") || g_strcmp0(device, "cdrom") == 0 ||
            g_strcmp0(device, "floppy") == 0)
            continue;
        for (guint k = 0; dev && k < def->disks->len; k++) {
            const FtDisk *fd = g_ptr_array_index(def->disks, k);

            replicated |= strcmp(fd->target, dev) == 0;
        }
        if (replicated)
            continue;
        if (!dev || !target_valid(dev))
            return invalid(err, "<disk>: a writable disk without a valid <target dev> "
                           "cannot be replicated, and left alone it would differ "
                           "between the two copies of the guest; give it a target "
                           "and an <ft:disk>, or make it <readonly/>");
        return invalid(err, "<disk> with <target dev='%s'>: a writable disk kvm-ft "
                       "does not replicate would differ between the two copies of the "
                       "guest after a failover; replicate it with <ft:disk "
                       "target='%s'/>, or make it <readonly/>", dev, dev);
    }
    return TRUE;
}

/* Each ha disk its own DRBD device. */
static gboolean check_drbd_minors(const FtDef *def, GError **err)
{
    for (guint i = 0; def->level == FTDEF_LEVEL_HA && i < def->disks->len; i++) {
        const FtDisk *d = g_ptr_array_index(def->disks, i);

        for (guint k = 0; k < i; k++) {
            const FtDisk *o = g_ptr_array_index(def->disks, k);

            if (o->drbd_minor == d->drbd_minor)
                return invalid(err, "<ft:disk target='%s'>: its <source dev='%s'> is "
                               "<ft:disk target='%s'>'s too; give each disk its own "
                               "DRBD minor", d->target, d->source_path, o->target);
        }
    }
    return TRUE;
}

/* ---- parsing the document ------------------------------------------ */

/*
 * libxml2 checks an element's attributes for duplicates in quadratic time:
 * a few hundred KiB of attributes on one element take it minutes.  libvirt
 * elements have a handful, so count them first, in one linear pass: an
 * '=' outside quotes inside a start tag separates an attribute (or an
 * xmlns declaration) from its value.  Malformed input is left to the parser.
 * @xml is NUL-terminated at @len.
 */
static gboolean attributes_bounded(const char *xml, size_t len)
{
    const char *p = xml, *end = xml + len;

    while (p < end) {
        guint attrs = 0;
        char quote = 0;

        p = strchr(p, '<');
        if (!p)
            return TRUE;
        if (end - p >= 4 && memcmp(p, "<!--", 4) == 0) {
            p = strstr(p + 4, "-->");
            if (!p)
                return TRUE;
            p += 3;
            continue;
        }
        if (end - p >= 9 && memcmp(p, "<![CDATA[", 9) == 0) {
            p = strstr(p + 9, "]]>");
            if (!p)
                return TRUE;
            p += 3;
            continue;
        }
        if (end - p >= 2 && p[1] == '!')
            return TRUE; /* a DOCTYPE: the parser refuses it straight away */
        if (end - p >= 2 && p[1] == '?') {
            p = strstr(p + 2, "?>");
            if (!p)
                return TRUE;
            p += 2;
            continue;
        }
        for (p++; p < end; p++) {
            if (quote) {
                if (*p == quote)
                    quote = 0;
            } else if (*p == '"' || *p == '\'') {
                quote = *p;
            } else if (*p == '=') {
                if (++attrs > FTDEF_MAX_ATTRIBUTES)
                    return FALSE;
            } else if (*p == '>' || *p == '<') {
                break;
            }
        }
    }
    return TRUE;
}

typedef struct {
    gboolean saw_doctype;
    char *first_error;  /* libxml2 reports on; the first error is the cause */
    int first_error_line;
} ParseState;

static void record_error(void *ctx, xmlErrorPtr e)
{
    xmlParserCtxtPtr ctxt = ctx;
    ParseState *st = ctxt ? ctxt->_private : NULL;

    if (!st || !e || st->first_error || e->level < XML_ERR_ERROR)
        return;
    st->first_error = g_strdup(e->message ? e->message : "unknown error");
    st->first_error_line = e->line;
}

/* A DTD is where entities are declared: stop before any is. */
static void refuse_internal_subset(void *ctx, const xmlChar *name,
                                   const xmlChar *external_id,
                                   const xmlChar *system_id)
{
    xmlParserCtxtPtr ctxt = ctx;
    ParseState *st = ctxt->_private;

    (void)name;
    (void)external_id;
    (void)system_id;
    st->saw_doctype = TRUE;
    xmlStopParser(ctxt);
}

static xmlDocPtr read_doc(const char *xml, size_t len, GError **err)
{
    static gsize inited;
    g_autoptr(xmlParserCtxt) ctxt = NULL;
    ParseState st = { FALSE, NULL, 0 };
    xmlDocPtr doc;

    if (g_once_init_enter(&inited)) {
        xmlInitParser();
        g_once_init_leave(&inited, 1);
    }
    ctxt = xmlNewParserCtxt();
    if (!ctxt || !ctxt->sax) {
        invalid(err, "domain XML: cannot create an XML parser (out of memory)");
        return NULL;
    }
    ctxt->_private = &st;
    ctxt->sax->internalSubset = refuse_internal_subset;
    ctxt->sax->serror = record_error;
    /* No XML_PARSE_NOENT (entity substitution), DTDLOAD or HUGE. */
    doc = xmlCtxtReadMemory(ctxt, xml, (int)len, "domain.xml", NULL,
                            XML_PARSE_NONET | XML_PARSE_NOERROR |
                            XML_PARSE_NOWARNING);
    if (st.saw_doctype) {
        if (doc)
            xmlFreeDoc(doc);
        g_free(st.first_error);
        invalid(err, "domain XML: has a <!DOCTYPE>; kvm-ft refuses document "
                "type and entity declarations (libvirt never writes them): "
                "remove it");
        return NULL;
    }
    /* An undeclared prefix (a forgotten xmlns:ft) is only a namespace error. */
    if (!doc || !ctxt->wellFormed || !ctxt->nsWellFormed) {
        g_autofree char *msg = g_steal_pointer(&st.first_error);
        int line = st.first_error_line;

        if (doc)
            xmlFreeDoc(doc);
        if (!msg) {
            const xmlError *e = xmlCtxtGetLastError(ctxt);

            msg = g_strdup(e && e->message ? e->message : "unknown error");
            line = e ? e->line : 0;
        }
        g_strdelimit(msg, "\r\n\t", ' ');
        g_strstrip(msg);
        invalid(err, "domain XML: not well-formed at line %d: %s; fix the XML",
                line, msg);
        return NULL;
    }
    g_free(st.first_error);
    return doc;
}

FtDef *ftdef_parse(const char *domain_xml, GError **err)
{
    g_autoptr(xmlDoc) doc = NULL;
    g_autoptr(xmlXPathContext) xp = NULL;
    g_autoptr(FtDef) def = NULL;
    xmlNodePtr root, guest;
    size_t len;

    g_return_val_if_fail(err == NULL || *err == NULL, NULL);

    if (!domain_xml) {
        invalid(err, "domain XML: none given");
        return NULL;
    }
    len = strnlen(domain_xml, FTDEF_MAX_XML_SIZE + 1);
    if (len > FTDEF_MAX_XML_SIZE) {
        invalid(err, "domain XML: larger than %d MiB; refusing to parse it",
                FTDEF_MAX_XML_SIZE / (1024 * 1024));
        return NULL;
    }
    if (len == 0) {
        invalid(err, "domain XML: is empty; expected a libvirt <domain>");
        return NULL;
    }
    if (!attributes_bounded(domain_xml, len)) {
        invalid(err, "domain XML: an element has more than %d attributes; "
                "refusing to parse it", FTDEF_MAX_ATTRIBUTES);
        return NULL;
    }
    doc = read_doc(domain_xml, len, err);
    if (!doc)
        return NULL;
    root = xmlDocGetRootElement(doc);
    if (!root || !is_named(root, "domain") || root->ns) {
        g_autofree char *qn = root ? qname(root) : g_strdup("?");

        invalid(err, "<%s>: the root element must be <domain>; kvm-ft reads "
                "libvirt domain XML", qn);
        return NULL;
    }
    xp = xmlXPathNewContext(doc);
    if (!xp || xmlXPathRegisterNs(xp, (const xmlChar *)"ft",
                                  (const xmlChar *)FTDEF_NS) != 0) {
        invalid(err, "domain XML: cannot evaluate XPath (out of memory)");
        return NULL;
    }

    guest = find_guest(xp, root, err);
    if (!guest)
        return NULL;

    def = g_new0(FtDef, 1);
    def->checkpoint_interval_ms = FTDEF_INTERVAL_DEFAULT;
    def->compare_timeout_ms = FTDEF_COMPARE_TIMEOUT_DEFAULT;
    def->output_mode = FTDEF_OUTPUT_COMPARE;
    def->level = FTDEF_LEVEL_FT;
    def->port_base = FTDEF_PORT_BASE_DEFAULT;
    def->disks = g_ptr_array_new_with_free_func(ftdisk_free);

    if (!parse_guest(guest, def, err) ||
        !parse_domain_identity(xp, def, err))
        return NULL;
    {
        g_autoptr(xmlXPathObject) disks = xpath(xp, "/domain/devices/disk");

        for (guint i = 0; i < def->disks->len; i++) {
            if (!resolve_disk(disks, g_ptr_array_index(def->disks, i), def->level, err))
                return NULL;
        }
        if (!check_drbd_minors(def, err))
            return NULL;
        if (!check_unreplicated_disks(disks, def, err))
            return NULL;
    }
    if (!check_interfaces(xp, def, err) || !check_devices(xp, def, err))
        return NULL;
    return g_steal_pointer(&def);
}

guint ftdef_port_count(const FtDef *def)
{
    return def->level == FTDEF_LEVEL_HA ? MAX(def->disks->len, 1) : FT_PORT_COUNT;
}

gboolean ftdef_ports_overlap(const FtDef *a, const FtDef *b)
{
    return a->port_base < b->port_base + ftdef_port_count(b) &&
           b->port_base < a->port_base + ftdef_port_count(a);
}

gboolean ftdef_same_pair_and_disks(const FtDef *a, const FtDef *b)
{
    if (a->port_base != b->port_base || a->level != b->level ||
        a->disks->len != b->disks->len)
        return FALSE;
    for (guint i = 0; i < G_N_ELEMENTS(a->hosts); i++) {
        if (g_strcmp0(a->hosts[i].name, b->hosts[i].name) ||
            g_strcmp0(a->hosts[i].link_address, b->hosts[i].link_address) ||
            g_strcmp0(a->hosts[i].lan_address, b->hosts[i].lan_address))
            return FALSE;
    }
    for (guint i = 0; i < a->disks->len; i++) {
        const FtDisk *da = g_ptr_array_index(a->disks, i);
        const FtDisk *db = g_ptr_array_index(b->disks, i);

        if (g_strcmp0(da->target, db->target) ||
            g_strcmp0(da->backing_device, db->backing_device) ||
            da->drbd_minor != db->drbd_minor)
            return FALSE;
    }
    return TRUE;
}

const FtHost *ftdef_self(const FtDef *d, const char *my_host_name)
{
    if (!d || !my_host_name)
        return NULL;
    for (guint i = 0; i < G_N_ELEMENTS(d->hosts); i++) {
        if (g_strcmp0(d->hosts[i].name, my_host_name) == 0)
            return &d->hosts[i];
    }
    return NULL;
}

const FtHost *ftdef_peer(const FtDef *d, const char *my_host_name)
{
    const FtHost *self = ftdef_self(d, my_host_name);

    if (!self)
        return NULL;
    return self == &d->hosts[0] ? &d->hosts[1] : &d->hosts[0];
}
