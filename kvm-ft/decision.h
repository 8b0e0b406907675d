/*
 * decision.h - what one kvm-ftd tells the other to do about a guest
 *
 * take-over, secondary-lost and stand-down change which copy of a guest
 * runs.  Each goes as a request ("decision", doc/interfaces.md) on every
 * path to the peer at once and again every DECISION_RETRY_MS on the paths
 * that did not answer, until one answers or DECISION_TIMEOUT_MS passed (the
 * peer is then gone, and failure detection speaks for it).  Each carries the
 * guest's protection generation: the peer refuses a decision from another
 * protection (a stand-down delayed past a re-protection must not stop the new
 * secondary).  Acting on one is idempotent on the peer: a repeat finds
 * nothing to do.
 */
#pragma once

#include "daemon.h"
#include "ftdef.h"

/* generation may be NULL (not known here, e.g. after a restart): the peer then checks none. */
void decision_send(Daemon *d, const FtHost *peer, const char *guest, const char *generation,
                   const char *name, const char *reason);

/* The daemon goes: decisions waiting for their next round are given up. */
void decision_cancel_all(Daemon *d);
