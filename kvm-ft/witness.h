/*
 * witness.h - the etcd witness that decides which copy of a guest may run
 * alone
 *
 * A power pull and a full partition look the same to a host: the peer is
 * silent on every path.  So before a copy runs alone (a secondary taking
 * over, a primary dropping its secondary), its host claims the guest's
 * protection generation at the witness: one etcd transaction "create
 * /kvm-ft/PAIR/GUEST/GENERATION holding my name if absent, else read it".
 * Only the host whose name the key holds runs; the transaction is
 * idempotent, so a retry, or the same claim sent to several members, gives
 * the same owner.  Nothing is written while the pair is protected.
 *
 * The client speaks etcd's v3 JSON gateway (POST /v3/kv/txn) over HTTP/1.1
 * kept open (libsoup), TLS with client certificates when configured.  A
 * claim goes to every endpoint at once and the first answer decides.  A
 * probe (a linearizable read, which needs the cluster's quorum) runs every
 * WITNESS_PROBE_MS, so that `ftctl status` says when failover would not be
 * automatic, and so that the connections are open when a claim comes.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "config.h"

typedef struct Witness Witness;

/*
 * The claim's outcome: owner is the host that holds the key (this host's
 * name: won), or NULL with error set when no endpoint answered in time or
 * an answer made no sense.  Runs exactly once.
 */
typedef void (*WitnessClaimFunc)(const char *owner, const GError *error, gpointer opaque);

/* NULL, without error, when kvm-ftd.conf has no [witness]. */
Witness *witness_new(const FtConfig *cfg, GError **err);
/* Claims still on their way are answered with an error first. */
void witness_free(Witness *w);

/* The key of one protection: /kvm-ft/HOST1+HOST2/GUEST/GENERATION, hosts sorted. */
char *witness_key(const char *host1, const char *host2, const char *guest,
                  const char *generation);

void witness_claim(Witness *w, const char *key, const char *self, WitnessClaimFunc cb,
                   gpointer opaque);

/* NULL while the last probe was answered; else why failover is not automatic. */
const char *witness_trouble(Witness *w);

/* {"endpoints": [...], "reachable": bool, "error": str|null, "claim_ms": last} */
void witness_add_status(Witness *w, JsonBuilder *b);
