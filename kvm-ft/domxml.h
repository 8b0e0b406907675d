/*
 * domxml.h - the libvirt domain XML a protected guest runs with
 *
 * The administrator's definition stays as written.  Each role runs a
 * derived definition (started with virDomainCreateXML, which libvirt
 * applies as the live config of the persistent domain): the replicated
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
    /* Secondary only: per replicated disk, in FtDef.disks order. */
    const char *const *active_overlays;
    const char *const *hidden_overlays;
} DomxmlPlumbing;

/* QEMU block node names, shared with the engine's QMP sequences. */
char *domxml_disk_node(guint index);      /* "colo-disk0": the quorum the guest sees */
char *domxml_parent_node(guint index);    /* "parent0": secondary's copy, NBD export */

char *domxml_for_role(const char *domain_xml, const FtDef *def, FtRole role,
                      const DomxmlPlumbing *plumbing, GError **err);
