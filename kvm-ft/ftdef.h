/*
 * ftdef.h - the FT guest definition, read from a libvirt domain XML
 *
 * A protected guest is an ordinary libvirt domain whose <metadata> carries
 * one <ft:guest> element in the FTDEF_NS namespace (doc/interfaces.md).
 * ftdef_parse() reads that element together with the parts of the domain
 * kvm-ft depends on, and refuses -- with one line naming the element and
 * the fix -- anything kvm-ft cannot protect.
 *
 * The input is untrusted: it is size-limited (FTDEF_MAX_XML_SIZE), parsed
 * without network access, and a document with a <!DOCTYPE> (the only place
 * entities can be declared) is refused before any entity exists, so
 * "billion laughs" documents cannot expand.
 */
#pragma once

#include <glib.h>

#define FTDEF_NS "https://kvm-ft.dev/xmlns/1"
/* Any namespace starting with this is a kvm-ft metadata version. */
#define FTDEF_NS_FAMILY "https://kvm-ft.dev/xmlns/"

#define FTDEF_MAX_XML_SIZE (4 * 1024 * 1024)
/* libxml2 is quadratic in the attributes of one element: bound them. */
#define FTDEF_MAX_ATTRIBUTES 256
#define FTDEF_MAX_DISKS 64

#define FTDEF_INTERVAL_DEFAULT 2000
#define FTDEF_INTERVAL_MIN 20
#define FTDEF_INTERVAL_MAX 60000
/*
 * How long a reply of the primary may wait in colo-compare for the
 * secondary's copy of it before the wait itself forces a checkpoint, as a
 * difference does.  A secondary that sends nothing (it blocked where the
 * primary did not, e.g. on a row lock taken in another order) must cost one
 * checkpoint, not QEMU's default of 3 s; a secondary that is merely behind
 * must not force one on every reply.  So the wait follows the secondary's
 * measured lag (qemu-patches 0009: smoothed lag plus four deviations, as
 * TCP's retransmission timeout), at least FTDEF_COMPARE_WAIT_FLOOR and at
 * most compare-timeout-ms.  Measured with MariaDB under sysbench on this
 * lab's TCG guests: the secondary's copies come 50-300 ms late; a fixed
 * 50 ms forced a checkpoint per reply (2.5 tx/s), 300 ms let most match
 * (5.0 tx/s, unprotected 10.6).
 *
 * In passive mode the secondary's copy never comes, so the wait is fixed:
 * the shortest epoch.  A reply forces the checkpoint that releases it
 * after waiting this long, instead of waiting for the periodic one.  5 ms
 * keeps a request/response exchange near one checkpoint (the ndet bench:
 * RTT p50 21 ms at 5 ms against 28 ms at 10 ms) while a burst of packets
 * still shares one checkpoint.
 */
#define FTDEF_COMPARE_TIMEOUT_DEFAULT 500
#define FTDEF_COMPARE_WAIT_FLOOR 20
#define FTDEF_PASSIVE_EPOCH_DEFAULT 5
#define FTDEF_COMPARE_TIMEOUT_MIN 5
#define FTDEF_COMPARE_TIMEOUT_MAX 10000
#define FTDEF_PORT_BASE_DEFAULT 9100
#define FTDEF_PORT_BASE_MIN 1024
#define FTDEF_PORT_BASE_MAX 65000
#define FTDEF_HOST_NAME_MAX 253

/* How the primary's network output is released to the outside world. */
typedef enum {
    /* COLO: released when the secondary's copy produced the same packet;
     * a difference forces a checkpoint. */
    FTDEF_OUTPUT_COMPARE,
    /* Remus-style: held until the checkpoint covering it has reached the
     * secondary; never compared. */
    FTDEF_OUTPUT_PASSIVE,
    /* kvm-ftd moves the guest between compare and passive as its output
     * serves better (output.h). */
    FTDEF_OUTPUT_AUTO,
} FtOutputMode;

const char *ftdef_output_mode_name(FtOutputMode mode);

/* <ft:protection level>: how the guest survives the loss of its host. */
typedef enum {
    /* COLO: both copies run, checkpointed; nothing the clients saw is lost. */
    FTDEF_LEVEL_FT,
    /* One copy runs; its disks are mirrored by DRBD (protocol C) and the
     * guest is restarted on the peer after a failure (issue 18). */
    FTDEF_LEVEL_HA,
} FtProtectionLevel;

const char *ftdef_level_name(FtProtectionLevel level);

/* The largest DRBD minor number (DRBD's MINORMASK). */
#define FTDEF_DRBD_MINOR_MAX 1048575
/* A backing device's path, at most (it is written quoted into a DRBD file). */
#define FTDEF_BACKING_DEVICE_MAX 255

typedef struct {
    char *target;       /* <target dev>, e.g. "vda": [A-Za-z0-9_-]+ */
    char *source_path;  /* ft: <source file>, an absolute path;
                         * ha: <source dev>, "/dev/drbdN" */
    char *format;       /* <driver type>: "qcow2" or "raw"; ha: "raw" */
    /* ha only (ft: NULL and 0) */
    char *backing_device; /* <ft:disk backing-device>: the local block device
                           * DRBD mirrors, /dev/...: see ftdef_backing_device_problem() */
    guint drbd_minor;     /* N of <source dev='/dev/drbdN'>, 0..FTDEF_DRBD_MINOR_MAX */
} FtDisk;

typedef struct {
    char *name;         /* matches kvm-ftd.conf [daemon] host-name */
    char *link_address; /* IPv4 address on the dedicated link */
    char *lan_address;  /* IPv4 address on the LAN, or NULL: no second path */
} FtHost;

typedef struct {
    char *name;                    /* <domain><name>; never contains '/' */
    char *uuid;                    /* <domain><uuid>, or NULL if absent */
    FtHost hosts[2];               /* in document order */
    guint checkpoint_interval_ms;  /* FTDEF_INTERVAL_DEFAULT if absent */
    FtOutputMode output_mode;      /* FTDEF_OUTPUT_COMPARE if absent */
    guint compare_timeout_ms;      /* if absent: FTDEF_COMPARE_TIMEOUT_DEFAULT, or
                                    * FTDEF_PASSIVE_EPOCH_DEFAULT in passive mode;
                                    * in auto mode, for its compare phases */
    FtProtectionLevel level;       /* FTDEF_LEVEL_FT if absent */
    guint port_base;               /* FTDEF_PORT_BASE_DEFAULT if absent; ft: uses
                                    * port_base..+3; ha: disk i's DRBD resource
                                    * replicates on port_base + i */
    GPtrArray *disks;              /* FtDisk *, in <ft:disk> order, 1..64 */
    guint n_interfaces;            /* 0 or 1 <interface> elements */
    /* <qemu:commandline> present: arguments libvirt passes to QEMU unchecked. */
    gboolean qemu_commandline;
} FtDef;

#define FTDEF_ERROR ftdef_error_quark()
GQuark ftdef_error_quark(void);

typedef enum {
    /* The domain has no <ft:guest> in its <metadata>: it is not a kvm-ft
     * guest.  Callers that scan all domains just skip it. */
    FTDEF_ERROR_NOT_FT,
    /* Anything else: the message is for the operator, one line. */
    FTDEF_ERROR_INVALID,
} FtDefError;

/*
 * Parse and validate a domain XML document (NUL-terminated; at most
 * FTDEF_MAX_XML_SIZE bytes).  Returns a new FtDef, or NULL with @err set
 * to FTDEF_ERROR_NOT_FT or FTDEF_ERROR_INVALID.  Never crashes on any
 * input.  Thread-safe.
 */
FtDef *ftdef_parse(const char *domain_xml, GError **err);

/*
 * The TCP ports the guest uses on the dedicated link: port_base and the
 * next ones (ft: the four of ft.h's layout; ha: one per disk).
 */
guint ftdef_port_count(const FtDef *def);

/* Whether two guests' ports (ftdef_port_count()) have one in common. */
gboolean ftdef_ports_overlap(const FtDef *a, const FtDef *b);

/* The same two hosts (names and addresses), ports, protection level and
 * replicated disks (for ha: their backing devices and DRBD minors). */
gboolean ftdef_same_pair_and_disks(const FtDef *a, const FtDef *b);

/* This host's entry / the other host's entry, found by the configured
 * host-name; NULL if my_host_name is neither of the two hosts. */
const FtHost *ftdef_self(const FtDef *d, const char *my_host_name);
const FtHost *ftdef_peer(const FtDef *d, const char *my_host_name);

/* The host-name syntax shared with kvm-ftd.conf: 1..FTDEF_HOST_NAME_MAX
 * characters from [A-Za-z0-9._-]. */
gboolean ftdef_host_name_valid(const char *name);

/* Why path cannot be an ha disk's backing-device (it is written into a DRBD
 * resource file), or NULL: an absolute path under /dev/, at most
 * FTDEF_BACKING_DEVICE_MAX characters from [A-Za-z0-9/._+:@=,-], no "."
 * or ".." component, no empty one. */
const char *ftdef_backing_device_problem(const char *path);

/* Why name cannot be a guest's (it names files in the state and run dirs), or NULL. */
const char *ftdef_guest_name_problem(const char *name);

void ftdef_free(FtDef *d);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FtDef, ftdef_free)
