/* virt.c - the host's libvirtd, as kvm-ft uses it */
#include "virt.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

struct Virt {
    virConnectPtr conn;
};

G_DEFINE_AUTOPTR_CLEANUP_FUNC(virDomain, virDomainFree)

#define VIRT_ERROR g_quark_from_static_string("kvmft-virt-error")

/* libvirt prints every error to stderr by default; ours go through GError. */
static void silence(void *opaque, virErrorPtr error)
{
    (void)opaque;
    (void)error;
}

static void set_virt_error(GError **err, const char *what, const char *name)
{
    g_set_error(err, VIRT_ERROR, 0, "%s '%s': %s", what, name,
                virGetLastErrorMessage());
}

Virt *virt_open(const char *uri, GError **err)
{
    Virt *v;
    virConnectPtr conn;

    virSetErrorFunc(NULL, silence);
    conn = virConnectOpen(uri);
    if (!conn) {
        g_set_error(err, VIRT_ERROR, 0, "cannot connect to libvirt at %s: %s",
                    uri, virGetLastErrorMessage());
        return NULL;
    }
    v = g_new0(Virt, 1);
    v->conn = conn;
    return v;
}

void virt_close(Virt *v)
{
    if (!v)
        return;
    virConnectClose(v->conn);
    g_free(v);
}

static virDomainPtr lookup(Virt *v, const char *name, GError **err)
{
    virDomainPtr dom = virDomainLookupByName(v->conn, name);

    if (!dom)
        set_virt_error(err, "no such domain", name);
    return dom;
}

char *virt_domain_xml(Virt *v, const char *name, GError **err)
{
    g_autoptr(virDomain) dom = lookup(v, name, err);
    char *xml;
    char *copy;

    if (!dom)
        return NULL;
    xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    if (!xml) {
        set_virt_error(err, "cannot read the definition of", name);
        return NULL;
    }
    /* libvirt's strings are malloc()ed; callers free with g_free. */
    copy = g_strdup(xml);
    free(xml);
    return copy;
}

gboolean virt_domain_define_missing(Virt *v, const char *name, const char *xml,
                                    gboolean *defined, GError **err)
{
    g_autoptr(virDomain) dom = virDomainLookupByName(v->conn, name);

    *defined = FALSE;
    if (dom)
        return TRUE;
    dom = virDomainDefineXML(v->conn, xml);
    if (!dom) {
        set_virt_error(err, "cannot define", name);
        return FALSE;
    }
    *defined = TRUE;
    return TRUE;
}

gboolean virt_domain_start(Virt *v, const char *runtime_xml, gboolean paused,
                           GError **err)
{
    g_autoptr(virDomain) dom =
        virDomainCreateXML(v->conn, runtime_xml,
                           paused ? VIR_DOMAIN_START_PAUSED : 0);

    if (!dom) {
        g_set_error(err, VIRT_ERROR, 0, "libvirt cannot start the guest: %s",
                    virGetLastErrorMessage());
        return FALSE;
    }
    return TRUE;
}

gboolean virt_domain_destroy(Virt *v, const char *name, GError **err)
{
    g_autoptr(virDomain) dom = lookup(v, name, err);

    if (!dom)
        return FALSE;
    if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0) {
        set_virt_error(err, "cannot destroy", name);
        return FALSE;
    }
    return TRUE;
}

gboolean virt_domain_is_active(Virt *v, const char *name, gboolean *active,
                               GError **err)
{
    g_autoptr(virDomain) dom = lookup(v, name, err);
    int ret;

    if (!dom)
        return FALSE;
    ret = virDomainIsActive(dom);
    if (ret < 0) {
        set_virt_error(err, "cannot query", name);
        return FALSE;
    }
    *active = ret == 1;
    return TRUE;
}

GPtrArray *virt_active_domains(Virt *v, GError **err)
{
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(v->conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    GPtrArray *names;

    if (n < 0) {
        g_set_error(err, VIRT_ERROR, 0, "cannot list domains: %s",
                    virGetLastErrorMessage());
        return NULL;
    }
    names = g_ptr_array_new_with_free_func(g_free);
    for (int i = 0; i < n; i++) {
        g_ptr_array_add(names, g_strdup(virDomainGetName(doms[i])));
        virDomainFree(doms[i]);
    }
    free(doms);
    return names;
}
