/*
 * virt.h - the host's libvirtd, as kvm-ft uses it
 *
 * kvm-ftd starts each role with virDomainCreateXML() on its derived XML,
 * which libvirt runs as the live config of the persistent domain and drops
 * again when the guest stops.  Into the persistent definition it writes its
 * status element in <metadata> (status.h) and, once both hosts accepted the
 * guest, the derived primary definition that `virsh start` runs
 * (definitions.c keeps the administrator's original).
 *
 * Calls are synchronous and may come from any thread.  The connection's
 * keepalive bounds how long a hung libvirtd can hold one (15 s), but a
 * libvirtd that waits for a domain's job lock answers keepalives and holds
 * the call for up to its job timeout: from the main loop, where the failure
 * detector runs, calls go through virt_run().
 * libvirt's default event loop, which carries the domain events and the
 * keepalive, is GLib's default main context: the daemon's main loop runs
 * it.  One Virt per process.
 */
#pragma once

#include <glib.h>

#define VIRT_ERROR (virt_error_quark())
GQuark virt_error_quark(void);

typedef enum {
    VIRT_ERROR_FAILED,
    VIRT_ERROR_NO_DOMAIN, /* no domain of that name (any more) */
} VirtError;

typedef struct Virt Virt;

Virt *virt_open(const char *uri, GError **err);
void virt_close(Virt *v);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Virt, virt_close)

/* What happened to a domain, as far as kvm-ftd cares. */
typedef enum {
    VIRT_EVENT_DEFINED,   /* defined, or its definition replaced */
    VIRT_EVENT_UNDEFINED,
    VIRT_EVENT_STOPPED,   /* it stopped running: see stopped */
    VIRT_EVENT_METADATA,  /* an element of its <metadata> changed: see nsuri */
} VirtEventType;

typedef enum {
    VIRT_STOPPED_SHUTDOWN,  /* the guest powered off (virsh shutdown) */
    VIRT_STOPPED_DESTROYED, /* virsh destroy */
    VIRT_STOPPED_OTHER,     /* crashed, failed, saved, migrated, snapshot */
} VirtStopped;

typedef struct {
    VirtEventType type;
    char *domain;
    VirtStopped stopped; /* VIRT_EVENT_STOPPED only */
    char *nsuri;         /* VIRT_EVENT_METADATA: the element's namespace; NULL
                          * when <title> or <description> changed */
} VirtEvent;

/* event is borrowed for the duration of the call. */
typedef void (*VirtEventFunc)(const VirtEvent *event, gpointer opaque);

/*
 * Runs job(v, data, &err) in kvm-ftd's libvirt thread (one thread: jobs run
 * in the order they were queued), then done(data, error) on the caller's
 * thread-default main context, then free_data(data).  error is NULL if job
 * returned TRUE.  done must not assume what it worked for still exists: it
 * finds it again (by name).  At virt_close() the queued jobs are dropped
 * (done does not run; data is freed) and the running one is waited for.
 */
typedef gboolean (*VirtJobFunc)(Virt *v, gpointer data, GError **err);
typedef void (*VirtDoneFunc)(gpointer data, const GError *error);
void virt_run(Virt *v, VirtJobFunc job, VirtDoneFunc done, gpointer data,
              GDestroyNotify free_data);

/*
 * From now until virt_close(), cb runs for each domain event, on the main
 * context that is thread-default for the caller, in the order libvirt sent
 * them.  Once per Virt.
 */
gboolean virt_watch_events(Virt *v, VirtEventFunc cb, gpointer opaque, GError **err);

/*
 * The persistent (inactive) definition, without kvm-ftd's status element
 * (possibly the derived one: definitions_read() finds the original).
 */
char *virt_domain_xml(Virt *v, const char *name, GError **err);

/* Defines (or redefines) the persistent domain. */
gboolean virt_domain_define(Virt *v, const char *name, const char *xml, GError **err);

/* Defines the domain unless one of that name exists; TRUE if it defined it. */
gboolean virt_domain_define_missing(Virt *v, const char *name, const char *xml,
                                    gboolean *defined, GError **err);

/* Refuses a running domain.  Its NVRAM file, if any, stays. */
gboolean virt_domain_undefine(Virt *v, const char *name, GError **err);

gboolean virt_domain_start(Virt *v, const char *runtime_xml, gboolean paused,
                           GError **err);
gboolean virt_domain_destroy(Virt *v, const char *name, GError **err);

/* Whether this host has the free memory the defined domain needs. */
gboolean virt_room_for(Virt *v, const char *name, GError **err);
gboolean virt_domain_is_active(Virt *v, const char *name, gboolean *active,
                               GError **err);

/*
 * Writes element (from status_xml()) as the domain's status element, in
 * its persistent definition and, when it runs, in its live one; NULL
 * removes it.  Blocks while libvirt waits for the domain's job lock: keep
 * it off the main loop.
 */
gboolean virt_domain_set_status(Virt *v, const char *name, const char *element,
                                GError **err);
/* The administrator's <ft:guest> element, replaced (as `virsh metadata --set` does). */
gboolean virt_domain_set_ft_metadata(Virt *v, const char *name, const char *element,
                                     GError **err);

/* Names of the running domains. */
GPtrArray *virt_active_domains(Virt *v, GError **err);
/* Names of the defined (persistent) domains, running or not. */
GPtrArray *virt_defined_domains(Virt *v, GError **err);

/*
 * The version of the QEMU libvirt runs on this host, e.g. "7.2.0": two
 * hosts whose versions differ cannot run the two copies of one guest.
 * (That of libvirt's default emulator; the builds are not told apart.)
 * Off the libvirt thread, the one it last read (virt_open() queues a read,
 * each call another); only a call before any read waits for libvirt.
 */
char *virt_qemu_version(Virt *v, GError **err);
