/* status.c - the status element kvm-ftd keeps in each FT guest's <metadata> */
#include "status.h"

#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlBuffer, xmlBufferFree)

/* XML 1.0 has no way to write these, not even as character references. */
static char *xml_safe(const char *text)
{
    char *safe = g_utf8_make_valid(text, -1);

    for (char *p = safe; *p; p++) {
        if ((guchar)*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r')
            *p = ' ';
    }
    return safe;
}

static char *dump(xmlDocPtr doc, xmlNodePtr node)
{
    g_autoptr(xmlBuffer) buf = xmlBufferCreate();

    if (!buf || xmlNodeDump(buf, doc, node, 0, 0) < 0)
        g_error("status: out of memory serialising XML");
    return g_strdup((const char *)xmlBufferContent(buf));
}

char *status_xml(const char *state, const char *reason, gint64 updated_us)
{
    g_autoptr(xmlDoc) doc = xmlNewDoc((const xmlChar *)"1.0");
    g_autoptr(GDateTime) at = g_date_time_new_from_unix_utc(updated_us / G_USEC_PER_SEC);
    g_autofree char *seconds = g_date_time_format(at, "%Y-%m-%dT%H:%M:%S");
    g_autofree char *stamp = g_strdup_printf("%s.%03dZ", seconds,
                                             (int)(updated_us % G_USEC_PER_SEC / 1000));
    g_autofree char *safe_state = xml_safe(state);
    g_autofree char *safe_reason = xml_safe(reason);
    xmlNodePtr node = xmlNewDocNode(doc, NULL, (const xmlChar *)"status", NULL);

    xmlDocSetRootElement(doc, node);
    /* xmlNewProp stores the raw text; the serialiser escapes it. */
    xmlNewProp(node, (const xmlChar *)"state", (const xmlChar *)safe_state);
    xmlNewProp(node, (const xmlChar *)"reason", (const xmlChar *)safe_reason);
    xmlNewProp(node, (const xmlChar *)"updated", (const xmlChar *)stamp);
    return dump(doc, node);
}

static gboolean is_status(xmlNodePtr node)
{
    return node->type == XML_ELEMENT_NODE && node->ns && node->ns->href &&
           strcmp((const char *)node->ns->href, STATUS_NS) == 0;
}

char *status_strip(const char *domain_xml, GError **err)
{
    g_autoptr(xmlDoc) doc = xmlReadMemory(domain_xml, (int)strlen(domain_xml),
                                          "domain.xml", NULL,
                                          XML_PARSE_NONET | XML_PARSE_NOERROR |
                                          XML_PARSE_NOWARNING);
    xmlNodePtr root = doc ? xmlDocGetRootElement(doc) : NULL;
    gboolean found = FALSE;

    if (!root) {
        g_set_error(err, STATUS_ERROR, 0, "domain XML from libvirt is not well-formed");
        return NULL;
    }
    /* libvirt keeps metadata elements as direct children of <metadata>. */
    for (xmlNodePtr md = root->children; md; md = md->next) {
        xmlNodePtr next;

        if (md->type != XML_ELEMENT_NODE || md->ns ||
            strcmp((const char *)md->name, "metadata") != 0)
            continue;
        for (xmlNodePtr n = md->children; n; n = next) {
            next = n->next;
            if (!is_status(n))
                continue;
            /* Its indentation goes with it. */
            if (n->prev && xmlIsBlankNode(n->prev)) {
                xmlNodePtr blank = n->prev;

                xmlUnlinkNode(blank);
                xmlFreeNode(blank);
            }
            xmlUnlinkNode(n);
            xmlFreeNode(n);
            found = TRUE;
        }
    }
    return found ? dump(doc, root) : g_strdup(domain_xml);
}
