/* domxml.c - the libvirt domain XML a protected guest runs with */
#include "domxml.h"

#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#define QEMU_NS "http://libvirt.org/schemas/domain/qemu/1.0"

/* The first PCI slot we hand out when libvirt assigned none to a disk. */
#define FALLBACK_PCI_SLOT 0x10

G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathContext, xmlXPathFreeContext)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlXPathObject, xmlXPathFreeObject)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlBuffer, xmlBufferFree)

char *domxml_disk_node(guint index)
{
    return g_strdup_printf("colo-disk%u", index);
}

char *domxml_parent_node(guint index)
{
    return g_strdup_printf("parent%u", index);
}

char *domxml_quorum_node(guint index)
{
    return g_strdup_printf("kvmft-quorum%u", index);
}

char *domxml_data_node(guint index)
{
    return g_strdup_printf("kvmft-data%u", index);
}

/* QEMU's option syntax escapes a comma in a value by doubling it. */
static char *qemu_opt_escape(const char *value)
{
    GString *s = g_string_new(NULL);

    for (const char *p = value; *p; p++) {
        if (*p == ',')
            g_string_append_c(s, ',');
        g_string_append_c(s, *p);
    }
    return g_string_free(s, FALSE);
}

static xmlNodePtr find_disk(xmlXPathContextPtr ctx, const char *target)
{
    g_autofree char *expr =
        g_strdup_printf("/domain/devices/disk[target/@dev='%s']", target);
    g_autoptr(xmlXPathObject) res = NULL;

    /* ftdef validated the target against the same document. */
    if (strchr(target, '\''))
        return NULL;
    res = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    if (!res || !res->nodesetval || res->nodesetval->nodeNr != 1)
        return NULL;
    return res->nodesetval->nodeTab[0];
}

/* "0x1f" and the like, at most max: a number, never text that reaches QEMU's options. */
static gboolean pci_number(const xmlChar *text, guint max, guint *out)
{
    const char *s = (const char *)text;
    guint64 n;
    char *end = NULL;

    if (!s || !g_str_has_prefix(s, "0x") || !g_ascii_isxdigit(s[2]))
        return FALSE;
    n = g_ascii_strtoull(s + 2, &end, 16);
    if (*end || n > max)
        return FALSE;
    *out = (guint)n;
    return TRUE;
}

/*
 * The guest must see the disk where libvirt put it, or its device names
 * move.  NULL with err when its <address> is not a PCI slot and function.
 */
static char *disk_pci_addr(xmlXPathContextPtr ctx, xmlNodePtr disk,
                           guint index, const char *target, GError **err)
{
    g_autoptr(xmlXPathObject) res = NULL;
    xmlNodePtr addr;
    g_autofree xmlChar *type = NULL;
    g_autofree xmlChar *slot = NULL;
    g_autofree xmlChar *function = NULL;
    guint slot_n, function_n = 0;

    ctx->node = disk;
    res = xmlXPathEvalExpression((const xmlChar *)"address", ctx);
    if (!res || !res->nodesetval || res->nodesetval->nodeNr != 1)
        return g_strdup_printf("0x%x", FALLBACK_PCI_SLOT + index);
    addr = res->nodesetval->nodeTab[0];
    type = xmlGetProp(addr, (const xmlChar *)"type");
    slot = xmlGetProp(addr, (const xmlChar *)"slot");
    function = xmlGetProp(addr, (const xmlChar *)"function");
    if (!type || strcmp((const char *)type, "pci") != 0 || !slot)
        return g_strdup_printf("0x%x", FALLBACK_PCI_SLOT + index);
    if (!pci_number(slot, 0x1f, &slot_n) || (function && !pci_number(function, 7, &function_n))) {
        g_autofree char *shown_slot = g_strescape((const char *)slot, NULL);
        g_autofree char *shown_function = g_strescape(function ? (const char *)function : "",
                                                      NULL);

        g_set_error(err, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                    "<disk> '%s': <address type='pci' slot='%.20s' function='%.20s'> is not "
                    "a PCI slot (0x0-0x1f) and function (0x0-0x7)", target, shown_slot,
                    shown_function);
        return NULL;
    }
    if (function_n)
        return g_strdup_printf("0x%x.%x", slot_n, function_n);
    return g_strdup_printf("0x%x", slot_n);
}

static void add_arg(xmlNodePtr cmdline, xmlNsPtr qns, const char *value)
{
    xmlNodePtr arg = xmlNewChild(cmdline, qns, (const xmlChar *)"arg", NULL);

    xmlNewProp(arg, (const xmlChar *)"value", (const xmlChar *)value);
}

static void add_args(xmlNodePtr cmdline, xmlNsPtr qns, const char *opt,
                     const char *value)
{
    add_arg(cmdline, qns, opt);
    add_arg(cmdline, qns, value);
}

/*
 * The disk's <boot order='N'/>, as QEMU's bootindex option (empty if none):
 * the guest boots from a replicated disk as libvirt would have had it.
 * Digits only, as libvirt accepts them: the value goes into QEMU's options.
 */
static char *disk_bootindex(xmlNodePtr disk, GError **err)
{
    for (xmlNodePtr c = disk->children; c; c = c->next) {
        xmlChar *attr;
        g_autofree char *order = NULL;

        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "boot") != 0)
            continue;
        attr = xmlGetNoNsProp(c, (const xmlChar *)"order");
        order = g_strdup((const char *)attr);
        xmlFree(attr);
        if (!order || !*order || strlen(order) > 5 ||
            strspn(order, "0123456789") != strlen(order)) {
            g_set_error(err, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                        "<disk>: <boot order> must be a number from 1 to 99999");
            return NULL;
        }
        return g_strdup_printf(",bootindex=%s", order);
    }
    return g_strdup("");
}

static void add_disk_args(xmlNodePtr cmdline, xmlNsPtr qns, const FtDisk *disk,
                          guint index, FtRole role, const DomxmlPlumbing *plumbing,
                          const char *pci_addr, const char *bootindex)
{
    g_autofree char *src = qemu_opt_escape(disk->source_path);
    g_autofree char *node = domxml_disk_node(index);
    g_autofree char *parent = domxml_parent_node(index);
    g_autofree char *data = domxml_data_node(index);
    g_autofree char *quorum = domxml_quorum_node(index);
    g_autofree char *drive = NULL;
    g_autofree char *device = NULL;

    if (role == FT_ROLE_PRIMARY) {
        /* The replication child joins this quorum at runtime (x-blockdev-change). */
        drive = g_strdup_printf("if=none,id=%s,node-name=%s,driver=quorum,"
                                "read-pattern=fifo,vote-threshold=1,"
                                "children.0.file.filename=%s,children.0.driver=%s,"
                                "children.0.node-name=%s",
                                node, quorum, src, disk->format, data);
        add_args(cmdline, qns, "-drive", drive);
    } else {
        g_autofree char *active = qemu_opt_escape(plumbing->active_overlays[index]);
        g_autofree char *hidden = qemu_opt_escape(plumbing->hidden_overlays[index]);
        g_autofree char *parent_drive = NULL;
        g_autofree char *child_drive = NULL;

        parent_drive = g_strdup_printf("if=none,id=%s,file.filename=%s,driver=%s,"
                                       "node-name=%s",
                                       parent, src, disk->format, data);
        child_drive = g_strdup_printf(
            "if=none,id=childs%u,driver=replication,mode=secondary,"
            "file.driver=qcow2,top-id=%s,file.file.filename=%s,"
            "file.backing.driver=qcow2,file.backing.file.filename=%s,"
            "file.backing.backing=%s",
            index, node, active, hidden, parent);
        drive = g_strdup_printf("if=none,id=%s,node-name=%s,driver=quorum,"
                                "read-pattern=fifo,vote-threshold=1,children.0=childs%u",
                                node, quorum, index);
        add_args(cmdline, qns, "-drive", parent_drive);
        add_args(cmdline, qns, "-drive", child_drive);
        add_args(cmdline, qns, "-drive", drive);
    }
    device = g_strdup_printf("virtio-blk-pci,id=kvmft-vblk%u,drive=%s,bus=pci.0,addr=%s%s",
                             index, node, pci_addr, bootindex);
    add_args(cmdline, qns, "-device", device);
}

static xmlNodePtr ensure_cmdline(xmlNodePtr root, xmlNsPtr *qns_out)
{
    xmlNsPtr qns = xmlSearchNsByHref(root->doc, root, (const xmlChar *)QEMU_NS);
    xmlNodePtr cur;

    if (!qns)
        qns = xmlNewNs(root, (const xmlChar *)QEMU_NS, (const xmlChar *)"qemu");
    *qns_out = qns;
    for (cur = root->children; cur; cur = cur->next) {
        if (cur->type == XML_ELEMENT_NODE && cur->ns &&
            strcmp((const char *)cur->ns->href, QEMU_NS) == 0 &&
            strcmp((const char *)cur->name, "commandline") == 0)
            return cur;
    }
    return xmlNewChild(root, qns, (const xmlChar *)"commandline", NULL);
}

/* colo-compare needs an iothread; libvirt names the first one "iothread1". */
static void ensure_iothread(xmlXPathContextPtr ctx, xmlNodePtr root)
{
    g_autoptr(xmlXPathObject) res = NULL;

    ctx->node = root;
    res = xmlXPathEvalExpression((const xmlChar *)"/domain/iothreads", ctx);
    if (res && res->nodesetval && res->nodesetval->nodeNr > 0)
        return;
    xmlNewTextChild(root, NULL, (const xmlChar *)"iothreads", (const xmlChar *)"1");
}

char *domxml_for_role(const char *domain_xml, const FtDef *def, FtRole role,
                      const DomxmlPlumbing *plumbing, GError **err)
{
    g_autoptr(xmlDoc) doc = NULL;
    g_autoptr(xmlXPathContext) ctx = NULL;
    xmlNodePtr root;
    xmlNodePtr cmdline;
    xmlNsPtr qns;
    g_autofree char *qmp = NULL;
    g_autofree char *qmp_path = NULL;
    xmlChar *out = NULL;
    int out_len = 0;
    char *result;

    g_return_val_if_fail(role != FT_ROLE_NONE, NULL);

    doc = xmlReadMemory(domain_xml, strlen(domain_xml), "domain.xml", NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc || !(root = xmlDocGetRootElement(doc)) ||
        strcmp((const char *)root->name, "domain") != 0) {
        g_set_error(err, G_MARKUP_ERROR, G_MARKUP_ERROR_PARSE,
                    "domain XML of '%s' cannot be parsed", def->name);
        return NULL;
    }
    ctx = xmlXPathNewContext(doc);

    cmdline = ensure_cmdline(root, &qns);
    qmp_path = qemu_opt_escape(plumbing->qmp_socket);
    qmp = g_strdup_printf("socket,id=kvmft-qmp,path=%s,server=on,wait=off", qmp_path);
    add_args(cmdline, qns, "-chardev", qmp);
    add_args(cmdline, qns, "-mon", "chardev=kvmft-qmp,mode=control");
    if (plumbing->own_start) {
        xmlNodePtr env = xmlNewChild(cmdline, qns, (const xmlChar *)"env", NULL);

        xmlNewProp(env, (const xmlChar *)"name", (const xmlChar *)DOMXML_OWN_START_ENV);
        xmlNewProp(env, (const xmlChar *)"value", (const xmlChar *)"kvm-ftd");
    }

    for (guint i = 0; i < def->disks->len; i++) {
        const FtDisk *disk = g_ptr_array_index(def->disks, i);
        xmlNodePtr node = find_disk(ctx, disk->target);
        g_autofree char *pci_addr = NULL;
        g_autofree char *bootindex = NULL;

        if (!node) {
            g_set_error(err, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                        "<disk> with <target dev='%s'> not found in '%s'",
                        disk->target, def->name);
            return NULL;
        }
        pci_addr = disk_pci_addr(ctx, node, i, disk->target, err);
        if (!pci_addr)
            return NULL;
        bootindex = disk_bootindex(node, err);
        if (!bootindex)
            return NULL;
        xmlUnlinkNode(node);
        xmlFreeNode(node);
        add_disk_args(cmdline, qns, disk, i, role, plumbing, pci_addr, bootindex);
    }
    ensure_iothread(ctx, root);

    /* COLO's incoming side is started over QMP once the filters are in place. */
    if (role == FT_ROLE_SECONDARY)
        add_args(cmdline, qns, "-incoming", "defer");

    /* UTF-8 whatever the original declared: the result is a C string libvirt parses. */
    xmlDocDumpFormatMemoryEnc(doc, &out, &out_len, "UTF-8", 1);
    result = g_strndup((const char *)out, out_len);
    xmlFree(out);
    return result;
}

gboolean domxml_is_derived(const char *domain_xml)
{
    g_autoptr(xmlDoc) doc = xmlReadMemory(domain_xml, strlen(domain_xml), "domain.xml", NULL,
                                          XML_PARSE_NONET | XML_PARSE_NOERROR |
                                          XML_PARSE_NOWARNING);
    g_autoptr(xmlXPathContext) ctx = NULL;
    g_autoptr(xmlXPathObject) res = NULL;

    if (!doc)
        return FALSE;
    ctx = xmlXPathNewContext(doc);
    xmlXPathRegisterNs(ctx, (const xmlChar *)"q", (const xmlChar *)QEMU_NS);
    res = xmlXPathEvalExpression(
        (const xmlChar *)"/domain/q:commandline/q:arg[starts-with(@value, 'socket,id=kvmft-qmp,')]",
        ctx);
    return res && res->nodesetval && res->nodesetval->nodeNr > 0;
}

static xmlNodePtr ft_metadata(xmlDocPtr doc)
{
    xmlNodePtr root = xmlDocGetRootElement(doc);

    for (xmlNodePtr m = root ? root->children : NULL; m; m = m->next) {
        if (m->type != XML_ELEMENT_NODE || strcmp((const char *)m->name, "metadata") != 0)
            continue;
        for (xmlNodePtr c = m->children; c; c = c->next) {
            if (c->type == XML_ELEMENT_NODE && c->ns &&
                strcmp((const char *)c->ns->href, FTDEF_NS) == 0)
                return c;
        }
    }
    return NULL;
}

/* libvirt puts a metadata element into its namespace itself, and refuses one already in it. */
static void strip_namespace(xmlNodePtr node)
{
    for (; node; node = node->next) {
        if (node->type != XML_ELEMENT_NODE)
            continue;
        node->ns = NULL;
        xmlFreeNsList(node->nsDef);
        node->nsDef = NULL;
        strip_namespace(node->children);
    }
}

char *domxml_ft_metadata_element(const char *domain_xml, GError **err)
{
    g_autoptr(xmlDoc) doc = xmlReadMemory(domain_xml, strlen(domain_xml), "domain.xml", NULL,
                                          XML_PARSE_NONET | XML_PARSE_NOERROR |
                                          XML_PARSE_NOWARNING);
    xmlNodePtr el = doc ? ft_metadata(doc) : NULL;
    g_autoptr(xmlBuffer) buf = NULL;

    if (!el) {
        g_set_error(err, G_MARKUP_ERROR, G_MARKUP_ERROR_PARSE,
                    "the definition has no kvm-ft metadata");
        return NULL;
    }
    xmlUnlinkNode(el);
    el->next = NULL;
    strip_namespace(el);
    buf = xmlBufferCreate();
    xmlNodeDump(buf, doc, el, 0, 0);
    xmlFreeNode(el);
    return g_strdup((const char *)xmlBufferContent(buf));
}

char *domxml_with_ft_metadata_of(const char *original, const char *current, GError **err)
{
    const int opts = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
    g_autoptr(xmlDoc) orig = xmlReadMemory(original, strlen(original), "original.xml", NULL, opts);
    g_autoptr(xmlDoc) cur = xmlReadMemory(current, strlen(current), "current.xml", NULL, opts);
    xmlNodePtr old_el, new_el, copy;
    xmlChar *out = NULL;
    int out_len = 0;
    char *result;

    if (!orig || !cur || !(old_el = ft_metadata(orig)) || !(new_el = ft_metadata(cur))) {
        g_set_error(err, G_MARKUP_ERROR, G_MARKUP_ERROR_PARSE,
                    "cannot carry the kvm-ft metadata over to the original definition");
        return NULL;
    }
    copy = xmlDocCopyNode(new_el, orig, 1);
    xmlReplaceNode(old_el, copy);
    xmlFreeNode(old_el);
    xmlDocDumpFormatMemoryEnc(orig, &out, &out_len, "UTF-8", 1);
    result = g_strndup((const char *)out, out_len);
    xmlFree(out);
    return result;
}
