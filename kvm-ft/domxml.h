/*
 * domxml.h - the libvirt domain XML a protected guest runs with
 *
 * Each role runs a definition derived from the administrator's (started
 * with virDomainCreateXML, which libvirt applies as the live config of the
 * persistent domain, or, for `virsh start`, installed as the persistent
 * definition itself; see definitions.c): the replicated
 * disks move from <disk> to QEMU's COLO drive chain, and the daemon gets a
 * QMP socket of its own.  All COLO network plumbing is added later over
 * that socket, so nothing here depends on the peer being up.
 */
#pragma once

#include <glib.h>

#include "ft.h"
#include "ftdef.h"

typedef struct {
    const char *qmp_socket;
    /* Started by kvm-ftd itself (virDomainCreateXML), not by `virsh start`:
     * marked so that kvm-ft's libvirt hook lets it through at once. */
    gboolean own_start;
    /* Secondary only: per replicated disk, in FtDef.disks order. */
    const char *const *active_overlays;
    const char *const *hidden_overlays;
} DomxmlPlumbing;

/* QEMU block node names, shared with the engine's QMP sequences. */
char *domxml_disk_node(guint index);      /* "colo-disk0": the quorum the guest sees */
char *domxml_parent_node(guint index);    /* "parent0": secondary's copy, NBD export */
/*
 * "kvmft-quorum0": the quorum's own node.  The device name above resolves to
 * whatever filter a block job put on top of it.
 */
char *domxml_quorum_node(guint index);
/* "kvmft-data0": the format node of the guest's own disk, in either role;
 * its dirty bitmap says what a returning peer's copy lacks. */
char *domxml_data_node(guint index);

char *domxml_for_role(const char *domain_xml, const FtDef *def, FtRole role,
                      const DomxmlPlumbing *plumbing, GError **err);

/* The environment variable that marks kvm-ftd's own starts (see own_start). */
#define DOMXML_OWN_START_ENV "KVMFT_STARTED_BY"

/*
 * Is this a definition kvm-ftd derived (it carries kvm-ftd's QMP socket)
 * rather than one the administrator wrote?
 */
gboolean domxml_is_derived(const char *domain_xml);

/*
 * The original definition with the kvm-ft metadata element of the derived
 * one in its place: `virsh metadata --set` changes the derived definition,
 * which libvirt holds, while kvm-ftd reads the original.
 */
char *domxml_with_ft_metadata_of(const char *original, const char *current, GError **err);
/* The <ft:guest> element of a domain's definition, as text. */
char *domxml_ft_metadata_element(const char *domain_xml, GError **err);
