/*
 * drbdres.h - DRBD resource files for the disks of an ha guest
 *
 * An <ft:protection level='ha'/> guest (ftdef.h) writes to DRBD devices
 * (<source dev='/dev/drbdN'/>) that mirror a local backing device on each
 * of its two hosts.  Each of its disks is one DRBD resource, named
 * "kvmft-GUEST-TARGET", replicating on the dedicated link at port_base + i
 * (i the disk's place in <ft:disk> order).  This module writes the text of
 * those resource files, for DRBD 8.4 or DRBD 9 (drbd-conf/README.md shows
 * the shape and says why each option is there).
 *
 * Nothing goes into a file unchecked: every value written is validated
 * here again, whatever the FtDef says, and a value DRBD could misread is
 * refused with a one-line message.
 */
#pragma once

#include <glib.h>

#include "ftdef.h"

/* Which drbdadm syntax to write. */
typedef enum {
    DRBD_SYNTAX_84, /* DRBD 8.4: fencing in disk { }, after-resync-target */
    DRBD_SYNTAX_9,  /* DRBD 9: fencing in net { }, unfence-peer, node-id */
} DrbdSyntax;

/* The fence-peer etc. handler when none is given (kvm-ft/drbdhandler.c). */
#define DRBDRES_DEFAULT_HANDLER "/usr/lib/kvm-ft/kvm-ft-drbd-handler"
/* Where the kernel module says which DRBD runs. */
#define DRBDRES_PROC_DRBD "/proc/drbd"
/* The longest resource name written: DRBD's unquoted strings stop at 128. */
#define DRBDRES_NAME_MAX 127
/* The longest host name written: DRBD matches `on` against uname -n. */
#define DRBDRES_HOST_NAME_MAX 64
/* The longest handler path: the quoted command must stay below DRBD's 255. */
#define DRBDRES_HANDLER_MAX 200

#define DRBDRES_ERROR drbdres_error_quark()
GQuark drbdres_error_quark(void);

typedef enum {
    /* The input cannot make a resource file; the message says why, one line. */
    DRBDRES_ERROR_INVALID,
} DrbdresError;

/* "8.4" or "9". */
const char *drbdres_syntax_name(DrbdSyntax syntax);

/* "8.4" or "9" (ftctl drbd-config --drbd-version) into @out. */
gboolean drbdres_syntax_from_name(const char *name, DrbdSyntax *out, GError **err);

/*
 * Which syntax the running DRBD reads, from the first line of /proc/drbd's
 * text: "version: 8.4.11 (api:1/proto:86-101)" is DRBD_SYNTAX_84,
 * "version: 9.2.8 (...)" DRBD_SYNTAX_9; anything else an error.
 */
gboolean drbdres_syntax_from_proc(const char *proc_drbd_text, DrbdSyntax *out,
                                  GError **err);

/* "kvmft-GUEST-TARGET" for the guest's disk @disk_index (not yet checked:
 * see drbdres_resource_name_problem()). */
char *drbdres_resource_name(const FtDef *d, guint disk_index);

/* Why DRBD would not take @name as a resource name as kvm-ft writes it
 * (1..DRBDRES_NAME_MAX characters from [A-Za-z0-9_.-]), or NULL. */
const char *drbdres_resource_name_problem(const char *name);

/*
 * The complete text of the resource file of the ha guest's disk
 * @disk_index in @syntax, with @handler_path (absolute, at most
 * DRBDRES_HANDLER_MAX characters from [A-Za-z0-9/._+-], no "..") as the
 * fence-peer, unfence and split-brain handler.  NULL and @err
 * (DRBDRES_ERROR_INVALID) if any value cannot go into the file.
 */
char *drbdres_generate(const FtDef *d, guint disk_index, DrbdSyntax syntax,
                       const char *handler_path, GError **err);
