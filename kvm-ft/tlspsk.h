/*
 * tlspsk.h - the pre-shared key of a guest's replication channels
 *
 * QEMU carries the guest's RAM (migration), its disk writes (NBD) and its
 * network packets (the COLO channels) between the hosts.  Each of these
 * channels runs TLS with QEMU's tls-creds-psk, keyed per guest from the
 * key the two kvm-ftd already share:
 *
 *   psk = HMAC-SHA256(key, "kvm-ft qemu-tls v1" NUL guest name)
 *
 * A PSK rather than x509: the pair already holds a secret that only they
 * know, so nothing else (no CA, no certificates to renew) must be
 * distributed, and a TLS-PSK handshake authenticates both ends at once,
 * where x509 would need client certificates for the same.  Both hosts
 * derive the same key without sending it anywhere.
 */
#pragma once

#include <glib.h>

#include "config.h"

/* The user name in keys.psk and in QEMU's client credentials. */
#define TLSPSK_USERNAME "kvmft"

/* RUN_DIR/GUEST.tls: the directory QEMU's tls-creds-psk reads keys.psk from. */
char *tlspsk_dir(const FtConfig *cfg, const char *guest);

/* keys.psk's path in that directory: what libnbd's clients read. */
char *tlspsk_file(const char *dir);

/*
 * Writes the guest's keys.psk ("kvmft:HEX", 0600, in a 0700 directory),
 * replacing any earlier one.  Returns the directory, or NULL with err.
 */
char *tlspsk_write(const FtConfig *cfg, const char *guest, GError **err);
