/* virt.c - the host's libvirtd, as kvm-ft uses it */
#include "virt.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "ftdef.h"
#include "log.h"
#include "loopwait.h"
#include "status.h"
#include "timeouts.h"


/*
 * Who gets the domain events.  Events are on their way to the watcher's
 * main context while the Virt may go away: each holds a reference, and
 * virt_close() clears cb so that late ones are dropped.
 */
typedef struct {
    GMainContext *context;
    VirtEventFunc cb;
    gpointer opaque;
} VirtWatch;

struct Virt {
    char *uri;
    /*
     * conn, its replacement and its event registrations: calls come from
     * the libvirt thread (virt_run()) and the status writer as well as the
     * main loop.  Recursive: libvirt may call on_connection_closed() from
     * inside a call made under it.
     */
    GRecMutex lock;
    virConnectPtr conn;
    /* libvirtd closed the connection: the next call opens a new one. */
    gboolean lost;
    GThreadPool *jobs; /* virt_run(): one thread, in order */
    gint *open;        /* an atomic rc box: FALSE once closed, for jobs' done */
    guint reopen_id;
    VirtWatch *watch;
    int lifecycle_id;
    int metadata_id;
    /*
     * virt_qemu_version(): the last one read, in the libvirt thread.  The
     * first read after libvirtd starts has it probe QEMU, seconds here.
     */
    GMutex version_lock;
    char *version;
    /*
     * The jobs' results on their way to the loop that asked (GSources),
     * each freed when it runs: closing destroys those that did not run yet,
     * and frees the jobs it dropped unrun.
     */
    GMutex results_lock;
    GSList *results;
    GSList *dropped;
    gint closing;
};

G_DEFINE_AUTOPTR_CLEANUP_FUNC(virDomain, virDomainFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virConnect, virConnectClose)

G_DEFINE_QUARK(kvmft-virt-error-quark, virt_error)

/* libvirt prints every error to stderr by default; ours go through GError. */
static void silence(void *opaque, virErrorPtr error)
{
    (void)opaque;
    (void)error;
}

static void set_virt_error(GError **err, const char *what, const char *name)
{
    g_set_error(err, VIRT_ERROR,
                virGetLastErrorCode() == VIR_ERR_NO_DOMAIN ? VIRT_ERROR_NO_DOMAIN
                                                           : VIRT_ERROR_FAILED,
                "%s '%s': %s", what, name, virGetLastErrorMessage());
}

/* ---- events ----------------------------------------------------------- */

/*
 * libvirt's event loop is process-wide and must exist before the first
 * connection is opened, or that connection has neither events nor
 * keepalive.  Since libvirt 6.1 the default implementation is GLib's
 * default main context: kvm-ftd's main loop runs it, and no thread of its
 * own may (it would dispatch kvm-ftd's sources too, in the wrong thread).
 */
static gboolean register_event_loop(GError **err)
{
    static gsize once;
    static int result;

    if (g_once_init_enter(&once)) {
        result = virEventRegisterDefaultImpl();
        g_once_init_leave(&once, 1);
    }
    if (result < 0) {
        g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED,
                    "cannot set up libvirt's event loop: %s", virGetLastErrorMessage());
        return FALSE;
    }
    return TRUE;
}

static void watch_clear(VirtWatch *w)
{
    g_main_context_unref(w->context);
}

static void watch_release(void *w)
{
    g_rc_box_release_full(w, (GDestroyNotify)watch_clear);
}

typedef struct {
    VirtWatch *watch;
    VirtEvent event;
} PostedEvent;

static gboolean deliver(gpointer opaque)
{
    PostedEvent *p = opaque;

    if (p->watch->cb)
        p->watch->cb(&p->event, p->watch->opaque);
    return G_SOURCE_REMOVE;
}

static void posted_free(gpointer opaque)
{
    PostedEvent *p = opaque;

    watch_release(p->watch);
    g_free(p->event.domain);
    g_free(p->event.nsuri);
    g_free(p);
}

/*
 * Out of libvirt's dispatch, whose connection the callback is about to use,
 * onto the watcher's main context.  An idle source rather than
 * g_main_context_invoke(), which would run the callback right here.
 */
static void post(VirtWatch *w, const VirtEvent *event)
{
    PostedEvent *p = g_new0(PostedEvent, 1);
    GSource *source = g_idle_source_new();

    p->watch = g_rc_box_acquire(w);
    p->event = *event;
    p->event.domain = g_strdup(event->domain);
    p->event.nsuri = g_strdup(event->nsuri);
    g_source_set_priority(source, G_PRIORITY_DEFAULT);
    g_source_set_callback(source, deliver, p, posted_free);
    g_source_attach(source, w->context);
    g_source_unref(source);
}

static VirtStopped stopped_how(int detail)
{
    switch (detail) {
    case VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
        return VIRT_STOPPED_SHUTDOWN;
    case VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
        return VIRT_STOPPED_DESTROYED;
    default:
        return VIRT_STOPPED_OTHER;
    }
}

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                        void *opaque)
{
    VirtEvent ev = { .domain = (char *)virDomainGetName(dom) };

    (void)conn;
    switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED:
        ev.type = VIRT_EVENT_DEFINED;
        break;
    case VIR_DOMAIN_EVENT_UNDEFINED:
        ev.type = VIRT_EVENT_UNDEFINED;
        break;
    case VIR_DOMAIN_EVENT_STOPPED:
        ev.type = VIRT_EVENT_STOPPED;
        ev.stopped = stopped_how(detail);
        break;
    default:
        return 0;
    }
    post(opaque, &ev);
    return 0;
}

static void on_metadata(virConnectPtr conn, virDomainPtr dom, int type,
                        const char *nsuri, void *opaque)
{
    VirtEvent ev = {
        .type = VIRT_EVENT_METADATA,
        .domain = (char *)virDomainGetName(dom),
        .nsuri = type == VIR_DOMAIN_METADATA_ELEMENT ? (char *)nsuri : NULL,
    };

    (void)conn;
    post(opaque, &ev);
}

static gboolean reopen(gpointer opaque);

static void on_connection_closed(virConnectPtr c, int reason, void *opaque)
{
    static const char *const reasons[] = {
        [VIR_CONNECT_CLOSE_REASON_ERROR] = "error",
        [VIR_CONNECT_CLOSE_REASON_EOF] = "libvirtd went away",
        [VIR_CONNECT_CLOSE_REASON_KEEPALIVE] = "libvirtd stopped answering keepalives",
        [VIR_CONNECT_CLOSE_REASON_CLIENT] = "closed by kvm-ftd",
    };
    Virt *v = opaque;
    G_GNUC_UNUSED g_autoptr(GRecMutexLocker) locked = g_rec_mutex_locker_new(&v->lock);

    if (reason == VIR_CONNECT_CLOSE_REASON_CLIENT || c != v->conn)
        return;
    /*
     * libvirtd also closes a client that did not answer its keepalives for
     * a while (kvm-ftd stopped, or not scheduled): not a reason to stay blind.
     */
    log_err(NULL, NULL, "connection to libvirtd lost (%s): opening a new one",
            reason >= 0 && reason < (int)G_N_ELEMENTS(reasons) ? reasons[reason] : "unknown");
    v->lost = TRUE;
    /* The main loop's: libvirt's event loop runs there. */
    if (!v->reopen_id)
        v->reopen_id = g_timeout_add(VIRT_REOPEN_MS, reopen, v);
}

static gboolean register_events(Virt *v, GError **err);

gboolean virt_watch_events(Virt *v, VirtEventFunc cb, gpointer opaque, GError **err)
{
    VirtWatch *w;

    G_GNUC_UNUSED g_autoptr(GRecMutexLocker) locked = g_rec_mutex_locker_new(&v->lock);

    g_return_val_if_fail(!v->watch, FALSE);
    w = g_rc_box_new0(VirtWatch);
    w->context = g_main_context_ref_thread_default();
    w->cb = cb;
    w->opaque = opaque;
    v->watch = w;
    return register_events(v, err);
}

static gboolean register_events(Virt *v, GError **err)
{
    VirtWatch *w = v->watch;

    /* Each registration holds its own reference, dropped when libvirt lets go. */
    v->lifecycle_id = virConnectDomainEventRegisterAny(
        v->conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle),
        g_rc_box_acquire(w), watch_release);
    if (v->lifecycle_id < 0) {
        watch_release(w);
        goto fail;
    }
    v->metadata_id = virConnectDomainEventRegisterAny(
        v->conn, NULL, VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
        VIR_DOMAIN_EVENT_CALLBACK(on_metadata), g_rc_box_acquire(w), watch_release);
    if (v->metadata_id < 0) {
        watch_release(w);
        goto fail;
    }
    return TRUE;

fail:
    g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED,
                "cannot follow libvirt's domain events: %s", virGetLastErrorMessage());
    return FALSE;
}

/* ---- connection ------------------------------------------------------- */

static gboolean open_conn(Virt *v, GError **err)
{
    virConnectPtr c = virConnectOpen(v->uri);

    if (!c) {
        g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED,
                    "cannot connect to libvirt at %s: %s", v->uri, virGetLastErrorMessage());
        return FALSE;
    }
    v->conn = c;
    v->lifecycle_id = v->metadata_id = -1;
    /* A hung libvirtd must not go unnoticed: calls to it would just wait. */
    if (virConnectSetKeepAlive(c, KEEPALIVE_S, KEEPALIVE_COUNT) < 0)
        log_warn(NULL, NULL, "no keepalive on the libvirt connection: %s",
                 virGetLastErrorMessage());
    if (virConnectRegisterCloseCallback(c, on_connection_closed, v, NULL) < 0)
        log_warn(NULL, NULL, "cannot watch the libvirt connection: %s",
                 virGetLastErrorMessage());
    return TRUE;
}

static void close_conn(Virt *v)
{
    if (v->lifecycle_id >= 0)
        virConnectDomainEventDeregisterAny(v->conn, v->lifecycle_id);
    if (v->metadata_id >= 0)
        virConnectDomainEventDeregisterAny(v->conn, v->metadata_id);
    virConnectUnregisterCloseCallback(v->conn, on_connection_closed);
    virConnectClose(v->conn);
    v->conn = NULL;
}

/* A lost connection is replaced, with its event registrations. */
static gboolean ensure_conn(Virt *v, GError **err)
{
    virConnectPtr old = v->conn;

    if (!v->lost)
        return TRUE;
    virConnectUnregisterCloseCallback(old, on_connection_closed);
    v->conn = NULL;
    if (!open_conn(v, err)) {
        v->conn = old;
        virConnectRegisterCloseCallback(old, on_connection_closed, v, NULL);
        return FALSE;
    }
    /* The old registrations died with the old connection. */
    virConnectClose(old);
    if (v->watch && !register_events(v, err)) {
        v->lost = TRUE;
        return FALSE;
    }
    v->lost = FALSE;
    log_info(NULL, NULL, "connection to libvirtd open again%s",
             v->watch ? ", domain events followed" : "");
    return TRUE;
}

static gboolean reopen(gpointer opaque)
{
    Virt *v = opaque;
    G_GNUC_UNUSED g_autoptr(GRecMutexLocker) locked = g_rec_mutex_locker_new(&v->lock);
    g_autoptr(GError) err = NULL;

    if (ensure_conn(v, &err) || !v->lost) {
        v->reopen_id = 0;
        return G_SOURCE_REMOVE;
    }
    log_warn(NULL, NULL, "%s; trying again in %d ms", err->message, VIRT_REOPEN_MS);
    return G_SOURCE_CONTINUE;
}

/*
 * The connection for a call, a reference the caller drops: a lost one is
 * re-opened first (a failure shows in the call), and a replacement made
 * meanwhile by another thread leaves this one valid until then.
 */
static virConnectPtr conn_ref(Virt *v)
{
    G_GNUC_UNUSED g_autoptr(GRecMutexLocker) locked = g_rec_mutex_locker_new(&v->lock);
    g_autoptr(GError) err = NULL;

    if (!ensure_conn(v, &err))
        log_warn(NULL, NULL, "%s", err->message);
    virConnectRef(v->conn);
    return v->conn;
}

/* ---- the libvirt thread ------------------------------------------------ */

typedef struct {
    VirtJobFunc job;
    VirtDoneFunc done;
    gpointer data;
    GDestroyNotify free;
    GMainContext *context; /* where done runs */
    gint *open;            /* the Virt's: done does not run once it is closed */
    GError *error;
} VirtJob;

static void job_free(VirtJob *j)
{
    if (j->free)
        j->free(j->data);
    g_main_context_unref(j->context);
    g_atomic_rc_box_release(j->open);
    g_clear_error(&j->error);
    g_free(j);
}

static gboolean job_done(gpointer opaque)
{
    VirtJob *j = opaque;

    if (j->done && g_atomic_int_get(j->open))
        j->done(j->data, j->error);
    return G_SOURCE_REMOVE;
}

/* Set in the libvirt thread, which may wait for libvirt as long as it takes. */
static GPrivate in_libvirt_thread;

/* In the libvirt thread. */
static void run_job(gpointer data, gpointer opaque)
{
    Virt *v = opaque;
    VirtJob *j = data;
    GSource *source;
    GSList *ran;

    if (g_atomic_int_get(&v->closing)) {
        /* Freed where the Virt is closed, not here: a job's data belongs to its loop. */
        g_mutex_lock(&v->results_lock);
        v->dropped = g_slist_prepend(v->dropped, j);
        g_mutex_unlock(&v->results_lock);
        return;
    }
    g_private_set(&in_libvirt_thread, GINT_TO_POINTER(1));
    if (!j->job(v, j->data, &j->error) && !j->error)
        g_set_error(&j->error, VIRT_ERROR, VIRT_ERROR_FAILED, "libvirt call failed");
    source = g_idle_source_new();
    g_source_set_priority(source, G_PRIORITY_DEFAULT);
    g_source_set_callback(source, job_done, j, (GDestroyNotify)job_free);
    g_source_attach(source, j->context);
    g_mutex_lock(&v->results_lock);
    for (GSList *l = v->results; l; l = ran) {
        ran = l->next;
        if (g_source_is_destroyed(l->data)) {
            g_source_unref(l->data);
            v->results = g_slist_delete_link(v->results, l);
        }
    }
    v->results = g_slist_prepend(v->results, source); /* the reference */
    g_mutex_unlock(&v->results_lock);
}

static void drop_result(gpointer source)
{
    g_source_destroy(source);
    g_source_unref(source);
}

void virt_run(Virt *v, VirtJobFunc job, VirtDoneFunc done, gpointer data,
              GDestroyNotify free_data)
{
    VirtJob *j = g_new0(VirtJob, 1);

    j->job = job;
    j->done = done;
    j->data = data;
    j->free = free_data;
    j->context = g_main_context_ref_thread_default();
    j->open = g_atomic_rc_box_acquire(v->open);
    /* Pushing to a pool of one thread that exists cannot fail. */
    g_thread_pool_push(v->jobs, j, NULL);
}

static gboolean refresh_qemu_version(Virt *v, gpointer data, GError **err);

Virt *virt_open(const char *uri, GError **err)
{
    Virt *v;

    virSetErrorFunc(NULL, silence);
    if (!register_event_loop(err))
        return NULL;
    v = g_new0(Virt, 1);
    g_rec_mutex_init(&v->lock);
    g_mutex_init(&v->version_lock);
    g_mutex_init(&v->results_lock);
    v->open = g_atomic_rc_box_new0(gint);
    *v->open = TRUE;
    v->uri = g_strdup(uri);
    v->jobs = g_thread_pool_new_full(run_job, v, (GDestroyNotify)job_free, 1, FALSE, err);
    if (!v->jobs || !open_conn(v, err)) {
        if (v->jobs)
            g_thread_pool_free(v->jobs, TRUE, TRUE);
        g_atomic_rc_box_release(v->open);
        g_rec_mutex_clear(&v->lock);
        g_mutex_clear(&v->version_lock);
        g_mutex_clear(&v->results_lock);
        g_free(v->uri);
        g_free(v);
        return NULL;
    }
    virt_run(v, refresh_qemu_version, NULL, NULL, NULL);
    return v;
}

void virt_close(Virt *v)
{
    if (!v)
        return;
    /*
     * Queued jobs are dropped, a running one is waited for: it uses v.  Each
     * queued job still goes through run_job(), which drops it: GLib's
     * immediate free loses a job its thread has just taken.
     */
    g_atomic_int_set(&v->closing, TRUE);
    g_thread_pool_free(v->jobs, FALSE, TRUE);
    g_slist_free_full(g_steal_pointer(&v->dropped), (GDestroyNotify)job_free);
    /* A result that has not reached its loop yet never will: its job is freed. */
    g_slist_free_full(g_steal_pointer(&v->results), drop_result);
    g_atomic_int_set(v->open, FALSE);
    g_atomic_rc_box_release(v->open);
    if (v->reopen_id)
        g_source_remove(v->reopen_id);
    close_conn(v);
    if (v->watch) {
        v->watch->cb = NULL;
        watch_release(v->watch);
    }
    g_rec_mutex_clear(&v->lock);
    g_mutex_clear(&v->version_lock);
    g_mutex_clear(&v->results_lock);
    g_free(v->version);
    g_free(v->uri);
    g_free(v);
}

/* ---- domains ---------------------------------------------------------- */

static virDomainPtr lookup(Virt *v, const char *name, GError **err)
{
    g_autoptr(virConnect) c = conn_ref(v);
    virDomainPtr dom = virDomainLookupByName(c, name);

    if (!dom)
        set_virt_error(err, "no such domain", name);
    return dom;
}

char *virt_domain_xml(Virt *v, const char *name, GError **err)
{
    LOOPWAIT_SCOPE("libvirt read definition", name);
    g_autoptr(virDomain) dom = lookup(v, name, err);
    char *xml;
    char *stripped;

    if (!dom)
        return NULL;
    xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    if (!xml) {
        set_virt_error(err, "cannot read the definition of", name);
        return NULL;
    }
    /* libvirt's strings are malloc()ed; callers free with g_free. */
    stripped = status_strip(xml, err);
    free(xml);
    return stripped;
}

gboolean virt_domain_define(Virt *v, const char *name, const char *xml, GError **err)
{
    LOOPWAIT_SCOPE("libvirt define", name);
    g_autoptr(virConnect) c = conn_ref(v);
    g_autoptr(virDomain) dom = virDomainDefineXML(c, xml);

    if (!dom) {
        set_virt_error(err, "cannot define", name);
        return FALSE;
    }
    return TRUE;
}

gboolean virt_domain_define_missing(Virt *v, const char *name, const char *xml,
                                    gboolean *defined, GError **err)
{
    LOOPWAIT_SCOPE("libvirt define", name);
    g_autoptr(virConnect) c = conn_ref(v);
    g_autoptr(virDomain) dom = virDomainLookupByName(c, name);

    *defined = FALSE;
    if (dom)
        return TRUE;
    dom = virDomainDefineXML(c, xml);
    if (!dom) {
        set_virt_error(err, "cannot define", name);
        return FALSE;
    }
    *defined = TRUE;
    return TRUE;
}

gboolean virt_domain_undefine(Virt *v, const char *name, GError **err)
{
    LOOPWAIT_SCOPE("libvirt undefine", name);
    g_autoptr(virDomain) dom = lookup(v, name, err);

    if (!dom)
        return FALSE;
    if (virDomainIsActive(dom) != 0) {
        g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED,
                    "'%s' is running (or its state is unknown): not undefining it", name);
        return FALSE;
    }
    if (virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_KEEP_NVRAM) < 0) {
        set_virt_error(err, "cannot undefine", name);
        return FALSE;
    }
    return TRUE;
}

gboolean virt_domain_start(Virt *v, const char *runtime_xml, gboolean paused,
                           GError **err)
{
    LOOPWAIT_SCOPE("libvirt start", NULL);
    g_autoptr(virConnect) c = conn_ref(v);
    g_autoptr(virDomain) dom =
        virDomainCreateXML(c, runtime_xml,
                           paused ? VIR_DOMAIN_START_PAUSED : 0);

    if (!dom) {
        g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED, "libvirt cannot start the guest: %s",
                    virGetLastErrorMessage());
        return FALSE;
    }
    return TRUE;
}

gboolean virt_domain_destroy(Virt *v, const char *name, GError **err)
{
    LOOPWAIT_SCOPE("libvirt destroy", name);
    g_autoptr(virDomain) dom = lookup(v, name, err);

    if (!dom)
        return FALSE;
    if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0) {
        set_virt_error(err, "cannot destroy", name);
        return FALSE;
    }
    return TRUE;
}

gboolean virt_domain_is_active(Virt *v, const char *name, gboolean *active,
                               GError **err)
{
    LOOPWAIT_SCOPE("libvirt is-active", name);
    g_autoptr(virDomain) dom = lookup(v, name, err);
    int ret;

    if (!dom)
        return FALSE;
    ret = virDomainIsActive(dom);
    if (ret < 0) {
        set_virt_error(err, "cannot query", name);
        return FALSE;
    }
    *active = ret == 1;
    return TRUE;
}

/* element (NULL: removed) in the domain's <metadata> under key and uri, live too if it runs. */
static gboolean set_metadata(Virt *v, const char *name, const char *element, const char *key,
                             const char *uri, const char *what, GError **err)
{
    LOOPWAIT_SCOPE("libvirt set metadata", name);
    g_autoptr(virDomain) dom = lookup(v, name, err);
    unsigned int flags = VIR_DOMAIN_AFFECT_CONFIG;

    if (!dom)
        return FALSE;
    if (virDomainIsActive(dom) == 1)
        flags |= VIR_DOMAIN_AFFECT_LIVE;
    if (virDomainSetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, element, element ? key : NULL,
                             uri, flags) == 0)
        return TRUE;
    /* Before the next call clears libvirt's error. */
    set_virt_error(err, what, name);
    /* A domain that stopped meanwhile has no live definition any more. */
    if ((flags & VIR_DOMAIN_AFFECT_LIVE) && virDomainIsActive(dom) == 0 &&
        virDomainSetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, element, element ? key : NULL,
                             uri, VIR_DOMAIN_AFFECT_CONFIG) == 0) {
        g_clear_error(err);
        return TRUE;
    }
    return FALSE;
}

gboolean virt_domain_set_status(Virt *v, const char *name, const char *element,
                                GError **err)
{
    return set_metadata(v, name, element, STATUS_KEY, STATUS_NS,
                        "cannot write kvm-ftd's status into", err);
}

gboolean virt_domain_set_ft_metadata(Virt *v, const char *name, const char *element,
                                     GError **err)
{
    return set_metadata(v, name, element, "ft", FTDEF_NS,
                        "cannot write the kvm-ft metadata into", err);
}

static GPtrArray *list_domains(Virt *v, unsigned int flags, GError **err)
{
    LOOPWAIT_SCOPE("libvirt list domains", NULL);
    g_autoptr(virConnect) c = conn_ref(v);
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(c, &doms, flags);
    GPtrArray *names;

    if (n < 0) {
        g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED, "cannot list domains: %s",
                    virGetLastErrorMessage());
        return NULL;
    }
    names = g_ptr_array_new_with_free_func(g_free);
    for (int i = 0; i < n; i++) {
        g_ptr_array_add(names, g_strdup(virDomainGetName(doms[i])));
        virDomainFree(doms[i]);
    }
    free(doms);
    return names;
}

GPtrArray *virt_active_domains(Virt *v, GError **err)
{
    return list_domains(v, VIR_CONNECT_LIST_DOMAINS_ACTIVE, err);
}

GPtrArray *virt_defined_domains(Virt *v, GError **err)
{
    return list_domains(v, VIR_CONNECT_LIST_DOMAINS_PERSISTENT, err);
}

static char *read_qemu_version(Virt *v, GError **err)
{
    LOOPWAIT_SCOPE("libvirt version", NULL);
    g_autoptr(virConnect) c = conn_ref(v);
    unsigned long version;
    char *text;

    if (virConnectGetVersion(c, &version) < 0) {
        g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED,
                    "cannot read the hypervisor's version: %s", virGetLastErrorMessage());
        return NULL;
    }
    text = g_strdup_printf("%lu.%lu.%lu", version / 1000000, version / 1000 % 1000,
                           version % 1000);
    g_mutex_lock(&v->version_lock);
    g_free(v->version);
    v->version = g_strdup(text);
    g_mutex_unlock(&v->version_lock);
    return text;
}

/* In the libvirt thread. */
static gboolean refresh_qemu_version(Virt *v, gpointer data, GError **err)
{
    g_autofree char *version = read_qemu_version(v, err);

    (void)data;
    return version != NULL;
}

/*
 * Outside the libvirt thread: the version last read, and a read queued for
 * the next call (an upgrade of QEMU shows there); only the first call of all
 * waits for libvirt.
 */
char *virt_qemu_version(Virt *v, GError **err)
{
    char *version;

    if (g_private_get(&in_libvirt_thread))
        return read_qemu_version(v, err);
    g_mutex_lock(&v->version_lock);
    version = g_strdup(v->version);
    g_mutex_unlock(&v->version_lock);
    if (!version)
        return read_qemu_version(v, err);
    virt_run(v, refresh_qemu_version, NULL, NULL, NULL);
    return version;
}

gboolean virt_room_for(Virt *v, const char *name, GError **err)
{
    LOOPWAIT_SCOPE("libvirt free memory", name);
    g_autoptr(virConnect) c = conn_ref(v);
    g_autoptr(virDomain) dom = lookup(v, name, err);
    unsigned long long free_bytes;
    unsigned long need_kib;

    if (!dom)
        return FALSE;
    need_kib = virDomainGetMaxMemory(dom);
    free_bytes = virNodeGetFreeMemory(c);
    /* Unknown either way: libvirt's start will say what is wrong. */
    if (need_kib == 0 || free_bytes == 0)
        return TRUE;
    if ((unsigned long long)need_kib * 1024 > free_bytes) {
        g_set_error(err, VIRT_ERROR, VIRT_ERROR_FAILED, "no room for '%s' on this host: it needs %lu MiB "
                    "of memory, %llu MiB are free", name, need_kib / 1024,
                    free_bytes >> 20);
        return FALSE;
    }
    return TRUE;
}
