/*
 * diskcompare.h - reading two copies of a disk over NBD and comparing them
 *
 * Blocking (libnbd, with a deadline per read): ftctl verify calls it
 * directly, kvm-ftd from a worker thread.  While the pair is protected a
 * guest write reaches both copies before the guest hears it is done, so a
 * block differs only while a write to it is under way: a differing block is
 * read again a few times before it counts.  With the guest paused (a first
 * protection) there is nothing under way and a difference is real at once.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#define DISK_COMPARE_BLOCK 4096u
/* Ranges kept per disk (differing_bytes counts them all). */
#define DISK_COMPARE_RANGES_MAX 64

typedef struct {
    guint64 bytes;
    guint64 done;
    guint64 differing;
    GArray *ranges; /* guint64 pairs, offset and length, merged when adjacent */
} DiskCompare;

/* Called about once a second and at the end, from the comparing thread. */
typedef void (*DiskCompareProgress)(const char *target, const DiskCompare *c,
                                    gpointer opaque);

/*
 * Compares own_uri's disk with peer_uri's (NBD URIs).  FALSE with err if
 * either cannot be read or their sizes differ.  Free c with
 * disk_compare_clear().
 */
gboolean disk_compare(const char *target, const char *own_uri, const char *peer_uri,
                      DiskCompareProgress progress, gpointer opaque, DiskCompare *c,
                      GError **err);
void disk_compare_clear(DiskCompare *c);

/* "bytes", "differing_bytes", "ranges": [[offset, length], ...] into the builder's object. */
void disk_compare_add_json(JsonBuilder *b, const DiskCompare *c);
