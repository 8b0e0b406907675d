/*
 * verify.h - comparing the two copies of a protected guest's disks while it runs
 *
 * The primary exports each disk read-only on an NBD server of its own, on
 * a unix socket in kvm-ftd's run dir; the secondary's copies are already
 * exported on the dedicated link for the replication (parent0, ...).
 * `ftctl verify` reads both and compares them (tools/ftctl.c).  While the
 * pair is protected every guest write goes to both copies before the guest
 * hears it is done, so two reads of a block differ only while a write to
 * it is under way, or for good: ftctl reads a differing block again before
 * it counts it.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "engine.h"
#include "qmp.h"

/*
 * On the protected primary: starts the exports (replacing those of a verify
 * that never ended) and describes each disk for ftctl: {"disks": [{"target",
 * "primary": NBD URI, "secondary": NBD URI}, ...]} (the sizes come with the
 * copies themselves).
 */
JsonNode *verify_export(Qmp *q, const EngineLink *link, const char *socket_path,
                        GError **err);

/* Ends them; nothing to end is no error. */
void verify_unexport(Qmp *q, const EngineLink *link);

/*
 * ftctl's findings ({"disks": [{"target", "bytes", "differing_bytes",
 * "ranges": [[offset, length], ...]}, ...]}, as it reports them), checked
 * for shape: FALSE with the reason if they are not that.  *differing: the
 * sum over the disks.
 */
gboolean verify_result_valid(JsonNode *result, guint n_disks, guint64 *differing,
                             GError **err);
