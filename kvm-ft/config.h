/*
 * config.h - the daemon configuration, /etc/kvm-ft/kvm-ftd.conf (GKeyFile)
 *
 * The grammar is doc/interfaces.md.  Anything config_load() does not
 * understand is an error, never ignored: an unknown group or key, a key
 * set twice, a value with an inline "# comment" (GKeyFile would keep it as
 * part of the value).  Every message is one line that names the file, the
 * group and the key, and says what is expected, e.g.
 *   "/etc/kvm-ft/kvm-ftd.conf: [daemon] listen-port: 'abc' is not a port
 *    number (1-65535)"
 *
 * The pre-shared peer key is read from key-file: base64 (line breaks
 * allowed) of at least CONFIG_KEY_MIN_BYTES bytes, in a regular file that
 * neither group nor others may access (mode & 077 == 0, like ssh).
 */
#pragma once

#include <glib.h>

#define CONFIG_DEFAULT_PATH "/etc/kvm-ft/kvm-ftd.conf"

#define CONFIG_DEFAULT_LISTEN_PORT 7790
#define CONFIG_DEFAULT_CONTROL_SOCKET "/run/kvm-ftd.sock"
#define CONFIG_DEFAULT_STATE_DIR "/var/lib/kvm-ft"
#define CONFIG_DEFAULT_RUN_DIR "/run/kvm-ft"
#define CONFIG_DEFAULT_IMAGE_ROOT "/var/lib/libvirt/images"
#define CONFIG_DEFAULT_LIBVIRT_URI "qemu:///system"
#define CONFIG_DEFAULT_QMP_MS 5000      /* [timeouts] qmp-ms: 100..600000 */
#define CONFIG_DEFAULT_PEER_MS 3000     /* [timeouts] peer-ms: 100..600000 */
#define CONFIG_DEFAULT_START_MS 120000  /* [timeouts] start-ms: 1000..3600000 */

#define CONFIG_KEY_MIN_BYTES 32
/* [failover]: a peer is silent after heartbeat-ms * miss-count without a frame. */
#define CONFIG_DEFAULT_HEARTBEAT_MS 20  /* 5..10000 */
#define CONFIG_DEFAULT_MISS_COUNT 5     /* 2..100 */
/* [failover] realtime-priority: SCHED_RR priority of kvm-ftd, 0 = off (0..99) */
#define CONFIG_DEFAULT_RT_PRIORITY 10
/* [resync] rate-mb-per-s: cap of a disk copy to a new secondary, MiB/s, 0 = no cap */
#define CONFIG_DEFAULT_RESYNC_MIB_S 100
#define CONFIG_MAX_RESYNC_MIB_S 10000
/*
 * [resync] granularity-kib: the write-tracking bitmaps' block, a power of two
 * from 4 to 1024 KiB; a copy moves whole blocks.  QEMU's own default.
 */
#define CONFIG_DEFAULT_GRANULARITY_KIB 64
/* [witness] timeout-ms: how long a claim or probe waits for the witness (50..10000) */
#define CONFIG_DEFAULT_WITNESS_MS 500
#define CONFIG_MAX_WITNESS_MS 10000

typedef struct {
    char *host_name;        /* [daemon] host-name, required */
    char *listen_address;   /* [daemon] listen-address, required, IPv4 */
    char *lan_address;      /* [daemon] lan-address, IPv4, or NULL: no LAN path */
    guint listen_port;      /* [daemon] listen-port */
    char *key_file;         /* [daemon] key-file, required, absolute path */
    GBytes *key;            /* its decoded contents, >= 32 bytes; zeroed on free */
    char *control_socket;   /* absolute path, fits in sockaddr_un */
    char *state_dir;        /* absolute path */
    char *run_dir;          /* absolute path */
    char *image_root;       /* [daemon] image-root: a peer's guests' disks must be below it */
    char *libvirt_uri;
    char *log_file;         /* absolute path, or NULL for stderr */
    guint qmp_timeout_ms;   /* [timeouts] qmp-ms */
    guint peer_timeout_ms;  /* [timeouts] peer-ms */
    guint start_timeout_ms; /* [timeouts] start-ms */
    guint heartbeat_ms;     /* [failover] heartbeat-ms */
    guint miss_count;       /* [failover] miss-count */
    guint rt_priority;      /* [failover] realtime-priority, 0 = normal scheduling */
    guint64 resync_rate_bytes; /* [resync] rate-mb-per-s in bytes/s, 0 = unlimited */
    guint resync_granularity_bytes; /* [resync] granularity-kib in bytes */
    char **witness_endpoints;  /* [witness] endpoints: etcd client URLs; NULL = no witness */
    char *witness_ca;          /* [witness] ca: CA bundle for https endpoints */
    char *witness_cert;        /* [witness] cert + key: client certificate, or NULL */
    char *witness_key;
    guint witness_timeout_ms;  /* [witness] timeout-ms */
    char *drbd_command_prefix; /* [drbd] command-prefix: an executable that runs
                                * `drbdadm ARGS` for kvm-ftd; NULL: drbdadm itself */
    gboolean replication_tls;  /* [replication] tls (default no): QEMU's channels between
                                * the hosts (migration, NBD, COLO) on TLS with a PSK */
} FtConfig;

#define CONFIG_ERROR config_error_quark()
GQuark config_error_quark(void);

typedef enum {
    CONFIG_ERROR_READ,    /* the config file itself cannot be read */
    CONFIG_ERROR_INVALID, /* its contents, or the key file, are wrong */
} ConfigError;

/* Load and validate @path (CONFIG_DEFAULT_PATH if NULL).  Returns NULL
 * with @err set (CONFIG_ERROR) on any problem. */
FtConfig *config_load(const char *path, GError **err);

void config_free(FtConfig *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FtConfig, config_free)

/* The failure detector's window: a path unheard this long is silent
 * ([failover] heartbeat-ms x miss-count).  The secondary waits two. */
static inline guint config_window_ms(const FtConfig *c)
{
    return c->heartbeat_ms * c->miss_count;
}
