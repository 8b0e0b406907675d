/*
 * nbdprobe.h - whether the peer's NBD server answers, asked without QEMU
 *
 * QEMU opens a blockdev-add'ed NBD node synchronously: when a firewall
 * drops the connection, its main loop (QMP included) waits out the
 * kernel's SYN retries, about two minutes, and a running guest's QEMU with
 * it.  kvm-ftd first connects on its own, asynchronously and bounded, reads
 * the server's NBD greeting and leaves with NBD_OPT_ABORT, so that the
 * server logs no broken negotiation.
 */
#pragma once

#include <glib.h>

/* error is NULL when an NBD server greeted; the callback runs on the main loop. */
typedef void (*NbdProbeDone)(const GError *error, gpointer opaque);

void nbd_probe(const char *host, guint16 port, guint timeout_ms, NbdProbeDone done,
               gpointer opaque);
