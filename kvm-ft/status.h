/*
 * status.h - the status element kvm-ftd keeps in each FT guest's <metadata>
 *
 * So that `virsh dumpxml` (and anything reading libvirt) shows what kvm-ftd
 * makes of a guest, each daemon writes, on its own host, one element in
 * STATUS_NS next to the administrator's <ft:guest>:
 *
 *     <ftstatus:status xmlns:ftstatus="https://kvm-ft.dev/xmlns/status/1"
 *                      state="protected" reason="first checkpoint done; COLO running"
 *                      updated="2026-01-02T03:04:05.678Z"/>
 *
 * state is STATUS_REFUSED, STATUS_READY, or a guest state name (guest.h).
 * The element is kvm-ftd's, not the administrator's: status_strip() takes
 * it out again wherever the definition is read.
 */
#pragma once

#include <glib.h>

#define STATUS_NS "https://kvm-ft.dev/xmlns/status/1"
/* The namespace prefix libvirt writes the element with. */
#define STATUS_KEY "ftstatus"

/* The definition cannot be protected; the reason says why. */
#define STATUS_REFUSED "refused"
/* Valid, and defined on both hosts: `ftctl protect` can start it. */
#define STATUS_READY "ready"

#define STATUS_ERROR g_quark_from_static_string("kvmft-status-error")

/*
 * <status state=... reason=... updated=.../> without a namespace (libvirt
 * adds STATUS_NS and STATUS_KEY).  updated_us is wall-clock time
 * (g_get_real_time()), written as ISO-8601 UTC with milliseconds.  Any
 * text is fine as reason: libxml2 escapes it, and what XML cannot carry at
 * all (invalid UTF-8, control characters) becomes U+FFFD or a space.
 */
char *status_xml(const char *state, const char *reason, gint64 updated_us);

/*
 * domain_xml without kvm-ftd's status element.  Returns domain_xml
 * unchanged (a copy) when there is none; NULL with err if it is not XML.
 */
char *status_strip(const char *domain_xml, GError **err);
