/*
 * virt.h - the host's libvirtd, as kvm-ft uses it
 *
 * The administrator's persistent definition is never rewritten: a protected
 * guest is started with virDomainCreateXML() on its role's derived XML,
 * which libvirt runs as the live config of the persistent domain and drops
 * again when the guest stops.
 */
#pragma once

#include <glib.h>

typedef struct Virt Virt;

Virt *virt_open(const char *uri, GError **err);
void virt_close(Virt *v);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Virt, virt_close)

/* The persistent (inactive) definition, as the administrator wrote it. */
char *virt_domain_xml(Virt *v, const char *name, GError **err);

/* Defines the domain unless one of that name exists; TRUE if it defined it. */
gboolean virt_domain_define_missing(Virt *v, const char *name, const char *xml,
                                    gboolean *defined, GError **err);

gboolean virt_domain_start(Virt *v, const char *runtime_xml, gboolean paused,
                           GError **err);
gboolean virt_domain_destroy(Virt *v, const char *name, GError **err);
gboolean virt_domain_is_active(Virt *v, const char *name, gboolean *active,
                               GError **err);

/* Names of the running domains. */
GPtrArray *virt_active_domains(Virt *v, GError **err);
